"""Exceptions a job handler raises or sees.

A handler signals "try again later" with :class:`RetryableError`, and "this
job cannot succeed" with :class:`JobFailed` and a code of its own (such as
``invalid_params``); any other exception fails the job with code
``handler_error``. :class:`JobCancelled` is
raised by ``ctx.raise_if_cancelled()`` once the job was cancelled, timed out or
lost its lease; the SDK has then already reported the outcome.
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
