"""Spans of the worker (in-memory and span-file exporters) and the trace context in logs."""

from __future__ import annotations

import http.server
import json
import logging
import re
import signal
import threading
from typing import Any, ClassVar

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import sample_app
from conftest import REPO_ROOT, assert_contiguous
from fluentd_receiver import ForwardReceiver
from jobgate_worker import keys
from jobgate_worker.logs import JsonFormatter
from jobgate_worker.span_export import SpanFileExporter
from jobgate_worker.streams import QueueStreams
from jobgate_worker.tracing import SERVICE, Telemetry, remote_parent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
#: The gateway's producer span, as the job's traceparent names it.
PRODUCER = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PRODUCER}-01"
SPAN_FILE_KEYS = {
    "trace_id", "span_id", "parent_span_id", "name", "kind",
    "start_ns", "end_ns", "attributes", "service",
}  # fmt: skip


@pytest.fixture
def memory_spans():
    exporter = InMemorySpanExporter()
    telemetry = Telemetry([SimpleSpanProcessor(exporter)])
    yield telemetry, exporter
    telemetry.shutdown()


class _Collector(logging.Handler):
    def __init__(self):
        super().__init__()
        self.formatter_ = JsonFormatter()
        self.lines = []

    def emit(self, record):
        self.lines.append(self.formatter_.as_dict(record))


@pytest.fixture
def log_lines():
    root = logging.getLogger()
    collector = _Collector()
    level = root.level
    root.addHandler(collector)
    root.setLevel(logging.INFO)
    yield collector.lines
    root.removeHandler(collector)
    root.setLevel(level)


def hex_span(span_id):
    return f"{span_id:016x}"


def consumer_spans(spans):
    return [span for span in spans if span.kind == SpanKind.CONSUMER]


def test_one_trace_from_the_producer_span_to_the_dask_tasks(
    gateway, run_worker, memory_spans, log_lines
):
    telemetry, exporter = memory_spans
    with run_worker(sample_app.worker, telemetry=telemetry):
        job_id = gateway.submit(
            "dask_squares", {"n": 3}, traceparent=TRACEPARENT, tracestate="vendor=7"
        )
        events = gateway.wait_terminal(job_id, timeout=30)
    assert events[-1]["event"] == "completed", events[-1]
    spans = exporter.get_finished_spans()

    [consumer] = consumer_spans(spans)
    assert consumer.name == "process default"
    assert f"{consumer.context.trace_id:032x}" == TRACE
    assert consumer.parent is not None
    assert consumer.parent.is_remote
    assert hex_span(consumer.parent.span_id) == PRODUCER, "parented to the producer span"
    assert consumer.context.trace_state.to_header() == "vendor=7"
    attributes = dict(consumer.attributes)
    assert re.fullmatch(r"\d+-\d+", attributes.pop("messaging.message.id"))
    assert attributes.pop("messaging.client.id").startswith("test-")
    assert attributes == {
        "messaging.system": "redis",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": keys.queue_stream("default", "normal"),
        "messaging.consumer.group.name": "jobgate-workers",
        "jobgate.job.id": job_id,
        "jobgate.job.kind": "dask_squares",
        "jobgate.job.attempt": 1,
        "jobgate.job.outcome": "completed",
    }
    consumer_id = hex_span(consumer.context.span_id)
    # ctx.traceparent names the consumer span, for the handler's own calls.
    assert events[-1]["data"]["result"]["traceparent"] == f"00-{TRACE}-{consumer_id}-01"

    tasks = [span for span in spans if span.name == "dask.task _logged_square"]
    assert len(tasks) == 3
    for task in tasks:
        assert task.kind == SpanKind.INTERNAL
        assert task.context.trace_id == consumer.context.trace_id
        assert task.parent.span_id == consumer.context.span_id
        assert task.attributes["dask.task.key"].startswith("_logged_square-")
        assert task.attributes["jobgate.job.id"] == job_id
    assert len({task.attributes["dask.task.key"] for task in tasks}) == 3

    published = {
        span.name
        for span in spans
        if span.kind == SpanKind.PRODUCER and span.parent.span_id == consumer.context.span_id
    }
    assert {"publish progress", "publish completed"} <= published
    assert all(span.context.trace_id == consumer.context.trace_id for span in spans)

    # Lines logged inside the tasks carry the job, its trace and the task's own span.
    task_spans = {hex_span(task.context.span_id): task for task in tasks}
    task_lines = [line for line in log_lines if line["message"] == "task ran"]
    assert len(task_lines) == 3
    for line in task_lines:
        assert line["trace_id"] == TRACE
        assert line["job_id"] == job_id
        assert line["attempt"] == 1
        task = task_spans[line["span_id"]]
        assert line["task_key"] == task.attributes["dask.task.key"]
    handler_lines = [line for line in log_lines if line["message"] == "squares summed"]
    assert [line["span_id"] for line in handler_lines] == [consumer_id]
    done = [line for line in log_lines if line.get("job_id") == job_id and "outcome" in line]
    assert done
    assert {line["span_id"] for line in done} == {consumer_id}


def test_retried_and_reclaimed_attempts_are_children_of_the_same_producer(
    gateway, run_worker, memory_spans
):
    telemetry, exporter = memory_spans
    job_id = gateway.submit("flaky", {"succeed_on": 3, "delay_s": 0.01}, traceparent=TRACEPARENT)
    # Attempt 1 is taken by a consumer that dies without a trace of its own here.
    ghost = QueueStreams(gateway.redis, "default", "ghost")
    [entry] = ghost.read(1, block_ms=0)
    assert entry.job_id == job_id
    _, started = gateway.script.start(job_id, "ghost")
    assert started is not None
    with run_worker(sample_app.worker, telemetry=telemetry, lease_ms=300):
        events = gateway.wait_terminal(job_id, timeout=15)
    assert_contiguous(events)
    assert events[-1]["event"] == "completed"
    assert events[-1]["data"]["result"] == {"attempt": 3}

    spans = exporter.get_finished_spans()
    attempts = sorted(
        consumer_spans(spans), key=lambda span: span.attributes["jobgate.job.attempt"]
    )
    assert [span.attributes["jobgate.job.attempt"] for span in attempts] == [2, 3]
    for span in attempts:
        assert f"{span.context.trace_id:032x}" == TRACE
        assert hex_span(span.parent.span_id) == PRODUCER
    reclaimed, retried = attempts
    assert reclaimed.attributes["jobgate.job.outcome"] == "retrying"
    assert reclaimed.attributes["error.type"] == "upstream_busy"
    assert retried.attributes["jobgate.job.outcome"] == "completed"
    [publish_retry] = [span for span in spans if span.name == "publish retrying"]
    assert publish_retry.parent.span_id == reclaimed.context.span_id


def test_a_failed_attempt_is_an_error_span(gateway, run_worker, memory_spans):
    telemetry, exporter = memory_spans
    with run_worker(sample_app.worker, telemetry=telemetry):
        gateway.wait_terminal(gateway.submit("boom", traceparent=TRACEPARENT))
    [consumer] = consumer_spans(exporter.get_finished_spans())
    assert not consumer.status.is_ok
    assert consumer.status.description == "handler_error"
    assert consumer.attributes["jobgate.job.outcome"] == "failed"
    assert [event.name for event in consumer.events] == ["exception"]


def test_without_a_traceparent_the_record_trace_id_is_kept(gateway, run_worker, memory_spans):
    telemetry, exporter = memory_spans
    record_trace = "0af7651916cd43dd8448eb211c80319c"
    with run_worker(sample_app.worker, telemetry=telemetry):
        job_id = gateway.submit("echo", {"x": 1}, traceparent="", trace_id=record_trace)
        gateway.wait_terminal(job_id)
    [consumer] = consumer_spans(exporter.get_finished_spans())
    assert consumer.parent is None
    assert f"{consumer.context.trace_id:032x}" == record_trace


def test_span_file_lines(tmp_path):
    path = tmp_path / "spans.jsonl"
    telemetry = Telemetry([SimpleSpanProcessor(SpanFileExporter(str(path), SERVICE))])
    parent = remote_parent(TRACEPARENT)
    with (
        telemetry.span(
            "process default", kind=SpanKind.CONSUMER, parent=parent, attributes={"a": 1}
        ) as outer,
        telemetry.span("inner", kind=SpanKind.INTERNAL, parent=outer.get_span_context()),
    ):
        pass
    with telemetry.span("root", kind=SpanKind.PRODUCER, parent=None):
        pass
    telemetry.shutdown()
    inner, outer_line, root = (json.loads(line) for line in path.read_text().splitlines())
    for line in (inner, outer_line, root):
        assert set(line) == SPAN_FILE_KEYS
        assert re.fullmatch(r"[0-9a-f]{32}", line["trace_id"])
        assert re.fullmatch(r"[0-9a-f]{16}", line["span_id"])
        assert line["service"] == "jobgate-worker"
        assert 0 < line["start_ns"] <= line["end_ns"]
    assert outer_line["trace_id"] == TRACE
    assert outer_line["parent_span_id"] == PRODUCER
    assert (outer_line["name"], outer_line["kind"], outer_line["attributes"]) == (
        "process default",
        "consumer",
        {"a": 1},
    )
    assert inner["parent_span_id"] == outer_line["span_id"]
    assert inner["kind"] == "internal"
    assert (root["parent_span_id"], root["kind"]) == (None, "producer")


def test_pricing_worker_with_dask_processes_traces_and_forwards_its_tasks(
    gateway, spawn_worker, tmp_path
):
    """The real worker; Dask tasks run in another process and still join the job's trace."""
    span_file = tmp_path / "spans.jsonl"
    receiver = ForwardReceiver().start()
    try:
        worker = spawn_worker(
            app="examples.pricing:worker",
            cwd=REPO_ROOT,
            env={
                "JOBGATE_SPAN_FILE": str(span_file),
                "JOBGATE_FLUENTD_ADDR": receiver.address,
                "JOBGATE_DASK_PROCESSES": "true",
                "JOBGATE_DASK_THREADS": "2",
            },
        )
        worker.wait_started()
        params = {
            "spot": 100.0, "strike": 105.0, "rate": 0.03, "volatility": 0.25,
            "maturity": 1.5, "paths": 20_000, "chunks": 2,
        }  # fmt: skip
        job_id = gateway.submit("mc_option_price", params, traceparent=TRACEPARENT)
        events = gateway.wait_terminal(job_id, timeout=60)
        assert events[-1]["event"] == "completed", events[-1]
        records = receiver.wait_for(
            lambda found: sum(r.get("message") == "chunk priced" for r in found) == 2
        )
        worker.signal(signal.SIGTERM)
        assert worker.wait(20) == 0
    finally:
        receiver.stop()

    spans = [json.loads(line) for line in span_file.read_text().splitlines()]
    for span in spans:
        assert set(span) == SPAN_FILE_KEYS
        assert span["trace_id"] == TRACE
    [consumer] = [span for span in spans if span["kind"] == "consumer"]
    assert consumer["name"] == "process default"
    assert consumer["parent_span_id"] == PRODUCER
    assert consumer["attributes"]["jobgate.job.id"] == job_id
    tasks = [span for span in spans if span["name"] == "dask.task price_chunk"]
    assert len(tasks) == 2
    assert {task["parent_span_id"] for task in tasks} == {consumer["span_id"]}
    assert {task["kind"] for task in tasks} == {"internal"}

    chunk_lines = [record for record in records if record.get("message") == "chunk priced"]
    by_span = {task["span_id"]: task for task in tasks}
    for line in chunk_lines:
        assert (line["trace_id"], line["job_id"]) == (TRACE, job_id)
        task = by_span[line["span_id"]]
        assert line["task_key"] == task["attributes"]["dask.task.key"]
        assert line["duration_ms"] >= 0
    stderr = worker.log_lines()
    started_cluster = [
        line for line in stderr if line["message"] == "starting a local Dask cluster"
    ]
    assert started_cluster[0]["dask_processes"] is True


class _OtlpCollector(http.server.BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP protobuf trace exports and keeps the decoded spans."""

    spans: ClassVar[list[Any]] = []
    paths: ClassVar[list[str]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        type(self).paths.append(self.path)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                type(self).spans.extend(scope_spans.spans)
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def test_spans_go_over_otlp_and_are_flushed_at_shutdown(gateway, spawn_worker):
    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtlpCollector)
    thread = threading.Thread(target=collector.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
        worker = spawn_worker(env={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
        worker.wait_started()
        job_id = gateway.submit("echo", {"x": 1}, traceparent=TRACEPARENT)
        gateway.wait_terminal(job_id)
        # The batch processor waits seconds before exporting; the shutdown flushes it.
        worker.signal(signal.SIGTERM)
        assert worker.wait(10) == 0
    finally:
        collector.shutdown()
        collector.server_close()
    assert set(_OtlpCollector.paths) == {"/v1/traces"}
    [consumer] = [span for span in _OtlpCollector.spans if span.name == "process default"]
    assert consumer.trace_id.hex() == TRACE
    assert consumer.parent_span_id.hex() == PRODUCER
    assert consumer.kind == consumer.SPAN_KIND_CONSUMER
    attributes = {item.key: item.value for item in consumer.attributes}
    assert attributes["jobgate.job.id"].string_value == job_id
    [published] = [span for span in _OtlpCollector.spans if span.name == "publish completed"]
    assert published.parent_span_id == consumer.span_id
