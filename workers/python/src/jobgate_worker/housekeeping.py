"""Background duties of a worker process besides running jobs.

- ``LeaseKeeper``: every ``lease/3`` makes sure the lease renewer process
  runs (``renewal.py``; it renews the held entries, out of reach of this
  process's GIL) and reads each running job's record: a job whose attempt
  moved on (taken over) is abandoned, one with ``cancel_requested`` is
  cancelled (the safety net when a ``cancel`` message on the job's control
  channel was missed, ``control.py``). The same check runs at once for the
  jobs whose control channel was just subscribed (or subscribed again).
- ``KindRegistry``: writes this worker's kinds to ``jobgate:kinds:v2``, each
  with its params schema when it was declared with one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

import redis

from . import keys
from .inflight import InFlight, Run
from .job_record import JobRecords
from .renewal import LeaseRenewer
from .streams import QueueStreams

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Keeps the renewer running; ``stop(run, reason)`` ends an attempt that must not go on."""

    def __init__(
        self,
        renewer: LeaseRenewer,
        inflight: InFlight,
        records: JobRecords,
        stop: Callable[[Run, str], None],
    ) -> None:
        self.renewer = renewer
        self.inflight = inflight
        self.records = records
        self._stop_run = stop

    def check(self) -> None:
        self.renewer.ensure_running(self.inflight.replay)
        self.check_runs()

    def check_runs(self, job_ids: Collection[str] | None = None) -> None:
        """Read the running jobs' records now (only ``job_ids``' when given);
        stop those taken over or cancelled."""
        try:
            self._check_runs(job_ids)
        except redis.RedisError:
            log.warning("checking the running jobs failed", exc_info=True)

    def _check_runs(self, job_ids: Collection[str] | None) -> None:
        runs = [run for run in self.inflight.runs() if run.started is not None and not run.finished]
        if job_ids is not None:
            wanted = set(job_ids)
            runs = [run for run in runs if run.job_id in wanted]
        if not runs:
            return
        states = self.records.states([run.job_id for run in runs])
        for run, state in zip(runs, states, strict=True):
            if state.status != "running" or state.attempt != run.attempt:
                self._stop(run, "lease_lost")
            elif state.cancel_requested:
                self._stop(run, "cancelled")

    def _stop(self, run: Run, reason: str) -> None:
        if not run.finished:
            log.info("stopping a running job", extra={"job_id": run.job_id, "reason": reason})
            self._stop_run(run, reason)


class KindRegistry:
    def __init__(
        self,
        streams: QueueStreams,
        kinds: list[str],
        params_schemas: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        self.streams = streams
        self.kinds = kinds
        self.params_schemas = dict(params_schemas or {})

    def register(self) -> None:
        if not self.kinds:
            return
        client = self.streams.client
        try:
            now_ms = self.streams.server_time_ms()
            previous = client.hmget(keys.KINDS_KEY, self.kinds)
            for kind, raw in zip(self.kinds, previous, strict=True):
                self._warn_if_moved(kind, raw)
            client.hset(
                keys.KINDS_KEY,
                mapping={kind: self.registration(kind, now_ms) for kind in self.kinds},
            )
        except redis.RedisError:
            log.warning("registering job kinds failed", exc_info=True)

    def registration(self, kind: str, now_ms: int) -> str:
        """The kind's registration JSON: ``{"queue", "worker", "seen_at",
        "params_schema"?}``."""
        value: dict[str, Any] = {
            "queue": self.streams.queue,
            "worker": self.streams.consumer,
            "seen_at": now_ms,
        }
        schema = self.params_schemas.get(kind)
        if schema is not None:
            value["params_schema"] = schema
        return json.dumps(value, separators=(",", ":"))

    def _warn_if_moved(self, kind: str, raw: object) -> None:
        if not isinstance(raw, str):
            return
        try:
            queue = json.loads(raw).get("queue")
        except (ValueError, AttributeError):
            return
        if queue is not None and queue != self.streams.queue:
            log.warning(
                "job kind was registered for another queue; routing it here now",
                extra={"kind": kind, "previous_queue": queue, "queue": self.streams.queue},
            )
