"""Dask preload: a Dask worker process that logs and traces like the jobgate worker.

``jobgate-worker`` uses it for its local worker processes
(``JOBGATE_DASK_PROCESSES=true``); a separate Dask cluster opts in with::

    dask worker <scheduler> --preload jobgate_worker.dask_preload

It reads the worker's environment variables: ``JOBGATE_LOG_LEVEL`` (JSON
lines on stderr), ``JOBGATE_FLUENTD_ADDR`` (Forward-protocol forwarding),
``OTEL_EXPORTER_OTLP_ENDPOINT`` and ``JOBGATE_SPAN_FILE`` (span export).
Task spans and log lines get their trace context from the task itself (see
``dask_support.TracedCall``), not from this process.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .fluentd import FluentForwarder
from .logs import configure_logging, forward_to_fluentd, stop_forwarding
from .tracing import Telemetry, install

log = logging.getLogger("jobgate_worker.dask")

_forwarder: FluentForwarder | None = None
_telemetry: Telemetry | None = None


def dask_setup(worker: Any) -> None:
    """Called by Dask in the worker process before it runs any task."""
    global _forwarder, _telemetry  # noqa: PLW0603 - one setup per process
    level = os.environ.get("JOBGATE_LOG_LEVEL", "INFO").strip().upper() or "INFO"
    configure_logging("WARNING" if level == "WARN" else level)
    address = os.environ.get("JOBGATE_FLUENTD_ADDR", "").strip()
    if address:
        try:
            _forwarder = forward_to_fluentd(address)
        except ValueError:
            log.exception("JOBGATE_FLUENTD_ADDR is invalid; logs are not forwarded")
    _telemetry = Telemetry.from_env()
    install(_telemetry)


def dask_teardown(worker: Any) -> None:
    """Called by Dask when the worker process closes: export and forward what is left."""
    if _telemetry is not None:
        _telemetry.force_flush(2.0)
    if _forwarder is not None:
        stop_forwarding(_forwarder, 2.0)
