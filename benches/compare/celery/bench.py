"""Celery side of benches/compare: no-op tasks, Redis broker and result backend.

A task's latency runs from just before ``apply_async()`` to its result
arriving: ``AsyncResult.get()`` returning (sequential), or the result's
``then()`` callback firing (in flight). Either way the redis result backend
subscribes to the task's channel when the task is sent and the worker
publishes the result there: pushed, not polled. Starts its own worker and
prints one JSON object per scenario on stdout.
"""

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import celery
import redis
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult
from tasks import app, noop

HERE = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-port", type=int, default=6379, help="when REDIS_URL is unset")
    parser.add_argument("--jobs", type=int, default=1000, help="measured sequential tasks")
    parser.add_argument("--warmup", type=int, default=100, help="sequential tasks not measured")
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--in-flight-warmup", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=15, help="seconds of measured load")
    # Celery's default pool, two processes per core: see README.md.
    parser.add_argument("--pool", default="prefork", help="the worker's --pool")
    parser.add_argument("--concurrency", type=int, default=4, help="the worker's --concurrency")
    parser.add_argument("--job-timeout", type=float, default=30)
    return parser.parse_args()


# --- CPU time ------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (the prefork pool)."""
    with Path(f"/proc/{pid}/stat").open() as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        total += sum(process_cpu_seconds(int(child)) for child in children.read_text().split())
    return total


def machine_busy_seconds() -> float:
    """CPU time of everything on the machine that is not idle, from /proc/stat."""
    with Path("/proc/stat").open() as stat:
        ticks = [int(tick) for tick in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


class Usage:
    """CPU time of the client (this process), the worker, Redis and the machine."""

    def __init__(self, worker_pid: int, redis_client: redis.Redis) -> None:
        self.worker_pid = worker_pid
        self.redis = redis_client

    def snapshot(self) -> dict[str, float]:
        own = os.times()
        redis_cpu = self.redis.info("cpu")
        return {
            "client": own.user + own.system,
            "worker": process_cpu_seconds(self.worker_pid),
            "redis": redis_cpu["used_cpu_user"] + redis_cpu["used_cpu_sys"],
            "machine": machine_busy_seconds(),
        }


# --- measurement ---------------------------------------------------------


class Recorder:
    def __init__(self, usage: Usage) -> None:
        self.usage = usage
        self.cpu_before: dict[str, float] = {}
        self.latencies: list[float] = []
        self.errors = 0
        self.timeouts = 0
        self.error_samples: list[str] = []
        self.first_start = math.inf
        self.last_end = -math.inf

    def begin(self) -> None:
        """Called as the first measured task is sent: CPU time counts from here."""
        self.cpu_before = self.usage.snapshot()

    def add(self, outcome: str, start: float, end: float) -> None:
        self.first_start = min(self.first_start, start)
        if outcome != "ok":
            self.errors += 1
            self.timeouts += outcome == "timeout"
            if len(self.error_samples) < 5:
                self.error_samples.append(outcome)
            return
        self.latencies.append((end - start) * 1000)
        self.last_end = max(self.last_end, end)


def latency_stats(latencies: list[float]) -> dict[str, float | None]:
    """Exact nearest-rank percentiles (ms) of the recorded samples."""
    ordered = sorted(latencies)
    if not ordered:
        return dict.fromkeys(("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms"))

    def percentile(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3)

    return {
        "p50_ms": percentile(0.5),
        "p90_ms": percentile(0.9),
        "p99_ms": percentile(0.99),
        "p999_ms": percentile(0.999),
        "max_ms": round(ordered[-1], 3),
        "mean_ms": round(sum(ordered) / len(ordered), 3),
    }


def report(name: str, in_flight: int, recorder: Recorder, setup: dict[str, str]) -> dict[str, Any]:
    after = recorder.usage.snapshot()
    cpu = {key: after[key] - recorder.cpu_before[key] for key in after}
    own_cpu = cpu["client"] + cpu["worker"] + cpu["redis"]
    jobs = len(recorder.latencies)
    window = max(recorder.last_end - recorder.first_start, 0)
    return {
        "scenario": name,
        "system": f"celery {celery.__version__}",
        "jobs": jobs,
        "errors": recorder.errors,
        "timeouts": recorder.timeouts,
        "duration_s": round(window, 3),
        "jobs_per_s": round(jobs / window, 1) if window > 0 else None,
        **latency_stats(recorder.latencies),
        "in_flight": in_flight,
        **setup,
        "client_cpu_s": round(cpu["client"], 2),
        "worker_cpu_s": round(cpu["worker"], 2),
        "redis_cpu_s": round(cpu["redis"], 2),
        "other_cpu_s": round(max(cpu["machine"] - own_cpu, 0), 2),
        "cpu_ms_per_job": round(own_cpu * 1000 / jobs, 3) if jobs else None,
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "error_samples": recorder.error_samples,
    }


def outcome_of(result: AsyncResult) -> str:
    return "ok" if result.successful() else f"{result.state}: {result.result!r}"


def sequential(recorder: Recorder, args: argparse.Namespace) -> None:
    for index in range(args.warmup + args.jobs):
        if index == args.warmup:
            recorder.begin()
        start = time.perf_counter()
        try:
            result = noop.apply_async()
            result.get(timeout=args.job_timeout)
            outcome = "ok"
        except CeleryTimeout:
            outcome = "timeout"
        except Exception as error:  # noqa: BLE001 - a failed task or lost connection: count it, go on
            outcome = f"{type(error).__name__}: {error}"
        if index >= args.warmup:
            recorder.add(outcome, start, time.perf_counter())


def in_flight(recorder: Recorder, args: argparse.Namespace) -> None:
    """Keeps ``--in-flight`` tasks in flight from one thread.

    Each result's ``then()`` callback sends the next task; the thread only
    drains the result backend's pub/sub connection. Pacing as in
    jobgate-loadgen: the first ``--in-flight-warmup`` tasks are not measured,
    and none is sent once ``--duration`` seconds have passed since the first
    measured one.
    """
    pending: dict[str, tuple[int, float]] = {}  # task id → (index, start), oldest first
    next_index = 0
    deadline = math.inf

    def send() -> None:
        nonlocal next_index, deadline
        index = next_index
        next_index += 1
        if index == args.in_flight_warmup:
            recorder.begin()
            deadline = time.perf_counter() + args.duration
        if time.perf_counter() >= deadline:
            return
        start = time.perf_counter()
        result = noop.apply_async()
        pending[result.id] = (index, start)
        result.then(lambda done: finish(done.id, outcome_of(done)))

    def finish(task_id: str, outcome: str) -> None:
        sent = pending.pop(task_id, None)
        if sent is None:  # already counted as a timeout
            return
        index, start = sent
        if index >= args.in_flight_warmup:
            recorder.add(outcome, start, time.perf_counter())
        send()

    for _ in range(args.in_flight):
        send()
    consumer = app.backend.result_consumer
    while pending:
        consumer.drain_events(timeout=0.1)
        oldest = next(iter(pending), None)
        if oldest is not None and time.perf_counter() - pending[oldest][1] > args.job_timeout:
            finish(oldest, "timeout")


def start_worker(args: argparse.Namespace, redis_url: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "celery", "-A", "tasks", "worker",
        f"--pool={args.pool}", f"--concurrency={args.concurrency}", "--loglevel=WARNING",
    ]  # fmt: skip
    # The worker's banner and logs go to stderr: stdout carries only the JSON lines.
    return subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        command, cwd=HERE, env={**os.environ, "REDIS_URL": redis_url}, stdout=sys.stderr
    )


def main() -> None:
    args = parse_args()
    # On SIGTERM (run.sh's clean-up), unwind through `finally` to stop the worker.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    redis_url = os.environ.get("REDIS_URL") or f"redis://127.0.0.1:{args.redis_port}"
    # Nothing has connected yet, so the app still takes a new address.
    app.conf.update(broker_url=redis_url, result_backend=redis_url)
    worker = start_worker(args, redis_url)
    try:
        noop.apply_async().get(timeout=60)  # also waits for the worker to start
        redis_client = redis.Redis.from_url(redis_url)
        usage = Usage(worker.pid, redis_client)
        setup = {
            "worker": f"1 celery worker, --pool={args.pool} --concurrency={args.concurrency}",
            "client": "1 Python process: apply_async + redis result backend (pub/sub)",
            "redis": f"{redis_client.info('server')['redis_version']} on {redis_url}",
        }
        scenarios: list[tuple[str, int, Callable[[Recorder, argparse.Namespace], None]]] = [
            ("celery-sequential", 1, sequential),
            (f"celery-{args.in_flight}-in-flight", args.in_flight, in_flight),
        ]
        for name, count, measure in scenarios:
            recorder = Recorder(usage)
            measure(recorder, args)
            print(json.dumps(report(name, count, recorder, setup)), flush=True)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()


if __name__ == "__main__":
    main()
