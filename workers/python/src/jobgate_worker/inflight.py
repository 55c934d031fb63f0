"""What this process is working on: attempts it runs and entries it holds.

``Run`` is one attempt of one job; ``InFlight`` indexes the runs by job id
(so a cancel message finds its job) and the queue entries this consumer
holds — running, waiting out a retry delay, or fetched but not yet started —
whose leases the renewal keeps alive. A ``HeldObserver`` (the lease
renewer) hears of every entry held and let go, in order, under the lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry import trace

from .context import JobContext, ProgressReporter
from .scheduler import Timer
from .script import StartedJob
from .streams import Entry


@dataclass(eq=False)
class Run:
    """One attempt of one job in this process."""

    entry: Entry
    started_monotonic: float = field(default_factory=time.monotonic)
    started: StartedJob | None = None
    ctx: JobContext | None = None
    progress: ProgressReporter | None = None
    timeout_timer: Timer | None = None
    #: A cancel arrived before ``start`` returned.
    cancel_seen: bool = False
    finished: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    extra: dict[str, Any] = field(default_factory=dict)
    #: The attempt's consumer span, and its ids as the parent of spans
    #: started on other threads (progress, cancel, timeout).
    span: trace.Span | None = None
    span_context: trace.SpanContext | None = None

    @property
    def job_id(self) -> str:
        return self.entry.job_id

    @property
    def attempt(self) -> int:
        return self.started.attempt if self.started is not None else 0

    def claim_finish(self) -> bool:
        """True for the first caller only: that caller reports the outcome."""
        with self.lock:
            if self.finished:
                return False
            self.finished = True
            return True


class HeldObserver(Protocol):
    """Told of every entry this consumer starts and stops holding."""

    def hold(self, key: tuple[str, str]) -> None: ...

    def drop(self, key: tuple[str, str]) -> None: ...


class InFlight:
    """Entries this consumer holds (renewed) and attempts it runs (cancellable)."""

    def __init__(self, observer: HeldObserver | None = None) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], Entry] = {}
        self._runs: dict[str, Run] = {}
        self.observer = observer

    def hold(self, entry: Entry) -> None:
        with self._lock:
            self._held[entry.key] = entry
            if self.observer is not None:
                self.observer.hold(entry.key)

    def release(self, entry: Entry) -> None:
        with self._lock:
            if self._held.pop(entry.key, None) is not None and self.observer is not None:
                self.observer.drop(entry.key)

    def replay(self, hold: Callable[[tuple[str, str]], None]) -> None:
        """Call ``hold`` for every entry held, under the lock (a new renewer's start)."""
        with self._lock:
            for key in self._held:
                hold(key)

    def is_held(self, key: tuple[str, str]) -> bool:
        with self._lock:
            return key in self._held

    def held(self) -> list[Entry]:
        with self._lock:
            return list(self._held.values())

    def add_run(self, run: Run) -> None:
        with self._lock:
            self._runs[run.job_id] = run

    def remove_run(self, run: Run) -> None:
        with self._lock:
            if self._runs.get(run.job_id) is run:
                del self._runs[run.job_id]

    def run_for(self, job_id: str) -> Run | None:
        with self._lock:
            return self._runs.get(job_id)

    def runs(self) -> list[Run]:
        with self._lock:
            return list(self._runs.values())
