"""Job outcome counters: counted in memory, added to ``jobgate:stats:{<queue>}``.

Every outcome this worker reports and Redis took (the script's reply says
it wrote the event) is counted by kind; the scheduler thread adds the counts
to the queue's hash with ``HINCRBY`` (one pipeline, the queue's slot) at
most once a second, and once more at shutdown. Gateways read the hashes of
the known queues and render them on ``/metrics``. The fields:

- ``outcome|<event>|<kind>``: events ``retrying``, ``completed``, ``failed``,
  ``cancelled``;
- for the terminal ones, their age (created → now, ms): ``latency|<kind>|<i>``
  counts ages in bucket ``i``, the first of ``LATENCY_BUCKETS_MS`` not below
  the age (per bucket, not cumulative: the gateway sums them into
  Prometheus's cumulative buckets; an age past the last bound is in no
  bucket), plus ``latency_count|<kind>`` and ``latency_sum_ms|<kind>``.

Counts are metrics, not guarantees: a worker that dies loses what it had
not flushed (at most about a second's worth); a flush that fails is kept
and added to the next one (so a flush whose reply was lost may count twice).
Only what a reply says was written is counted: a ``start`` that ends a job
(cancelled before it ran, or out of attempts) answers ``skip``, and is not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

import redis

from . import keys
from .clients import Client

log = logging.getLogger(__name__)

#: Upper bounds (ms) of the latency buckets: the gateway's ``LATENCY_BUCKETS_S``
#: (crates/jobgate-gateway/src/metrics.rs), which renders them, in ms.
LATENCY_BUCKETS_MS = (
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
    1_800_000, 3_600_000,
)  # fmt: skip
OUTCOME_EVENTS = frozenset({"retrying", "completed", "failed", "cancelled"})
TERMINAL_EVENTS = frozenset({"completed", "failed", "cancelled"})
#: Flushes are at most this often.
FLUSH_INTERVAL_S = 1.0


def latency_bucket(age_ms: int) -> int | None:
    """Index of the first bound not below ``age_ms``; None past the last one."""
    for index, bound in enumerate(LATENCY_BUCKETS_MS):
        if age_ms <= bound:
            return index
    return None


def outcome_fields(event: str, kind: str, age_ms: int | None) -> dict[str, int]:
    """The fields one outcome adds to (``age_ms`` only for terminal events)."""
    if event not in OUTCOME_EVENTS:
        raise ValueError(f"{event!r} is not a counted outcome")
    fields = {f"outcome|{event}|{kind}": 1}
    if event in TERMINAL_EVENTS and age_ms is not None:
        age_ms = max(age_ms, 0)
        bucket = latency_bucket(age_ms)
        if bucket is not None:
            fields[f"latency|{kind}|{bucket}"] = 1
        fields[f"latency_count|{kind}"] = 1
        fields[f"latency_sum_ms|{kind}"] = age_ms
    return fields


class OutcomeCounts:
    """What this worker counted and has not flushed yet; safe from any thread."""

    def __init__(self, queue: str, clock_ms: Callable[[], int] | None = None) -> None:
        """``clock_ms`` is now in ms by Redis's clock (default: this machine's, with
        the offset ``note_server_time`` learnt)."""
        self.key = keys.stats_key(queue)
        self._clock_ms = clock_ms or self._server_now_ms
        self._offset_ms = 0
        self._lock = threading.Lock()
        self._pending: Counter[str] = Counter()

    def note_server_time(self, server_ms: int) -> None:
        """Redis's clock, as just read: ages are measured by it."""
        self._offset_ms = server_ms - int(time.time() * 1000)

    def _server_now_ms(self) -> int:
        return int(time.time() * 1000) + self._offset_ms

    def count(self, event: str, kind: str, created_at_ms: int = 0) -> None:
        """One outcome of a job of ``kind``; terminal ones with their age, when
        the job's creation time is known (non-zero)."""
        age_ms = self._clock_ms() - created_at_ms if created_at_ms > 0 else None
        fields = outcome_fields(event, kind, age_ms)
        with self._lock:
            self._pending.update(fields)

    def pending(self) -> dict[str, int]:
        with self._lock:
            return dict(self._pending)

    def flush(self, client: Client) -> None:
        """``HINCRBY`` every pending count into the queue's hash (one round trip);
        on failure the counts stay pending for the next flush."""
        with self._lock:
            taken, self._pending = self._pending, Counter()
        if not taken:
            return
        try:
            pipe = client.pipeline(transaction=False)
            for name, amount in taken.items():
                pipe.hincrby(self.key, name, amount)
            pipe.execute()
        except redis.RedisError:
            log.warning(
                "writing the outcome counters failed; kept for the next flush", exc_info=True
            )
            with self._lock:
                self._pending.update(taken)
