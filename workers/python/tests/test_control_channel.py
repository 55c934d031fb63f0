"""When a running job's control channel is subscribed, and how fast a cancel stops it.

A job's channel is subscribed only once its attempt has run for
``control_after_s`` (0.25 s by default): a short job never subscribes; a
cancel made before the subscription is found in the job's record once the
subscription is confirmed; a later one arrives on the channel. Every test
here uses a long lease, which puts the periodic check of running jobs (the
safety net, every ``lease/3``) 10 s apart: a cancel seen sooner came through
the deferred subscription.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import sample_app
from conftest import wait_until
from jobgate_worker import Settings
from jobgate_worker.settings import SettingsError

#: The safety net runs every lease/3 = 10 s: far later than any bound checked here.
LEASE_MS = 30_000


def subscribe_calls(gateway: Any) -> int:
    """How many SSUBSCRIBE / SUNSUBSCRIBE commands the server has run."""
    stats = gateway.redis.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
        for command in ("ssubscribe", "sunsubscribe")
    )


def test_short_jobs_never_subscribe_their_control_channel(gateway, run_worker):
    with run_worker(sample_app.worker, lease_ms=LEASE_MS) as runtime:
        before = subscribe_calls(gateway)
        job_ids = [gateway.submit("echo", {"n": index}) for index in range(20)]
        for job_id in job_ids:
            assert gateway.wait_terminal(job_id)[-1]["event"] == "completed"
        # Past the deferral: a job that ended sooner must not subscribe late.
        time.sleep(runtime.settings.control_after_s + 0.2)
        assert subscribe_calls(gateway) == before
        assert runtime.control.watching() == 0

        # The same count does see a job that runs long enough.
        long_id = gateway.submit("wait_cancel", {"limit_s": 5})
        gateway.wait_event(long_id, "progress")
        wait_until(lambda: runtime.control.watching() == 1, timeout=2)
        assert subscribe_calls(gateway) == before + 1
        assert gateway.cancel(long_id).status == "requested"
        assert gateway.wait_terminal(long_id, timeout=2)[-1]["event"] == "cancelled"


def test_a_cancel_before_the_subscription_is_found_once_it_is_made(gateway, run_worker):
    with run_worker(sample_app.worker, lease_ms=LEASE_MS) as runtime:
        job_id = gateway.submit("wait_cancel", {"limit_s": 20})
        gateway.wait_event(job_id, "started")
        time.sleep(0.05)
        assert runtime.control.watching() == 0, "cancelled before the channel is subscribed"
        asked = time.monotonic()
        assert gateway.cancel(job_id).status == "requested"
        events = gateway.wait_terminal(job_id, timeout=3)
        elapsed = time.monotonic() - asked
    assert events[-1]["event"] == "cancelled"
    assert events[-1]["data"] == {"reason": "requested", "attempt": 1}
    # About the rest of the deferral plus a round trip; far less than the safety net's 10 s.
    assert elapsed < 1.0


def test_a_later_cancel_comes_through_the_channel_at_once(gateway, run_worker):
    with run_worker(sample_app.worker, lease_ms=LEASE_MS) as runtime:
        before = subscribe_calls(gateway)
        job_id = gateway.submit("wait_cancel", {"limit_s": 20})
        gateway.wait_event(job_id, "started")
        started = time.monotonic()
        wait_until(lambda: runtime.control.watching() == 1, timeout=2)
        time.sleep(max(1.0 - (time.monotonic() - started), 0.0))
        asked = time.monotonic()
        assert gateway.cancel(job_id).status == "requested"
        events = gateway.wait_terminal(job_id, timeout=3)
        elapsed = time.monotonic() - asked
        assert events[-1]["event"] == "cancelled"
        assert elapsed < 0.5
        # Subscribed once, and unsubscribed once the attempt ended.
        wait_until(lambda: runtime.control.watching() == 0, timeout=3)
        wait_until(lambda: subscribe_calls(gateway) == before + 2, timeout=3)


def test_with_no_deferral_every_job_subscribes_before_start(gateway, run_worker):
    with run_worker(sample_app.worker, lease_ms=LEASE_MS, control_after_s=0) as runtime:
        before = subscribe_calls(gateway)
        job_id = gateway.submit("echo", {})
        assert gateway.wait_terminal(job_id)[-1]["event"] == "completed"
        wait_until(lambda: subscribe_calls(gateway) == before + 2, timeout=3)
        assert runtime.control.watching() == 0

        job_id = gateway.submit("wait_cancel", {"limit_s": 20})
        gateway.wait_event(job_id, "progress")
        assert runtime.control.watching() == 1
        asked = time.monotonic()
        assert gateway.cancel(job_id).status == "requested"
        assert gateway.wait_terminal(job_id, timeout=3)[-1]["event"] == "cancelled"
        assert time.monotonic() - asked < 0.5


def test_control_after_setting():
    assert Settings().control_after_s == pytest.approx(0.25)
    assert Settings.from_env({"JOBGATE_CONTROL_AFTER_S": "0"}).control_after_s == 0
    assert Settings.from_env({"JOBGATE_CONTROL_AFTER_S": "1.5"}).control_after_s == 1.5
    with pytest.raises(SettingsError, match="control_after_s"):
        Settings(control_after_s=-1).validated()
    with pytest.raises(SettingsError, match="JOBGATE_CONTROL_AFTER_S"):
        Settings.from_env({"JOBGATE_CONTROL_AFTER_S": "soon"})
