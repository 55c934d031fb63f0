"""Redis calls of many handler threads, sent together in one pipeline.

Every handler thread makes the same few calls per job (``start``, then the
terminal call with the entry's ``XACK`` + ``XDEL``). Sent one by one, each is
a round trip, two system calls and a hand-over of the interpreter lock; at a
few thousand jobs a second that is most of what the worker does.
``PipelineBatcher`` combines them: a thread that wants a call made queues it;
if no batch is in flight it becomes the batch's sender, takes everything
queued so far (up to ``max_requests``), sends it as one pipeline and hands
each waiting thread its own replies. Calls queued meanwhile go in the next
batch. An idle worker sends each call at once, alone: batching never waits
for company, so it adds no latency.

A pipeline is not a transaction: each call still runs on its own, as it
would have in its own round trip, and each caller gets its own replies
(errors included, as exception objects) and decides what they mean. A
failure of the whole round trip (a lost connection) is raised in every
caller of that batch, each of which handles it as it handled its own call.

Single Redis only: on a cluster the calls of one batch would go to several
nodes (``enabled`` is false there and callers make their calls directly).
"""

from __future__ import annotations

import _thread
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import redis
from redis.cluster import RedisCluster

from .clients import Client

#: Most callers served by one pipeline (each adds one to three commands).
MAX_REQUESTS = 64

#: Adds a caller's commands to the pipeline.
Queue = Callable[[redis.client.Pipeline], None]


class _Request:
    __slots__ = ("commands", "done", "error", "queue", "replies", "wake")

    def __init__(self, queue: Queue, commands: int) -> None:
        self.queue = queue
        self.commands = commands
        self.replies: list[Any] = []
        self.error: BaseException | None = None
        self.done = False
        #: Held until the request is served or its thread is to send the next
        #: batch: the waiting thread blocks on it (one wake-up per request).
        self.wake = _thread.allocate_lock()
        self.wake.acquire()


class PipelineBatcher:
    """Sends the calls of concurrent threads in shared pipelines; thread-safe."""

    def __init__(self, current: Callable[[], Client], max_requests: int = MAX_REQUESTS) -> None:
        self._current = current
        self.max_requests = max_requests
        self._lock = threading.Lock()
        self._pending: deque[_Request] = deque()
        #: Whether a thread is sending (or is about to send) a batch.
        self._sending = False
        #: Batches sent and callers served (for tests and profiling).
        self.batches = 0
        self.requests = 0

    @property
    def enabled(self) -> bool:
        """Whether calls can share a pipeline: a single Redis, not a cluster."""
        return not isinstance(self._current(), RedisCluster)

    def call(self, queue: Queue, commands: int) -> list[Any]:
        """Queue ``commands`` commands (added by ``queue``) and return their replies.

        A reply that is an error comes back as the exception object, not
        raised; a failure of the round trip itself is raised.
        """
        request = _Request(queue, commands)
        with self._lock:
            self._pending.append(request)
            wait = self._sending
            self._sending = True
        if wait:
            # Woken once: served, or handed the sending of the next batch.
            request.wake.acquire()
            if request.done:
                return self._result(request)
        while not request.done:
            with self._lock:
                count = min(self.max_requests, len(self._pending))
                batch = [self._pending.popleft() for _ in range(count)]
            self._send(batch)
            for served in batch:
                served.done = True
                if served is not request:
                    served.wake.release()
        with self._lock:
            successor = self._pending[0] if self._pending else None
            self._sending = successor is not None
        if successor is not None:
            # Calls queued while we sent: the first of them sends them.
            successor.wake.release()
        return self._result(request)

    def _send(self, batch: list[_Request]) -> None:
        try:
            pipe = self._current().pipeline(transaction=False)
            for request in batch:
                request.queue(pipe)
            replies = pipe.execute(raise_on_error=False)
        except BaseException as error:  # noqa: BLE001 - handed to every caller
            for request in batch:
                request.error = error
            return
        self.batches += 1
        self.requests += len(batch)
        at = 0
        for request in batch:
            request.replies = replies[at : at + request.commands]
            at += request.commands

    @staticmethod
    def _result(request: _Request) -> list[Any]:
        if request.error is not None:
            raise request.error
        return request.replies
