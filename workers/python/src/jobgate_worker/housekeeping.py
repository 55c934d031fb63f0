"""Background duties of a worker process besides running jobs.

- ``LeaseKeeper``: every ``lease/3`` makes sure the lease renewer process
  runs (``renewal.py``; it renews the held entries, out of reach of this
  process's GIL) and reads each running job's record: a job whose attempt
  moved on (taken over) is abandoned, one with ``cancel_requested`` is
  cancelled (the fallback when a pub/sub ``cancel`` message was missed).
- ``KindRegistry``: writes this worker's kinds to ``jobgate:kinds``.
- ``ControlListener``: the one pub/sub thread per process, ``PSUBSCRIBE
  jobgate:control:*``; a ``cancel`` message stops the job if it runs here.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
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
        try:
            self._check_runs()
        except redis.RedisError:
            log.warning("checking the running jobs failed", exc_info=True)

    def _check_runs(self) -> None:
        runs = [run for run in self.inflight.runs() if run.started is not None and not run.finished]
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
    def __init__(self, streams: QueueStreams, kinds: list[str]) -> None:
        self.streams = streams
        self.kinds = kinds

    def register(self) -> None:
        if not self.kinds:
            return
        client = self.streams.client
        try:
            now_ms = self.streams.server_time_ms()
            previous = client.hmget(keys.KINDS_KEY, self.kinds)
            for kind, raw in zip(self.kinds, previous, strict=True):
                self._warn_if_moved(kind, raw)
            value = {
                "queue": self.streams.queue,
                "worker": self.streams.consumer,
                "seen_at": now_ms,
            }
            text = json.dumps(value, separators=(",", ":"))
            client.hset(keys.KINDS_KEY, mapping=dict.fromkeys(self.kinds, text))
        except redis.RedisError:
            log.warning("registering job kinds failed", exc_info=True)

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


class ControlListener:
    """Receives ``cancel`` messages on ``jobgate:control:<job_id>``."""

    def __init__(
        self, client: redis.Redis, on_cancel: Callable[[str], None], poll_s: float = 0.2
    ) -> None:
        self.client = client
        self.on_cancel = on_cancel
        self.poll_s = poll_s
        self._stopping = threading.Event()
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jobgate-control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_subscribed(self, timeout: float) -> bool:
        return self._subscribed.wait(timeout)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(self.poll_s + 2)

    def _run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            open_pubsub: Any = self.client.pubsub  # not annotated upstream
            pubsub: Any = open_pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.psubscribe(keys.CONTROL_PATTERN)
                self._subscribed.set()
                backoff = 0.1
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=self.poll_s)
                    if message is not None and message.get("type") == "pmessage":
                        self._handle(str(message["channel"]), str(message["data"]))
            except (redis.ConnectionError, redis.TimeoutError):
                self._subscribed.clear()
                log.warning("control subscription lost; reconnecting", exc_info=True)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                pubsub.close()

    def _handle(self, channel: str, data: str) -> None:
        if not channel.startswith(keys.CONTROL_CHANNEL_PREFIX):
            return
        job_id = channel[len(keys.CONTROL_CHANNEL_PREFIX) :]
        if data == "cancel":
            self.on_cancel(job_id)
        else:
            log.debug("unknown control message", extra={"job_id": job_id, "control": data})
