"""The worker of the conformance replay: kind `conformance_steps`, queue
`conformance`. Params `{"steps": N, "pace_ms": P, "pad": B}`: N progress
events `{done: i, total: N}` (with a message of B `x`s when `pad` is set),
one every P ms, then `{"steps": N}` as the result. Progress is written
uncoalesced (`progress_interval=0`), so the events are exactly those the
fake gateway plays (player.steps_job_events).

    cd proto-schemas/conformance && ../../.venv/bin/jobgate-worker steps_worker:worker
"""

from __future__ import annotations

import time
from typing import Any

from jobgate_worker import JobContext, Worker

worker = Worker(queue="conformance", progress_interval=0)


@worker.job("conformance_steps")
def steps(ctx: JobContext, params: dict[str, Any]) -> dict[str, int]:
    total = int(params.get("steps", 3))
    pace_s = float(params.get("pace_ms", 100)) / 1000
    pad = int(params.get("pad", 0))
    for done in range(1, total + 1):
        time.sleep(pace_s)
        ctx.progress(done, total, "x" * pad if pad else None)
    return {"steps": total}
