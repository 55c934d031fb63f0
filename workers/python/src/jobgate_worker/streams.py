"""Queue streams and the consumer group: read, reclaim, acknowledge.

Every Redis stream command of the worker lives here, together with the one
recovery it needs: a ``NOGROUP`` error (Redis restarted without data, or the
stream was deleted) re-creates the consumer group on all bands and the
command is tried once more. Renewing held entries is the renewer
process's (``renewer.py``).

An entry whose terminal call shares a pipeline with its acknowledgement is
acknowledged by ``ACK_ENDED`` (``queue_ack_ended``): only once its job has
ended, so a terminal call that did not run (``NOSCRIPT``) or failed (a
script error) leaves the entry pending, to be reclaimed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import redis

from . import keys
from .clients import Client, fixed_client
from .script import LuaScript, find_script

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Entry:
    """One queue entry as delivered to this worker."""

    stream: str
    entry_id: str
    fields: Mapping[str, str]
    band_index: int
    reclaimed: bool = False
    #: Monotonic time just before the read (or claim) that delivered the entry:
    #: the entry's idle time in the group is at most ``now - delivered_at``.
    delivered_at: float = 0.0

    @property
    def job_id(self) -> str:
        return self.fields.get("job_id", "")

    @property
    def key(self) -> tuple[str, str]:
        return (self.stream, self.entry_id)


@dataclass(frozen=True, slots=True)
class ReclaimResult:
    entries: list[Entry]
    #: ``(stream, entry_id)`` of pending entries that no longer exist in the stream.
    deleted: list[tuple[str, str]]


#: XACK + XDEL of the entries whose job has ended (its record terminal, or
#: gone); the others are left pending. KEYS: stream₁, job₁, …, streamₙ, jobₙ;
#: ARGV: the group, then entry_id₁, …, entry_idₙ. Reply: per entry, 1 if it
#: was acknowledged, 0 if not.
ACK_ENDED = LuaScript(
    """
local acknowledged = {}
for i = 1, #KEYS / 2 do
  local stream, id = KEYS[2 * i - 1], ARGV[i + 1]
  local status = redis.call('HGET', KEYS[2 * i], 'status')
  if status == false or status == 'completed' or status == 'failed'
      or status == 'cancelled' then
    redis.call('XACK', stream, ARGV[1], id)
    redis.call('XDEL', stream, id)
    acknowledged[i] = 1
  else
    acknowledged[i] = 0
  end
end
return acknowledged
"""
)


def queue_ack_ended(pipe: redis.client.Pipeline, entries: Sequence[Entry]) -> None:
    """Add one ``ACK_ENDED`` call for ``entries`` to ``pipe`` (a single Redis only:
    the entries' streams and their jobs' records are in different slots).
    Place it after the entries' terminal calls; ``ack_ended_replies`` reads its reply."""
    script_keys = [key for entry in entries for key in (entry.stream, keys.job_key(entry.job_id))]
    ACK_ENDED.queue(pipe, script_keys, [keys.CONSUMER_GROUP, *(e.entry_id for e in entries)])


def ack_ended_replies(client: Client, raw: Any, count: int) -> list[bool]:
    """Whether each entry of a ``queue_ack_ended`` call was acknowledged.

    None was when the call failed; when it failed for want of the script
    (``NOSCRIPT``: a first use, a restart, a flush), the script is loaded
    for the next call (best effort) and the callers acknowledge their
    entries themselves.
    """
    if isinstance(raw, Exception):
        if isinstance(raw, redis.exceptions.NoScriptError):
            try:
                ACK_ENDED.load(client)
            except redis.RedisError:
                log.warning("could not load the acknowledgement script", exc_info=True)
        return [False] * count
    return [bool(int(flag)) for flag in raw]


def _is_nogroup(error: redis.ResponseError) -> bool:
    # redis-py has no exception class for NOGROUP; the reply prefix is stable.
    return str(error).startswith("NOGROUP")


def _is_busygroup(error: redis.ResponseError) -> bool:
    return str(error).startswith("BUSYGROUP")


class QueueStreams:
    """The three band streams of one queue, seen by one consumer."""

    def __init__(
        self,
        client: Client | None,
        queue: str,
        consumer: str,
        current: Callable[[], Client] | None = None,
        on_groups_recreated: Callable[[], None] | None = None,
        *,
        proto_dir: str | None = None,
    ) -> None:
        if current is None:
            if client is None:
                raise ValueError("QueueStreams needs a client or a way to pick one")
            current = fixed_client(client)
        self._current = current
        self._on_groups_recreated = on_groups_recreated
        self.queue = queue
        self.consumer = consumer
        self.streams = keys.queue_streams(queue)
        self._band_index = {stream: index for index, stream in enumerate(self.streams)}
        # ``dead_letters.lua`` lies beside ``jobgate.lua``; read now, so that a
        # missing file stops the worker at start rather than at a dead letter.
        dead_letters = find_script(proto_dir).with_name("dead_letters.lua")
        self._dead_letters = LuaScript(dead_letters.read_text(encoding="utf-8"))

    @property
    def client(self) -> Client:
        """The calling thread's client."""
        return self._current()

    def ensure_groups(self) -> None:
        """``XGROUP CREATE <band> jobgate-workers 0 MKSTREAM`` on every band."""
        for stream in self.streams:
            try:
                self.client.xgroup_create(stream, keys.CONSUMER_GROUP, id="0", mkstream=True)
            except redis.ResponseError as error:
                if not _is_busygroup(error):
                    raise

    def _with_group(self, command: Callable[[], T]) -> T:
        try:
            return command()
        except redis.ResponseError as error:
            if not _is_nogroup(error):
                raise
            log.warning("consumer group missing; creating it again", extra={"queue": self.queue})
            self.ensure_groups()
            if self._on_groups_recreated is not None:
                # Redis probably lost its data: say again which kinds we serve.
                self._on_groups_recreated()
            return command()

    def _entries(self, reply: Any, sent_at: float, reclaimed: bool = False) -> list[Entry]:
        entries: list[Entry] = []
        for stream, items in reply or []:
            band_index = self._band_index[stream]
            for entry_id, fields in items:
                if fields is None:
                    continue
                entries.append(Entry(stream, entry_id, fields, band_index, reclaimed, sent_at))
        return entries

    def _read_one(self, stream: str, count: int) -> Any:
        return self.client.xreadgroup(
            keys.CONSUMER_GROUP, self.consumer, {stream: ">"}, count=count
        )

    def _autoclaim(self, stream: str, min_idle_ms: int, cursor: str, count: int) -> Any:
        return self.client.xautoclaim(
            stream, keys.CONSUMER_GROUP, self.consumer, min_idle_ms, cursor, count=count
        )

    def paused(self) -> bool:
        """Whether an operator paused the queue (``jobgate:paused:{<queue>}``)."""
        return bool(self.client.exists(keys.paused_key(self.queue)))

    def read(self, count: int, block_ms: int) -> list[Entry]:
        """Up to ``count`` new entries, highest band first, never more than asked
        unless several bands receive entries while a blocking read waits."""
        entries: list[Entry] = []
        for stream in self.streams:
            wanted = count - len(entries)
            sent_at = time.monotonic()
            reply = self._with_group(partial(self._read_one, stream, wanted))
            entries.extend(self._entries(reply, sent_at))
            if len(entries) >= count:
                return entries
        if entries or block_ms <= 0:
            return entries
        # Nothing waiting anywhere: block on all bands at once. A blocked
        # XREADGROUP is served by the one stream that received data, so this
        # returns at most ``count`` entries except in a narrow race.
        sent_at = time.monotonic()
        reply = self._with_group(
            lambda: self.client.xreadgroup(
                keys.CONSUMER_GROUP,
                self.consumer,
                dict.fromkeys(self.streams, ">"),
                count=count,
                block=block_ms,
            )
        )
        entries = self._entries(reply, sent_at)
        entries.sort(key=lambda entry: entry.band_index)
        return entries

    def reclaim(self, count: int, min_idle_ms: int, max_rounds: int = 8) -> ReclaimResult:
        """``XAUTOCLAIM`` up to ``count`` entries idle longer than ``min_idle_ms``."""
        claimed: list[Entry] = []
        deleted: list[tuple[str, str]] = []
        for stream in self.streams:
            cursor = "0-0"
            for _ in range(max_rounds):
                wanted = count - len(claimed)
                if wanted <= 0:
                    break
                sent_at = time.monotonic()
                reply = self._with_group(
                    partial(self._autoclaim, stream, min_idle_ms, cursor, wanted)
                )
                cursor = reply[0]
                claimed.extend(self._entries([(stream, reply[1])], sent_at, reclaimed=True))
                if len(reply) > 2:
                    deleted.extend((stream, entry_id) for entry_id in reply[2])
                # Redis before 7 reports deleted entries inline, with no fields.
                deleted.extend((stream, item[0]) for item in reply[1] if item[1] is None)
                if cursor == "0-0":
                    break
        return ReclaimResult(claimed, deleted)

    def ack_delete(self, entry: Entry) -> None:
        """``XACK`` + ``XDEL`` atomically: the entry is done and leaves the backlog."""
        pipe = self.client.pipeline(transaction=True)
        self.queue_ack_delete(pipe, entry)
        pipe.execute()

    @staticmethod
    def queue_ack_delete(pipe: redis.client.Pipeline, entry: Entry) -> None:
        pipe.xack(entry.stream, keys.CONSUMER_GROUP, entry.entry_id)
        pipe.xdel(entry.stream, entry.entry_id)

    @staticmethod
    def queue_ack_if_ended(pipe: redis.client.Pipeline, entry: Entry) -> None:
        """``queue_ack_ended`` of one entry; ``acknowledged_if_ended`` reads its reply."""
        queue_ack_ended(pipe, [entry])

    def acknowledged_if_ended(self, raw: Any) -> bool:
        """Whether the ``queue_ack_if_ended`` call answering ``raw`` acknowledged its entry."""
        return ack_ended_replies(self.client, raw, 1)[0]

    def requeue(self, entry: Entry, enqueued_at_ms: int) -> str:
        """Put a fresh copy of ``entry`` at the end of its band and drop the old one."""
        fields = dict(entry.fields)
        fields["enqueued_at"] = str(enqueued_at_ms)
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(entry.stream, fields)  # type: ignore[arg-type]
        pipe.xack(entry.stream, keys.CONSUMER_GROUP, entry.entry_id)
        pipe.xdel(entry.stream, entry.entry_id)
        new_id: str = pipe.execute()[0]
        return new_id

    def dead_letter(self, entry: Entry, reason: str, error: str = "") -> None:
        """Bury ``entry`` in ``jobgate:dead:{<queue>}``, acknowledging and deleting it.

        One call of ``dead_letters.lua`` ``bury``, on the queue's hash tag: the
        dead letter and the acknowledgement happen together, and a job that has
        a dead letter already gets no second one (two workers can both see a
        job run out of attempts: one by ``retry``, one reclaiming its entry).
        """
        fields: dict[str, str] = dict(entry.fields)
        fields["job_id"] = entry.job_id
        fields["reason"] = reason
        if error:
            fields["error"] = error
        fields["entry_id"] = entry.entry_id
        fields["stream"] = entry.stream
        fields["consumer"] = self.consumer
        pairs = [item for pair in fields.items() for item in pair]
        self._dead_letters(
            self.client,
            [keys.dead_letter_stream(self.queue), keys.dead_letter_index(self.queue), entry.stream],
            ["bury", keys.CONSUMER_GROUP, entry.job_id, entry.entry_id, *pairs],
        )

    def server_time_ms(self) -> int:
        """The Redis clock, which every jobgate timestamp is taken from."""
        seconds, micros = self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000
