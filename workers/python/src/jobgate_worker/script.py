"""The job state machine script (``proto-schemas/redis/jobgate.lua``), typed.

The script is the contract shared with the gateway, so it is loaded from the
repository's ``proto-schemas`` folder rather than copied into the package:
``$JOBGATE_PROTO_DIR/redis/jobgate.lua`` when that variable is set, otherwise the
first ``proto-schemas/redis/jobgate.lua`` found walking up from this file.
It is run by its SHA1 and sent whole when a node has not cached it (a
restart, a failover): ``LuaScript``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from . import keys
from .clients import Client, fixed_client
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
    #: When the job was created (ms, Redis's clock): its outcome's latency starts there.
    created_at: int = 0
    queue: str = ""


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def _int(value: Any) -> int:
    try:
        return int(_text(value))
    except ValueError:
        return 0


def _parse(raw: Any) -> Reply:
    items = list(raw)
    return Reply(status=_text(items[0]), values=tuple(items[1:]))


def parse_reply(raw: Any) -> Reply:
    """A raw script reply as a :class:`Reply`."""
    return _parse(raw)


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One operation of the job script on one job: its name, then its arguments."""

    job_id: str
    args: tuple[str | int, ...]


class LuaScript:
    """A Lua script run by its SHA1 (``EVALSHA``), sent whole (``EVAL``) when the
    node answering has not cached it (``NOSCRIPT``: a restart, a failover, a
    node that never ran it): that also caches it there."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis's script id

    def __call__(self, client: Client, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return client.eval(self.source, len(keys), *keys, *args)

    def queue(
        self, pipe: redis.client.Pipeline, keys: Sequence[str], args: Sequence[str | int]
    ) -> None:
        """Add a plain ``EVALSHA`` to ``pipe``; its reply may be a ``NoScriptError``."""
        execute: Any = pipe.execute_command  # not annotated upstream
        execute("EVALSHA", self.sha, len(keys), *keys, *args)

    def load(self, client: Client) -> None:
        """``SCRIPT LOAD``: cache the script on the node ``client`` talks to."""
        client.script_load(self.source)


class JobScript:
    """The operations of ``jobgate.lua`` a worker makes.

    A job's terminal call (``complete``, ``fail``, ``cancelled``) is built by
    ``outcomes.terminal_call`` and made through :meth:`call` or :meth:`queue`;
    the gateway's own operations (``create``, ``cancel``) are not here.
    ``current`` picks the client of the calling thread (see ``clients.py``);
    without it every call goes through ``client``. Every call names the two
    keys of one job, which share its hash tag: on a cluster it runs on the
    job's node.
    """

    def __init__(
        self,
        client: Client | None,
        source: str,
        current: Callable[[], Client] | None = None,
    ) -> None:
        if current is None:
            if client is None:
                raise ValueError("JobScript needs a client or a way to pick one")
            current = fixed_client(client)
        self._script = LuaScript(source)
        self._current = current

    @classmethod
    def load(
        cls,
        client: Client | None,
        proto_dir: str | None = None,
        current: Callable[[], Client] | None = None,
    ) -> JobScript:
        return cls(client, find_script(proto_dir).read_text(encoding="utf-8"), current)

    @property
    def sha(self) -> str:
        return self._script.sha

    def call(self, job_id: str, *args: str | int) -> Reply:
        raw = self._script(self._current(), [keys.job_key(job_id), keys.events_key(job_id)], args)
        return _parse(raw)

    def ensure_loaded(self) -> None:
        """``SCRIPT LOAD`` now, before pipelines that use :meth:`queue`."""
        self._current().script_load(self._script.source)

    def queue(self, pipe: redis.client.Pipeline, job_id: str, *args: str | int) -> None:
        """Add the call to ``pipe`` as a plain EVALSHA.

        The caller must handle a ``NoScriptError`` reply (by running the
        operation through ``call``). A single Redis only: on a cluster the
        terminal call and the acknowledgement are on two nodes, made in order.
        """
        self._script.queue(pipe, [keys.job_key(job_id), keys.events_key(job_id)], args)

    def queue_calls(self, pipe: redis.client.Pipeline, calls: Sequence[ScriptCall]) -> None:
        """Add ``calls`` to ``pipe`` as ONE command: the call itself when alone,
        otherwise a ``batch`` of them (one atomic call, each operation run as
        it would be alone). :meth:`calls_replies` splits its reply.

        As :meth:`queue`: the caller handles a ``NoScriptError`` reply, and all
        the jobs must be on one node (a single Redis).
        """
        if len(calls) == 1:
            self.queue(pipe, calls[0].job_id, *calls[0].args)
            return
        job_keys: list[str] = []
        argv: list[str | int] = ["batch", len(calls)]
        for call in calls:
            job_keys += [keys.job_key(call.job_id), keys.events_key(call.job_id)]
            argv += [call.args[0], len(call.args) - 1, *call.args[1:]]
        self._script.queue(pipe, job_keys, argv)

    @staticmethod
    def calls_replies(raw: Any, count: int) -> list[Any]:
        """Each call's reply, from the reply of :meth:`queue_calls`'s command.

        An error reply is every call's: ``NOSCRIPT`` (nothing ran, the whole
        batch was refused), a malformed batch (nothing ran), or a script error.
        """
        if count == 1 or isinstance(raw, Exception):
            return [raw] * count
        items = list(raw)
        if len(items) != count + 1 or _text(items[0]) != "ok":
            error = redis.ResponseError(f"jobgate: a batch of {count} calls answered {raw!r}")
            return [error] * count
        return items[1:]

    # -- operations of the worker.

    def start(self, job_id: str, worker_name: str) -> tuple[Reply, StartedJob | None]:
        return self.started(self.call(job_id, "start", worker_name))

    @staticmethod
    def started(reply: Reply) -> tuple[Reply, StartedJob | None]:
        """``start``'s reply, and the attempt it began (``None`` unless ``ok``)."""
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
            created_at=_int(v[9]) if len(v) > 9 else 0,
            queue=_text(v[10]) if len(v) > 10 else "",
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
