"""The real replay: each scenario's `real` steps against the real gateway
(debug build) with a real Redis and a real Python worker, through a
WebSocket relay that injects the scenario's faults. The app's deliveries
must equal the fake run's (run.py compares them).

One redis-server (a free port), one gateway (JOBGATE_BIN, default
target/debug/jobgate; JWT auth, JOBGATE_JWT_LEEWAY_S=0; restarted with a scenario's
`gateway_env` when it has one) and one `steps_worker.py` serve every
scenario. Every frame the gateway sends through the relay is validated
against ws_server_message.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request, Response

from driver_process import Driver
from fake_server import finish
from frames import Bindings, Schemas
from player import Player, ScenarioFailed

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROTOCOL = "jobgate.v1"
JWT_SECRET = "conformance-secret-conformance-secret-0123456789"
OWNER = "conformance"
#: A relay connection to the gateway opened with a small window
#: (`relay_small_window`): its receive buffer and the segment size it
#: announces, set before it connects. The gateway's kernel sizes its send
#: buffer from the segment size (Linux: about 370 kB instead of 4 MB), so a
#: relay that stops reading makes the gateway's writes block after a few
#: hundred kilobytes and its outbox overflow (4008). Other connections keep
#: the kernel's defaults, so a resume replaying a megabyte of history is not
#: cut off in turn.
SMALL_RECEIVE_BUFFER = 4096
SMALL_SEGMENT = 600
#: A stall `until: job_done` lasts this long after the job ended.
STALL_AFTER_DONE_S = 0.3
TERMINAL_STATUSES = ("completed", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def gateway_binary() -> str:
    return os.environ.get("JOBGATE_BIN", str(ROOT / "target/debug/jobgate"))


def mint_token(ttl_s: int) -> str:
    result = subprocess.run(
        [gateway_binary(), "token", "--sub", OWNER, "--ttl-s", str(ttl_s), "--secret", JWT_SECRET],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


class Relay:
    """client ⇄ relay ⇄ gateway, with faults."""

    def __init__(self, stack: RealStack) -> None:
        self.stack = stack
        self.port = 0
        self._server: Server | None = None
        self._upstreams: dict[int, ClientConnection] = {}
        self.changed = asyncio.Condition()
        self.driver: Driver | None = None
        self.reset([], 0)

    def reset(self, faults: list[str], refuse_first: int, small_window: int = 0) -> None:
        self.no_subprotocol = "no_subprotocol" in faults
        self.swallow_auth = "swallow_auth" in faults
        self.small_window_remaining = small_window
        self.refuse_remaining = refuse_first
        self.refused = 0
        self.client_frames: list[dict[str, Any]] = []
        self.server_frames: list[dict[str, Any]] = []
        self.consumed: set[tuple[str, int]] = set()
        self.server_closes: list[int] = []
        #: Each connection the client opened: how many gateway closes came
        #: before it, and the token it carried (header or access_token).
        self.attempts: list[tuple[int, str | None]] = []
        self.client_closes = 0
        self.problems: list[str] = []
        self.silenced = False
        self.stall: asyncio.Event | None = None
        self._stall_task: asyncio.Task[None] | None = None
        #: Faults applied to the next server frame that matches, each once, on
        #: the connection that was current when the rule was set (the first
        #: one when none was yet): a rule a connection never used does not
        #: leak into the next.
        self.rules: list[tuple[int, dict[str, Any]]] = []
        self.connections = 0
        self.current: tuple[ServerConnection, ClientConnection] | None = None

    async def start(self) -> None:
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

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        self.attempts.append((len(self.server_closes), _token_of(request)))
        await self._notify()
        if self.refuse_remaining > 0:
            self.refuse_remaining -= 1
            self.refused += 1
            await self._notify()
            return _response(503, "refused by the relay")
        offered = [
            item.strip()
            for item in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if item.strip()
        ]
        headers = {}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.small_window_remaining > 0:
            self.small_window_remaining -= 1
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RECEIVE_BUFFER)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, SMALL_SEGMENT)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(
                sock, ("127.0.0.1", self.stack.gateway_port)
            )
            upstream = await connect(
                f"ws://127.0.0.1:{self.stack.gateway_port}{request.path}",
                sock=sock,
                subprotocols=None if self.no_subprotocol or not offered else offered,  # type: ignore[arg-type]
                additional_headers=headers,
                ping_interval=None,
                max_size=None,
                max_queue=1,
                open_timeout=5,
            )
        except InvalidStatus as refused:
            sock.close()
            return _response(refused.response.status_code, "refused by the gateway")
        except (OSError, TimeoutError) as error:
            sock.close()
            return _response(502, f"gateway unreachable: {error}")
        self._upstreams[id(connection)] = upstream
        return None

    def _select_subprotocol(self, connection: ServerConnection, _offered: Any) -> str | None:
        upstream = self._upstreams.get(id(connection))
        return None if upstream is None else upstream.subprotocol

    async def _handle(self, client: ServerConnection) -> None:
        upstream = self._upstreams.pop(id(client))
        self.current = (client, upstream)
        self.connections += 1
        connection = self.connections
        # silence and stall are faults of the connection they were set on.
        self.silenced = False
        self.stall = None
        pumps = [
            asyncio.create_task(self._client_to_server(client, upstream)),
            asyncio.create_task(self._server_to_client(client, upstream, connection)),
        ]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        await upstream.close()
        await client.close()

    async def _client_to_server(self, client: ServerConnection, upstream: ClientConnection) -> None:
        try:
            async for message in client:
                frame = json.loads(message)
                self.client_frames.append(frame)
                await self._notify()
                if self.swallow_auth and frame.get("type") == "auth":
                    continue
                await upstream.send(message)
        except ConnectionClosed:
            pass
        if client.close_code is not None:
            self.client_closes += 1
            await self._notify()

    async def _server_to_client(  # noqa: PLR0912 - one loop, one branch per relay fault
        self, client: ServerConnection, upstream: ClientConnection, connection: int
    ) -> None:
        held: str | None = None
        try:
            while True:
                message = await upstream.recv()
                if self.stall is not None:
                    await self._stalled(upstream, self.stall)
                    break
                frame = self._check(message)
                self.server_frames.append(frame)
                await self._notify()
                if self.silenced:
                    continue
                rule = self._rule_for(frame, connection)
                action = rule["relay"] if rule else None
                if action == "stall":
                    until_done = frame.get("job_id") if rule.get("until") == "job_done" else None
                    self.start_stall(int(rule.get("ms", 2500)), until_done)
                    await self._stalled(upstream, self.stall)
                    break
                if action == "drop":
                    # `refuse`: the connections that follow are refused too.
                    self.refuse_remaining = int(rule.get("refuse", self.refuse_remaining))
                    self.drop()
                    return
                if action == "silence":
                    self.silenced = True
                    continue
                if action == "swallow":
                    if rule.get("then") == "drop":
                        client.transport.abort()
                        return
                    continue
                if action == "swap":
                    held = message
                    continue
                await client.send(message)
                if action == "duplicate":
                    await client.send(message)
                if held is not None:
                    await client.send(held)
                    held = None
        except ConnectionClosed:
            pass
        code = upstream.close_code
        if code is not None and upstream.protocol.close_rcvd is not None:
            self.server_closes.append(code)
            if self.driver is not None:
                # What the client does about this close comes after this mark.
                self.driver.mark(f"close:{code}")
            await self._notify()
            with contextlib.suppress(ConnectionClosed):
                await client.close(code, upstream.close_reason or "")

    def _check(self, message: str | bytes) -> dict[str, Any]:
        """The gateway's frame, checked against ws_server_message.json."""
        frame: dict[str, Any] = json.loads(message)
        for problem in self.stack.schemas.errors("ws_server_message", frame):
            self.problems.append(f"{json.dumps(frame)[:160]}: {problem}")
        return frame

    def start_stall(self, ms: int, until_done: str | None = None) -> None:
        """Stops reading the gateway's socket of the current connection (from
        now, or from the frame a `match` names, which is dropped): the kernel
        buffers fill, the gateway's writes block and its outbox overflows
        (4008). The stall lasts `ms`, or with `until_done` until that job
        ended (every event it will have was sent by then; at most `ms`). Then
        the relay reads on, drops everything the gateway had queued (a client
        that stopped reading loses it) and forwards only the close."""
        if self.current is None:
            raise ScenarioFailed("no connection to stall")
        _, upstream = self.current
        upstream.transport.pause_reading()
        resumed = asyncio.Event()
        self.stall = resumed

        async def resume() -> None:
            deadline = time.monotonic() + ms / 1000
            if until_done is None:
                await asyncio.sleep(ms / 1000)
            else:
                while time.monotonic() < deadline:
                    status = await asyncio.to_thread(self.stack.job_status, until_done)
                    if status in TERMINAL_STATUSES:
                        # The gateway's feed gets the last events a moment later.
                        await asyncio.sleep(STALL_AFTER_DONE_S)
                        break
                    await asyncio.sleep(0.05)
            resumed.set()
            upstream.transport.resume_reading()

        self._stall_task = asyncio.create_task(resume())

    async def _stalled(self, upstream: ClientConnection, resumed: asyncio.Event) -> None:
        # A frame already taken from the socket is dropped too. Taking it may
        # have let the connection read again: stop that until the stall ends.
        if not resumed.is_set():
            upstream.transport.pause_reading()
            await resumed.wait()
            upstream.transport.resume_reading()
        async for message in upstream:
            self._check(message)

    def add_rule(self, step: dict[str, Any]) -> None:
        self.rules.append((max(self.connections, 1), step))

    def _rule_for(self, frame: dict[str, Any], connection: int) -> dict[str, Any] | None:
        for entry in self.rules:
            applies_to, rule = entry
            if applies_to != connection:
                continue
            if Bindings().matches(rule["match"], frame):
                self.rules.remove(entry)
                return rule
        return None

    def drop(self) -> None:
        if self.current is not None:
            client, upstream = self.current
            client.transport.abort()
            upstream.transport.abort()

    async def wait_for(self, predicate: Any, timeout_s: float, what: str) -> None:
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(predicate), timeout_s)
            except TimeoutError:
                raise ScenarioFailed(f"{what} did not happen within {timeout_s:g} s") from None


def _token_of(request: Request) -> str | None:
    """The token a connection carries: `Authorization: Bearer` or `access_token`."""
    authorization = request.headers.get("Authorization", "")
    if authorization.startswith("Bearer "):
        return authorization.removeprefix("Bearer ")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
    return query.get("access_token", [None])[0]


def _response(status: int, text: str) -> Response:
    body = json.dumps({"code": "unavailable", "message": text}).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return Response(status, "Refused", headers, body)


class RealStack:
    def __init__(self, schemas: Schemas) -> None:
        self.schemas = schemas
        self.redis_port = free_port()
        self.gateway_port = free_port()
        self.redis: subprocess.Popen[bytes] | None = None
        self.gateway: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.gateway_env: dict[str, str] = {}
        self.relay = Relay(self)
        self.logs = (
            Path(os.environ.get("CONFORMANCE_LOG_DIR", "/tmp"))
            / f"jobgate-conformance-{os.getpid()}"
        )

    async def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.redis = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await self.start_gateway({})
        worker_bin = os.environ.get("JOBGATE_WORKER_BIN", str(ROOT / ".venv/bin/jobgate-worker"))
        self.worker = subprocess.Popen(
            [
                worker_bin,
                "steps_worker:worker",
                "--consumer",
                "conformance-1",
                "--concurrency",
                "4",
            ],
            cwd=HERE,
            env={**os.environ, "JOBGATE_REDIS_URL": self.redis_url(), "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL,
            stderr=(self.logs / "worker.log").open("ab"),
        )
        await self.wait_kind_registered()
        await self.relay.start()

    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}"

    async def start_gateway(self, extra_env: dict[str, str]) -> None:
        env = {
            **os.environ,
            "JOBGATE_LISTEN": f"127.0.0.1:{self.gateway_port}",
            "JOBGATE_REDIS_URL": self.redis_url(),
            "JOBGATE_AUTH": "jwt",
            "JOBGATE_JWT_SECRET": JWT_SECRET,
            "JOBGATE_JWT_LEEWAY_S": "0",
            "JOBGATE_SHUTDOWN_GRACE_S": "1",
            "JOBGATE_LOG": "warn",
            **extra_env,
        }
        self.gateway_env = extra_env
        self.gateway = subprocess.Popen(
            [gateway_binary()],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(self.logs / "gateway.log").open("ab"),
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.gateway.poll() is not None:
                raise RuntimeError(
                    f"the gateway exited ({self.gateway.returncode}); see {self.logs}/gateway.log"
                )
            with contextlib.suppress(OSError):
                url = f"http://127.0.0.1:{self.gateway_port}/healthz"
                with urllib.request.urlopen(url, timeout=1):
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError("the gateway did not become healthy within 30 s")

    async def stop_gateway(self) -> None:
        if self.gateway is not None and self.gateway.poll() is None:
            self.gateway.send_signal(signal.SIGTERM)
            for _ in range(100):
                if self.gateway.poll() is not None:
                    break
                await asyncio.sleep(0.05)
            else:
                self.gateway.kill()
                self.gateway.wait()

    async def wait_kind_registered(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = subprocess.run(
                [
                    "redis-cli",
                    "-p",
                    str(self.redis_port),
                    "HEXISTS",
                    "jobgate:kinds:v2",
                    "conformance_steps",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if found.stdout.strip() == "1":
                return
            if self.worker is not None and self.worker.poll() is not None:
                raise RuntimeError(f"the worker exited; see {self.logs}/worker.log")
            await asyncio.sleep(0.2)
        raise RuntimeError("the worker did not register conformance_steps within 60 s")

    def job_status(self, job_id: str) -> str:
        found = subprocess.run(
            [
                "redis-cli",
                "-p",
                str(self.redis_port),
                "HGET",
                f"jobgate:job:{{{job_id}}}",
                "status",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        return found.stdout.strip()

    async def stop(self) -> None:
        await self.relay.stop()
        await self.stop_gateway()
        for process in (self.worker, self.redis):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()

    async def play(self, scenario: dict[str, Any], client: str) -> dict[str, Any]:
        real = scenario["real"]
        wanted_env = real.get("gateway_env", {})
        if wanted_env != self.gateway_env:
            await self.stop_gateway()
            await self.start_gateway(wanted_env)
        self.relay.reset(
            real.get("relay_faults", []),
            real.get("relay_refuse_first", 0),
            real.get("relay_small_window", 0),
        )
        driver = await Driver.spawn(client)
        self.relay.driver = driver
        player = RealPlayer(scenario, driver, self)
        error: str | None = None
        try:
            token = player.token_for(real.get("token", {"ttl_s": 3600}))
            options = {**scenario.get("options", {}), **real.get("options", {})}
            await driver.send(
                {
                    "cmd": "start",
                    "url": f"http://127.0.0.1:{self.relay.port}",
                    "token": token,
                    "options": options,
                }
            )
            await driver.wait_output({"out": "ready"}, player.bindings, timeout_s=10)
            await player.play(real["steps"])
            await finish(scenario, driver)
        except ScenarioFailed as failure:
            error = str(failure)
        finally:
            await driver.stop()
            self.relay.drop()
        if error is None and self.relay.problems:
            error = "gateway frames refused by ws_server_message.json: " + "; ".join(
                self.relay.problems[:3]
            )
        return {
            "error": error,
            "deliveries": driver.deliveries(),
            "log": player.log,
            "outputs": driver.outputs,
            "stderr": driver.stderr_lines[-20:],
        }


class RealPlayer(Player):
    def __init__(self, scenario: dict[str, Any], driver: Driver, stack: RealStack) -> None:
        super().__init__(scenario, driver, Bindings())
        self.latest_token: str | None = None
        self.stack = stack
        self.relay = stack.relay

    def token_for(self, spec: Any) -> str:
        self.latest_token = mint_token(int(spec["ttl_s"])) if isinstance(spec, dict) else str(spec)
        return self.latest_token

    async def server_step(self, step: dict[str, Any]) -> bool:  # noqa: PLR0912 - one branch per step kind
        relay, timeout_s = self.relay, self.timeout(step)
        if "relay" in step:
            action = step["relay"]
            if "match" in step and action in (
                "drop",
                "silence",
                "stall",
                "duplicate",
                "swap",
                "swallow",
            ):
                relay.add_rule(step)
            elif action == "drop":
                relay.drop()
            elif action == "stall":
                relay.start_stall(int(step.get("ms", 2500)))
            elif action == "silence":
                relay.silenced = True
            elif action == "swallow_auth":
                relay.swallow_auth = True
            elif action == "refuse":
                relay.refuse_remaining = int(step["count"])
            else:
                raise ScenarioFailed(f"unknown relay action {action}")
        elif "gateway" in step:
            await self.stack.stop_gateway()
            await self.stack.start_gateway(self.stack.gateway_env)
        elif "wait_frame" in step:
            frames = (
                relay.client_frames
                if step.get("from", "server") == "client"
                else relay.server_frames
            )
            key = step.get("from", "server")

            def seen() -> bool:
                for index, frame in enumerate(frames):
                    if (key, index) not in relay.consumed and self.bindings.matches(
                        step["wait_frame"], frame
                    ):
                        relay.consumed.add((key, index))
                        return True
                return False

            await relay.wait_for(
                seen, timeout_s, f"a {key} frame matching {json.dumps(step['wait_frame'])}"
            )
        elif "wait_close" in step:
            code = step["wait_close"]["code"]
            await relay.wait_for(
                lambda: code in relay.server_closes, timeout_s, f"a close {code} from the gateway"
            )
        elif "wait_reconnect" in step:
            # The first connection after the gateway's latest close carries the latest token.
            closes = len(relay.server_closes)
            await relay.wait_for(
                lambda: any(n >= closes for n, _ in relay.attempts),
                timeout_s,
                "a connection after the gateway's close",
            )
            token = next(token for n, token in relay.attempts if n >= closes)
            if step["wait_reconnect"].get("token") == "latest" and token != self.latest_token:
                raise ScenarioFailed(
                    "the connection after the close did not carry the latest token"
                )
        elif "wait_client_close" in step:
            await relay.wait_for(lambda: relay.client_closes > 0, timeout_s, "the client's close")
        elif "wait_refused" in step:
            count = step["wait_refused"]
            await relay.wait_for(
                lambda: relay.refused >= count, timeout_s, f"{count} refused connections"
            )
        elif "wait_job" in step:
            spec = self.bindings.fill(step["wait_job"])
            deadline = time.monotonic() + timeout_s
            while self.stack.job_status(spec["job_id"]) != spec["status"]:
                if time.monotonic() > deadline:
                    raise ScenarioFailed(f"job {spec['job_id']} never reached {spec['status']}")
                await asyncio.sleep(0.1)
        else:
            return False
        return True
