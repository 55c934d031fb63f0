"""A real Dask cluster behind ``DASK_SCHEDULER_ADDRESS``, and its processes killed mid-job.

``dask scheduler`` and ``dask worker`` run as processes of their own
(``dask_cluster.py``); the jobgate runtime runs in this process against a
real Redis. A Dask worker killed mid-task is Dask's to mend (the scheduler
runs the task elsewhere); a lost scheduler, or a cluster left without
workers, ends the attempt with a retry carrying a ``dask_*`` code, and once
the attempts are used up the job fails with that code — it never stays
``running``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sample_app
from conftest import REPO_ROOT, Gateway, assert_contiguous, wait_until
from dask_cluster import DaskCluster, wait_for_marker
from jobgate_worker.dask_health import DaskTimeouts
from jobgate_worker.dask_provider import DaskProvider
from jobgate_worker.errors import DaskError

sys.path.insert(0, str(REPO_ROOT))

from examples import pricing


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[DaskCluster]:
    cluster = DaskCluster(tmp_path / "dask")
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    directory = tmp_path / "markers"
    directory.mkdir()
    return directory


def _names(events):
    return [e["event"] for e in events if e["event"] != "progress"]


def _attempts(events):
    return [e["data"]["attempt"] for e in events if e["event"] == "started"]


def _submit_where(gateway: Gateway, markers: Path, *, s: float, max_attempts: int) -> str:
    """One ``dask_where`` task that leaves a marker in ``markers``, then sleeps ``s``."""
    return gateway.submit(
        "dask_where", {"n": 1, "s": s, "marker_dir": str(markers)}, max_attempts=max_attempts
    )


def _retried_once(events, last: str):
    """Asserts a whole history of two attempts, the second ending ``last``; its retry."""
    assert_contiguous(events)
    assert _names(events) == ["queued", "started", "retrying", "started", last], events
    return next(e for e in events if e["event"] == "retrying")


def _assert_dead_lettered(gateway: Gateway, job_id: str, code: str) -> None:
    [dead] = gateway.dead_letters()
    assert dead["job_id"] == job_id
    assert dead["reason"] == "max_attempts_exceeded"
    assert code in dead["error"]
    assert gateway.backlog() == 0
    assert gateway.pending() == 0


def test_tasks_run_on_the_external_dask_workers(gateway, run_worker, dask_cluster):
    dask_cluster.start(workers=2)
    pids = {worker.pid for worker in dask_cluster.workers}
    addresses = dask_cluster.wait_ready(2)
    assert set(addresses.values()) == pids
    with run_worker(sample_app.worker, dask_scheduler_address=dask_cluster.address):
        job_id = gateway.submit("dask_where", {"n": 6, "s": 0.05})
        events = gateway.wait_terminal(job_id, timeout=20)
    assert events[-1]["event"] == "completed", events[-1]
    places = events[-1]["data"]["result"]["places"]
    assert len(places) == 6
    assert {place["pid"] for place in places} <= pids
    assert os.getpid() not in {place["pid"] for place in places}
    assert all(addresses[place["worker"]] == place["pid"] for place in places)

    # The pricing example, unchanged, on the same cluster.
    with run_worker(pricing.worker, dask_scheduler_address=dask_cluster.address):
        job_id = gateway.submit(
            "mc_option_price",
            {"spot": 100, "strike": 105, "rate": 0.03, "volatility": 0.25, "maturity": 1.5,
             "paths": 20_000, "chunks": 4},
        )  # fmt: skip
        events = gateway.wait_terminal(job_id, timeout=20)
    assert events[-1]["event"] == "completed", events[-1]
    assert events[-1]["data"]["result"]["chunks"] == 4


def test_a_dask_worker_killed_mid_task_is_replaced_by_another(
    gateway, run_worker, dask_cluster, markers
):
    dask_cluster.start(workers=2)
    with run_worker(sample_app.worker, dask_scheduler_address=dask_cluster.address):
        job_id = gateway.submit("dask_where", {"n": 1, "s": 1.0, "marker_dir": str(markers)})
        victim = wait_for_marker(markers)
        dask_cluster.worker_with_pid(victim).kill()
        events = gateway.wait_terminal(job_id, timeout=20)
    assert_contiguous(events)
    assert _names(events) == ["queued", "started", "completed"], events
    [place] = events[-1]["data"]["result"]["places"]
    survivors = {worker.pid for worker in dask_cluster.workers if worker.alive()}
    assert place["pid"] != victim
    assert place["pid"] in survivors


def test_a_task_whose_workers_all_died_is_retried_with_dask_worker_lost(
    gateway, run_worker, dask_cluster, markers
):
    # With no failure allowed, the scheduler gives up on the task at the first
    # dead worker (KilledWorker) instead of running it elsewhere.
    no_failure_allowed = {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    dask_cluster.start(workers=2, scheduler_env=no_failure_allowed)
    with run_worker(sample_app.worker, dask_scheduler_address=dask_cluster.address):
        job_id = _submit_where(gateway, markers, s=1.0, max_attempts=3)
        victim = wait_for_marker(markers)
        dask_cluster.worker_with_pid(victim).kill()
        events = gateway.wait_terminal(job_id, timeout=20)
    retrying = _retried_once(events, "completed")
    assert retrying["data"]["error"]["code"] == "dask_worker_lost"
    assert "workers died while running it" in retrying["data"]["error"]["message"]
    [place] = events[-1]["data"]["result"]["places"]
    assert place["pid"] != victim


def test_scheduler_killed_mid_job_and_restarted_the_job_is_retried_and_completes(
    gateway, run_worker, dask_cluster, markers
):
    dask_cluster.start(workers=1)
    with run_worker(
        sample_app.worker,
        dask_scheduler_address=dask_cluster.address,
        dask_connect_timeout_s=15,
    ):
        job_id = _submit_where(gateway, markers, s=1.0, max_attempts=3)
        wait_for_marker(markers)
        dask_cluster.kill_scheduler()
        gateway.wait_event(job_id, "retrying", timeout=10)
        dask_cluster.start_scheduler()
        dask_cluster.start_worker()
        dask_cluster.wait_ready(1)
        events = gateway.wait_terminal(job_id, timeout=30)
    retrying = _retried_once(events, "completed")
    assert _attempts(events) == [1, 2]
    assert retrying["data"]["error"]["code"] == "dask_unavailable"
    assert dask_cluster.address in retrying["data"]["error"]["message"]
    assert events[-1]["data"]["result"]["attempt"] == 2
    [place] = events[-1]["data"]["result"]["places"]
    assert place["pid"] in {worker.pid for worker in dask_cluster.workers if worker.alive()}
    assert gateway.record(job_id)["attempt"] == "2"


def test_scheduler_killed_for_good_fails_the_job_with_dask_unavailable(
    gateway, run_worker, dask_cluster, markers
):
    dask_cluster.start(workers=1)
    with run_worker(
        sample_app.worker,
        dask_scheduler_address=dask_cluster.address,
        dask_connect_timeout_s=1,
    ):
        job_id = _submit_where(gateway, markers, s=5.0, max_attempts=2)
        wait_for_marker(markers)
        dask_cluster.kill_scheduler()
        events = gateway.wait_terminal(job_id, timeout=20)
    retrying = _retried_once(events, "failed")
    assert retrying["data"]["error"]["code"] == "dask_unavailable"
    error = events[-1]["data"]["error"]
    assert error["code"] == "dask_unavailable"
    assert error["message"].startswith(
        f"attempt 2 of 2 failed: could not connect to the Dask scheduler at {dask_cluster.address}"
        " within 1 s"
    ), error
    assert gateway.record(job_id)["status"] == "failed"
    _assert_dead_lettered(gateway, job_id, "dask_unavailable")


def test_no_dask_worker_left_fails_the_job_with_dask_no_workers(
    gateway, run_worker, dask_cluster, markers
):
    dask_cluster.start(workers=1)
    with run_worker(
        sample_app.worker,
        dask_scheduler_address=dask_cluster.address,
        dask_no_workers_timeout_s=1,
        dask_check_interval_s=0.1,
    ):
        job_id = _submit_where(gateway, markers, s=5.0, max_attempts=2)
        dask_cluster.worker_with_pid(wait_for_marker(markers)).kill()
        events = gateway.wait_terminal(job_id, timeout=20)
    retrying = _retried_once(events, "failed")
    assert retrying["data"]["error"]["code"] == "dask_no_workers"
    error = events[-1]["data"]["error"]
    assert error["code"] == "dask_no_workers"
    assert error["message"] == (
        f"attempt 2 of 2 failed: the Dask scheduler at {dask_cluster.address} had no workers"
        " for 1 s while the job waited for its tasks"
    )
    _assert_dead_lettered(gateway, job_id, "dask_no_workers")


def test_a_scheduler_gone_silent_fails_the_job_with_dask_unavailable(
    gateway, run_worker, dask_cluster, markers
):
    """Its connection stays open, so only the periodic look notices (a host that vanished)."""
    dask_cluster.start(workers=1)
    with run_worker(
        sample_app.worker,
        dask_scheduler_address=dask_cluster.address,
        dask_connect_timeout_s=1,
        dask_scheduler_timeout_s=1,
        dask_check_interval_s=0.1,
    ):
        job_id = _submit_where(gateway, markers, s=5.0, max_attempts=2)
        wait_for_marker(markers)
        assert dask_cluster.scheduler is not None
        dask_cluster.scheduler.pause()
        events = gateway.wait_terminal(job_id, timeout=20)
    retrying = _retried_once(events, "failed")
    assert retrying["data"]["error"] == {
        "code": "dask_unavailable",
        "message": f"the Dask scheduler at {dask_cluster.address} did not answer for 1 s",
    }
    assert events[-1]["data"]["error"]["code"] == "dask_unavailable"
    _assert_dead_lettered(gateway, job_id, "dask_unavailable")


def _connect_when_up(provider: DaskProvider) -> Any:
    """The provider's client, once its scheduler (just started) takes connections."""
    clients = []

    def connected() -> bool:
        with contextlib.suppress(DaskError):
            clients.append(provider.client())
        return bool(clients)

    wait_until(connected, timeout=20, what="the scheduler to take connections")
    return clients[0]


def test_a_scheduler_lost_again_and_again_leaves_no_thread_behind(dask_cluster):
    """A client that gives up on its lost scheduler closes itself: nothing of it may stay.

    Dask kept such a client's event loop running on a thread of its own, one
    more thread for each loss, for the rest of the worker's life.
    """

    def loop_threads() -> set[threading.Thread]:
        return {
            thread
            for thread in threading.enumerate()
            if thread.name == "IO loop" or thread.name.startswith("jobgate-dask")
        }

    before = loop_threads()
    provider = DaskProvider(dask_cluster.address, DaskTimeouts(connect_s=1))
    try:
        for _ in range(3):
            dask_cluster.start_scheduler()
            client = _connect_when_up(provider)
            dask_cluster.kill_scheduler()
            wait_until(
                lambda: client.status == "closed",  # noqa: B023 - waited for in this round
                timeout=20,
                what="the client to give up on its scheduler",
            )
    finally:
        provider.close()
    wait_until(lambda: loop_threads() <= before, timeout=10, what="the provider's threads to end")
