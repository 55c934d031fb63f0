"""Redis connections: one pool, and one dedicated connection per thread.

Each thread of the worker (the read loop, every handler thread, the timer
thread) talks to Redis through its own single-connection client, taken
once from the shared pool. That keeps the blocking ``XREADGROUP`` of the
read loop off everyone else's connection, and saves the pool check-out and
check-in that redis-py otherwise does around every command — on the hot
path of a trivial job that is a noticeable share of its cost.
"""

from __future__ import annotations

import contextlib
import threading

import redis


class RedisClients:
    def __init__(self, url: str, *, socket_timeout: float) -> None:
        self.pool = redis.ConnectionPool.from_url(
            url,
            decode_responses=True,
            protocol=2,
            socket_timeout=socket_timeout,
            socket_connect_timeout=5.0,
            health_check_interval=30,
        )
        #: For occasional calls and pub/sub (which takes its own connection).
        self.shared = redis.Redis(connection_pool=self.pool)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._owned: list[redis.Redis] = []

    def current(self) -> redis.Redis:
        """This thread's own client (connected on first use)."""
        client: redis.Redis | None = getattr(self._local, "client", None)
        if client is None:
            client = redis.Redis(connection_pool=self.pool, single_connection_client=True)
            self._local.client = client
            with self._lock:
                self._owned.append(client)
        return client

    def close(self) -> None:
        with self._lock:
            owned, self._owned = self._owned, []
        for client in owned:
            with contextlib.suppress(redis.RedisError, OSError):
                client.close()
        self.pool.disconnect()
