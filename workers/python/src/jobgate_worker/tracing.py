"""Spans: OpenTelemetry when they are exported, span ids alone when they are not.

The job's W3C ``traceparent``/``tracestate`` (the gateway's producer span)
is the *parent* of each attempt's consumer span, whose id names the attempt
in log lines and in ``ctx.traceparent``; Dask tasks and event publication
get spans of their own below it.

``Telemetry`` is what the SDK starts spans with. With span processors (OTLP,
``JOBGATE_SPAN_FILE``, or the in-memory exporter of the tests) it is an
OpenTelemetry ``TracerProvider``. Without any it records nothing: ``span()``
still gives the work a span id of its own (a ``NonRecordingSpan``, so log
lines and downstream calls name the right span) and ``optional_span()`` does
nothing at all — the echo path pays a few microseconds, not a span pipeline.

Each process has one installed ``Telemetry`` (``install``); a Dask task run
in a process where none was installed (a Dask worker process) builds one
from the environment the first time it needs it.
"""

from __future__ import annotations

import contextvars
import os
import random
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from .span_export import span_processors

SERVICE = "jobgate-worker"
#: Environment variables that configure span export (see ``span_export``).
OTLP_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTLP_TRACES_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
SPAN_FILE_ENV = "JOBGATE_SPAN_FILE"

Attributes = Mapping[str, AttributeValue]

_TRACEPARENT = re.compile(
    r"^(?P<version>[0-9a-f]{2})-(?P<trace_id>[0-9a-f]{32})-"
    r"(?P<span_id>[0-9a-f]{16})-(?P<flags>[0-9a-f]{2})(?:-.*)?$"
)
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_INVALID_TRACE_ID = "0" * 32
_INVALID_SPAN_ID = "0" * 16
#: The empty context: a span started in it is a root span, whatever is current.
_ROOT = otel_context.Context()


def new_trace_id() -> str:
    return f"{_random_bits(128):032x}"


def new_span_id() -> str:
    return f"{_random_bits(64):016x}"


def _random_bits(bits: int) -> int:
    value = random.getrandbits(bits)
    while value == 0:
        value = random.getrandbits(bits)
    return value


@dataclass(frozen=True, slots=True)
class SpanContext:
    """A span as hex ids: what ``ctx.span`` and the log lines show."""

    trace_id: str
    span_id: str
    parent_span_id: str | None = None
    flags: str = "01"

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    @classmethod
    def of(cls, span: trace.Span, parent: trace.SpanContext | None) -> SpanContext:
        context = span.get_span_context()
        return cls(
            trace_id=f"{context.trace_id:032x}",
            span_id=f"{context.span_id:016x}",
            parent_span_id=f"{parent.span_id:016x}" if parent is not None else None,
            flags=f"{int(context.trace_flags):02x}",
        )


def parse_traceparent(value: str) -> tuple[str, str, str] | None:
    """``(trace_id, parent_span_id, flags)`` of a valid traceparent, else None."""
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None or match["version"] == "ff":
        return None
    if match["trace_id"] == _INVALID_TRACE_ID or match["span_id"] == _INVALID_SPAN_ID:
        return None
    return match["trace_id"], match["span_id"], match["flags"]


def remote_parent(traceparent: str, tracestate: str = "") -> trace.SpanContext | None:
    """The span a W3C ``traceparent`` names (with its ``tracestate``), or None if invalid."""
    parsed = parse_traceparent(traceparent)
    if parsed is None:
        return None
    trace_id, span_id, flags = parsed
    state = trace.TraceState.from_header([tracestate]) if tracestate.strip() else None
    return trace.SpanContext(
        int(trace_id, 16),
        int(span_id, 16),
        is_remote=True,
        trace_flags=trace.TraceFlags(int(flags, 16)),
        trace_state=state,
    )


def valid_trace_id(value: str) -> str | None:
    """``value`` as a lower-case trace id if it is a valid one."""
    value = value.strip().lower()
    return value if _TRACE_ID.match(value) and value != _INVALID_TRACE_ID else None


def traceparent_of(span_context: trace.SpanContext) -> str:
    return (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
        f"{int(span_context.trace_flags):02x}"
    )


def tracestate_of(span_context: trace.SpanContext) -> str:
    return span_context.trace_state.to_header() if span_context.trace_state else ""


#: A trace id the next root span must use (the job record's, when its
#: traceparent was unusable), read by ``_JobIdGenerator``.
_forced_trace_id: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "jobgate_forced_trace_id", default=None
)


class _JobIdGenerator(RandomIdGenerator):
    """Random ids, except that a root span may be told which trace it belongs to."""

    def generate_trace_id(self) -> int:
        forced = _forced_trace_id.get()
        return forced if forced is not None else super().generate_trace_id()


class Telemetry:
    """Starts this process's spans; records and exports them only with processors."""

    def __init__(
        self,
        processors: Sequence[SpanProcessor] = (),
        *,
        service: str = SERVICE,
        shutdown_on_exit: bool = False,
    ) -> None:
        self.provider: TracerProvider | None = None
        self._tracer: trace.Tracer | None = None
        if processors:
            self.provider = TracerProvider(
                resource=Resource.create({"service.name": service}),
                id_generator=_JobIdGenerator(),
                shutdown_on_exit=shutdown_on_exit,
            )
            for processor in processors:
                self.provider.add_span_processor(processor)
            self._tracer = self.provider.get_tracer("jobgate_worker")

    @classmethod
    def configured(
        cls,
        *,
        otlp_traces_endpoint: str | None = None,
        span_file: str | None = None,
        shutdown_on_exit: bool = False,
    ) -> Telemetry:
        """Exporting over OTLP/HTTP and/or to a span file; without either, recording nothing."""
        processors = span_processors(
            otlp_traces_endpoint=otlp_traces_endpoint, span_file=span_file, service=SERVICE
        )
        return cls(processors, shutdown_on_exit=shutdown_on_exit)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Telemetry:
        """As configured by ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` and ``JOBGATE_SPAN_FILE``."""
        env = os.environ if environ is None else environ
        return cls.configured(
            otlp_traces_endpoint=otlp_traces_endpoint(env),
            span_file=env.get(SPAN_FILE_ENV, "").strip() or None,
            shutdown_on_exit=True,
        )

    @property
    def enabled(self) -> bool:
        """True when spans are recorded and exported."""
        return self._tracer is not None

    @contextmanager
    def span(
        self,
        name: str,
        *,
        kind: SpanKind,
        parent: trace.SpanContext | None,
        attributes: Attributes | None = None,
        start_time: int | None = None,
        trace_id: str | None = None,
    ) -> Iterator[trace.Span]:
        """A span with an id of its own, current in this thread until exit.

        ``parent`` None (or invalid) starts a new trace: ``trace_id`` when it is
        given, a random one otherwise. An exception leaving the block is
        recorded on the span and marks it as an error.
        """
        if parent is not None and not parent.is_valid:
            parent = None
        if self._tracer is None:
            current: trace.Span = NonRecordingSpan(_unrecorded_child(parent, trace_id))
            attached = otel_context.attach(trace.set_span_in_context(current, _ROOT))
        else:
            parent_context = (
                _ROOT
                if parent is None
                else trace.set_span_in_context(NonRecordingSpan(parent), _ROOT)
            )
            forced = int(trace_id, 16) if parent is None and trace_id else None
            token = _forced_trace_id.set(forced)
            try:
                current = self._tracer.start_span(
                    name,
                    context=parent_context,
                    kind=kind,
                    attributes=attributes,
                    start_time=start_time,
                    record_exception=False,
                    set_status_on_exception=False,
                )
            finally:
                _forced_trace_id.reset(token)
            attached = otel_context.attach(trace.set_span_in_context(current, parent_context))
        try:
            yield current
        except BaseException as error:
            mark_error(current, type(error).__name__, error)
            raise
        finally:
            otel_context.detach(attached)
            current.end()

    @contextmanager
    def optional_span(
        self,
        name: str,
        *,
        kind: SpanKind,
        parent: trace.SpanContext | None,
        attributes: Callable[[], Attributes],
    ) -> Iterator[trace.Span | None]:
        """A recorded span when spans are exported; otherwise nothing, at no cost.

        For short steps whose id nobody needs when nothing is recorded (event
        publication). ``attributes`` is only called when the span is recorded.
        """
        if self._tracer is None:
            yield None
            return
        with self.span(name, kind=kind, parent=parent, attributes=attributes()) as current:
            yield current

    def force_flush(self, timeout_s: float = 5.0) -> bool:
        if self.provider is None:
            return True
        return self.provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Export what is pending and stop (spans started later are not recorded)."""
        if self.provider is not None:
            self.provider.shutdown()


def _unrecorded_child(parent: trace.SpanContext | None, trace_id: str | None) -> trace.SpanContext:
    """The ids of a span nobody records: the parent's trace (and flags), a new span id."""
    if parent is not None:
        return trace.SpanContext(
            parent.trace_id,
            _random_bits(64),
            is_remote=False,
            trace_flags=parent.trace_flags,
            trace_state=parent.trace_state,
        )
    return trace.SpanContext(
        int(trace_id, 16) if trace_id else _random_bits(128),
        _random_bits(64),
        is_remote=False,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )


def mark_error(span: trace.Span, code: str, error: BaseException | None = None) -> None:
    """Record a failure on a span that is still recording (no-op otherwise)."""
    if not span.is_recording():
        return
    if error is not None:
        span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, code))


def set_attributes(span: trace.Span | None, attributes: Attributes) -> None:
    """Add attributes to a span still recording (ended or unrecorded spans are skipped)."""
    if span is not None and span.is_recording():
        span.set_attributes(attributes)


def current_span_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` of the span current in this thread, as hex, if any."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


def otlp_traces_endpoint(environ: Mapping[str, str]) -> str | None:
    """Where OTLP/HTTP spans go: the traces endpoint, or ``<endpoint>/v1/traces``."""
    traces = environ.get(OTLP_TRACES_ENDPOINT_ENV, "").strip()
    if traces:
        return traces
    base = environ.get(OTLP_ENDPOINT_ENV, "").strip()
    return f"{base.rstrip('/')}/v1/traces" if base else None


# -- the process's telemetry.

_installed: Telemetry | None = None
_install_lock = threading.Lock()


def install(telemetry: Telemetry) -> None:
    """Make ``telemetry`` the one Dask tasks in this process record their spans with."""
    global _installed  # noqa: PLW0603 - one telemetry per process, like logging's root
    with _install_lock:
        _installed = telemetry


def uninstall(telemetry: Telemetry) -> None:
    """Forget ``telemetry`` if it is the installed one (its runtime has stopped)."""
    global _installed  # noqa: PLW0603
    with _install_lock:
        if _installed is telemetry:
            _installed = None


def process_telemetry() -> Telemetry:
    """The installed telemetry; in a process without one, one built from the environment."""
    global _installed  # noqa: PLW0603
    telemetry = _installed
    if telemetry is not None:
        return telemetry
    with _install_lock:
        if _installed is None:
            # Exports what is pending when the process exits (shutdown_on_exit).
            _installed = Telemetry.from_env()
        return _installed
