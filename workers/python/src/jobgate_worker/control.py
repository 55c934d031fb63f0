"""Cancel requests: the sharded control channel of every job running here.

A client's cancel of a running job reaches its worker as ``cancel`` on
``jobgate:control:{<job_id>}``, SPUBLISHed by ``jobgate.lua`` in the job's
slot. ``ControlChannels`` keeps one thread that SSUBSCRIBEs the channel of
each job this process runs — before its ``start``, so a cancel made once the
job is running cannot pass unheard — and SUNSUBSCRIBEs it when the attempt
ends. On a Redis Cluster a sharded channel is served by the master of its
slot only, so the thread keeps one pub/sub connection of its own per master
(``clients.Nodes``; a single Redis is one node owning every slot) and
subscribes each channel on its slot's master.

When a node's link fails (the node died, a failover), an SSUBSCRIBE answers
``MOVED`` or the server ends a subscription (the slot migrated), the slot map
is read again and every channel of that node is subscribed where the map now
says, with backoff while no node serves the slot; once they are all
confirmed, ``on_resync`` lets the runtime check the running jobs' records at
once for a cancel that was published meanwhile. Until then the periodic
check of running jobs (``housekeeping.LeaseKeeper``, every ``lease/3``)
stays the safety net: a cancel is never unnoticed for longer than that.

All pub/sub I/O happens on the control thread; other threads only ask
(``watch``/``unwatch``) and wake it through a pipe, so no connection is used
by two threads.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from redis.connection import Connection

from . import keys
from .clients import Nodes

log = logging.getLogger(__name__)

#: Longest wait between two looks at the links (also paces health checks).
POLL_S = 1.0
#: Backoff while a channel cannot be subscribed anywhere.
PLACE_RETRY_MIN_S = 0.1
PLACE_RETRY_MAX_S = 2.0
#: How often subscribed channels are checked against the client's slot map,
#: which the command path refreshes whenever it meets a moved slot.
RECONCILE_S = 1.0
#: A link holding subscriptions is PINGed this often; one whose PING stays
#: unanswered this long is taken for lost (a node gone without closing).
PING_INTERVAL_S = 2.0
PING_TIMEOUT_S = 5.0


class _Link:
    """One node's subscription connection and the channels subscribed through it.

    Commands are written raw (several in one write) and replies read raw:
    the connection is used by the control thread alone, in subscribed mode,
    so redis-py's ``PubSub`` bookkeeping would only cost time per job.
    """

    def __init__(self, node: str, connection: Connection) -> None:
        self.node = node
        self.connection = connection
        self.channels: set[str] = set()
        # Not annotated upstream.
        self._pack: Any = connection.pack_commands
        self._send: Any = connection.send_packed_command
        #: When the oldest unanswered PING was sent (None: none is).
        self.ping_sent_at: float | None = None
        self.next_ping = time.monotonic() + PING_INTERVAL_S

    def send(self, commands: list[tuple[str, ...]]) -> None:
        if commands:
            self._send(self._pack(commands), check_health=False)

    def replies(self) -> Iterator[Any]:
        """The replies already arrived (raises on a lost link or an error reply)."""
        while self.connection.can_read(timeout=0):
            yield self.connection.read_response()

    def fileno(self) -> int | None:
        # redis-py keeps the socket private; ``select`` needs its descriptor.
        sock = getattr(self.connection, "_sock", None)
        return sock.fileno() if sock is not None else None


class ControlChannels:
    """Sharded subscriptions to the control channels of the jobs running here."""

    def __init__(
        self,
        nodes: Callable[[], Nodes],
        on_cancel: Callable[[str], None],
        on_resync: Callable[[], None],
        poll_s: float = POLL_S,
    ) -> None:
        """``nodes`` gives the slot map (it raises ``redis.ConnectionError`` while
        Redis cannot be reached); ``on_cancel(job_id)`` and ``on_resync()`` run
        on the control thread and must be short."""
        self._nodes = nodes
        self._on_cancel = on_cancel
        self._on_resync = on_resync
        self._poll_s = poll_s
        self._lock = threading.Lock()
        #: Channel -> set once its subscription is confirmed (any thread).
        self._wanted: dict[str, threading.Event] = {}
        #: Channels whose wanted state changed since the thread last looked.
        self._touched: set[str] = set()
        self._stopping = threading.Event()
        # A socket pair rather than a pipe: once closed, a late wake-up fails
        # instead of writing to whatever file reused the descriptor.
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="jobgate-control", daemon=True)
        # -- the control thread's own state.
        self._links: dict[str, _Link] = {}
        #: Channel -> the node it is subscribed on (confirmed or not).
        self._placed: dict[str, str] = {}
        self._confirmed: set[str] = set()
        #: Wanted channels subscribed nowhere (after a failure), tried with backoff.
        self._unplaced: set[str] = set()
        #: Channels lost with a link and not yet confirmed again.
        self._resyncing: set[str] = set()
        #: Commands to write per node at the end of this step (one write each).
        self._outbox: dict[str, list[tuple[str, ...]]] = {}
        self._refresh_needed = False
        self._place_retry_s = PLACE_RETRY_MIN_S
        self._next_place = 0.0
        self._next_reconcile = 0.0

    # -- any thread.

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._wake_write.close()
        self._wake_read.close()

    def watch(self, *job_ids: str) -> None:
        """Subscribe the jobs' control channels (the thread does it at once)."""
        added = False
        with self._lock:
            for job_id in job_ids:
                channel = keys.control_channel(job_id)
                if channel not in self._wanted:
                    self._wanted[channel] = threading.Event()
                    self._touched.add(channel)
                    added = True
        if added:
            self._wake()

    def wait_watching(self, job_id: str, timeout_s: float) -> bool:
        """True once the job's channel is subscribed (False after ``timeout_s``)."""
        with self._lock:
            confirmed = self._wanted.get(keys.control_channel(job_id))
        return confirmed is not None and confirmed.wait(timeout_s)

    def unwatch(self, job_id: str) -> None:
        """The job no longer runs here: unsubscribe its channel.

        Without waking the thread: it unsubscribes at its next wake-up (the
        next ``watch``, a message, or within ``poll_s``). A cancel heard
        meanwhile finds no run and is ignored.
        """
        channel = keys.control_channel(job_id)
        with self._lock:
            if self._wanted.pop(channel, None) is not None:
                self._touched.add(channel)

    def watching(self) -> int:
        """How many channels are subscribed and confirmed (for tests and logs)."""
        with self._lock:
            return sum(1 for confirmed in self._wanted.values() if confirmed.is_set())

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending), or closed
            self._wake_write.send(b"w")

    # -- the control thread.

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._step()
            except Exception:
                # A bug here must not end cancellation for good: the periodic
                # check covers while the loop starts over.
                log.exception("control channel loop failed; starting over")
                self._drop_all_links()
                self._stopping.wait(PLACE_RETRY_MAX_S)
        self._drop_all_links()

    def _step(self) -> None:
        self._apply_changes()
        now = time.monotonic()
        if self._unplaced and now >= self._next_place:
            self._place_unplaced()
        if self._placed and now >= self._next_reconcile:
            self._next_reconcile = now + RECONCILE_S
            self._reconcile()
        self._ping_links(now)
        self._send_outbox()
        self._read_links()
        self._wait()

    def _apply_changes(self) -> None:
        with self._lock:
            touched, self._touched = self._touched, set()
            wanted = {channel: self._wanted.get(channel) for channel in touched}
        for channel, confirmed in wanted.items():
            if confirmed is None:
                self._forget(channel)
            elif channel in self._confirmed:
                confirmed.set()
            elif channel not in self._placed and channel not in self._unplaced:
                self._place(channel)

    def _queue(self, link: _Link, *command: str) -> None:
        self._outbox.setdefault(link.node, []).append(command)

    def _send_outbox(self) -> None:
        outbox, self._outbox = self._outbox, {}
        for node, commands in outbox.items():
            link = self._links.get(node)
            if link is None:
                continue
            try:
                link.send(commands)
            except (redis.RedisError, OSError) as error:
                self._lose_link(node, error)

    def _forget(self, channel: str) -> None:
        self._unplaced.discard(channel)
        self._resyncing.discard(channel)
        self._confirmed.discard(channel)
        node = self._placed.pop(channel, None)
        link = self._links.get(node) if node is not None else None
        if link is not None:
            link.channels.discard(channel)
            self._queue(link, "SUNSUBSCRIBE", channel)

    def _place(self, channel: str) -> None:
        """SSUBSCRIBE ``channel`` on its slot's master (confirmed when the reply comes)."""
        try:
            nodes = self._nodes()
            node = nodes.node_for(channel)
            link = self._links.get(node)
            if link is None:
                link = self._links[node] = _Link(node, nodes.open_link(node))
        except (redis.RedisError, OSError):
            log.debug("cannot subscribe a control channel yet", exc_info=True)
            self._unplaced.add(channel)
            self._refresh_needed = True
            return
        self._queue(link, "SSUBSCRIBE", channel)
        link.channels.add(channel)
        self._placed[channel] = node
        self._unplaced.discard(channel)

    def _place_unplaced(self) -> None:
        if self._refresh_needed:
            try:
                self._nodes().refresh()
                self._refresh_needed = False
            except (redis.RedisError, OSError):
                log.debug("reading the slot map failed; trying again", exc_info=True)
        with self._lock:
            wanted = set(self._wanted)
        for channel in sorted(self._unplaced):
            if channel in wanted:
                self._place(channel)
            else:
                self._unplaced.discard(channel)
        if self._unplaced:
            self._next_place = time.monotonic() + self._place_retry_s
            self._place_retry_s = min(self._place_retry_s * 2, PLACE_RETRY_MAX_S)
        else:
            self._place_retry_s = PLACE_RETRY_MIN_S

    def _reconcile(self) -> None:
        """Move channels whose slot the client's map now gives to another node
        (the command path refreshes it whenever it meets a moved slot)."""
        try:
            nodes = self._nodes()
            moved = [
                channel for channel, node in self._placed.items() if nodes.node_for(channel) != node
            ]
        except (redis.RedisError, OSError):
            return
        for channel in moved:
            log.info(
                "control channel's slot moved; subscribing where it is now",
                extra={"channel": channel},
            )
            node = self._placed[channel]
            link = self._links.get(node)
            if link is not None:
                link.channels.discard(channel)
                self._queue(link, "SUNSUBSCRIBE", channel)
            self._requeue(channel)

    def _requeue(self, channel: str) -> None:
        """``channel`` is subscribed nowhere now: subscribe it again (and resync after)."""
        self._placed.pop(channel, None)
        self._confirmed.discard(channel)
        with self._lock:
            confirmed = self._wanted.get(channel)
        if confirmed is None:
            return
        confirmed.clear()
        self._resyncing.add(channel)
        self._unplaced.add(channel)
        self._next_place = 0.0

    def _lose_link(self, node: str, error: BaseException) -> None:
        link = self._links.pop(node, None)
        self._outbox.pop(node, None)
        if link is None:
            return
        log.warning(
            "control channel link lost; subscribing its channels again",
            extra={"node": node, "channels": len(link.channels), "error": str(error)},
        )
        Nodes.close_link(link.connection)
        for channel in [c for c, n in self._placed.items() if n == node]:
            self._requeue(channel)
        self._refresh_needed = True

    def _drop_all_links(self) -> None:
        for link in self._links.values():
            Nodes.close_link(link.connection)
        self._links.clear()
        self._outbox.clear()
        for channel in list(self._placed):
            self._requeue(channel)

    def _ping_links(self, now: float) -> None:
        """PING links that hold subscriptions; one unanswered too long is lost."""
        for node, link in list(self._links.items()):
            if link.ping_sent_at is not None and now - link.ping_sent_at > PING_TIMEOUT_S:
                self._lose_link(node, redis.TimeoutError("no answer to PING"))
            elif link.channels and now >= link.next_ping:
                link.next_ping = now + PING_INTERVAL_S
                if link.ping_sent_at is None:
                    link.ping_sent_at = now
                self._queue(link, "PING")

    def _read_links(self) -> None:
        for node, link in list(self._links.items()):
            try:
                for reply in link.replies():
                    self._handle(link, reply)
            except (redis.RedisError, OSError) as error:
                self._lose_link(node, error)

    def _handle(self, link: _Link, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
            if reply == "PONG":
                link.ping_sent_at = None
            return
        kind, channel = str(reply[0]), str(reply[1])
        if kind == "smessage" and len(reply) > 2:
            job_id = keys.job_of_control_channel(channel)
            if job_id is None:
                return
            if reply[2] == "cancel":
                self._on_cancel(job_id)
            else:
                log.debug("unknown control message", extra={"job_id": job_id})
        elif kind == "ssubscribe":
            self._confirm(link.node, channel)
        elif kind == "sunsubscribe" and self._placed.get(channel) == link.node:
            # Ended by the server, not by us (we forget a channel before
            # unsubscribing it): its slot moved to another node.
            log.info(
                "control channel's slot moved; subscribing where it is now",
                extra={"channel": channel, "node": link.node},
            )
            link.channels.discard(channel)
            self._requeue(channel)
            self._refresh_needed = True
        elif kind == "pong":
            link.ping_sent_at = None

    def _confirm(self, node: str, channel: str) -> None:
        if self._placed.get(channel) != node:
            return  # a confirmation from before the channel moved
        with self._lock:
            confirmed = self._wanted.get(channel)
        if confirmed is None:
            return
        self._confirmed.add(channel)
        confirmed.set()
        if channel in self._resyncing:
            self._resyncing.discard(channel)
            if not self._resyncing:
                log.info("control channels subscribed again")
                self._on_resync()

    def _wait(self) -> None:
        descriptors = [self._wake_read.fileno()]
        for link in self._links.values():
            descriptor = link.fileno()
            if descriptor is not None:
                descriptors.append(descriptor)
        timeout = self._poll_s
        if self._unplaced:
            timeout = min(timeout, max(self._next_place - time.monotonic(), 0.0))
        try:
            ready, _, _ = select.select(descriptors, [], [], timeout)
        except (OSError, ValueError):
            # A link's socket closed under us: the next read finds out.
            return
        if descriptors[0] in ready:
            with contextlib.suppress(OSError):  # drained
                while self._wake_read.recv(4096):
                    pass
