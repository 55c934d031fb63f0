"""Redis calls of many handler threads, sent together in one pipeline.

Every handler thread makes the same few calls per job (``start``, then the
terminal call with the entry's acknowledgement). Sent one by one, each is a
round trip, two system calls and a hand-over of the interpreter lock; at a
few thousand jobs a second that is most of what the worker does.
``PipelineBatcher`` combines them: a thread that wants a call made queues it;
if no batch is in flight it becomes the batch's sender, takes everything
queued so far (up to ``max_requests``), sends it as one pipeline and hands
each waiting thread its own replies. Calls queued meanwhile go in the next
batch. An idle worker sends each call at once, alone: batching never waits
for company, so it adds no latency.

A caller hands over either a job-script call (``script_call``: a
``ScriptCall``, and optionally the queue entry to acknowledge after it) or
plain commands (``call``: a function that adds them to the pipeline). One
pipeline is, in this order:

1. the script calls, as ONE command: the call itself when alone, otherwise
   the script's ``batch`` operation (``JobScript.queue_calls``), which runs
   them one after the other in one atomic call, each exactly as alone;
2. the acknowledgements, as one ``ACK_ENDED`` call (``streams.py``): each
   entry is acknowledged (``XACK`` + ``XDEL``) only if its job has ended by
   then, so an entry is never acknowledged unless its terminal call ran;
3. the plain commands, in the order their callers queued them.

Each caller gets its own replies: its script call's reply (its part of the
batch's), whether its entry was acknowledged, and its plain commands'
replies. An error reply comes back as the exception object, not raised, and
the caller decides what it means. An error of the batch is every caller's:
``NOSCRIPT`` (Redis lost its script cache: nothing ran and no entry was
acknowledged; each caller makes its call again through ``JobScript.call``,
which loads the script), or a script error (Lua), after which each caller
does as after its own script error: the entry stays pending and is
reclaimed. A failure of the whole round trip (a lost connection) is raised
in every caller of that batch, each of which handles it as it handled its
own call.

Single Redis only: on a cluster the calls of one batch would go to several
nodes (``enabled`` is false there and callers make their calls directly).
"""

from __future__ import annotations

import _thread
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import redis
from redis.cluster import RedisCluster

from .clients import Client
from .script import JobScript, ScriptCall
from .streams import Entry, ack_ended_replies, queue_ack_ended

#: Most callers served by one pipeline (each adds a script call, maybe with an
#: acknowledgement, or a few plain commands).
MAX_REQUESTS = 64

#: Adds a caller's plain commands to the pipeline.
Queue = Callable[[redis.client.Pipeline], None]


class ScriptAnswer(NamedTuple):
    """What a ``script_call`` caller gets back."""

    #: The script call's reply, or its error as an exception object.
    reply: Any
    #: Whether the entry to acknowledge was (it had ended); false without one.
    acknowledged: bool


class _Request:
    __slots__ = (
        "ack",
        "acknowledged",
        "call",
        "commands",
        "done",
        "error",
        "queue",
        "replies",
        "reply",
        "wake",
    )

    def __init__(
        self,
        call: ScriptCall | None = None,
        ack: Entry | None = None,
        queue: Queue | None = None,
        commands: int = 0,
    ) -> None:
        self.call = call
        self.ack = ack
        self.queue = queue
        self.commands = commands
        self.reply: Any = None
        self.acknowledged = False
        self.replies: list[Any] = []
        self.error: BaseException | None = None
        self.done = False
        #: Held until the request is served or its thread is to send the next
        #: batch: the waiting thread blocks on it (one wake-up per request).
        self.wake = _thread.allocate_lock()
        self.wake.acquire()


class PipelineBatcher:
    """Sends the calls of concurrent threads in shared pipelines; thread-safe.

    ``script`` is needed for ``script_call`` only.
    """

    def __init__(
        self,
        current: Callable[[], Client],
        script: JobScript | None = None,
        max_requests: int = MAX_REQUESTS,
    ) -> None:
        self._current = current
        self._script = script
        self.max_requests = max_requests
        self._lock = threading.Lock()
        self._pending: deque[_Request] = deque()
        #: Whether a thread is sending (or is about to send) a batch.
        self._sending = False
        #: Batches sent and callers served; script calls made, and the
        #: ``batch`` commands that carried two or more (for tests, profiling).
        self.batches = 0
        self.requests = 0
        self.script_calls = 0
        self.script_batches = 0

    @property
    def enabled(self) -> bool:
        """Whether calls can share a pipeline: a single Redis, not a cluster."""
        return not isinstance(self._current(), RedisCluster)

    def call(self, queue: Queue, commands: int) -> list[Any]:
        """Queue ``commands`` commands (added by ``queue``) and return their replies.

        A reply that is an error comes back as the exception object, not
        raised; a failure of the round trip itself is raised.
        """
        return self._serve(_Request(queue=queue, commands=commands)).replies

    def script_call(self, call: ScriptCall, ack: Entry | None = None) -> ScriptAnswer:
        """Make a job-script call, then acknowledge ``ack`` if its job has ended.

        The reply may be an error object: a ``NoScriptError`` means the call
        did not run (nor did any other of its batch). A failure of the round
        trip itself is raised.
        """
        if self._script is None:
            raise ValueError("PipelineBatcher makes script calls only when given the script")
        request = self._serve(_Request(call=call, ack=ack))
        return ScriptAnswer(request.reply, request.acknowledged)

    def _serve(self, request: _Request) -> _Request:
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
        calls = [request for request in batch if request.call is not None]
        acks = [request for request in batch if request.ack is not None]
        try:
            client = self._current()
            pipe = client.pipeline(transaction=False)
            if calls and self._script is not None:
                self._script.queue_calls(pipe, [r.call for r in calls if r.call is not None])
            if acks:
                queue_ack_ended(pipe, [r.ack for r in acks if r.ack is not None])
            for request in batch:
                if request.queue is not None:
                    request.queue(pipe)
            replies = pipe.execute(raise_on_error=False)
        except BaseException as error:  # noqa: BLE001 - handed to every caller
            for request in batch:
                request.error = error
            return
        self.batches += 1
        self.requests += len(batch)
        self.script_calls += len(calls)
        self.script_batches += len(calls) > 1
        at = 0
        if calls:
            for request, reply in zip(
                calls, JobScript.calls_replies(replies[0], len(calls)), strict=True
            ):
                request.reply = reply
            at = 1
        if acks:
            flags = ack_ended_replies(client, replies[at], len(acks))
            for request, acknowledged in zip(acks, flags, strict=True):
                request.acknowledged = acknowledged
            at += 1
        for request in batch:
            request.replies = replies[at : at + request.commands]
            at += request.commands

    @staticmethod
    def _result(request: _Request) -> _Request:
        if request.error is not None:
            raise request.error
        return request
