"""The lease renewer: a small process that keeps this worker's leases alive.

An entry is leased by being pending with this consumer in the group; it is
renewed by resetting its idle time. Renewing from a thread of the worker
would need the worker's GIL, which a busy handler (a long C call, a
catastrophic regex) can hold for longer than the lease. So the worker starts
this module as a child process (``python -m jobgate_worker.renewer``), with
its own interpreter and its own Redis connection, and tells it through its
stdin which entries it holds:

- first line: the configuration, a JSON object (``redis_url``, ``consumer``,
  ``interval_s``, ``parent_pid``, ``log_level``) — on stdin rather than on
  the command line, so a password in the URL is not shown by ``ps``; the
  renewer connects through the worker's own factory (``clients.py``), so a
  list of cluster seeds gives it a cluster client too;
- then one JSON line per change: ``{"op": "hold"|"drop", "stream", "entry_id"}``,
  or ``{"op": "renew"}``: renew now (sent after a new renewer was told
  what an exited one held, whose last renewal may be a while ago).

It answers ``ready`` on stdout once connected, then every ``interval_s``
renews every entry it was told to hold and not told to drop, with
``RENEW_SCRIPT``: atomically per stream, and only entries still pending *with
this consumer*, so it never takes back an entry another worker reclaimed.
Each call names one stream (one slot); the calls for the bands of a queue
share a pipeline, which a cluster client sends to the queue's node.
An entry found not pending twice in a row (acknowledged, deleted or taken
over) is logged and forgotten.

It ignores SIGINT and SIGTERM: a Ctrl-C or a service manager's SIGTERM
reaches the whole process group, and the worker's graceful shutdown that
follows needs its leases renewed until it closes the pipe. It exits when its
stdin reaches end of file (the worker closed it, or the
worker died: the kernel closes a dead process's pipes) or when its parent
process is no longer the worker — checked before every renewal, so a killed
worker's leases expire and its jobs are reclaimed.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis
from redis.cluster import RedisCluster

from . import keys
from .clients import Client, RedisClients, fixed_client
from .logs import configure_logging

log = logging.getLogger("jobgate_worker.renewer")

#: KEYS[1] a band stream; ARGV: group, consumer, entry ids. Resets the idle
#: time of those ids still pending with ``consumer``; returns them.
RENEW_SCRIPT = """
local renewed = {}
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if pending[1] and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    renewed[#renewed + 1] = ARGV[i]
  end
end
return renewed
"""

#: What the renewer writes on stdout once it can renew.
READY = "ready"


@dataclass(frozen=True, slots=True)
class RenewerConfig:
    redis_url: str
    consumer: str
    interval_s: float
    parent_pid: int
    log_level: str = "INFO"

    def to_line(self) -> str:
        return json.dumps(
            {
                "redis_url": self.redis_url,
                "consumer": self.consumer,
                "interval_s": self.interval_s,
                "parent_pid": self.parent_pid,
                "log_level": self.log_level,
            }
        )

    @classmethod
    def from_line(cls, line: str) -> RenewerConfig:
        raw = json.loads(line)
        return cls(
            redis_url=str(raw["redis_url"]),
            consumer=str(raw["consumer"]),
            interval_s=float(raw["interval_s"]),
            parent_pid=int(raw["parent_pid"]),
            log_level=str(raw.get("log_level", "INFO")),
        )


def change_line(op: str, stream: str, entry_id: str) -> bytes:
    """One ``hold``/``drop`` message, as written to the renewer's stdin."""
    return (json.dumps({"op": op, "stream": stream, "entry_id": entry_id}) + "\n").encode()


RENEW_NOW_LINE = b'{"op": "renew"}\n'


class Renewer:
    """The held set and the renewal of it; ``run`` is the process's loop."""

    def __init__(self, config: RenewerConfig, client: Client | Callable[[], Client]) -> None:
        """``client`` is a client, or gives one (it may raise ``redis.ConnectionError``
        while Redis cannot be reached: that renewal is then skipped)."""
        self.config = config
        self._client = (
            fixed_client(client) if isinstance(client, redis.Redis | RedisCluster) else client
        )
        self.held: set[tuple[str, str]] = set()
        #: Entries found not pending at the last renewal.
        self._missing: set[tuple[str, str]] = set()
        self._buffer = b""
        #: A ``renew`` message asked for a renewal before the next interval.
        self.renew_now = False

    def apply(self, line: bytes) -> None:
        try:
            change = json.loads(line)
            op = change["op"]
            if op == "renew":
                self.renew_now = True
                return
            key = (str(change["stream"]), str(change["entry_id"]))
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable message to the lease renewer", extra={"line": repr(line)})
            return
        if op == "hold":
            self.held.add(key)
        elif op == "drop":
            self.held.discard(key)
            self._missing.discard(key)

    def read_changes(self, fd: int, timeout_s: float) -> bool:
        """Apply what arrives on ``fd`` within ``timeout_s``; False at end of file."""
        ready, _, _ = select.select([fd], [], [], max(timeout_s, 0.0))
        if not ready:
            return True
        chunk = os.read(fd, 65536)
        if not chunk:
            return False
        self.take(chunk)
        return True

    def take(self, chunk: bytes) -> None:
        """Apply the complete lines in ``chunk`` (and what was left over before)."""
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self.apply(line)

    def parent_alive(self) -> bool:
        return os.getppid() == self.config.parent_pid

    def renew(self) -> None:
        by_stream: dict[str, list[str]] = {}
        for stream, entry_id in self.held:
            by_stream.setdefault(stream, []).append(entry_id)
        if not by_stream:
            return
        try:
            pipe = self._client().pipeline(transaction=False)
            for stream, ids in by_stream.items():
                # EVAL rather than EVALSHA: a few hundred bytes every few seconds,
                # and no script cache to miss after a Redis restart.
                # (A cluster pipeline has no ``eval``: the command is spelt out.)
                pipe.execute_command(
                    "EVAL", RENEW_SCRIPT, 1, stream, keys.CONSUMER_GROUP, self.config.consumer, *ids
                )
            replies = pipe.execute()
        except redis.RedisError:
            log.warning("lease renewal failed", exc_info=True)
            return
        missing: set[tuple[str, str]] = set()
        for (stream, ids), renewed in zip(by_stream.items(), replies, strict=True):
            still = set(renewed or [])
            missing.update((stream, entry_id) for entry_id in ids if entry_id not in still)
        self._forget(missing & self._missing)
        self._missing = missing

    def _forget(self, gone: Iterable[tuple[str, str]]) -> None:
        for stream, entry_id in gone:
            log.warning(
                "a held entry is no longer pending (acknowledged or deleted elsewhere)",
                extra={"stream": stream, "entry_id": entry_id},
            )
            self.held.discard((stream, entry_id))
            self._missing.discard((stream, entry_id))

    def run(self, fd: int) -> int:
        interval = self.config.interval_s
        next_renewal = time.monotonic() + interval
        while True:
            if not self.read_changes(fd, min(next_renewal - time.monotonic(), interval)):
                return 0  # the worker closed the pipe, or died
            if not self.parent_alive():
                log.warning(
                    "the worker is gone; the lease renewer stops",
                    extra={"parent_pid": self.config.parent_pid},
                )
                return 0
            if self.renew_now or time.monotonic() >= next_renewal:
                self.renew_now = False
                self.renew()
                next_renewal = time.monotonic() + interval


#: Read timeout of the renewer's Redis calls.
_SOCKET_TIMEOUT_S = 5.0


def _read_first_line(fd: int) -> tuple[bytes, bytes]:
    """The configuration line and whatever followed it in the same reads."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"", b""
        data += chunk
    first, rest = data.split(b"\n", 1)
    return first, rest


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stdin = sys.stdin.fileno()
    first, rest = _read_first_line(stdin)
    if not first:
        return 0
    config = RenewerConfig.from_line(first.decode())
    configure_logging(config.log_level)
    clients = RedisClients(config.redis_url, socket_timeout=_SOCKET_TIMEOUT_S)
    try:
        clients.current().ping()
    except redis.RedisError:
        log.warning("redis unreachable; the lease renewer retries at each renewal", exc_info=True)
    renewer = Renewer(config, clients.current)
    renewer.take(rest)
    sys.stdout.write(READY + "\n")
    sys.stdout.flush()
    try:
        return renewer.run(stdin)
    finally:
        clients.close()


if __name__ == "__main__":
    sys.exit(main())
