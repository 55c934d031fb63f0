"""Log records to Fluentd over its Forward protocol v1, never blocking the caller.

Wire format (Forward mode of the published v1 specification), one msgpack
array per chunk::

    [tag, [[EventTime, record], ...], {"chunk": "<base64 of 16 random bytes>", "size": n}]

``EventTime`` is msgpack ext type 0 holding 8 bytes: seconds and nanoseconds
since the epoch, each a big-endian unsigned 32-bit integer. The record is the
same object as the JSON log line. Fluentd answers ``{"ack": "<chunk>"}``.

How nothing is lost while Fluentd is up, and nothing blocks while it is down:

- ``FluentForwarder.submit`` (called by ``FluentHandler.emit`` on the logging
  thread) encodes the entry and appends it to a bounded deque under a lock:
  no I/O, no waiting. When the buffer is full the *oldest* entry is dropped
  and counted in ``dropped``.
- One background thread takes up to ``max_batch`` entries from the head of
  the deque (leaving them there), sends them as one chunk and waits for its
  ack. Only an acknowledged chunk leaves the buffer (``forwarded``). No ack
  within ``ack_timeout_s``, or a broken connection: the connection is closed
  and the same chunk is sent again on a new one (``resent``), after an
  exponential backoff with jitter while Fluentd cannot be reached.
- ``close(timeout_s)`` sends what is still buffered within that time; what
  could not be sent is counted as ``unsent``.
- A record logged while its own thread holds the forwarder's lock (a
  finalizer that logs, run by the garbage collector in the middle of one of
  the forwarder's sections) cannot wait for that lock: it waits in a
  reentrant queue instead and joins the buffer the next time the lock is
  taken.

Delivery is at least once: a chunk whose ack was lost is sent twice, under
the same ``chunk`` id.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import logging
import os
import queue
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from .backoff import backoff_s

log = logging.getLogger(__name__)

TAG = "jobgate.worker"
EVENT_TIME_EXT_TYPE = 0
DEFAULT_PORT = 24224


class AckError(Exception):
    """Fluentd did not acknowledge a chunk in time (or closed the connection)."""


def parse_address(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``; the port defaults to 24224) as ``(host, port)``."""
    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"{value!r} is not host:port")
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ValueError(f"{value!r} has no host")
    try:
        port = int(port_text) if port_text else DEFAULT_PORT
    except ValueError:
        raise ValueError(f"{value!r}: the port must be a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"{value!r}: the port must be between 1 and 65535")
    return host, port


def event_time(time_ns: int) -> msgpack.ExtType:
    """Fluentd's EventTime: ext type 0, seconds and nanoseconds as big-endian uint32."""
    seconds, nanoseconds = divmod(time_ns, 1_000_000_000)
    return msgpack.ExtType(EVENT_TIME_EXT_TYPE, struct.pack(">II", seconds, nanoseconds))


def _plain(value: Any) -> Any:
    """``value`` with everything msgpack cannot hold turned into text."""
    if isinstance(value, str | bytes | bool | float) or value is None:
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return str(value)


def encode_entry(time_ns: int, record: Mapping[str, Any]) -> bytes:
    """One ``[EventTime, record]`` entry, msgpack-encoded."""
    try:
        return msgpack.packb([event_time(time_ns), record], default=str)
    except (TypeError, ValueError, OverflowError):
        return msgpack.packb([event_time(time_ns), _plain(record)])


def encode_forward(tag: str, entries: Iterable[bytes], count: int, chunk: str) -> bytes:
    """A Forward-mode message from already encoded entries."""
    packer = msgpack.Packer()
    head = packer.pack_array_header(3) + packer.pack(tag) + packer.pack_array_header(count)
    return head + b"".join(entries) + packer.pack({"chunk": chunk, "size": count})


def new_chunk_id() -> str:
    return base64.b64encode(os.urandom(16)).decode("ascii")


@dataclass(frozen=True, slots=True)
class ForwarderStats:
    #: Records Fluentd acknowledged.
    forwarded: int
    #: Records dropped because the buffer was full (the oldest go first).
    dropped: int
    #: Chunks sent again after a missing ack or a broken connection.
    resent: int
    #: Records still waiting in the buffer.
    buffered: int
    #: Records left unsent when the forwarder was closed.
    unsent: int
    connected: bool


class _OwnedLock:
    """A lock that knows which thread holds it (for ``threading.Condition``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.owner: int | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        acquired = self._lock.acquire(blocking, timeout)
        if acquired:
            self.owner = threading.get_ident()
        return acquired

    def release(self) -> None:
        self.owner = None
        self._lock.release()

    def _is_owned(self) -> bool:
        return self.owner == threading.get_ident()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class FluentForwarder:
    """A bounded buffer of log records and the thread that ships them to Fluentd."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tag: str = TAG,
        max_buffered: int = 10_000,
        max_buffered_bytes: int = 16 * 1024 * 1024,
        max_batch: int = 500,
        max_batch_bytes: int = 1024 * 1024,
        ack_timeout_s: float = 10.0,
        connect_timeout_s: float = 2.0,
        backoff_base_s: float = 0.1,
        backoff_max_s: float = 10.0,
    ) -> None:
        if max_buffered < 1 or max_batch < 1:
            raise ValueError("max_buffered and max_batch must be at least 1")
        self.host = host
        self.port = port
        self.tag = tag
        self.max_buffered = max_buffered
        self.max_buffered_bytes = max_buffered_bytes
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.ack_timeout_s = ack_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        # Guards everything below; never held during I/O.
        self._lock = _OwnedLock()
        self._condition = threading.Condition(self._lock)  # type: ignore[arg-type]
        #: Records logged by this thread while it held the lock (see the module's
        #: docstring); ``SimpleQueue.put`` is reentrant and never waits.
        self._deferred: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        #: ``(sequence number, encoded entry)``, oldest first.
        self._buffer: deque[tuple[int, bytes]] = deque()
        self._buffered_bytes = 0
        self._next_seq = 0
        #: Last sequence number of the chunk in flight (-1: none); entries up to
        #: it that overflow drops are only lost if that chunk is not acked.
        self._inflight_last = -1
        self._inflight_evicted = 0
        self._sender_waiting = False
        self._closing = False
        self._deadline = float("inf")
        self._forwarded = 0
        self._dropped = 0
        self._resent = 0
        self._unsent = 0
        self._stopping = threading.Event()
        self._socket: socket.socket | None = None
        self._connected = False
        self._thread = threading.Thread(target=self._run, name="jobgate-fluentd", daemon=True)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> FluentForwarder:
        self._thread.start()
        return self

    # -- the logging thread's side: append, never wait.

    def submit(self, time_ns: int, record: Mapping[str, Any]) -> None:
        """Queue one record for Fluentd; drops the oldest record when the buffer is full."""
        self.submit_encoded(encode_entry(time_ns, record))

    def submit_encoded(self, entry: bytes) -> None:
        if self._lock.owner == threading.get_ident():
            # This thread is inside one of the sections below: waiting for the
            # lock would wait for itself.
            self._deferred.put(entry)
            return
        with self._condition:
            self._append(entry)
            self._take_deferred()
            if self._sender_waiting:
                self._condition.notify()

    def _append(self, entry: bytes) -> None:
        if self._closing and not self._thread.is_alive():
            self._unsent += 1
            return
        self._buffer.append((self._next_seq, entry))
        self._next_seq += 1
        self._buffered_bytes += len(entry)
        while len(self._buffer) > self.max_buffered or (
            self._buffered_bytes > self.max_buffered_bytes and len(self._buffer) > 1
        ):
            self._evict_oldest()

    def _take_deferred(self) -> None:
        """Buffer the records deferred by ``submit_encoded`` (the lock held)."""
        while not self._deferred.empty():
            self._append(self._deferred.get_nowait())

    def _evict_oldest(self) -> None:
        seq, entry = self._buffer.popleft()
        self._buffered_bytes -= len(entry)
        if seq <= self._inflight_last:
            self._inflight_evicted += 1  # lost only if its chunk is not acked
        else:
            self._dropped += 1

    def stats(self) -> ForwarderStats:
        with self._condition:
            return ForwarderStats(
                forwarded=self._forwarded,
                dropped=self._dropped,
                resent=self._resent,
                buffered=len(self._buffer),
                unsent=self._unsent,
                connected=self._connected,
            )

    def close(self, timeout_s: float = 2.0) -> ForwarderStats:
        """Send what is buffered within ``timeout_s``, then stop; returns the final counts."""
        with self._condition:
            self._take_deferred()
            self._closing = True
            self._deadline = time.monotonic() + timeout_s
            self._condition.notify()
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s + 1.0)
        with self._condition:
            self._take_deferred()
            self._unsent += len(self._buffer)
            self._buffer.clear()
            self._buffered_bytes = 0
        self._disconnect()
        return self.stats()

    # -- the sender thread.

    def _run(self) -> None:
        failures = 0
        #: The chunk to send again (same id, same entries) after a failure.
        retry: tuple[str, list[tuple[int, bytes]]] | None = None
        while True:
            if retry is None:
                batch = self._next_batch()
                chunk_id = new_chunk_id()
            else:
                chunk_id, previous = retry
                batch = self._still_buffered(previous)
                if batch is not None and len(batch) != len(previous):
                    chunk_id = new_chunk_id()  # some overflowed meanwhile: a new chunk
            if batch is None:
                return
            if not batch:
                retry = None
                continue
            if retry is not None and chunk_id == retry[0]:
                with self._condition:
                    self._resent += 1
            try:
                self._send(batch, chunk_id)
            except (OSError, AckError) as error:
                self._disconnect()
                self._chunk_failed()
                retry = (chunk_id, batch)
                failures += 1
                if failures == 1:
                    log.warning(
                        "fluentd unreachable or not acknowledging; buffering log records",
                        extra={
                            "fluentd": self.address,
                            "error": str(error) or type(error).__name__,
                        },
                    )
                delay_s = backoff_s(failures, self.backoff_base_s, self.backoff_max_s)
                if not self._pause(delay_s):
                    return
                continue
            self._chunk_acked(batch)
            retry = None
            if failures:
                stats = self.stats()
                log.info(
                    "fluentd reachable again; forwarding resumed",
                    extra={
                        "fluentd": self.address,
                        "forwarded": stats.forwarded,
                        "dropped": stats.dropped,
                        "buffered": stats.buffered,
                    },
                )
            failures = 0

    def _next_batch(self) -> list[tuple[int, bytes]] | None:
        """Entries from the head of the buffer (they stay there until acked); None: stop."""
        with self._condition:
            while True:
                self._take_deferred()
                if self._buffer:
                    break
                if self._closing:
                    return None
                self._sender_waiting = True
                self._condition.wait()
                self._sender_waiting = False
            if self._closing and time.monotonic() >= self._deadline:
                return None
            batch: list[tuple[int, bytes]] = []
            size = 0
            for seq, entry in itertools.islice(self._buffer, self.max_batch):
                if batch and size + len(entry) > self.max_batch_bytes:
                    break
                batch.append((seq, entry))
                size += len(entry)
            self._inflight_last = batch[-1][0]
            self._inflight_evicted = 0
            return batch

    def _still_buffered(self, batch: list[tuple[int, bytes]]) -> list[tuple[int, bytes]] | None:
        """The entries of an unacknowledged chunk that overflow has not dropped; None: stop."""
        with self._condition:
            if self._closing and time.monotonic() >= self._deadline:
                return None
            # Entries leave only from the head: one is still there iff it is not older.
            head = self._buffer[0][0] if self._buffer else self._next_seq
            kept = [item for item in batch if item[0] >= head]
            self._inflight_last = kept[-1][0] if kept else -1
            self._inflight_evicted = 0
            return kept

    def _chunk_acked(self, batch: list[tuple[int, bytes]]) -> None:
        last = batch[-1][0]
        with self._condition:
            while self._buffer and self._buffer[0][0] <= last:
                _, entry = self._buffer.popleft()
                self._buffered_bytes -= len(entry)
            self._forwarded += len(batch)
            self._inflight_last = -1
            self._inflight_evicted = 0

    def _chunk_failed(self) -> None:
        with self._condition:
            self._dropped += self._inflight_evicted
            self._inflight_last = -1
            self._inflight_evicted = 0

    def _remaining(self, limit: float) -> float:
        """``limit``, cut to what is left before the close deadline."""
        with self._condition:
            deadline = self._deadline
        return max(min(limit, deadline - time.monotonic()), 0.001)

    def _send(self, batch: list[tuple[int, bytes]], chunk_id: str) -> None:
        sock = self._socket
        if sock is None:
            sock = socket.create_connection(
                (self.host, self.port), timeout=self._remaining(self.connect_timeout_s)
            )
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._socket = sock
            with self._condition:
                self._connected = True
        message = encode_forward(self.tag, (entry for _, entry in batch), len(batch), chunk_id)
        sock.settimeout(self._remaining(self.ack_timeout_s))
        sock.sendall(message)
        self._wait_ack(sock, chunk_id, time.monotonic() + self._remaining(self.ack_timeout_s))

    @staticmethod
    def _wait_ack(sock: socket.socket, chunk_id: str, deadline: float) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AckError("no ack in time")
            sock.settimeout(remaining)
            try:
                data = sock.recv(4096)
            except TimeoutError:
                raise AckError("no ack in time") from None
            if not data:
                raise AckError("connection closed before the ack")
            unpacker.feed(data)
            for reply in unpacker:
                if isinstance(reply, dict) and reply.get("ack") == chunk_id:
                    return

    def _disconnect(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        with self._condition:
            self._connected = False

    def _pause(self, delay_s: float) -> bool:
        """Wait before the next try; False when closing leaves no time for one."""
        with self._condition:
            closing, deadline = self._closing, self._deadline
        if closing:
            delay_s = min(delay_s, deadline - time.monotonic())
            if delay_s <= 0:
                return False
            time.sleep(delay_s)
            return time.monotonic() < deadline
        self._stopping.wait(delay_s)
        return True


class FluentHandler(logging.Handler):
    """A logging handler that only queues the record's JSON-line object for Fluentd."""

    def __init__(
        self,
        forwarder: FluentForwarder,
        as_dict: Callable[[logging.LogRecord], dict[str, Any]],
    ) -> None:
        super().__init__()
        self.forwarder = forwarder
        self._as_dict = as_dict

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self._as_dict(record)
            seconds = int(record.created)
            nanoseconds = int((record.created - seconds) * 1_000_000_000)
            self.forwarder.submit(seconds * 1_000_000_000 + nanoseconds, line)
        except Exception:  # noqa: BLE001 - logging.Handler's contract: report, never raise
            self.handleError(record)
