"""A real Dask cluster for tests: ``dask scheduler`` and ``dask worker`` processes.

Each process is the venv's ``dask`` command on 127.0.0.1, in a session of its
own (so that a kill reaches all of it), logging to a file in the test's temp
dir. Readiness is asked of the scheduler itself, by a client of the test's
own (closed again at once). Workers run ``--nworkers 1 --nthreads 1 --no-nanny`` (the worker *is*
the process: killing it kills the worker, with no nanny to start another)
and ``--preload jobgate_worker.dask_preload``, as a remote cluster would;
they import the SDK, the tests' handlers and the examples from this checkout.
The scheduler keeps its port across a restart.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, Any

import jobgate_worker
from conftest import REPO_ROOT, TESTS_DIR, VENV_BIN, free_port

#: How long a process may take to be ready.
READY_TIMEOUT_S = 20.0


class DaskProcess:
    """One ``dask`` CLI process and its log file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        extra_env = env or {}
        env = dict(os.environ)
        sdk_src = Path(jobgate_worker.__file__).resolve().parents[1]
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (sdk_src, TESTS_DIR, REPO_ROOT))
        env.pop("DASK_SCHEDULER_ADDRESS", None)
        env.update(extra_env)
        self.process = subprocess.Popen(
            [str(VENV_BIN / "dask"), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pause(self) -> None:
        """``kill -STOP``: its sockets stay open, it answers nothing (a host gone silent)."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def kill(self) -> None:
        """``kill -9`` the process (its whole session)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def close(self) -> None:
        self.kill()
        self._log.close()


class DaskCluster:
    """A scheduler on a fixed free port and the workers the test starts."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.scheduler: DaskProcess | None = None
        self.workers: list[DaskProcess] = []
        #: Every process ever started, for teardown.
        self._started: list[DaskProcess] = []

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self, workers: int, scheduler_env: dict[str, str] | None = None) -> None:
        """A scheduler and ``workers`` workers, started side by side, all ready.

        ``scheduler_env`` is added to the scheduler's environment (Dask reads
        its configuration from ``DASK_*`` variables).
        """
        self.start_scheduler(scheduler_env)
        for _ in range(workers):
            self.start_worker()
        self.wait_ready(workers)

    def wait_ready(self, workers: int) -> dict[str, int]:
        """Wait until the scheduler has ``workers`` workers; their addresses and pids."""
        distributed: Any = importlib.import_module("distributed")
        with distributed.Client(
            self.address, timeout=READY_TIMEOUT_S, set_as_default=False
        ) as client:
            client.wait_for_workers(workers, timeout=READY_TIMEOUT_S)
            pids: dict[str, int] = client.run(os.getpid)
        return pids

    def start_scheduler(self, env: dict[str, str] | None = None) -> DaskProcess:
        process = self._spawn(
            "scheduler",
            ["scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"],
            env,
        )
        self.scheduler = process
        return process

    def start_worker(self) -> DaskProcess:
        process = self._spawn(
            f"worker-{len(self.workers)}",
            [
                "worker", self.address,
                "--host", "127.0.0.1",
                "--nworkers", "1", "--nthreads", "1", "--no-nanny",
                "--no-dashboard",
                "--preload", "jobgate_worker.dask_preload",
            ],
        )  # fmt: skip
        self.workers.append(process)
        return process

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> DaskProcess:
        log_path = self.directory / f"{name}-{len(self._started)}.log"
        process = DaskProcess(args, log_path, env)
        self._started.append(process)
        return process

    def worker_with_pid(self, pid: int) -> DaskProcess:
        return next(worker for worker in self.workers if worker.pid == pid)

    def kill_scheduler(self) -> None:
        assert self.scheduler is not None
        self.scheduler.kill()

    def close(self) -> None:
        for process in self._started:
            process.close()
        assert not any(process.alive() for process in self._started)


def wait_for_marker(directory: Path, timeout_s: float = 20.0) -> int:
    """The pid named by the first marker file a task left in ``directory``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for path in directory.iterdir():
            return int(path.name)
        time.sleep(0.01)
    raise AssertionError("no Dask task started")
