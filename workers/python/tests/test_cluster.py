"""The worker on a real Redis Cluster: three masters, jobs and queues on different ones.

Each job's record and history live on its id's master, each queue's streams
on its name's master: the tests pick names so that one worker's jobs are
spread over the masters, mostly not the queue's own, so every step that must
stay in one slot (the script, the acknowledgement, the lease renewal, the
dead letter, the control channel, the outcome counters) is exercised across
nodes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

import sample_app
from conftest import (
    TERMINAL,
    TESTS_DIR,
    Gateway,
    RedisClusterNodes,
    RedisServer,
    WorkerProcess,
    assert_contiguous,
    free_port,
    key_on,
    thread_worker,
)
from jobgate_worker import Settings, keys
from jobgate_worker.clients import RedisSettingError, open_client
from jobgate_worker.settings import SettingsError
from jobgate_worker.stats import LATENCY_BUCKETS_MS


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    nodes = RedisClusterNodes(tmp_path_factory.mktemp("cluster"))
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def gateway(cluster: RedisClusterNodes) -> Iterator[Gateway]:
    gw = Gateway(cluster)
    try:
        yield gw
    finally:
        gw.redis.close()


def queue_on(cluster: RedisClusterNodes, port: int) -> str:
    """A queue name whose streams the master on ``port`` serves."""
    return "q-" + key_on(cluster, port, lambda name: keys.queue_stream(f"q-{name}", "normal"))


def job_on(cluster: RedisClusterNodes, port: int) -> str:
    """A job id whose record the master on ``port`` serves."""
    return key_on(cluster, port, keys.job_key)


def spread(cluster: RedisClusterNodes) -> tuple[str, list[str]]:
    """A queue on the first master, and one job id on each of the others."""
    first, *others = cluster.master_ports()
    return queue_on(cluster, first), [job_on(cluster, port) for port in others]


def test_the_factory_finds_a_cluster_from_any_seed_and_a_single_redis_from_its_url(
    cluster: RedisClusterNodes, redis_server: RedisServer
):
    nobody = f"redis://127.0.0.1:{free_port()}"
    client = open_client(f"{nobody},{cluster.url}", socket_timeout=5)
    assert isinstance(client, RedisCluster)
    assert sorted(node.port for node in client.get_primaries()) == cluster.master_ports()
    client.close()

    single = open_client(redis_server.url, socket_timeout=5)
    assert type(single) is redis.Redis
    assert single.ping()
    single.close()

    with pytest.raises(RedisSettingError, match="not part of a Redis Cluster"):
        open_client(f"{redis_server.url},{redis_server.url}", socket_timeout=5)
    with pytest.raises(redis.ConnectionError, match="no Redis seed answered"):
        open_client(nobody, socket_timeout=5)
    for setting, message in [
        ("redis://a:1,,redis://b:2", "empty URL"),
        ("redis://a:1,rediss://b:2", "mix redis:// and rediss://"),
        ("redis://a:1,unix:///tmp/redis.sock", "unix:// socket"),
        ("http://a:1", "is not a redis:// or rediss:// URL"),
        ("redis://:secret@a:1,redis://a:port", "redis://:\\*\\*\\*@a:1|a:port"),
    ]:
        with pytest.raises(SettingsError, match=message):
            Settings(redis_url=setting).validated()


def test_jobs_on_every_master_complete_fail_retry_and_are_counted(
    cluster: RedisClusterNodes, gateway: Gateway
):
    first, second, third = cluster.master_ports()
    queue = queue_on(cluster, first)
    echo_ids = [job_on(cluster, port) for port in (second, third, first)]
    boom_id, flaky_id = job_on(cluster, second), job_on(cluster, third)
    with thread_worker(cluster.url, sample_app.worker, queue=queue):
        for job_id in echo_ids:
            gateway.submit("echo", {"on": job_id}, queue=queue, job_id=job_id)
        gateway.submit("boom", {"message": "no"}, queue=queue, job_id=boom_id)
        gateway.submit("flaky", {"delay_s": 0.05}, queue=queue, job_id=flaky_id)
        for job_id in echo_ids:
            events = gateway.wait_terminal(job_id)
            assert_contiguous(events)
            assert events[-1]["event"] == "completed"
            assert events[-1]["data"]["result"] == {"on": job_id}
            assert all(event["epoch"] == 1 for event in events)
        failed = gateway.wait_terminal(boom_id)
        assert failed[-1]["event"] == "failed"
        assert failed[-1]["data"]["error"]["code"] == "handler_error"
        retried = gateway.wait_terminal(flaky_id)
        assert [e["event"] for e in retried] == [
            "queued", "started", "retrying", "started", "completed"
        ]  # fmt: skip
        assert gateway.backlog(queue) == 0
        assert gateway.pending(queue) == 0
    # The last counts are flushed as the worker stops.
    stats = gateway.redis.hgetall(keys.stats_key(queue))
    assert cluster.master_port_of(keys.stats_key(queue)) == cluster.master_ports()[0]
    echo_buckets = {
        name: int(count) for name, count in stats.items() if name.startswith("latency|echo|")
    }
    assert sum(echo_buckets.values()) == len(echo_ids)
    assert all(int(name.rsplit("|", 1)[1]) < len(LATENCY_BUCKETS_MS) for name in echo_buckets)
    assert int(stats["latency_sum_ms|echo"]) >= 0
    assert {name: int(count) for name, count in stats.items() if "|" in name and not
            name.startswith(("latency|", "latency_sum_ms|"))} == {
        "outcome|completed|echo": 3,
        "outcome|failed|boom": 1,
        "outcome|retrying|flaky": 1,
        "outcome|completed|flaky": 1,
        "latency_count|echo": 3,
        "latency_count|boom": 1,
        "latency_count|flaky": 1,
    }  # fmt: skip


def test_a_running_job_is_cancelled_through_its_control_channel_at_once(
    cluster: RedisClusterNodes, gateway: Gateway
):
    queue, (job_id, other_id) = spread(cluster)
    # A long lease puts the periodic check of running jobs 10 s apart: a
    # cancel seen sooner came through the job's control channel.
    with thread_worker(cluster.url, sample_app.worker, queue=queue, lease_ms=30_000) as runtime:
        gateway.submit("wait_cancel", {"limit_s": 20}, queue=queue, job_id=job_id)
        gateway.submit("wait_cancel", {"limit_s": 20}, queue=queue, job_id=other_id)
        gateway.wait_event(job_id, "progress")
        gateway.wait_event(other_id, "progress")
        for cancelled in (job_id, other_id):
            asked = time.monotonic()
            assert gateway.cancel(cancelled).status == "requested"
            events = gateway.wait_terminal(cancelled, timeout=5)
            assert time.monotonic() - asked < 2.0
            assert events[-1]["event"] == "cancelled"
            assert events[-1]["data"] == {"reason": "requested", "attempt": 1}
        deadline = time.monotonic() + 3
        while runtime.control.watching() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runtime.control.watching() == 0
    stats = gateway.redis.hgetall(keys.stats_key(queue))
    assert stats["outcome|cancelled|wait_cancel"] == "2"


def test_retries_exhausted_are_dead_lettered_on_the_queue_node(
    cluster: RedisClusterNodes, gateway: Gateway
):
    queue, (job_id, _) = spread(cluster)
    with thread_worker(cluster.url, sample_app.worker, queue=queue):
        gateway.submit(
            "flaky", {"succeed_on": 9, "delay_s": 0.05}, queue=queue, job_id=job_id, max_attempts=2
        )
        events = gateway.wait_terminal(job_id)
        assert events[-1]["event"] == "failed"
        assert events[-1]["data"]["error"]["code"] == "max_attempts_exceeded"
        deadline = time.monotonic() + 5
        while not gateway.dead_letters(queue) and time.monotonic() < deadline:
            time.sleep(0.02)
        [dead] = gateway.dead_letters(queue)
        assert dead["job_id"] == job_id
        assert dead["reason"] == "max_attempts_exceeded"
        assert gateway.pending(queue) == 0
    stats = gateway.redis.hgetall(keys.stats_key(queue))
    assert stats["outcome|retrying|flaky"] == "1"
    assert stats["outcome|failed|flaky"] == "1"


def _spawn(cluster: RedisClusterNodes, queue: str, name: str, *args: str) -> WorkerProcess:
    return WorkerProcess(
        "sample_app:worker", cluster.url, "--queue", queue, "--consumer", name, *args,
        cwd=TESTS_DIR,
    )  # fmt: skip


def test_leases_are_renewed_and_a_killed_workers_job_is_reclaimed_by_another(
    cluster: RedisClusterNodes, gateway: Gateway
):
    queue, (long_id, job_id) = spread(cluster)
    processes: list[WorkerProcess] = []

    def spawn(name: str, *args: str) -> WorkerProcess:
        process = _spawn(cluster, queue, name, "--lease-ms", "1000", *args)
        processes.append(process)
        process.wait_started()
        return process

    try:
        spawn("holder", "--concurrency", "1")
        # Four leases long, while other workers look for idle entries every
        # 100 ms: it keeps its one attempt only if its lease is renewed.
        gateway.submit("slow_steps", {"n": 8, "pause_s": 0.5}, queue=queue, job_id=long_id)
        gateway.wait_event(long_id, "started")
        victim = spawn("victim", "--concurrency", "2")
        gateway.submit("slow_steps", {"n": 8, "pause_s": 0.1}, queue=queue, job_id=job_id)
        events = gateway.wait_event(job_id, "progress")
        assert next(e for e in events if e["event"] == "started")["data"]["worker"] == "victim"
        victim.kill9()
        spawn("rescuer")

        events = gateway.wait_terminal(job_id, timeout=15)
        assert_contiguous(events)
        started = [e["data"] for e in events if e["event"] == "started"]
        assert [(s["attempt"], s["worker"]) for s in started] == [(1, "victim"), (2, "rescuer")]
        assert events[-1]["event"] == "completed"
        long_events = gateway.wait_terminal(long_id, timeout=15)
        assert [e["data"]["worker"] for e in long_events if e["event"] == "started"] == ["holder"]
        assert long_events[-1]["event"] == "completed"
        deadline = time.monotonic() + 5
        while gateway.pending(queue) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gateway.pending(queue) == 0
    finally:
        for process in processes:
            process.close()


@pytest.fixture
def failover_cluster(tmp_path: Path) -> Iterator[RedisClusterNodes]:
    nodes = RedisClusterNodes(tmp_path / "failover", replicas=1, node_timeout_ms=1500)
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.mark.parametrize("victim", ["job", "queue"])
def test_a_master_killed_while_a_job_runs_leaves_no_job_running(
    failover_cluster: RedisClusterNodes, victim: str
):
    """The job's master (or its queue's) dies mid-job; its replica takes over.

    Whatever the failover lost, the job ends ``completed`` (in its attempt,
    or reclaimed and run again), its entry is acknowledged, and the control
    channel of a job still running is subscribed again on the new master.
    """
    cluster = failover_cluster
    queue, (job_id, _) = spread(cluster)
    victim_key = keys.job_key(job_id) if victim == "job" else keys.queue_stream(queue, "normal")
    victim_port = cluster.master_port_of(victim_key)
    waiting_id = job_on(cluster, cluster.master_port_of(keys.job_key(job_id)))
    gateway = Gateway(cluster)
    try:
        with thread_worker(cluster.url, sample_app.worker, queue=queue, lease_ms=2000) as runtime:
            gateway.submit("wait_cancel", {"limit_s": 60}, queue=queue, job_id=waiting_id)
            gateway.submit("slow_steps", {"n": 10, "pause_s": 0.2}, queue=queue, job_id=job_id)
            gateway.wait_event(waiting_id, "progress")
            gateway.wait_event(job_id, "progress")
            # A job whose creation the failover lost is gone for good (the
            # replica is asynchronous): what the test wrote so far is kept,
            # what the worker writes from now on may be lost.
            cluster.wait_replicated(victim_port)
            cluster.kill(victim_port)
            cluster.wait_promoted(victim_port)
            gateway.redis.close()
            gateway = Gateway(cluster)
            events = gateway.wait_terminal(job_id, timeout=30)
            assert events[-1]["event"] == "completed"
            assert gateway.record(job_id)["status"] == "completed"
            assert sum(event["event"] in TERMINAL for event in events) == 1

            deadline = time.monotonic() + 10
            while runtime.control.watching() != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert runtime.control.watching() == 1
            assert gateway.cancel(waiting_id).status == "requested"
            assert gateway.wait_terminal(waiting_id, timeout=10)[-1]["event"] == "cancelled"

            deadline = time.monotonic() + 15
            while gateway.pending(queue) + gateway.backlog(queue) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert gateway.pending(queue) == 0
            assert gateway.backlog(queue) == 0
    finally:
        gateway.redis.close()


def test_one_seed_is_enough_for_jobs_on_every_master(cluster: RedisClusterNodes, gateway: Gateway):
    queue = queue_on(cluster, cluster.master_ports()[1])
    one_seed = cluster.url.split(",")[2]
    job_ids = [job_on(cluster, port) for port in cluster.master_ports()]
    job_ids += [str(uuid.uuid4()) for _ in range(9)]
    with thread_worker(one_seed, sample_app.worker, queue=queue, concurrency=2):
        for job_id in job_ids:
            gateway.submit("echo", {"id": job_id}, queue=queue, job_id=job_id)
        for job_id in job_ids:
            assert gateway.wait_terminal(job_id)[-1]["data"]["result"] == {"id": job_id}
    assert {cluster.master_port_of(keys.job_key(job_id)) for job_id in job_ids} == set(
        cluster.master_ports()
    )
