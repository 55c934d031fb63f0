"""The processing order of PROTOCOL.md, end to end through jobgate.lua."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import threading
import time
import weakref

import sample_app
from conftest import assert_contiguous, wait_until
from jobgate_worker import Worker, keys
from jobgate_worker.renewer import RENEW_SCRIPT
from jobgate_worker.script import JobScript
from jobgate_worker.streams import Entry


def test_job_events_in_order(gateway, run_worker):
    with run_worker(sample_app.worker):
        job_id = gateway.submit("steps", {"n": 3, "pause_s": 0.15})
        events = gateway.wait_terminal(job_id)

    assert_contiguous(events)
    names = [e["event"] for e in events]
    assert names == ["queued", "started", "progress", "progress", "progress", "completed"]
    assert events[1]["data"]["attempt"] == 1
    assert [e["data"]["done"] for e in events[2:5]] == [1, 2, 3]
    assert events[4]["data"] == {"done": 3, "total": 3, "message": "step 3"}
    result = events[-1]["data"]["result"]
    assert result["steps"] == 3
    # One trace from submit to result; the attempt runs in its own child span.
    trace_id = events[0]["trace_id"]
    assert {e["trace_id"] for e in events} == {trace_id}
    assert result["traceparent"].split("-")[1] == trace_id
    record = gateway.record(job_id)
    assert record["status"] == "completed"
    assert json.loads(record["result"]) == result
    # Acknowledged and deleted: nothing pending, nothing left in the streams.
    assert gateway.backlog() == 0
    assert gateway.pending() == 0


def test_kinds_are_registered(gateway, run_worker):
    with run_worker(sample_app.worker, consumer="kinds-test"):
        registered = gateway.redis.hgetall(keys.KINDS_KEY)
    assert set(registered) == set(sample_app.worker.handlers)
    value = json.loads(registered["echo"])
    assert value["queue"] == "default"
    assert value["worker"] == "kinds-test"
    assert isinstance(value["seen_at"], int)


def test_handler_exception_fails_the_job(gateway, run_worker):
    with run_worker(sample_app.worker):
        job_id = gateway.submit("boom", {"message": "spot must be positive"})
        events = gateway.wait_terminal(job_id)
    assert_contiguous(events)
    assert [e["event"] for e in events] == ["queued", "started", "failed"]
    assert events[-1]["data"] == {
        "attempt": 1,
        "error": {"code": "handler_error", "message": "ValueError: spot must be positive"},
    }
    assert gateway.backlog() == 0


def test_unknown_kind_fails(gateway, run_worker):
    with run_worker(sample_app.worker):
        job_id = gateway.submit("no_such_kind")
        events = gateway.wait_terminal(job_id)
    assert events[-1]["event"] == "failed"
    assert events[-1]["data"]["error"]["code"] == "unknown_kind"
    assert gateway.backlog() == 0


def test_result_not_serializable(gateway, run_worker):
    with run_worker(sample_app.worker):
        job_id = gateway.submit("not_json")
        events = gateway.wait_terminal(job_id)
    error = events[-1]["data"]["error"]
    assert error["code"] == "result_not_serializable"
    assert "TypeError" in error["message"]


def test_progress_is_coalesced(gateway, run_worker):
    with run_worker(sample_app.worker):
        # 10,000 calls spread over 0.5 s: 20,000 calls/s.
        job_id = gateway.submit("spam_progress", {"calls": 10_000, "min_s": 0.5})
        events = gateway.wait_terminal(job_id)
    assert_contiguous(events)
    progress = [e for e in events if e["event"] == "progress"]
    elapsed = events[-1]["data"]["result"]["elapsed_s"]
    # At most one per 0.1 s interval (plus the first and the final flush).
    assert 2 <= len(progress) <= elapsed / 0.1 + 3, len(progress)
    assert progress[-1]["data"] == {"done": 10_000, "total": 10_000}
    assert events[-1]["event"] == "completed"
    assert events.index(progress[-1]) == len(events) - 2


def test_progress_burst_then_return_flushes_final_value(gateway, run_worker):
    with run_worker(sample_app.worker):
        job_id = gateway.submit("spam_progress", {"calls": 10_000})
        events = gateway.wait_terminal(job_id)
    progress = [e for e in events if e["event"] == "progress"]
    assert 1 <= len(progress) <= 3
    assert progress[-1]["data"]["done"] == 10_000


def test_bands_run_highest_first(gateway, run_worker):
    # Enqueued before any worker runs: low first, high last.
    sample_app.run_order.clear()
    low = [gateway.submit("record_order", priority=1) for _ in range(2)]
    normal = [gateway.submit("record_order", priority=5) for _ in range(2)]
    high = [gateway.submit("record_order", priority=9) for _ in range(2)]
    with run_worker(sample_app.worker, concurrency=1):
        for job_id in low + normal + high:
            gateway.wait_terminal(job_id)
    # Highest band first; FIFO within a band.
    assert sample_app.run_order == high + normal + low


def test_queued_then_cancelled_job_is_skipped(gateway, run_worker):
    job_id = gateway.submit("echo")
    assert gateway.cancel(job_id).ok
    with run_worker(sample_app.worker):
        deadline = time.monotonic() + 5
        while gateway.backlog() and time.monotonic() < deadline:
            time.sleep(0.02)
    assert [e["event"] for e in gateway.events(job_id)] == ["queued", "cancelled"]
    assert gateway.backlog() == 0
    assert gateway.pending() == 0


def _usurp(gateway, job_id, consumer="usurper"):
    """Do what another worker does after our lease ran out: claim the entry, start."""
    stream = keys.queue_stream("default", "normal")
    [pending] = gateway.redis.xpending_range(stream, keys.CONSUMER_GROUP, "-", "+", 10)
    gateway.redis.xclaim(stream, keys.CONSUMER_GROUP, consumer, 0, [pending["message_id"]])
    reply, _ = JobScript.load(gateway.redis).start(job_id, consumer)
    assert reply.ok


def _renew_as(gateway, consumer="usurper") -> bool:
    """Renew the entries pending with ``consumer``, as that worker's renewer would
    (only those it still owns); True when it owns one."""
    stream = keys.queue_stream("default", "normal")
    pending = gateway.redis.xpending_range(stream, keys.CONSUMER_GROUP, "-", "+", 10)
    ids = [p["message_id"] for p in pending if p["consumer"] == consumer]
    return bool(ids) and bool(
        gateway.redis.eval(RENEW_SCRIPT, 1, stream, keys.CONSUMER_GROUP, consumer, *ids)
    )


def _pending_owner(gateway):
    stream = keys.queue_stream("default", "normal")
    return [
        p["consumer"] for p in gateway.redis.xpending_range(stream, "jobgate-workers", "-", "+", 10)
    ]


def test_stale_outcome_is_refused_and_not_acknowledged(gateway, run_worker):
    with run_worker(sample_app.worker) as runtime:
        job_id = gateway.submit("gated")
        gateway.wait_event(job_id, "started")
        _usurp(gateway, job_id)
        # Pretend the entry was delivered long ago (so the worker cannot be sure
        # it still owns it and checks the reply before acknowledging).
        run = runtime.inflight.run_for(job_id)
        run.entry = dataclasses.replace(run.entry, delivered_at=0.0)
        sample_app.gates.setdefault(job_id, threading.Event()).set()
        wait_until(lambda: runtime.inflight.run_for(job_id) is None, what="the attempt's end")
        events = gateway.events(job_id)
        # The first attempt's result was refused: no terminal event ...
        assert [e["event"] for e in events] == ["queued", "started", "retrying", "started"]
        # ... and the entry was left to its new owner.
        assert _pending_owner(gateway) == ["usurper"]
    done = gateway.script.complete(job_id, 2, '{"by":"usurper"}')
    assert done.ok
    assert_contiguous(gateway.events(job_id))


def test_taken_over_attempt_is_abandoned_at_lease_renewal(gateway, run_worker):
    with run_worker(sample_app.worker, lease_ms=600) as runtime:
        job_id = gateway.submit("wait_cancel", {"limit_s": 30})
        gateway.wait_event(job_id, "progress")
        _usurp(gateway, job_id)
        # Within a renewal interval the worker notices, stops the handler
        # (ctx.cancelled) and stops renewing the entry it no longer owns. The
        # usurper renews its lease meanwhile, as a live worker does.
        wait_until(
            lambda: _renew_as(gateway) and runtime.inflight.run_for(job_id) is None,
            timeout=5,
            what="the taken-over attempt to end",
        )
        assert _pending_owner(gateway) == ["usurper"]
        events = gateway.events(job_id)
        assert [e["event"] for e in events][-2:] == ["retrying", "started"]
        # The handler saw ctx.cancelled and returned; nothing of it is left.
        assert runtime.inflight.run_for(job_id) is None
        assert runtime.inflight.held() == []


def test_cancel_running_job(gateway, run_worker):
    with run_worker(sample_app.worker):
        job_id = gateway.submit("wait_cancel")
        gateway.wait_event(job_id, "progress")
        assert gateway.cancel(job_id).status == "requested"
        events = gateway.wait_terminal(job_id, timeout=5)
    assert_contiguous(events)
    assert events[-1]["event"] == "cancelled"
    assert events[-1]["data"] == {"reason": "requested", "attempt": 1}
    assert gateway.backlog() == 0


def test_cancel_seen_at_lease_renewal_without_pubsub(gateway, run_worker):
    with run_worker(sample_app.worker, lease_ms=600):
        job_id = gateway.submit("wait_cancel")
        gateway.wait_event(job_id, "progress")
        # Set the flag but publish nothing (a missed control message).
        gateway.redis.hset(keys.job_key(job_id), "cancel_requested", "1")
        events = gateway.wait_terminal(job_id, timeout=3)
    assert events[-1]["event"] == "cancelled"


def test_timeout(gateway, run_worker):
    with run_worker(sample_app.worker):
        started = time.monotonic()
        job_id = gateway.submit("sleep", {"s": 2.5}, timeout_s=1)
        events = gateway.wait_terminal(job_id, timeout=5)
        elapsed = time.monotonic() - started
        assert events[-1]["event"] == "failed"
        assert events[-1]["data"]["error"]["code"] == "timeout"
        assert 0.9 <= elapsed < 2.2
        assert gateway.backlog() == 0
        # The handler returns later; its result changes nothing.
        time.sleep(1.8)
        assert gateway.events(job_id) == events


def test_retryable_error_then_success(gateway, run_worker):
    with run_worker(sample_app.worker):
        job_id = gateway.submit("flaky", {"succeed_on": 2, "delay_s": 0.05})
        events = gateway.wait_terminal(job_id)
    assert_contiguous(events)
    assert [e["event"] for e in events] == ["queued", "started", "retrying", "started", "completed"]
    retrying = events[2]["data"]
    assert retrying["attempt"] == 1
    assert retrying["next_attempt"] == 2
    assert retrying["delay_ms"] == 50
    assert retrying["error"] == {"code": "upstream_busy", "message": "upstream busy"}
    assert events[3]["data"]["attempt"] == 2
    assert events[-1]["data"]["result"] == {"attempt": 2}
    assert gateway.backlog() == 0
    assert gateway.pending() == 0


def test_retryable_error_uses_backoff(gateway, run_worker):
    with run_worker(sample_app.worker):
        job_id = gateway.submit("flaky", {"succeed_on": 3})
        events = gateway.wait_terminal(job_id)
    delays = [e["data"]["delay_ms"] for e in events if e["event"] == "retrying"]
    # base 0.05 s: attempt 1 waits 25-50 ms, attempt 2 waits 50-100 ms.
    assert len(delays) == 2
    assert 25 <= delays[0] <= 50
    assert 50 <= delays[1] <= 100
    assert events[-1]["data"]["result"] == {"attempt": 3}


def test_retries_exhausted_are_dead_lettered(gateway, run_worker):
    with run_worker(sample_app.worker):
        job_id = gateway.submit("flaky", {"succeed_on": 99, "delay_s": 0.01}, max_attempts=2)
        events = gateway.wait_terminal(job_id)
    assert [e["event"] for e in events] == ["queued", "started", "retrying", "started", "failed"]
    assert events[-1]["data"]["error"]["code"] == "max_attempts_exceeded"
    dead = gateway.dead_letters()
    assert len(dead) == 1
    assert dead[0]["job_id"] == job_id
    assert dead[0]["reason"] == "max_attempts_exceeded"
    assert dead[0]["kind"] == "flaky"
    assert gateway.backlog() == 0


def test_lease_is_renewed_while_a_job_runs(gateway, run_worker):
    # Two workers with a 300 ms lease; a 1.2 s job must not be reclaimed.
    with run_worker(sample_app.worker, lease_ms=300), run_worker(sample_app.worker, lease_ms=300):
        job_id = gateway.submit("sleep", {"s": 1.2})
        events = gateway.wait_terminal(job_id)
    assert [e["event"] for e in events] == ["queued", "started", "completed"]


def test_script_cache_flush_and_missing_group_are_survived(gateway, run_worker):
    with run_worker(sample_app.worker):
        first = gateway.submit("echo", {"i": 1})
        gateway.wait_terminal(first)
        # As after a Redis restart: no scripts, no streams, no groups.
        gateway.redis.script_flush()
        for stream in keys.queue_streams("default"):
            gateway.redis.delete(stream)
        time.sleep(0.3)
        second = gateway.submit("echo", {"i": 2})
        events = gateway.wait_terminal(second)
    assert events[-1]["data"]["result"] == {"i": 2}


def test_redis_restart_is_survived(redis_server, gateway, run_worker):
    with run_worker(sample_app.worker):
        redis_server.restart()
        time.sleep(0.5)
        fresh = type(gateway)(redis_server)
        job_id = fresh.submit("echo", {"after": "restart"})
        events = fresh.wait_terminal(job_id, timeout=15)
        # The restarted Redis lost the registered kinds; the worker wrote them again.
        assert fresh.redis.hexists(keys.KINDS_KEY, "echo")
    assert events[-1]["data"]["result"] == {"after": "restart"}


def test_queue_override_and_many_jobs(gateway, run_worker):
    other = Worker(queue="other")
    other.job("echo")(sample_app.echo)
    with run_worker(other, concurrency=3):
        ids = [gateway.submit("echo", {"i": i}, queue="other") for i in range(60)]
        for i, job_id in enumerate(ids):
            events = gateway.wait_terminal(job_id)
            assert events[-1]["data"]["result"] == {"i": i}
    assert gateway.backlog("other") == 0


def _ghost_takes_and_deletes(gateway, job_id):
    """A consumer reads the entry, then the entry is deleted without XACK."""
    stream = keys.queue_stream("default", "normal")
    reply = gateway.redis.xreadgroup(keys.CONSUMER_GROUP, "ghost", {stream: ">"}, count=1)
    [(_, [(entry_id, fields)])] = reply
    assert fields["job_id"] == job_id
    gateway.redis.xdel(stream, entry_id)
    return stream, entry_id, fields


def test_deleted_pending_entry_is_logged(gateway, run_worker, caplog):
    job_id = gateway.submit("echo")
    _ghost_takes_and_deletes(gateway, job_id)
    time.sleep(0.25)
    with (
        caplog.at_level(logging.ERROR, logger="jobgate_worker.job"),
        run_worker(sample_app.worker, lease_ms=200),
    ):
        deadline = time.monotonic() + 3
        while gateway.pending() and time.monotonic() < deadline:
            time.sleep(0.02)
    assert gateway.pending() == 0
    assert any("cannot be identified" in r.getMessage() for r in caplog.records)


def test_deleted_pending_entry_of_a_known_job_fails_it(gateway, run_worker):
    job_id = gateway.submit("gated")
    stream, entry_id, fields = _ghost_takes_and_deletes(gateway, job_id)
    # The job had been started by an attempt run in this process before.
    JobScript.load(gateway.redis).start(job_id, "earlier")
    time.sleep(0.25)
    worker = run_worker(sample_app.worker, lease_ms=200)
    worker.runtime.executor._remember(Entry(stream, entry_id, fields, 1))
    with worker:
        events = gateway.wait_terminal(job_id, timeout=3)
    assert events[-1]["event"] == "failed"
    assert events[-1]["data"]["error"]["code"] == "entry_deleted"


def test_a_finished_attempt_is_freed_without_the_garbage_collector(gateway, run_worker):
    """An attempt's context, progress reporter and run are freed by reference
    counting alone as soon as it ends: no reference cycle is left for the
    garbage collector (at thousands of jobs a second, with one cycle per job
    the collector took 9 % of the worker's time)."""
    worker = Worker(queue="default")
    contexts: list[weakref.ref] = []

    @worker.job("echo")
    def echo(ctx, params):
        ctx.progress(1, 1)
        contexts.append(weakref.ref(ctx))
        return params

    gc.collect()
    gc.disable()
    try:
        with run_worker(worker):
            job_ids = [gateway.submit("echo", {"i": i}) for i in range(20)]
            for job_id in job_ids:
                assert gateway.wait_terminal(job_id)[-1]["event"] == "completed"
            deadline = time.monotonic() + 5
            while any(ref() is not None for ref in contexts) and time.monotonic() < deadline:
                time.sleep(0.02)
        assert len(contexts) == 20
        alive = sum(ref() is not None for ref in contexts)
        assert alive == 0, f"{alive} of 20 finished attempts' contexts wait for the collector"
    finally:
        gc.enable()
