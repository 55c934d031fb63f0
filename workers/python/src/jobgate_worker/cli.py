"""``jobgate-worker module:attr``: import a ``Worker`` and run it.

Like uvicorn, the current directory is put first on ``sys.path`` so that
``jobgate-worker examples.pricing:worker`` works from the repository root.
Options override the ``JOBGATE_*`` environment (see ``settings.py``).

The process owns its telemetry: with ``JOBGATE_FLUENTD_ADDR`` its log records
are forwarded to Fluentd (flushed within ``FLUENTD_FLUSH_S`` at exit, with a
last line counting what was forwarded and dropped), and the spans the runtime
exports also back OpenTelemetry's global tracer, so spans a handler opens
with the OpenTelemetry API join the job's trace.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import sys
import threading
from collections.abc import Sequence

from opentelemetry import trace

from .errors import ScriptNotFoundError
from .fluentd import FluentForwarder
from .logs import configure_logging, forward_to_fluentd, stop_forwarding
from .runtime import Runtime
from .settings import Settings, SettingsError
from .worker import Worker

log = logging.getLogger("jobgate_worker")

#: Longest the exit waits for Fluentd to take the last log records.
FLUENTD_FLUSH_S = 2.0

#: The young generation's collection threshold the worker runs with (Python
#: 3.11's default is 700 allocations). An attempt leaves no reference cycle
#: behind (its objects are freed by reference counting), so the collector
#: finds little; at 700 it still ran several times per hundred jobs and took
#: about 4 % of a busy worker's time, at 10,000 about 1 %.
GEN0_THRESHOLD = 10_000

#: The thresholds before the application's module was imported.
_INTERPRETER_THRESHOLDS = gc.get_threshold()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="jobgate-worker",
        description="Run the job handlers of a jobgate Worker (module:attribute).",
    )
    parser.add_argument(
        "app", help="the Worker to run, as module:attribute (e.g. examples.pricing:worker)"
    )
    parser.add_argument(
        "--concurrency", type=int, help="handler threads (default 4, $JOBGATE_CONCURRENCY)"
    )
    parser.add_argument("--consumer", help="consumer name in the group (default hostname-pid)")
    parser.add_argument("--queue", help="consume this queue instead of the Worker's own")
    parser.add_argument(
        "--lease-ms", type=int, help="lease in ms (default 10000, $JOBGATE_LEASE_MS)"
    )
    parser.add_argument(
        "--grace-s", type=float, help="shutdown grace in s (default 30, $JOBGATE_GRACE_S)"
    )
    parser.add_argument(
        "--redis-url",
        help="Redis URL, or comma-separated seed URLs of a Redis Cluster"
        " (default $JOBGATE_REDIS_URL or redis://127.0.0.1:6379)",
    )
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    return parser.parse_args(argv)


def load_worker(app: str) -> Worker:
    """Import ``module:attr`` (attr may be dotted) and check it is a Worker."""
    module_name, _, attribute = app.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"jobgate-worker: expected module:attribute, got {app!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    target: object = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    if not isinstance(target, Worker):
        raise SystemExit(
            f"jobgate-worker: {app} is a {type(target).__name__}, not a jobgate_worker.Worker"
        )
    return target


def _run(app: str, settings: Settings) -> int:
    try:
        worker = load_worker(app)
    except (ImportError, AttributeError):
        log.exception("cannot load %s", app)
        return 2
    try:
        runtime = Runtime(worker, settings)
    except ScriptNotFoundError as error:
        log.error("cannot start: %s", error)  # noqa: TRY400 - the message says it all
        return 2
    if runtime.telemetry.provider is not None:
        trace.set_tracer_provider(runtime.telemetry.provider)
    tune_collector(_INTERPRETER_THRESHOLDS)
    return runtime.run(install_signal_handlers=True)


def tune_collector(before: tuple[int, ...]) -> None:
    """Set up the garbage collector for a long-running worker.

    Start-up's objects live on: frozen, the collector never scans them again.
    The young generation's threshold is raised to ``GEN0_THRESHOLD``, unless
    the application changed the thresholds (``before`` is what they were
    before its import): then they are its own and stay.
    """
    gc.freeze()
    current = gc.get_threshold()
    if current == before and current[0] < GEN0_THRESHOLD:
        gc.set_threshold(GEN0_THRESHOLD, *current[1:])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    level = (args.log_level or os.environ.get("JOBGATE_LOG_LEVEL") or "INFO").upper()
    configure_logging("WARNING" if level == "WARN" else level)
    try:
        settings = Settings.from_env(
            concurrency=args.concurrency,
            consumer=args.consumer,
            queue=args.queue,
            lease_ms=args.lease_ms,
            grace_s=args.grace_s,
            redis_url=args.redis_url,
            log_level=level,
        )
    except SettingsError as error:
        log.error("invalid configuration: %s", error)  # noqa: TRY400 - no traceback wanted
        return 2
    forwarder: FluentForwarder | None = None
    if settings.fluentd_address:
        forwarder = forward_to_fluentd(
            settings.fluentd_address, max_buffered=settings.fluentd_buffer
        )
    try:
        code = _run(args.app, settings)
    finally:
        if forwarder is not None:
            stop_forwarding(forwarder, FLUENTD_FLUSH_S)
    logging.shutdown()
    busy = [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
    if any(t.name.startswith("jobgate-handler") for t in busy):
        # A handler that ignored the stop still runs; its job was given back
        # (or, with Redis unreachable, its entry stays pending to be reclaimed).
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
