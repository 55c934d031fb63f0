"""Small parts on their own: scheduler, progress coalescing, trace context, logs, settings."""

from __future__ import annotations

import gc
import io
import json
import logging
import pickle
import threading
import time

import pytest
from opentelemetry.trace import SpanKind

import sample_app
from conftest import REPO_ROOT
from jobgate_worker import Settings, Worker
from jobgate_worker.cli import GEN0_THRESHOLD, tune_collector
from jobgate_worker.context import ProgressReporter
from jobgate_worker.dask_support import TracedCall
from jobgate_worker.errors import ScriptNotFoundError
from jobgate_worker.logs import JsonFormatter, LogContext, bound, current_context
from jobgate_worker.scheduler import Scheduler
from jobgate_worker.script import find_script
from jobgate_worker.settings import SettingsError
from jobgate_worker.tracing import Telemetry, parse_traceparent, remote_parent

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
    parent = remote_parent(f"00-{TRACE}-{SPAN}-01", "vendor=abc")
    assert parent is not None
    assert parent.is_remote
    assert f"{parent.trace_id:032x}" == TRACE
    assert f"{parent.span_id:016x}" == SPAN
    assert parent.trace_state.to_header() == "vendor=abc"
    assert remote_parent("garbage") is None


def test_spans_without_export_still_get_ids_of_their_own():
    telemetry = Telemetry()
    assert not telemetry.enabled
    parent = remote_parent(f"00-{TRACE}-{SPAN}-01")
    with telemetry.span("work", kind=SpanKind.CONSUMER, parent=parent) as span:
        ids = span.get_span_context()
        assert not span.is_recording()
        assert f"{ids.trace_id:032x}" == TRACE
        assert f"{ids.span_id:016x}" not in (SPAN, "0" * 16)
        assert ids.trace_flags.sampled
        line = _format((logging.INFO, __file__, 1, "in the span", (), None))
        assert (line["trace_id"], line["span_id"]) == (TRACE, f"{ids.span_id:016x}")
    fallback = "0af7651916cd43dd8448eb211c80319c"
    with telemetry.span("root", kind=SpanKind.INTERNAL, parent=None, trace_id=fallback) as span:
        assert f"{span.get_span_context().trace_id:032x}" == fallback
    with telemetry.span("new", kind=SpanKind.INTERNAL, parent=None) as span:
        assert span.get_span_context().is_valid
    with telemetry.optional_span(
        "skipped", kind=SpanKind.PRODUCER, parent=parent, attributes=lambda: 1 / 0
    ) as nothing:
        assert nothing is None


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
    call = TracedCall(current_context, "job-9", 1, f"00-{TRACE}-{SPAN}-01")
    restored = pickle.loads(pickle.dumps(call))  # noqa: S301 - our own bytes
    context = restored()
    assert context is not None
    assert context.job_id == "job-9"
    assert context.trace_id == TRACE
    assert context.span_id != SPAN, "the task runs in a span of its own"
    assert call.__name__ == "current_context"
    assert current_context() is None


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


def test_telemetry_settings_from_env():
    settings = Settings.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
            "JOBGATE_SPAN_FILE": "/tmp/spans.jsonl",
            "JOBGATE_FLUENTD_ADDR": "fluentd:24224",
            "JOBGATE_FLUENTD_BUFFER": "500",
        }
    )
    assert settings.otlp_traces_endpoint == "http://collector:4318/v1/traces"
    assert settings.span_file == "/tmp/spans.jsonl"
    assert (settings.fluentd_address, settings.fluentd_buffer) == ("fluentd:24224", 500)
    traces_only = Settings.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces.example/v1/spans",
        }
    )
    assert traces_only.otlp_traces_endpoint == "https://traces.example/v1/spans"
    assert Settings.from_env({}).otlp_traces_endpoint is None
    with pytest.raises(SettingsError, match="JOBGATE_FLUENTD_ADDR"):
        Settings.from_env({"JOBGATE_FLUENTD_ADDR": "fluentd:port"})
    with pytest.raises(SettingsError, match="OTEL_EXPORTER_OTLP_ENDPOINT"):
        Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"})


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


@pytest.fixture
def collector_state():
    """Leaves the collector's thresholds and frozen objects as they were."""
    thresholds = gc.get_threshold()
    yield thresholds
    gc.set_threshold(*thresholds)
    gc.unfreeze()


def test_the_worker_raises_the_young_generation_threshold(collector_state):
    gc.set_threshold(700, 10, 10)
    tune_collector((700, 10, 10))
    assert gc.get_threshold() == (GEN0_THRESHOLD, 10, 10)
    assert gc.get_freeze_count() > 0


def test_thresholds_the_application_set_are_kept(collector_state):
    gc.set_threshold(500, 5, 5)  # as if the application's import had set them
    tune_collector((700, 10, 10))
    assert gc.get_threshold() == (500, 5, 5)
