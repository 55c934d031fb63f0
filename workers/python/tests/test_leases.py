"""Leases with real worker processes: renewal that a handler holding the GIL
cannot starve, a renewer that dies with its worker or is replaced when it
dies alone, and the time to recover a killed worker's job at the defaults.

``JOBGATE_RECOVERY_TRIES=5 pytest -s -k recovery`` measures the recovery
time over five kills (``benches/RESULTS.md``); one try by default.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

from conftest import assert_contiguous, wait_until
from jobgate_worker import keys
from jobgate_worker.renewal import LeaseRenewer
from jobgate_worker.renewer import Renewer, RenewerConfig, change_line

RENEWER_MODULE = "jobgate_worker.renewer"


def renewer_pids(worker_pid: int) -> list[int]:
    """The lease renewer processes whose parent is ``worker_pid``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == worker_pid and RENEWER_MODULE in cmdline:
            found.append(int(proc.name))
    return found


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie not yet reaped counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def pending_idle_ms(gateway) -> list[int]:
    stream = keys.queue_stream("default", "normal")
    pending = gateway.redis.xpending_range(stream, keys.CONSUMER_GROUP, "-", "+", 10)
    return [p["time_since_delivered"] for p in pending]


def test_a_handler_holding_the_gil_longer_than_the_lease_keeps_it(gateway, spawn_worker):
    lease_s = 1.0
    workers = {
        name: spawn_worker("--lease-ms", str(int(lease_s * 1000)), "--consumer", name)
        for name in ("w1", "w2")
    }
    for process in workers.values():
        process.wait_started()
    # One C call holding the GIL for ~1.8 leases; the other worker scans for
    # idle entries every 0.1 s and would take the job the moment the lease lapsed.
    job_id = gateway.submit("hog_gil", {"seconds": 1.8 * lease_s})
    events = gateway.wait_terminal(job_id, timeout=30)

    assert_contiguous(events)
    result = events[-1]["data"]["result"]
    # The probe thread of the handler's process could not tick meanwhile: the
    # GIL really was held for longer than the lease.
    assert result["probe_max_gap_s"] > lease_s, result
    assert [e["event"] for e in events] == ["queued", "started", "completed"]
    assert result["attempt"] == 1
    for process in workers.values():
        messages = [line["message"] for line in process.log_lines()]
        assert "reclaimed an idle entry" not in messages
    # Held past its lease, the entry is acknowledged after the terminal call.
    gateway.wait_settled()


def test_the_renewer_does_not_outlive_a_killed_worker(gateway, spawn_worker):
    lease_ms = 600
    worker = spawn_worker("--lease-ms", str(lease_ms), "--consumer", "victim")
    worker.wait_started()
    job_id = gateway.submit("sleep", {"s": 30})
    gateway.wait_event(job_id, "started")
    [renewer] = renewer_pids(worker.process.pid)
    # A Ctrl-C or SIGTERM for the whole process group leaves the renewer to
    # the worker's shutdown, which still needs the leases.
    os.kill(renewer, signal.SIGINT)
    os.kill(renewer, signal.SIGTERM)
    # Renewed while the worker lives: idle never reaches the lease.
    time.sleep(lease_ms / 1000 * 1.5)
    assert not gone(renewer)
    assert all(idle < lease_ms for idle in pending_idle_ms(gateway))

    worker.kill9()
    # Within one renewal interval (lease / 3) of the kill, with slack for a busy machine.
    wait_until(lambda: gone(renewer), timeout=3, what="the renewer to exit")
    # Nothing renews the entry any more: it idles past the lease, for another to reclaim.
    time.sleep(lease_ms / 1000 * 1.5)
    [idle] = pending_idle_ms(gateway)
    assert idle > lease_ms


def test_a_killed_renewer_is_replaced_and_the_job_keeps_its_lease(gateway, spawn_worker):
    lease_ms = 2000
    # One handler thread: while it is busy its own reclaim scans (which would
    # also renew its idle entry) do not run; only the renewer renews.
    first = spawn_worker("--lease-ms", str(lease_ms), "--consumer", "first", "--concurrency", "1")
    first.wait_started()
    job_id = gateway.submit("sleep", {"s": 5})
    gateway.wait_event(job_id, "started")
    second = spawn_worker("--lease-ms", str(lease_ms), "--consumer", "second")
    second.wait_started()
    [renewer] = renewer_pids(first.process.pid)
    os.kill(renewer, signal.SIGKILL)

    events = gateway.wait_terminal(job_id, timeout=30)
    assert [e["event"] for e in events] == ["queued", "started", "completed"]
    assert events[-1]["data"]["result"] is not None
    messages = [line["message"] for line in first.log_lines()]
    assert "lease renewer exited; starting a new one" in messages
    [replacement] = renewer_pids(first.process.pid)
    assert replacement != renewer
    assert "reclaimed an idle entry" not in [line["message"] for line in second.log_lines()]
    assert gateway.pending() == 0


def test_recovery_after_a_worker_is_killed_at_default_settings(gateway, spawn_worker):
    tries = int(os.environ.get("JOBGATE_RECOVERY_TRIES", "1"))
    workers = {"w0": spawn_worker("--consumer", "w0")}
    figures = []
    for attempt in range(tries):
        name = f"w{attempt + 1}"
        workers[name] = spawn_worker("--consumer", name)
        for process in workers.values():
            process.wait_started()
        job_id = gateway.submit("slow_steps", {"n": 8, "pause_s": 0.1})
        events = gateway.wait_event(job_id, "progress")
        victim_name = next(e["data"]["worker"] for e in events if e["event"] == "started")
        victim = workers.pop(victim_name)
        killed_at_ms = time.time() * 1000
        victim.kill9()

        events = gateway.wait_terminal(job_id, timeout=25)
        assert_contiguous(events)
        assert events[-1]["event"] == "completed"
        started = [e for e in events if e["event"] == "started"]
        assert [s["data"]["attempt"] for s in started] == [1, 2]
        assert started[1]["data"]["worker"] != victim_name
        figures.append((events[-1]["ts"] - killed_at_ms) / 1000)
    print(
        "\nrecovery after kill -9 (s, kill → completed, default lease):",
        ", ".join(f"{figure:.2f}" for figure in figures),
        f"| max {max(figures):.2f}",
    )


def test_renewal_touches_only_entries_still_pending_with_this_consumer(redis_server, caplog):
    client = redis_server.client()
    stream = keys.queue_stream("default", "normal")
    client.xgroup_create(stream, keys.CONSUMER_GROUP, id="0", mkstream=True)
    ours, taken = (client.xadd(stream, {"job_id": name}) for name in ("ours", "taken"))
    client.xreadgroup(keys.CONSUMER_GROUP, "me", {stream: ">"}, count=2)
    # Another worker reclaimed one of them after our lease lapsed.
    client.xclaim(stream, keys.CONSUMER_GROUP, "other", 0, [taken], justid=True)
    time.sleep(0.3)
    config = RenewerConfig(redis_url=redis_server.url, consumer="me", interval_s=1, parent_pid=0)
    renewer = Renewer(config, client)
    renewer.take(change_line("hold", stream, ours) + change_line("hold", stream, taken))
    assert renewer.held == {(stream, ours), (stream, taken)}

    renewer.renew()
    pending = {
        p["message_id"]: p for p in client.xpending_range(stream, keys.CONSUMER_GROUP, "-", "+", 10)
    }
    assert pending[ours]["consumer"] == "me"
    assert pending[ours]["time_since_delivered"] < 200
    # Not taken back, and its idle time was left alone.
    assert pending[taken]["consumer"] == "other"
    assert pending[taken]["time_since_delivered"] >= 300
    # Missing twice in a row: logged once and no longer renewed.
    with caplog.at_level(logging.WARNING, logger="jobgate_worker.renewer"):
        renewer.renew()
    assert renewer.held == {(stream, ours)}
    assert [r.getMessage() for r in caplog.records] == [
        "a held entry is no longer pending (acknowledged or deleted elsewhere)"
    ]
    renewer.take(change_line("drop", stream, ours))
    assert renewer.held == set()


class _RecordingStdin:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def flush(self) -> None:
        pass


class _FakeProcess:
    def __init__(self) -> None:
        self.stdin = _RecordingStdin()


def test_renewer_changes_are_written_together_and_short_holds_not_at_all():
    """Holds and drops are written at the next flush, in one write; an entry
    taken and let go in between (a short job) is never written."""
    lease = LeaseRenewer("redis://127.0.0.1:1", "me", interval_s=3.0)
    assert lease.flush_interval_s == 0.1
    assert LeaseRenewer("redis://127.0.0.1:1", "me", interval_s=0.1).flush_interval_s == 0.025
    process = _FakeProcess()
    lease._process = process  # type: ignore[assignment]
    stream = keys.queue_stream("default", "normal")
    lease.hold((stream, "1-0"))
    lease.hold((stream, "2-0"))
    lease.drop((stream, "1-0"))  # a short job: taken and let go before a flush
    assert process.stdin.writes == []
    lease.flush()
    assert process.stdin.writes == [change_line("hold", stream, "2-0")]
    lease.drop((stream, "2-0"))
    lease.hold((stream, "3-0"))
    lease.flush()
    lease.flush()  # nothing new: nothing written
    assert process.stdin.writes[1:] == [
        change_line("drop", stream, "2-0") + change_line("hold", stream, "3-0")
    ]
