"""Re-enqueuing a job's entry: after a retry delay, or at once at shutdown.

After ``retry`` (or ``release``) the job is ``queued`` again but its entry is
still pending here. The entry stays held — its lease renewed — until a
fresh one with the same fields exists at the end of its band; the old one
is then acknowledged and deleted in the same ``MULTI``/``EXEC``. So the job
is neither lost nor duplicated in between, whichever moment the process dies.
"""

from __future__ import annotations

import logging
import threading

import redis

from .inflight import InFlight
from .scheduler import Scheduler, Timer
from .streams import Entry, QueueStreams

log = logging.getLogger("jobgate_worker.job")

#: Wait before trying a failed re-enqueue again.
_RETRY_REQUEUE_S = 1.0


class Requeuer:
    """Puts held entries back at the end of their band; safe to call from any thread."""

    def __init__(self, streams: QueueStreams, scheduler: Scheduler, inflight: InFlight) -> None:
        self.streams = streams
        self.scheduler = scheduler
        self.inflight = inflight
        self._delayed: dict[tuple[str, str], Timer] = {}
        self._lock = threading.Lock()

    def requeue_later(self, entry: Entry, delay_s: float) -> None:
        """Re-enqueue the (held) entry after ``delay_s``, on the timer thread."""
        timer = self.scheduler.call_later(delay_s, lambda: self.requeue(entry), "requeue")
        with self._lock:
            self._delayed[entry.key] = timer

    def requeue(self, entry: Entry) -> None:
        """Re-enqueue the entry now and let it go, if it is still held; tries again on failure."""
        with self._lock:
            self._delayed.pop(entry.key, None)
        if not self.inflight.is_held(entry.key):
            return
        try:
            self.requeue_now(entry)
        except redis.RedisError:
            log.warning(
                "re-enqueue failed; trying again", exc_info=True, extra={"job_id": entry.job_id}
            )
            self.requeue_later(entry, _RETRY_REQUEUE_S)
            return
        self.inflight.release(entry)

    def requeue_now(self, entry: Entry) -> None:
        """A fresh entry with the same fields at the end of the band, the old one
        acknowledged and deleted (one MULTI/EXEC); raises ``RedisError``.

        The entry stays held: the caller lets it go.
        """
        new_id = self.streams.requeue(entry, self.streams.server_time_ms())
        log.debug("job re-enqueued", extra={"job_id": entry.job_id, "entry_id": new_id})

    def requeue_all_now(self) -> None:
        """At shutdown: re-enqueue every entry waiting out a retry delay."""
        with self._lock:
            delayed, self._delayed = self._delayed, {}
        for timer in delayed.values():
            timer.cancel()
        for entry in self.inflight.held():
            if entry.key in delayed:
                self.requeue(entry)
