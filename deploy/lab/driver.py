"""The lab's load generator: steady submissions, WebSocket watchers, one result per scenario.

Run by ``deploy/lab/lab.sh`` in the lab's ``load`` namespace; it talks only to
the addresses it is given. It submits ``lab_sleep`` jobs at ``--rate`` per
second over HTTP (``POST /v1/jobs`` with an ``Idempotency-Key``, trying the
next of ``--submit`` URLs when one fails, so a retried submission never makes
a second job) and has every job watched by each watcher: a watcher is a few
WebSocket sessions, each with an ordered list of gateway URLs; a session
that is closed or stops answering pings connects again (first URL first)
and subscribes to its unfinished jobs with ``after`` = the last seq it got.

Commands, one per line on stdin (``lab.sh`` writes them):

- ``scenario <name>``: jobs submitted from now on belong to ``<name>``;
  submitting starts (again); sessions not on their first URL go back to it,
  and the sessions behind the load balancer connect again so that it
  spreads them afresh;
- ``fault <json>``: the fault is being injected now; the JSON says which
  path it hits (``ledger.Fault``): ``{"kind": "slots", "slots": [[lo, hi],
  …]}``, ``{"kind": "gateway", "gateway": "gw1", "submissions": bool,
  "expect_close": 1001}``, ``{"kind": "worker", "worker": "wk1"}``,
  ``{"kind": "started_after"}``;
- ``drain <timeout s>``: stop submitting, wait until every job of the
  scenario has reached its terminal event at every watcher (or the
  timeout), read each job's history, write ``<out>/scenarios/<name>.json``;
- ``quit``.

Every 0.25 s it writes ``<out>/inflight.json``: the running jobs with their
slot and worker, from which ``lab.sh`` picks the Redis node or slot to hit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ledger import Fault, Ledger, figures
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, websocket_connect

#: Answers a submission is tried again after (on the next URL).
RETRYABLE_STATUS = frozenset({429, 502, 503, 504, 599})
SUBMIT_DEADLINE_S = 30.0
CONNECT_TIMEOUT_S = 2.0
#: Each session sends `ping` this often; a session that has received nothing
#: (no pong, no event) for SILENCE_S is given up and connected again: what a
#: client does to notice a link that drops packets without closing.
PING_INTERVAL_S = 1.0
SILENCE_S = 3.0
HISTORY_READERS = 16


def log(message: str) -> None:
    print(f"[driver {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_endpoints(text: str) -> list[tuple[str, str]]:
    """``gw2=http://a:8080,gw1=http://b:8080`` → [(name, url), …]."""
    endpoints = []
    for part in text.split(","):
        name, _, url = part.partition("=")
        endpoints.append((name, url.rstrip("/")))
    return endpoints


class Session:
    """One WebSocket session of a watcher."""

    def __init__(
        self, driver: Driver, watcher: str, name: str, endpoints: list[tuple[str, str]]
    ) -> None:
        self.driver = driver
        self.watcher = watcher
        self.name = name
        self.endpoints = endpoints
        self.jobs: set[str] = set()
        self.subscribed: set[str] = set()
        self.connection = 0
        self.conn: WebSocketClientConnection | None = None
        self.served_by: str | None = None
        self.endpoint_index = 0
        self.requested_close = False
        self.went_silent = False
        self.last_message_at = 0.0
        self.closes: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []

    async def run(self) -> None:
        first = 0
        while not self.driver.stopping:
            conn = await self._connect(first)
            if conn is None:
                return
            self.conn = conn
            self.connection += 1
            self.subscribed = set()
            self.requested_close = False
            self.last_message_at = time.monotonic()
            for job_id in sorted(self.jobs):
                self._subscribe(job_id)
            watchdog = asyncio.create_task(self._watchdog(conn))
            while True:
                message = await conn.read_message()
                if message is None:
                    break
                self.last_message_at = time.monotonic()
                self._on_message(message)
            watchdog.cancel()
            self.conn = None
            self.closes.append(
                {
                    "at": time.monotonic(),
                    "session": self.name,
                    "served_by": self.served_by,
                    "code": conn.close_code,
                    "reason": conn.close_reason or ("silent" if self.went_silent else None),
                }
            )
            # A connection the lab closed starts again from the first URL; a
            # lost one from the next, as a client would not retry a dead
            # gateway first.
            first = 0 if self.requested_close else (self.endpoint_index + 1) % len(self.endpoints)

    async def _watchdog(self, conn: WebSocketClientConnection) -> None:
        self.went_silent = False
        while True:
            await asyncio.sleep(PING_INTERVAL_S)
            if time.monotonic() - self.last_message_at > SILENCE_S:
                self.went_silent = True
                # Not conn.close(): that waits up to 5 s for the server's
                # close frame, which a dead link never delivers.
                conn.protocol.stream.close()  # type: ignore[union-attr]
                return
            try:
                await asyncio.wait_for(conn.write_message('{"type":"ping"}'), PING_INTERVAL_S)
            except TimeoutError:
                continue
            except WebSocketClosedError:
                return

    async def _connect(self, first: int) -> WebSocketClientConnection | None:
        count = len(self.endpoints)
        while not self.driver.stopping:
            for index in [(first + offset) % count for offset in range(count)]:
                name, url = self.endpoints[index]
                request = HTTPRequest(
                    url.replace("http://", "ws://", 1) + "/v1/ws",
                    headers={"Authorization": f"Bearer {self.driver.token}"},
                    connect_timeout=CONNECT_TIMEOUT_S,
                    request_timeout=CONNECT_TIMEOUT_S,
                )
                try:
                    conn = await websocket_connect(request)
                except (TimeoutError, OSError, HTTPClientError):
                    continue
                headers = conn.headers
                self.served_by = (headers.get("X-Served-By") if headers else None) or name
                self.endpoint_index = index
                return conn
            await asyncio.sleep(0.2)
        return None

    def reconnect(self) -> None:
        """Close the connection (normally); ``run`` connects again, first URL first."""
        if self.conn is not None:
            self.requested_close = True
            self.conn.close(1000, "lab: reconnect")

    def watch(self, job_id: str) -> None:
        self.jobs.add(job_id)
        self._subscribe(job_id)

    def _subscribe(self, job_id: str) -> None:
        if self.conn is None or job_id in self.subscribed:
            return
        job = self.driver.ledger.jobs[job_id]
        epoch, seq = job.watch(self.watcher).resume_after()
        frame: dict[str, Any] = {"type": "subscribe", "job_id": job_id, "after": seq}
        if epoch > 1:
            frame["after_epoch"] = epoch
        try:
            self.conn.write_message(json.dumps(frame))
        except WebSocketClosedError:
            return
        self.subscribed.add(job_id)

    def _on_message(self, text: str | bytes) -> None:
        now = time.monotonic()
        frame = json.loads(text)
        kind = frame.get("type")
        if kind == "event":
            self.driver.ledger.deliver(self.watcher, frame, now, self.name, self.connection)
            if frame.get("event") in ("completed", "failed", "cancelled"):
                self.jobs.discard(str(frame.get("job_id")))
        elif kind in ("error", "history_truncated"):
            self.errors.append({"at": now, "session": self.name, **frame})


class Driver:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.token = Path(args.token_file).read_text().strip()
        self.submit_endpoints = parse_endpoints(args.submit)
        self.history_endpoints = parse_endpoints(args.history)
        self.sessions: dict[str, list[Session]] = {}
        for spec in args.watch:
            # <watcher>:<sessions>:<name=url,…>
            watcher, count, endpoints = spec.split(":", 2)
            self.sessions[watcher] = [
                Session(self, watcher, f"{watcher}-{number}", parse_endpoints(endpoints))
                for number in range(1, int(count) + 1)
            ]
        self.ledger = Ledger(list(self.sessions))
        self.http = AsyncHTTPClient(max_clients=64)
        self.stopping = False
        self.submitting = False
        self.scenario = "setup"
        self.submission_started: dict[str, float] = {}
        self.submit_failures: dict[str, int] = {}
        self.submit_retries: dict[str, int] = {}
        self.pending_submissions: set[asyncio.Task[None]] = set()
        self.scenario_started_at = time.monotonic()
        self.fault: Fault | None = None
        self.fault_spec: dict[str, Any] = {}
        self.counter = 0

    # --- submitting ---------------------------------------------------------

    def job_body(self) -> bytes:
        duration_ms = random.randint(self.args.min_ms, self.args.max_ms)
        body = {
            "kind": "lab_sleep",
            "params": {"duration_ms": duration_ms, "steps": self.args.steps},
            "timeout_s": 60,
            "max_attempts": 5,
        }
        return json.dumps(body).encode()

    async def submit_one(self, scenario: str) -> None:
        started = time.monotonic()
        key = str(uuid.uuid4())
        body = self.job_body()
        attempt = 0
        while time.monotonic() - started < SUBMIT_DEADLINE_S and not self.stopping:
            _, url = self.submit_endpoints[attempt % len(self.submit_endpoints)]
            request = HTTPRequest(
                url + "/v1/jobs",
                method="POST",
                body=body,
                headers={
                    "Authorization": f"Bearer {self.token}",
                    "Content-Type": "application/json",
                    "Idempotency-Key": key,
                },
                connect_timeout=CONNECT_TIMEOUT_S,
                request_timeout=5.0,
            )
            try:
                response = await self.http.fetch(request)
            except HTTPClientError as error:
                if error.code not in RETRYABLE_STATUS:
                    body = error.response.body if error.response is not None else b""
                    log(f"submission refused: {error.code} {body!r}")
                    break
            except (TimeoutError, OSError):
                pass
            else:
                job_id = json.loads(response.body)["job_id"]
                self.ledger.accepted(job_id, scenario, started, time.monotonic())
                self.submission_started.setdefault(job_id, started)
                for sessions in self.sessions.values():
                    sessions[self.counter % len(sessions)].watch(job_id)
                self.counter += 1
                return
            attempt += 1
            self.submit_retries[scenario] = self.submit_retries.get(scenario, 0) + 1
            await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
        self.submit_failures[scenario] = self.submit_failures.get(scenario, 0) + 1

    async def submit_loop(self) -> None:
        interval = 1.0 / self.args.rate
        next_at = time.monotonic()
        while not self.stopping:
            if self.submitting:
                task = asyncio.create_task(self.submit_one(self.scenario))
                self.pending_submissions.add(task)
                task.add_done_callback(self.pending_submissions.discard)
                next_at += interval
                await asyncio.sleep(max(next_at - time.monotonic(), 0))
            else:
                await asyncio.sleep(0.05)
                next_at = time.monotonic()

    # --- commands -----------------------------------------------------------

    async def wait_ready(self, timeout_s: float) -> None:
        """Until a probe job is accepted and completes (a worker has registered)."""
        deadline = time.monotonic() + timeout_s
        self.scenario = "probe"
        while time.monotonic() < deadline:
            await self.submit_one("probe")
            jobs = self.ledger.of_scenario("probe")
            if jobs:
                while time.monotonic() < deadline:
                    if jobs[0].done_for(self.ledger.watchers):
                        log("ready: a probe job was submitted and watched to its end")
                        return
                    await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
        raise SystemExit("driver: no probe job completed; is a worker registered?")

    def start_scenario(self, name: str) -> None:
        self.scenario = name
        self.fault = None
        self.fault_spec = {}
        self.scenario_started_at = time.monotonic()
        for sessions in self.sessions.values():
            for session in sessions:
                behind_balancer = len(session.endpoints) == 1
                if behind_balancer or session.endpoint_index != 0:
                    session.reconnect()
        self.submitting = True
        log(f"scenario {name}: submitting {self.args.rate}/s")

    def inject(self, spec: dict[str, Any]) -> None:
        now = time.monotonic()
        kind = spec["kind"]
        if kind == "slots":
            self.fault = Fault("slots", now, slots=tuple(tuple(r) for r in spec["slots"]))
        elif kind == "gateway":
            affected = [
                session
                for sessions in self.sessions.values()
                for session in sessions
                if session.served_by == spec["gateway"] and session.conn is not None
            ]
            self.fault = Fault(
                "sessions",
                now,
                sessions=frozenset(session.name for session in affected),
                connections={session.name: session.connection for session in affected},
                submissions=bool(spec.get("submissions")),
            )
        elif kind == "worker":
            running = {job.job_id for job in self.ledger.running() if job.worker == spec["worker"]}
            self.fault = Fault("jobs", now, jobs=frozenset(running))
        elif kind == "started_after":
            self.fault = Fault("started_after", now)
        else:
            raise ValueError(f"unknown fault {spec!r}")
        self.fault_spec = spec
        log(f"fault: {json.dumps(spec)} ({self.describe_fault()})")

    def describe_fault(self) -> str:
        fault = self.fault
        if fault is None:
            return ""
        if fault.kind == "sessions":
            return f"sessions on it: {', '.join(sorted(fault.sessions)) or 'none'}"
        if fault.kind == "jobs":
            return f"{len(fault.jobs)} running job(s) on it"
        return fault.kind

    async def drain(self, timeout_s: float) -> None:
        name = self.scenario
        self.submitting = False
        stopped_at = time.monotonic()
        deadline = stopped_at + timeout_s
        while time.monotonic() < deadline:
            jobs = self.ledger.of_scenario(name)
            if not self.pending_submissions and all(
                job.done_for(self.ledger.watchers) for job in jobs
            ):
                break
            await asyncio.sleep(0.1)
        drained_s = time.monotonic() - stopped_at
        jobs = self.ledger.of_scenario(name)
        histories = await self.histories([job.job_id for job in jobs])
        result = figures(
            name,
            jobs,
            watchers=self.ledger.watchers,
            histories=histories,
            fault=self.fault,
            submission_started=self.submission_started,
            submit_failures=self.submit_failures.get(name, 0),
        )
        record = asdict(result)
        record["passed"] = result.passed()
        record.update(self.session_report(name))
        if self.fault_spec.get("expect_close") is not None and self.fault is not None:
            record.update(self.expected_closes(self.fault, int(self.fault_spec["expect_close"])))
            if record["sessions_without_expected_close"] or not record["sessions_on_fault"]:
                # Without a session on the gateway the check would prove nothing.
                record["passed"] = False
        record["rate"] = self.args.rate
        record["submit_retries"] = self.submit_retries.get(name, 0)
        record["load_s"] = round(stopped_at - self.scenario_started_at, 3)
        record["drain_s"] = round(drained_s, 3)
        record["fault"] = self.fault_spec or None
        path = self.out / "scenarios" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(record, indent=2) + "\n")
        temporary.rename(path)
        log(
            f"scenario {name}: {result.submitted} submitted, {result.completed} completed, "
            f"{result.lost_jobs} lost, {result.lost_events} events lost, "
            f"{result.duplicates} duplicates"
        )

    def session_report(self, name: str) -> dict[str, Any]:
        since = self.scenario_started_at
        closes = []
        errors = []
        for sessions in self.sessions.values():
            for session in sessions:
                closes += [dict(close) for close in session.closes if close["at"] >= since]
                errors += [dict(error) for error in session.errors if error["at"] >= since]
        for entry in closes + errors:
            entry["at"] = round(entry["at"] - since, 3)
        return {"closes": closes, "error_frames": errors[:20], "error_frame_count": len(errors)}

    def expected_closes(self, fault: Fault, code: int) -> dict[str, Any]:
        fault_at = fault.at
        got = {
            close["session"]
            for sessions in self.sessions.values()
            for session in sessions
            for close in session.closes
            if close["at"] >= fault_at and close["code"] == code
        }
        missing = sorted(fault.sessions - got)
        return {
            "expected_close": code,
            "sessions_on_fault": sorted(fault.sessions),
            "sessions_without_expected_close": missing,
        }

    # --- histories ----------------------------------------------------------

    async def histories(self, job_ids: list[str]) -> dict[str, list[dict[str, Any]] | None]:
        limit = asyncio.Semaphore(HISTORY_READERS)
        result: dict[str, list[dict[str, Any]] | None] = {}

        async def read(job_id: str) -> None:
            async with limit:
                result[job_id] = await self.history(job_id)

        await asyncio.gather(*(read(job_id) for job_id in job_ids))
        return result

    async def history(self, job_id: str) -> list[dict[str, Any]] | None:
        """The job's events over SSE (the stream ends after the terminal one)."""
        for _, url in self.history_endpoints * 3:
            chunks: list[bytes] = []
            request = HTTPRequest(
                f"{url}/v1/jobs/{job_id}/events",
                headers={"Authorization": f"Bearer {self.token}", "Accept": "text/event-stream"},
                connect_timeout=CONNECT_TIMEOUT_S,
                request_timeout=5.0,
                streaming_callback=chunks.append,
            )
            try:
                await self.http.fetch(request)
            except HTTPClientError as error:
                if error.code == 404:
                    return None
                if error.code != 599 or not chunks:
                    continue
            except OSError:
                continue
            return sse_events(b"".join(chunks).decode())
        return None

    # --- bookkeeping --------------------------------------------------------

    async def write_inflight(self) -> None:
        path = self.out / "inflight.json"
        temporary = path.with_suffix(".tmp")
        while not self.stopping:
            running = [
                {"job_id": job.job_id, "slot": job.slot, "worker": job.worker}
                for job in self.ledger.running()
            ]
            temporary.write_text(json.dumps(running))
            temporary.rename(path)
            await asyncio.sleep(0.25)

    async def status_loop(self) -> None:
        while not self.stopping:
            await asyncio.sleep(5)
            if self.scenario in ("setup", "probe"):
                continue
            jobs = self.ledger.of_scenario(self.scenario)
            done = sum(job.done_for(self.ledger.watchers) for job in jobs)
            where = ", ".join(
                f"{session.name}@{session.served_by if session.conn else '-'}"
                for sessions in self.sessions.values()
                for session in sessions
            )
            log(f"{self.scenario}: {len(jobs)} accepted, {done} done; sessions {where}")

    async def commands(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            command, _, argument = line.strip().partition(" ")
            if command == "scenario":
                self.start_scenario(argument)
            elif command == "fault":
                self.inject(json.loads(argument))
            elif command == "drain":
                await self.drain(float(argument))
            elif command == "quit":
                return
            elif command:
                log(f"unknown command {line.strip()!r}")

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(session.run())
            for sessions in self.sessions.values()
            for session in sessions
        ]
        tasks.append(asyncio.create_task(self.submit_loop()))
        tasks.append(asyncio.create_task(self.write_inflight()))
        tasks.append(asyncio.create_task(self.status_loop()))
        await self.wait_ready(self.args.ready_timeout)
        (self.out / "driver.ready").write_text("ready\n")
        await self.commands()
        self.stopping = True
        for session in (s for sessions in self.sessions.values() for s in sessions):
            if session.conn is not None:
                session.conn.close(1000, "lab: done")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def sse_events(text: str) -> list[dict[str, Any]]:
    """The job events of an SSE body (``data:`` lines holding a ``seq``)."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(
            line[5:].lstrip(" ") for line in block.split("\n") if line.startswith("data:")
        )
        if not data:
            continue
        try:
            event = json.loads(data)
        except ValueError:
            continue
        if isinstance(event, dict) and "seq" in event and "event" in event:
            events.append(event)
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for results")
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--submit", required=True, help="name=url,… tried in order")
    parser.add_argument("--history", required=True, help="name=url,… for the final reads")
    parser.add_argument(
        "--watch", action="append", required=True, help="<watcher>:<sessions>:<name=url,…>"
    )
    parser.add_argument("--rate", type=float, default=15.0, help="jobs per second")
    parser.add_argument("--min-ms", type=int, default=500)
    parser.add_argument("--max-ms", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    args = parser.parse_args()
    asyncio.run(Driver(args).run())


if __name__ == "__main__":
    main()
