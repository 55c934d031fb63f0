"""The retry policy, without Redis: exponential backoff with jitter."""

from __future__ import annotations

import pytest

from jobgate_worker.backoff import backoff_s


def _highest(low: float, high: float) -> float:
    return high


def _lowest(low: float, high: float) -> float:
    return low


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (9, 10.0)]
)
def test_backoff_doubles_from_the_base_up_to_the_cap(attempt, ceiling):
    assert backoff_s(attempt, 1.0, 10.0, jitter=_highest) == ceiling


def test_backoff_jitter_keeps_half_to_all_of_the_ceiling():
    assert backoff_s(3, 0.5, 60.0, jitter=_lowest) == 1.0
    assert backoff_s(3, 0.5, 60.0, jitter=_highest) == 2.0
    delays = [backoff_s(3, 0.5, 60.0) for _ in range(200)]
    assert all(1.0 <= delay <= 2.0 for delay in delays)
    assert len(set(delays)) > 100, "the default jitter is random"


def test_backoff_of_a_huge_attempt_is_the_cap_not_an_overflow():
    assert backoff_s(100_000, 0.5, 60.0, jitter=_highest) == 60.0


def test_backoff_with_a_zero_base_retries_at_once():
    assert backoff_s(7, 0.0, 60.0) == 0.0
