"""``Worker``: the registry of job handlers an application declares.

Declaring a worker does no I/O, and a ``Worker`` knows nothing of how it is
run: the ``jobgate-worker`` command builds a ``Runtime`` (``runtime.py``)
from it, which connects to Redis and consumes the queue.

A handler may describe its params with a JSON Schema (draft 2020-12,
``params_schema=``). The schema is checked when the handler is declared, so a
broken one fails at import, and is registered with the kind: gateways refuse
params that break it before a job is created (``422 invalid_params``), and
clients read it from ``GET /v1/kinds``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .context import JobContext

#: A job handler: ``handler(ctx, params)`` returning a JSON-serialisable result.
Handler = Callable[[JobContext, Any], Any]
H = TypeVar("H", bound=Handler)

_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class Worker:
    """A set of job handlers that consume one queue.

    ``progress_interval`` is the shortest time between two progress events of
    one job; ``retry_base_delay`` and ``retry_max_delay`` shape the backoff
    after a :class:`~jobgate_worker.RetryableError` (``base * 2**(attempt-1)``,
    capped, with jitter).
    """

    def __init__(
        self,
        queue: str = "default",
        *,
        progress_interval: float = 0.1,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 60.0,
    ) -> None:
        if not _NAME.match(queue):
            raise ValueError(f"queue name {queue!r} must match {_NAME.pattern}")
        if progress_interval < 0 or retry_base_delay < 0 or retry_max_delay < 0:
            raise ValueError("intervals and delays must not be negative")
        self.queue = queue
        self.progress_interval = progress_interval
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self._handlers: dict[str, Handler] = {}
        self._params_schemas: dict[str, dict[str, Any]] = {}

    @property
    def handlers(self) -> Mapping[str, Handler]:
        return dict(self._handlers)

    @property
    def params_schemas(self) -> Mapping[str, dict[str, Any]]:
        """The params schema of each kind declared with one."""
        return dict(self._params_schemas)

    def job(self, kind: str, *, params_schema: Mapping[str, Any] | None = None) -> Callable[[H], H]:
        """Register the decorated function as the handler of ``kind``.

        ``params_schema``, a JSON Schema (draft 2020-12) for the job's params,
        is checked here: a schema that is not valid raises
        ``jsonschema.SchemaError``, one that is not JSON raises ``ValueError``.
        """
        if not _NAME.match(kind):
            raise ValueError(f"job kind {kind!r} must match {_NAME.pattern}")
        schema = None if params_schema is None else _checked_schema(kind, params_schema)

        def register(handler: H) -> H:
            if kind in self._handlers:
                raise ValueError(f"job kind {kind!r} already has a handler")
            self._handlers[kind] = handler
            if schema is not None:
                self._params_schemas[kind] = schema
            return handler

        return register

    def __repr__(self) -> str:
        return f"Worker(queue={self.queue!r}, kinds={sorted(self._handlers)})"


def _checked_schema(kind: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` once it is known to be a draft 2020-12 schema that
    travels as JSON."""
    if not isinstance(schema, Mapping):
        raise TypeError(f"the params schema of {kind!r} must be a JSON object (a mapping)")
    copied = copy.deepcopy(dict(schema))
    try:
        json.dumps(copied, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"the params schema of {kind!r} is not JSON: {error}") from error
    # Imported here: the package is imported by processes that never declare
    # a handler (the lease renewer), and jsonschema takes a while to load.
    import jsonschema  # noqa: PLC0415

    jsonschema.Draft202012Validator.check_schema(copied)
    return copied
