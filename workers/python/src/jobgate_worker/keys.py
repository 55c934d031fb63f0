"""Redis key names, channels and constants of the jobgate protocol.

Everything here mirrors ``proto-schemas/PROTOCOL.md``; no other module spells a
key by hand, so a change of the protocol is a change of this file.
"""

from __future__ import annotations

from typing import Final

PREFIX: Final = "jobgate:"
CONSUMER_GROUP: Final = "jobgate-workers"
#: Job kind -> ``{"queue", "worker", "seen_at"}``. Protocol 2 moved the registry
#: here from ``jobgate:kinds``: a gateway routes a kind only to workers that
#: speak its protocol.
KINDS_KEY: Final = f"{PREFIX}kinds:v2"

#: Priority bands in the order a worker runs them: higher bands first.
BANDS: Final = ("high", "normal", "low")


def job_key(job_id: str) -> str:
    """The job record hash."""
    return f"{PREFIX}job:{{{job_id}}}"


def events_key(job_id: str) -> str:
    """The job's event history stream (entry id ``<seq>-0``)."""
    return f"{PREFIX}events:{{{job_id}}}"


def queue_stream(queue: str, band: str) -> str:
    """One priority band of a queue."""
    return f"{PREFIX}queue:{{{queue}}}:{band}"


def queue_streams(queue: str) -> tuple[str, ...]:
    """All band streams of a queue, highest band first."""
    return tuple(queue_stream(queue, band) for band in BANDS)


def dead_letter_stream(queue: str) -> str:
    """Entries whose jobs ran out of attempts."""
    return f"{PREFIX}dead:{{{queue}}}"


def dead_letter_index(queue: str) -> str:
    """Job id -> its dead letter's entry id: one dead letter per job."""
    return f"{PREFIX}dead:{{{queue}}}:jobs"


def paused_key(queue: str) -> str:
    """Present while the queue is paused: workers take no new entries."""
    return f"{PREFIX}paused:{{{queue}}}"


def workers_key(queue: str) -> str:
    """The queue's worker heartbeats: consumer → JSON record."""
    return f"{PREFIX}workers:{{{queue}}}"


def stats_key(queue: str) -> str:
    """The queue's job outcome counters (hash; see ``stats.py`` for its fields)."""
    return f"{PREFIX}stats:{{{queue}}}"


def live_job_channel(job_id: str) -> str:
    """Sharded channel carrying every event of one job (SPUBLISH, the job's slot)."""
    return f"{PREFIX}live:job:{{{job_id}}}"


_CONTROL_PREFIX: Final = f"{PREFIX}control:{{"


def control_channel(job_id: str) -> str:
    """Sharded channel on which ``cancel`` reaches the worker running the job (job's slot)."""
    return f"{_CONTROL_PREFIX}{job_id}}}"


def job_of_control_channel(channel: str) -> str | None:
    """The job id a control channel belongs to; None for any other channel."""
    if channel.startswith(_CONTROL_PREFIX) and channel.endswith("}"):
        return channel[len(_CONTROL_PREFIX) : -1]
    return None
