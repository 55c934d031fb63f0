"""Running one queue entry: ``start``, the handler, and the outcome it ends with.

Steps follow PROTOCOL.md "Processing, in order": ``start``; ``skip``/``missing``
acknowledge the entry; otherwise the handler runs and its attempt ends with
one ``Outcome`` (``outcomes.py``), which ``OutcomeReporter.end``
(``reporting.py``) reports. So that a cancel published while the job runs
reaches this process, the job's control channel is subscribed once the
attempt has run for ``control.after_s`` (``watch_later`` after ``start``;
a job that ends sooner never subscribes) — or, when that is 0, before
``start``, waiting at most ``CONTROL_WAIT_S`` for Redis to confirm it — and
unsubscribed once the entry is done with (``control.py``).

An attempt can end in three places: in the handler thread when the handler
returns, on the timer thread when the job is cancelled, times out, its lease
is lost or Dask cannot finish its tasks (``dask_lost``), or — at shutdown —
on the runtime's thread, which gives the job back (``release``) when the
grace runs out. ``Run.claim_finish`` decides which one ends it; the other
one's outcome is dropped. A handler that ignores cancellation keeps its
thread until it returns (Python cannot stop a thread), but the job's state
and its Dask tasks are settled at once.

A handler's exception that means Dask failed the job — its scheduler lost,
a task's workers dead (``dask_health``) — becomes that ``DaskError``, a
retryable error, whatever the handler let escape.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from collections import OrderedDict
from typing import Any

import redis

from .backoff import backoff_s
from .batching import PipelineBatcher
from .context import JobContext, ProgressReporter
from .control import ControlChannels
from .dask_provider import DaskProvider
from .errors import DaskError, JobCancelled, JobFailed, RetryableError
from .inflight import InFlight, Run
from .job_record import JobRecords
from .logs import bound
from .outcomes import (
    Abandoned,
    Cancelled,
    Failed,
    GivenBack,
    Outcome,
    attempts_ran_out,
    handler_outcome,
    retry_outcome,
    stop_outcome,
)
from .reporting import EntryFate, OutcomeReporter
from .scheduler import Scheduler
from .script import JobScript, Reply, ScriptCall, StartedJob, parse_reply
from .spans import AttemptSpans
from .stats import OutcomeCounts
from .streams import Entry, QueueStreams
from .tracing import SpanContext
from .worker import Handler, Worker

log = logging.getLogger("jobgate_worker.job")

#: ``start``'s reply and the attempt it began, or why the call went unanswered.
Started = tuple[Reply, StartedJob | None] | BaseException

#: How many recently run entries are remembered to name the job of a deleted entry.
_SEEN_LIMIT = 10_000
#: At shutdown, how long to wait for attempts whose ``start`` is still under way.
_START_WAIT_S = 2.0
#: Longest a job waits for its control channel's subscription before ``start``.
#: It is only this long when the job's node cannot be reached (and then
#: ``start`` fails too); the periodic check of running jobs covers a cancel
#: the subscription missed.
CONTROL_WAIT_S = 1.0


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
        records: JobRecords,
        scheduler: Scheduler,
        dask: DaskProvider,
        inflight: InFlight,
        spans: AttemptSpans,
        reporter: OutcomeReporter,
        control: ControlChannels | None = None,
        counts: OutcomeCounts | None = None,
        batcher: PipelineBatcher | None = None,
    ) -> None:
        self.worker = worker
        self.queue = queue
        self.consumer = consumer
        self.script = script
        self.streams = streams
        self.records = records
        self.scheduler = scheduler
        self.dask = dask
        self.inflight = inflight
        self.spans = spans
        self.reporter = reporter
        self.control = control
        self.counts = counts
        #: Shares ``start``'s round trip with other handler threads (single Redis).
        self.batcher = batcher
        self._seen: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._seen_lock = threading.Lock()
        #: Set at shutdown once running attempts are being given back.
        self._closing = threading.Event()

    # -- the handler thread.

    def execute(self, entry: Entry, started: Started | None = None) -> None:
        """Process one held entry to its end (or hand it to a later step).

        ``started`` is ``start``'s outcome when the read loop already made
        the call for a batch of entries (:meth:`start_batch`): its reply, or
        the error that kept the batch from being answered.
        """
        if not entry.job_id:
            log.error("queue entry without job_id dropped", extra={"entry_id": entry.entry_id})
            self.reporter.settle(entry, EntryFate.ACKNOWLEDGE)
            return
        self._remember(entry)
        if self._closing.is_set() and started is not None:
            self._give_back_unrun(entry, started)
            return
        if self._closing.is_set():
            # Fetched but not started before the shutdown: nothing to give
            # back, the entry stays pending and is reclaimed (start counts no
            # attempt for a queued job).
            log.info("shutting down; entry left pending", extra={"job_id": entry.job_id})
            self.reporter.settle(entry, EntryFate.LET_GO)
            return
        run = Run(entry, extra={"job_id": entry.job_id, "entry_id": entry.entry_id})
        self.inflight.add_run(run)
        subscribe_first = self.control is not None and self.control.after_s <= 0
        if subscribe_first and self.control is not None:
            self.control.watch(run.job_id)
        try:
            if subscribe_first:
                self._watch_confirmed(run)
            self._execute(run, started)
        except Exception:
            # Redis failed (or a bug here): the entry stays pending, and after
            # the lease another worker (or this one) reclaims it and runs it again.
            log.exception("running the job failed; leaving it to be reclaimed", extra=run.extra)
            run.claim_finish()
            self.reporter.end(run, Abandoned("internal_error"))
        finally:
            if self.control is not None:
                self.control.unwatch(run.job_id)
            self.inflight.remove_run(run)
            if run.ctx is not None:
                run.ctx._finish_dask()

    def _watch_confirmed(self, run: Run) -> None:
        if self.control is not None and not self.control.wait_watching(run.job_id, CONTROL_WAIT_S):
            log.warning(
                "control channel not subscribed in time; a cancel is seen by the periodic check",
                extra=run.extra,
            )

    def _execute(self, run: Run, prestarted: Started | None = None) -> None:
        start_ns = time.time_ns()
        if isinstance(prestarted, BaseException):
            raise prestarted  # the batch's round trip failed: as if our own had
        reply, started = self._start(run.job_id) if prestarted is None else prestarted
        if started is None:
            self._not_started(run, reply)
            return
        with self.spans.process(run.entry, started, start_ns) as (span, ids):
            run.span = span
            run.span_context = span.get_span_context()
            self._attempt(run, started, ids)

    def batches_starts(self) -> bool:
        """Whether the read loop may ``start`` its entries in one call.

        Not on a cluster (the jobs live on several nodes), and not when each
        job's control channel must be subscribed before its ``start``.
        """
        if self.batcher is None or not self.batcher.enabled or self._closing.is_set():
            return False
        return self.control is None or self.control.after_s > 0

    def start_batch(self, entries: list[Entry]) -> dict[tuple[str, str], Started]:
        """``start`` the jobs of ``entries`` in one call (the read loop's thread):
        a ``batch`` of starts when there are several.

        Answers, per entry key, ``start``'s reply and attempt, or the error
        that kept it from being answered (the handler thread then abandons
        the attempt, as if its own ``start`` had failed: a script error of
        the batch is every entry's). When the script was missing
        (``NOSCRIPT``: nothing ran) the entries are left out: their handler
        threads make the call themselves.
        """
        jobs = [entry for entry in entries if entry.job_id]
        if not jobs:
            return {}
        pipe = self.streams.client.pipeline(transaction=False)
        self.script.queue_calls(
            pipe, [ScriptCall(entry.job_id, ("start", self.consumer)) for entry in jobs]
        )
        try:
            [raw_batch] = pipe.execute(raise_on_error=False)
        except redis.RedisError as error:
            return {entry.key: error for entry in jobs}
        raws = JobScript.calls_replies(raw_batch, len(jobs))
        answers: dict[tuple[str, str], Started] = {}
        for entry, raw in zip(jobs, raws, strict=True):
            if isinstance(raw, redis.exceptions.NoScriptError):
                continue
            answers[entry.key] = (
                raw if isinstance(raw, Exception) else JobScript.started(parse_reply(raw))
            )
        return answers

    def _give_back_unrun(self, entry: Entry, started: Started) -> None:
        """At shutdown, an entry the read loop started but no handler ran: give it back."""
        if isinstance(started, BaseException) or started[1] is None:
            # Not started (skip/missing) or unknown: left pending, as before start.
            self.reporter.settle(entry, EntryFate.LET_GO)
            return
        run = Run(entry, extra={"job_id": entry.job_id, "entry_id": entry.entry_id})
        run.started = started[1]
        run.claim_finish()
        self.reporter.end(run, GivenBack())

    def _start(self, job_id: str) -> tuple[Reply, StartedJob | None]:
        """``start``, in a pipeline shared with other threads' calls when it can be."""
        batcher = self.batcher
        if batcher is None or not batcher.enabled:
            return self.script.start(job_id, self.consumer)
        raw, _ = batcher.script_call(ScriptCall(job_id, ("start", self.consumer)))
        if isinstance(raw, redis.exceptions.NoScriptError):
            # The script cache was flushed: this call did not run; ``call`` loads it.
            return self.script.start(job_id, self.consumer)
        if isinstance(raw, Exception):
            raise raw
        return JobScript.started(parse_reply(raw))

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
        if self.control is not None and self.control.after_s > 0:
            # Unless the attempt ends first (``execute`` unwatches it).
            self.control.watch_later(run.job_id)
        log.debug("job started", extra=run.extra)

        handler = self.worker.handlers.get(started.kind)
        if handler is None:
            message = f"no handler for kind {started.kind!r} in worker of queue {self.queue!r}"
            self._finish(run, Failed("unknown_kind", message))
            return
        try:
            params = json.loads(started.params) if started.params else None
        except ValueError as error:
            self._finish(run, Failed("invalid_params", f"params are not valid JSON: {error}"))
            return
        if cancel_seen:
            self.stop(run, "cancelled")
            return
        if started.timeout_s > 0:
            run.timeout_timer = self.scheduler.call_later(
                started.timeout_s, lambda: self.stop(run, "timeout"), "timeout"
            )
        with bound(ctx.log_context):
            outcome = handler_outcome(
                lambda: _call_handler(handler, ctx, params),
                lambda: self._backoff_s(run.attempt),
            )
            self._finish(run, outcome)

    def _backoff_s(self, attempt: int) -> float:
        return backoff_s(attempt, self.worker.retry_base_delay, self.worker.retry_max_delay)

    def _finish(self, run: Run, outcome: Outcome) -> None:
        """End the attempt from the handler thread, unless it was ended from outside."""
        if not run.claim_finish():
            # A handler that gave up (JobCancelled) after the stop says nothing new.
            if not isinstance(outcome, Cancelled):
                reason = run.ctx.stop_reason if run.ctx is not None else ""
                log.info(
                    "handler returned after the job ended; outcome dropped",
                    extra={**run.extra, "outcome": outcome.name, "reason": reason},
                )
            return
        if isinstance(outcome, Failed) and outcome.error is not None:
            error = outcome.error
            log.error(
                "handler raised",
                exc_info=(type(error), error, error.__traceback__),
                extra=run.extra,
            )
        self.reporter.end(run, outcome)

    def _context(self, run: Run, started: StartedJob, span: SpanContext) -> JobContext:
        # The run holds its context and progress reporter; their callbacks
        # reach the run through a weak reference. A strong one would make a
        # reference cycle per job, freed only by the garbage collector (with
        # its locks, events and spans): at thousands of jobs a second the
        # collector took 9 % of the worker's time with them, 4 % without.
        weak_run = weakref.ref(run)
        run.progress = ProgressReporter(
            lambda payload: self._send_progress_of(weak_run, payload),
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
            on_dask_lost=lambda error: self._dask_lost_later(weak_run, error),
        )

    def _dask_lost_later(self, weak_run: weakref.ref[Run], error: DaskError) -> None:
        run = weak_run()
        if run is None:
            return  # the attempt is over and gone
        # On the timer thread, like every other stop from outside.
        self.scheduler.call_later(0, lambda: self.dask_lost(run, error), "dask_lost")

    def _send_progress_of(self, weak_run: weakref.ref[Run], payload: str) -> bool:
        run = weak_run()
        return run is not None and self._send_progress(run, payload)

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

    def _not_started(self, run: Run, reply: Reply) -> None:
        entry = run.entry
        extra = {**run.extra, "reply": reply.status, "status": reply.job_status}
        if reply.status == "skip" and reply.job_status == "failed" and entry.reclaimed:
            error = self.records.error(run.job_id)
            if attempts_ran_out(error.get("code")):
                log.warning("job ran out of attempts; dead-lettered", extra=extra)
                self.streams.dead_letter(entry, "max_attempts_exceeded", json.dumps(error))
                self.reporter.settle(entry, EntryFate.LET_GO)
                return
        log.info("entry skipped", extra=extra)
        self.reporter.settle(entry, EntryFate.ACKNOWLEDGE)

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
        timeout_s = run.started.timeout_s if run.started is not None else 0
        self.reporter.end(run, stop_outcome(reason, timeout_s))

    def dask_lost(self, run: Run, error: DaskError) -> None:
        """End the attempt now with a retry: Dask cannot finish the job's tasks.

        The handler sees ``ctx.cancelled`` (``ctx.stop_reason`` is the
        error's code) and its futures are cancelled; what it returns later is
        dropped.
        """
        with run.lock:
            ctx = run.ctx
        if ctx is None or not run.claim_finish():
            return
        ctx._stop(error.code)
        try:
            self.reporter.end(run, retry_outcome(error, lambda: self._backoff_s(run.attempt)))
        except Exception:
            # As in ``execute``: the entry stays pending, to be reclaimed.
            log.exception("reporting the retry failed; leaving it to be reclaimed", extra=run.extra)
            self.reporter.end(run, Abandoned("internal_error"))

    # -- entries deleted under our feet.

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
        extra: dict[str, Any] = {"stream": stream, "entry_id": entry_id, "job_id": job_id}
        if job_id is None:
            log.error(
                "a pending queue entry was deleted; its job cannot be identified", extra=extra
            )
            return
        state = self.records.state(job_id)
        if state.status not in ("queued", "running") or state.attempt is None:
            return
        message = "the queue entry of the job was deleted before the job finished"
        attempt: int | str = state.attempt if state.status == "running" else "*"
        reply = self.script.fail(job_id, attempt, "entry_deleted", message)
        if reply.ok and self.counts is not None and state.kind:
            self.counts.count("failed", state.kind, state.created_at)
        log.error(
            "a pending queue entry was deleted; job failed", extra={**extra, "reply": reply.status}
        )

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
                    self.reporter.end(run, GivenBack())
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


def _call_handler(handler: Handler, ctx: JobContext, params: Any) -> Any:
    """Run the handler; an exception that means Dask failed the job raises its ``DaskError``.

    What the handler decided itself (``JobFailed``, ``RetryableError``,
    ``JobCancelled``) is left as it is.
    """
    try:
        return handler(ctx, params)
    except (JobFailed, RetryableError, JobCancelled):
        raise
    except Exception as error:
        dask_error = ctx._dask_error_for(error)
        if dask_error is None:
            raise
        raise dask_error from error
