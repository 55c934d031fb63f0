"""Job handlers the tests run, in-thread or as ``jobgate-worker sample_app:worker``."""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from jobgate_worker import JobContext, RetryableError, Worker

worker = Worker(queue="default", retry_base_delay=0.05)

#: Lets in-thread tests hold a handler until they release it.
gates: dict[str, threading.Event] = {}
#: Dask futures a handler created, by job id (for cancellation tests).
dask_futures: dict[str, list[Any]] = {}
#: The context of each ``gated`` job, by job id (for shutdown tests).
contexts: dict[str, JobContext] = {}


@worker.job("echo")
def echo(ctx: JobContext, params: Any) -> Any:
    return params


@worker.job("steps")
def steps(ctx: JobContext, params: Any) -> Any:
    """Reports ``n`` progress steps, ``pause_s`` apart (longer than the interval)."""
    n = int(params.get("n", 3))
    for done in range(1, n + 1):
        time.sleep(float(params.get("pause_s", 0.15)))
        ctx.progress(done, n, f"step {done}")
    return {"steps": n, "attempt": ctx.attempt, "traceparent": ctx.traceparent}


@worker.job("boom")
def boom(ctx: JobContext, params: Any) -> Any:
    raise ValueError(params.get("message", "bad input"))


@worker.job("not_json")
def not_json(ctx: JobContext, params: Any) -> Any:
    return {"values": {1, 2, 3}}


@worker.job("spam_progress")
def spam_progress(ctx: JobContext, params: Any) -> Any:
    """Calls progress as fast as it can, ``calls`` times, over at least ``min_s``."""
    calls = int(params.get("calls", 10_000))
    min_s = float(params.get("min_s", 0))
    started = time.monotonic()
    interval = min_s / calls if min_s else 0.0
    for done in range(1, calls + 1):
        ctx.progress(done, calls)
        if interval:
            target = started + done * interval
            while time.monotonic() < target:
                pass
    return {"calls": calls, "elapsed_s": time.monotonic() - started}


@worker.job("wait_cancel")
def wait_cancel(ctx: JobContext, params: Any) -> Any:
    """Runs until cancelled (checking cooperatively), at most ``limit_s``."""
    ctx.progress(0, 1, "waiting")
    deadline = time.monotonic() + float(params.get("limit_s", 30))
    while time.monotonic() < deadline:
        ctx.raise_if_cancelled()
        time.sleep(0.01)
    return "not cancelled"


@worker.job("sleep")
def sleep(ctx: JobContext, params: Any) -> Any:
    """Sleeps ``s`` seconds ignoring cancellation."""
    time.sleep(float(params.get("s", 1)))
    return {"slept": params.get("s", 1), "attempt": ctx.attempt}


@worker.job("gated")
def gated(ctx: JobContext, params: Any) -> Any:
    """Waits (ignoring cancellation) until the test opens its gate, at most ``limit_s``."""
    contexts[ctx.job_id] = ctx
    gate = gates.setdefault(ctx.job_id, threading.Event())
    gate.wait(float(params.get("limit_s", 10)))
    return {"attempt": ctx.attempt}


@worker.job("flaky")
def flaky(ctx: JobContext, params: Any) -> Any:
    """Fails with a retryable error until attempt ``succeed_on``."""
    if ctx.attempt < int(params.get("succeed_on", 2)):
        raise RetryableError("upstream busy", code="upstream_busy", delay_s=params.get("delay_s"))
    return {"attempt": ctx.attempt}


@worker.job("crash")
def crash(ctx: JobContext, params: Any) -> Any:
    """Kills the worker process, like a segfault in native code would."""
    ctx.progress(0, 1, "about to crash")
    time.sleep(0.05)
    os._exit(17)


@worker.job("slow_steps")
def slow_steps(ctx: JobContext, params: Any) -> Any:
    """``n`` steps of ``pause_s``; logs a line per step (for crash tests)."""
    n = int(params.get("n", 10))
    for done in range(1, n + 1):
        ctx.raise_if_cancelled()
        time.sleep(float(params.get("pause_s", 0.2)))
        ctx.progress(done, n)
        ctx.logger.info("step done", extra={"step": done})
    return {"attempt": ctx.attempt, "steps": n}


def _dask_sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@worker.job("dask_sleepers")
def dask_sleepers(ctx: JobContext, params: Any) -> Any:
    """Submits ``n`` Dask tasks sleeping ``s`` each and waits, cooperatively."""
    seconds = [float(params.get("s", 1.0))] * int(params.get("n", 8))
    futures = ctx.dask.map(_dask_sleep, seconds, pure=False)
    dask_futures[ctx.job_id] = futures
    for done, _ in enumerate(ctx.dask.as_completed(futures), 1):
        ctx.raise_if_cancelled()
        ctx.progress(done, len(futures))
    return "done"


def _where(seconds: float, marker_dir: str) -> dict[str, Any]:
    """A Dask task: leaves a file named after its process, sleeps, says where it ran."""
    from distributed import get_worker  # noqa: PLC0415 - only inside a Dask worker

    if marker_dir:
        Path(marker_dir, str(os.getpid())).touch()
    time.sleep(seconds)
    return {"pid": os.getpid(), "worker": get_worker().address}


@worker.job("dask_where")
def dask_where(ctx: JobContext, params: Any) -> Any:
    """Runs ``n`` Dask tasks of ``s`` seconds each; returns the process and worker of each.

    With ``marker_dir`` each task first creates a file there named after the
    pid of the process running it (so a test knows whom to kill).
    """
    n = int(params.get("n", 1))
    seconds = [float(params.get("s", 0.1))] * n
    markers = [str(params.get("marker_dir", ""))] * n
    futures = ctx.dask.map(_where, seconds, markers, pure=False)
    places = []
    for done, future in enumerate(ctx.dask.as_completed(futures), 1):
        places.append(future.result())
        ctx.progress(done, n)
    return {"attempt": ctx.attempt, "places": places}


#: Job ids in the order the ``record_order`` handler ran them.
run_order: list[str] = []


@worker.job("record_order")
def record_order(ctx: JobContext, params: Any) -> Any:
    run_order.append(ctx.job_id)
    return len(run_order)


def _logged_square(x: int) -> int:
    logging.getLogger("sample_app.task").info("task ran", extra={"x": x})
    return x * x


@worker.job("dask_squares")
def dask_squares(ctx: JobContext, params: Any) -> Any:
    """Squares ``n`` numbers in Dask tasks that log a line each."""
    futures = ctx.dask.map(_logged_square, list(range(int(params.get("n", 3)))))
    total = 0
    for done, future in enumerate(ctx.dask.as_completed(futures), 1):
        total += future.result()
        ctx.progress(done, len(futures))
    ctx.logger.info("squares summed", extra={"total": total})
    return {"total": total, "traceparent": ctx.traceparent}


def _catastrophic_match(n: int) -> float:
    """Seconds one exponential-backtracking match over ``n`` characters holds the GIL."""
    started = time.monotonic()
    re.fullmatch(r"(a+)+$", "a" * n + "b")
    return time.monotonic() - started


@worker.job("hog_gil")
def hog_gil(ctx: JobContext, params: Any) -> Any:
    """Holds the GIL for about ``seconds`` in one C call (a regex that backtracks).

    The match time doubles with every character, so it is calibrated here
    first (and lengthened if a call fell short). A probe thread ticks every
    5 ms meanwhile; its longest gap shows how long no other thread of this
    process could run.
    """
    target = float(params["seconds"])
    n = 14
    while (took := _catastrophic_match(n)) < 0.02:
        n += 1
    n += max(round(math.log2(target / took)), 0)
    ticks: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.005)

    thread = threading.Thread(target=probe, name="gil-probe", daemon=True)
    thread.start()
    time.sleep(0.05)
    # The calibration may have run on a busier machine: lengthen until one
    # call really lasted ``seconds``.
    while (match_s := _catastrophic_match(n)) < target:
        n += 1
    time.sleep(0.05)
    stop.set()
    thread.join()
    gap = max(later - earlier for earlier, later in itertools.pairwise(ticks))
    return {"n": n, "match_s": match_s, "probe_max_gap_s": gap, "attempt": ctx.attempt}
