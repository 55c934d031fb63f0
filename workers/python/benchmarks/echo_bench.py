"""Echo jobs through one worker process: throughput and sequential latency.

Starts its own redis-server and ``jobgate-worker examples.pricing:worker``,
creates jobs the way the gateway does (``create`` + ``XADD``). Throughput
waits until the band is empty (the worker deletes each entry once its
outcome is written); latency waits for each job's ``completed`` event on its
own live channel, subscribed (``SSUBSCRIBE``) before the job is created, as
the gateway's WebSocket submit does. Run from the repository root:

    .venv/bin/python workers/python/benchmarks/echo_bench.py [--jobs 5000] [--latency 500]

It is a benchmark, not a test: numbers depend on the machine (and on the
benchmark itself sharing the CPU with Redis and the worker).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from jobgate_worker import keys
from jobgate_worker.script import JobScript

REPO_ROOT = Path(__file__).resolve().parents[3]
STREAM = keys.queue_stream("default", "normal")
OWNER = "bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[redis.Redis]:
    port = free_port()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    with tempfile.TemporaryDirectory() as directory:
        command = [binary, "--port", str(port), "--save", "", "--appendonly", "no"]
        server = subprocess.Popen([*command, "--dir", directory], stdout=subprocess.DEVNULL)  # noqa: S603
        client = redis.Redis(port=port, decode_responses=True)
        try:
            for _ in range(100):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            yield client
        finally:
            client.close()
            server.kill()
            server.wait()


@contextmanager
def worker_process(port: int, concurrency: int) -> Iterator[None]:
    env = {
        **os.environ,
        "JOBGATE_REDIS_URL": f"redis://127.0.0.1:{port}",
        "JOBGATE_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
    }
    executable = str(Path(sys.executable).parent / "jobgate-worker")
    command = [executable, "examples.pricing:worker", "--concurrency", str(concurrency)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env)  # noqa: S603
    try:
        yield
    finally:
        process.terminate()
        process.wait(15)


def submit(pipe: Any, script: JobScript, job_id: str) -> None:
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    args = ["create", job_id, OWNER, "echo", "default", '{"x":1}', 5, 3, 0, 600, 100]
    args += [traceparent, "", trace_id, ""]
    script.queue(pipe, job_id, *args)
    entry = {"job_id": job_id, "kind": "echo", "traceparent": traceparent, "tracestate": ""}
    entry["enqueued_at"] = str(int(time.time() * 1000))
    pipe.xadd(STREAM, entry)


def next_event(pubsub: Any, timeout: float) -> dict[str, Any]:
    """The next published event (get_message also returns None for ignored messages)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=deadline - time.monotonic())
        if message is not None and message["type"] == "smessage":
            event: dict[str, Any] = json.loads(message["data"])
            return event
    raise SystemExit("no event within the timeout: stalled")


def throughput(client: redis.Redis, script: JobScript, jobs: int) -> None:
    started = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for _ in range(jobs):
        submit(pipe, script, str(uuid.uuid4()))
    pipe.execute()
    enqueued = time.perf_counter() - started
    deadline = time.monotonic() + 10 + jobs / 100
    while client.xlen(STREAM):
        if time.monotonic() > deadline:
            raise SystemExit("the jobs did not finish in time: stalled")
        time.sleep(0.002)
    elapsed = time.perf_counter() - started
    rate = jobs / elapsed
    print(f"throughput: {jobs} echo jobs in {elapsed:.2f} s = {rate:.0f} jobs/s")
    print(f"  (enqueueing them took {enqueued:.2f} s of that)")


def latency(client: redis.Redis, script: JobScript, pubsub: Any, jobs: int) -> None:
    samples = []
    for _ in range(jobs):
        job_id = str(uuid.uuid4())
        channel = keys.live_job_channel(job_id)
        started = time.perf_counter()
        pubsub.ssubscribe(channel)
        while (message := pubsub.get_message(timeout=5)) is None or message["type"] != "ssubscribe":
            pass
        pipe = client.pipeline(transaction=False)
        submit(pipe, script, job_id)
        pipe.execute()
        while True:
            event = next_event(pubsub, 5)
            if event["job_id"] == job_id and event["event"] == "completed":
                break
        pubsub.sunsubscribe(channel)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    median = statistics.median(samples)
    p90, p99 = samples[int(len(samples) * 0.9)], samples[int(len(samples) * 0.99)]
    print(f"latency, {jobs} sequential jobs, submit to completed event:")
    print(f"  median {median:.2f} ms, p90 {p90:.2f} ms, p99 {p99:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000, help="jobs for the throughput run")
    parser.add_argument("--latency", type=int, default=500, help="jobs for the latency run")
    parser.add_argument("--concurrency", type=int, default=4, help="worker handler threads")
    args = parser.parse_args()

    with redis_server() as client:
        script = JobScript.load(client)
        script.ensure_loaded()
        client.xgroup_create(STREAM, keys.CONSUMER_GROUP, id="0", mkstream=True)
        port = int(client.connection_pool.connection_kwargs["port"])
        with worker_process(port, args.concurrency):
            while not client.hexists(keys.KINDS_KEY, "echo"):
                time.sleep(0.05)
            throughput(client, script, args.jobs)
            pubsub = client.pubsub()
            latency(client, script, pubsub, args.latency)


if __name__ == "__main__":
    main()
