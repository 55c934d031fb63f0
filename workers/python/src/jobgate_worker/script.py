"""The job state machine script (``proto-schemas/redis/jobgate.lua``), typed.

The script is the contract shared with the gateway, so it is loaded from the
repository's ``proto-schemas`` folder rather than copied into the package:
``$JOBGATE_PROTO_DIR/redis/jobgate.lua`` when that variable is set, otherwise the
first ``proto-schemas/redis/jobgate.lua`` found walking up from this file.
It is registered with ``register_script`` so that a Redis that lost its script
cache (a restart) gets it loaded again on the next ``NOSCRIPT`` reply.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from . import keys
from .errors import ScriptNotFoundError

SCRIPT_RELATIVE_PATH = Path("redis") / "jobgate.lua"


def find_script(proto_dir: str | os.PathLike[str] | None = None) -> Path:
    """Locate ``jobgate.lua``; ``proto_dir`` (or ``$JOBGATE_PROTO_DIR``) wins."""
    explicit = proto_dir if proto_dir is not None else os.environ.get("JOBGATE_PROTO_DIR")
    if explicit:
        path = Path(explicit) / SCRIPT_RELATIVE_PATH
        if not path.is_file():
            raise ScriptNotFoundError(f"JOBGATE_PROTO_DIR={explicit} has no {SCRIPT_RELATIVE_PATH}")
        return path
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "proto-schemas" / SCRIPT_RELATIVE_PATH
        if candidate.is_file():
            return candidate
    raise ScriptNotFoundError(
        "proto-schemas/redis/jobgate.lua not found above the package; "
        "set JOBGATE_PROTO_DIR to the proto-schemas folder"
    )


@dataclass(frozen=True, slots=True)
class Reply:
    """A script reply: its status word and the values after it."""

    status: str
    values: tuple[Any, ...]

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def job_status(self) -> str | None:
        """The job status carried by ``skip``/``stale``/``exists`` replies."""
        if self.status in ("skip", "stale", "exists") and self.values:
            return str(self.values[0])
        return None


@dataclass(frozen=True, slots=True)
class StartedJob:
    """What ``start`` tells the worker about the attempt it now owns."""

    attempt: int
    kind: str
    params: str
    timeout_s: float
    max_attempts: int
    traceparent: str
    tracestate: str
    trace_id: str
    owner: str


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def _parse(raw: Any) -> Reply:
    items = list(raw)
    return Reply(status=_text(items[0]), values=tuple(items[1:]))


def parse_reply(raw: Any) -> Reply:
    """A raw script reply as a :class:`Reply`."""
    return _parse(raw)


class JobScript:
    """The operations of ``jobgate.lua`` a worker makes.

    A job's terminal call (``complete``, ``fail``, ``cancelled``) is built by
    ``outcomes.terminal_call`` and made through :meth:`call` or :meth:`queue`;
    the gateway's own operations (``create``, ``cancel``) are not here.
    ``current`` picks the client of the calling thread (see ``clients.py``);
    without it every call goes through ``client``.
    """

    def __init__(
        self,
        client: redis.Redis,
        source: str,
        current: Callable[[], redis.Redis] | None = None,
    ) -> None:
        self._script = client.register_script(source)
        self._current = current if current is not None else (lambda: client)

    @classmethod
    def load(
        cls,
        client: redis.Redis,
        proto_dir: str | None = None,
        current: Callable[[], redis.Redis] | None = None,
    ) -> JobScript:
        return cls(client, find_script(proto_dir).read_text(encoding="utf-8"), current)

    @property
    def sha(self) -> str:
        return str(self._script.sha)

    def call(self, job_id: str, *args: str | int) -> Reply:
        raw = self._script(
            keys=[keys.job_key(job_id), keys.events_key(job_id)],
            args=list(args),
            client=self._current(),
        )
        return _parse(raw)

    def ensure_loaded(self) -> None:
        """``SCRIPT LOAD`` now, before pipelines that use :meth:`queue`."""
        self._current().script_load(self._script.script)

    def queue(self, pipe: redis.client.Pipeline, job_id: str, *args: str | int) -> None:
        """Add the call to ``pipe`` as a plain EVALSHA.

        redis-py checks ``SCRIPT EXISTS`` before every pipeline holding a
        ``Script``; this skips that round trip, so the caller must handle a
        ``NoScriptError`` reply (by running the operation through ``call``).
        """
        pipe.evalsha(self.sha, 2, keys.job_key(job_id), keys.events_key(job_id), *args)

    # -- operations of the worker.

    def start(self, job_id: str, worker_name: str) -> tuple[Reply, StartedJob | None]:
        reply = self.call(job_id, "start", worker_name)
        if not reply.ok:
            return reply, None
        v = reply.values
        started = StartedJob(
            attempt=int(v[0]),
            kind=_text(v[1]),
            params=_text(v[2]),
            timeout_s=float(_text(v[3]) or 0),
            max_attempts=int(_text(v[4]) or 1),
            traceparent=_text(v[5]),
            tracestate=_text(v[6]),
            trace_id=_text(v[7]),
            owner=_text(v[8]),
        )
        return reply, started

    def progress(self, job_id: str, attempt: int, progress_json: str) -> Reply:
        return self.call(job_id, "progress", attempt, progress_json)

    def fail(self, job_id: str, attempt: int | str, code: str, message: str) -> Reply:
        return self.call(job_id, "fail", attempt, code, message)

    def retry(self, job_id: str, attempt: int, code: str, message: str, delay_ms: int) -> Reply:
        return self.call(job_id, "retry", attempt, code, message, delay_ms)

    def release(self, job_id: str, attempt: int) -> Reply:
        """Give a running attempt back at shutdown: ``queued`` again, the attempt not charged."""
        return self.call(job_id, "release", attempt)
