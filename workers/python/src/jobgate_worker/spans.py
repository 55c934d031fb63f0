"""The spans of one attempt, per the OpenTelemetry messaging semantic conventions.

- ``process <queue>`` (CONSUMER): one per attempt, from ``start`` to the
  acknowledgement. Its **parent** is the gateway's producer span, named by
  the job's ``traceparent`` (job record first, queue entry second). Parented,
  not linked: one job is one trace and has exactly one producer (the submit),
  so every attempt — a retry, an entry reclaimed from a dead worker — is one
  more child of the same producer span, and the whole job reads as one tree.
  Links are for a consumer span fed by *several* producers (batch receive),
  which never happens here.
- ``publish <event>`` (PRODUCER): writing one event (``progress``,
  ``completed``, ``failed``, ``cancelled``, ``retrying``) through the job
  script, which stores it and publishes it to the job's live channel. Child
  of the consumer span, also when written on the timer thread (progress,
  cancel, timeout). Recorded only when spans are exported.
- ``dask.task <function>`` (INTERNAL): see ``dask_support.TracedCall``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from . import keys
from .script import StartedJob
from .streams import Entry
from .tracing import (
    Attributes,
    SpanContext,
    Telemetry,
    mark_error,
    remote_parent,
    set_attributes,
    valid_trace_id,
)


class AttemptSpans:
    """Starts the spans of attempts consumed from one queue by one consumer."""

    def __init__(self, telemetry: Telemetry, queue: str, consumer: str) -> None:
        self.telemetry = telemetry
        self.queue = queue
        self.consumer = consumer

    @contextmanager
    def process(
        self, entry: Entry, started: StartedJob, start_ns: int
    ) -> Iterator[tuple[trace.Span, SpanContext]]:
        """The attempt's consumer span, current in this thread; also as hex ids."""
        parent = remote_parent(started.traceparent, started.tracestate) or remote_parent(
            entry.fields.get("traceparent", ""), entry.fields.get("tracestate", "")
        )
        attributes: Attributes | None = None
        if self.telemetry.enabled:
            attributes = {
                "messaging.system": "redis",
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": entry.stream,
                "messaging.message.id": entry.entry_id,
                "messaging.consumer.group.name": keys.CONSUMER_GROUP,
                "messaging.client.id": self.consumer,
                "jobgate.job.id": entry.job_id,
                "jobgate.job.kind": started.kind,
                "jobgate.job.attempt": started.attempt,
            }
        with self.telemetry.span(
            f"process {self.queue}",
            kind=SpanKind.CONSUMER,
            parent=parent,
            attributes=attributes,
            start_time=start_ns,
            # No usable traceparent: the attempt still joins the record's trace id.
            trace_id=valid_trace_id(started.trace_id),
        ) as span:
            yield span, SpanContext.of(span, parent)

    def publish(
        self, parent: trace.SpanContext | None, job_id: str, event: str
    ) -> AbstractContextManager[trace.Span | None]:
        """The span of writing one event of the job (nothing when spans are not exported)."""
        return self.telemetry.optional_span(
            f"publish {event}",
            kind=SpanKind.PRODUCER,
            parent=parent,
            attributes=lambda: {
                "messaging.system": "redis",
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
                "messaging.destination.name": keys.live_job_channel(job_id),
                "jobgate.job.id": job_id,
                "jobgate.event": event,
            },
        )

    @staticmethod
    def outcome(
        span: trace.Span | None,
        outcome: str,
        code: str | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Note how the attempt ended on its consumer span (an error code marks it failed)."""
        if span is None or not span.is_recording():
            return
        set_attributes(span, {"jobgate.job.outcome": outcome})
        if code is not None:
            set_attributes(span, {"error.type": code})
            mark_error(span, code, error)
