"""Kinds that describe themselves: ``@worker.job(kind, params_schema=...)``
checks the schema when the handler is declared and registers it with the
kind; the example kinds' schemas accept what their handlers accept."""

from __future__ import annotations

import json
import math
import sys

import jsonschema
import pytest

from conftest import REPO_ROOT
from jobgate_worker import Worker, keys

sys.path.insert(0, str(REPO_ROOT))

from examples import pricing

STRIKE = {"type": "object", "properties": {"strike": {"type": "number", "minimum": 0}}}


def test_a_valid_schema_is_kept_with_its_kind():
    worker = Worker()

    @worker.job("priced", params_schema=STRIKE)
    def priced(ctx, params):
        return params

    @worker.job("plain")
    def plain(ctx, params):
        return params

    assert worker.params_schemas == {"priced": STRIKE}
    # A copy: changing the caller's dict later does not change what is registered.
    assert worker.params_schemas["priced"] is not STRIKE


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "no-such-type"},
        {"minimum": "zero"},
        {"properties": {"strike": {"type": 3}}},
        {"required": "strike"},
    ],
)
def test_a_broken_schema_fails_when_the_handler_is_declared(schema):
    worker = Worker()
    with pytest.raises(jsonschema.SchemaError):

        @worker.job("priced", params_schema=schema)
        def priced(ctx, params):
            return params

    assert "priced" not in worker.handlers


def test_a_schema_that_is_not_json_fails_when_declared():
    worker = Worker()
    with pytest.raises(ValueError, match="not JSON"):
        worker.job("priced", params_schema={"maximum": math.inf})
    with pytest.raises(ValueError, match="not JSON"):
        worker.job("priced", params_schema={"enum": [{1, 2}]})
    with pytest.raises(TypeError, match="mapping"):
        worker.job("priced", params_schema=[{"type": "object"}])  # type: ignore[arg-type]


def test_the_schema_is_registered_in_the_kinds_registry(gateway, run_worker):
    worker = Worker()

    @worker.job("priced", params_schema=STRIKE)
    def priced(ctx, params):
        return params

    @worker.job("plain")
    def plain(ctx, params):
        return params

    with run_worker(worker, consumer="schema-test"):
        registered = gateway.redis.hgetall(keys.KINDS_KEY)
    priced_registration = json.loads(registered["priced"])
    assert priced_registration["params_schema"] == STRIKE
    assert priced_registration["queue"] == "default"
    assert priced_registration["worker"] == "schema-test"
    assert isinstance(priced_registration["seen_at"], int)
    # Without a schema the registration is what it always was.
    assert set(json.loads(registered["plain"])) == {"queue", "worker", "seen_at"}


def test_every_example_kind_registers_a_valid_schema():
    schemas = pricing.worker.params_schemas
    assert set(schemas) == set(pricing.worker.handlers) == {"mc_option_price", "echo", "fail"}
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)


MARKET = {"spot": 100, "strike": 105, "rate": 0.03, "volatility": 0.25, "maturity": 1.5}


@pytest.mark.parametrize(
    "params",
    [
        MARKET,
        {**MARKET, "rate": -0.01, "option": "put", "paths": 1000, "chunks": 10, "seed": 7},
        {**MARKET, "paths": 50_000_000, "chunks": 1000, "seed": 2**63 - 1},
    ],
)
def test_the_pricing_schema_accepts_what_the_handler_prices(params):
    jsonschema.Draft202012Validator(pricing.PRICING_PARAMS_SCHEMA).validate(params)
    pricing.PricingParams.from_json(params)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({**MARKET, "strike": -1}, "strike"),
        ({**MARKET, "spot": 0}, "spot"),
        ({**MARKET, "option": "straddle"}, "option"),
        ({**MARKET, "paths": 0}, "paths"),
        ({**MARKET, "paths": 1.5}, "paths"),
        ({**MARKET, "chunks": 1001}, "chunks"),
        ({**MARKET, "seed": -1}, "seed"),
        ({**MARKET, "barrier": 120}, "barrier"),
        ({k: v for k, v in MARKET.items() if k != "rate"}, "rate"),
    ],
)
def test_the_pricing_schema_refuses_what_the_handler_refuses(params, field):
    errors = list(
        jsonschema.Draft202012Validator(pricing.PRICING_PARAMS_SCHEMA).iter_errors(params)
    )
    assert errors, params
    assert any(field in e.message or field in e.path for e in errors), errors
    with pytest.raises(ValueError, match=field):
        pricing.PricingParams.from_json(params)


def test_the_pricing_schema_takes_numbers_only():
    # Decimal strings are for the old API, which the gateway does not check.
    params = {**MARKET, "volatility": "0.25"}
    assert not jsonschema.Draft202012Validator(pricing.PRICING_PARAMS_SCHEMA).is_valid(params)
    assert pricing.PricingParams.from_json(params).volatility == 0.25


def test_the_fail_schema_matches_its_handler():
    validator = jsonschema.Draft202012Validator(pricing.FAIL_PARAMS_SCHEMA)
    for params in ({}, {"retryable": True}, {"retryable": False, "message": "no"}):
        validator.validate(params)
    assert not validator.is_valid({"retryable": "yes"})
    assert not validator.is_valid({"message": 3})
