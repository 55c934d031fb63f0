"""Where finished spans go: OTLP over HTTP, and/or a JSON-lines span file.

- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``):
  the OTLP/HTTP exporter behind a ``BatchSpanProcessor`` (spans leave in
  batches off the job's thread; what is pending is flushed at shutdown).
  The exporter's other ``OTEL_EXPORTER_OTLP_*`` settings (headers, timeout,
  compression) are read by the exporter itself.
- ``JOBGATE_SPAN_FILE=<path>``: every finished span appended as one JSON line
  (format in ``span_line``), written when the span ends, so that a test can
  read a trace as soon as the job's events are out. Several processes (the
  worker and its Dask worker processes) may append to one file: each write
  is one ``O_APPEND`` system call of whole lines.

The OTLP exporter (protobuf, HTTP client) is imported only when configured.
This module knows nothing of ``tracing``, which builds its processors from
here: the service name is passed in.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

log = logging.getLogger(__name__)


def span_line(span: ReadableSpan, service: str) -> dict[str, Any]:
    """One span as the span file holds it (ids in lower-case hex, times in ns since the epoch).

    ``{"trace_id", "span_id", "parent_span_id" (null for a root span), "name",
    "kind" ("internal", "server", "client", "producer" or "consumer"),
    "start_ns", "end_ns", "attributes": {...}, "service"}``
    """
    context = span.get_span_context()
    parent = span.parent
    return {
        "trace_id": f"{context.trace_id:032x}" if context is not None else None,
        "span_id": f"{context.span_id:016x}" if context is not None else None,
        "parent_span_id": f"{parent.span_id:016x}" if parent is not None else None,
        "name": span.name,
        "kind": span.kind.name.lower(),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "attributes": dict(span.attributes or {}),
        "service": service,
    }


class SpanFileExporter(SpanExporter):
    """Appends each finished span to ``path`` as one JSON line, naming ``service``."""

    def __init__(self, path: str, service: str) -> None:
        self.path = path
        self.service = service
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._closed = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        data = "".join(
            json.dumps(span_line(span, self.service), separators=(",", ":"), default=str) + "\n"
            for span in spans
        ).encode()
        with self._lock:
            if self._closed:
                return SpanExportResult.FAILURE
            try:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                written = os.write(self._fd, data)
                while written < len(data):
                    written += os.write(self._fd, data[written:])
            except OSError:
                log.warning("could not write spans", exc_info=True, extra={"path": self.path})
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def span_processors(
    *, otlp_traces_endpoint: str | None, span_file: str | None, service: str
) -> list[SpanProcessor]:
    """The processors the configuration asks for (none: spans are not recorded)."""
    processors: list[SpanProcessor] = []
    if otlp_traces_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        processors.append(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_traces_endpoint)))
    if span_file:
        processors.append(SimpleSpanProcessor(SpanFileExporter(span_file, service)))
    return processors
