"""Real messages the worker produces, validated against proto-schemas/schemas.

Events and job records (written by jobgate.lua on the worker's calls), queue
entries the worker writes (re-enqueue after a retryable error) and the
worker's JSON log lines are checked against the shared JSON Schemas, and the
golden (and invalid) examples are checked too, so a drift between the
schemas, PROTOCOL.md and this SDK fails here.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import referencing

import sample_app
from conftest import OBSERVED, REPO_ROOT
from jobgate_worker import keys
from jobgate_worker.streams import Entry, QueueStreams

SCHEMAS_DIR = REPO_ROOT / "proto-schemas" / "schemas"
EXAMPLES_DIR = REPO_ROOT / "proto-schemas" / "examples"
WORKER_SCHEMAS = ("event", "queue_entry", "job_record", "log_line")


def _load_validators() -> dict[str, Any]:
    if not SCHEMAS_DIR.is_dir():
        return {}
    schemas = {path.stem: json.loads(path.read_text()) for path in SCHEMAS_DIR.glob("*.json")}
    resources = [
        (schema["$id"], referencing.Resource.from_contents(schema))
        for schema in schemas.values()
        if "$id" in schema
    ]
    registry = referencing.Registry().with_resources(resources)
    return {
        name: jsonschema.Draft202012Validator(
            schema, registry=registry, format_checker=jsonschema.FormatChecker()
        )
        for name, schema in schemas.items()
    }


VALIDATORS = _load_validators()


def validator(name: str) -> Any:
    assert name in VALIDATORS, f"proto-schemas/schemas/{name}.json does not exist"
    return VALIDATORS[name]


def assert_valid(name: str, message: Any) -> None:
    errors = sorted(validator(name).iter_errors(message), key=lambda e: list(e.path))
    assert not errors, f"{name} invalid: {[e.message for e in errors]}\n{message}"


def _examples(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


@pytest.mark.parametrize("name", WORKER_SCHEMAS)
def test_golden_examples_validate(name):
    check = validator(name)
    examples = _examples(EXAMPLES_DIR / name)
    assert examples, f"no golden examples for {name}"
    for path in examples:
        errors = [e.message for e in check.iter_errors(json.loads(path.read_text()))]
        assert not errors, f"{path.name}: {errors}"
    for path in _examples(EXAMPLES_DIR / "invalid" / name):
        assert not check.is_valid(json.loads(path.read_text())), f"{path.name} should be invalid"


def test_events_and_records_the_worker_causes_are_valid(gateway, run_worker):
    with run_worker(sample_app.worker):
        jobs = {
            "steps": gateway.submit("steps", {"n": 2, "pause_s": 0.12}),
            "boom": gateway.submit("boom"),
            "flaky": gateway.submit("flaky", {"succeed_on": 2, "delay_s": 0.01}),
            "exhausted": gateway.submit(
                "flaky", {"succeed_on": 9, "delay_s": 0.01}, max_attempts=1
            ),
            "unknown": gateway.submit("nope"),
            "timeout": gateway.submit("sleep", {"s": 1.3}, timeout_s=1),
            "null": gateway.submit("echo", None),
        }
        running = gateway.submit("wait_cancel")
        gateway.wait_event(running, "progress")
        gateway.cancel(running)
        jobs["cancelled"] = running
        queued = gateway.submit("echo", priority=0)
        gateway.cancel(queued)
        jobs["cancelled_queued"] = queued
        for job_id in jobs.values():
            gateway.wait_terminal(job_id)
    seen_types = set()
    for job_id in jobs.values():
        for event in gateway.events(job_id):
            assert_valid("event", event)
            seen_types.add(event["event"])
        assert_valid("job_record", gateway.record(job_id))
    assert seen_types == {
        "queued", "started", "progress", "retrying", "completed", "failed", "cancelled"
    }  # fmt: skip


def _released_first_attempt(event: dict[str, Any]) -> bool:
    """A ``retrying`` event of ``release`` after attempt 1 (``next_attempt`` 1)."""
    data = event.get("data") or {}
    return (
        event.get("event") == "retrying"
        and data.get("error", {}).get("code") == "worker_shutdown"
        and data.get("next_attempt") == 1
    )


def test_release_event_is_valid(gateway, run_worker):
    with run_worker(sample_app.worker) as runtime:
        job_id = gateway.submit("gated", {"limit_s": 10})
        gateway.wait_event(job_id, "started")
        runtime.stop(grace_s=0)
        assert runtime.wait_stopped(10)
    sample_app.gates.setdefault(job_id, threading.Event()).set()
    events = gateway.events(job_id)
    assert _released_first_attempt(events[-1])
    assert_valid("job_record", gateway.record(job_id))
    assert_valid("event", events[-1])


def test_queue_entries_the_worker_writes_are_valid(gateway):
    job_id = gateway.submit("echo")
    stream = keys.queue_stream("default", "normal")
    streams = QueueStreams(gateway.redis, "default", "schema-test")
    [entry] = streams.read(1, block_ms=0)
    assert_valid("queue_entry", dict(entry.fields))
    streams.requeue(entry, streams.server_time_ms())
    [(_, fields)] = gateway.redis.xrange(stream)
    assert fields["job_id"] == job_id
    assert_valid("queue_entry", fields)
    assert isinstance(entry, Entry)


def test_log_lines_are_valid(gateway, spawn_worker):
    worker = spawn_worker()
    worker.wait_started()
    for kind in ("slow_steps", "boom", "flaky"):
        gateway.wait_terminal(gateway.submit(kind, {"n": 1, "pause_s": 0.01}))
    worker.signal(signal.SIGTERM)
    worker.wait(10)
    lines = worker.log_lines()
    levels = {line["level"] for line in lines}
    assert {"info", "error"} <= levels
    for line in lines:
        assert_valid("log_line", line)


def test_everything_other_tests_saw_is_valid():
    """Whatever earlier test modules in this session recorded, checked too."""
    for event in OBSERVED["events"]:
        assert_valid("event", event)
    for entry in OBSERVED["entries"]:
        assert_valid("queue_entry", entry)
    for line in OBSERVED["log_lines"]:
        assert_valid("log_line", line)
