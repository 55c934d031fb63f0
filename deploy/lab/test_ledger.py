"""The lab's accounting (ledger.py), without a lab: `make test-lab` runs these first."""

from __future__ import annotations

from typing import Any

import pytest
from ledger import Fault, Ledger, figures, hash_slot, max_wait


def event(
    job_id: str, seq: int, name: str, epoch: int | None = None, **data: Any
) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "event", "job_id": job_id, "seq": seq, "event": name}
    if epoch is not None:
        frame["epoch"] = epoch
    if data:
        frame["data"] = data
    return frame


def history(job_id: str, names: list[str], epoch: int | None = None) -> list[dict[str, Any]]:
    return [event(job_id, seq, name, epoch) for seq, name in enumerate(names, 1)]


NAMES = ["queued", "started", "progress", "completed"]


def deliver_all(ledger: Ledger, watcher: str, frames: list[dict[str, Any]], at: float) -> None:
    for offset, frame in enumerate(frames):
        ledger.deliver(watcher, frame, at + offset, f"{watcher}-1", 1)


def test_hash_slot_is_redis_cluster_keyslot() -> None:
    # CLUSTER KEYSLOT foo = 12182; a key's slot is its hash tag's.
    assert hash_slot("foo") == 12182
    assert hash_slot("123456789") == 0x31C3 % 16384


def test_everything_delivered_once_passes() -> None:
    ledger = Ledger(["a", "b"])
    job = ledger.accepted("j1", "s", 0.0, 0.1)
    deliver_all(ledger, "a", history("j1", NAMES), 1.0)
    deliver_all(ledger, "b", history("j1", NAMES), 1.5)
    result = figures(
        "s", [job], watchers=["a", "b"], histories={"j1": history("j1", NAMES)},
        fault=None, submission_started={},
    )  # fmt: skip
    assert result.passed()
    assert (result.submitted, result.completed) == (1, 1)
    assert (result.lost_events, result.duplicates) == (0, 0)
    assert result.max_wait_s == pytest.approx(1.4)


def test_a_missed_event_a_duplicate_and_an_unfinished_watch_fail() -> None:
    ledger = Ledger(["a", "b"])
    job = ledger.accepted("j1", "s", 0.0, 0.0)
    frames = history("j1", NAMES)
    deliver_all(ledger, "a", [frames[0], frames[1], frames[1], frames[3]], 1.0)
    deliver_all(ledger, "b", frames[:2], 1.0)
    result = figures(
        "s", [job], watchers=["a", "b"], histories={"j1": frames},
        fault=None, submission_started={},
    )  # fmt: skip
    assert result.duplicates == 1
    assert result.lost_events == 1 + 2  # a missed seq 3; b missed 3 and 4
    assert result.unfinished_watches == 1
    assert not result.passed()


def test_a_job_without_history_or_terminal_event_is_lost() -> None:
    ledger = Ledger(["a"])
    gone = ledger.accepted("j1", "s", 0.0, 0.0)
    stuck = ledger.accepted("j2", "s", 0.0, 0.0)
    result = figures(
        "s", [gone, stuck], watchers=["a"],
        histories={"j1": None, "j2": history("j2", ["queued", "started"])},
        fault=None, submission_started={}, submit_failures=1,
    )  # fmt: skip
    assert result.lost_jobs == 3
    assert result.submitted == 3


def test_a_newer_epoch_is_accepted_and_older_events_it_voided_are_not_lost() -> None:
    ledger = Ledger(["a"])
    job = ledger.accepted("j1", "s", 0.0, 0.0)
    # (1,3) was delivered, then lost in a failover: the job went on in epoch 2
    # from seq 3.
    frames = [
        event("j1", 1, "queued"),
        event("j1", 2, "started"),
        event("j1", 3, "progress"),
        event("j1", 3, "progress", epoch=2),
        event("j1", 4, "completed", epoch=2),
    ]
    deliver_all(ledger, "a", frames, 1.0)
    final = [frames[0], frames[1], frames[3], frames[4]]
    result = figures(
        "s", [job], watchers=["a"], histories={"j1": final},
        fault=None, submission_started={},
    )  # fmt: skip
    assert result.passed()
    assert result.void_events == 1
    assert job.watch("a").resume_after() == (2, 4)


def test_recovery_of_a_slot_fault_is_the_first_completed_of_those_slots() -> None:
    ledger = Ledger(["a"])
    inside = ledger.accepted("j1", "s", 0.0, 0.0)
    outside = ledger.accepted("j2", "s", 0.0, 0.0)
    ledger.deliver("a", event("j2", 4, "completed"), 10.5, "a-1", 1)
    ledger.deliver("a", event("j1", 4, "completed"), 13.0, "a-1", 1)
    fault = Fault("slots", 10.0, slots=((inside.slot, inside.slot),))
    assert outside.slot != inside.slot
    result = figures(
        "s", [inside, outside], watchers=["a"], histories={},
        fault=fault, submission_started={},
    )  # fmt: skip
    assert result.recovery_s == pytest.approx(3.0)


def test_recovery_of_a_gateway_fault_waits_for_every_affected_session() -> None:
    ledger = Ledger(["a"])
    job = ledger.accepted("j1", "s", 0.0, 0.0)
    other = ledger.accepted("j2", "s", 0.0, 0.0)
    ledger.deliver("a", event("j1", 4, "completed"), 11.0, "a-1", 1)  # old connection
    ledger.deliver("a", event("j1", 4, "completed"), 12.0, "a-1", 2)
    ledger.deliver("a", event("j2", 4, "completed"), 14.0, "a-2", 3)
    fault = Fault(
        "sessions", 10.0, sessions=frozenset({"a-1", "a-2"}), connections={"a-1": 1, "a-2": 1}
    )
    result = figures(
        "s", [job, other], watchers=["a"], histories={},
        fault=fault, submission_started={},
    )  # fmt: skip
    assert result.recovery_s == pytest.approx(4.0)


def test_max_wait_counts_from_acceptance_to_the_terminal_event() -> None:
    ledger = Ledger(["a"])
    job = ledger.accepted("j1", "s", 0.0, 1.0)
    ledger.deliver("a", event("j1", 1, "queued"), 1.2, "a-1", 1)
    ledger.deliver("a", event("j1", 2, "started"), 9.2, "a-1", 1)
    ledger.deliver("a", event("j1", 3, "completed"), 9.5, "a-1", 1)
    assert max_wait(job, job.watch("a")) == pytest.approx(8.0)
