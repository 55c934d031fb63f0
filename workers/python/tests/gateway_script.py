"""The gateway's side of the job script, for tests: ``create``, ``cancel``, priority bands.

The SDK ships only the operations a worker makes (``jobgate_worker.script``);
the tests also play the gateway (``conftest.Gateway``) and, now and then, a
second worker finishing a job it took over (``complete``).
"""

from __future__ import annotations

from jobgate_worker.script import JobScript, Reply


class GatewayScript(JobScript):
    """``JobScript`` plus the operations the gateway (or another worker) makes."""

    def create(
        self,
        job_id: str,
        *,
        owner: str,
        kind: str,
        queue: str,
        params_json: str,
        priority: int = 5,
        max_attempts: int = 3,
        timeout_s: int = 0,
        retention_s: int = 86400,
        history_max: int = 1000,
        traceparent: str = "",
        tracestate: str = "",
        trace_id: str = "",
        legacy_trace_id: str = "",
    ) -> Reply:
        return self.call(
            job_id,
            "create",
            job_id,
            owner,
            kind,
            queue,
            params_json,
            priority,
            max_attempts,
            timeout_s,
            retention_s,
            history_max,
            traceparent,
            tracestate,
            trace_id,
            legacy_trace_id,
        )

    def cancel(self, job_id: str) -> Reply:
        return self.call(job_id, "cancel")

    def complete(self, job_id: str, attempt: int, result_json: str) -> Reply:
        return self.call(job_id, "complete", attempt, result_json)


def band_for_priority(priority: int) -> str:
    """The band a priority (0-9) is queued in: 7-9 high, 4-6 normal, 0-3 low."""
    if priority >= 7:
        return "high"
    if priority >= 4:
        return "normal"
    return "low"
