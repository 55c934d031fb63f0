"""When a job waiting on Dask must stop waiting: the rules, without Dask or I/O.

Three things can leave a job's tasks with nobody to run them, each a
``DaskError`` code:

- ``dask_unavailable``: the scheduler cannot be reached — the client lost its
  connection (the scheduler was killed or restarted; Dask then cancels every
  future of that client), a connect did not succeed within the connect
  timeout, or a connected scheduler did not answer the periodic look for
  ``scheduler_timeout_s`` (a host that vanished without closing its sockets).
- ``dask_no_workers``: the scheduler answers but has had no worker for
  ``no_workers_timeout_s``; its tasks would wait for one forever.
- ``dask_worker_lost``: a task's workers died while running it as often as
  the scheduler allows (``distributed.scheduler.allowed-failures``, 3 by
  default); Dask failed the task with ``KilledWorker``. A single worker dying
  is not an error: the scheduler runs its tasks on another worker.

``DaskHealth`` turns periodic ``Look``s at the scheduler into a verdict;
``dask_error_for`` says whether an exception a handler raised is one of these
(classified by type, and for a cancelled future by its reason).
``dask_provider.DaskProvider`` does the looking and acts on both.
"""

from __future__ import annotations

import concurrent.futures
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import DaskError
from .outcomes import error_message

#: The reason Dask gives futures it cancelled because the client lost the scheduler.
CONNECTION_LOST_REASON = "scheduler-connection-lost"
#: How far down an exception's causes ``dask_error_for`` looks.
_CAUSE_DEPTH = 8


@dataclass(frozen=True, slots=True)
class DaskTimeouts:
    """How long jobs wait on an unhealthy Dask before they are retried (seconds)."""

    #: Longest a connect to the scheduler may take (also the client's own
    #: reconnect window); a job that cannot connect in this time is retried.
    connect_s: float = 10.0
    #: How long a scheduler may have no workers while jobs wait for their tasks.
    no_workers_s: float = 30.0
    #: How long a connected scheduler may leave the periodic look unanswered.
    scheduler_s: float = 30.0
    #: How often the scheduler is looked at while some job waits for its tasks.
    check_interval_s: float = 1.0

    @property
    def look_timeout_s(self) -> float:
        """Longest one look may wait for the scheduler's answer."""
        return max(min(5.0, self.scheduler_s), 0.1)


@dataclass(frozen=True, slots=True)
class Look:
    """What one look at the scheduler saw."""

    #: The client's connection to the scheduler is up (``status == "running"``).
    connected: bool
    #: Workers the scheduler has; None when it did not answer in time.
    workers: int | None = None


class DaskHealth:
    """Decides, look after look, when the jobs waiting on Dask must be retried.

    Only looks taken while some job waits for its tasks are fed in; when
    none waits the provider calls ``reset``, so every wait is timed from a
    look taken during it.
    """

    def __init__(self, scheduler_address: str, timeouts: DaskTimeouts) -> None:
        self.scheduler_address = scheduler_address
        self.timeouts = timeouts
        self._unanswered_since: float | None = None
        self._no_workers_since: float | None = None

    def reset(self) -> None:
        self._unanswered_since = self._no_workers_since = None

    def observe(self, now: float, look: Look) -> DaskError | None:
        """The error the waiting jobs end with, or None while they may go on waiting."""
        if not look.connected:
            self.reset()
            return DaskError(
                DaskError.UNAVAILABLE,
                f"lost the connection to the Dask scheduler at {self.scheduler_address}",
            )
        if look.workers is None:
            self._no_workers_since = None
            if self._unanswered_since is None:
                self._unanswered_since = now
            if now - self._unanswered_since >= self.timeouts.scheduler_s:
                self.reset()
                return DaskError(
                    DaskError.UNAVAILABLE,
                    f"the Dask scheduler at {self.scheduler_address} did not answer"
                    f" for {self.timeouts.scheduler_s:g} s",
                )
            return None
        self._unanswered_since = None
        if look.workers > 0:
            self._no_workers_since = None
            return None
        if self._no_workers_since is None:
            self._no_workers_since = now
        if now - self._no_workers_since >= self.timeouts.no_workers_s:
            self.reset()
            return DaskError(
                DaskError.NO_WORKERS,
                f"the Dask scheduler at {self.scheduler_address} had no workers"
                f" for {self.timeouts.no_workers_s:g} s while the job waited for its tasks",
            )
        return None


def connect_error(scheduler_address: str, timeout_s: float, error: BaseException) -> DaskError:
    """The error of a connect that failed (or timed out)."""
    why = f": {error_message(error)}" if str(error) else ""
    return DaskError(
        DaskError.UNAVAILABLE,
        f"could not connect to the Dask scheduler at {scheduler_address} within {timeout_s:g} s"
        + why,
    )


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what it was raised from (or while handling), nearest first."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(seen) < _CAUSE_DEPTH:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _cancel_reasons(error: BaseException) -> set[str]:
    """The reasons Dask gave for cancelling the futures behind ``error``."""
    reason = getattr(error, "reason", None)
    if isinstance(reason, str):
        return {reason}
    groups = getattr(error, "error_groups", None) or []
    return {group.reason for group in groups if isinstance(getattr(group, "reason", None), str)}


def _distributed_type(module: Any, *path: str) -> type[BaseException] | None:
    """A class of ``distributed`` (None when it is not there)."""
    found: Any = module
    for name in path:
        found = getattr(found, name, None)
    return found if isinstance(found, type) and issubclass(found, BaseException) else None


def dask_error_for(
    error: BaseException, *, connected: bool, scheduler_address: str
) -> DaskError | None:
    """The ``DaskError`` a handler's exception stands for, or None (not Dask's fault).

    By type: ``KilledWorker`` → ``dask_worker_lost``; a future cancelled
    because the connection was lost, or a closed comm → ``dask_unavailable``;
    while the client is not ``connected``, a cancelled future, a timeout or an
    OS error too. ``distributed`` is looked up, never imported: an exception
    cannot come from it unless it was imported.
    """
    distributed = sys.modules.get("distributed")
    killed_worker = _distributed_type(distributed, "KilledWorker")
    comm_closed = _distributed_type(distributed, "comm", "CommClosedError")
    for cause in _causes(error):
        if isinstance(cause, DaskError):
            return cause
        if killed_worker is not None and isinstance(cause, killed_worker):
            return DaskError(
                DaskError.WORKER_LOST,
                f"the Dask workers running a task of the job died: {error_message(cause)}",
            )
        lost = isinstance(cause, concurrent.futures.CancelledError) and (
            CONNECTION_LOST_REASON in _cancel_reasons(cause) or not connected
        )
        closed = comm_closed is not None and isinstance(cause, comm_closed)
        gone = not connected and isinstance(cause, TimeoutError | OSError)
        if lost or closed or gone:
            return DaskError(
                DaskError.UNAVAILABLE,
                f"lost the connection to the Dask scheduler at {scheduler_address}:"
                f" {error_message(cause)}",
            )
    return None
