"""Monte Carlo pricing of European options on Dask: the example jobgate worker.

Run it from the repository root with::

    jobgate-worker examples.pricing:worker

Kinds:

- ``mc_option_price`` — params ``spot``, ``strike``, ``rate``, ``volatility``,
  ``maturity`` (years), ``option`` (``"call"`` or ``"put"``), ``paths`` (default
  200000), ``chunks`` (default 8), ``seed`` (default 0). The paths are split into
  ``chunks`` Dask tasks, each with its own random stream derived from ``seed``
  and the chunk index, so a result depends only on the params. Progress is
  reported per finished chunk; each chunk logs ``chunk priced`` (with its
  Dask ``task_key`` and ``duration_ms``) from inside its task, so the line
  carries the job's ``trace_id`` and the task's own ``span_id``. Returns
  ``{"price", "std_error", "paths", "chunks", "seed"}``: the discounted mean
  payoff and its standard error.

  Numbers may also come as decimal strings (``"100"``, ``"0.25"``), as the
  old API's clients send them (their params were a ``[String: String]``).
  Params it cannot use fail the job with code ``invalid_params`` and a
  message naming the field; so does ``{"computation_params": "<text>"}``,
  the old API's way of passing a ``computation_params`` string that is not
  a JSON object. The kind registers ``PRICING_PARAMS_SCHEMA``, so the v1
  API refuses such params at the door (``422 invalid_params``) and serves the
  schema at ``GET /v1/kinds``; the schema takes JSON numbers only, while the
  old API (which the gateway does not check against schemas) may still send
  decimal strings.
- ``echo`` — returns its params (any JSON object) unchanged (no Dask); used
  for load tests.
- ``fail`` — params ``{"retryable": bool?, "message": str?}``: fails every
  attempt, with a ``RetryableError`` (retried until its attempts run out,
  then dead-lettered) or with a plain error (failed at once); for trying
  out retries and dead letters.

Importing this module starts nothing: Dask starts when the first pricing job
touches ``ctx.dask``. With ``DASK_SCHEDULER_ADDRESS`` the chunks run on that
cluster's workers (started with ``--preload jobgate_worker.dask_preload``);
the handler catches nothing of Dask's: a scheduler lost mid-job, or a cluster
left without workers, retries the job with a ``dask_*`` code (the SDK
README's "Dask" section).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from jobgate_worker import JobContext, JobFailed, RetryableError, Worker, current_task_key

worker = Worker(queue="default")
log = logging.getLogger("examples.pricing")

MAX_PATHS = 50_000_000
MAX_CHUNKS = 1_000
#: Where the old API puts a ``computation_params`` string that is not a
#: JSON object (see the gateway's ``JOBGATE_LEGACY_KIND``).
LEGACY_TEXT_FIELD = "computation_params"
#: Paths simulated per numpy batch inside a chunk, to bound memory.
BATCH_PATHS = 1_000_000

#: The params of ``mc_option_price`` as JSON Schema (draft 2020-12): what
#: ``PricingParams.from_json`` accepts from a JSON client, so a gateway can
#: refuse the rest before a job exists and a client can build a form.
PRICING_PARAMS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "European option, Monte Carlo",
    "type": "object",
    "properties": {
        "spot": {"title": "Spot", "type": "number", "exclusiveMinimum": 0},
        "strike": {"title": "Strike", "type": "number", "exclusiveMinimum": 0},
        "rate": {"title": "Risk-free rate", "type": "number", "description": "0.03 is 3 %"},
        "volatility": {"title": "Volatility", "type": "number", "exclusiveMinimum": 0},
        "maturity": {
            "title": "Maturity (years)",
            "type": "number",
            "exclusiveMinimum": 0,
        },
        "option": {"title": "Option", "enum": ["call", "put"], "default": "call"},
        "paths": {
            "title": "Paths",
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_PATHS,
            "default": 200_000,
        },
        "chunks": {
            "title": "Dask tasks",
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_CHUNKS,
            "default": 8,
            "description": "at most paths",
        },
        "seed": {
            "title": "Seed",
            "type": "integer",
            "minimum": 0,
            "maximum": 2**63 - 1,
            "default": 0,
        },
    },
    "required": ["spot", "strike", "rate", "volatility", "maturity"],
    "additionalProperties": False,
}

#: ``echo`` returns whatever object it is given.
ECHO_PARAMS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Any JSON object, returned unchanged",
    "type": "object",
}

#: ``fail``'s params.
FAIL_PARAMS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "A job that fails on purpose",
    "type": "object",
    "properties": {
        "retryable": {
            "title": "Retryable",
            "type": "boolean",
            "default": False,
            "description": "retried until its attempts run out, then dead-lettered",
        },
        "message": {"title": "Message", "type": "string"},
    },
}


@dataclass(frozen=True, slots=True)
class PricingParams:
    spot: float
    strike: float
    rate: float
    volatility: float
    maturity: float
    option: str = "call"
    paths: int = 200_000
    chunks: int = 8
    seed: int = 0

    @classmethod
    def from_json(cls, params: Any) -> PricingParams:
        """Validate job params; a ValueError names the offending field."""
        if not isinstance(params, dict):
            raise ValueError("params must be a JSON object")
        text = params.get(LEGACY_TEXT_FIELD)
        if isinstance(text, str) and len(params) == 1:
            raise ValueError(
                f"computation_params must be a JSON object (or its JSON text), got {text[:100]!r}"
            )
        known = {
            "spot",
            "strike",
            "rate",
            "volatility",
            "maturity",
            "option",
            "paths",
            "chunks",
            "seed",
        }
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
        option = params.get("option", "call")
        if option not in ("call", "put"):
            raise ValueError(f"option must be 'call' or 'put', got {option!r}")
        paths = _integer(params, "paths", 200_000, 1, MAX_PATHS)
        chunks = _integer(params, "chunks", 8, 1, MAX_CHUNKS)
        if chunks > paths:
            raise ValueError(f"chunks must not exceed paths ({chunks} > {paths})")
        return cls(
            spot=_number(params, "spot", positive=True),
            strike=_number(params, "strike", positive=True),
            rate=_number(params, "rate", positive=False),
            volatility=_number(params, "volatility", positive=True),
            maturity=_number(params, "maturity", positive=True),
            option=option,
            paths=paths,
            chunks=chunks,
            seed=_integer(params, "seed", 0, 0, 2**63 - 1),
        )


def _number(params: dict[str, Any], name: str, *, positive: bool) -> float:
    if name not in params:
        raise ValueError(f"{name} is required")
    value = _from_text(params[name], float)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {params[name]!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return float(value)


def _integer(params: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = _from_text(params.get(name, default), int)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {params.get(name)!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _from_text(value: Any, number: type[float] | type[int]) -> Any:
    """A decimal string as ``number`` (``"100"`` → 100.0); anything else unchanged."""
    if isinstance(value, str):
        try:
            return number(value.strip())
        except ValueError:
            return value
    return value


def chunk_sizes(paths: int, chunks: int) -> list[int]:
    """Split ``paths`` into ``chunks`` sizes that differ by at most one."""
    base, extra = divmod(paths, chunks)
    return [base + (1 if index < extra else 0) for index in range(chunks)]


def simulate_chunk(params: PricingParams, size: int, chunk_index: int) -> tuple[float, float, int]:
    """Simulate ``size`` terminal prices; return (sum, sum of squares, count) of payoffs.

    The chunk's random stream is child ``chunk_index`` of ``SeedSequence(seed)``
    (what ``SeedSequence(seed).spawn(chunks)[chunk_index]`` yields), so it does
    not depend on which Dask worker runs the chunk or in what order.
    """
    rng = np.random.default_rng(np.random.SeedSequence(params.seed, spawn_key=(chunk_index,)))
    drift = (params.rate - 0.5 * params.volatility**2) * params.maturity
    diffusion = params.volatility * math.sqrt(params.maturity)
    total = 0.0
    total_squares = 0.0
    remaining = size
    while remaining > 0:
        batch = min(remaining, BATCH_PATHS)
        terminal = params.spot * np.exp(drift + diffusion * rng.standard_normal(batch))
        if params.option == "call":
            payoff = np.maximum(terminal - params.strike, 0.0)
        else:
            payoff = np.maximum(params.strike - terminal, 0.0)
        total += float(payoff.sum())
        total_squares += float(np.dot(payoff, payoff))
        remaining -= batch
    return total, total_squares, size


def price_chunk(params: PricingParams, size: int, chunk_index: int) -> tuple[float, float, int]:
    """The Dask task: ``simulate_chunk``, and one log line saying how long it took."""
    started = time.perf_counter()
    part = simulate_chunk(params, size, chunk_index)
    log.info(
        "chunk priced",
        extra={
            "task_key": current_task_key(),
            "chunk": chunk_index,
            "paths": size,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        },
    )
    return part


def summarize(params: PricingParams, parts: list[tuple[float, float, int]]) -> dict[str, Any]:
    """Discounted mean payoff and its standard error from per-chunk sums."""
    count = sum(part[2] for part in parts)
    total = math.fsum(part[0] for part in parts)
    total_squares = math.fsum(part[1] for part in parts)
    mean = total / count
    variance = max(total_squares - count * mean * mean, 0.0) / (count - 1) if count > 1 else 0.0
    discount = math.exp(-params.rate * params.maturity)
    return {
        "price": discount * mean,
        "std_error": discount * math.sqrt(variance / count),
        "paths": params.paths,
        "chunks": params.chunks,
        "seed": params.seed,
    }


@worker.job("mc_option_price", params_schema=PRICING_PARAMS_SCHEMA)
def price_option(ctx: JobContext, params: Any) -> dict[str, Any]:
    try:
        pricing = PricingParams.from_json(params)
    except ValueError as error:
        raise JobFailed(str(error), code="invalid_params") from error
    sizes = chunk_sizes(pricing.paths, pricing.chunks)
    futures = ctx.dask.map(
        price_chunk, [pricing] * pricing.chunks, sizes, list(range(pricing.chunks))
    )
    ctx.logger.info("pricing submitted", extra={"chunks": pricing.chunks, "paths": pricing.paths})
    parts: list[tuple[float, float, int]] = []
    for done, future in enumerate(ctx.dask.as_completed(futures), 1):
        ctx.raise_if_cancelled()
        parts.append(future.result())
        ctx.progress(done, pricing.chunks)
    ctx.raise_if_cancelled()
    return summarize(pricing, parts)


@worker.job("echo", params_schema=ECHO_PARAMS_SCHEMA)
def echo(ctx: JobContext, params: Any) -> Any:
    return params


class DeliberateError(Exception):
    """The non-retryable error of the ``fail`` kind."""


@worker.job("fail", params_schema=FAIL_PARAMS_SCHEMA)
def fail(ctx: JobContext, params: Any) -> Any:
    if not isinstance(params, dict) or not isinstance(params.get("retryable", False), bool):
        raise ValueError('params must be {"retryable": bool, "message": str?}')
    message = params.get("message")
    text = message if isinstance(message, str) else f"failed on purpose (attempt {ctx.attempt})"
    if params.get("retryable", False):
        raise RetryableError(text, code="deliberate_failure")
    raise DeliberateError(text)
