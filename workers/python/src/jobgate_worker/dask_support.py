"""The Dask side of a job: its view of the process's client, and its tasks.

The client itself (started on first use, replaced once lost, watched) is
``dask_provider.DaskProvider``'s. ``JobDask`` is what a handler sees as
``ctx.dask``: it speaks the ``dask.distributed.Client`` API (``submit``,
``map``, ``compute``, ``persist``, ``scatter``, ``gather``, …; anything else
is forwarded to the client) and
remembers the futures the job created, so that a cancel or a timeout can
cancel exactly that job's tasks. Submitted functions are wrapped
(``TracedCall``) so that identical pure calls of two different jobs get
different keys — cancelling one job never cancels another job's task — and
so that the task runs in a span of its own, ``dask.task <function>``, child
of the attempt's consumer span. The trace context travels *inside* the
wrapper (a W3C traceparent, pickled with the function), not in any
thread-local state, so it arrives whichever thread or process Dask runs the
task on; there the wrapper opens the span and binds the job's log context,
so the task's log lines carry the job's ``trace_id``, ``job_id``, the task's
``span_id`` and its ``task_key``.

While the job has unfinished futures, its ``JobDask`` is watched by the
provider; when Dask cannot finish them (the scheduler is lost or has no
workers, see ``dask_health``) the provider calls ``lost``, which ends the
attempt with a retry through the context's callback.

Dask worker *processes* (``JOBGATE_DASK_PROCESSES=true``, or a remote
cluster started with ``--preload jobgate_worker.dask_preload``) set up JSON
logs, Fluentd forwarding and span export from the same environment variables
as the worker.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from opentelemetry.trace import SpanKind

from .dask_provider import DaskProvider, distributed_module
from .errors import DaskError
from .logs import LogContext, bound, current_context
from .tracing import Attributes, process_telemetry, remote_parent

if TYPE_CHECKING:
    from distributed import Client, Future

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Future statuses that need nothing more from Dask.
_SETTLED = frozenset(("finished", "error"))


def current_task_key() -> str | None:
    """The key of the Dask task running in this thread (None outside a task)."""
    context = current_context()
    if context is not None and "task_key" in context.fields:
        return str(context.fields["task_key"])
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    try:
        key = distributed.get_worker().get_current_task()
    except (ValueError, KeyError, AttributeError):
        return None
    return None if key is None else str(key)


class TracedCall(Generic[T]):
    """A task function that runs in a span of the job's trace, with a job-specific key.

    ``traceparent``/``tracestate`` name the span the task's span is a child of
    (the attempt's consumer span).
    """

    __slots__ = ("attempt", "func", "job_id", "traceparent", "tracestate")

    def __init__(
        self,
        func: Callable[..., T],
        job_id: str,
        attempt: int,
        traceparent: str,
        tracestate: str = "",
    ) -> None:
        self.func = func
        self.job_id = job_id
        self.attempt = attempt
        self.traceparent = traceparent
        self.tracestate = tracestate

    @property
    def __name__(self) -> str:
        return getattr(self.func, "__name__", type(self.func).__name__)

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        telemetry = process_telemetry()
        task_key = current_task_key()
        attributes: Attributes | None = None
        if telemetry.enabled:
            attributes = {
                "dask.task.key": task_key or "",
                "code.function.name": self.__name__,
                "jobgate.job.id": self.job_id,
                "jobgate.job.attempt": self.attempt,
            }
        with telemetry.span(
            f"dask.task {self.__name__}",
            kind=SpanKind.INTERNAL,
            parent=remote_parent(self.traceparent, self.tracestate),
            attributes=attributes,
        ) as span:
            ids = span.get_span_context()
            fields: dict[str, Any] = {"attempt": self.attempt}
            if task_key is not None:
                fields["task_key"] = task_key
            context = LogContext(f"{ids.trace_id:032x}", f"{ids.span_id:016x}", self.job_id, fields)
            with bound(context):
                return self.func(*args, **kwargs)

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        from dask.base import tokenize  # noqa: PLC0415 - only runs once Dask is in use

        return ("jobgate-task", tokenize(self.func), self.job_id, self.attempt)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            TracedCall,
            (self.func, self.job_id, self.attempt, self.traceparent, self.tracestate),
        )


def _cancel(futures: list[Future[Any]]) -> None:
    """Cancel futures through the clients they belong to, if those are still connected.

    A lost client's futures were cancelled by Dask already; asking the
    provider for a client here could block on a reconnect.
    """
    by_client: dict[int, tuple[Any, list[Future[Any]]]] = {}
    for future in futures:
        client: Any = future.client
        by_client.setdefault(id(client), (client, []))[1].append(future)
    for client, own in by_client.values():
        if client is not None and client.status == "running":
            client.cancel(own)


def _is_done(future: Any) -> bool:
    return bool(future.done())


class JobDask:
    """``ctx.dask``: the Dask client as one job sees it (futures are tracked)."""

    def __init__(
        self,
        provider: DaskProvider,
        job_id: str,
        attempt: int,
        traceparent: str,
        tracestate: str = "",
        *,
        on_lost: Callable[[DaskError], None] | None = None,
    ) -> None:
        self._provider = provider
        self._job_id = job_id
        self._attempt = attempt
        self._traceparent = traceparent
        self._tracestate = tracestate
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self._futures: list[Future[Any]] = []
        self._closed = False

    @property
    def client(self) -> Client:
        """The process's ``dask.distributed.Client`` itself (nothing tracked)."""
        return self._provider.client()

    @property
    def _untyped(self) -> Any:
        # Client methods without annotations are called through Any.
        return self._provider.client()

    def _wrap(self, func: Callable[..., T]) -> TracedCall[T]:
        return TracedCall(func, self._job_id, self._attempt, self._traceparent, self._tracestate)

    def _track(self, result: Any) -> None:
        found: list[Future[Any]] = distributed_module().futures_of(result)
        cancel_now = False
        with self._lock:
            if self._closed:
                cancel_now = True
            else:
                self._futures.extend(found)
        if cancel_now and found:
            # The job already ended (cancel, timeout): do not let late work run.
            _cancel(found)
        elif found:
            self._provider.watch(self)

    def submit(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = self.client.submit(self._wrap(func), *args, **kwargs)
        self._track(future)
        return future

    def map(self, func: Callable[..., T], *iterables: Any, **kwargs: Any) -> list[Future[T]]:
        futures: list[Future[T]] = self.client.map(self._wrap(func), *iterables, **kwargs)
        self._track(futures)
        return futures

    def compute(self, collections: Any, *args: Any, **kwargs: Any) -> Any:
        result = self._untyped.compute(collections, *args, **kwargs)
        self._track(result)
        return result

    def persist(self, collections: Any, *args: Any, **kwargs: Any) -> Any:
        result = self._untyped.persist(collections, *args, **kwargs)
        self._track(result)
        return result

    def scatter(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        result = self._untyped.scatter(data, *args, **kwargs)
        self._track(result)
        return result

    def gather(self, futures: Any, *args: Any, **kwargs: Any) -> Any:
        return self._untyped.gather(futures, *args, **kwargs)

    def as_completed(self, futures: Iterable[Future[T]]) -> Iterator[Future[T]]:
        """``distributed.as_completed``: the futures in the order they finish.

        On the loop of the client the futures belong to (the current client
        may be a newer one, connected after that one was lost).
        """
        futures = list(futures)
        owner: Any = futures[0].client if futures else self._untyped
        iterator: Iterator[Future[T]] = distributed_module().as_completed(futures, loop=owner.loop)
        return iterator

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    @property
    def futures(self) -> list[Future[Any]]:
        """The futures this job has created so far."""
        with self._lock:
            return list(self._futures)

    @property
    def waiting(self) -> bool:
        """The job has futures Dask has not settled (finished or failed) yet."""
        with self._lock:
            futures = list(self._futures)
        return any(future.status not in _SETTLED for future in futures)

    def lost(self, error: DaskError) -> None:
        """Dask cannot finish this job's tasks: end the attempt with ``error`` (a retry)."""
        log.warning(
            "Dask cannot finish the job's tasks",
            extra={"job_id": self._job_id, "error_code": error.code, "error": error.message},
        )
        if self._on_lost is not None:
            self._on_lost(error)

    def cancel_all(self) -> int:
        """Cancel the job's unfinished futures; later submissions are cancelled too."""
        with self._lock:
            self._closed = True
            futures, self._futures = self._futures, []
        self._provider.unwatch(self)
        pending = [future for future in futures if not _is_done(future)]
        if pending:
            try:
                _cancel(pending)
            except Exception:
                log.warning("cancelling Dask futures failed", exc_info=True)
        return len(pending)

    def release(self) -> None:
        """Forget the futures of a finished job (no cancellation)."""
        with self._lock:
            self._futures = []
        self._provider.unwatch(self)
