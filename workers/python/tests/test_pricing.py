"""The Monte Carlo pricing example, on a real (local) Dask cluster."""

from __future__ import annotations

import math
import sys
import time

import pytest

import sample_app
from conftest import REPO_ROOT, assert_contiguous

sys.path.insert(0, str(REPO_ROOT))

from examples import pricing


def black_scholes(spot, strike, rate, volatility, maturity, option):
    def cdf(x):
        return 0.5 * (1 + math.erf(x / math.sqrt(2)))

    d1 = (math.log(spot / strike) + (rate + volatility**2 / 2) * maturity) / (
        volatility * math.sqrt(maturity)
    )
    d2 = d1 - volatility * math.sqrt(maturity)
    discount = math.exp(-rate * maturity)
    if option == "call":
        return spot * cdf(d1) - strike * discount * cdf(d2)
    return strike * discount * cdf(-d2) - spot * cdf(-d1)


MARKET = {"spot": 100.0, "strike": 105.0, "rate": 0.03, "volatility": 0.25, "maturity": 1.5}


def test_prices_match_black_scholes_and_are_deterministic(gateway, run_worker):
    with run_worker(pricing.worker) as runtime:
        assert not runtime.dask.started
        echo = gateway.submit("echo", {"x": 1})
        gateway.wait_terminal(echo)
        assert not runtime.dask.started, "a job without Dask must not start Dask"

        jobs = {
            "call": gateway.submit(
                "mc_option_price", {**MARKET, "option": "call", "paths": 200_000, "chunks": 4}
            ),
            "put": gateway.submit(
                "mc_option_price", {**MARKET, "option": "put", "paths": 200_000, "chunks": 4}
            ),
            "again": gateway.submit(
                "mc_option_price", {**MARKET, "option": "call", "paths": 200_000, "chunks": 4}
            ),
            "other_seed": gateway.submit(
                "mc_option_price",
                {**MARKET, "option": "call", "paths": 200_000, "chunks": 4, "seed": 7},
            ),
        }
        results = {}
        for name, job_id in jobs.items():
            events = gateway.wait_terminal(job_id, timeout=60)
            assert_contiguous(events)
            assert events[-1]["event"] == "completed", events[-1]
            results[name] = events[-1]["data"]["result"]
            progress = [e["data"] for e in events if e["event"] == "progress"]
            assert progress, "progress is reported per finished chunk"
            assert progress[-1] == {"done": 4, "total": 4}
        assert runtime.dask.started

    for option in ("call", "put"):
        result = results[option]
        expected = black_scholes(**MARKET, option=option)
        assert result["paths"] == 200_000
        assert result["chunks"] == 4
        assert result["seed"] == 0
        assert 0 < result["std_error"] < 0.1
        assert abs(result["price"] - expected) < 3 * result["std_error"], (result, expected)
    assert results["again"] == results["call"]
    assert results["other_seed"]["price"] != results["call"]["price"]


def test_invalid_params_fail_with_the_field_named(gateway, run_worker):
    with run_worker(pricing.worker) as runtime:
        job_id = gateway.submit("mc_option_price", {**MARKET, "volatility": -0.2})
        events = gateway.wait_terminal(job_id)
        assert not runtime.dask.started
    error = events[-1]["data"]["error"]
    assert error["code"] == "invalid_params"
    assert error["message"] == "volatility must be positive, got -0.2"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({**MARKET, "option": "straddle"}, "option"),
        ({**MARKET, "paths": 0}, "paths"),
        ({**MARKET, "paths": 10, "chunks": 20}, "chunks"),
        ({**MARKET, "seed": -1}, "seed"),
        ({**MARKET, "seed": 1.5}, "seed"),
        ({**MARKET, "spot": "a hundred"}, "spot"),
        ({**MARKET, "paths": "1e3"}, "paths"),
        ({**MARKET, "spot": "nan"}, "spot"),
        ({"computation_params": "spot=100&strike=105"}, "computation_params"),
        ({**MARKET, "strike": True}, "strike"),
        ({k: v for k, v in MARKET.items() if k != "maturity"}, "maturity"),
        ({**MARKET, "rate": float("nan")}, "rate"),
        ({**MARKET, "spto": 1}, "spto"),
    ],
)
def test_validation_names_the_field(params, field):
    with pytest.raises(ValueError, match=field):
        pricing.PricingParams.from_json(params)


def test_numbers_may_come_as_decimal_strings():
    as_text = {name: str(value) for name, value in MARKET.items()}
    params = pricing.PricingParams.from_json({**as_text, "paths": "1000", "chunks": " 2 "})
    assert params == pricing.PricingParams(**MARKET, paths=1000, chunks=2)


def test_chunks_are_deterministic_and_independent_of_order():
    params = pricing.PricingParams.from_json({**MARKET, "paths": 10_000, "chunks": 3, "seed": 5})
    sizes = pricing.chunk_sizes(params.paths, params.chunks)
    assert sizes == [3334, 3333, 3333]
    forward = [pricing.simulate_chunk(params, size, i) for i, size in enumerate(sizes)]
    backward = [pricing.simulate_chunk(params, sizes[i], i) for i in reversed(range(3))][::-1]
    assert forward == backward
    assert len({part[0] for part in forward}) == 3, "each chunk has its own random stream"
    summary = pricing.summarize(params, forward)
    assert set(summary) == {"price", "std_error", "paths", "chunks", "seed"}


def test_cancel_cancels_the_jobs_dask_futures(gateway, run_worker):
    with run_worker(sample_app.worker) as runtime:
        job_id = gateway.submit("dask_sleepers", {"n": 12, "s": 0.4})
        gateway.wait_event(job_id, "progress", timeout=30)
        assert gateway.cancel(job_id).status == "requested"
        events = gateway.wait_terminal(job_id, timeout=5)
        assert events[-1]["event"] == "cancelled"
        futures = sample_app.dask_futures[job_id]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(f.cancelled() for f in futures):
            time.sleep(0.05)
        # Tasks that had not run yet were cancelled, not left to run.
        assert any(f.status == "cancelled" for f in futures)
        assert runtime.dask.started


def test_the_fail_kind_retries_then_dead_letters_once_or_fails_at_once(gateway, run_worker):
    with run_worker(pricing.worker):
        retryable = gateway.submit("fail", {"retryable": True}, max_attempts=2)
        events = gateway.wait_terminal(retryable, timeout=30)
        assert [e["event"] for e in events] == [
            "queued", "started", "retrying", "started", "failed",
        ]  # fmt: skip
        assert events[-1]["data"]["error"]["code"] == "max_attempts_exceeded"
        plain = gateway.submit("fail", {"retryable": False, "message": "no"})
        events = gateway.wait_terminal(plain, timeout=30)
        assert [e["event"] for e in events] == ["queued", "started", "failed"]
        assert events[-1]["data"]["error"]["message"].endswith("no")
    dead = gateway.dead_letters()
    assert [d["job_id"] for d in dead] == [retryable], "only attempts running out dead-letter"
    index = gateway.redis.hgetall("jobgate:dead:{default}:jobs")
    assert list(index) == [retryable]
