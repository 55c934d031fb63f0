"""The scripted fake gateway: a WebSocket server (Python `websockets`) that
plays a scenario's `fake` steps against a client driven through its driver.

It behaves like the gateway where a scenario does not script otherwise:
answers `ping` with `pong`, replays a job's published events on `subscribe`
(with `history_truncated` when the scenario's job keeps its history only
from `history_from`), answers `auth` with `auth_ok` on `jobgate.v1` sessions,
and sends `hello` first on those. Everything else — `accepted`, closes,
drops, duplicates — is the scenario's to script. Every frame it sends is
validated against proto-schemas/schemas/ws_server_message.json first; a
scenario that would send an invalid frame is refused (before it runs, when
its frames can be checked up front, else at the step).

Run one scenario by hand: `python fake_server.py --client "<driver cmd>" scenarios/x.json`
(run.py runs them all).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from driver_process import Driver
from frames import Bindings, FrameRefused, Schemas
from player import (
    Player,
    ScenarioFailed,
    compare,
    expected_deliveries,
    load_scenario,
    steps_job_events,
)

PROTOCOL = "jobgate.v1"
TERMINAL_EVENTS = ("completed", "failed", "cancelled")
DEFAULT_HELLO: dict[str, Any] = {
    "type": "hello",
    "protocol": PROTOCOL,
    "ping_interval_ms": 15000,
    "ping_timeout_ms": 30000,
    "token_expires_in_ms": None,
    "limits": {
        "max_subscriptions": 1000,
        "messages_per_s": 50,
        "max_message_bytes": 1048576,
        "outbound_queue": 1024,
    },
}
#: A connection closed within this long after its handshake, with no frame, is passed over.
CLOSED_AT_ONCE_S = 0.15
# Stand-ins used to check templated frames before a scenario runs.
SAMPLE_CAPTURE = "conformance-sample-0"
SAMPLE_ID = "01936f3e-0000-7000-8000-000000000000"


class FakeJob:
    def __init__(self, name: str, spec: dict[str, Any]) -> None:
        self.name = name
        self.spec = spec
        self.job_id: str = spec["job_id"]
        self.events = steps_job_events(spec)
        self.history_from: int = int(spec.get("history_from", 1))
        self.published = 0

    def snapshot(self) -> dict[str, Any]:
        """The job as GET /v1/jobs/{id} would show it after the published events."""
        last = self.events[self.published - 1] if self.published else self.events[0]
        status = {
            "queued": "queued",
            "started": "running",
            "progress": "running",
            "retrying": "queued",
        }.get(last["event"], last["event"])
        progress = None
        for event in self.events[: self.published]:
            if event["event"] == "progress":
                progress = event["data"]
        result = last["data"].get("result") if last["event"] == "completed" else None
        ts = self.events[0]["ts"]
        return {
            "job_id": self.job_id,
            "kind": self.events[0]["data"].get("kind", "conformance_steps"),
            "queue": self.events[0]["data"].get("queue", "conformance"),
            "status": status,
            "priority": 5,
            "attempt": 1 if self.published >= 2 else 0,
            "max_attempts": 3,
            "timeout_s": 0,
            "seq": last["seq"],
            "epoch": 1,
            "progress": progress,
            "result": result,
            "error": None,
            "created_at": ts,
            "started_at": self.events[1]["ts"] if self.published >= 2 else None,
            "finished_at": last["ts"] if status in TERMINAL_EVENTS else None,
            "updated_at": last["ts"],
            "trace_id": self.spec["trace_id"],
        }


class FakeConnection:
    def __init__(self, server: FakeServer, ws: ServerConnection) -> None:
        self.server = server
        self.ws = ws
        self.protocol = ws.subprotocol
        self.request = ws.request
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.subscribed: set[str] = set()
        self.sent_upto: dict[str, int] = {}
        self.silenced = False
        self.closed = asyncio.Event()

    def offered_token(self) -> str | None:
        assert self.request is not None
        header = self.request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return header[len("Bearer ") :]
        query = parse_qs(urlparse(self.request.path).query)
        return query.get("access_token", [None])[0]

    async def send(self, frame: dict[str, Any]) -> None:
        self.server.schemas.check_server_frame(frame)
        kind = frame.get("type")
        if kind == "accepted":
            self.subscribed.add(frame["job_id"])
            self.sent_upto.setdefault(frame["job_id"], 0)
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(json.dumps(frame))
        self.server.sent.append(frame)

    async def push_events(self, job: FakeJob, first: int) -> None:
        """Sends the published events of `job` from seq `first` on."""
        for event in job.events[first - 1 : job.published]:
            await self.send(event)
            self.sent_upto[job.job_id] = event["seq"]
            if event["event"] in TERMINAL_EVENTS:
                self.subscribed.discard(job.job_id)

    async def serve(self) -> None:
        """Reads the client's frames: auto-answers what the gateway would,
        queues every frame for the scenario's `expect` steps."""
        try:
            async for message in self.ws:
                try:
                    frame = json.loads(message)
                except ValueError:
                    self.server.client_problems.append(f"not JSON: {message!r:.120}")
                    continue
                for problem in self.server.schemas.client_frame_problems(frame):
                    self.server.client_problems.append(f"{json.dumps(frame)[:160]}: {problem}")
                self.server.received.append(frame)
                await self.auto_answer(frame)
                await self.frames.put(frame)
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()

    async def auto_answer(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if self.silenced:
            return
        if kind == "ping":
            await self.send({"type": "pong"})
        elif kind == "auth" and self.protocol == PROTOCOL and self.server.auto_auth_ok:
            reply: dict[str, Any] = {
                "type": "auth_ok",
                "token_expires_in_ms": self.server.auth_ok_expires_in_ms,
            }
            if "request_id" in frame:
                reply["request_id"] = frame["request_id"]
            await self.send(reply)
        elif kind == "subscribe":
            await self.subscribe(frame)
        elif kind == "unsubscribe":
            self.subscribed.discard(frame.get("job_id", ""))

    async def subscribe(self, frame: dict[str, Any]) -> None:
        job = self.server.job_by_id(frame.get("job_id", ""))
        if job is None:
            await self.send(
                {
                    "type": "error",
                    "job_id": frame["job_id"],
                    "code": "not_found",
                    "message": "no such job",
                }
            )
            return
        after = int(frame.get("after", 0))
        self.subscribed.add(job.job_id)
        first = after + 1
        if self.protocol == PROTOCOL:
            # The answer of a jobgate.v1 session, before any event it replays:
            # the job's status and its last event's position.
            snapshot = job.snapshot()
            last = job.events[job.published - 1] if job.published else None
            await self.send(
                {
                    "type": "subscribed",
                    "job_id": job.job_id,
                    "status": snapshot["status"],
                    "epoch": last["epoch"] if last else 1,
                    "seq": last["seq"] if last else 0,
                }
            )
            if snapshot["status"] in TERMINAL_EVENTS and (last["seq"] if last else 0) <= after:
                self.subscribed.discard(job.job_id)
                return
        if first < job.history_from and job.published >= job.history_from:
            await self.send(
                {
                    "type": "history_truncated",
                    "job_id": job.job_id,
                    "after": after,
                    "first_seq": job.history_from,
                    "snapshot": job.snapshot(),
                }
            )
            first = job.history_from
        await self.push_events(job, first)


class FakeServer:
    def __init__(self, scenario: dict[str, Any], schemas: Schemas) -> None:
        self.scenario = scenario
        self.schemas = schemas
        self.jobs = {name: FakeJob(name, spec) for name, spec in scenario.get("jobs", {}).items()}
        settings = scenario.get("server", {})
        self.speaks_v1 = settings.get("protocol", PROTOCOL) == PROTOCOL
        self.hello: dict[str, Any] | None = None
        self.auto_auth_ok = True
        self.auth_ok_expires_in_ms: int | None = None
        self.configure(settings)
        self.refuse_remaining = int(settings.get("refuse", 0))
        self.refuse_status = 503
        self.refused = 0
        self.refused_changed = asyncio.Condition()
        self.connections: asyncio.Queue[FakeConnection] = asyncio.Queue()
        self.current: FakeConnection | None = None
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []
        self.client_problems: list[str] = []
        self._server: Server | None = None
        self.port = 0

    def configure(self, settings: dict[str, Any]) -> None:
        if "protocol" in settings:
            self.speaks_v1 = settings["protocol"] == PROTOCOL
        if "hello" in settings or self.hello is None:
            hello = settings.get("hello", {})
            self.hello = None if hello is False else {**DEFAULT_HELLO, **hello}
        self.auto_auth_ok = settings.get("auth_ok", self.auto_auth_ok)
        self.auth_ok_expires_in_ms = settings.get(
            "auth_ok_expires_in_ms", self.auth_ok_expires_in_ms
        )

    def job_by_id(self, job_id: str) -> FakeJob | None:
        return next((job for job in self.jobs.values() if job.job_id == job_id), None)

    async def start(self) -> int:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            ping_interval=None,
            max_size=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def _select_subprotocol(self, _connection: ServerConnection, offered: Any) -> str | None:
        return PROTOCOL if self.speaks_v1 and PROTOCOL in offered else None

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        if urlparse(request.path).path != "/v1/ws":
            return connection.respond(404, "not found\n")
        if self.refuse_remaining > 0:
            self.refuse_remaining -= 1
            async with self.refused_changed:
                self.refused += 1
                self.refused_changed.notify_all()
            body = json.dumps(
                {"code": "too_many_connections", "message": "refused by the scenario"}
            )
            return Response(
                self.refuse_status,
                "Refused",
                Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))]),
                body.encode(),
            )
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        connection = FakeConnection(self, ws)
        if connection.protocol == PROTOCOL and self.hello is not None:
            await connection.send({**self.hello, "session_id": str(uuid.uuid4())})
        self.current = connection
        await self.connections.put(connection)
        await connection.serve()

    def preflight(self) -> None:
        """Refuses a scenario whose scripted frames the schemas refuse."""
        bindings = _SampleBindings({name: job.spec for name, job in self.jobs.items()})
        frames = [
            bindings.fill(step["send"]) for step in self.scenario.get("fake", []) if "send" in step
        ]
        frames += [event for job in self.jobs.values() for event in job.events]
        if self.hello is not None:
            frames.append({**self.hello, "session_id": SAMPLE_ID})
        for step in self.scenario.get("fake", []):
            if "server" in step and step["server"].get("hello"):
                frames.append({**DEFAULT_HELLO, **step["server"]["hello"], "session_id": SAMPLE_ID})
        for frame in frames:
            self.schemas.check_server_frame(frame)


class _SampleBindings(Bindings):
    """Fills `$name` with a stand-in, so templated frames can be checked up front."""

    def fill(self, template: Any) -> Any:
        if isinstance(template, str) and template.startswith("$"):
            return SAMPLE_CAPTURE
        return super().fill(template)


class FakePlayer(Player):
    def __init__(self, scenario: dict[str, Any], driver: Driver, server: FakeServer) -> None:
        super().__init__(scenario, driver, Bindings({n: j.spec for n, j in server.jobs.items()}))
        self.server = server
        self.connection: FakeConnection | None = None

    def current(self) -> FakeConnection:
        if self.connection is None:
            raise ScenarioFailed("no connection yet: a `connect` step must come first")
        return self.connection

    async def server_step(self, step: dict[str, Any]) -> bool:  # noqa: PLR0912 - one branch per step kind
        if "connect" in step:
            await self.connect(step["connect"] or {}, self.timeout(step))
        elif "expect" in step:
            await self.expect(step["expect"], self.timeout(step))
        elif "send" in step:
            await self.current().send(self.bindings.fill(step["send"]))
        elif "publish" in step:
            spec = step["publish"]
            job = self.server.jobs[spec["job"]]
            through = spec.get("through", "all")
            job.published = len(job.events) if through == "all" else int(through)
            connection = self.connection
            pushing = spec.get("push", True)
            if (
                pushing
                and connection
                and not connection.silenced
                and job.job_id in connection.subscribed
            ):
                await connection.push_events(job, connection.sent_upto.get(job.job_id, 0) + 1)
        elif "send_event" in step:
            spec = step["send_event"]
            await self.current().send(self.server.jobs[spec["job"]].events[spec["seq"] - 1])
        elif "close" in step:
            spec = step["close"]
            await self.current().ws.close(spec["code"], spec.get("reason", ""))
        elif "drop" in step:
            transport = self.current().ws.transport
            transport.abort()
        elif "silence" in step:
            self.current().silenced = bool(step["silence"])
        elif "server" in step:
            self.server.configure(step["server"])
        elif "refuse" in step:
            self.server.refuse_remaining = step["refuse"]["count"]
            self.server.refuse_status = step["refuse"].get("status", 503)
        elif "wait_refused" in step:
            await self.wait_refused(step["wait_refused"], self.timeout(step))
        elif "wait_closed" in step:
            await asyncio.wait_for(self.current().closed.wait(), self.timeout(step))
        else:
            return False
        return True

    async def connect(self, spec: dict[str, Any], timeout_s: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                connection = await asyncio.wait_for(
                    self.server.connections.get(), max(remaining, 0.001)
                )
            except TimeoutError:
                raise ScenarioFailed(f"the client did not connect within {timeout_s:g} s") from None
            if self.server.speaks_v1:
                break
            # A client may give up on a handshake that did not echo the
            # subprotocol it offered and connect again without it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(connection.closed.wait(), CLOSED_AT_ONCE_S)
            if not connection.closed.is_set():
                break
            self.log.append("a connection closed at once after the handshake; waiting for the next")
        self.connection = connection
        if "token" in spec:
            wanted = self.token_for(spec["token"])
            if connection.offered_token() != wanted:
                raise ScenarioFailed(
                    f"connected with token {connection.offered_token()!r}, wanted {wanted!r}"
                )
        if spec.get("offers_protocol", True) and self.server.speaks_v1:
            assert connection.request is not None
            offered = connection.request.headers.get("Sec-WebSocket-Protocol", "")
            if PROTOCOL not in [item.strip() for item in offered.split(",")]:
                raise ScenarioFailed(
                    f"the client did not offer the subprotocol {PROTOCOL} ({offered!r})"
                )

    async def expect(self, pattern: dict[str, Any], timeout_s: float) -> None:
        """The next client frame matching `pattern` (pings and frames that
        do not match before it are passed over)."""
        connection = self.current()
        deadline = asyncio.get_running_loop().time() + timeout_s
        passed: list[str] = []
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                frame = await asyncio.wait_for(connection.frames.get(), max(remaining, 0.001))
            except TimeoutError:
                raise ScenarioFailed(
                    f"no client frame matched {json.dumps(pattern)} within {timeout_s:g} s"
                    + (f"; passed over {passed}" if passed else "")
                ) from None
            if self.bindings.matches(pattern, frame):
                return
            if frame.get("type") != "ping":
                passed.append(json.dumps(frame)[:120])

    async def wait_refused(self, count: int, timeout_s: float) -> None:
        async with self.server.refused_changed:
            try:
                await asyncio.wait_for(
                    self.server.refused_changed.wait_for(lambda: self.server.refused >= count),
                    timeout_s,
                )
            except TimeoutError:
                raise ScenarioFailed(
                    f"{self.server.refused} connections refused, wanted {count}"
                ) from None


async def play_fake(scenario: dict[str, Any], client: str, schemas: Schemas) -> dict[str, Any]:
    """Runs one scenario against the fake; returns what the report needs."""
    server = FakeServer(scenario, schemas)
    server.preflight()  # FrameRefused: the scenario is refused before it runs
    await server.start()
    driver = await Driver.spawn(client)
    player = FakePlayer(scenario, driver, server)
    error: str | None = None
    try:
        token = scenario.get("token", "t1")
        await driver.send(
            {
                "cmd": "start",
                "url": f"http://127.0.0.1:{server.port}",
                "token": token,
                "options": scenario.get("options", {}),
            }
        )
        await driver.wait_output({"out": "ready"}, player.bindings, timeout_s=10)
        await player.play(scenario.get("fake", []))
        await finish(scenario, driver)
    except (ScenarioFailed, FrameRefused) as failure:
        error = str(failure)
    finally:
        await driver.stop()
        await server.stop()
    if error is None and server.client_problems:
        error = "client frames refused by ws_client_message.json: " + "; ".join(
            server.client_problems[:3]
        )
    return {
        "error": error,
        "deliveries": driver.deliveries(),
        "outputs": driver.outputs,
        "log": player.log + driver.noise[-5:],
        "stderr": driver.stderr_lines[-20:],
    }


async def finish(scenario: dict[str, Any], driver: Driver) -> None:
    """Waits for the expected deliveries (and a little more for late
    duplicates), then compares them."""
    expected = expected_deliveries(scenario)
    await driver.wait_quiet(count=len(expected), timeout_s=5, grace_s=0.2)
    problem = compare(expected, driver.deliveries())
    if problem:
        raise ScenarioFailed(problem)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", required=True, help="the driver command")
    parser.add_argument("scenario", type=Path)
    args = parser.parse_args()
    result = asyncio.run(play_fake(load_scenario(args.scenario), args.client, Schemas()))
    print(json.dumps({key: result[key] for key in ("error", "deliveries", "log")}, indent=2))
    return 1 if result["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
