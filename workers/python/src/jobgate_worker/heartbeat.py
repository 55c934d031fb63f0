"""The worker's heartbeat: who this process is and what it holds, for operators.

Every ``heartbeat_s`` the scheduler thread writes one field of the queue's
hash ``jobgate:workers:{<queue>}`` (field = consumer name; value = JSON
``{consumer, host, pid, kinds, concurrency, in_hand, started_at, seen_at,
interval_ms}``), one ``HSET`` off the job path. A clean stop removes the
field; a process that died leaves it, and the gateway shows it ``gone``
until none of its entries are pending, then removes it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable

import redis

from . import keys
from .clients import Client

log = logging.getLogger(__name__)


class Heartbeat:
    """Writes and removes this consumer's field of ``jobgate:workers:{<queue>}``."""

    def __init__(
        self,
        client: Callable[[], Client],
        queue: str,
        consumer: str,
        *,
        kinds: list[str],
        concurrency: int,
        interval_s: float,
        in_hand: Callable[[], list[str]],
        on_server_time: Callable[[int], None] | None = None,
    ) -> None:
        """``on_server_time(ms)`` hears Redis's clock as each beat reads it."""
        self._client = client
        self._on_server_time = on_server_time
        self._key = keys.workers_key(queue)
        self._consumer = consumer
        self._in_hand = in_hand
        self._record: dict[str, object] = {
            "consumer": consumer,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "kinds": kinds,
            "concurrency": concurrency,
            "interval_ms": int(interval_s * 1000),
        }
        self._started_at: int | None = None

    def record(self, now_ms: int) -> dict[str, object]:
        """The heartbeat's value at ``now_ms`` (server time)."""
        if self._started_at is None:
            self._started_at = now_ms
        return {
            **self._record,
            "in_hand": sorted(self._in_hand()),
            "started_at": self._started_at,
            "seen_at": now_ms,
        }

    def beat(self) -> None:
        """One heartbeat; a Redis error is logged and the next beat tries again."""
        try:
            client = self._client()
            seconds, micros = client.time()
            now_ms = int(seconds) * 1000 + int(micros) // 1000
            if self._on_server_time is not None:
                self._on_server_time(now_ms)
            text = json.dumps(self.record(now_ms), separators=(",", ":"))
            client.hset(self._key, self._consumer, text)
        except redis.RedisError:
            log.warning("writing the heartbeat failed", exc_info=True)

    def remove(self) -> None:
        """At a clean stop: this consumer is no longer a worker."""
        try:
            self._client().hdel(self._key, self._consumer)
        except redis.RedisError:
            log.warning("removing the heartbeat failed", exc_info=True)
