"""Handler threads' calls sharing pipelines (``batching.py``), against a real Redis."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

import sample_app
from conftest import Gateway, thread_worker
from jobgate_worker import keys
from jobgate_worker.batching import PipelineBatcher, ScriptAnswer
from jobgate_worker.execution import Started
from jobgate_worker.runtime import Slots
from jobgate_worker.script import JobScript, ScriptCall, parse_reply
from jobgate_worker.streams import ACK_ENDED, Entry, QueueStreams


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


# -- script calls of several callers in one ``batch`` call.


class HeldSender:
    """A batcher whose first send waits until the test lets it go, so that
    the calls made meanwhile all queue up and go together in the next one."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.gate = threading.Event()
        self.sends = 0
        self.batcher = PipelineBatcher(self._current, script=JobScript.load(client))
        ACK_ENDED.load(client)  # as the runtime does at start

    def _current(self) -> Any:
        self.sends += 1
        if self.sends == 1:
            assert self.gate.wait(10)
        return self.client

    def together(self, calls: list[Callable[[], ScriptAnswer]]) -> list[ScriptAnswer]:
        """Make ``calls`` in threads: the first alone, all the others in one pipeline."""
        with ThreadPoolExecutor(len(calls)) as pool:
            first = pool.submit(calls[0])
            while self.sends == 0:
                time.sleep(0.001)
            rest = [pool.submit(call) for call in calls[1:]]
            while len(self.batcher._pending) < len(rest):
                time.sleep(0.001)
            self.gate.set()
            return [first.result(), *(future.result() for future in rest)]


def evalsha_calls(client: redis.Redis) -> int:
    stats: Any = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


@pytest.fixture
def delivered(gateway: Gateway) -> Callable[[int], list[Entry]]:
    """Submit ``n`` echo jobs and deliver their entries to consumer ``w1``."""
    streams = QueueStreams(gateway.redis, "default", "w1")

    def deliver(n: int) -> list[Entry]:
        for i in range(n):
            gateway.submit("echo", {"i": i})
        entries = streams.read(n, 0)
        assert len(entries) == n
        return entries

    return deliver


def start(sender: HeldSender, entry: Entry) -> Callable[[], ScriptAnswer]:
    return lambda: sender.batcher.script_call(ScriptCall(entry.job_id, ("start", "w1")))


def complete(sender: HeldSender, entry: Entry, attempt: int = 1) -> Callable[[], ScriptAnswer]:
    result = json.dumps({"job": entry.job_id})
    call = ScriptCall(entry.job_id, ("complete", attempt, result))
    return lambda: sender.batcher.script_call(call, ack=entry)


def test_script_calls_of_many_threads_go_as_one_batch_call(gateway, delivered):
    """Eight threads' starts, then their completions with acknowledgements:
    one call alone, then the seven others in ONE ``EVALSHA … batch 7``; each
    caller gets its own job's reply, and every entry is acknowledged."""
    entries = delivered(8)
    sender = HeldSender(gateway.redis)
    gateway.script.ensure_loaded()
    gateway.redis.config_resetstat()

    started = sender.together([start(sender, entry) for entry in entries])
    assert evalsha_calls(gateway.redis) == 2
    assert (sender.batcher.script_calls, sender.batcher.script_batches) == (8, 1)
    for i, (entry, (raw, acknowledged)) in enumerate(zip(entries, started, strict=True)):
        reply, job = JobScript.started(parse_reply(raw))
        assert job is not None, reply
        assert (job.attempt, job.kind, json.loads(job.params)) == (1, "echo", {"i": i})
        assert not acknowledged
        assert gateway.record(entry.job_id)["worker"] == "w1"

    sender.sends, sender.gate = 0, threading.Event()
    gateway.redis.config_resetstat()
    finished = sender.together([complete(sender, entry) for entry in entries])
    # Per pipeline: the terminal call(s) in one EVALSHA, the acknowledgements in another.
    assert evalsha_calls(gateway.redis) == 4
    assert sender.batcher.script_batches == 2
    for entry, (raw, acknowledged) in zip(entries, finished, strict=True):
        assert parse_reply(raw).ok
        assert acknowledged
        events = gateway.events(entry.job_id)
        assert [e["event"] for e in events] == ["queued", "started", "completed"]
        assert events[-1]["data"]["result"] == {"job": entry.job_id}
    assert gateway.backlog() == 0
    assert gateway.pending() == 0


def test_a_stale_caller_of_a_batch_alone_gets_stale(gateway, delivered):
    """One caller of a batch reports an attempt that is not the job's: it alone
    is answered ``stale`` and its entry stays pending; the others complete."""
    entries = delivered(5)
    script = JobScript.load(gateway.redis)
    for entry in entries:
        assert script.start(entry.job_id, "w1")[0].ok
    sender = HeldSender(gateway.redis)
    stale = entries[2]
    answers = sender.together(
        [complete(sender, entry, attempt=7 if entry is stale else 1) for entry in entries]
    )
    assert sender.batcher.script_batches == 1
    for entry, (raw, acknowledged) in zip(entries, answers, strict=True):
        reply = parse_reply(raw)
        if entry is stale:
            assert (reply.status, reply.job_status, acknowledged) == ("stale", "running", False)
            assert gateway.record(entry.job_id)["status"] == "running"
        else:
            assert (reply.status, acknowledged) == ("ok", True)
            assert gateway.record(entry.job_id)["status"] == "completed"
    assert gateway.backlog() == 1
    assert gateway.pending() == 1
    [pending] = gateway.redis.xpending_range(stale.stream, keys.CONSUMER_GROUP, "-", "+", 10)
    assert pending["message_id"] == stale.entry_id


def test_a_batch_refused_for_noscript_runs_nothing_and_acknowledges_nothing(gateway, delivered):
    """The script cache lost between ``start`` and the terminal calls: the
    batch is refused whole, every caller sees ``NoScriptError``, no job
    changes and no entry is acknowledged; the acknowledgement script is
    loaded again for the next round trip."""
    entries = delivered(6)
    script = JobScript.load(gateway.redis)
    for entry in entries:
        assert script.start(entry.job_id, "w1")[0].ok
    gateway.redis.script_flush()
    sender = HeldSender(gateway.redis)
    answers = sender.together([complete(sender, entry) for entry in entries])
    assert sender.batcher.script_batches == 1
    for entry, (raw, acknowledged) in zip(entries, answers, strict=True):
        assert isinstance(raw, redis.exceptions.NoScriptError)
        assert not acknowledged
        assert gateway.record(entry.job_id)["status"] == "running"
    assert gateway.pending() == 6
    assert gateway.backlog() == 6
    assert gateway.redis.script_exists(ACK_ENDED.sha) == [True]


def test_a_script_error_of_a_batch_leaves_every_entry_pending(gateway, delivered):
    """A batch the script refuses as a whole (a Lua error): every caller gets
    the error, and no entry is acknowledged (each stays pending, reclaimed later)."""
    entries = delivered(3)
    script = JobScript.load(gateway.redis)
    for entry in entries:
        assert script.start(entry.job_id, "w1")[0].ok
    sender = HeldSender(gateway.redis)
    bad = ScriptCall(entries[1].job_id, ("no_such_operation", 1))
    calls: list[Callable[[], ScriptAnswer]] = [
        complete(sender, entries[0]),
        lambda: sender.batcher.script_call(bad, ack=entries[1]),
        complete(sender, entries[1]),
        complete(sender, entries[2]),
    ]
    answers = sender.together(calls)
    assert parse_reply(answers[0].reply).ok
    assert answers[0].acknowledged
    for raw, acknowledged in answers[1:]:
        assert isinstance(raw, redis.ResponseError)
        assert "malformed" in str(raw)
        assert not acknowledged
    for entry in entries[1:]:
        assert gateway.record(entry.job_id)["status"] == "running"
    assert gateway.pending() == 2


def test_terminal_calls_refused_for_noscript_are_made_again_before_the_acknowledgement(
    gateway, run_worker
):
    """Through a worker: the script cache is flushed while 16 jobs run; their
    terminal calls, sent together, are refused, made again, and every job
    completes once with its entry acknowledged after its completion."""
    with run_worker(sample_app.worker, concurrency=16) as runtime:
        batcher = runtime.executor.batcher
        assert batcher is not None
        refused: list[str] = []
        script_call = batcher.script_call

        def recording(call: ScriptCall, ack: Entry | None = None) -> ScriptAnswer:
            answer = script_call(call, ack)
            if isinstance(answer.reply, redis.exceptions.NoScriptError):
                assert not answer.acknowledged
                assert gateway.record(call.job_id)["status"] == "running"
                refused.append(call.job_id)
            return answer

        batcher.script_call = recording  # type: ignore[method-assign]
        ids = [gateway.submit("gated", {}) for _ in range(16)]
        for job_id in ids:
            gateway.wait_event(job_id, "started")
        gateway.redis.script_flush()
        for job_id in ids:
            sample_app.gates.setdefault(job_id, threading.Event()).set()
        for job_id in ids:
            events = gateway.wait_terminal(job_id)
            assert [e["event"] for e in events] == ["queued", "started", "completed"]
        assert refused, "no terminal call met the flushed cache"
    assert gateway.backlog() == 0
    assert gateway.pending() == 0
