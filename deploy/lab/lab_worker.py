"""The lab's worker: the pricing example's worker plus one kind that takes time.

Run it with ``jobgate-worker lab_worker:worker`` (``deploy/lab`` and the
repository root on ``PYTHONPATH``). It serves every kind of
``examples.pricing`` (the same ``Worker`` object) and adds:

- ``lab_sleep`` — params ``{"duration_ms": int, "steps": int}``: ``steps``
  rounds of one tiny Dask task (waited for) and a sleep, a progress event
  after each; returns ``{"steps", "sum"}``. It costs almost no CPU, so a
  two-core machine can keep dozens of them running at once, and every round
  goes through the Dask scheduler, so losing the scheduler is felt by every
  running job.

Dask workers run ``lab_step`` by reference, so they need this module on
their ``PYTHONPATH`` too.
"""

from __future__ import annotations

import time
from typing import Any

from examples.pricing import worker

from jobgate_worker import JobContext, JobFailed

__all__ = ["lab_step", "worker"]

MAX_DURATION_MS = 60_000
MAX_STEPS = 100


def lab_step(step: int) -> int:
    """The Dask task of one round: trivial on purpose."""
    return step * step


@worker.job("lab_sleep")
def lab_sleep(ctx: JobContext, params: Any) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise JobFailed("params must be a JSON object", code="invalid_params")
    duration_ms = params.get("duration_ms", 1000)
    steps = params.get("steps", 4)
    if not isinstance(duration_ms, int) or not 0 <= duration_ms <= MAX_DURATION_MS:
        raise JobFailed(f"duration_ms must be 0..{MAX_DURATION_MS}", code="invalid_params")
    if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise JobFailed(f"steps must be 1..{MAX_STEPS}", code="invalid_params")
    round_s = duration_ms / 1000 / steps
    total = 0
    for step in range(1, steps + 1):
        started = time.monotonic()
        total += ctx.dask.submit(lab_step, step).result()
        ctx.raise_if_cancelled()
        time.sleep(max(round_s - (time.monotonic() - started), 0.0))
        ctx.progress(step, steps)
    return {"steps": steps, "sum": total}
