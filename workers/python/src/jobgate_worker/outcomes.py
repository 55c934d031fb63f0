"""How an attempt ends, as values, and the pure rules that choose one.

An attempt ends exactly once (``Run.claim_finish`` picks who ends it) with
one ``Outcome``:

- ``Completed``, ``Failed``, ``Cancelled``: reported to the script as the
  job's terminal event (``complete``, ``fail``, ``cancelled``);
- ``Retry``: the job goes back to ``queued`` and its entry is re-enqueued
  after the delay (on the last attempt, a ``Retry`` that keeps its code —
  a ``DaskError`` — becomes a ``Failed`` with that code: ``last_attempt``);
- ``Abandoned``: the attempt stops here and its entry stays pending, to be
  reclaimed (the lease was lost, or Redis failed mid-way);
- ``GivenBack``: at shutdown, ``release``d and re-enqueued at once.

``OutcomeReporter.end`` (``reporting.py``) turns an outcome into the Redis
calls. Deciding it — what a handler's return value or exception means, what
a stop from outside means — is done here, without I/O, so that it is
unit-tested without Redis.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import DaskError, JobCancelled, JobFailed, RetryableError

#: Longest error message stored in a job's record and events.
MESSAGE_LIMIT = 4000
#: Job error codes as proto-schemas/schemas/common.json allows them.
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
#: The code the script fails a job with when a retryable error finds no attempt left.
MAX_ATTEMPTS_EXCEEDED = "max_attempts_exceeded"


@dataclass(frozen=True, slots=True)
class Completed:
    """The handler returned; ``result_json`` is its result as JSON text."""

    result_json: str
    name: ClassVar[str] = "completed"


@dataclass(frozen=True, slots=True)
class Failed:
    """The job failed for good with an error ``code`` and ``message``."""

    code: str
    message: str
    #: The handler's exception: logged with its traceback, recorded on the span.
    error: BaseException | None = field(default=None, compare=False)
    #: The job's attempts ran out (``last_attempt``): it is dead-lettered too.
    attempts_ran_out: bool = False
    name: ClassVar[str] = "failed"


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The job was cancelled (asked for, or the handler gave up by itself)."""

    name: ClassVar[str] = "cancelled"


@dataclass(frozen=True, slots=True)
class Retry:
    """A retryable error: run the job again after ``delay_s``."""

    code: str
    message: str
    delay_s: float
    #: With no attempt left, fail with ``code`` rather than ``max_attempts_exceeded``.
    keep_code: bool = False
    name: ClassVar[str] = "retry"

    @property
    def delay_ms(self) -> int:
        return max(int(self.delay_s * 1000), 0)


@dataclass(frozen=True, slots=True)
class Abandoned:
    """This process stops the attempt without reporting it (``lease_lost``, ``internal_error``)."""

    reason: str
    name: ClassVar[str] = "abandoned"


@dataclass(frozen=True, slots=True)
class GivenBack:
    """At shutdown: the job goes back to ``queued`` without its attempt being charged."""

    name: ClassVar[str] = "released"


Outcome = Completed | Failed | Cancelled | Retry | Abandoned | GivenBack
#: The outcomes that end the job itself, with a terminal event.
Terminal = Completed | Failed | Cancelled


def error_message(error: BaseException) -> str:
    """``"<ExceptionType>: <message>"``, bounded in length."""
    text = str(error)
    message = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return message[:MESSAGE_LIMIT]


def result_outcome(result: Any) -> Completed | Failed:
    """What a handler's return value means: its JSON, or ``result_not_serializable``."""
    try:
        result_json = json.dumps(result, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        message = f"the handler's result is not JSON: {error_message(error)}"
        return Failed("result_not_serializable", message)
    return Completed(result_json)


def retry_outcome(error: RetryableError, default_delay_s: Callable[[], float]) -> Retry:
    """A ``RetryableError`` as a ``Retry``: its own delay, else ``default_delay_s()``.

    A code the schema would refuse becomes ``retryable_error``; the message is
    bounded like any other.
    """
    delay_s = error.delay_s if error.delay_s is not None else default_delay_s()
    code = error.code if _ERROR_CODE.match(error.code) else "retryable_error"
    keep_code = isinstance(error, DaskError)
    return Retry(code, error.message[:MESSAGE_LIMIT], delay_s, keep_code=keep_code)


def last_attempt(outcome: Retry, attempt: int, max_attempts: int) -> Retry | Failed:
    """What a ``Retry`` becomes on ``attempt`` of ``max_attempts``.

    A retry that keeps its code (a ``DaskError``) and finds no attempt left
    fails the job with that code, its message worded like the script's
    ``max_attempts_exceeded`` one, and marked for the dead letters; any other
    ``Retry`` is left to the script (which fails it with
    ``max_attempts_exceeded`` when no attempt is left).
    """
    if not outcome.keep_code or attempt < max_attempts:
        return outcome
    message = f"attempt {attempt} of {max_attempts} failed: {outcome.message}"
    return Failed(outcome.code, message[:MESSAGE_LIMIT], attempts_ran_out=True)


def attempts_ran_out(error_code: object) -> bool:
    """Whether a failed job's error code says its attempts ran out (it is dead-lettered)."""
    return error_code == MAX_ATTEMPTS_EXCEEDED or error_code in DaskError.CODES


def handler_outcome(call: Callable[[], Any], default_delay_s: Callable[[], float]) -> Outcome:
    """Run the handler (``call``) and say how its attempt ends; never raises.

    ``default_delay_s`` gives the backoff for a ``RetryableError`` without a
    delay of its own. ``JobFailed`` fails the job with its own code
    (``handler_error`` when the schema would refuse it); any other exception
    with ``handler_error``.
    """
    try:
        result = call()
    except RetryableError as error:
        return retry_outcome(error, default_delay_s)
    except JobFailed as error:
        code = error.code if _ERROR_CODE.match(error.code) else "handler_error"
        return Failed(code, error.message[:MESSAGE_LIMIT], error)
    except JobCancelled:
        return Cancelled()
    except BaseException as error:  # noqa: BLE001 - every handler failure is reported
        return Failed("handler_error", error_message(error), error)
    return result_outcome(result)


def stop_outcome(reason: str, timeout_s: float) -> Outcome:
    """How an attempt stopped from outside ends: ``cancelled``, ``timeout`` or ``lease_lost``."""
    if reason == "cancelled":
        return Cancelled()
    if reason == "timeout":
        return Failed("timeout", f"the job did not finish within {timeout_s:g} s")
    # lease_lost: someone else runs the job now; it is theirs to report.
    return Abandoned(reason)


def terminal_call(outcome: Terminal, attempt: int) -> tuple[str | int, ...]:
    """The script operation and arguments that report a terminal outcome."""
    match outcome:
        case Completed(result_json=result_json):
            return ("complete", attempt, result_json)
        case Failed(code=code, message=message):
            return ("fail", attempt, code, message)
        case Cancelled():
            return ("cancelled", attempt)


def span_outcome(outcome: Outcome) -> tuple[str, str | None]:
    """``jobgate.job.outcome`` of the attempt's span, and its ``error.type`` (None: no error)."""
    match outcome:
        case Completed() | Cancelled():
            return outcome.name, None
        case Failed(code=code):
            return "failed", code
        case Retry(code=code):
            return "retrying", code
        case Abandoned(reason=reason):
            return "abandoned", reason
        case GivenBack():
            return "released", "worker_shutdown"
