"""JSON log lines with the job's trace context, one object per line on stderr.

Every line carries ``timestamp`` (RFC 3339, UTC, milliseconds), ``level``,
``message``, ``service``, ``trace_id``, ``span_id`` and, when known, ``job_id``:
the same fields the gateway writes, so Fluentd joins both on ``trace_id``.
Extra fields given as ``logger.info("...", extra={...})`` become top-level keys.

``trace_id``/``span_id`` name the span current in the logging thread: the
attempt's consumer span in a handler, the task's span inside a Dask task, a
span the handler opened itself. Without a current span they come from the job
context the SDK bound to the thread (or that ``ctx.logger`` carries), and
otherwise from the worker process's own lifecycle trace, so that every line
has a valid pair. Fields given with ``extra`` override all of these.

With ``JOBGATE_FLUENTD_ADDR`` set, ``forward_to_fluentd`` also sends every
record to Fluentd (see ``fluentd.py``); ``stop_forwarding`` flushes it within
a bounded time at shutdown and logs what was forwarded and dropped.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from .fluentd import FluentForwarder, FluentHandler, ForwarderStats, parse_address
from .tracing import SERVICE, SpanContext, current_span_ids, new_span_id, new_trace_id

#: The worker process's own trace: lines logged outside any job use it.
PROCESS_SPAN = SpanContext(new_trace_id(), new_span_id())

#: The four level words of proto-schemas/schemas/log_line.json.
_LEVELS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}


def _level(levelno: int) -> str:
    if levelno in _LEVELS:
        return _LEVELS[levelno]
    if levelno < logging.INFO:
        return "debug"
    if levelno < logging.WARNING:
        return "info"
    return "warn" if levelno < logging.ERROR else "error"


_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
#: Where a record keeps the object it was rendered as (for the next handler).
_LINE_ATTRIBUTE = "_jobgate_line"
#: A job context carried by the record itself (``ctx.logger``), used when the
#: logging thread has none bound.
CONTEXT_ATTRIBUTE = "_jobgate_context"


@dataclass(frozen=True, slots=True)
class LogContext:
    """Fields every line logged while running one job carries."""

    trace_id: str
    span_id: str
    job_id: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)

    def as_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"trace_id": self.trace_id, "span_id": self.span_id}
        if self.job_id is not None:
            extra["job_id"] = self.job_id
        extra.update(self.fields)
        return extra


_current: contextvars.ContextVar[LogContext | None] = contextvars.ContextVar(
    "jobgate_log_context", default=None
)


@contextmanager
def bound(context: LogContext) -> Iterator[None]:
    """Attach ``context`` to every line logged in this thread until exit."""
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)


def current_context() -> LogContext | None:
    return _current.get()


#: The last whole second formatted, and its text: lines come many a second.
_last_second: tuple[int, str] = (-1, "")


def _timestamp(created: float) -> str:
    global _last_second  # noqa: PLW0603 - a one-entry cache; a race only recomputes it
    second = int(created)
    cached_second, prefix = _last_second
    if second != cached_second:
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _last_second = (second, prefix)
    millis = int((created - second) * 1000)
    return f"{prefix}{millis:03d}Z"


#: One encoder for every line (``json.dumps`` with options builds a new one per call).
_encode = json.JSONEncoder(default=str, ensure_ascii=False).encode


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object (no newlines inside)."""

    def __init__(self, service: str = SERVICE) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        return _encode(self.as_dict(record))

    def as_dict(self, record: logging.LogRecord) -> dict[str, Any]:
        """The line as an object (computed once per record, whichever handler asks first)."""
        cached = record.__dict__.get(_LINE_ATTRIBUTE)
        if cached is not None and cached["service"] == self.service:
            return cached  # type: ignore[no-any-return]
        line: dict[str, Any] = {
            "timestamp": _timestamp(record.created),
            "level": _level(record.levelno),
            "message": record.getMessage(),
            "service": self.service,
        }
        context = _current.get() or record.__dict__.get(CONTEXT_ATTRIBUTE)
        ids = current_span_ids()
        if ids is not None:
            line["trace_id"], line["span_id"] = ids
        elif context is not None:
            line["trace_id"], line["span_id"] = context.trace_id, context.span_id
        else:
            line["trace_id"], line["span_id"] = PROCESS_SPAN.trace_id, PROCESS_SPAN.span_id
        if context is not None:
            if context.job_id is not None:
                line["job_id"] = context.job_id
            line.update(context.fields)
        line["logger"] = record.name
        line["thread"] = record.threadName
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        record.__dict__[_LINE_ATTRIBUTE] = line
        return line


class _JsonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installed, so configuring twice is harmless."""


#: Libraries that install their own plain-text handlers; their lines are
#: routed through the JSON handler instead.
_ADOPTED_LOGGERS = ("distributed", "dask", "bokeh", "tornado", "tornado.application")


def adopt_library_loggers() -> None:
    """Remove handlers that libraries (Dask) attached, so lines propagate as JSON.

    Dask's own INFO chatter (cluster start-up banners) is kept out unless the
    process logs at DEBUG.
    """
    quiet = logging.getLogger().getEffectiveLevel() > logging.DEBUG
    for name in _ADOPTED_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if not isinstance(handler, _JsonHandler):
                logger.removeHandler(handler)
        logger.propagate = True
        if quiet and name in ("distributed", "dask"):
            logger.setLevel(logging.WARNING)


def configure_logging(level: str | int = "INFO", stream: TextIO | None = None) -> None:
    """Send every log line of the process, as JSON, to ``stream`` (stderr)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = _JsonHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    adopt_library_loggers()
    logging.captureWarnings(True)

    def log_thread_exception(args: threading.ExceptHookArgs) -> None:
        thread = args.thread.name if args.thread is not None else "?"
        logging.getLogger("jobgate_worker").error(
            "uncaught exception in thread %s",
            thread,
            exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
        )

    threading.excepthook = log_thread_exception


def forward_to_fluentd(
    address: str, *, max_buffered: int = 10_000, **options: Any
) -> FluentForwarder:
    """Also send every log record of the process to Fluentd at ``host:port``.

    Call after ``configure_logging``; the handler only queues records (the
    forwarder's thread does the network I/O), so logging never waits on Fluentd.
    """
    host, port = parse_address(address)
    forwarder = FluentForwarder(host, port, max_buffered=max_buffered, **options).start()
    handler = FluentHandler(forwarder, JsonFormatter().as_dict)
    logging.getLogger().addHandler(handler)
    logging.getLogger("jobgate_worker").info(
        "forwarding logs to fluentd", extra={"fluentd": forwarder.address, "tag": forwarder.tag}
    )
    return forwarder


def stop_forwarding(forwarder: FluentForwarder, timeout_s: float = 2.0) -> ForwarderStats:
    """Flush to Fluentd within ``timeout_s``, detach, and log the final counts (stderr only)."""
    root = logging.getLogger()
    stats = forwarder.close(timeout_s)
    for handler in list(root.handlers):
        if isinstance(handler, FluentHandler) and handler.forwarder is forwarder:
            root.removeHandler(handler)
    logging.getLogger("jobgate_worker").log(
        logging.WARNING if stats.dropped or stats.unsent else logging.INFO,
        "log forwarding stopped",
        extra={
            "fluentd": forwarder.address,
            "forwarded": stats.forwarded,
            "dropped": stats.dropped,
            "unsent": stats.unsent,
            "resent": stats.resent,
        },
    )
    return stats
