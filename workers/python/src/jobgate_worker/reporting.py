"""Ending an attempt: the one place that turns its ``Outcome`` into Redis calls.

``OutcomeReporter.end`` is called once per attempt, by whoever won
``Run.claim_finish`` (the handler thread, the timer thread, or the runtime's
thread at shutdown). It does what every ending needs — disarm the timeout,
close progress (flushing what is pending before a reported outcome), note
the outcome on the attempt's span — then the outcome's own script call, and
last decides the fate of the queue entry (``EntryFate``): acknowledged,
let go, or kept held for a delayed re-enqueue.

Reporting follows PROTOCOL.md "Processing, in order": the terminal call and
``XACK`` + ``XDEL`` — except on ``stale``, when the entry belongs to whichever
worker took the job over. On a single Redis both share one pipeline when the
lease is certainly still held (often with other handler threads' calls:
``batching.py``), the acknowledgement made only if the job has ended by then
(``streams.ACK_ENDED``), so that a terminal call that did not run leaves
its entry pending. On a Redis Cluster the job and the queue live
on different nodes: the terminal call is made first, then the entry is
acknowledged, so that a node that fails in between can only leave an entry
to be reclaimed, never a ``running`` job whose entry is gone.

Each outcome Redis took is counted for the queue's outcome metrics
(``stats.py``).

A ``Retry`` that keeps its code (a ``DaskError``) on the job's last attempt
becomes a ``Failed`` with that code (``outcomes.last_attempt``): the ``fail``
call, then the entry dead-lettered (``bury``, which acknowledges it) just as
when the script answers a retry with ``failed`` ``max_attempts_exceeded``.

A terminal call that Redis refuses for lack of memory (``OOM``, at
``maxmemory``) is never dropped: the attempt keeps its entry (the lease keeper
goes on renewing it) and the call is made again, with backoff, until Redis
takes it (``with_report_retries``).
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.cluster import RedisCluster

from .backoff import backoff_s
from .batching import PipelineBatcher
from .inflight import InFlight, Run
from .job_record import JobRecords
from .outcomes import (
    Abandoned,
    Cancelled,
    Completed,
    Failed,
    GivenBack,
    Outcome,
    Retry,
    Terminal,
    last_attempt,
    span_outcome,
    terminal_call,
)
from .requeue import Requeuer
from .script import JobScript, Reply, ScriptCall, parse_reply
from .spans import AttemptSpans
from .stats import OutcomeCounts
from .streams import Entry, QueueStreams

log = logging.getLogger("jobgate_worker.job")

T = TypeVar("T")

#: Pauses before each try of a call that ends an attempt: rides out a short blip.
_QUICK_TRIES = (0.0, 0.2, 1.0)


def with_quick_retries(operation: Callable[[], T]) -> T:
    """A few quick tries across a connection blip; sleeps only after a failure."""
    for index, pause in enumerate(_QUICK_TRIES):
        if pause:
            time.sleep(pause)
        try:
            return operation()
        except (redis.ConnectionError, redis.TimeoutError):
            if index == len(_QUICK_TRIES) - 1:
                raise
            log.warning("redis call failed; trying again", exc_info=True)
    raise AssertionError("unreachable")


#: Backoff between tries of a terminal call Redis refused for lack of memory.
OOM_RETRY_BASE_S = 0.2
OOM_RETRY_CAP_S = 5.0
#: Backoff between tries of a terminal call while Redis cannot be reached.
UNREACHABLE_RETRY_BASE_S = 0.2
UNREACHABLE_RETRY_CAP_S = 1.0


def with_report_retries(
    operation: Callable[[], T],
    extra: dict[str, Any],
    sleep: Callable[[float], None] = time.sleep,
    unreachable_for_s: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``with_quick_retries``, made again while Redis refuses it for lack of memory.

    A refused script call changes nothing (Redis refuses a script's first
    write), so trying it again is safe; it ends with Redis's answer or any
    other error. While Redis cannot be reached (a failover, a restart), the
    call is made again for up to ``unreachable_for_s``: an outcome must
    outlast a master's failover (a few seconds) rather than leave its job to
    be run again once the lease lapses. Making a terminal call twice is
    harmless: the second finds the job ended (``skip``), or, if another
    worker took the entry over meanwhile, is refused as ``stale``.
    """
    refusals = 0
    deadline = clock() + unreachable_for_s
    failures = 0
    while True:
        try:
            return with_quick_retries(operation)
        except redis.exceptions.OutOfMemoryError:
            refusals += 1
            delay_s = backoff_s(refusals, OOM_RETRY_BASE_S, OOM_RETRY_CAP_S)
            log.warning(
                "redis is out of memory; the outcome will be reported again",
                extra={**extra, "refusals": refusals, "retry_in_s": round(delay_s, 3)},
            )
            sleep(delay_s)
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError):
            failures += 1
            delay_s = backoff_s(failures, UNREACHABLE_RETRY_BASE_S, UNREACHABLE_RETRY_CAP_S)
            if clock() + delay_s > deadline:
                raise
            log.warning(
                "redis cannot be reached; the outcome will be reported again",
                extra={**extra, "failures": failures, "retry_in_s": round(delay_s, 3)},
            )
            sleep(delay_s)


class EntryFate(enum.Enum):
    """What becomes of a queue entry once this process is done with it."""

    #: ``XACK`` + ``XDEL`` it, then stop holding it.
    ACKNOWLEDGE = enum.auto()
    #: Stop holding (renewing) it: acknowledged already, re-enqueued, taken
    #: over, or left pending to be reclaimed.
    LET_GO = enum.auto()
    #: Keep holding it until its delayed re-enqueue replaces it.
    KEEP = enum.auto()


class OutcomeReporter:
    """Ends attempts for one runtime; safe to call from any thread."""

    def __init__(
        self,
        *,
        script: JobScript,
        streams: QueueStreams,
        inflight: InFlight,
        records: JobRecords,
        requeuer: Requeuer,
        spans: AttemptSpans,
        lease_ms: int,
        counts: OutcomeCounts | None = None,
        batcher: PipelineBatcher | None = None,
    ) -> None:
        self.script = script
        self.streams = streams
        self.inflight = inflight
        self.records = records
        self.requeuer = requeuer
        self.spans = spans
        self.lease_ms = lease_ms
        self.counts = counts
        #: Shares the terminal call's round trip with other handler threads.
        self.batcher = batcher
        #: Set at shutdown once a ``release`` found Redis unreachable: the
        #: attempts given back after it leave their entries pending untried.
        self._unreachable_at_shutdown = False

    def end(self, run: Run, outcome: Outcome) -> None:
        """End the attempt with ``outcome``; the caller won ``run.claim_finish()``.

        Raises ``RedisError`` only when a ``Retry`` could not be reported (or
        dead-lettered); the caller then abandons the attempt (its entry stays
        pending, to be reclaimed).
        """
        if isinstance(outcome, Retry) and run.started is not None:
            outcome = last_attempt(outcome, run.attempt, run.started.max_attempts)
        if run.timeout_timer is not None:
            run.timeout_timer.cancel()
            run.timeout_timer = None
        if run.progress is not None:
            # Before a reported outcome the last progress is written; an
            # attempt stopped without a report writes none.
            run.progress.close(flush=not isinstance(outcome, Abandoned | GivenBack))
        name, code = span_outcome(outcome)
        error = outcome.error if isinstance(outcome, Failed) else None
        AttemptSpans.outcome(run.span, name, code, error)
        match outcome:
            case Failed(attempts_ran_out=True):
                fate = self._fail_for_good(run, outcome)
            case Completed() | Failed() | Cancelled():
                fate = self._report(run, outcome)
            case Retry():
                fate = self._retry(run, outcome)
            case Abandoned(reason=reason):
                fate = self._abandon(run, reason)
            case GivenBack():
                fate = self._give_back(run)
        self.settle(run.entry, fate)
        if isinstance(outcome, GivenBack) and run.ctx is not None:
            # Last, so that a slow Dask scheduler cannot delay the release; the
            # handler sees ctx.cancelled (stop_reason "shutdown") from now on.
            run.ctx._stop("shutdown")

    def settle(self, entry: Entry, fate: EntryFate) -> None:
        """Do what ``fate`` says with the entry."""
        if fate is EntryFate.ACKNOWLEDGE:
            try:
                with_quick_retries(lambda: self.streams.ack_delete(entry))
            except redis.RedisError:
                log.exception("could not acknowledge the entry", extra={"job_id": entry.job_id})
            finally:
                self.inflight.release(entry)
        elif fate is EntryFate.LET_GO:
            self.inflight.release(entry)

    # -- terminal outcomes: completed, failed, cancelled.

    def _report(self, run: Run, outcome: Terminal) -> EntryFate:
        """Make the terminal call, with the acknowledgement when it can share the round trip."""
        operation = terminal_call(outcome, run.attempt)
        try:
            with self.spans.publish(run.span_context, run.job_id, outcome.name):
                shared = self._lease_certainly_held(run.entry) and not self._on_cluster()
                if shared:
                    reply, acknowledged = with_report_retries(
                        lambda: self._terminal_and_ack(run, operation),
                        run.extra,
                        unreachable_for_s=self.lease_ms / 1000,
                    )
                else:
                    reply = with_report_retries(
                        lambda: self.script.call(run.job_id, *operation),
                        run.extra,
                        unreachable_for_s=self.lease_ms / 1000,
                    )
                    acknowledged = False
        except redis.RedisError:
            log.exception(
                "could not report the outcome; the job will be reclaimed", extra=run.extra
            )
            return EntryFate.LET_GO
        if reply.ok:
            self._count(run, outcome.name)
        return self._after_terminal(run, outcome.name, reply, acknowledged, early=shared)

    def _count(self, run: Run, event: str) -> None:
        started = run.started
        if self.counts is not None and started is not None:
            self.counts.count(event, started.kind, started.created_at)

    def _on_cluster(self) -> bool:
        """Whether the job and its queue entry may be on two nodes."""
        return isinstance(self.streams.client, RedisCluster)

    def _lease_certainly_held(self, entry: Entry) -> bool:
        """True while no worker can have claimed the entry from us.

        Another worker claims an entry only once it has been idle for a whole
        lease; an entry delivered less than half a lease ago is still ours, so
        the outcome and the acknowledgement can share one round trip.
        """
        return (time.monotonic() - entry.delivered_at) * 1000 < self.lease_ms / 2

    def _terminal_and_ack(self, run: Run, operation: tuple[str | int, ...]) -> tuple[Reply, bool]:
        """The terminal call, then the entry acknowledged if the job has ended
        (``streams.ACK_ENDED``), in one round trip: the reply, and whether
        the entry was acknowledged.

        Never is it unless the terminal call ran: after ``NOSCRIPT`` (Redis
        lost its script cache, the call did not run) the call is made again
        through ``call``, which loads the script, and the entry is
        acknowledged after it; after a script error the entry stays pending.
        """
        call = ScriptCall(run.job_id, operation)
        if self.batcher is not None:
            raw, acknowledged = self.batcher.script_call(call, ack=run.entry)
        else:
            pipe = self.streams.client.pipeline(transaction=False)
            self.script.queue_calls(pipe, [call])
            self.streams.queue_ack_if_ended(pipe, run.entry)
            raw, raw_ack = pipe.execute(raise_on_error=False)
            acknowledged = self.streams.acknowledged_if_ended(raw_ack)
        if isinstance(raw, redis.exceptions.NoScriptError):
            return self.script.call(run.job_id, *operation), acknowledged
        if isinstance(raw, Exception):
            raise raw
        return parse_reply(raw), acknowledged

    def _after_terminal(
        self, run: Run, outcome: str, reply: Reply, acknowledged: bool, early: bool = False
    ) -> EntryFate:
        """What becomes of the entry after the terminal call answered ``reply``.

        ``early``: the call was made within half a lease of the delivery.
        """
        elapsed_ms = round((time.monotonic() - run.started_monotonic) * 1000, 3)
        extra = {**run.extra, "outcome": outcome, "reply": reply.status, "duration_ms": elapsed_ms}
        if reply.status == "stale":
            if early:
                log.error(
                    "attempt superseded within half a lease; check lease settings", extra=extra
                )
            else:
                # Our lease was taken over: the entry is the new owner's now.
                log.warning("attempt superseded; outcome refused", extra=extra)
            return EntryFate.LET_GO
        if reply.ok or reply.status == "failed":
            log.info(f"job {outcome}", extra=extra)
        else:
            log.info("job already ended elsewhere", extra={**extra, "status": reply.job_status})
        return EntryFate.LET_GO if acknowledged else EntryFate.ACKNOWLEDGE

    def _fail_for_good(self, run: Run, outcome: Failed) -> EntryFate:
        """Fail a job whose attempts ran out with its own code, then dead-letter it.

        The entry is acknowledged by ``bury``, not before: a crash in between
        leaves it pending, and whoever reclaims it finds the job failed with a
        code that says its attempts ran out and buries it (``JobExecutor``).
        """
        operation = terminal_call(outcome, run.attempt)
        try:
            with self.spans.publish(run.span_context, run.job_id, outcome.name):
                reply = with_report_retries(
                    lambda: self.script.call(run.job_id, *operation),
                    run.extra,
                    unreachable_for_s=self.lease_ms / 1000,
                )
        except redis.RedisError:
            log.exception(
                "could not report the outcome; the job will be reclaimed", extra=run.extra
            )
            return EntryFate.LET_GO
        if not reply.ok:
            return self._after_terminal(run, outcome.name, reply, acknowledged=False)
        log.warning(
            "job ran out of attempts; dead-lettered",
            extra={**run.extra, "error_code": outcome.code},
        )
        error = {"code": outcome.code, "message": outcome.message}
        self.streams.dead_letter(run.entry, "max_attempts_exceeded", json.dumps(error))
        return EntryFate.LET_GO

    # -- a retryable error: queued again, re-enqueued after the delay.

    def _retry(self, run: Run, outcome: Retry) -> EntryFate:
        with self.spans.publish(run.span_context, run.job_id, "retrying"):
            reply = with_quick_retries(
                lambda: self.script.retry(
                    run.job_id, run.attempt, outcome.code, outcome.message, outcome.delay_ms
                )
            )
        extra = {**run.extra, "error_code": outcome.code, "delay_ms": outcome.delay_ms}
        if reply.ok:
            self._count(run, "retrying")
            log.info("job will be retried", extra=extra)
            self.requeuer.requeue_later(run.entry, outcome.delay_s)
            return EntryFate.KEEP
        if reply.status == "failed":
            self._count(run, "failed")
            log.warning("job ran out of attempts; dead-lettered", extra=extra)
            error = self.records.error(run.job_id)
            self.streams.dead_letter(run.entry, "max_attempts_exceeded", json.dumps(error))
            return EntryFate.LET_GO
        return self._after_terminal(run, outcome.name, reply, acknowledged=False)

    # -- stopping without a report.

    def _abandon(self, run: Run, reason: str) -> EntryFate:
        if run.ctx is not None:
            run.ctx._stop(reason)
        log.warning(
            "attempt abandoned; the entry stays pending", extra={**run.extra, "reason": reason}
        )
        return EntryFate.LET_GO

    # -- shutdown: give the job back, re-enqueued, its attempt not charged.

    def _give_back(self, run: Run) -> EntryFate:
        """``release`` the attempt and re-enqueue its entry.

        Once Redis failed to answer during this shutdown, the entry is left
        pending without trying: it is reclaimed once its lease expires.
        """
        if self._unreachable_at_shutdown:
            log.warning(
                "redis unreachable at shutdown; the job stays pending and will be "
                "reclaimed once its lease expires",
                extra=run.extra,
            )
            return EntryFate.LET_GO
        try:
            with self.spans.publish(run.span_context, run.job_id, "retrying"):
                reply = with_quick_retries(lambda: self.script.release(run.job_id, run.attempt))
        except (redis.ConnectionError, redis.TimeoutError):
            log.warning(
                "redis unreachable at shutdown; the job stays pending and will be "
                "reclaimed once its lease expires",
                exc_info=True,
                extra=run.extra,
            )
            self._unreachable_at_shutdown = True
            return EntryFate.LET_GO
        except redis.RedisError:
            log.exception(
                "could not give the job back; it stays pending and will be reclaimed",
                extra=run.extra,
            )
            return EntryFate.LET_GO
        return self._after_release(run, reply)

    def _after_release(self, run: Run, reply: Reply) -> EntryFate:
        extra: dict[str, Any] = {**run.extra, "reply": reply.status}
        if reply.ok:
            self._count(run, "retrying")
            try:
                self.requeuer.requeue_now(run.entry)
            except redis.RedisError:
                # Released but not re-enqueued: the entry stays pending and is
                # reclaimed later; ``start`` of the queued job charges nothing.
                log.warning(
                    "job given back but not re-enqueued; its entry will be reclaimed",
                    exc_info=True,
                    extra=extra,
                )
                return EntryFate.LET_GO
            log.info("job given back at shutdown; the attempt is not counted", extra=extra)
            return EntryFate.LET_GO
        if reply.status == "stale":
            # Taken over: the entry is the new owner's.
            log.warning("attempt superseded; nothing to give back", extra=extra)
            return EntryFate.LET_GO
        if reply.status in ("skip", "missing"):
            log.info("job already ended elsewhere", extra={**extra, "status": reply.job_status})
            return EntryFate.ACKNOWLEDGE
        log.error("unexpected reply to release; the entry stays pending", extra=extra)
        return EntryFate.LET_GO
