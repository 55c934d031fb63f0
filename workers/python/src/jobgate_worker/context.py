"""What a handler gets as ``ctx``: identity, trace, Dask, progress and cancellation.

Progress is coalesced here: ``ctx.progress()`` only records the latest value
and arms one timer; the timer thread writes at most one ``progress`` event
per ``progress_interval`` (the latest value wins), and whatever is still
pending is written before the job's terminal event. A handler may therefore
call ``ctx.progress()`` in its innermost loop.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from .dask_provider import DaskProvider
from .dask_support import JobDask
from .errors import DaskError, JobCancelled
from .logs import CONTEXT_ATTRIBUTE, LogContext
from .scheduler import Scheduler, Timer
from .tracing import SpanContext

#: Sends one progress JSON; returns False when the job no longer accepts it.
ProgressSender = Callable[[str], bool]
#: Ends the attempt with a retry once Dask cannot finish the job's tasks.
DaskLostHandler = Callable[[DaskError], None]

Number = int | float


class ProgressReporter:
    """Coalesces progress reports into at most one event per interval."""

    def __init__(self, send: ProgressSender, scheduler: Scheduler, interval_s: float) -> None:
        self._send = send
        self._scheduler = scheduler
        self._interval_s = interval_s
        self._lock = threading.Lock()
        # Held while an event is written, so the final flush cannot overtake
        # a write already in flight on the timer thread.
        self._send_lock = threading.Lock()
        self._pending: tuple[Number, Number, str | None] | None = None
        self._last_sent = -math.inf
        self._timer: Timer | None = None
        self._closed = False

    def report(self, done: Number, total: Number, message: str | None) -> None:
        with self._lock:
            if self._closed:
                return
            self._pending = (done, total, message)
            if self._timer is None:
                due = max(time.monotonic(), self._last_sent + self._interval_s)
                self._timer = self._scheduler.call_at(due, self._flush_due, "progress")

    def _flush_due(self) -> None:
        with self._send_lock:
            with self._lock:
                self._timer = None
                pending, self._pending = self._pending, None
                if pending is None or self._closed:
                    return
                self._last_sent = time.monotonic()
            if not self._write(pending):
                with self._lock:
                    self._closed = True

    def close(self, flush: bool) -> None:
        """Stop reporting; with ``flush``, write what is pending first."""
        with self._send_lock:
            with self._lock:
                self._closed = True
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                pending, self._pending = self._pending, None
            if flush and pending is not None:
                self._write(pending)

    def _write(self, pending: tuple[Number, Number, str | None]) -> bool:
        done, total, message = pending
        payload: dict[str, Any] = {"done": done, "total": total}
        if message is not None:
            payload["message"] = message
        return self._send(json.dumps(payload, allow_nan=False, separators=(",", ":")))


class _JobLoggerAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Carries the job's context on every line, keeping the caller's own ``extra``.

    The context is the fallback for threads the SDK did not bind (a thread
    the handler started itself); in the handler thread and in Dask tasks the
    current span and the bound context name the line's span.
    """

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        own = kwargs.get("extra") or {}
        kwargs["extra"] = {**(self.extra or {}), **own}
        return msg, kwargs


class JobContext:
    """The handle a job handler receives as its first argument."""

    def __init__(
        self,
        *,
        job_id: str,
        attempt: int,
        max_attempts: int,
        kind: str,
        queue: str,
        owner: str,
        span: SpanContext,
        tracestate: str,
        timeout_s: float,
        progress: ProgressReporter,
        dask_provider: DaskProvider,
        logger: logging.Logger,
        on_dask_lost: DaskLostHandler | None = None,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.kind = kind
        self.queue = queue
        self.owner = owner
        self.span = span
        self.tracestate = tracestate
        self.timeout_s = timeout_s
        self._progress = progress
        self._dask_provider = dask_provider
        self._on_dask_lost = on_dask_lost
        self._dask: JobDask | None = None
        self._dask_lock = threading.Lock()
        self._stopped = threading.Event()
        self._stop_reason = ""
        self.log_context = LogContext(
            span.trace_id, span.span_id, job_id, {"attempt": attempt, "kind": kind}
        )
        self.logger: logging.LoggerAdapter[logging.Logger] = _JobLoggerAdapter(
            logger, {CONTEXT_ATTRIBUTE: self.log_context}
        )

    @property
    def trace_id(self) -> str:
        return self.span.trace_id

    @property
    def traceparent(self) -> str:
        """The W3C traceparent of this attempt's span, for downstream calls."""
        return self.span.traceparent

    @property
    def dask(self) -> JobDask:
        """The Dask client (started on first use); the job's futures are tracked."""
        if self._dask is None:
            with self._dask_lock:
                if self._dask is None:
                    self._dask = JobDask(
                        self._dask_provider,
                        self.job_id,
                        self.attempt,
                        self.span.traceparent,
                        self.tracestate,
                        on_lost=self._on_dask_lost,
                    )
        return self._dask

    def progress(self, done: Number, total: Number, message: str | None = None) -> None:
        """Report progress; cheap enough to call in a tight loop (coalesced)."""
        if not isinstance(done, int | float) or not isinstance(total, int | float):
            raise TypeError("progress done and total must be numbers")
        if not (math.isfinite(done) and math.isfinite(total)) or done < 0 or total < 0:
            raise ValueError("progress done and total must be finite and not negative")
        if message is not None and not isinstance(message, str):
            raise TypeError("progress message must be a string")
        self._progress.report(done, total, message)

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled, timed out, lost its lease or is being stopped."""
        return self._stopped.is_set()

    @property
    def stop_reason(self) -> str:
        """Why the job is being stopped, or ``""``.

        ``cancelled``, ``timeout``, ``lease_lost`` (another worker took it over),
        ``shutdown`` (this worker is stopping and gave the job back), or the
        ``DaskError`` code that ends the attempt with a retry because Dask
        cannot finish its tasks (``dask_unavailable``, ``dask_no_workers``).
        """
        return self._stop_reason

    def raise_if_cancelled(self) -> None:
        """Raise :class:`JobCancelled` if the job should stop now."""
        if self._stopped.is_set():
            raise JobCancelled(self.job_id, self._stop_reason)

    def wait_cancelled(self, timeout_s: float | None = None) -> bool:
        """Sleep up to ``timeout_s``, waking early when the job is stopped."""
        return self._stopped.wait(timeout_s)

    # -- used by the SDK.

    def _stop(self, reason: str) -> None:
        if not self._stopped.is_set():
            self._stop_reason = reason
            self._stopped.set()
        if self._dask is not None:
            self._dask.cancel_all()

    def _dask_error_for(self, error: BaseException) -> DaskError | None:
        """The ``DaskError`` the handler's exception stands for, if the job used Dask."""
        if self._dask is None:
            return None
        return self._dask_provider.dask_error_for(error)

    def _finish_dask(self) -> None:
        if self._dask is not None:
            self._dask.release()
