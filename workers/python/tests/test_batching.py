"""Handler threads' calls sharing pipelines (``batching.py``), against a real Redis."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

import sample_app
from conftest import thread_worker
from jobgate_worker import keys
from jobgate_worker.batching import PipelineBatcher
from jobgate_worker.execution import Started
from jobgate_worker.runtime import Slots
from jobgate_worker.streams import Entry


def test_each_caller_gets_its_own_replies(redis_server):
    client = redis_server.client()
    batcher = PipelineBatcher(lambda: client)
    barrier = threading.Barrier(16)

    def one(index: int) -> list[object]:
        barrier.wait()

        def queue(pipe: redis.client.Pipeline) -> None:
            pipe.set(f"k{index}", index)
            pipe.incrby("total", index)
            pipe.get(f"k{index}")

        return batcher.call(queue, 3)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    for index, (written, _total, read) in enumerate(results):
        assert written is True
        assert read == str(index)
    assert int(client.get("total")) == sum(range(16))
    assert batcher.requests == 16
    # Concurrent callers shared round trips (at most one batch each when alone).
    assert 1 <= batcher.batches <= 16


def test_an_error_reply_is_the_callers_alone(redis_server):
    client = redis_server.client()
    batcher = PipelineBatcher(lambda: client)
    client.set("text", "abc")
    (wrong,) = batcher.call(lambda pipe: pipe.incr("text"), 1)
    assert isinstance(wrong, redis.ResponseError)
    (right,) = batcher.call(lambda pipe: pipe.incr("number"), 1)
    assert right == 1


def test_a_lost_connection_is_raised_in_every_caller_and_then_recovered(redis_server):
    client = redis_server.client()
    batcher = PipelineBatcher(lambda: client)
    redis_server.kill()
    with pytest.raises(redis.ConnectionError):
        batcher.call(lambda pipe: pipe.ping(), 1)
    redis_server.start(redis_server.port)
    assert batcher.call(lambda pipe: pipe.ping(), 1) == [True]


def test_many_callers_and_batches_of_bounded_size(redis_server):
    client = redis_server.client()
    batcher = PipelineBatcher(lambda: client, max_requests=4)

    def one(index: int) -> object:
        (reply,) = batcher.call(lambda pipe: pipe.incr("count"), 1)
        return reply

    with ThreadPoolExecutor(32) as pool:
        replies = sorted(pool.map(one, range(500)))  # type: ignore[type-var]
    assert replies == list(range(1, 501))
    assert batcher.requests == 500
    assert batcher.batches >= 500 / 4


def test_jobs_of_many_handler_threads_complete_through_shared_pipelines(gateway, run_worker):
    """The read loop starts what it read in one pipeline, the terminal calls of
    32 handler threads share the batcher's; every job completes once, its
    events in order, and every entry is acknowledged."""
    worker = sample_app.worker
    with run_worker(worker, concurrency=32) as runtime:
        batches: list[int] = []
        start_batch = runtime.executor.start_batch

        def recording(entries: list[Entry]) -> dict[tuple[str, str], Started]:
            batches.append(len(entries))
            return start_batch(entries)

        runtime.executor.start_batch = recording  # type: ignore[method-assign]
        ids = [gateway.submit("echo", {"i": i}) for i in range(300)]
        for i, job_id in enumerate(ids):
            events = gateway.wait_terminal(job_id)
            assert [event["event"] for event in events] == ["queued", "started", "completed"]
            assert events[-1]["data"]["result"] == {"i": i}
        batcher = runtime.executor.batcher
        assert batcher is not None
        assert batcher is runtime.executor.reporter.batcher
        # Every terminal call went through the batcher, and the starts of
        # entries read together through the read loop's pipelines.
        assert batcher.requests >= 300
        assert batches
        assert all(1 < size <= 32 for size in batches)
    assert gateway.backlog("default") == 0
    assert gateway.pending("default") == 0


def test_started_but_unrun_entries_are_given_back_at_shutdown(redis_server, gateway):
    """An entry the read loop started whose handler only gets to it once the
    shutdown's grace ran out is released (its attempt not charged) and
    re-enqueued, as a running attempt given back would be."""
    runtime = thread_worker(redis_server.url, sample_app.worker).runtime
    runtime.streams.ensure_groups()
    job_id = gateway.submit("echo", {"x": 1})
    [entry] = runtime.streams.read(1, 0)
    runtime.inflight.hold(entry)
    started = runtime.executor.start_batch([entry])
    assert gateway.redis.hget(keys.job_key(job_id), "status") == "running"
    runtime.executor._closing.set()
    runtime.executor.execute(entry, started[entry.key])
    record = gateway.redis.hgetall(keys.job_key(job_id))
    assert record["status"] == "queued"
    assert record["attempt"] == "0"
    assert gateway.events(job_id)[-1]["data"]["error"]["code"] == "worker_shutdown"
    # A fresh entry for the job, the old one acknowledged and deleted.
    [(_, [(new_id, fields)])] = gateway.redis.xread({entry.stream: "0"})
    assert new_id != entry.entry_id
    assert fields["job_id"] == job_id
    assert gateway.pending("default") == 0
    runtime.clients.close()


def test_read_loop_lingers_briefly_for_more_free_slots():
    """All slots taken: the read loop wakes once one frees up, waits at most
    SLOTS_LINGER_S for an eighth of them, and otherwise takes what is free."""
    slots = Slots(16)
    for _ in range(16):
        slots.take()
    stopping = threading.Event()
    threading.Timer(0.05, slots.give).start()
    began = time.monotonic()
    assert slots.wait_free(stopping, timeout=5) == 1
    assert time.monotonic() - began < 1
    # Two free (= an eighth of 16): no lingering.
    slots.take()
    threading.Timer(0.05, lambda: (slots.give(), slots.give())).start()
    assert slots.wait_free(stopping, timeout=5) == 2
    # Every slot given back wakes a waiter for all of them.
    for _ in range(14):
        slots.give()
    assert slots.wait_all_free(timeout=1)
