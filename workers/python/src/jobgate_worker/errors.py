"""Exceptions a job handler raises or sees.

A handler signals "try again later" with :class:`RetryableError`, and "this
job cannot succeed" with :class:`JobFailed` and a code of its own (such as
``invalid_params``); any other exception fails the job with code
``handler_error``. :class:`JobCancelled` is
raised by ``ctx.raise_if_cancelled()`` once the job was cancelled, timed out or
lost its lease; the SDK has then already reported the outcome.
:class:`DaskError` is the retryable error the SDK itself raises (or reports)
when Dask cannot run a job's tasks.
"""

from __future__ import annotations


class RetryableError(Exception):
    """The attempt failed but the job may succeed if run again.

    The job goes back to ``queued`` (a ``retrying`` event) and is re-enqueued
    after an exponential backoff with jitter, unless ``delay_s`` is given.
    When the job has used all its attempts it fails with
    ``max_attempts_exceeded`` instead.
    """

    def __init__(
        self, message: str, *, code: str = "retryable_error", delay_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.delay_s = delay_s


class DaskError(RetryableError):
    """Dask could not run the job's tasks: the attempt is retried.

    ``code`` says why, one of :attr:`CODES`: the scheduler could not be
    reached or its connection was lost (``dask_unavailable``), it had no
    workers for too long while the job waited for its tasks
    (``dask_no_workers``), or the workers running one of the job's tasks died
    as often as Dask allows (``dask_worker_lost``). Unlike other retryable
    errors, once the job's attempts are used up it fails with this same code
    (and is dead-lettered), not with ``max_attempts_exceeded``.
    """

    UNAVAILABLE = "dask_unavailable"
    NO_WORKERS = "dask_no_workers"
    WORKER_LOST = "dask_worker_lost"
    CODES = frozenset((UNAVAILABLE, NO_WORKERS, WORKER_LOST))

    def __init__(self, code: str, message: str) -> None:
        if code not in self.CODES:
            raise ValueError(f"unknown Dask error code {code!r}")
        super().__init__(message, code=code)


class JobFailed(Exception):  # noqa: N818 - reads as the outcome it reports
    """The job fails for good, with ``code`` and ``message`` as its error.

    For failures that no retry can mend, such as params the handler cannot
    use: the client sees ``{"code", "message"}`` in the ``failed`` event.
    """

    def __init__(self, message: str, *, code: str = "handler_error") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class JobCancelled(Exception):  # noqa: N818 - reads as the event it reports
    """The job was stopped from outside (cancel, timeout or lost lease)."""

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"job {job_id} stopped: {reason}")
        self.job_id = job_id
        self.reason = reason


class ScriptNotFoundError(RuntimeError):
    """``jobgate.lua`` could not be located."""
