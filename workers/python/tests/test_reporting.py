"""Ending an attempt, without Redis: ``OutcomeReporter.end`` against recording fakes.

Each fake appends what it was asked to one shared ``log``, so a test reads
the order of the bookkeeping (progress, script call, acknowledgement, stop)
as one list.
"""

from __future__ import annotations

import json
import time

import pytest
import redis

from jobgate_worker import reporting
from jobgate_worker.inflight import InFlight, Run
from jobgate_worker.outcomes import Abandoned, Completed, Failed, GivenBack, Retry
from jobgate_worker.reporting import OutcomeReporter
from jobgate_worker.requeue import Requeuer
from jobgate_worker.scheduler import Timer
from jobgate_worker.script import Reply, StartedJob
from jobgate_worker.spans import AttemptSpans
from jobgate_worker.streams import Entry
from jobgate_worker.tracing import Telemetry

OK = Reply("ok", ())


class FakeScript:
    def __init__(self, log, replies):
        self.log = log
        self.replies = replies

    def call(self, job_id, *operation):
        self.log.append(("call", *operation))
        reply = self.replies.get(operation[0], OK)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def retry(self, job_id, attempt, code, message, delay_ms):
        return self.call(job_id, "retry", attempt, code, message, delay_ms)

    def release(self, job_id, attempt):
        return self.call(job_id, "release", attempt)

    def queue_calls(self, pipe, calls):
        for call in calls:
            pipe.commands.append(("call", *call.args))


class FakePipeline:
    def __init__(self, log):
        self.log = log
        self.commands = []

    def execute(self, raise_on_error=True):
        self.log.append(("pipeline", *self.commands))
        return [["ok"], [1]]


class FakeStreams:
    def __init__(self, log):
        self.log = log

    @property
    def client(self):
        log = self.log

        class Client:
            def pipeline(self, transaction=True):
                return FakePipeline(log)

        return Client()

    def queue_ack_if_ended(self, pipe, entry):
        pipe.commands.append(("ack", entry.entry_id))

    def acknowledged_if_ended(self, raw):
        return bool(raw[0])

    def ack_delete(self, entry):
        self.log.append(("ack", entry.entry_id))

    def requeue(self, entry, now_ms):
        self.log.append(("requeue", entry.entry_id))
        return "9-0"

    def server_time_ms(self):
        return 0

    def dead_letter(self, entry, reason, error=""):
        self.log.append(("dead_letter", entry.entry_id, reason, json.loads(error)))


class FakeRecords:
    def error(self, job_id):
        return {"code": "max_attempts_exceeded", "message": "attempts used up"}


class FakeScheduler:
    def __init__(self):
        self.timers = []

    def call_later(self, delay_s, callback, name=""):
        timer = Timer(delay_s, len(self.timers), callback, name)
        self.timers.append(timer)
        return timer


class FakeProgress:
    def __init__(self, log):
        self.log = log

    def close(self, flush):
        self.log.append(("progress", "flushed" if flush else "dropped"))


class FakeContext:
    def __init__(self, log):
        self.log = log

    def _stop(self, reason):
        self.log.append(("stop", reason))


class Harness:
    def __init__(self, replies=None):
        self.log = []
        self.inflight = InFlight()
        self.scheduler = FakeScheduler()
        streams = FakeStreams(self.log)
        self.reporter = OutcomeReporter(
            script=FakeScript(self.log, replies or {}),
            streams=streams,
            inflight=self.inflight,
            records=FakeRecords(),
            requeuer=Requeuer(streams, self.scheduler, self.inflight),
            spans=AttemptSpans(Telemetry(), "default", "c1"),
            lease_ms=30_000,
        )

    def run(self, entry_id="1-0", delivered_at=0.0):
        """A started attempt (attempt 2) whose entry was delivered at ``delivered_at``."""
        fields = {"job_id": f"job-{entry_id}"}
        entry = Entry(
            "jobgate:queue:{default}:normal", entry_id, fields, 1, delivered_at=delivered_at
        )
        self.inflight.hold(entry)
        run = Run(entry, extra={"job_id": entry.job_id})
        run.started = StartedJob(2, "echo", "{}", 0, 3, "", "", "", "alice")
        run.ctx = FakeContext(self.log)
        run.progress = FakeProgress(self.log)
        run.timeout_timer = Timer(60.0, 0, lambda: None, "timeout")
        return run

    def held(self, run):
        return self.inflight.is_held(run.entry.key)


def test_a_completed_attempt_flushes_progress_then_reports_then_acknowledges():
    harness = Harness()
    run = harness.run()
    timer = run.timeout_timer
    harness.reporter.end(run, Completed('{"x":1}'))
    assert harness.log == [
        ("progress", "flushed"),
        ("call", "complete", 2, '{"x":1}'),
        ("ack", "1-0"),
    ]
    assert timer.cancelled
    assert run.timeout_timer is None
    assert not harness.held(run)


def test_an_outcome_within_half_a_lease_shares_one_round_trip_with_the_acknowledgement():
    harness = Harness()
    run = harness.run(delivered_at=time.monotonic())
    harness.reporter.end(run, Failed("timeout", "too slow"))
    assert harness.log == [
        ("progress", "flushed"),
        ("pipeline", ("call", "fail", 2, "timeout", "too slow"), ("ack", "1-0")),
    ]
    assert not harness.held(run)


def test_a_stale_reply_leaves_the_entry_to_its_new_owner():
    harness = Harness({"complete": Reply("stale", ("running",))})
    run = harness.run()
    harness.reporter.end(run, Completed("1"))
    assert ("ack", "1-0") not in harness.log
    assert not harness.held(run), "no longer renewed: the new owner's lease"


def test_an_outcome_redis_cannot_take_leaves_the_entry_pending(monkeypatch):
    monkeypatch.setattr(reporting, "_QUICK_TRIES", (0.0,))
    harness = Harness({"complete": redis.ConnectionError("gone")})
    run = harness.run()
    harness.reporter.end(run, Completed("1"))
    assert ("ack", "1-0") not in harness.log
    assert not harness.held(run)


def test_a_retry_keeps_the_entry_held_until_it_is_re_enqueued():
    harness = Harness()
    run = harness.run()
    harness.reporter.end(run, Retry("upstream_busy", "busy", 0.25))
    assert harness.log == [
        ("progress", "flushed"),
        ("call", "retry", 2, "upstream_busy", "busy", 250),
    ]
    assert harness.held(run), "renewed while it waits out the delay"
    [timer] = harness.scheduler.timers
    assert timer.due == 0.25
    timer.callback()
    assert harness.log[-1] == ("requeue", "1-0")
    assert not harness.held(run)


def test_a_retry_past_the_last_attempt_is_dead_lettered():
    harness = Harness({"retry": Reply("failed", ())})
    run = harness.run()
    harness.reporter.end(run, Retry("upstream_busy", "busy", 0.25))
    assert harness.log[-1] == (
        "dead_letter",
        "1-0",
        "max_attempts_exceeded",
        {"code": "max_attempts_exceeded", "message": "attempts used up"},
    )
    assert harness.scheduler.timers == []
    assert not harness.held(run)


def test_an_abandoned_attempt_reports_nothing_and_lets_its_entry_go():
    harness = Harness()
    run = harness.run()
    harness.reporter.end(run, Abandoned("lease_lost"))
    assert harness.log == [("progress", "dropped"), ("stop", "lease_lost")]
    assert not harness.held(run)


def test_a_given_back_attempt_is_released_and_re_enqueued_before_its_handler_is_stopped():
    harness = Harness()
    run = harness.run()
    harness.reporter.end(run, GivenBack())
    assert harness.log == [
        ("progress", "dropped"),
        ("call", "release", 2),
        ("requeue", "1-0"),
        ("stop", "shutdown"),
    ]
    assert not harness.held(run)


@pytest.mark.parametrize(("status", "acknowledged"), [("skip", True), ("stale", False)])
def test_a_give_back_of_a_job_that_ended_elsewhere_is_not_re_enqueued(status, acknowledged):
    harness = Harness({"release": Reply(status, ("completed",))})
    run = harness.run()
    harness.reporter.end(run, GivenBack())
    assert ("requeue", "1-0") not in harness.log
    assert (("ack", "1-0") in harness.log) == acknowledged
    assert not harness.held(run)


def test_once_redis_is_lost_at_shutdown_the_other_attempts_are_not_tried(monkeypatch):
    monkeypatch.setattr(reporting, "_QUICK_TRIES", (0.0,))
    harness = Harness({"release": redis.ConnectionError("gone")})
    first, second = harness.run("1-0"), harness.run("2-0")
    harness.reporter.end(first, GivenBack())
    harness.reporter.end(second, GivenBack())
    assert [entry for entry in harness.log if entry[0] == "call"] == [("call", "release", 2)]
    assert [entry for entry in harness.log if entry[0] == "stop"] == [("stop", "shutdown")] * 2
    assert not harness.held(first)
    assert not harness.held(second)


def test_an_outcome_is_reported_again_while_redis_cannot_be_reached(monkeypatch):
    """A failover takes seconds: the terminal call outlasts it, up to a deadline."""
    monkeypatch.setattr(reporting, "_QUICK_TRIES", (0.0,))
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    failures = [4]

    def call() -> str:
        if failures[0]:
            failures[0] -= 1
            raise redis.ConnectionError("connection refused")
        return "reported"

    assert (
        reporting.with_report_retries(call, {}, sleep, unreachable_for_s=10, clock=lambda: now[0])
        == "reported"
    )
    assert len(sleeps) == 4

    def never() -> str:
        raise redis.ConnectionError("connection refused")

    now[0] = 0.0
    sleeps.clear()
    with pytest.raises(redis.ConnectionError):
        reporting.with_report_retries(never, {}, sleep, unreachable_for_s=3, clock=lambda: now[0])
    assert sleeps, "tried again before giving up"
    assert now[0] <= 3, "gave up by the deadline"
