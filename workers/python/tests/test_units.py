"""Small parts on their own: scheduler, progress coalescing, trace context, logs, settings."""

from __future__ import annotations

import io
import json
import logging
import threading
import time

import pytest

import sample_app
from conftest import REPO_ROOT
from jobgate_worker import Settings, Worker
from jobgate_worker.context import ProgressReporter
from jobgate_worker.dask_support import TracedCall
from jobgate_worker.errors import ScriptNotFoundError
from jobgate_worker.execution import JobExecutor, error_message
from jobgate_worker.logs import JsonFormatter, LogContext, bound, current_context
from jobgate_worker.scheduler import Scheduler
from jobgate_worker.script import find_script
from jobgate_worker.settings import SettingsError
from jobgate_worker.tracing import child_span, parse_traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


@pytest.fixture
def scheduler():
    scheduler = Scheduler()
    scheduler.start()
    yield scheduler
    scheduler.stop()


def test_scheduler_runs_in_order_and_skips_cancelled(scheduler):
    seen = []
    done = threading.Event()
    scheduler.call_later(0.06, lambda: seen.append("late"))
    cancelled = scheduler.call_later(0.03, lambda: seen.append("cancelled"))
    scheduler.call_later(0.01, lambda: seen.append("early"))
    scheduler.call_later(0.09, done.set)
    cancelled.cancel()
    assert done.wait(2)
    assert seen == ["early", "late"]


def test_scheduler_survives_many_cancelled_timers(scheduler):
    timers = [scheduler.call_later(60, lambda: None) for _ in range(1000)]
    for timer in timers:
        timer.cancel()
    ran = threading.Event()
    scheduler.call_later(0, ran.set)
    assert ran.wait(2)
    assert len(scheduler._heap) < 200


def test_call_every_repeats_until_stopped(scheduler):
    ticks = []
    stop = scheduler.call_every(0.02, lambda: ticks.append(1))
    time.sleep(0.15)
    stop()
    count = len(ticks)
    time.sleep(0.06)
    assert 3 <= count == len(ticks)


def test_progress_reporter_coalesces_and_flushes_latest(scheduler):
    sent = []
    reporter = ProgressReporter(
        lambda payload: sent.append(json.loads(payload)) or True, scheduler, 0.05
    )
    for done in range(1, 20_001):
        reporter.report(done, 20_000, None)
    time.sleep(0.12)
    reporter.report(20_000, 20_000, "last")
    reporter.close(flush=True)
    assert 2 <= len(sent) <= 5
    assert sent[-1] == {"done": 20_000, "total": 20_000, "message": "last"}
    reporter.report(1, 1, None)
    time.sleep(0.06)
    assert sent[-1]["message"] == "last", "nothing is sent after close"


def test_progress_reporter_stops_when_the_job_refuses(scheduler):
    calls = []

    def refuse(payload):
        calls.append(payload)
        return False

    reporter = ProgressReporter(refuse, scheduler, 0.01)
    reporter.report(1, 2, None)
    time.sleep(0.05)
    reporter.report(2, 2, None)
    time.sleep(0.05)
    assert len(calls) == 1


def test_traceparent_parsing_and_child_spans():
    trace, parent, flags = parse_traceparent(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    )
    assert (trace, parent, flags) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01")
    assert parse_traceparent("00-" + "0" * 32 + "-00f067aa0ba902b7-01") is None
    assert parse_traceparent("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") is None
    assert parse_traceparent("garbage") is None
    span = child_span(f"00-{TRACE}-{SPAN}-01")
    assert span.trace_id == TRACE
    assert span.parent_span_id == SPAN
    assert span.span_id != span.parent_span_id
    assert span.traceparent.startswith(f"00-{TRACE}-")
    fallback = child_span("", "0af7651916cd43dd8448eb211c80319c")
    assert fallback.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert len(child_span("", "").trace_id) == 32


def _format(record_args, **extra):
    formatter = JsonFormatter()
    record = logging.LogRecord("jobgate_worker.test", *record_args)
    for key, value in extra.items():
        setattr(record, key, value)
    return json.loads(formatter.format(record))


def test_json_formatter_fields_and_context():
    line = _format((logging.WARNING, __file__, 1, "hello %s", ("world",), None), step=3)
    assert line["message"] == "hello world"
    assert line["level"] == "warn"
    assert line["service"] == "jobgate-worker"
    assert line["timestamp"].endswith("Z")
    assert len(line["timestamp"]) == len("2026-01-01T00:00:00.000Z")
    assert len(line["trace_id"]) == 32
    assert len(line["span_id"]) == 16
    assert line["step"] == 3
    assert "job_id" not in line
    context = LogContext(
        "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "job-1", {"attempt": 2}
    )
    with bound(context):
        line = _format((logging.INFO, __file__, 1, "in a job", (), None))
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert line["span_id"] == "00f067aa0ba902b7"
    assert line["job_id"] == "job-1"
    assert line["attempt"] == 2
    assert current_context() is None


def test_json_formatter_exceptions_stay_on_one_line():
    error = ValueError("bad\nthing")
    exc_info = (ValueError, error, None)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("jobgate_worker.test.exc")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("failed", exc_info=exc_info)
    finally:
        logger.removeHandler(handler)
    [raw] = stream.getvalue().splitlines()
    line = json.loads(raw)
    assert line["level"] == "error"
    assert "ValueError: bad" in line["exception"]


def test_traced_call_carries_the_job_context_into_tasks():
    call = TracedCall(
        current_context, "job-9", 1, "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    )
    context = call()
    assert context is not None
    assert context.job_id == "job-9"
    assert context.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert call.__name__ == "current_context"
    assert current_context() is None


def test_error_message_names_the_exception_type():
    assert error_message(ValueError("spot must be positive")) == "ValueError: spot must be positive"
    assert error_message(KeyError("spot")) == "KeyError: 'spot'"
    assert error_message(RuntimeError()) == "RuntimeError"


def test_backoff_grows_exponentially_with_jitter():
    executor = JobExecutor.__new__(JobExecutor)
    executor.worker = Worker(retry_base_delay=1.0, retry_max_delay=10.0)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (6, 10.0)]:
        delays = [executor.backoff_s(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, delays)
        assert len(set(delays)) > 1


def test_settings_from_env_and_validation():
    settings = Settings.from_env(
        {"JOBGATE_REDIS_URL": "redis://h:1", "JOBGATE_LEASE_MS": "900", "JOBGATE_CONCURRENCY": "2"},
        consumer="c1",
        concurrency=None,
    )
    assert settings.redis_url == "redis://h:1"
    assert settings.lease_ms == 900
    assert settings.concurrency == 2
    assert settings.consumer == "c1"
    assert settings.lease_renew_interval_s == pytest.approx(0.3)
    assert Settings.from_env({}).consumer.endswith(f"-{__import__('os').getpid()}")
    with pytest.raises(SettingsError, match="JOBGATE_LEASE_MS"):
        Settings.from_env({"JOBGATE_LEASE_MS": "soon"})
    with pytest.raises(SettingsError, match="concurrency"):
        Settings(concurrency=0).validated()
    with pytest.raises(SettingsError, match="redis"):
        Settings(redis_url="http://x").validated()


def test_script_is_found_in_the_repo_or_through_the_env(tmp_path, monkeypatch):
    assert find_script() == REPO_ROOT / "proto-schemas" / "redis" / "jobgate.lua"
    (tmp_path / "redis").mkdir()
    (tmp_path / "redis" / "jobgate.lua").write_text("return 1")
    monkeypatch.setenv("JOBGATE_PROTO_DIR", str(tmp_path))
    assert find_script() == tmp_path / "redis" / "jobgate.lua"
    monkeypatch.setenv("JOBGATE_PROTO_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ScriptNotFoundError):
        find_script()


def test_worker_registry_rejects_bad_names_and_duplicates():
    worker = Worker()
    worker.job("a")(sample_app.echo)
    with pytest.raises(ValueError, match="already"):
        worker.job("a")(sample_app.echo)
    with pytest.raises(ValueError, match="kind"):
        worker.job("has space")
    with pytest.raises(ValueError, match="queue"):
        Worker(queue="{bad}")
    assert set(worker.handlers) == {"a"}
