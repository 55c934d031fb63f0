"""W3C trace context: parse the job's ``traceparent``, open the consumer span.

Each attempt of a job runs in a new span (the messaging "process" span) whose
parent is the span in the job's ``traceparent``; ``ctx.traceparent`` names that
span so that whatever the handler calls downstream joins the same trace.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

_TRACEPARENT = re.compile(
    r"^(?P<version>[0-9a-f]{2})-(?P<trace_id>[0-9a-f]{32})-"
    r"(?P<span_id>[0-9a-f]{16})-(?P<flags>[0-9a-f]{2})(?:-.*)?$"
)
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_INVALID_TRACE_ID = "0" * 32
_INVALID_SPAN_ID = "0" * 16


def new_trace_id() -> str:
    return secrets.token_hex(16)


def new_span_id() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class SpanContext:
    """The span a piece of work runs in, and the span it continues."""

    trace_id: str
    span_id: str
    parent_span_id: str | None = None
    flags: str = "01"

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def parse_traceparent(value: str) -> tuple[str, str, str] | None:
    """``(trace_id, parent_span_id, flags)`` of a valid traceparent, else None."""
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None or match["version"] == "ff":
        return None
    if match["trace_id"] == _INVALID_TRACE_ID or match["span_id"] == _INVALID_SPAN_ID:
        return None
    return match["trace_id"], match["span_id"], match["flags"]


def child_span(traceparent: str, fallback_trace_id: str = "") -> SpanContext:
    """A new span continuing ``traceparent``.

    Without a valid traceparent the job record's ``trace_id`` is kept when it
    is one; only when both are missing does the attempt start a new trace.
    """
    parsed = parse_traceparent(traceparent)
    if parsed is not None:
        trace_id, parent, flags = parsed
        return SpanContext(trace_id, new_span_id(), parent, flags)
    fallback = fallback_trace_id.strip().lower()
    trace_id = fallback if _TRACE_ID.match(fallback) and fallback != _INVALID_TRACE_ID else ""
    return SpanContext(trace_id or new_trace_id(), new_span_id())
