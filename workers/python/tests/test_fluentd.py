"""Log forwarding to Fluentd (Forward protocol v1) against a receiver that acks chunks."""

from __future__ import annotations

import gc
import json
import logging
import signal
import struct
import threading
import time
from collections import Counter

import msgpack
import pytest

from conftest import free_port, wait_until
from fluentd_receiver import EventTime, ForwardReceiver
from jobgate_worker.fluentd import (
    FluentForwarder,
    FluentHandler,
    encode_entry,
    event_time,
    parse_address,
)
from jobgate_worker.logs import JsonFormatter


@pytest.fixture
def receiver():
    server = ForwardReceiver().start()
    yield server
    server.stop()


@pytest.fixture
def make_forwarder():
    forwarders = []

    def make(port, **options):
        defaults = {"ack_timeout_s": 2.0, "backoff_base_s": 0.02, "backoff_max_s": 0.2}
        forwarder = FluentForwarder("127.0.0.1", port, **{**defaults, **options}).start()
        forwarders.append(forwarder)
        logger = logging.getLogger(f"test.fluentd.{len(forwarders)}")
        logger.handlers = [FluentHandler(forwarder, JsonFormatter().as_dict)]
        logger.propagate = False
        logger.setLevel(logging.INFO)
        return forwarder, logger

    yield make
    for forwarder in forwarders:
        forwarder.close(0.5)


def test_event_time_and_entry_encoding():
    ext = event_time(1_700_000_000_123_456_789)
    assert ext.code == 0
    assert struct.unpack(">II", ext.data) == (1_700_000_000, 123_456_789)
    decoded = msgpack.unpackb(encode_entry(5_000_000_007, {"message": "hi", "n": {1, 2}}))
    assert decoded[0] == msgpack.ExtType(0, struct.pack(">II", 5, 7))
    assert decoded[1]["message"] == "hi"
    assert isinstance(decoded[1]["n"], str), "values msgpack cannot hold become text"
    huge = msgpack.unpackb(encode_entry(0, {"big": 2**80}))[1]
    assert huge == {"big": str(2**80)}


def test_address_parsing():
    assert parse_address("fluentd:24224") == ("fluentd", 24224)
    assert parse_address("10.0.0.5") == ("10.0.0.5", 24224)
    assert parse_address("[::1]:9880") == ("::1", 9880)
    for bad in ("host:port", ":24224", "host:0", "host:70000"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_records_are_forwarded_in_acked_chunks(receiver, make_forwarder):
    forwarder, logger = make_forwarder(receiver.port)
    for index in range(300):
        logger.info("line %d", index, extra={"index": index})
    records = receiver.wait_for(lambda records: len(records) >= 300)
    assert [record["index"] for record in records] == list(range(300))
    assert records[0]["message"] == "line 0"
    assert records[0]["service"] == "jobgate-worker"
    for chunk in receiver.chunks:
        assert chunk.tag == "jobgate.worker"
        assert chunk.size == len(chunk.entries)
        assert len(chunk.chunk) == 24, "base64 of a 128-bit id"
        for stamp, _ in chunk.entries:
            assert isinstance(stamp, EventTime)
            assert abs(stamp.ns - time.time_ns()) < 60 * 1_000_000_000
    assert len({chunk.chunk for chunk in receiver.chunks}) == len(receiver.chunks)
    wait_until(lambda: forwarder.stats().forwarded == 300)
    stats = forwarder.close(1.0)
    assert (stats.dropped, stats.unsent, stats.resent, stats.buffered) == (0, 0, 0, 0)


def test_receiver_down_logging_stays_fast_drops_oldest_then_resumes(receiver, make_forwarder):
    forwarder, logger = make_forwarder(
        receiver.port, max_buffered=200, ack_timeout_s=2.0, connect_timeout_s=2.0
    )
    for index in range(50):
        logger.info("before", extra={"index": index})
    wait_until(lambda: forwarder.stats().forwarded == 50)

    receiver.stop()
    slowest = 0.0
    started = time.perf_counter()
    for index in range(50, 1050):
        call_started = time.perf_counter()
        logger.info("while down", extra={"index": index})
        slowest = max(slowest, time.perf_counter() - call_started)
    elapsed = time.perf_counter() - started
    # Nothing waits for the 2 s connect or ack timeouts: appending only.
    assert slowest < 0.25, slowest
    assert elapsed < 1.5, elapsed
    wait_until(lambda: forwarder.stats().dropped == 800)
    # The sender notices the lost receiver when its send or ack fails (up to
    # the 2 s ack timeout), not when lines are dropped.
    wait_until(lambda: not forwarder.stats().connected)
    stats = forwarder.stats()
    assert (stats.forwarded, stats.buffered, stats.dropped) == (50, 200, 800)

    before_restart = len(receiver.records())
    receiver.start()  # the same port again
    wait_until(lambda: forwarder.stats().forwarded == 250)
    resumed = receiver.records()[before_restart:]
    # The newest 200 survived, in order; the oldest 800 were dropped.
    assert [record["index"] for record in resumed] == list(range(850, 1050))
    logger.info("after", extra={"index": 2000})
    wait_until(lambda: forwarder.stats().forwarded == 251)
    assert forwarder.stats().dropped == 800


def test_a_chunk_without_ack_is_sent_again(receiver, make_forwarder):
    receiver.withhold_acks = 1
    forwarder, logger = make_forwarder(receiver.port, ack_timeout_s=0.3)
    for index in range(10):
        logger.info("line", extra={"index": index})
    wait_until(lambda: forwarder.stats().forwarded == 10)
    first, again = receiver.chunks[0], receiver.chunks[1]
    assert not first.acked
    assert again.acked
    assert again.chunk == first.chunk, "the same chunk, under the same id"
    assert again.entries == first.entries
    indexes = [record["index"] for record in receiver.records()]
    assert sorted(indexes) == list(range(10))
    stats = forwarder.stats()
    assert (stats.resent, stats.dropped) == (1, 0)


def test_close_sends_what_is_buffered(receiver, make_forwarder):
    forwarder, logger = make_forwarder(receiver.port)
    for index in range(2000):
        logger.info("burst", extra={"index": index})
    stats = forwarder.close(5.0)
    assert (stats.forwarded, stats.unsent) == (2000, 0)
    assert len(receiver.records()) == 2000


def test_close_is_bounded_when_fluentd_is_away(make_forwarder):
    forwarder, logger = make_forwarder(free_port(), backoff_base_s=5.0, backoff_max_s=5.0)
    for index in range(100):
        logger.info("nobody listens", extra={"index": index})
    time.sleep(0.05)
    started = time.monotonic()
    stats = forwarder.close(0.5)
    assert time.monotonic() - started < 2.0
    assert (stats.forwarded, stats.unsent, stats.dropped) == (0, 100, 0)
    logger.info("after close")  # does not raise, is not sent
    assert forwarder.stats().unsent == 101


def test_a_record_from_the_thread_holding_the_lock_is_kept_not_waited_for(receiver, make_forwarder):
    """What a finalizer that logs does when the collector runs it inside a section."""
    forwarder, logger = make_forwarder(receiver.port)

    def inside_a_section() -> None:
        with forwarder._condition:
            logger.warning("from a finalizer")

    thread = threading.Thread(target=inside_a_section, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "the thread waited for the lock it holds"
    logger.info("after it")
    records = receiver.wait_for(lambda records: len(records) >= 2)
    messages = Counter(record["message"] for record in records)
    assert messages == {"from a finalizer": 1, "after it": 1}


class _LogsWhenCollected:
    """Garbage with a finalizer that logs, as Dask's dangling comms and streams have."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.cycle = self

    def __del__(self) -> None:
        self.logger.warning("collected")


def test_finalizers_that_log_while_records_are_sent_lose_nothing_and_block_nothing(
    receiver, make_forwarder
):
    """The collector runs finalizers at any allocation, on the sender thread too.

    A finalizer run inside one of the forwarder's sections must neither wait
    for the lock its own thread holds (the test above) nor lose its record.
    Small chunks: the sender enters its sections often.
    """
    lines = 30_000
    # Room for every record: what is checked is that none is lost to a lock.
    forwarder, logger = make_forwarder(
        receiver.port, max_buffered=4 * lines, max_buffered_bytes=256 * 1024 * 1024, max_batch=4
    )

    def log_lines() -> None:
        for index in range(lines):
            _LogsWhenCollected(logger)
            logger.info("line", extra={"index": index})
            if index % 50 == 0:
                time.sleep(0.0005)  # the sender's turn: its sections allocate too

    thresholds = gc.get_threshold()
    gc.set_threshold(5)
    try:
        thread = threading.Thread(target=log_lines, daemon=True)
        thread.start()
        thread.join(60)
        assert not thread.is_alive(), "logging stopped: a thread waits for a lock it holds"
        gc.collect()
    finally:
        gc.set_threshold(*thresholds)
    stats = forwarder.close(10)
    assert (stats.dropped, stats.unsent) == (0, 0)
    counts = Counter(record["message"] for record in receiver.records())
    assert counts == {"line": lines, "collected": lines}


def test_worker_forwards_every_log_line_of_a_job(gateway, spawn_worker, receiver):
    worker = spawn_worker(env={"JOBGATE_FLUENTD_ADDR": receiver.address})
    worker.wait_started()
    job_id = gateway.submit("slow_steps", {"n": 2, "pause_s": 0.01})
    events = gateway.wait_terminal(job_id)
    trace_id = events[0]["trace_id"]
    receiver.wait_for(lambda records: any(r.get("message") == "job completed" for r in records))
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0

    stderr_lines = worker.log_lines()
    final = stderr_lines[-1]
    assert final["message"] == "log forwarding stopped"
    assert final["forwarded"] > 0
    assert (final["dropped"], final["unsent"]) == (0, 0)
    records = receiver.records()

    # Everything written to stderr before the final count reached Fluentd, once.
    def identity(line):
        return json.dumps(line, sort_keys=True)

    assert Counter(map(identity, records)) == Counter(map(identity, stderr_lines[:-1]))
    job_lines = [r for r in records if r.get("job_id") == job_id]
    assert {r["message"] for r in job_lines} >= {"step done", "job completed"}
    assert {r["trace_id"] for r in job_lines} == {trace_id}


def test_worker_keeps_working_while_fluentd_is_away(gateway, spawn_worker, receiver):
    worker = spawn_worker(
        env={"JOBGATE_FLUENTD_ADDR": receiver.address, "JOBGATE_FLUENTD_BUFFER": "20"}
    )
    worker.wait_started()
    receiver.wait_for(lambda records: any(r["message"] == "worker started" for r in records))
    receiver.stop()
    started = time.monotonic()
    job_id = gateway.submit("slow_steps", {"n": 60, "pause_s": 0.001})
    events = gateway.wait_terminal(job_id)
    assert events[-1]["event"] == "completed"
    assert time.monotonic() - started < 3.0, "logging did not wait for Fluentd"

    receiver.start()  # the same port: forwarding resumes
    records = receiver.wait_for(
        lambda found: any(r["message"].startswith("fluentd reachable again") for r in found)
    )
    steps = [r["step"] for r in records if r["message"] == "step done"]
    assert steps
    assert steps == sorted(steps)
    assert 60 in steps, "the newest records were kept"
    assert 1 not in steps, "the oldest were dropped"
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    final = worker.log_lines()[-1]
    assert final["message"] == "log forwarding stopped"
    assert final["level"] == "warn"
    assert final["dropped"] > 0
    assert final["unsent"] == 0
