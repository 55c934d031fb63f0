"""The lab's table and ``target/lab/latest.json``, from what the run left in ``target/lab``.

Reads ``scenarios/<name>.json`` (the load generator's figures),
``scenarios/<name>.lab.json`` (``lab.sh``'s own: failover time, slot moved …)
and ``sizing-before.json``/``sizing-after.json`` (CPU around the two-gateways
scenario). Exits 1 if a scenario lost a job or an event, delivered a
duplicate, left a watch unfinished, or missed an expected close code.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def sizing(out: Path, scenarios: dict[str, Any]) -> dict[str, Any] | None:
    """CPU per completed job over the two-gateways scenario (ms)."""
    before = load(out / "sizing-before.json")
    after = load(out / "sizing-after.json")
    steady = scenarios.get("two-gateways")
    if before is None or after is None or steady is None or not steady["completed"]:
        return None
    jobs = steady["completed"]

    def used(section: str, names: list[str]) -> float:
        return sum(float(after[section].get(n, 0.0) - before[section].get(n, 0.0)) for n in names)

    def per_job(seconds: float) -> float:
        return round(seconds * 1000 / float(jobs), 3)

    masters = sorted(set(before["redis_masters"]) & set(after["redis_masters"]))
    return {
        "jobs_completed": jobs,
        "job": "lab_sleep: 3 Dask rounds, 3 progress events, 0.5-2 s",
        "redis_cpu_ms_per_job": per_job(used("redis_masters", masters)),
        "redis_cpu_ms_per_job_by_master": {
            name: per_job(used("redis_masters", [name])) for name in masters
        },
        "gateway_cpu_ms_per_job": per_job(used("hosts", ["gw1", "gw2"])),
        "worker_cpu_ms_per_job": per_job(used("hosts", ["wk1", "wk2"])),
        "dask_cpu_ms_per_job": per_job(used("hosts", ["dask-sched", "daskw1", "daskw2"])),
        "haproxy_cpu_ms_per_job": per_job(used("hosts", ["lb"])),
        "loadgen_cpu_ms_per_job": per_job(used("hosts", ["load"])),
        "note": (
            "two gateways (each job submitted on one, watched on both), two workers, "
            "CPU over the whole scenario divided by the jobs it completed; "
            "Redis is used_cpu_sys + used_cpu_user of each master (INFO)"
        ),
    }


def git(*args: str) -> str:
    try:
        return subprocess.run(  # noqa: S603 - fixed arguments
            ["git", *args],  # noqa: S607 - git from PATH, as make does
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def notes_of(r: dict[str, Any]) -> list[str]:
    """What to say under the table about one scenario."""
    notes = []
    if r.get("lab"):
        notes.append(json.dumps(r["lab"]))
    if r.get("failures"):
        notes.append(f"failed: {json.dumps(r['failures'])}")
    if "sessions_on_fault" in r and not r["sessions_on_fault"]:
        notes.append("no session was on the stopped gateway: nothing was checked")
    if r.get("sessions_without_expected_close"):
        sessions = ", ".join(r["sessions_without_expected_close"])
        notes.append(f"no close {r['expected_close']} for {sessions}")
    if r.get("examples"):
        notes.append("; ".join(r["examples"][:3]))
    return notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--elapsed-s", type=int, required=True)
    parser.add_argument("--short", default="0")
    parser.add_argument("scenarios", nargs="*")
    args = parser.parse_args()
    out = Path(args.out)

    results: dict[str, Any] = {}
    for name in args.scenarios:
        record = load(out / "scenarios" / f"{name}.json")
        if record is None:
            record = {"scenario": name, "passed": False, "note": "no result"}
        record["lab"] = load(out / "scenarios" / f"{name}.lab.json")
        results[name] = record

    header = (
        "scenario",
        "submitted",
        "completed",
        "failed",
        "lost jobs",
        "lost events",
        "duplicates",
        "max wait (s)",
        "recovery (s)",
        "",
    )
    rows = [header]
    for name, r in results.items():
        rows.append(
            (
                name,
                cell(r.get("submitted")),
                cell(r.get("completed")),
                cell(r.get("failed")),
                cell(r.get("lost_jobs")),
                cell(r.get("lost_events")),
                cell(r.get("duplicates")),
                cell(r.get("max_wait_s")),
                cell(r.get("recovery_s")),
                "ok" if r.get("passed") else "FAIL",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    print()
    for index, row in enumerate(rows):
        print(
            "  ".join(
                text.ljust(width) if column == 0 else text.rjust(width)
                for column, (text, width) in enumerate(zip(row, widths, strict=True))
            )
        )
        if index == 0:
            print("  ".join("-" * width for width in widths))

    size = sizing(out, results)
    if size is not None:
        masters = size["redis_cpu_ms_per_job_by_master"]
        by_master = ", ".join(f"{name} {ms}" for name, ms in masters.items())
        print(
            f"\nCPU per job ({size['jobs_completed']} jobs, two-gateways): "
            f"Redis {size['redis_cpu_ms_per_job']} ms over {len(masters)} master(s) "
            f"({by_master}), gateways {size['gateway_cpu_ms_per_job']} ms, "
            f"workers {size['worker_cpu_ms_per_job']} ms, Dask {size['dask_cpu_ms_per_job']} ms, "
            f"HAProxy {size['haproxy_cpu_ms_per_job']} ms"
        )
    for name, r in results.items():
        notes = notes_of(r)
        if notes:
            print(f"  {name}: {' | '.join(notes)}")
    print(f"\n{args.elapsed_s} s in all; figures in {out / 'latest.json'}")

    passed = all(r.get("passed") for r in results.values()) and bool(results)
    document = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": git("rev-parse", "HEAD"),
        "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
        "redis": args.redis,
        "short": args.short == "1",
        "elapsed_s": args.elapsed_s,
        "passed": passed,
        "sizing": size,
        "scenarios": list(results.values()),
    }
    (out / "latest.json").write_text(json.dumps(document, indent=2) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
