"""Runs the conformance scenarios against a client, through its driver.

    run.py --client "<driver command>" [--only name[,name…]] [--report path] [--real]

One line per scenario and backend, `PASS|FAIL <name> [fake|real] (<ms>)`, then the reason of
each failure; exits 1 when any scenario failed. Without --real the scenarios
play against the scripted fake gateway (fake_server.py); with --real they
are replayed against the real gateway through a fault-injecting relay
(real_gateway.py), and each scenario's deliveries are compared with the
fake run's (both are run; the fake first). The JSON report holds, per
scenario and backend, the result, the reason and the normalised deliveries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from fake_server import play_fake
from frames import FrameRefused, Schemas
from player import all_scenarios, compare, normalise
from real_gateway import RealStack


def line(status: str, name: str, backend: str, elapsed_ms: int, detail: str | None) -> str:
    text = f"{status} {name} [{backend}] ({elapsed_ms} ms)"
    return text + (f"\n     {detail}" if detail and status != "PASS" else "")


async def run_all(args: argparse.Namespace) -> int:
    schemas = Schemas()
    scenarios = all_scenarios()
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {scenario["name"] for scenario in scenarios}
        if unknown:
            print(f"unknown scenarios: {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        scenarios = [scenario for scenario in scenarios if scenario["name"] in wanted]
    stack = None
    stack_error = None
    if args.real:
        stack = RealStack(schemas)
        try:
            await stack.start()
        except Exception as error:  # noqa: BLE001 - every real replay fails with the reason
            await stack.stop()
            stack, stack_error = (
                None,
                f"the real gateway's stack did not start: {type(error).__name__}: {error}",
            )
    report: list[dict[str, Any]] = []
    failed = 0
    try:
        for scenario in scenarios:
            fake = await run_one(scenario, "fake", lambda s: play_fake(s, args.client, schemas))
            report.append(fake)
            print(
                line(fake["status"], scenario["name"], "fake", fake["ms"], fake["error"]),
                flush=True,
            )
            failed += fake["status"] == "FAIL"
            if not args.real:
                continue
            result = await replay_real(scenario, fake, stack, stack_error, args.client)
            report.append(result)
            print(
                line(result["status"], scenario["name"], "real", result["ms"], result["error"]),
                flush=True,
            )
            failed += result["status"] == "FAIL"
    finally:
        if stack is not None:
            await stack.stop()
    passed = sum(item["status"] == "PASS" for item in report)
    print(f"{passed} passed, {failed} failed")
    if args.report:
        Path(args.report).write_text(
            json.dumps({"client": args.client, "results": report}, indent=2) + "\n"
        )
    return 1 if failed else 0


async def replay_real(
    scenario: dict[str, Any],
    fake: dict[str, Any],
    stack: RealStack | None,
    stack_error: str | None,
    client: str,
) -> dict[str, Any]:
    """The scenario replayed against the real gateway; its deliveries must
    equal the fake run's."""
    if stack is None or "real" not in scenario:
        error = stack_error if stack is None else "the scenario has no real section"
        return {
            "name": scenario["name"],
            "backend": "real",
            "status": "FAIL",
            "ms": 0,
            "error": error,
            "deliveries": [],
        }
    result = await run_one(scenario, "real", lambda s: stack.play(s, client))
    if result["status"] == "PASS" and fake["status"] == "PASS":
        difference = compare(fake["deliveries"], result["deliveries"])
        if difference:
            result["status"] = "FAIL"
            result["error"] = f"real deliveries differ from the fake run's: {difference}"
    return result


async def run_one(scenario: dict[str, Any], backend: str, play: Any) -> dict[str, Any]:
    started = time.monotonic()
    try:
        outcome = await play(scenario)
    except FrameRefused as refused:
        outcome = {"error": f"scenario refused: {refused}", "deliveries": []}
    except Exception as error:  # noqa: BLE001 - a broken backend fails its scenario, not the run
        outcome = {
            "error": f"{backend} backend failed: {type(error).__name__}: {error}",
            "deliveries": [],
        }
    status = "FAIL" if outcome["error"] else "PASS"
    return {
        "name": scenario["name"],
        "backend": backend,
        "status": status,
        "ms": round((time.monotonic() - started) * 1000),
        "error": outcome["error"],
        "deliveries": normalise(outcome["deliveries"]),
        "log": outcome.get("log", []),
        "driver_stderr": outcome.get("stderr", []) if status == "FAIL" else [],
        "driver_outputs": outcome.get("outputs", [])[-40:] if status == "FAIL" else [],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="jobgate client conformance suite")
    parser.add_argument(
        "--client", required=True, help='the driver command, e.g. "node dist/conformance/driver.js"'
    )
    parser.add_argument("--only", help="comma-separated scenario names")
    parser.add_argument("--report", help="write a JSON report here")
    parser.add_argument("--real", action="store_true", help="also replay against the real gateway")
    return asyncio.run(run_all(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
