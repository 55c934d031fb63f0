"""The suite's own tests: the fake refuses a scenario whose server frames
break ws_server_message.json, and the pattern language captures and
compares as the README says. Run: .venv/bin/pytest -q proto-schemas/conformance"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import ClassVar

import pytest

from fake_server import FakeConnection, FakeServer, play_fake
from frames import Bindings, FrameRefused, Schemas
from player import SCENARIOS_DIR, compare, expected_deliveries, load_scenario

SCHEMAS = Schemas()
# A driver that must never be started: the scenario is refused before.
NO_DRIVER = "false"


def scenario(name: str = "resume_after_drop") -> dict:
    return copy.deepcopy(load_scenario(SCENARIOS_DIR / f"{name}.json"))


def test_every_scenario_passes_preflight() -> None:
    async def check() -> None:
        for path in sorted(SCENARIOS_DIR.glob("*.json")):
            FakeServer(load_scenario(path), SCHEMAS).preflight()

    asyncio.run(check())


def test_a_scenario_with_an_invalid_server_frame_is_refused_before_it_runs() -> None:
    broken = scenario()
    for step in broken["fake"]:
        if "send" in step and step["send"]["type"] == "accepted":
            del step["send"]["trace_id"]  # accepted requires trace_id
    with pytest.raises(FrameRefused, match="accepted"):
        asyncio.run(play_fake(broken, NO_DRIVER, SCHEMAS))


def test_an_invalid_job_event_is_refused() -> None:
    broken = scenario()
    broken["jobs"]["J1"]["events"] = [
        {
            "type": "event",
            "job_id": broken["jobs"]["J1"]["job_id"],
            "seq": 0,
            "epoch": 1,
            "event": "queued",
            "data": {},
            "ts": 1,
            "trace_id": broken["jobs"]["J1"]["trace_id"],
        }
    ]
    with pytest.raises(FrameRefused):
        asyncio.run(play_fake(broken, NO_DRIVER, SCHEMAS))


def test_a_frame_only_known_at_run_time_is_refused_at_the_step() -> None:
    class Socket:
        subprotocol = None
        request = None
        sent: ClassVar[list[str]] = []

        async def send(self, text: str) -> None:
            self.sent.append(text)

    async def check() -> None:
        server = FakeServer(scenario(), SCHEMAS)
        connection = FakeConnection(server, Socket())  # type: ignore[arg-type]
        with pytest.raises(FrameRefused, match="ws_server_message"):
            await connection.send({"type": "pong", "extra": 1})
        assert Socket.sent == []
        await connection.send({"type": "pong"})
        assert Socket.sent == ['{"type": "pong"}']

    asyncio.run(check())


def test_patterns_capture_then_compare() -> None:
    bindings = Bindings({"J1": {"job_id": "j-1", "trace_id": "t"}})
    assert bindings.matches(
        {"type": "submit", "idempotency_key": "$key"},
        {"type": "submit", "idempotency_key": "k1", "x": 1},
    )
    assert bindings.matches({"idempotency_key": "$key"}, {"idempotency_key": "k1"})
    assert not bindings.matches({"idempotency_key": "$key"}, {"idempotency_key": "k2"})
    assert not bindings.matches({"after": "$_"}, {})
    assert bindings.matches({"job_id": "@J1", "!absent": ["after_epoch"]}, {"job_id": "j-1"})
    assert not bindings.matches({"!absent": ["after_epoch"]}, {"after_epoch": 2})
    assert not bindings.matches({"seq": 1}, {"seq": True})
    assert bindings.fill({"request_id": "$key", "job_id": "@J1.trace_id"}) == {
        "request_id": "k1",
        "job_id": "t",
    }


def test_deliveries_compare_per_ref_and_ignore_ids_and_workers() -> None:
    expected = expected_deliveries(scenario())
    renamed = json.loads(
        json.dumps(expected).replace("01936f3e-0001-7000-8000-000000000001", "other-id")
    )
    for item in renamed:
        if item.get("event") == "started":
            item["data"]["worker"] = "host-1"
    assert compare(expected, renamed) is None
    assert "delivery 3" in (compare(expected, expected[:2] + expected[3:]) or "")
    duplicated = expected[:3] + expected[2:]
    assert compare(expected, duplicated) is not None


def test_scenario_files_are_listed_in_the_readme() -> None:
    readme = (Path(__file__).parent / "README.md").read_text()
    for path in SCENARIOS_DIR.glob("*.json"):
        assert f"`{path.stem}`" in readme, f"{path.stem} is missing from README.md"
