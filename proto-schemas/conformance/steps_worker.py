"""The worker of the conformance replay: kind `conformance_steps`, queue
`conformance`. Params `{"steps": N, "pace_ms": P, "pad": B}`: N progress
events `{done: i, total: N}` (with a message of B `x`s when `pad` is set),
one every P ms, then `{"steps": N}` as the result.

The SDK coalesces progress (the latest value wins while a write is
pending, even with `progress_interval=0`), so under load two reports can
become one event. The replay needs exactly the events the fake gateway
plays (player.steps_job_events): after each report the handler waits until
the event is in the job's record (its `seq` moved) before the next one.

    cd proto-schemas/conformance && ../../.venv/bin/jobgate-worker steps_worker:worker
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from jobgate_worker import JobContext, Worker

worker = Worker(queue="conformance", progress_interval=0)
#: How long a progress event may take to reach Redis.
WRITE_TIMEOUT_S = 10.0

_redis: redis.Redis | None = None


def _store() -> redis.Redis:
    global _redis  # noqa: PLW0603 - one connection per worker process
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ["JOBGATE_REDIS_URL"])
    return _redis


def _seq(job_id: str) -> int:
    value = _store().hget(f"jobgate:job:{{{job_id}}}", "seq")
    return int(value or 0)


@worker.job("conformance_steps")
def steps(ctx: JobContext, params: dict[str, Any]) -> dict[str, int]:
    total = int(params.get("steps", 3))
    pace_s = float(params.get("pace_ms", 100)) / 1000
    pad = int(params.get("pad", 0))
    for done in range(1, total + 1):
        time.sleep(pace_s)
        before = _seq(ctx.job_id)
        ctx.progress(done, total, "x" * pad if pad else None)
        deadline = time.monotonic() + WRITE_TIMEOUT_S
        while _seq(ctx.job_id) == before:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"progress {done} of {ctx.job_id} was not written within {WRITE_TIMEOUT_S} s"
                )
            time.sleep(0.002)
    return {"steps": total}
