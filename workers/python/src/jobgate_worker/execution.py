"""Running one queue entry: ``start``, the handler, and the one outcome it reports.

Steps follow PROTOCOL.md "Processing, in order": ``start``; ``skip``/``missing``
acknowledge the entry; otherwise the handler runs and exactly one of
``complete``, ``fail``, ``retry`` or ``cancelled`` is called, followed by
``XACK`` + ``XDEL`` — except on ``stale``, when the entry belongs to whichever
worker took the job over.

An attempt can end in two places: in the handler thread when the handler
returns, or on the timer thread when the job is cancelled, times out or its
lease is lost — or, at shutdown, on the runtime's thread, which gives the
job back (``release``) when the grace runs out. ``Run.claim_finish`` decides
which one reports; the other one's outcome is dropped. A handler that
ignores cancellation keeps its thread until it returns (Python cannot stop
a thread), but the job's state and its Dask tasks are settled at once.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import redis

from . import keys
from .context import JobContext, ProgressReporter
from .dask_support import DaskProvider
from .errors import JobCancelled, RetryableError
from .inflight import InFlight, Run
from .logs import bound
from .scheduler import Scheduler, Timer
from .script import JobScript, Reply, StartedJob, parse_reply
from .spans import AttemptSpans
from .streams import Entry, QueueStreams
from .tracing import SpanContext, Telemetry
from .worker import Worker

log = logging.getLogger("jobgate_worker.job")

_MESSAGE_LIMIT = 4000
#: Job error codes as proto-schemas/schemas/common.json allows them.
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
#: How many recently run entries are remembered to name the job of a deleted entry.
_SEEN_LIMIT = 10_000
_TERMINAL_TRIES = (0.0, 0.2, 1.0)
#: At shutdown, how long to wait for attempts whose ``start`` is still under way.
_START_WAIT_S = 2.0


def error_message(error: BaseException) -> str:
    """``"<ExceptionType>: <message>"``, bounded in length."""
    text = str(error)
    message = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return message[:_MESSAGE_LIMIT]


class JobExecutor:
    """Runs entries for one runtime; every method is safe to call from any thread."""

    def __init__(
        self,
        *,
        worker: Worker,
        queue: str,
        consumer: str,
        script: JobScript,
        streams: QueueStreams,
        scheduler: Scheduler,
        dask: DaskProvider,
        inflight: InFlight,
        lease_ms: int,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.worker = worker
        self.spans = AttemptSpans(telemetry or Telemetry(), queue, consumer)
        self.lease_ms = lease_ms
        self.queue = queue
        self.consumer = consumer
        self.script = script
        self.streams = streams
        self.scheduler = scheduler
        self.dask = dask
        self.inflight = inflight
        self._delayed: dict[tuple[str, str], Timer] = {}
        self._delayed_lock = threading.Lock()
        self._seen: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._seen_lock = threading.Lock()
        #: Set at shutdown once running attempts are being given back.
        self._closing = threading.Event()

    # -- the handler thread.

    def execute(self, entry: Entry) -> None:
        """Process one held entry to its end (or hand it to a later step)."""
        if not entry.job_id:
            log.error("queue entry without job_id dropped", extra={"entry_id": entry.entry_id})
            self._ack(entry)
            return
        self._remember(entry)
        if self._closing.is_set():
            # Fetched but not started before the shutdown: nothing to give
            # back, the entry stays pending and is reclaimed (start counts no
            # attempt for a queued job).
            log.info("shutting down; entry left pending", extra={"job_id": entry.job_id})
            self.inflight.release(entry)
            return
        run = Run(entry, extra={"job_id": entry.job_id, "entry_id": entry.entry_id})
        self.inflight.add_run(run)
        try:
            self._execute(run)
        except Exception:
            # Redis failed (or a bug here): the entry stays pending, and after
            # the lease another worker (or this one) reclaims it and runs it again.
            log.exception("running the job failed; leaving it to be reclaimed", extra=run.extra)
            run.claim_finish()
            self._abandon(run, "internal_error")
        finally:
            self.inflight.remove_run(run)
            if run.ctx is not None:
                run.ctx._finish_dask()

    def _execute(self, run: Run) -> None:
        start_ns = time.time_ns()
        reply, started = self.script.start(run.job_id, self.consumer)
        if started is None:
            self._not_started(run, reply)
            return
        with self.spans.process(run.entry, started, start_ns) as (span, ids):
            run.span = span
            run.span_context = span.get_span_context()
            self._attempt(run, started, ids)

    def _attempt(self, run: Run, started: StartedJob, span: SpanContext) -> None:
        """Run the handler of a started attempt (inside its consumer span)."""
        run.extra.update(
            trace_id=span.trace_id, span_id=span.span_id, attempt=started.attempt, kind=started.kind
        )
        ctx = self._context(run, started, span)
        with run.lock:
            run.started = started
            run.ctx = ctx
            cancel_seen = run.cancel_seen
        log.debug("job started", extra=run.extra)

        handler = self.worker.handlers.get(started.kind)
        if handler is None:
            message = f"no handler for kind {started.kind!r} in worker of queue {self.queue!r}"
            self._report(run, "failed", "fail", run.attempt, "unknown_kind", message)
            return
        try:
            params = json.loads(started.params) if started.params else None
        except ValueError as error:
            message = f"params are not valid JSON: {error}"
            self._report(run, "failed", "fail", run.attempt, "invalid_params", message)
            return
        if cancel_seen:
            self.stop(run, "cancelled")
            return
        if started.timeout_s > 0:
            run.timeout_timer = self.scheduler.call_later(
                started.timeout_s, lambda: self.stop(run, "timeout"), "timeout"
            )
        with bound(ctx.log_context):
            try:
                result = handler(ctx, params)
            except RetryableError as error:
                self._finish_retry(run, error)
            except JobCancelled:
                self._finish_cancelled(run)
            except BaseException as error:  # noqa: BLE001 - every handler failure is reported
                self._finish_failed(run, error)
            else:
                self._finish_completed(run, result)

    def _context(self, run: Run, started: StartedJob, span: SpanContext) -> JobContext:
        run.progress = ProgressReporter(
            lambda payload: self._send_progress(run, payload),
            self.scheduler,
            self.worker.progress_interval,
        )
        return JobContext(
            job_id=run.job_id,
            attempt=started.attempt,
            max_attempts=started.max_attempts,
            kind=started.kind,
            queue=self.queue,
            owner=started.owner,
            span=span,
            tracestate=started.tracestate,
            timeout_s=started.timeout_s,
            progress=run.progress,
            dask_provider=self.dask,
            logger=logging.getLogger(f"jobgate_worker.handler.{started.kind}"),
        )

    def _not_started(self, run: Run, reply: Reply) -> None:
        entry = run.entry
        extra = {**run.extra, "reply": reply.status, "status": reply.job_status}
        if reply.status == "skip" and reply.job_status == "failed" and entry.reclaimed:
            error = self.script_error(run.job_id)
            if error.get("code") == "max_attempts_exceeded":
                log.warning("job ran out of attempts; dead-lettered", extra=extra)
                self.streams.dead_letter(entry, "max_attempts_exceeded", json.dumps(error))
                self.inflight.release(entry)
                return
        log.info("entry skipped", extra=extra)
        self._ack(entry)

    def script_error(self, job_id: str) -> dict[str, Any]:
        """The job record's ``error`` field, decoded (empty when absent)."""
        raw = self.streams.client.hget(keys.job_key(job_id), "error")
        try:
            value = json.loads(raw) if isinstance(raw, str) else {}
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def _remember(self, entry: Entry) -> None:
        with self._seen_lock:
            self._seen[entry.key] = entry.job_id
            if len(self._seen) > _SEEN_LIMIT:
                self._seen.popitem(last=False)

    def entry_deleted(self, stream: str, entry_id: str) -> None:
        """A pending entry vanished from its stream (XDEL or trimming without XACK).

        Its fields are gone, so its job can be named only if this process ran
        the entry before; that job is failed with ``entry_deleted``, since no
        worker can ever be handed it again. Otherwise the loss is logged.
        """
        with self._seen_lock:
            job_id = self._seen.get((stream, entry_id))
        extra = {"stream": stream, "entry_id": entry_id, "job_id": job_id}
        if job_id is None:
            log.error(
                "a pending queue entry was deleted; its job cannot be identified", extra=extra
            )
            return
        status, attempt = self.streams.client.hmget(keys.job_key(job_id), ["status", "attempt"])
        if status not in ("queued", "running") or not isinstance(attempt, str):
            return
        message = "the queue entry of the job was deleted before the job finished"
        reply = self.script.fail(
            job_id, attempt if status == "running" else "*", "entry_deleted", message
        )
        log.error(
            "a pending queue entry was deleted; job failed", extra={**extra, "reply": reply.status}
        )

    # -- outcomes of the handler.

    def _finish_completed(self, run: Run, result: Any) -> None:
        if not run.claim_finish():
            self._dropped(run, "completed")
            return
        try:
            result_json = json.dumps(result, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as error:
            message = f"the handler's result is not JSON: {error_message(error)}"
            self._report(run, "failed", "fail", run.attempt, "result_not_serializable", message)
            return
        self._report(run, "completed", "complete", run.attempt, result_json)

    def _finish_failed(self, run: Run, error: BaseException) -> None:
        if not run.claim_finish():
            self._dropped(run, "failed")
            return
        log.error(
            "handler raised", exc_info=(type(error), error, error.__traceback__), extra=run.extra
        )
        AttemptSpans.outcome(run.span, "failed", "handler_error", error)
        message = error_message(error)
        self._report(run, "failed", "fail", run.attempt, "handler_error", message)

    def _finish_cancelled(self, run: Run) -> None:
        # The handler gave up by itself (raise JobCancelled without a request).
        if not run.claim_finish():
            return
        self._report(run, "cancelled", "cancelled", run.attempt)

    def _finish_retry(self, run: Run, error: RetryableError) -> None:
        if not run.claim_finish():
            self._dropped(run, "retry")
            return
        self._disarm(run)
        delay_s = error.delay_s if error.delay_s is not None else self.backoff_s(run.attempt)
        delay_ms = max(int(delay_s * 1000), 0)
        message = error.message[:_MESSAGE_LIMIT]
        code = error.code if _ERROR_CODE.match(error.code) else "retryable_error"
        if run.progress is not None:
            run.progress.close(flush=True)
        AttemptSpans.outcome(run.span, "retrying", code)
        with self.spans.publish(run.span_context, run.job_id, "retrying"):
            reply = self._with_retries(
                lambda: self.script.retry(run.job_id, run.attempt, code, message, delay_ms)
            )
        extra = {**run.extra, "error_code": code, "delay_ms": delay_ms}
        if reply.ok:
            log.info("job will be retried", extra=extra)
            self._requeue_later(run.entry, delay_s)
        elif reply.status == "failed":
            log.warning("job ran out of attempts; dead-lettered", extra=extra)
            final = self.script_error(run.job_id)
            self.streams.dead_letter(run.entry, "max_attempts_exceeded", json.dumps(final))
            self.inflight.release(run.entry)
        else:
            self._after_terminal(run, "retry", reply, acknowledged=False)

    def backoff_s(self, attempt: int) -> float:
        """Exponential backoff with jitter: half to all of ``base * 2**(attempt-1)``."""
        ceiling = self.worker.retry_base_delay * 2.0 ** max(attempt - 1, 0)
        return min(self.worker.retry_max_delay, ceiling) * random.uniform(0.5, 1.0)

    def _dropped(self, run: Run, outcome: str) -> None:
        reason = run.ctx.stop_reason if run.ctx is not None else ""
        log.info(
            "handler returned after the job ended; outcome dropped",
            extra={**run.extra, "outcome": outcome, "reason": reason},
        )

    # -- stopping from outside (timer thread).

    def stop(self, run: Run, reason: str) -> None:
        """End the attempt now: ``cancelled``, ``timeout`` or ``lease_lost``.

        (At shutdown, :meth:`give_back_all` ends the attempts still running.)
        """
        with run.lock:
            if run.ctx is None:
                if reason == "cancelled":
                    run.cancel_seen = True
                return
            ctx = run.ctx
        if not run.claim_finish():
            return
        ctx._stop(reason)
        if reason == "cancelled":
            self._report(run, "cancelled", "cancelled", run.attempt)
        elif reason == "timeout":
            timeout = run.started.timeout_s if run.started is not None else 0
            message = f"the job did not finish within {timeout:g} s"
            self._report(run, "failed", "fail", run.attempt, "timeout", message)
        else:
            # lease_lost: someone else runs the job.
            self._abandon(run, reason)

    def _abandon(self, run: Run, reason: str) -> None:
        self._disarm(run)
        AttemptSpans.outcome(run.span, "abandoned", reason)
        if run.progress is not None:
            run.progress.close(flush=False)
        if run.ctx is not None:
            run.ctx._stop(reason)
        self.inflight.release(run.entry)
        log.warning(
            "attempt abandoned; the entry stays pending", extra={**run.extra, "reason": reason}
        )

    # -- reporting.

    def _disarm(self, run: Run) -> None:
        if run.timeout_timer is not None:
            run.timeout_timer.cancel()
            run.timeout_timer = None

    def _report(self, run: Run, outcome: str, *operation: str | int) -> None:
        """Flush progress, make the terminal call, then acknowledge the entry."""
        self._disarm(run)
        if run.progress is not None:
            run.progress.close(flush=True)
        code = str(operation[2]) if operation[0] == "fail" else None
        AttemptSpans.outcome(run.span, outcome, code)
        try:
            with self.spans.publish(run.span_context, run.job_id, outcome):
                if self._lease_certainly_held(run.entry):
                    reply = self._with_retries(lambda: self._terminal_and_ack(run, operation))
                    acknowledged = True
                else:
                    reply = self._with_retries(lambda: self.script.call(run.job_id, *operation))
                    acknowledged = False
        except redis.RedisError:
            log.exception(
                "could not report the outcome; the job will be reclaimed", extra=run.extra
            )
            self.inflight.release(run.entry)
            return
        self._after_terminal(run, outcome, reply, acknowledged)

    def _lease_certainly_held(self, entry: Entry) -> bool:
        """True while no worker can have claimed the entry from us.

        Another worker claims an entry only once it has been idle for a whole
        lease; an entry delivered less than half a lease ago is still ours, so
        the outcome and the acknowledgement can share one round trip.
        """
        return (time.monotonic() - entry.delivered_at) * 1000 < self.lease_ms / 2

    def _terminal_and_ack(self, run: Run, operation: tuple[str | int, ...]) -> Reply:
        pipe = self.streams.client.pipeline(transaction=False)
        self.script.queue(pipe, run.job_id, *operation)
        self.streams.queue_ack_delete(pipe, run.entry)
        replies = pipe.execute(raise_on_error=False)
        first = replies[0]
        if isinstance(first, redis.exceptions.NoScriptError):
            # Redis lost its script cache: the entry is acknowledged already,
            # so make the call (which loads the script) before anything else.
            return self.script.call(run.job_id, *operation)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return parse_reply(first)

    def _after_terminal(self, run: Run, outcome: str, reply: Reply, acknowledged: bool) -> None:
        elapsed_ms = round((time.monotonic() - run.started_monotonic) * 1000, 3)
        extra = {**run.extra, "outcome": outcome, "reply": reply.status, "duration_ms": elapsed_ms}
        if reply.status == "stale":
            if acknowledged:
                log.error(
                    "attempt superseded within half a lease; check lease settings", extra=extra
                )
            else:
                # Our lease was taken over: the entry is the new owner's now.
                log.warning("attempt superseded; outcome refused", extra=extra)
            self.inflight.release(run.entry)
            return
        if acknowledged:
            self.inflight.release(run.entry)
        else:
            self._ack(run.entry)
        if reply.ok or reply.status == "failed":
            log.info(f"job {outcome}", extra=extra)
        else:
            log.info("job already ended elsewhere", extra={**extra, "status": reply.job_status})

    def _ack(self, entry: Entry) -> None:
        try:
            self._with_retries(lambda: self.streams.ack_delete(entry))
        except redis.RedisError:
            log.exception("could not acknowledge the entry", extra={"job_id": entry.job_id})
        finally:
            self.inflight.release(entry)

    @staticmethod
    def _with_retries(operation: Callable[[], Any]) -> Any:
        """A few quick tries across a connection blip; sleeps only after a failure."""
        for index, pause in enumerate(_TERMINAL_TRIES):
            if pause:
                time.sleep(pause)
            try:
                return operation()
            except (redis.ConnectionError, redis.TimeoutError):
                if index == len(_TERMINAL_TRIES) - 1:
                    raise
                log.warning("redis call failed; trying again", exc_info=True)
        raise AssertionError("unreachable")

    def _send_progress(self, run: Run, payload: str) -> bool:
        try:
            with self.spans.publish(run.span_context, run.job_id, "progress"):
                reply = self.script.progress(run.job_id, run.attempt, payload)
        except redis.RedisError:
            log.warning("progress not written", exc_info=True, extra=run.extra)
            return True
        if reply.ok:
            return True
        if reply.status == "stale":
            self.scheduler.call_later(0, lambda: self.stop(run, "lease_lost"), "lease_lost")
        return False

    # -- retryable errors: re-enqueue after the delay.

    def _requeue_later(self, entry: Entry, delay_s: float) -> None:
        # The old entry stays held (its lease renewed) until the new one exists,
        # so the job can be neither lost nor duplicated in between.
        timer = self.scheduler.call_later(delay_s, lambda: self.requeue(entry), "requeue")
        with self._delayed_lock:
            self._delayed[entry.key] = timer

    def requeue(self, entry: Entry) -> None:
        with self._delayed_lock:
            self._delayed.pop(entry.key, None)
        if not self.inflight.is_held(entry.key):
            return
        try:
            self._requeue_now(entry)
        except redis.RedisError:
            log.warning(
                "re-enqueue failed; trying again", exc_info=True, extra={"job_id": entry.job_id}
            )
            self._requeue_later(entry, 1.0)

    def _requeue_now(self, entry: Entry) -> None:
        """A fresh entry with the same fields at the end of the band, the old one
        acknowledged and deleted (one MULTI/EXEC); raises ``RedisError``."""
        new_id = self.streams.requeue(entry, self.streams.server_time_ms())
        self.inflight.release(entry)
        log.debug("job re-enqueued", extra={"job_id": entry.job_id, "entry_id": new_id})

    def requeue_all_now(self) -> None:
        """At shutdown: re-enqueue every entry waiting out a retry delay."""
        with self._delayed_lock:
            delayed, self._delayed = self._delayed, {}
        for timer in delayed.values():
            timer.cancel()
        for entry in self.inflight.held():
            if entry.key in delayed:
                self.requeue(entry)

    # -- shutdown: give back the attempts that cannot finish.

    def give_back_all(self, start_wait_s: float = _START_WAIT_S) -> None:
        """At shutdown, once the grace ran out: give back every attempt still running.

        Each one is ended here (its handler's late outcome is dropped), then
        ``release``d — back to ``queued`` without the attempt being charged —
        and its entry re-enqueued as after a retry; then its Dask futures are
        cancelled. An attempt whose ``start`` is still under way is waited for
        up to ``start_wait_s``. While Redis cannot be reached, the remaining
        entries are left pending, to be reclaimed once their lease expires.
        """
        self._closing.set()
        deadline = time.monotonic() + start_wait_s
        handled: set[Run] = set()
        reachable = True
        while True:
            starting: list[Run] = []
            for run in self.inflight.runs():
                if run in handled:
                    continue
                with run.lock:
                    started = run.ctx is not None
                if not started:
                    starting.append(run)
                    continue
                handled.add(run)
                if run.claim_finish():
                    reachable = self._give_back(run, reachable)
                # else: its handler (or a cancel/timeout) is reporting the outcome now.
            if not starting:
                return
            if time.monotonic() >= deadline:
                for run in starting:
                    log.warning(
                        "job still starting at shutdown; its entry stays pending", extra=run.extra
                    )
                return
            time.sleep(0.01)

    def _give_back(self, run: Run, reachable: bool) -> bool:
        """Release one attempt this process will not finish.

        ``reachable`` is False once Redis failed to answer during this
        shutdown: the entry is then left pending without trying. Returns
        whether Redis may still be reachable.
        """
        self._disarm(run)
        if run.progress is not None:
            run.progress.close(flush=False)
        AttemptSpans.outcome(run.span, "released", "worker_shutdown")
        reply: Reply | None = None
        if reachable:
            try:
                with self.spans.publish(run.span_context, run.job_id, "retrying"):
                    reply = self._with_retries(lambda: self.script.release(run.job_id, run.attempt))
            except (redis.ConnectionError, redis.TimeoutError):
                log.warning(
                    "redis unreachable at shutdown; the job stays pending and will be "
                    "reclaimed once its lease expires",
                    exc_info=True,
                    extra=run.extra,
                )
                reachable = False
            except redis.RedisError:
                log.exception(
                    "could not give the job back; it stays pending and will be reclaimed",
                    extra=run.extra,
                )
        else:
            log.warning(
                "redis unreachable at shutdown; the job stays pending and will be "
                "reclaimed once its lease expires",
                extra=run.extra,
            )
        if reply is None:
            self.inflight.release(run.entry)
        else:
            self._after_release(run, reply)
        if run.ctx is not None:
            # Last, so that a slow Dask scheduler cannot delay the release; the
            # handler sees ctx.cancelled (stop_reason "shutdown") from now on.
            run.ctx._stop("shutdown")
        return reachable

    def _after_release(self, run: Run, reply: Reply) -> None:
        extra = {**run.extra, "reply": reply.status}
        if reply.ok:
            try:
                self._requeue_now(run.entry)
            except redis.RedisError:
                # Released but not re-enqueued: the entry stays pending and is
                # reclaimed later; ``start`` of the queued job charges nothing.
                log.warning(
                    "job given back but not re-enqueued; its entry will be reclaimed",
                    exc_info=True,
                    extra=extra,
                )
                self.inflight.release(run.entry)
                return
            log.info("job given back at shutdown; the attempt is not counted", extra=extra)
        elif reply.status == "stale":
            # Taken over: the entry is the new owner's.
            log.warning("attempt superseded; nothing to give back", extra=extra)
            self.inflight.release(run.entry)
        elif reply.status in ("skip", "missing"):
            log.info("job already ended elsewhere", extra={**extra, "status": reply.job_status})
            self._ack(run.entry)
        else:
            log.error("unexpected reply to release; the entry stays pending", extra=extra)
            self.inflight.release(run.entry)
