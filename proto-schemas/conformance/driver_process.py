"""The client under test, as a driver program speaking the driver protocol
(README.md, "Driver protocol"): JSON-line commands on its stdin, JSON-line
outputs on its stdout. Its stderr is kept for the report."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import time
from typing import Any

from frames import Bindings

#: Outputs that are the app's view of the client, compared between runs.
DELIVERY_OUTPUTS = ("submitted", "event", "snapshot", "watch_end", "error")


class DriverError(Exception):
    """The driver did not do what a step waited for."""


class Driver:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.outputs: list[dict[str, Any]] = []
        self.consumed: set[int] = set()
        self.marks: dict[str, int] = {}
        self.stderr_lines: list[str] = []
        self.noise: list[str] = []
        self._changed = asyncio.Condition()
        self._tasks = [
            asyncio.create_task(self._read_stdout()),
            asyncio.create_task(self._read_stderr()),
        ]
        self.started = time.monotonic()

    @classmethod
    async def spawn(cls, command: str) -> Driver:
        process = await asyncio.create_subprocess_exec(
            *shlex.split(command),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=16 * 1024 * 1024,
        )
        return cls(process)

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            text = line.decode(errors="replace").strip()
            if not text:
                continue
            try:
                output = json.loads(text)
            except ValueError:
                self.noise.append(text)
                continue
            if not isinstance(output, dict) or "out" not in output:
                self.noise.append(text)
                continue
            output["_t"] = round((time.monotonic() - self.started) * 1000)
            async with self._changed:
                self.outputs.append(output)
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.stderr_lines.append(line.decode(errors="replace").rstrip())
            del self.stderr_lines[:-200]

    async def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        if self.process.returncode is not None:
            raise DriverError(f"driver exited ({self.process.returncode}) before {command}")
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        with contextlib.suppress(ConnectionError):
            await self.process.stdin.drain()

    def mark(self, name: str) -> None:
        self.marks[name] = len(self.outputs)

    async def wait_output(
        self,
        pattern: dict[str, Any],
        bindings: Bindings,
        *,
        timeout_s: float,
        since: str | None = None,
    ) -> dict[str, Any]:
        """The first output not matched before (after mark `since`) that matches."""
        start = self.marks.get(since, 0) if since else 0
        deadline = asyncio.get_running_loop().time() + timeout_s
        async with self._changed:
            while True:
                for index in range(start, len(self.outputs)):
                    if index in self.consumed:
                        continue
                    if bindings.matches(pattern, self.outputs[index]):
                        self.consumed.add(index)
                        return self.outputs[index]
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0 or self.process.returncode is not None:
                    exited = self.process.returncode
                    raise DriverError(
                        f"no driver output matched {json.dumps(pattern)} within {timeout_s:g} s"
                        + (f" (driver exited {exited})" if exited is not None else "")
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)

    def deliveries(self) -> list[dict[str, Any]]:
        return [output for output in self.outputs if output.get("out") in DELIVERY_OUTPUTS]

    async def wait_quiet(self, *, count: int, timeout_s: float, grace_s: float) -> None:
        """Waits until `count` deliveries arrived (or the timeout), then `grace_s` more
        so that a duplicate delivered late is seen too."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        async with self._changed:
            while len(self.deliveries()) < count:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0 or self.process.returncode is not None:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)
        await asyncio.sleep(grace_s)

    async def stop(self) -> None:
        """`close`, then the process is given a moment to exit, then killed."""
        with contextlib.suppress(DriverError, ConnectionError, RuntimeError):
            await self.send({"cmd": "close"})
            await self.wait_output({"out": "closed"}, Bindings(), timeout_s=2)
        if self.process.stdin is not None:
            self.process.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), 2)
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
