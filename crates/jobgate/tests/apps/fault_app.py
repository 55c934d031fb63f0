"""Job kinds for the gateway's fault-injection tests, run as
``jobgate-worker fault_app:worker`` with this folder on PYTHONPATH."""

from __future__ import annotations

import os
import time
from typing import Any

from jobgate_worker import JobContext, Worker

worker = Worker(queue="default")


@worker.job("echo")
def echo(ctx: JobContext, params: Any) -> Any:
    return params


@worker.job("sleep")
def sleep(ctx: JobContext, params: Any) -> Any:
    """Sleeps ``s`` seconds in steps of 0.05 s, reporting progress and
    stopping when cancelled."""
    total = max(1, int(float(params.get("s", 1)) / 0.05))
    for step in range(1, total + 1):
        time.sleep(0.05)
        ctx.raise_if_cancelled()
        ctx.progress(step, total)
    return {"slept_s": params.get("s", 1), "attempt": ctx.attempt}


@worker.job("crash")
def crash(ctx: JobContext, params: Any) -> Any:
    """Kills its own worker process, every attempt."""
    time.sleep(float(params.get("after_s", 0.1)))
    os._exit(3)


@worker.job("crash_once")
def crash_once(ctx: JobContext, params: Any) -> Any:
    """Kills its worker on the first attempt; completes on the next."""
    if ctx.attempt == 1:
        time.sleep(float(params.get("after_s", 0.2)))
        os._exit(3)
    return {"attempt": ctx.attempt}
