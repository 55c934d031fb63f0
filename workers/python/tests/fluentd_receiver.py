"""A small Fluentd ``in_forward`` stand-in: decodes Forward-protocol v1 messages, acks chunks.

It accepts Message, Forward and PackedForward modes as the specification
describes them, checks what it decodes (``EventTime`` is ext type 0 with 8
bytes, ``size`` matches the entries), answers ``{"ack": chunk}`` for every
chunk unless told to withhold some acks, and can be stopped and started
again on the same port.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack


@dataclass(frozen=True)
class EventTime:
    seconds: int
    nanoseconds: int

    @property
    def ns(self) -> int:
        return self.seconds * 1_000_000_000 + self.nanoseconds


@dataclass
class Chunk:
    tag: str
    chunk: str | None
    size: int | None
    entries: list[tuple[EventTime | int, dict[str, Any]]] = field(default_factory=list)
    acked: bool = False


def _ext_hook(code: int, data: bytes) -> Any:
    if code == 0:
        assert len(data) == 8, f"EventTime must be 8 bytes, got {len(data)}"
        return EventTime(*struct.unpack(">II", data))
    return msgpack.ExtType(code, data)


def _entries(raw: Any) -> list[tuple[Any, dict[str, Any]]]:
    if isinstance(raw, bytes):  # PackedForward: a msgpack stream of entries
        unpacker = msgpack.Unpacker(raw=False, ext_hook=_ext_hook)
        unpacker.feed(raw)
        raw = list(unpacker)
    entries = []
    for entry in raw:
        assert isinstance(entry, list | tuple), entry
        assert len(entry) == 2, entry
        event_time, record = entry
        assert isinstance(event_time, EventTime | int), event_time
        assert isinstance(record, dict), record
        entries.append((event_time, record))
    return entries


class ForwardReceiver:
    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.chunks: list[Chunk] = []
        #: How many of the next chunks get no ack (their connection is then left open).
        self.withhold_acks = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ForwardReceiver:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._spawn(self._accept, listener)
        return self

    def stop(self) -> None:
        """Close the listener and every connection (like Fluentd going away)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        for thread in self._threads:
            thread.join(5)
        self._threads = []

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._connections.append(connection)
            self._spawn(self._serve, connection)

    def _serve(self, connection: socket.socket) -> None:
        unpacker = msgpack.Unpacker(raw=False, ext_hook=_ext_hook)
        while True:
            try:
                data = connection.recv(65536)
            except OSError:
                return
            if not data:
                return
            unpacker.feed(data)
            for message in unpacker:
                self._handle(connection, message)

    def _handle(self, connection: socket.socket, message: Any) -> None:
        assert isinstance(message, list), message
        tag = message[0]
        assert isinstance(tag, str), message
        if isinstance(message[1], EventTime | int):  # Message mode
            entries = [(message[1], message[2])]
            options = message[3] if len(message) > 3 else {}
        else:
            entries = _entries(message[1])
            options = message[2] if len(message) > 2 else {}
        options = options or {}
        chunk = Chunk(tag, options.get("chunk"), options.get("size"), entries)
        if chunk.size is not None:
            assert chunk.size == len(entries), (chunk.size, len(entries))
        with self._lock:
            self.chunks.append(chunk)
            withhold = chunk.chunk is not None and self.withhold_acks > 0
            if withhold:
                self.withhold_acks -= 1
        if chunk.chunk is not None and not withhold:
            chunk.acked = True
            with contextlib.suppress(OSError):
                connection.sendall(msgpack.packb({"ack": chunk.chunk}))

    # -- what arrived.

    def records(self) -> list[dict[str, Any]]:
        """Every record received in an acknowledged chunk, in arrival order."""
        with self._lock:
            return [record for chunk in self.chunks if chunk.acked for _, record in chunk.entries]

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 10
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            records = self.records()
            if predicate(records):
                return records
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; {len(records)} records so far")
            time.sleep(0.01)
