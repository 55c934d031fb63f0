"""When Dask failed a job, without a cluster: the health rules, error classes, last attempts."""

from __future__ import annotations

import types

import distributed
import pytest
from distributed.client import FutureCancelledError
from distributed.comm import CommClosedError

from jobgate_worker import Settings
from jobgate_worker.dask_health import DaskHealth, DaskTimeouts, Look, dask_error_for
from jobgate_worker.errors import DaskError, JobFailed, RetryableError
from jobgate_worker.outcomes import (
    Failed,
    Retry,
    attempts_ran_out,
    handler_outcome,
    last_attempt,
    retry_outcome,
    span_outcome,
)
from jobgate_worker.settings import SettingsError

ADDRESS = "tcp://10.0.0.1:8786"
TIMEOUTS = DaskTimeouts(connect_s=2, no_workers_s=5, scheduler_s=10, check_interval_s=1)


@pytest.fixture
def health() -> DaskHealth:
    return DaskHealth(ADDRESS, TIMEOUTS)


def test_a_lost_connection_ends_the_wait_at_once(health):
    error = health.observe(0.0, Look(connected=False))
    assert error is not None
    assert error.code == "dask_unavailable"
    assert error.message == f"lost the connection to the Dask scheduler at {ADDRESS}"


def test_no_workers_ends_the_wait_after_its_timeout(health):
    assert health.observe(100.0, Look(connected=True, workers=0)) is None
    assert health.observe(104.9, Look(connected=True, workers=0)) is None
    error = health.observe(105.0, Look(connected=True, workers=0))
    assert error is not None
    assert error.code == "dask_no_workers"
    assert "had no workers for 5 s" in error.message
    # Timed afresh after a verdict, and after any look with a worker.
    assert health.observe(106.0, Look(connected=True, workers=0)) is None
    assert health.observe(110.0, Look(connected=True, workers=1)) is None
    assert health.observe(111.0, Look(connected=True, workers=0)) is None
    assert health.observe(115.5, Look(connected=True, workers=0)) is None


def test_an_unanswered_look_ends_the_wait_after_the_scheduler_timeout(health):
    assert health.observe(0.0, Look(connected=True, workers=None)) is None
    assert health.observe(9.0, Look(connected=True, workers=None)) is None
    error = health.observe(10.0, Look(connected=True, workers=None))
    assert error is not None
    assert error.code == "dask_unavailable"
    assert error.message == f"the Dask scheduler at {ADDRESS} did not answer for 10 s"


def test_reset_forgets_the_waits_so_far(health):
    health.observe(0.0, Look(connected=True, workers=0))
    health.reset()
    assert health.observe(6.0, Look(connected=True, workers=0)) is None


@pytest.mark.parametrize(
    ("error", "connected", "code"),
    [
        (FutureCancelledError("k", "scheduler-connection-lost"), True, "dask_unavailable"),
        (FutureCancelledError("k", "scheduler-connection-lost"), False, "dask_unavailable"),
        (FutureCancelledError("k", "unknown"), True, None),
        (FutureCancelledError("k", "unknown"), False, "dask_unavailable"),
        (CommClosedError("in <TCP>: Stream is closed"), True, "dask_unavailable"),
        (TimeoutError("timed out"), True, None),
        (TimeoutError("timed out"), False, "dask_unavailable"),
        (OSError("Timed out trying to connect"), False, "dask_unavailable"),
        (ValueError("bad input"), False, None),
        (
            distributed.KilledWorker("k", types.SimpleNamespace(address="tcp://w:1"), 3),
            True,
            "dask_worker_lost",
        ),
    ],
)
def test_dask_errors_are_known_by_type(error, connected, code):
    found = dask_error_for(error, connected=connected, scheduler_address=ADDRESS)
    assert (found.code if found is not None else None) == code


def _wait_for_a_lost_future():
    raise FutureCancelledError("k", "scheduler-connection-lost")


def _price():
    try:
        _wait_for_a_lost_future()
    except Exception as error:
        raise RuntimeError("pricing failed") from error


def test_a_dask_error_is_found_behind_the_handlers_own():
    with pytest.raises(RuntimeError) as raised:
        _price()
    found = dask_error_for(raised.value, connected=True, scheduler_address=ADDRESS)
    assert found is not None
    assert found.code == "dask_unavailable"
    assert found.message.startswith(f"lost the connection to the Dask scheduler at {ADDRESS}: ")


def test_a_dask_error_retries_with_its_code_and_fails_with_it_on_the_last_attempt():
    error = DaskError(DaskError.UNAVAILABLE, "could not connect")
    retry = retry_outcome(error, lambda: 0.5)
    assert retry == Retry("dask_unavailable", "could not connect", 0.5, keep_code=True)
    assert handler_outcome(lambda: (_ for _ in ()).throw(error), lambda: 0.5) == retry
    assert last_attempt(retry, 1, 3) is retry
    final = last_attempt(retry, 3, 3)
    assert final == Failed(
        "dask_unavailable", "attempt 3 of 3 failed: could not connect", attempts_ran_out=True
    )
    assert span_outcome(final) == ("failed", "dask_unavailable")
    # Any other retryable error is left to the script: max_attempts_exceeded.
    plain = retry_outcome(RetryableError("busy", code="upstream_busy"), lambda: 0.5)
    assert last_attempt(plain, 3, 3) is plain


def test_only_known_codes_say_the_attempts_ran_out():
    assert attempts_ran_out("max_attempts_exceeded")
    for code in ("dask_unavailable", "dask_no_workers", "dask_worker_lost"):
        assert attempts_ran_out(code)
    assert not attempts_ran_out("handler_error")
    assert not attempts_ran_out(None)
    with pytest.raises(ValueError, match="unknown Dask error code"):
        DaskError("dask_sleepy", "no")
    assert not isinstance(DaskError(DaskError.NO_WORKERS, "none"), JobFailed)


def test_dask_timeouts_from_env_and_validation():
    settings = Settings.from_env(
        {
            "DASK_SCHEDULER_ADDRESS": ADDRESS,
            "JOBGATE_DASK_CONNECT_TIMEOUT_S": "2.5",
            "JOBGATE_DASK_NO_WORKERS_TIMEOUT_S": "60",
            "JOBGATE_DASK_SCHEDULER_TIMEOUT_S": "20",
            "JOBGATE_DASK_CHECK_INTERVAL_S": "0.5",
        }
    )
    assert settings.dask_scheduler_address == ADDRESS
    assert settings.dask_timeouts == DaskTimeouts(
        connect_s=2.5, no_workers_s=60, scheduler_s=20, check_interval_s=0.5
    )
    assert Settings().dask_timeouts == DaskTimeouts()
    with pytest.raises(SettingsError, match="dask_connect_timeout_s must be positive"):
        Settings.from_env({"JOBGATE_DASK_CONNECT_TIMEOUT_S": "0"})
    with pytest.raises(SettingsError, match="JOBGATE_DASK_CHECK_INTERVAL_S"):
        Settings.from_env({"JOBGATE_DASK_CHECK_INTERVAL_S": "often"})
