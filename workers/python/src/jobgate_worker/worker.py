"""``Worker``: the registry of job handlers an application declares.

Declaring a worker does no I/O, and a ``Worker`` knows nothing of how it is
run: the ``jobgate-worker`` command builds a ``Runtime`` (``runtime.py``)
from it, which connects to Redis and consumes the queue.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .context import JobContext

#: A job handler: ``handler(ctx, params)`` returning a JSON-serialisable result.
Handler = Callable[[JobContext, Any], Any]
H = TypeVar("H", bound=Handler)

_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class Worker:
    """A set of job handlers that consume one queue.

    ``progress_interval`` is the shortest time between two progress events of
    one job; ``retry_base_delay`` and ``retry_max_delay`` shape the backoff
    after a :class:`~jobgate_worker.RetryableError` (``base * 2**(attempt-1)``,
    capped, with jitter).
    """

    def __init__(
        self,
        queue: str = "default",
        *,
        progress_interval: float = 0.1,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 60.0,
    ) -> None:
        if not _NAME.match(queue):
            raise ValueError(f"queue name {queue!r} must match {_NAME.pattern}")
        if progress_interval < 0 or retry_base_delay < 0 or retry_max_delay < 0:
            raise ValueError("intervals and delays must not be negative")
        self.queue = queue
        self.progress_interval = progress_interval
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self._handlers: dict[str, Handler] = {}

    @property
    def handlers(self) -> Mapping[str, Handler]:
        return dict(self._handlers)

    def job(self, kind: str) -> Callable[[H], H]:
        """Register the decorated function as the handler of ``kind``."""
        if not _NAME.match(kind):
            raise ValueError(f"job kind {kind!r} must match {_NAME.pattern}")

        def register(handler: H) -> H:
            if kind in self._handlers:
                raise ValueError(f"job kind {kind!r} already has a handler")
            self._handlers[kind] = handler
            return handler

        return register

    def __repr__(self) -> str:
        return f"Worker(queue={self.queue!r}, kinds={sorted(self._handlers)})"
