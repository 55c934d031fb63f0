"""Epochs in the job script: a write under another replication id starts one new epoch."""

from __future__ import annotations

from conftest import Gateway
from jobgate_worker import keys


def _as_if_written_under_another_master(gateway: Gateway, job_id: str) -> None:
    gateway.redis.hset(keys.job_key(job_id), "replid", "0" * 40)


def test_a_write_under_another_replication_id_starts_a_new_epoch(gateway: Gateway):
    job_id = gateway.submit("echo")
    assert gateway.script.call(job_id, "start", "w1").ok
    _as_if_written_under_another_master(gateway, job_id)
    assert gateway.script.call(job_id, "progress", 1, '{"done":1,"total":2}').ok
    assert gateway.script.call(job_id, "complete", 1, "{}").ok
    events = gateway.events(job_id)
    assert [(e["epoch"], e["seq"]) for e in events] == [(1, 1), (1, 2), (2, 3), (2, 4)]
    record = gateway.record(job_id)
    assert (record["epoch"], record["epoch_seq"]) == ("2", "3")


def test_one_call_writing_two_events_starts_one_epoch(gateway: Gateway):
    """``start`` of a job whose attempt was lost writes ``retrying`` and ``started``."""
    job_id = gateway.submit("echo")
    assert gateway.script.call(job_id, "start", "w1").ok
    _as_if_written_under_another_master(gateway, job_id)
    assert gateway.script.call(job_id, "start", "w2").ok
    events = gateway.events(job_id)
    assert [(e["epoch"], e["seq"], e["event"]) for e in events] == [
        (1, 1, "queued"),
        (1, 2, "started"),
        (2, 3, "retrying"),
        (2, 4, "started"),
    ]
    assert gateway.record(job_id)["epoch_seq"] == "3"
