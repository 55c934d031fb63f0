"""Crashes, reclaiming, dead letters and shutdown, with real worker processes."""

from __future__ import annotations

import re
import signal
import time

from conftest import REPO_ROOT, Gateway, assert_contiguous

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


def test_sigterm_past_grace_leaves_the_job_to_be_reclaimed(gateway, spawn_worker):
    first = spawn_worker("--grace-s", "0.3", "--lease-ms", "500", "--consumer", "first")
    first.wait_started()
    job_id = gateway.submit("slow_steps", {"n": 6, "pause_s": 0.2})
    gateway.wait_event(job_id, "progress")
    first.signal(signal.SIGTERM)
    assert first.wait(10) == 0
    # Unfinished: still pending in the group, not acknowledged.
    assert gateway.pending() == 1
    assert not any(e["event"] == "completed" for e in gateway.events(job_id))

    second = spawn_worker("--lease-ms", "500", "--consumer", "second")
    events = gateway.wait_terminal(job_id, timeout=15)
    assert_contiguous(events)
    assert events[-1]["event"] == "completed"
    started = [e["data"] for e in events if e["event"] == "started"]
    assert started == [{"attempt": 1, "worker": "first"}, {"attempt": 2, "worker": "second"}]
    second.signal(signal.SIGTERM)
    assert second.wait(10) == 0


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
