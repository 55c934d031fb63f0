"""How an attempt's outcome is decided, without Redis: handler results, stops, script calls."""

from __future__ import annotations

import math

import pytest

from jobgate_worker.errors import JobCancelled, JobFailed, RetryableError
from jobgate_worker.outcomes import (
    MESSAGE_LIMIT,
    Abandoned,
    Cancelled,
    Completed,
    Failed,
    GivenBack,
    Retry,
    error_message,
    handler_outcome,
    span_outcome,
    stop_outcome,
    terminal_call,
)


def _no_backoff() -> float:
    raise AssertionError("the backoff is asked only for a retry without a delay")


def _raises(error: BaseException):
    def call():
        raise error

    return call


def test_error_message_names_the_exception_type():
    assert error_message(ValueError("spot must be positive")) == "ValueError: spot must be positive"
    assert error_message(KeyError("spot")) == "KeyError: 'spot'"
    assert error_message(RuntimeError()) == "RuntimeError"
    assert len(error_message(ValueError("x" * 10_000))) == MESSAGE_LIMIT


def test_a_returned_value_completes_the_job_with_compact_json():
    outcome = handler_outcome(lambda: {"price": 10.5, "paths": [1, None]}, _no_backoff)
    assert outcome == Completed('{"price":10.5,"paths":[1,null]}')


@pytest.mark.parametrize(
    ("result", "error_type"), [({1, 2}, "TypeError"), (math.nan, "ValueError")]
)
def test_a_result_json_rejects_fails_the_job(result, error_type):
    outcome = handler_outcome(lambda: result, _no_backoff)
    assert isinstance(outcome, Failed)
    assert outcome.code == "result_not_serializable"
    assert outcome.message.startswith(f"the handler's result is not JSON: {error_type}")
    assert outcome.error is None, "not the handler's exception: no traceback to log"


def test_an_exception_fails_the_job_and_keeps_the_exception():
    error = ValueError("bad input")
    outcome = handler_outcome(_raises(error), _no_backoff)
    assert outcome == Failed("handler_error", "ValueError: bad input")
    assert isinstance(outcome, Failed)
    assert outcome.error is error


def test_job_failed_fails_the_job_with_its_own_code():
    error = JobFailed("spot must be a number", code="invalid_params")
    outcome = handler_outcome(_raises(error), _no_backoff)
    assert outcome == Failed("invalid_params", "spot must be a number")
    assert handler_outcome(_raises(JobFailed("x", code="no spaces")), _no_backoff) == Failed(
        "handler_error", "x"
    )


def test_even_a_base_exception_of_the_handler_is_a_failure():
    outcome = handler_outcome(_raises(SystemExit(3)), _no_backoff)
    assert outcome == Failed("handler_error", "SystemExit: 3")


def test_job_cancelled_raised_by_the_handler_cancels_the_job():
    assert handler_outcome(_raises(JobCancelled("job-1", "cancelled")), _no_backoff) == Cancelled()


def test_a_retryable_error_with_its_own_delay_is_retried_after_it():
    error = RetryableError("upstream busy", code="upstream_busy", delay_s=0.05)
    outcome = handler_outcome(_raises(error), _no_backoff)
    assert outcome == Retry("upstream_busy", "upstream busy", 0.05)
    assert isinstance(outcome, Retry)
    assert outcome.delay_ms == 50


def test_a_retryable_error_without_a_delay_takes_the_backoff():
    outcome = handler_outcome(_raises(RetryableError("busy")), lambda: 1.25)
    assert outcome == Retry("retryable_error", "busy", 1.25)


def test_a_retryable_error_with_a_code_the_schema_refuses_gets_the_generic_code():
    long_message = "m" * (MESSAGE_LIMIT + 10)
    error = RetryableError(long_message, code="has space", delay_s=0)
    outcome = handler_outcome(_raises(error), _no_backoff)
    assert isinstance(outcome, Retry)
    assert outcome.code == "retryable_error"
    assert outcome.message == "m" * MESSAGE_LIMIT


def test_a_negative_delay_is_no_delay():
    assert Retry("c", "m", -3.0).delay_ms == 0


def test_stops_from_outside_cancel_fail_or_abandon():
    assert stop_outcome("cancelled", 0) == Cancelled()
    assert stop_outcome("timeout", 2.0) == Failed("timeout", "the job did not finish within 2 s")
    assert stop_outcome("lease_lost", 0) == Abandoned("lease_lost")


def test_terminal_outcomes_map_to_their_script_calls():
    assert terminal_call(Completed('{"a":1}'), 2) == ("complete", 2, '{"a":1}')
    assert terminal_call(Failed("timeout", "too slow"), 3) == ("fail", 3, "timeout", "too slow")
    assert terminal_call(Cancelled(), 1) == ("cancelled", 1)


def test_every_outcome_names_itself_on_the_attempt_span():
    assert span_outcome(Completed("1")) == ("completed", None)
    assert span_outcome(Cancelled()) == ("cancelled", None)
    assert span_outcome(Failed("handler_error", "x")) == ("failed", "handler_error")
    assert span_outcome(Retry("upstream_busy", "x", 1)) == ("retrying", "upstream_busy")
    assert span_outcome(Abandoned("lease_lost")) == ("abandoned", "lease_lost")
    assert span_outcome(GivenBack()) == ("released", "worker_shutdown")
