"""One timer thread for everything that must happen later.

Job timeouts, coalesced progress flushes, delayed re-enqueues after a
retryable error and the periodic housekeeping (lease renewal, reclaiming,
kind registration) are callbacks on this one thread, so the SDK creates no
thread per job and never sleeps in a job's thread. Callbacks must be short:
a few Redis round trips at most.

Cancelled timers are dropped lazily, and the heap is rebuilt when more than
half of it is cancelled, so a timer armed and cancelled for every job (a
timeout that rarely fires) does not keep the thread busy.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(order=True, slots=True)
class Timer:
    """A scheduled callback; ``cancel()`` it if it should no longer run."""

    due: float
    order: int
    callback: Callable[[], None] = field(compare=False)
    name: str = field(compare=False, default="")
    cancelled: bool = field(compare=False, default=False)
    _owner: Scheduler | None = field(compare=False, default=None, repr=False)

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            if self._owner is not None:
                self._owner._cancelled_one()


class Scheduler:
    """A heap of timers served by one daemon thread."""

    def __init__(self, name: str = "jobgate-scheduler") -> None:
        self._heap: list[Timer] = []
        self._cancelled = 0
        self._order = itertools.count()
        self._condition = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._condition:
            self._stopping = True
            self._condition.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def call_later(self, delay_s: float, callback: Callable[[], None], name: str = "") -> Timer:
        return self.call_at(time.monotonic() + max(delay_s, 0.0), callback, name)

    def call_at(self, due: float, callback: Callable[[], None], name: str = "") -> Timer:
        timer = Timer(due, next(self._order), callback, name, False, self)
        with self._condition:
            heapq.heappush(self._heap, timer)
            if self._heap[0] is timer:
                self._condition.notify()
        return timer

    def call_every(
        self, interval_s: float, callback: Callable[[], None], name: str = ""
    ) -> Callable[[], None]:
        """Run ``callback`` every ``interval_s`` (first run after one interval).

        Returns a function that stops the repetition.
        """
        state: dict[str, Timer | bool] = {"stopped": False}

        def tick() -> None:
            if state["stopped"]:
                return
            try:
                callback()
            finally:
                if not state["stopped"]:
                    state["timer"] = self.call_later(interval_s, tick, name)

        state["timer"] = self.call_later(interval_s, tick, name)

        def stop() -> None:
            state["stopped"] = True
            timer = state.get("timer")
            if isinstance(timer, Timer):
                timer.cancel()

        return stop

    def _cancelled_one(self) -> None:
        with self._condition:
            self._cancelled += 1
            if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
                self._heap = [timer for timer in self._heap if not timer.cancelled]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def _next_due(self) -> Timer | None:
        """Pop the next timer that is due, waiting for it; None when stopping."""
        with self._condition:
            while not self._stopping:
                while self._heap and self._heap[0].cancelled:
                    heapq.heappop(self._heap)
                    self._cancelled = max(self._cancelled - 1, 0)
                if not self._heap:
                    self._condition.wait()
                    continue
                wait = self._heap[0].due - time.monotonic()
                if wait <= 0:
                    timer = heapq.heappop(self._heap)
                    timer._owner = None
                    return timer
                self._condition.wait(wait)
            return None

    def _run(self) -> None:
        while True:
            timer = self._next_due()
            if timer is None:
                return
            if timer.cancelled:
                continue
            try:
                timer.callback()
            except Exception:
                log.exception("scheduled callback failed", extra={"timer": timer.name})
