"""The job script's ``batch`` operation, against a real Redis.

A batch runs several operations in one atomic call, each exactly as it would
run on its own; a malformed batch is refused whole and changes nothing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from conftest import Gateway, assert_contiguous
from jobgate_worker import keys
from jobgate_worker.script import parse_reply


def batch(gateway: Gateway, calls: list[tuple[str, str, list[str | int]]]) -> Any:
    """``EVALSHA … batch n`` of ``(job_id, op, args)`` calls; the raw reply."""
    job_keys: list[str] = []
    argv: list[str | int] = ["batch", len(calls)]
    for job_id, op, args in calls:
        job_keys += [keys.job_key(job_id), keys.events_key(job_id)]
        argv += [op, len(args), *args]
    gateway.script.ensure_loaded()
    return gateway.redis.evalsha(gateway.script.sha, len(job_keys), *job_keys, *argv)


def snapshot(gateway: Gateway, job_ids: list[str]) -> list[Any]:
    return [(gateway.record(job_id), gateway.events(job_id)) for job_id in job_ids]


def test_a_batch_runs_each_call_as_it_would_alone(gateway: Gateway) -> None:
    jobs = [gateway.submit("echo", {"n": n}) for n in range(3)]
    started = batch(gateway, [(job_id, "start", ["w1"]) for job_id in jobs])
    assert started[0] == "ok"
    assert len(started) == 4
    for raw in started[1:]:
        reply = parse_reply(raw)
        assert reply.ok, raw
        assert int(reply.values[0]) == 1, raw
    # One job completes, one fails, and a stale completion is refused alone.
    finished = batch(
        gateway,
        [
            (jobs[0], "complete", [1, '{"echo":0}']),
            (jobs[1], "fail", [1, "bad_input", "no good"]),
            (jobs[2], "complete", [7, '{"echo":2}']),
        ],
    )
    assert [parse_reply(raw).status for raw in finished[1:]] == ["ok", "ok", "stale"]
    events = [gateway.events(job_id) for job_id in jobs]
    for history in events:
        assert_contiguous(history)
    assert [e["event"] for e in events[0]] == ["queued", "started", "completed"]
    assert events[0][-1]["data"] == {"result": {"echo": 0}}
    assert [e["event"] for e in events[1]] == ["queued", "started", "failed"]
    assert [e["event"] for e in events[2]] == ["queued", "started"]
    assert gateway.record(jobs[0])["status"] == "completed"
    assert gateway.redis.ttl(keys.job_key(jobs[0])) > 0
    assert gateway.record(jobs[2])["status"] == "running"


def test_a_batch_gives_the_same_record_and_events_as_single_calls(gateway: Gateway) -> None:
    alone, batched = gateway.submit("echo", {"n": 1}), gateway.submit("echo", {"n": 1})
    gateway.script.call(alone, "start", "w1")
    gateway.script.call(alone, "complete", 1, '{"ok":true}')
    batch(gateway, [(batched, "start", ["w1"])])
    batch(gateway, [(batched, "complete", [1, '{"ok":true}'])])

    def shape(job_id: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
        moments = {"created_at", "updated_at", "started_at", "finished_at"}
        record = {k: v for k, v in gateway.record(job_id).items() if k not in moments | {"job_id"}}
        record.pop("traceparent")
        record.pop("trace_id")
        events = [
            {k: v for k, v in e.items() if k not in {"ts", "job_id", "trace_id"}}
            for e in gateway.events(job_id)
        ]
        return record, events

    assert shape(alone) == shape(batched)


@pytest.mark.parametrize(
    "tail",
    [
        ["start", 1, "w1", "nosuchop", 0],  # an unknown operation
        ["start", 1, "w1", "start", 5, "w1"],  # more arguments than there are
        ["start", 1, "w1", "start", 1, "w1", "extra"],  # arguments after the last call
        ["start", 1, "w1", "batch", 0],  # a batch inside a batch
        ["start", 1, "w1", "create_many", 0],
    ],
)
def test_a_malformed_batch_is_refused_whole(gateway: Gateway, tail: list[Any]) -> None:
    jobs = [gateway.submit("echo"), gateway.submit("echo")]
    before = snapshot(gateway, jobs)
    job_keys = [k for job_id in jobs for k in (keys.job_key(job_id), keys.events_key(job_id))]
    gateway.script.ensure_loaded()
    with pytest.raises(redis.ResponseError, match="jobgate: batch"):
        gateway.redis.evalsha(gateway.script.sha, 4, *job_keys, "batch", 2, *tail)
    assert snapshot(gateway, jobs) == before


def test_a_batch_must_name_two_keys_per_call(gateway: Gateway) -> None:
    job_id = gateway.submit("echo")
    gateway.script.ensure_loaded()
    for n in (0, 2, "x"):
        with pytest.raises(redis.ResponseError, match="jobgate: batch wants"):
            gateway.redis.evalsha(
                gateway.script.sha,
                2,
                keys.job_key(job_id),
                keys.events_key(job_id),
                "batch",
                n,
                "start",
                1,
                "w1",
            )
    assert [e["event"] for e in gateway.events(job_id)] == ["queued"]
    assert json.loads(json.dumps(gateway.record(job_id)))["status"] == "queued"
