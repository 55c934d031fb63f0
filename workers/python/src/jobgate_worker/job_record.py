"""Reading job records: the one place the worker reads ``jobgate:job:{<id>}``.

Only ``jobgate.lua`` writes a record (PROTOCOL.md); the worker reads a few
of its fields where the script's replies do not say enough: whether a
running attempt is still its own and whether a cancel was asked (lease
renewal), which attempt to fail when a job's queue entry vanished, and why a
job failed (for its dead letter). Field names and their decoding live here
and nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import keys
from .clients import Client

_STATE_FIELDS = ("status", "attempt", "cancel_requested", "kind", "created_at")


@dataclass(frozen=True, slots=True)
class JobState:
    """Who runs a job now, and whether it should stop."""

    #: ``queued``, ``running``, ``completed``, ``failed``, ``cancelled``; None: no record.
    status: str | None
    #: The current attempt (the fencing token); None without a record.
    attempt: int | None
    cancel_requested: bool
    kind: str = ""
    #: ms, Redis's clock; 0 when unknown.
    created_at: int = 0


def _state(values: Sequence[Any]) -> JobState:
    status, attempt, cancel_requested, kind, created_at = values
    return JobState(
        status=status if isinstance(status, str) else None,
        attempt=int(attempt) if isinstance(attempt, str) and attempt.isdigit() else None,
        cancel_requested=cancel_requested == "1",
        kind=kind if isinstance(kind, str) else "",
        created_at=int(created_at) if isinstance(created_at, str) and created_at.isdigit() else 0,
    )


class JobRecords:
    """Reads job records; ``current`` picks the calling thread's client (``clients.py``)."""

    def __init__(self, current: Callable[[], Client]) -> None:
        self._current = current

    def state(self, job_id: str) -> JobState:
        return _state(self._current().hmget(keys.job_key(job_id), _STATE_FIELDS))

    def states(self, job_ids: Sequence[str]) -> list[JobState]:
        """The state of each job, in one round trip (one per node on a cluster)."""
        pipe = self._current().pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(keys.job_key(job_id), _STATE_FIELDS)
        return [_state(values) for values in pipe.execute()]

    def error(self, job_id: str) -> dict[str, Any]:
        """The record's ``error`` field, decoded (empty when absent or not an object)."""
        raw = self._current().hget(keys.job_key(job_id), "error")
        try:
            value = json.loads(raw) if isinstance(raw, str) else {}
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}
