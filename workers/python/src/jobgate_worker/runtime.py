"""The worker process at run time: the read loop, the handler pool, shutdown.

One thread (the caller of ``run``) owns the consumer-group reads: it waits
for a free handler slot, reclaims idle entries when a reclaim is due, reads
at most as many new entries as there are free slots (highest band first)
and hands them to a fixed pool of handler threads. Timers, the running
jobs' checks, kind registration and the outcome counters' flush run on the
scheduler thread; cancel messages arrive on the control thread
(``control.py``). Leases are renewed by a child process (``renewal.py``),
which no handler holding the GIL can starve. Redis is a single server or a
Redis Cluster, whichever ``redis_url`` names (``clients.py``).

Shutdown (SIGTERM/SIGINT, or ``stop()``): stop reading, let running jobs
finish within ``grace_s`` (a second signal ends the wait), then give back
the jobs still running: each is ``release``d — back to ``queued`` with a
``retrying`` event, code ``worker_shutdown``, its attempt not counted — and
its entry re-enqueued, so another worker starts it at once with the same
attempt number. Then re-enqueue jobs waiting out a retry delay, and return.
If Redis cannot be reached at that point, unfinished entries stay pending in
the group and are reclaimed once their lease expires (that ``start`` counts
as a new attempt).

``run`` returns the exit status: 0 once stopped as asked, 1 when an error
stopped the runtime (the same shutdown runs first).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
from collections import deque
from types import FrameType

import redis

from .batching import PipelineBatcher
from .clients import RedisClients
from .control import ControlChannels
from .dask_provider import DaskProvider
from .execution import JobExecutor, Started
from .heartbeat import Heartbeat
from .housekeeping import KindRegistry, LeaseKeeper
from .inflight import InFlight
from .job_record import JobRecords
from .renewal import LeaseRenewer
from .reporting import OutcomeReporter
from .requeue import Requeuer
from .scheduler import Scheduler
from .script import JobScript
from .settings import Settings
from .spans import AttemptSpans
from .stats import FLUSH_INTERVAL_S, OutcomeCounts
from .streams import ACK_ENDED, Entry, QueueStreams
from .tracing import Telemetry, install, uninstall
from .worker import Worker

log = logging.getLogger("jobgate_worker")

#: Exit statuses of ``Runtime.run``: stopped as asked, or stopped by an error.
EXIT_OK = 0
EXIT_FAILED = 1
#: Longest the read loop waits, once a slot is free, for more to free up
#: (``Slots``): it bounds what batching adds to a job's wait in the queue.
SLOTS_LINGER_S = 0.002
#: How often the read loop asks whether the queue is paused. A pause takes
#: effect within this plus one read.
PAUSE_CHECK_INTERVAL_S = 0.25


class Slots:
    """Counts free handler threads; the read loop never fetches more than that.

    When every slot is taken, the read loop waits for one to free up, and
    then at most ``SLOTS_LINGER_S`` more for a few more (an eighth of them):
    so that when jobs are short and waiting in the queue, one read and one
    pipeline of ``start`` serve several slots instead of one each, and the
    read loop is woken a few times per batch rather than at every job's end.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = size
        #: Free slots worth a read without lingering.
        self.enough = max(1, size // 8)
        self._condition = threading.Condition()

    @property
    def free(self) -> int:
        with self._condition:
            return self._free

    def take(self) -> None:
        with self._condition:
            self._free -= 1

    def give(self) -> None:
        with self._condition:
            self._free += 1
            # Wake the read loop when the first slot frees up (it starts to
            # linger) and once enough are free; not at every slot between.
            if self._free in (1, self.enough, self.size):
                self._condition.notify_all()

    def wait_free(self, stopping: threading.Event, timeout: float) -> int:
        with self._condition:
            if self._free <= 0 and not stopping.is_set():
                self._condition.wait(timeout)
                if 0 < self._free < self.enough and not stopping.is_set():
                    self._condition.wait(SLOTS_LINGER_S)
            return self._free

    def wait_all_free(self, timeout: float, abort: threading.Event | None = None) -> bool:
        """True once every slot is free; False after ``timeout`` or once ``abort`` is set."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._free < self.size:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (abort is not None and abort.is_set()):
                    return False
                self._condition.wait(remaining)
            return True

    def wake(self) -> None:
        with self._condition:
            self._condition.notify_all()


class Runtime:
    """Consumes one queue for one ``Worker`` until stopped."""

    def __init__(
        self, worker: Worker, settings: Settings, telemetry: Telemetry | None = None
    ) -> None:
        """``telemetry`` defaults to the span export ``settings`` ask for (owned, shut down)."""
        self.worker = worker
        self.settings = settings
        self._owns_telemetry = telemetry is None
        self.telemetry = telemetry or Telemetry.configured(
            otlp_traces_endpoint=settings.otlp_traces_endpoint, span_file=settings.span_file
        )
        self.queue = settings.queue or worker.queue
        self.consumer = settings.consumer
        # Opened on first use: a worker started before Redis waits for it.
        self.clients = RedisClients(
            settings.redis_url, socket_timeout=max(10.0, settings.block_ms / 1000 + 5)
        )
        self.script = JobScript.load(None, settings.proto_dir, self.clients.current)
        self.streams = QueueStreams(
            None,
            self.queue,
            self.consumer,
            self.clients.current,
            on_groups_recreated=self._register_kinds,
            proto_dir=settings.proto_dir,
        )
        self.records = JobRecords(self.clients.current)
        self.scheduler = Scheduler()
        self.dask = DaskProvider(settings.dask_scheduler_address, settings.dask_timeouts)
        self.renewer = LeaseRenewer(
            settings.redis_url,
            self.consumer,
            settings.lease_renew_interval_s,
            log_level=settings.log_level,
        )
        self.inflight = InFlight(observer=self.renewer)
        self.counts = OutcomeCounts(self.queue)
        self.control = ControlChannels(
            lambda: self.clients.nodes,
            self._on_cancel,
            self._on_control_resync,
            on_watching=self._on_control_watching,
            after_s=settings.control_after_s,
        )
        self.requeuer = Requeuer(self.streams, self.scheduler, self.inflight)
        spans = AttemptSpans(self.telemetry, self.queue, self.consumer)
        # The handler threads' start and terminal calls share round trips
        # (their script calls sent as one ``batch``).
        self.batcher = batcher = PipelineBatcher(self.clients.current, script=self.script)
        reporter = OutcomeReporter(
            script=self.script,
            streams=self.streams,
            inflight=self.inflight,
            records=self.records,
            requeuer=self.requeuer,
            spans=spans,
            lease_ms=settings.lease_ms,
            counts=self.counts,
            batcher=batcher,
        )
        self.executor = JobExecutor(
            worker=worker,
            queue=self.queue,
            consumer=self.consumer,
            script=self.script,
            streams=self.streams,
            records=self.records,
            scheduler=self.scheduler,
            dask=self.dask,
            inflight=self.inflight,
            spans=spans,
            reporter=reporter,
            control=self.control,
            counts=self.counts,
            batcher=batcher,
        )
        self.leases = LeaseKeeper(self.renewer, self.inflight, self.records, self.executor.stop)
        self.kinds = KindRegistry(self.streams, sorted(worker.handlers), worker.params_schemas)
        self.heartbeat = Heartbeat(
            lambda: self.streams.client,
            self.queue,
            self.consumer,
            kinds=sorted(worker.handlers),
            concurrency=settings.concurrency,
            interval_s=settings.heartbeat_s,
            in_hand=lambda: [entry.job_id for entry in self.inflight.held()],
            on_server_time=self.counts.note_server_time,
        )
        self.slots = Slots(settings.concurrency)
        self._work: queue.SimpleQueue[tuple[Entry, Started | None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._backlog: deque[Entry] = deque()
        self._stopping = threading.Event()
        self._force = threading.Event()
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._next_reclaim = 0.0
        self._next_pause_check = 0.0
        self._paused = False
        self._log_extra = {"queue": self.queue, "consumer": self.consumer}

    # -- lifecycle.

    def run(self, install_signal_handlers: bool = False) -> int:
        """Consume until ``stop()`` (or a signal); returns the process's exit status.

        ``EXIT_OK`` once stopped as asked. ``EXIT_FAILED`` when an error the
        runtime does not ride out stopped it (logged): Redis refusing to set
        up the queue (a band key of another type, a user without the rights),
        a stop while Redis could not be reached at startup, or a bug in the
        read loop. Connection losses while running are ridden out, not fatal.
        Either way the shutdown above runs before ``run`` returns.
        """
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            self._install_signal_handlers()
        status = EXIT_OK
        try:
            self._start()
            self._loop()
        except Exception:
            log.exception("worker failed; stopping", extra=self._log_extra)
            status = EXIT_FAILED
        finally:
            self._shutdown()
        return status

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """True once the groups exist, kinds are registered and jobs are read."""
        return self._ready.wait(timeout)

    def stop(self, grace_s: float | None = None) -> None:
        """Ask the loop to stop; ``grace_s`` overrides the configured grace."""
        if grace_s is not None:
            self.settings = self.settings.with_overrides(grace_s=grace_s)
        self._stopping.set()
        self.slots.wake()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def _register_kinds(self) -> None:
        self.kinds.register()

    def _install_signal_handlers(self) -> None:
        def handle(signum: int, _frame: FrameType | None) -> None:
            if self._stopping.is_set():
                log.warning("second signal: stopping without waiting for jobs")
                self._force.set()
                self.slots.wake()
                return
            log.info(
                "stopping: no new jobs, waiting for running ones",
                extra={"signal": signal.Signals(signum).name, "grace_s": self.settings.grace_s},
            )
            self.stop()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def _start(self) -> None:
        settings = self.settings
        # Dask tasks run in this process record their spans with it.
        install(self.telemetry)
        self._wait_for_redis()
        self.renewer.start()
        self.scheduler.start()
        self.kinds.register()
        self.scheduler.call_every(settings.kinds_refresh_s, self.kinds.register, "kinds")
        self.scheduler.call_every(settings.lease_renew_interval_s, self.leases.check, "leases")
        self.scheduler.call_every(self.renewer.flush_interval_s, self.renewer.flush, "renewer")
        self.heartbeat.beat()
        self.scheduler.call_every(settings.heartbeat_s, self.heartbeat.beat, "heartbeat")
        self.scheduler.call_every(FLUSH_INTERVAL_S, self._flush_counts, "outcome counters")
        self.control.start()
        for index in range(settings.concurrency):
            thread = threading.Thread(
                target=self._handler_thread, name=f"jobgate-handler-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        log.info(
            "worker started",
            extra={
                **self._log_extra,
                "kinds": sorted(self.worker.handlers),
                "concurrency": settings.concurrency,
                "lease_ms": settings.lease_ms,
            },
        )
        self._ready.set()

    def _wait_for_redis(self) -> None:
        """Create the consumer groups, waiting (stoppably) while Redis is unreachable."""
        backoff = 0.1
        while True:
            try:
                self.streams.ensure_groups()
                if self.batcher.enabled:
                    # Shared pipelines run scripts by SHA1 alone (best effort:
                    # one that meets NOSCRIPT recovers, only slower).
                    with contextlib.suppress(redis.ResponseError):
                        self.script.ensure_loaded()
                        ACK_ENDED.load(self.streams.client)
            except (redis.ConnectionError, redis.TimeoutError) as error:
                if self._stopping.is_set():
                    raise
                log.warning(
                    "redis unreachable; waiting",
                    extra={**self._log_extra, "error": str(error), "retry_in_s": backoff},
                )
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            else:
                return

    def _shutdown(self) -> None:
        self._stopping.set()
        grace = 0.0 if self._force.is_set() else self.settings.grace_s
        if self.slots.free < self.slots.size:
            finished = self.slots.wait_all_free(grace, abort=self._force)
            if not finished:
                try:
                    self.executor.give_back_all()
                except Exception:
                    log.exception("giving back the running jobs failed", extra=self._log_extra)
        self.requeuer.requeue_all_now()
        for _ in self._threads:
            self._work.put(None)
        self.control.stop()
        self.scheduler.stop()
        self._flush_counts()
        self.heartbeat.remove()
        self.renewer.close()
        self.dask.close()
        self.clients.close()
        # Spans still queued for export leave now (bounded by the exporters' timeouts).
        self.telemetry.force_flush(timeout_s=5.0)
        uninstall(self.telemetry)
        if self._owns_telemetry:
            self.telemetry.shutdown()
        log.info("worker stopped", extra=self._log_extra)
        self._stopped.set()

    # -- the read loop.

    def _loop(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                self._step()
                backoff = 0.1
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                log.warning(
                    "reading the queue failed; retrying", exc_info=True, extra=self._log_extra
                )
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _queue_paused(self) -> bool:
        """Whether the queue is paused, asked of Redis at most every
        ``PAUSE_CHECK_INTERVAL_S``: not one more round trip per read."""
        now = time.monotonic()
        if now >= self._next_pause_check:
            self._next_pause_check = now + PAUSE_CHECK_INTERVAL_S
            self._paused = self.streams.paused()
        return self._paused

    def _step(self) -> None:
        free = self.slots.wait_free(self._stopping, timeout=1.0)
        if free <= 0 or self._stopping.is_set():
            return
        while self._backlog and free > 0:
            self._dispatch(self._backlog.popleft())
            free -= 1
        if free > 0 and self._queue_paused():
            # Paused: take nothing new and reclaim nothing; running jobs
            # finish and their leases keep being renewed. Look again in ~1 s.
            self._stopping.wait(min(self.settings.block_ms, 1_000) / 1000)
            return
        now = time.monotonic()
        if free > 0 and now >= self._next_reclaim:
            self._next_reclaim = now + self.settings.reclaim_interval_s
            free -= self._reclaim(free)
        if free <= 0:
            return
        block_ms = min(
            self.settings.block_ms,
            max(int((self._next_reclaim - time.monotonic()) * 1000), 1),
        )
        entries = self.streams.read(free, block_ms)
        if self.control.after_s <= 0:
            # Subscribed before ``start``: one wake-up of the control thread
            # for the whole read; each handler thread then waits for its own.
            self.control.watch(*(entry.job_id for entry in entries[:free] if entry.job_id))
        now_entries = entries[:free]
        # One round trip starts them all (single Redis); each handler thread
        # then runs its attempt without a start of its own. A lone entry's
        # start is left to its handler thread, which makes it while this
        # thread reads again.
        batch = len(now_entries) > 1 and self.executor.batches_starts()
        started = self.executor.start_batch(now_entries) if batch else {}
        for entry in now_entries:
            self._dispatch(entry, started.get(entry.key))
        for entry in entries[free:]:
            # Several bands filled while the read blocked: keep the surplus
            # (held, so its lease is renewed) for the next free slots.
            self.inflight.hold(entry)
            self._backlog.append(entry)

    def _reclaim(self, free: int) -> int:
        result = self.streams.reclaim(free, self.settings.lease_ms)
        for stream, entry_id in result.deleted:
            self.executor.entry_deleted(stream, entry_id)
        dispatched = 0
        for entry in result.entries:
            if self.inflight.is_held(entry.key):
                continue  # ours already; the claim only renewed it
            log.info(
                "reclaimed an idle entry",
                extra={"job_id": entry.job_id, "entry_id": entry.entry_id, "stream": entry.stream},
            )
            self._dispatch(entry)
            dispatched += 1
        return dispatched

    def _dispatch(self, entry: Entry, started: Started | None = None) -> None:
        self.inflight.hold(entry)
        self.slots.take()
        self._work.put((entry, started))

    def _handler_thread(self) -> None:
        while True:
            work = self._work.get()
            if work is None:
                return
            entry, started = work
            try:
                self.executor.execute(entry, started)
            except Exception:
                log.exception("unexpected error running an entry", extra={"job_id": entry.job_id})
            finally:
                self.slots.give()

    def _flush_counts(self) -> None:
        if not self.counts.pending():
            return
        try:
            client = self.clients.current()
        except redis.RedisError:
            return  # never connected: nothing was counted
        self.counts.flush(client)

    def _on_control_resync(self) -> None:
        """Control channels were subscribed again after a lost link: a cancel
        published meanwhile is in the records; read them now."""
        self.scheduler.call_later(0, self.leases.check_runs, "control resync")

    def _on_control_watching(self, job_ids: list[str]) -> None:
        """These jobs' control channels were just subscribed, a while after
        their ``start``: a cancel made before that is in their records."""
        self.scheduler.call_later(0, lambda: self.leases.check_runs(job_ids), "control subscribed")

    def _on_cancel(self, job_id: str) -> None:
        run = self.inflight.run_for(job_id)
        if run is None:
            return
        log.info("cancel requested", extra={"job_id": job_id})
        self.scheduler.call_later(0, lambda: self.executor.stop(run, "cancelled"), "cancel")
