"""Test helpers: a real redis-server per test, a real Redis Cluster, a gateway
stand-in, worker runners.

``RedisServer`` starts ``redis-server`` on a free port in a temp dir (no
persistence) and kills it at teardown; tests can kill or restart it for
fault injection. ``RedisClusterNodes`` starts the processes of a Redis
Cluster (``cluster-enabled yes``, ``redis-cli --cluster create``), and can
kill a master and wait for its replica to take over. ``Gateway`` creates
jobs the way the gateway does (the ``create`` op, then ``XADD`` of the queue
entry) and reads the history, through a single Redis or a cluster client.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from gateway_script import GatewayScript, band_for_priority
from jobgate_worker import Settings, Worker, keys
from jobgate_worker.runtime import EXIT_OK, Runtime
from jobgate_worker.tracing import Telemetry

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parents[2]
VENV_BIN = Path(sys.executable).parent
TERMINAL = {"completed", "failed", "cancelled"}

#: Every event, queue entry and log line the tests saw; test_schemas validates them.
OBSERVED: dict[str, list[Any]] = {"events": [], "entries": [], "log_lines": [], "dead": []}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process owned by a test."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, port: int | None = None) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        for _ in range(5):
            self.port = port or free_port()
            self.process = subprocess.Popen(
                [
                    binary,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(self.directory),
                    "--daemonize", "no",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            if self._wait_ready():
                return
            self.kill()
            if port is not None:
                break
        raise RuntimeError("redis-server did not start")

    def _wait_ready(self) -> bool:
        assert self.process is not None
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 5
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                with contextlib.suppress(redis.RedisError):
                    # Make sure the server answering is ours, not a neighbour's.
                    if client.info("server")["process_id"] == self.process.pid:
                        return True
                time.sleep(0.02)
            return False
        finally:
            client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def restart(self) -> None:
        """Kill and start again on the same port, with no data (a crash)."""
        self.kill()
        self.start(self.port)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, protocol=2)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10_000 > 65_535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisClusterNodes:
    """The redis-server processes of one Redis Cluster, owned by a test (or module).

    ``masters`` masters, each with ``replicas`` replicas; ``node_timeout_ms``
    is how long a master may be silent before its replica takes over.
    """

    def __init__(
        self, directory: Path, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 5000
    ) -> None:
        self.directory = directory
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """The worker's setting: every node's URL, comma-separated (the seeds)."""
        return ",".join(f"redis://127.0.0.1:{port}" for port in sorted(self.processes))

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        for _ in range(self.masters * (1 + self.replicas)):
            port = free_cluster_port()
            node_dir = self.directory / f"node-{port}"
            node_dir.mkdir(parents=True)
            self.processes[port] = subprocess.Popen(
                [
                    binary,
                    "--port", str(port),
                    "--bind", "127.0.0.1",
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(node_dir / "nodes.conf"),
                    "--cluster-node-timeout", str(self.node_timeout_ms),
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(node_dir),
                    "--daemonize", "no",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        for port in self.processes:
            self._wait_answers(port)
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        addresses = [f"127.0.0.1:{port}" for port in self.processes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas),
             "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )  # fmt: skip
        self.wait_ok()

    def _wait_answers(self, port: int) -> None:
        client = redis.Redis(port=port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        return
                time.sleep(0.02)
        finally:
            client.close()
        raise RuntimeError(f"cluster node {port} did not start")

    def live_ports(self) -> list[int]:
        return sorted(port for port, process in self.processes.items() if process.poll() is None)

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every node says ``cluster_state:ok`` and every master has its
        replicas attached and in sync (a replica still syncing would take
        over with no data)."""
        deadline = time.monotonic() + timeout
        while True:
            if all(self._node_ready(port, self.replicas) for port in self.live_ports()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not become ready")
            time.sleep(0.05)

    @staticmethod
    def _node_ready(port: int, replicas: int | None = None) -> bool:
        """``cluster_state:ok``; and, given ``replicas``, a master has that many
        online and a replica's link is up."""
        client = redis.Redis(port=port, decode_responses=True, socket_timeout=1)
        try:
            if client.cluster("INFO").get("cluster_state") != "ok":
                return False
            if replicas is None:
                return True
            replication = client.info("replication")
            if replication["role"] != "master":
                return replication["master_link_status"] == "up"
            online = [
                replication.get(f"slave{index}", {}).get("state") == "online"
                for index in range(replicas)
            ]
            return replication["connected_slaves"] == replicas and all(online)
        except redis.RedisError:
            return False
        finally:
            client.close()

    def wait_replicated(self, port: int, timeout_ms: int = 5000) -> None:
        """Until the master on ``port``'s writes so far reached its replica
        (``WAIT``): what the test wrote before a kill is not lost with it."""
        client = redis.Redis(port=port)
        try:
            assert client.execute_command("WAIT", 1, timeout_ms) >= 1, "replica behind"
        finally:
            client.close()

    def client(self) -> RedisCluster:
        return RedisCluster(
            startup_nodes=[ClusterNode("127.0.0.1", port) for port in self.live_ports()],
            decode_responses=True,
            protocol=2,
        )

    def master_port_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot now."""
        port = self.live_ports()[0]
        client = redis.Redis(port=port, decode_responses=True)
        try:
            slot = int(client.cluster("KEYSLOT", key))
            for start, end, master, *_ in client.cluster("SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(master[1])
        finally:
            client.close()
        raise AssertionError(f"no master serves {key}")

    def master_ports(self) -> list[int]:
        ports = set()
        client = redis.Redis(port=self.live_ports()[0], decode_responses=True)
        try:
            for _, _, master, *_ in client.cluster("SLOTS"):
                ports.add(int(master[1]))
        finally:
            client.close()
        return sorted(ports)

    def kill(self, port: int) -> None:
        process = self.processes[port]
        if process.poll() is None:
            process.kill()
            process.wait(5)

    def wait_promoted(self, killed_port: int, timeout: float = 30) -> None:
        """Until a replica serves the killed master's slots and the cluster is ok."""
        deadline = time.monotonic() + timeout
        while killed_port in self.master_ports() or not all(
            self._node_ready(port) for port in self.live_ports()
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no replica took over from {killed_port}")
            time.sleep(0.05)

    def stop(self) -> None:
        for port in list(self.processes):
            self.kill(port)


def key_on(cluster: RedisClusterNodes, port: int, make_key: Callable[[str], str]) -> str:
    """A fresh name (a UUID) whose key (``make_key(name)``) the master on ``port`` serves."""
    for _ in range(1000):
        name = str(uuid.uuid4())
        if cluster.master_port_of(make_key(name)) == port:
            return name
    raise AssertionError(f"no name lands on {port}")


class Gateway:
    """Does what the gateway does to Redis, and reads what workers wrote."""

    def __init__(self, server: RedisServer | RedisClusterNodes) -> None:
        self.server = server
        self.redis: Any = server.client()
        self.script = GatewayScript.load(self.redis)

    def submit(
        self,
        kind: str,
        params: Any = None,
        *,
        queue: str = "default",
        priority: int = 5,
        max_attempts: int = 3,
        timeout_s: int = 0,
        job_id: str | None = None,
        traceparent: str | None = None,
        trace_id: str | None = None,
        tracestate: str = "",
    ) -> str:
        """Create and enqueue a job; ``traceparent`` names the gateway's producer span."""
        job_id = job_id or str(uuid.uuid4())
        if traceparent is None:
            trace_id = trace_id or uuid.uuid4().hex
            traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
        elif trace_id is None:
            trace_id = traceparent.split("-")[1] if traceparent else uuid.uuid4().hex
        reply = self.script.create(
            job_id,
            owner="alice",
            kind=kind,
            queue=queue,
            params_json=json.dumps({} if params is None else params),
            priority=priority,
            max_attempts=max_attempts,
            timeout_s=timeout_s,
            traceparent=traceparent,
            tracestate=tracestate,
            trace_id=trace_id,
        )
        assert reply.ok, reply
        stream = keys.queue_stream(queue, band_for_priority(priority))
        with contextlib.suppress(redis.ResponseError):
            self.redis.xgroup_create(stream, keys.CONSUMER_GROUP, id="0", mkstream=True)
        entry = {
            "job_id": job_id,
            "kind": kind,
            "traceparent": traceparent,
            "tracestate": tracestate,
            "enqueued_at": str(int(time.time() * 1000)),
        }
        OBSERVED["entries"].append(dict(entry))
        self.redis.xadd(stream, entry)  # type: ignore[arg-type]
        return job_id

    def cancel(self, job_id: str) -> Any:
        return self.script.cancel(job_id)

    def events(self, job_id: str) -> list[dict[str, Any]]:
        events = [
            json.loads(fields["e"]) for _, fields in self.redis.xrange(keys.events_key(job_id))
        ]
        OBSERVED["events"].extend(events)
        return events

    def record(self, job_id: str) -> dict[str, str]:
        return self.redis.hgetall(keys.job_key(job_id))  # type: ignore[return-value]

    def wait_for(
        self, job_id: str, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 10
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            events = [json.loads(f["e"]) for _, f in self.redis.xrange(keys.events_key(job_id))]
            if predicate(events):
                return self.events(job_id)
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting; events so far: {events}")
            time.sleep(0.01)

    def wait_terminal(self, job_id: str, timeout: float = 10) -> list[dict[str, Any]]:
        return self.wait_for(job_id, lambda evs: any(e["event"] in TERMINAL for e in evs), timeout)

    def wait_event(self, job_id: str, event: str, timeout: float = 10) -> list[dict[str, Any]]:
        return self.wait_for(job_id, lambda evs: any(e["event"] == event for e in evs), timeout)

    def backlog(self, queue: str = "default") -> int:
        """Entries still in the band streams (acknowledged ones are deleted)."""
        return sum(self.redis.xlen(stream) for stream in keys.queue_streams(queue))

    def pending(self, queue: str = "default") -> int:
        total = 0
        for stream in keys.queue_streams(queue):
            with contextlib.suppress(redis.ResponseError):
                total += self.redis.xpending(stream, keys.CONSUMER_GROUP)["pending"]
        return total

    def wait_settled(self, queue: str = "default", timeout: float = 5.0) -> None:
        """Wait until no entry is left in ``queue``'s streams, delivered or not.

        A worker whose lease may have lapsed acknowledges an entry in its own
        call after the terminal one: the job's last event can come first.
        """
        wait_until(
            lambda: self.backlog(queue) == 0 and self.pending(queue) == 0,
            timeout,
            f"queue {queue!r} to be settled",
        )

    def dead_letters(self, queue: str = "default") -> list[dict[str, str]]:
        entries = [fields for _, fields in self.redis.xrange(keys.dead_letter_stream(queue))]
        OBSERVED["dead"].extend(entries)
        return entries


@pytest.fixture
def gateway(redis_server: RedisServer) -> Iterator[Gateway]:
    gw = Gateway(redis_server)
    try:
        yield gw
    finally:
        gw.redis.close()


def assert_contiguous(events: list[dict[str, Any]]) -> None:
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), events


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str = "the condition"
) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class ThreadWorker:
    """A Runtime running in a background thread of the test process."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.thread = threading.Thread(target=self._run, name="test-runtime", daemon=True)
        #: What ``runtime.run()`` returned, once it has.
        self.status: int | None = None

    def _run(self) -> None:
        self.status = self.runtime.run()

    def __enter__(self) -> Runtime:
        self.thread.start()
        assert self.runtime.wait_ready(10), "runtime did not become ready"
        return self.runtime

    def __exit__(self, *exc: object) -> None:
        self.runtime.stop(grace_s=5)
        self.thread.join(15)
        assert not self.thread.is_alive(), "runtime did not stop"
        assert self.status == EXIT_OK, "a runtime stopped as asked exits with 0"


def thread_worker(
    redis_url: str, worker: Worker, telemetry: Telemetry | None = None, **overrides: Any
) -> ThreadWorker:
    defaults: dict[str, Any] = {
        "redis_url": redis_url,
        "consumer": f"test-{uuid.uuid4().hex[:6]}",
        "block_ms": 100,
        "concurrency": 4,
    }
    defaults.update(overrides)
    return ThreadWorker(Runtime(worker, Settings(**defaults).validated(), telemetry))


@pytest.fixture
def run_worker(redis_server: RedisServer) -> Callable[..., ThreadWorker]:
    def make(worker: Worker, telemetry: Telemetry | None = None, **overrides: Any) -> ThreadWorker:
        return thread_worker(redis_server.url, worker, telemetry, **overrides)

    return make


class WorkerProcess:
    """``jobgate-worker`` as a subprocess, its stderr collected."""

    def __init__(
        self,
        app: str,
        redis_url: str,
        *args: str,
        cwd: Path = TESTS_DIR,
        env: dict[str, str] | None = None,
    ) -> None:
        extra_env = env or {}
        env = dict(os.environ)
        env["JOBGATE_REDIS_URL"] = redis_url
        env.pop("DASK_SCHEDULER_ADDRESS", None)
        env.update(extra_env)
        self.log_path = Path(tempfile.gettempdir()) / f"jobgate-worker-{uuid.uuid4().hex[:8]}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [str(VENV_BIN / "jobgate-worker"), app, *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_started(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line.get("message") == "worker started" for line in self.log_lines()):
                return
            if not self.alive():
                raise AssertionError(f"worker exited early:\n{self.log_path.read_text()}")
            time.sleep(0.02)
        raise AssertionError("worker did not start")

    def log_lines(self) -> list[dict[str, Any]]:
        self._log.flush()
        lines = []
        for raw in self.log_path.read_text().splitlines():
            if raw.strip():
                lines.append(json.loads(raw))
        return lines

    def signal(self, signum: int) -> None:
        if self.alive():
            self.process.send_signal(signum)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        self.process.wait(10)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait(10)
        self._log.close()
        with contextlib.suppress(ValueError, json.JSONDecodeError):
            OBSERVED["log_lines"].extend(self.log_lines())
        self.log_path.unlink(missing_ok=True)


@pytest.fixture
def spawn_worker(redis_server: RedisServer) -> Iterator[Callable[..., WorkerProcess]]:
    processes: list[WorkerProcess] = []

    def spawn(
        *args: str,
        app: str = "sample_app:worker",
        cwd: Path = TESTS_DIR,
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        process = WorkerProcess(app, redis_server.url, *args, cwd=cwd, env=env)
        processes.append(process)
        return process

    yield spawn
    for process in processes:
        process.close()
