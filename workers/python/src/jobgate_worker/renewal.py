"""The worker's side of lease renewal: starting the renewer and telling it.

``LeaseRenewer`` runs ``python -m jobgate_worker.renewer`` (see
``renewer.py``) as a child process and tells it, through its stdin, which
entries this process holds: a ``hold`` line when it takes an entry and a
``drop`` line when it lets go of one (``InFlight`` calls ``hold``/``drop``
under its lock, so the changes are noted in the order they happened). The
renewer renews in its own interpreter, so a handler that holds this
process's GIL cannot starve it.

Changes are written every ``flush_interval_s`` (a tenth of a second at
most, a quarter of the renewal interval for short leases), all in one
write: an entry taken and let go in between — a job that took less — costs
the renewer nothing, and a busy worker wakes it a few times a second rather
than twice per job. The renewer renews what it holds every renewal
interval (a third of the lease), so an entry told a tenth of a second late
is renewed as soon as it would have been.

A ``drop`` may reach the renewer after the entry was acknowledged; renewing
an acknowledged entry is a no-op in Redis (``XCLAIM`` only touches pending
entries), so the order "drop, then acknowledge" needs no waiting.

If the renewer dies (killed, out of memory), ``ensure_running`` — called by
the ``LeaseKeeper`` every renewal interval — starts a new one and tells it
every entry still held. Until then nothing renews: an entry whose lease runs
out meanwhile may be reclaimed, and the job's attempt fencing keeps that
safe. Closing the renewer's stdin ends it; so does this process's death.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import subprocess
import sys
import threading
from collections.abc import Callable

from .renewer import READY, RENEW_NOW_LINE, RenewerConfig, change_line

log = logging.getLogger(__name__)

Key = tuple[str, str]

#: Longest a change waits before it is written to the renewer.
MAX_FLUSH_INTERVAL_S = 0.1

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RenewerStartError(RuntimeError):
    """The renewer process could not be started."""


class LeaseRenewer:
    """A handle on the renewer child process."""

    def __init__(
        self,
        redis_url: str,
        consumer: str,
        interval_s: float,
        log_level: str = "INFO",
        start_timeout_s: float = 10.0,
    ) -> None:
        self._config = RenewerConfig(
            redis_url=redis_url,
            consumer=consumer,
            interval_s=interval_s,
            parent_pid=os.getpid(),
            log_level=log_level,
        )
        self._start_timeout_s = start_timeout_s
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._broken = False
        #: Changes not yet written, per entry: True to hold, False to drop.
        self._changes: dict[Key, bool] = {}
        #: How often ``flush`` should run (the runtime's scheduler calls it).
        self.flush_interval_s = min(MAX_FLUSH_INTERVAL_S, interval_s / 4)

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None else None

    def start(self) -> None:
        """Start the renewer and wait until it is ready; raises ``RenewerStartError``."""
        with self._lock:
            self._process = self._spawn()
            self._broken = False

    def _spawn(self) -> subprocess.Popen[bytes]:
        # The package's own folder first on the path: the renewer runs this
        # very SDK even where it is not installed (a source checkout).
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            part for part in (_PACKAGE_PARENT, env.get("PYTHONPATH", "")) if part
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "jobgate_worker.renewer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            env=env,
        )
        stdin, stdout = process.stdin, process.stdout
        if stdin is None or stdout is None:  # both are PIPE above: never
            raise RenewerStartError("the lease renewer has no pipes")
        try:
            stdin.write((self._config.to_line() + "\n").encode())
            stdin.flush()
            ready, _, _ = select.select([stdout], [], [], self._start_timeout_s)
            answer = stdout.readline().decode().strip() if ready else ""
        except OSError as error:
            answer = f"error: {error}"
        if answer != READY:
            self._end(process)
            raise RenewerStartError(f"the lease renewer did not start (said {answer!r})")
        return process

    def hold(self, key: Key) -> None:
        with self._lock:
            self._changes[key] = True

    def drop(self, key: Key) -> None:
        with self._lock:
            pending = self._changes.pop(key, None)
            if pending is None or pending is False:
                self._changes[key] = False
            # else: taken and let go before the renewer heard of it.

    def flush(self) -> None:
        """Write the changes noted since the last flush, in one write."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._changes:
            return
        lines = b"".join(
            change_line("hold" if held else "drop", *key) for key, held in self._changes.items()
        )
        self._changes.clear()
        self._write_locked(lines)

    def _send(self, line: bytes) -> None:
        with self._lock:
            self._flush_locked()
            self._write_locked(line)

    def _write_locked(self, data: bytes) -> None:
        process = self._process
        if process is None or process.stdin is None or self._broken:
            return  # not started, or dead: ensure_running tells the next one
        try:
            process.stdin.write(data)
            process.stdin.flush()
        except OSError:
            self._broken = True

    def alive(self) -> bool:
        with self._lock:
            return self._alive()

    def _alive(self) -> bool:
        return self._process is not None and not self._broken and self._process.poll() is None

    def ensure_running(self, replay: Callable[[Callable[[Key], None]], None]) -> bool:
        """Start a new renewer if this one died; ``replay(hold)`` re-tells the held entries.

        Returns False when the renewer is down and could not be started again.
        """
        with self._lock:
            if self._alive():
                return True
            old = self._process
            log.warning(
                "lease renewer exited; starting a new one",
                extra={
                    "pid": old.pid if old is not None else None,
                    "returncode": old.poll() if old is not None else None,
                },
            )
            if old is not None:
                self._end(old)
            try:
                self._process = self._spawn()
            except (RenewerStartError, OSError):
                self._process = None
                log.error("starting the lease renewer failed", exc_info=True)
                return False
            self._broken = False
            # The new renewer knows nothing: ``replay`` tells it every entry
            # held now, which covers every hold noted; drops are moot.
            self._changes.clear()
        # Outside our lock: ``replay`` takes the in-flight lock, which ``hold``
        # callers hold while they take ours.
        replay(self.hold)
        self._send(RENEW_NOW_LINE)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the renewer's stdin (it exits) and wait for it."""
        with self._lock:
            process, self._process = self._process, None
        if process is not None:
            self._end(process, timeout_s)

    @staticmethod
    def _end(process: subprocess.Popen[bytes], timeout_s: float = 2.0) -> None:
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)
