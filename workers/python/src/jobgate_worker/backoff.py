"""The retry policy: exponential backoff with jitter, as one pure function.

Used for a job whose handler raised a ``RetryableError`` without a delay of
its own, and for reconnecting to Fluentd. Kept apart from the I/O that waits
out the delay so that the policy is unit-tested on its own.
"""

from __future__ import annotations

import random
from collections.abc import Callable

#: Beyond this many doublings the delay is the cap for any sensible base; the
#: exponent stops growing so that a huge attempt number cannot overflow a float.
MAX_DOUBLINGS = 30


def backoff_s(
    attempt: int,
    base_s: float,
    cap_s: float,
    jitter: Callable[[float, float], float] = random.uniform,
) -> float:
    """The delay before try ``attempt + 1``: half to all of ``base * 2**(attempt-1)``, capped.

    ``attempt`` counts from 1 (anything lower counts as 1). The ceiling is
    ``min(cap_s, base_s * 2**(attempt-1))``; ``jitter(0.5, 1.0)`` picks the
    fraction of it (uniformly at random by default), so workers that failed
    together do not all come back at the same moment.
    """
    doublings = min(max(attempt - 1, 0), MAX_DOUBLINGS)
    ceiling = min(cap_s, base_s * 2.0**doublings)
    return ceiling * jitter(0.5, 1.0)
