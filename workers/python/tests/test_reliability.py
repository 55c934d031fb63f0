"""Crashes, reclaiming, dead letters and shutdown, with real worker processes
(and in-thread runtimes where the test must reach inside)."""

from __future__ import annotations

import logging
import re
import signal
import threading
import time

import sample_app
from conftest import REPO_ROOT, Gateway, assert_contiguous
from jobgate_worker import keys
from jobgate_worker.dask_support import JobDask
from jobgate_worker.runtime import EXIT_FAILED
from jobgate_worker.streams import QueueStreams

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_killed_worker_job_is_reclaimed_and_completed(gateway, spawn_worker):
    workers = {name: spawn_worker("--lease-ms", "600", "--consumer", name) for name in ("w1", "w2")}
    for process in workers.values():
        process.wait_started()
    job_id = gateway.submit("slow_steps", {"n": 8, "pause_s": 0.1})
    events = gateway.wait_event(job_id, "progress")
    victim = next(e["data"]["worker"] for e in events if e["event"] == "started")
    workers[victim].kill9()

    events = gateway.wait_terminal(job_id, timeout=15)
    assert_contiguous(events)
    names = [e["event"] for e in events]
    assert names.count("completed") == 1
    assert sum(name in ("completed", "failed", "cancelled") for name in names) == 1
    assert names[0] == "queued"
    started = [e for e in events if e["event"] == "started"]
    assert [s["data"]["attempt"] for s in started] == [1, 2]
    assert started[1]["data"]["worker"] != victim
    retrying = next(e for e in events if e["event"] == "retrying")
    assert retrying["data"]["attempt"] == 1
    assert retrying["data"]["next_attempt"] == 2
    assert retrying["data"]["error"]["code"] == "attempt_lost"
    assert names.index("retrying") < names.index("completed")
    assert events[-1]["data"]["result"] == {"attempt": 2, "steps": 8}
    assert gateway.backlog() == 0
    assert gateway.pending() == 0


def test_job_that_always_crashes_is_dead_lettered(gateway, spawn_worker):
    job_id = gateway.submit("crash", max_attempts=2)
    deadline = time.monotonic() + 30
    spawned = []
    while time.monotonic() < deadline:
        events = gateway.events(job_id)
        if any(e["event"] == "failed" for e in events):
            break
        if not spawned or not spawned[-1].alive():
            spawned.append(spawn_worker("--lease-ms", "400", "--consumer", f"c{len(spawned)}"))
        time.sleep(0.05)
    events = gateway.events(job_id)
    assert_contiguous(events)
    assert events[-1]["event"] == "failed"
    assert events[-1]["data"]["error"]["code"] == "max_attempts_exceeded"
    assert [e["data"]["attempt"] for e in events if e["event"] == "started"] == [1, 2]
    # Two processes died running it; the third found its attempts used up.
    assert [p.process.returncode for p in spawned[:2]] == [17, 17]
    deadline = time.monotonic() + 5
    while not gateway.dead_letters() and time.monotonic() < deadline:
        time.sleep(0.05)
    dead = gateway.dead_letters()
    assert len(dead) == 1
    assert dead[0]["job_id"] == job_id
    assert dead[0]["reason"] == "max_attempts_exceeded"
    assert dead[0]["kind"] == "crash"
    assert gateway.backlog() == 0
    assert gateway.pending() == 0


def test_sigterm_lets_the_running_job_finish(gateway, spawn_worker):
    worker = spawn_worker("--grace-s", "10")
    worker.wait_started()
    job_id = gateway.submit("slow_steps", {"n": 4, "pause_s": 0.15})
    gateway.wait_event(job_id, "started")
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    events = gateway.events(job_id)
    assert events[-1]["event"] == "completed"
    assert gateway.backlog() == 0
    messages = [line["message"] for line in worker.log_lines()]
    assert "worker stopped" in messages


def _given_back(events):
    """The job is queued again after a ``release``: last event ``retrying`` worker_shutdown."""
    last = events[-1]
    assert last["event"] == "retrying", events
    assert last["data"]["attempt"] == last["data"]["next_attempt"] == 1
    assert last["data"]["error"]["code"] == "worker_shutdown"
    assert "delay_ms" not in last["data"]


def test_sigterm_past_grace_gives_the_job_back_without_charging_an_attempt(gateway, spawn_worker):
    # The default lease (10 s) is far longer than this test: the job can run
    # again this soon only because it was given back, not reclaimed.
    first = spawn_worker("--grace-s", "0.3", "--consumer", "first")
    first.wait_started()
    job_id = gateway.submit("slow_steps", {"n": 8, "pause_s": 0.2})
    gateway.wait_event(job_id, "progress")
    first.signal(signal.SIGTERM)
    assert first.wait(10) == 0

    events = gateway.events(job_id)
    assert_contiguous(events)
    names = [e["event"] for e in events if e["event"] != "progress"]
    assert names == ["queued", "started", "retrying"]
    _given_back(events)
    record = gateway.record(job_id)
    assert (record["status"], record["attempt"]) == ("queued", "0")
    # Re-enqueued: one fresh entry in the stream, nothing left pending.
    assert gateway.pending() == 0
    [(new_id, fields)] = gateway.redis.xrange(keys.queue_stream("default", "normal"))
    assert fields["job_id"] == job_id
    lines = first.log_lines()
    [given_back] = [line for line in lines if line["message"].startswith("job given back")]
    assert given_back["job_id"] == job_id
    assert given_back["entry_id"] != new_id
    assert not [line for line in lines if line["level"] == "error"]

    second = spawn_worker("--consumer", "second")
    events = gateway.wait_terminal(job_id, timeout=15)
    assert_contiguous(events)
    names = [e["event"] for e in events if e["event"] != "progress"]
    assert names == ["queued", "started", "retrying", "started", "completed"]
    started = [e["data"] for e in events if e["event"] == "started"]
    assert started == [{"attempt": 1, "worker": "first"}, {"attempt": 1, "worker": "second"}]
    assert events[-1]["data"]["result"] == {"attempt": 1, "steps": 8}
    assert gateway.record(job_id)["attempt"] == "1"
    assert gateway.dead_letters() == []
    assert gateway.backlog() == 0
    assert gateway.pending() == 0
    second.signal(signal.SIGTERM)
    assert second.wait(10) == 0


def test_second_signal_ends_the_grace_at_once(gateway, spawn_worker):
    worker = spawn_worker("--grace-s", "60", "--consumer", "impatient")
    worker.wait_started()
    job_id = gateway.submit("sleep", {"s": 30})  # ignores ctx.cancelled
    gateway.wait_event(job_id, "started")
    worker.signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while not any(line["message"].startswith("stopping:") for line in worker.log_lines()):
        assert time.monotonic() < deadline, "the first signal was not handled"
        time.sleep(0.02)
    # Past the read loop's blocking read (1 s): the worker now waits out the grace.
    time.sleep(1.5)
    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert time.monotonic() - signalled < 8
    events = gateway.events(job_id)
    assert_contiguous(events)
    _given_back(events)
    assert gateway.pending() == 0
    assert gateway.backlog() == 1


def test_late_result_of_a_given_back_job_is_dropped(gateway, run_worker, caplog, monkeypatch):
    cancelled: list[JobDask] = []
    cancel_all = JobDask.cancel_all

    def spy(self: JobDask) -> int:
        cancelled.append(self)
        return cancel_all(self)

    monkeypatch.setattr(JobDask, "cancel_all", spy)
    worker = run_worker(sample_app.worker, consumer="leaving")
    runtime = worker.runtime
    caplog.set_level(logging.INFO, logger="jobgate_worker")
    worker.thread.start()
    assert runtime.wait_ready(10)
    job_id = gateway.submit("gated", {"limit_s": 10})
    gateway.wait_event(job_id, "started")
    deadline = time.monotonic() + 5
    while job_id not in sample_app.contexts:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    ctx = sample_app.contexts[job_id]
    job_dask = ctx.dask  # only the per-job view: no Dask cluster is started

    runtime.stop(grace_s=0.1)
    worker.thread.join(10)
    assert not worker.thread.is_alive()
    assert ctx.cancelled
    assert ctx.stop_reason == "shutdown"
    assert cancelled == [job_dask]
    events = gateway.events(job_id)
    assert [e["event"] for e in events] == ["queued", "started", "retrying"]
    _given_back(events)

    # The handler returns only now: its result is dropped, nothing breaks.
    sample_app.gates.setdefault(job_id, threading.Event()).set()
    deadline = time.monotonic() + 5
    while not any("outcome dropped" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "the late result was not dropped"
        time.sleep(0.01)
    time.sleep(0.1)
    assert gateway.events(job_id) == events
    record = gateway.record(job_id)
    assert (record["status"], record["attempt"]) == ("queued", "0")
    assert gateway.pending() == 0
    assert gateway.backlog() == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_redis_down_at_shutdown_leaves_the_job_to_be_reclaimed(
    redis_server, gateway, run_worker, caplog
):
    worker = run_worker(sample_app.worker, consumer="cut-off")
    caplog.set_level(logging.INFO, logger="jobgate_worker")
    worker.thread.start()
    assert worker.runtime.wait_ready(10)
    job_id = gateway.submit("slow_steps", {"n": 10, "pause_s": 0.1})
    gateway.wait_event(job_id, "progress")
    # Keep what Redis holds now (the next start loads it), then lose Redis.
    gateway.redis.save()
    redis_server.kill()
    worker.runtime.stop(grace_s=0.1)
    worker.thread.join(15)
    assert not worker.thread.is_alive()
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("redis unreachable at shutdown") for m in messages)
    assert not any(m.startswith("job given back") for m in messages)

    redis_server.start(redis_server.port)
    after = Gateway(redis_server)
    record = after.record(job_id)
    assert (record["status"], record["attempt"]) == ("running", "1")
    assert after.pending() == 1  # still the first worker's
    # As before the release existed: reclaimed after the lease, as a new attempt.
    with run_worker(sample_app.worker, consumer="rescuer", lease_ms=300):
        events = after.wait_terminal(job_id, timeout=15)
    assert_contiguous(events)
    assert [e["data"]["attempt"] for e in events if e["event"] == "started"] == [1, 2]
    retrying = [e["data"] for e in events if e["event"] == "retrying"]
    assert [r["error"]["code"] for r in retrying] == ["attempt_lost"]
    assert events[-1]["event"] == "completed"
    assert after.backlog() == 0
    assert after.pending() == 0
    after.redis.close()


def test_log_lines_are_json_with_trace_context(gateway, spawn_worker):
    worker = spawn_worker()
    worker.wait_started()
    job_id = gateway.submit("slow_steps", {"n": 2, "pause_s": 0.01})
    events = gateway.wait_terminal(job_id)
    worker.signal(signal.SIGTERM)
    worker.wait(10)
    lines = worker.log_lines()
    assert lines
    for line in lines:
        assert TIMESTAMP.match(line["timestamp"]), line
        assert line["level"] in {"debug", "info", "warn", "error"}
        assert isinstance(line["message"], str)
        assert line["service"] == "jobgate-worker"
        assert HEX32.match(line["trace_id"]), line
        assert HEX16.match(line["span_id"]), line
    trace_id = events[0]["trace_id"]
    steps = [line for line in lines if line["message"] == "step done"]
    assert [line["step"] for line in steps] == [1, 2]
    for line in steps + [line for line in lines if line["message"] == "job completed"]:
        assert line["job_id"] == job_id
        assert line["trace_id"] == trace_id
        assert line["attempt"] == 1
    # The handler's lines and the SDK's lines of one attempt share one span.
    assert len({line["span_id"] for line in steps}) == 1


def test_cli_runs_the_pricing_example_from_the_repo_root(gateway, spawn_worker):
    worker = spawn_worker("--consumer", "root", app="examples.pricing:worker", cwd=REPO_ROOT)
    worker.wait_started()
    job_id = gateway.submit("echo", {"hello": [1, 2.5, "x", None]})
    events = gateway.wait_terminal(job_id)
    assert events[-1]["data"]["result"] == {"hello": [1, 2.5, "x", None]}
    worker.signal(signal.SIGINT)
    assert worker.wait(10) == 0


def test_worker_started_before_redis_waits_for_it(redis_server, spawn_worker):
    redis_server.kill()
    worker = spawn_worker("--consumer", "early")
    deadline = time.monotonic() + 15
    while not any(line["message"] == "redis unreachable; waiting" for line in worker.log_lines()):
        assert worker.alive()
        assert time.monotonic() < deadline, "the worker did not report waiting for Redis"
        time.sleep(0.05)
    redis_server.start(redis_server.port)
    worker.wait_started()
    gateway = Gateway(redis_server)
    job_id = gateway.submit("echo", {"late": True})
    assert gateway.wait_terminal(job_id)[-1]["data"]["result"] == {"late": True}


def _break_the_high_band(gateway):
    """A key of another type where the queue's high band should be: Redis refuses the group."""
    gateway.redis.set(keys.queue_stream("default", "high"), "not a stream")


def test_runtime_that_cannot_set_up_its_queue_returns_a_failure_status(gateway, run_worker, caplog):
    _break_the_high_band(gateway)
    runtime = run_worker(sample_app.worker, consumer="misconfigured").runtime
    caplog.set_level(logging.INFO, logger="jobgate_worker")
    assert runtime.run() == EXIT_FAILED
    assert runtime.wait_stopped(0)
    [failed] = [r for r in caplog.records if r.getMessage() == "worker failed; stopping"]
    assert failed.levelno == logging.ERROR
    assert "WRONGTYPE" in str(failed.exc_info[1])


def test_runtime_whose_read_loop_crashes_stops_with_a_failure_status(gateway, run_worker):
    worker = run_worker(sample_app.worker, consumer="crashing")
    worker.thread.start()
    assert worker.runtime.wait_ready(10)
    job_id = gateway.submit("slow_steps", {"n": 3, "pause_s": 0.1})
    gateway.wait_event(job_id, "started")

    def crash(*args, **kwargs):
        raise RuntimeError("a bug in the read loop")

    worker.runtime.streams.read = crash
    worker.thread.join(15)
    assert not worker.thread.is_alive()
    assert worker.status == EXIT_FAILED
    # The shutdown still ran: the running job finished within the grace.
    assert gateway.events(job_id)[-1]["event"] == "completed"


def test_cli_exits_with_the_runtime_failure_status_and_logs_it_as_json(gateway, spawn_worker):
    _break_the_high_band(gateway)
    worker = spawn_worker("--consumer", "misconfigured")
    assert worker.wait(15) == EXIT_FAILED
    lines = worker.log_lines()  # every line is JSON: no bare traceback on stderr
    [failed] = [line for line in lines if line["message"] == "worker failed; stopping"]
    assert failed["level"] == "error"
    assert "WRONGTYPE" in failed["exception"]
    assert lines[-1]["message"] == "worker stopped"


def test_a_job_is_dead_lettered_once_whoever_buries_it(gateway):
    """Two workers can both see a job run out of attempts (one by ``retry``,
    one reclaiming its entry): the second ``bury`` only acknowledges its entry."""
    job_id = gateway.submit("echo")
    stream = keys.queue_stream("default", "normal")
    [(_, fields)] = gateway.redis.xrange(stream)
    gateway.redis.xadd(stream, fields)
    streams = QueueStreams(gateway.redis, "default", "bury-test")
    first, second = streams.read(2, block_ms=0)
    streams.dead_letter(first, "max_attempts_exceeded")
    streams.dead_letter(second, "max_attempts_exceeded")
    dead = gateway.dead_letters()
    assert [d["job_id"] for d in dead] == [job_id]
    [(dead_id, _)] = gateway.redis.xrange(keys.dead_letter_stream("default"))
    assert gateway.redis.hgetall(keys.dead_letter_index("default")) == {job_id: dead_id}
    assert gateway.redis.xlen(stream) == 0, "both entries acknowledged and deleted"
    assert gateway.redis.xpending(stream, keys.CONSUMER_GROUP)["pending"] == 0
