"""The process's Dask client: started on first use, replaced when it is lost, watched.

``DaskProvider`` connects to ``DASK_SCHEDULER_ADDRESS`` or starts a small
``LocalCluster`` the first time any handler touches ``ctx.dask`` — a worker
whose jobs never use Dask never pays for it (``distributed`` is not even
imported).

A client is used only while its connection is up. Once it is lost (the
scheduler was killed or restarted), the next use drops it and connects
again, within ``DaskTimeouts.connect_s``; a connect that fails raises
``DaskError`` ``dask_unavailable``, which retries the job. Threads that
queued behind a failed connect get the same error at once instead of
waiting out another timeout each.

While some job waits for its tasks (``Watched.waiting``), a monitor thread
looks at the scheduler every ``check_interval_s`` (one small RPC: its
workers) and ``DaskHealth`` decides when the waiting must end; each waiting
job is then told (``Watched.lost``), which retries it. Nothing is looked at
while no job waits.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from .dask_health import DaskHealth, DaskTimeouts, Look, connect_error, dask_error_for
from .errors import DaskError
from .logs import adopt_library_loggers

if TYPE_CHECKING:
    from distributed import Client, LocalCluster

log = logging.getLogger(__name__)

#: The Dask preload module that sets a Dask worker process up like the worker.
PRELOAD = "jobgate_worker.dask_preload"
#: Longest closing a client (or the local cluster) may take.
CLOSE_TIMEOUT_S = 5.0
#: How often a dropped client still trying to reconnect is looked at.
RETIRE_POLL_S = 0.1
#: How a local cluster is named in messages.
LOCAL_CLUSTER = "local-cluster"


def distributed_module() -> Any:
    """``dask.distributed``, imported on first use (it is heavy and logs at import).

    Typed as ``Any``: parts of its API carry no annotations.
    """
    return importlib.import_module("distributed")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


class Watched(Protocol):
    """A job's view of Dask, as the monitor sees it."""

    @property
    def waiting(self) -> bool:
        """The job has tasks not finished yet."""
        ...

    def lost(self, error: DaskError) -> None:
        """Dask will not finish them: end the attempt with ``error``."""
        ...


class ClientLoop:
    """The event loop the clients of one scheduler share, on a thread of its own.

    Left to itself, each ``Client(address)`` starts a loop on a thread of its
    own, which ``Client.close()`` stops. A client that gives up reconnecting to
    a lost scheduler closes itself from that loop instead, which cannot stop
    itself: Dask leaves the loop and its thread running for the rest of the
    process, one more each time the scheduler is lost. Clients given this
    loop start none; it stops when the provider closes.
    """

    def __init__(self) -> None:
        self._loop: Any = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    def get(self) -> Any:
        """The running loop (Tornado's ``IOLoop``, as Dask takes it), started on first use."""
        if self._loop is None:
            ready = threading.Event()
            thread = threading.Thread(
                target=lambda: asyncio.run(self._main(ready)),
                name="jobgate-dask-loop",
                daemon=True,
            )
            thread.start()
            if not ready.wait(CLOSE_TIMEOUT_S):
                raise RuntimeError("the Dask clients' event loop did not start")
            self._thread = thread
        return self._loop

    async def _main(self, ready: threading.Event) -> None:
        ioloop = importlib.import_module("tornado.ioloop")
        self._stopped = asyncio.Event()
        self._loop = ioloop.IOLoop.current()
        ready.set()
        await self._stopped.wait()

    def stop(self, timeout_s: float) -> None:
        """End the loop (what still runs on it is cancelled) and wait for its thread."""
        loop, thread, stopped = self._loop, self._thread, self._stopped
        self._loop = self._thread = self._stopped = None
        if loop is None or thread is None or stopped is None:
            return
        loop.add_callback(stopped.set)
        thread.join(timeout_s)


class DaskProvider:
    """Creates the process's Dask client on first use, replaces it once lost, closes it at exit."""

    def __init__(
        self, scheduler_address: str | None = None, timeouts: DaskTimeouts | None = None
    ) -> None:
        self.scheduler_address = scheduler_address
        self.timeouts = timeouts or DaskTimeouts()
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._cluster: LocalCluster | None = None
        #: The last connect that failed: when it ended, and its error.
        self._failed: tuple[float, DaskError] | None = None
        self._watched: set[Watched] = set()
        self._watched_lock = threading.Lock()
        self._health = DaskHealth(self.target, self.timeouts)
        self._monitor: threading.Thread | None = None
        self._closing = threading.Event()
        self._loop = ClientLoop()
        #: Threads closing dropped clients (``_retire``), waited for at close.
        self._retiring: list[threading.Thread] = []

    @property
    def target(self) -> str:
        """The scheduler's address, or ``local-cluster``."""
        return self.scheduler_address or LOCAL_CLUSTER

    @property
    def started(self) -> bool:
        return self._client is not None

    @property
    def connected(self) -> bool:
        """A client exists and its connection to the scheduler is up."""
        return _is_running(self._client)

    def client(self) -> Client:
        """The connected client, connecting first if need be.

        Raises ``DaskError`` (``dask_unavailable``) when no connection could be
        made within the connect timeout.
        """
        client = self._client
        if client is not None and client.status == "running":
            return client
        asked = time.monotonic()
        with self._lock:
            client = self._client
            if client is not None and client.status == "running":
                return client
            if self._failed is not None and self._failed[0] >= asked:
                # A connect failed while this thread waited for the lock.
                raise DaskError(self._failed[1].code, self._failed[1].message)
            if self._client is not None:
                self._drop_locked("the connection to the Dask scheduler was lost")
            try:
                # A fresh context: Dask's threads must not inherit the trace of
                # the job that happened to start them.
                self._client = contextvars.Context().run(self._connect)
            except Exception as error:
                failure = connect_error(self.target, self.timeouts.connect_s, error)
                self._failed = (time.monotonic(), failure)
                log.warning(
                    "could not connect to Dask",
                    extra={"dask_scheduler": self.target, "error": failure.message},
                )
                raise failure from error
            self._failed = None
            self._start_monitor()
            return self._client

    def _connect(self) -> Client:
        distributed = distributed_module()
        adopt_library_loggers()
        if self.scheduler_address:
            log.info("connecting to Dask", extra={"dask_scheduler": self.scheduler_address})
            _probe(self.scheduler_address, self.timeouts.connect_s)
            # ``timeout`` bounds the client's connect (but for the handshake,
            # hence the probe), and its own attempts to reconnect after losing
            # the scheduler.
            client: Client = distributed.Client(
                self.scheduler_address, timeout=self.timeouts.connect_s, loop=self._loop.get()
            )
            return client
        # A small in-process cluster: threads share the worker's memory, start in
        # well under a second and need no ports. Larger setups run a real
        # scheduler and set DASK_SCHEDULER_ADDRESS.
        workers = _env_int("JOBGATE_DASK_WORKERS", 1)
        threads = _env_int("JOBGATE_DASK_THREADS", min(os.cpu_count() or 1, 4))
        processes = os.environ.get("JOBGATE_DASK_PROCESSES", "").lower() in ("1", "true", "yes")
        log.info(
            "starting a local Dask cluster",
            extra={"dask_workers": workers, "dask_threads": threads, "dask_processes": processes},
        )
        extra: dict[str, Any] = {}
        if processes:
            # Worker processes log, forward and export spans like this one.
            extra = {"preload": [PRELOAD]}
        self._cluster = distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=threads,
            processes=processes,
            dashboard_address=None,
            silence_logs=logging.WARNING,
            **extra,
        )
        adopt_library_loggers()
        local_client: Client = distributed.Client(self._cluster)
        return local_client

    # -- losing the client.

    def dask_error_for(self, error: BaseException) -> DaskError | None:
        """The ``DaskError`` a handler's exception stands for (None: not Dask's fault)."""
        return dask_error_for(error, connected=self.connected, scheduler_address=self.target)

    def _drop(self, client: Client, why: str) -> None:
        with self._lock:
            if self._client is client:
                self._drop_locked(why)

    def _drop_locked(self, why: str) -> None:
        """Forget the current client (and local cluster); the next use connects again.

        The dropped client is closed on a thread of its own, once it stopped
        trying to reconnect (Dask gives up after the connect timeout, or
        succeeds): closing it mid-reconnect would make Dask log the
        interrupted attempt as an error.
        """
        client: Any = self._client
        cluster: Any = self._cluster
        self._client = self._cluster = None
        log.warning(
            "Dask client dropped; the next job using Dask connects again",
            extra={"dask_scheduler": self.target, "reason": why},
        )
        retiring = threading.Thread(
            target=self._retire, args=(client, cluster), name="jobgate-dask-retire", daemon=True
        )
        self._retiring = [thread for thread in self._retiring if thread.is_alive()]
        self._retiring.append(retiring)
        retiring.start()

    def _retire(self, client: Any, cluster: Any) -> None:
        deadline = time.monotonic() + self.timeouts.connect_s + CLOSE_TIMEOUT_S
        while client.status == "connecting" and time.monotonic() < deadline:
            time.sleep(RETIRE_POLL_S)
        _close_quietly(client, cluster, CLOSE_TIMEOUT_S)

    # -- watching the jobs that wait for their tasks.

    def watch(self, job: Watched) -> None:
        with self._watched_lock:
            self._watched.add(job)

    def unwatch(self, job: Watched) -> None:
        with self._watched_lock:
            self._watched.discard(job)

    def _start_monitor(self) -> None:
        if self._monitor is None:
            self._monitor = threading.Thread(
                target=self._monitor_loop, name="jobgate-dask-monitor", daemon=True
            )
            self._monitor.start()

    def _monitor_loop(self) -> None:
        while not self._closing.wait(self.timeouts.check_interval_s):
            try:
                self._check()
            except Exception:
                log.exception("looking at Dask failed", extra={"dask_scheduler": self.target})

    def _check(self) -> None:
        """One look at the scheduler, if a job waits; ends the waiting jobs when it is time."""
        with self._watched_lock:
            candidates = list(self._watched)
        waiting = [job for job in candidates if job.waiting]
        if not waiting:
            self._health.reset()
            return
        client = self._client
        look = self._look(client)
        error = self._health.observe(time.monotonic(), look)
        if error is None:
            return
        log.warning(
            "Dask cannot run the waiting jobs' tasks; retrying them",
            extra={
                "dask_scheduler": self.target,
                "error_code": error.code,
                "error": error.message,
                "jobs": len(waiting),
            },
        )
        if error.code == DaskError.UNAVAILABLE and client is not None:
            self._drop(client, error.message)
        for job in waiting:
            self.unwatch(job)
            job.lost(error)

    def _look(self, client: Client | None) -> Look:
        if client is None or not _is_running(client):
            return Look(connected=False)
        untyped: Any = client
        try:
            workers = untyped.nthreads(callback_timeout=self.timeouts.look_timeout_s)
        except Exception:  # noqa: BLE001 - any failure to answer is "no answer"
            return Look(connected=_is_running(client), workers=None)
        return Look(connected=True, workers=len(workers))

    # -- shutdown.

    def close(self) -> None:
        self._closing.set()
        monitor = self._monitor
        if monitor is not None:
            monitor.join(self.timeouts.look_timeout_s + 1)
        with self._lock:
            client: Any = self._client
            cluster: Any = self._cluster
            self._client = self._cluster = None
            retiring, self._retiring = self._retiring, []
        _close_quietly(client, cluster, CLOSE_TIMEOUT_S)
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        for thread in retiring:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._loop.stop(CLOSE_TIMEOUT_S)


def _probe(address: str, timeout_s: float) -> None:
    """Open one connection to the scheduler and close it, all within ``timeout_s``.

    ``distributed.Client(address, timeout=…)`` bounds the TCP connect but
    not the handshake that follows: a scheduler whose host stopped answering
    (a paused VM, a process under ``SIGSTOP``) keeps it waiting forever. The
    probe is bounded as a whole, on a loop of its own, and raises
    ``TimeoutError`` or ``OSError``; the client is created only after it
    succeeded.
    """
    distributed = distributed_module()
    comm = importlib.import_module("distributed.comm")
    connection_args = distributed.Security().get_connection_args("client")

    async def probe() -> None:
        opened = await asyncio.wait_for(
            comm.connect(address, timeout=timeout_s, **connection_args), timeout_s
        )
        await opened.close()

    asyncio.run(probe())


def _is_running(client: Client | None) -> bool:
    return client is not None and client.status == "running"


def _close_quietly(client: Any, cluster: Any, timeout_s: float) -> None:
    try:
        if client is not None:
            client.close(timeout=timeout_s)
        if cluster is not None:
            cluster.close(timeout=timeout_s)
    except Exception:
        log.warning("closing Dask failed", exc_info=True)
