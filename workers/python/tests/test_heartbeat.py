"""The worker's heartbeat in ``jobgate:workers:{<queue>}`` and the pause flag."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import sample_app
from jobgate_worker import keys


def heartbeat_of(gateway: Any, consumer: str) -> dict[str, Any] | None:
    raw = gateway.redis.hget(keys.workers_key("default"), consumer)
    return None if raw is None else dict(json.loads(raw))


def test_the_heartbeat_names_the_worker_and_the_jobs_in_hand(gateway, run_worker):
    with run_worker(sample_app.worker, consumer="beating", heartbeat_s=0.1, concurrency=3):
        job_id = gateway.submit("sleep", {"s": 1.5})
        gateway.wait_event(job_id, "started")
        deadline = time.monotonic() + 5
        beat = heartbeat_of(gateway, "beating")
        while beat is None or job_id not in beat["in_hand"]:
            assert time.monotonic() < deadline, f"no heartbeat with the job: {beat}"
            time.sleep(0.05)
            beat = heartbeat_of(gateway, "beating")
        assert beat["consumer"] == "beating"
        assert beat["host"] == socket.gethostname()
        assert beat["pid"] == os.getpid()
        assert beat["concurrency"] == 3
        assert beat["interval_ms"] == 100
        assert "sleep" in beat["kinds"]
        assert beat["started_at"] <= beat["seen_at"]
        gateway.wait_terminal(job_id)
        first_seen = beat["seen_at"]
        deadline = time.monotonic() + 5
        while beat is None or beat["seen_at"] == first_seen or beat["in_hand"]:
            assert time.monotonic() < deadline, f"the heartbeat stopped: {beat}"
            time.sleep(0.05)
            beat = heartbeat_of(gateway, "beating")
    assert heartbeat_of(gateway, "beating") is None, "a clean stop removes the heartbeat"


def test_a_paused_queue_is_not_read_until_resumed(gateway, run_worker):
    gateway.redis.set(keys.paused_key("default"), 1)
    with run_worker(sample_app.worker):
        job_id = gateway.submit("echo", {"x": 1})
        time.sleep(1.0)
        assert [e["event"] for e in gateway.events(job_id)] == ["queued"]
        gateway.redis.delete(keys.paused_key("default"))
        events = gateway.wait_terminal(job_id)
        assert events[-1]["event"] == "completed"
