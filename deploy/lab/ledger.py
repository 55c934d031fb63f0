"""What the lab's load generator saw, and the figures of a scenario: no I/O.

A *watch* is one watcher's view of one job: every event delivered to it,
in order, with the session and connection it came on and when. From the
watches and each job's full history (read over HTTP at the end) a
scenario's figures follow:

- lost events: an event of the history (by ``(epoch, seq)``) never delivered
  to a watcher, summed over watchers;
- duplicates: an ``(epoch, seq)`` delivered to the same watcher more than once;
- out of order: delivered after an event that comes later in the job's order;
- void: delivered, but not in the final history (an older epoch's events
  that a Redis failover dropped; the client is told by the newer epoch);
- lost jobs: accepted jobs whose history has no terminal event (or no history);
- max wait: the longest time a watcher waited for a job's next event (from
  the submission's answer to the first event, then between events, up to
  the terminal one);
- recovery: from the fault to the first ``completed`` event that shows the
  affected path working again (``Fault`` says which path).

Events are ordered by ``(epoch, seq)``: an event of a newer epoch is
accepted even when its seq is not higher (PROTOCOL.md, "Epoch"). A job's
event JSON without ``epoch`` is epoch 1.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TERMINAL = frozenset({"completed", "failed", "cancelled"})
SLOTS = 16384

Position = tuple[int, int]  # (epoch, seq)


def hash_slot(job_id: str) -> int:
    """The Redis Cluster slot of a job's keys (their hash tag is the job id)."""
    return binascii.crc_hqx(job_id.encode(), 0) % SLOTS


def position(event: dict[str, Any]) -> Position:
    return (int(event.get("epoch", 1)), int(event["seq"]))


@dataclass(slots=True)
class Delivery:
    epoch: int
    seq: int
    event: str
    at: float
    session: str
    connection: int


@dataclass(slots=True)
class Watch:
    """One watcher's deliveries of one job."""

    deliveries: list[Delivery] = field(default_factory=list)
    seen: set[Position] = field(default_factory=set)
    duplicates: int = 0
    #: Delivered after a later event (by ``(epoch, seq)``) had been.
    out_of_order: int = 0
    last: Position = (0, 0)
    terminal_at: float | None = None

    def resume_after(self) -> Position:
        return self.last


@dataclass(slots=True)
class Job:
    job_id: str
    scenario: str
    submitted_at: float
    accepted_at: float
    slot: int
    watches: dict[str, Watch] = field(default_factory=dict)
    #: The consumer of the last ``started`` seen, and when it was seen.
    worker: str | None = None
    started_at: float | None = None
    status: str = "queued"

    def watch(self, watcher: str) -> Watch:
        return self.watches.setdefault(watcher, Watch())

    def done_for(self, watchers: list[str]) -> bool:
        return all(self.watch(name).terminal_at is not None for name in watchers)


@dataclass(frozen=True, slots=True)
class Fault:
    """When a scenario's fault was injected and which path it hit.

    ``kind`` picks how recovery is measured:

    - ``slots``: the first ``completed`` after the fault of a job in ``slots``
      (ranges, inclusive) — a Redis node's jobs;
    - ``sessions``: the first ``completed`` a session in ``sessions`` received
      on a connection opened after the fault — a gateway's clients — and, if
      ``submissions`` is set, also the first ``completed`` of a job whose
      submission began after the fault; the later of the two;
    - ``jobs``: the first ``completed`` of one of ``jobs`` (those a killed
      worker was running);
    - ``started_after``: the first ``completed`` of a job started after the
      fault (a path every job takes, such as Dask);
    - ``none``: no fault.
    """

    kind: str
    at: float
    slots: tuple[tuple[int, int], ...] = ()
    sessions: frozenset[str] = frozenset()
    connections: dict[str, int] = field(default_factory=dict)
    submissions: bool = False
    jobs: frozenset[str] = frozenset()


class Ledger:
    """Every job of the run and what each watcher received of it."""

    def __init__(self, watchers: list[str]) -> None:
        self.watchers = watchers
        self.jobs: dict[str, Job] = {}

    def accepted(self, job_id: str, scenario: str, submitted_at: float, now: float) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            job = Job(job_id, scenario, submitted_at, now, hash_slot(job_id))
            self.jobs[job_id] = job
        return job

    def deliver(
        self, watcher: str, event: dict[str, Any], now: float, session: str, connection: int
    ) -> bool:
        """Records one delivered event; False if it was a duplicate or of no known job."""
        job = self.jobs.get(str(event.get("job_id")))
        if job is None:
            return False
        watch = job.watch(watcher)
        epoch, seq = position(event)
        name = str(event.get("event"))
        watch.deliveries.append(Delivery(epoch, seq, name, now, session, connection))
        if (epoch, seq) in watch.seen:
            watch.duplicates += 1
            return False
        watch.seen.add((epoch, seq))
        if (epoch, seq) < watch.last:
            watch.out_of_order += 1
        watch.last = max(watch.last, (epoch, seq))
        if name == "started":
            data = event.get("data") or {}
            job.worker = str(data.get("worker")) if data.get("worker") is not None else None
            job.started_at = now if job.started_at is None else max(job.started_at, now)
        if name in TERMINAL:
            job.status = name
            watch.terminal_at = now
        elif job.status not in TERMINAL:
            job.status = "running" if name in ("started", "progress") else name
        return True

    def of_scenario(self, scenario: str) -> list[Job]:
        return [job for job in self.jobs.values() if job.scenario == scenario]

    def running(self) -> list[Job]:
        return [job for job in self.jobs.values() if job.status == "running"]


def max_wait(job: Job, watch: Watch) -> float:
    """The longest a watcher waited for this job's next event (s)."""
    previous = job.accepted_at
    longest = 0.0
    for delivery in sorted(watch.deliveries, key=lambda delivery: delivery.at):
        longest = max(longest, delivery.at - previous)
        previous = delivery.at
        if delivery.event in TERMINAL:
            break
    return longest


def recovery(fault: Fault, jobs: list[Job], submission_started: dict[str, float]) -> float | None:
    """Seconds from the fault to the first ``completed`` on the affected path, or None."""
    if fault.kind == "none":
        return None
    if fault.kind == "sessions":
        parts = [_first_completed_on_new_connection(fault, jobs)] if fault.sessions else []
        if fault.submissions:
            parts.append(
                _first_completed(
                    jobs, lambda job: submission_started.get(job.job_id, 0.0) >= fault.at, fault
                )
            )
        if not parts or any(part is None for part in parts):
            return None
        return max(part for part in parts if part is not None)
    if fault.kind == "slots":
        return _first_completed(
            jobs, lambda job: any(low <= job.slot <= high for low, high in fault.slots), fault
        )
    if fault.kind == "jobs":
        return _first_completed(jobs, lambda job: job.job_id in fault.jobs, fault)
    if fault.kind == "started_after":
        return _first_completed(
            jobs, lambda job: job.started_at is not None and job.started_at >= fault.at, fault
        )
    raise ValueError(f"unknown fault kind {fault.kind!r}")


def _first_completed(
    jobs: list[Job], affected: Callable[[Job], bool], fault: Fault
) -> float | None:
    first: float | None = None
    for job in jobs:
        if not affected(job):
            continue
        for watch in job.watches.values():
            for delivery in watch.deliveries:
                if (
                    delivery.event == "completed"
                    and delivery.at >= fault.at
                    and (first is None or delivery.at < first)
                ):
                    first = delivery.at
    return None if first is None else first - fault.at


def _first_completed_on_new_connection(fault: Fault, jobs: list[Job]) -> float | None:
    """The time by which every affected session received a ``completed`` again."""
    firsts: dict[str, float] = {}
    for job in jobs:
        for watch in job.watches.values():
            for delivery in watch.deliveries:
                if (
                    delivery.session in fault.sessions
                    and delivery.event == "completed"
                    and delivery.at >= fault.at
                    and delivery.connection > fault.connections.get(delivery.session, 0)
                ):
                    known = firsts.get(delivery.session)
                    if known is None or delivery.at < known:
                        firsts[delivery.session] = delivery.at
    if set(firsts) != set(fault.sessions):
        return None
    return max(firsts.values()) - fault.at


@dataclass(slots=True)
class Figures:
    scenario: str
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    #: Error code → jobs that ended failed (or cancelled) with it.
    failures: dict[str, int] = field(default_factory=dict)
    lost_jobs: int = 0
    lost_events: int = 0
    duplicates: int = 0
    void_events: int = 0
    out_of_order: int = 0
    unfinished_watches: int = 0
    max_wait_s: float = 0.0
    max_wait_job: str | None = None
    #: That watch's deliveries: [event, epoch, seq, s after the submission's answer].
    max_wait_timeline: list[tuple[str, int, int, float]] = field(default_factory=list)
    recovery_s: float | None = None
    examples: list[str] = field(default_factory=list)

    def passed(self) -> bool:
        return (
            self.lost_jobs == 0
            and self.lost_events == 0
            and self.duplicates == 0
            and self.unfinished_watches == 0
        )


def figures(
    scenario: str,
    jobs: list[Job],
    *,
    watchers: list[str],
    histories: dict[str, list[dict[str, Any]] | None],
    fault: Fault | None,
    submission_started: dict[str, float],
    submit_failures: int = 0,
) -> Figures:
    """A scenario's figures from its jobs, watches and histories (job id → events)."""
    result = Figures(scenario, submitted=len(jobs) + submit_failures)
    result.lost_jobs = submit_failures

    def example(text: str) -> None:
        if len(result.examples) < 10:
            result.examples.append(text)

    for job in jobs:
        history = histories.get(job.job_id)
        if not history:
            result.lost_jobs += 1
            example(f"{job.job_id}: no history")
            continue
        final = history[-1].get("event")
        if final == "completed":
            result.completed += 1
        elif final in TERMINAL:
            result.failed += 1
            data = history[-1].get("data") or {}
            code = str((data.get("error") or {}).get("code", final))
            result.failures[code] = result.failures.get(code, 0) + 1
        else:
            result.lost_jobs += 1
            example(f"{job.job_id}: not terminal (last event {final})")
        expected = {position(event) for event in history}
        for name in watchers:
            watch = job.watch(name)
            missing = expected - watch.seen
            result.lost_events += len(missing)
            if missing:
                example(f"{job.job_id}: {name} missed {sorted(missing)[:5]}")
            result.void_events += len(watch.seen - expected)
            result.duplicates += watch.duplicates
            result.out_of_order += watch.out_of_order
            if watch.duplicates:
                example(f"{job.job_id}: {name} got {watch.duplicates} duplicate(s)")
            if watch.terminal_at is None:
                result.unfinished_watches += 1
            wait = max_wait(job, watch)
            if wait > result.max_wait_s:
                result.max_wait_s = wait
                result.max_wait_job = f"{job.job_id} ({name})"
                result.max_wait_timeline = [
                    (d.event, d.epoch, d.seq, round(d.at - job.accepted_at, 3))
                    for d in watch.deliveries
                ]
    if fault is not None:
        result.recovery_s = recovery(fault, jobs, submission_started)
    return result
