"""What the fake and the real replay share: a scenario file, its jobs, the
driver-side steps, and the comparison of what the app saw."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from driver_process import Driver
from frames import Bindings

SCENARIOS_DIR = Path(__file__).resolve().parent / "scenarios"
DEFAULT_STEP_TIMEOUT_S = 5.0
#: The kind the real replay's worker serves (steps_worker.py) and the fake imitates.
STEPS_KIND = "conformance_steps"
STEPS_QUEUE = "conformance"
FAKE_TS_BASE = 1_796_000_000_000


class ScenarioFailed(Exception):  # noqa: N818 - a verdict on a scenario, read as one
    """A step's expectation was not met."""


def load_scenario(path: Path) -> dict[str, Any]:
    scenario = json.loads(path.read_text())
    scenario.setdefault("name", path.stem)
    return scenario


def all_scenarios() -> list[dict[str, Any]]:
    return [load_scenario(path) for path in sorted(SCENARIOS_DIR.glob("*.json"))]


def steps_job_events(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The events the real `conformance_steps` worker writes for a job with
    params {"steps": N, "pad": P}: queued, started, N progress, completed."""
    if "events" in job:
        return [dict(event) for event in job["events"]]
    steps = int(job.get("steps", 3))
    pad = int(job.get("pad", 0))
    pairs: list[tuple[str, dict[str, Any]]] = [
        ("queued", {"kind": STEPS_KIND, "queue": STEPS_QUEUE, "priority": 5}),
        ("started", {"attempt": 1, "worker": "fake-worker"}),
    ]
    for done in range(1, steps + 1):
        progress: dict[str, Any] = {"done": done, "total": steps}
        if pad:
            progress["message"] = "x" * pad
        pairs.append(("progress", progress))
    pairs.append(("completed", {"result": {"steps": steps}}))
    return [
        {
            "type": "event",
            "job_id": job["job_id"],
            "seq": seq,
            "epoch": 1,
            "event": name,
            "data": data,
            "ts": FAKE_TS_BASE + seq * 10,
            "trace_id": job["trace_id"],
        }
        for seq, (name, data) in enumerate(pairs, start=1)
    ]


def expected_deliveries(scenario: dict[str, Any]) -> list[dict[str, Any]]:
    """`expect.deliveries` with its shorthands expanded:
    `{"events": "J1", "ref": "a", "seqs": [first, last]}` is those events of J1."""
    jobs = scenario.get("jobs", {})
    out: list[dict[str, Any]] = []
    for item in scenario.get("expect", {}).get("deliveries", []):
        if "events" in item:
            job = jobs[item["events"]]
            first, last = item["seqs"]
            for event in steps_job_events(job)[first - 1 : last]:
                out.append(
                    {
                        "out": "event",
                        "ref": item["ref"],
                        "job_id": job["job_id"],
                        "epoch": event["epoch"],
                        "seq": event["seq"],
                        "event": event["event"],
                        "data": event["data"],
                    }
                )
            continue
        filled = dict(item)
        if isinstance(filled.get("job_id"), str) and filled["job_id"].startswith("@"):
            filled["job_id"] = jobs[filled["job_id"][1:]]["job_id"]
        out.append(filled)
    return out


VOLATILE_DATA_KEYS = ("worker",)
#: Longer progress messages (padding) are compared by length.
LONG_TEXT = 64


def normalise(deliveries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What must be equal between a fake and a real run: job ids become
    job1, job2… by first appearance; trace ids, timings and workers go."""
    names: dict[str, str] = {}
    out = []
    for delivery in deliveries:
        item = {key: value for key, value in delivery.items() if not key.startswith("_")}
        item.pop("trace_id", None)
        item.pop("message", None)  # an error's wording is the gateway's to choose
        job_id = item.get("job_id")
        if isinstance(job_id, str):
            item["job_id"] = names.setdefault(job_id, f"job{len(names) + 1}")
        if isinstance(item.get("data"), dict):
            data = dict(item["data"])
            for key in VOLATILE_DATA_KEYS:
                if key in data:
                    data[key] = "*"
            if isinstance(data.get("message"), str) and len(data["message"]) > LONG_TEXT:
                data["message"] = f"<{len(data['message'])} characters>"
            item["data"] = data
        out.append(item)
    return out


def by_ref(deliveries: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each ref's deliveries in order: different refs may interleave freely."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for delivery in deliveries:
        grouped.setdefault(str(delivery.get("ref")), []).append(delivery)
    return grouped


def compare(expected: list[dict[str, Any]], actual: list[dict[str, Any]]) -> str | None:
    """None when equal (per ref), else a short explanation."""
    want, got = by_ref(normalise(expected)), by_ref(normalise(actual))
    for ref in sorted(set(want) | set(got)):
        wanted, seen = want.get(ref, []), got.get(ref, [])
        for index in range(max(len(wanted), len(seen))):
            left = wanted[index] if index < len(wanted) else None
            right = seen[index] if index < len(seen) else None
            if left != right:
                return (
                    f"ref {ref}, delivery {index + 1}: expected {json.dumps(left)}, "
                    f"got {json.dumps(right)} ({len(wanted)} expected, {len(seen)} delivered)"
                )
    return None


class Player:
    """Plays the driver-side steps; subclasses add the server-side ones."""

    def __init__(self, scenario: dict[str, Any], driver: Driver, bindings: Bindings) -> None:
        self.scenario = scenario
        self.driver = driver
        self.bindings = bindings
        self.log: list[str] = []

    def timeout(self, step: dict[str, Any]) -> float:
        return float(step.get("timeout_ms", DEFAULT_STEP_TIMEOUT_S * 1000)) / 1000

    async def play(self, steps: list[dict[str, Any]]) -> None:
        for number, step in enumerate(steps, start=1):
            try:
                await self.step(step)
            except ScenarioFailed as failure:
                raise ScenarioFailed(f"step {number} {json.dumps(step)[:160]}: {failure}") from None
            except Exception as error:
                raise ScenarioFailed(
                    f"step {number} {json.dumps(step)[:160]}: {type(error).__name__}: {error}"
                ) from error

    async def step(self, step: dict[str, Any]) -> None:
        if "driver" in step:
            await self.driver.send(self.bindings.fill(step["driver"]))
        elif "wait_output" in step:
            await self.driver.wait_output(
                step["wait_output"],
                self.bindings,
                timeout_s=self.timeout(step),
                since=step.get("since"),
            )
        elif "no_output" in step:
            await asyncio.sleep(float(step.get("for_ms", 300)) / 1000)
            start = self.driver.marks.get(step.get("since", ""), 0)
            for output in self.driver.outputs[start:]:
                if Bindings(self.bindings.jobs).matches(step["no_output"], output):
                    raise ScenarioFailed(f"unexpected driver output {json.dumps(output)}")
        elif "mark" in step:
            self.driver.mark(step["mark"])
        elif "advance_clock" in step:
            await self.driver.send({"cmd": "advance_clock", "ms": step["advance_clock"]})
        elif "set_token" in step:
            await self.driver.send({"cmd": "set_token", "token": self.token_for(step["set_token"])})
        elif "sleep_ms" in step:
            await asyncio.sleep(step["sleep_ms"] / 1000)
        elif "check_delays" in step:
            self.check_delays(step["check_delays"])
        elif not await self.server_step(step):
            raise ScenarioFailed(f"unknown step {json.dumps(step)}")

    def token_for(self, spec: Any) -> str:
        """A token named by a step; the real replay mints JWTs instead."""
        return str(spec)

    async def server_step(self, step: dict[str, Any]) -> bool:
        raise NotImplementedError

    def check_delays(self, spec: dict[str, Any]) -> None:
        """The k-th reconnect delay after mark `since` is within
        [0, min(max_ms, base_ms * 2^k)]; at least `min_count` of them."""
        start = self.driver.marks.get(spec.get("since", ""), 0)
        delays = [
            output["ms"]
            for output in self.driver.outputs[start:]
            if output.get("out") == "reconnect_delay"
        ]
        if len(delays) < spec.get("min_count", 1):
            raise ScenarioFailed(
                f"{len(delays)} reconnect delays reported, wanted {spec.get('min_count', 1)}"
            )
        for attempt, delay in enumerate(delays[: spec.get("check_count", len(delays))]):
            bound = min(spec["max_ms"], spec["base_ms"] * 2**attempt)
            if not 0 <= delay <= bound:
                raise ScenarioFailed(
                    f"reconnect delay {attempt} was {delay} ms, outside [0, {bound}]: {delays}"
                )
        self.log.append(f"reconnect delays {delays}")
