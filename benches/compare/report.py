"""Prints the comparison of one sitting and writes it as JSON.

Usage: report.py --logs DIR --output JSON [--commit C] [--python-shape S] [--versions V]

DIR holds ``round-<n>/<system>.jsonl`` (one JSON object per scenario, from
jobgate-loadgen, bullmq/bench.mjs or celery/bench.py). The report gives the
median of each figure over the rounds, every round's headline figures, the
issue's target ratios (met or not) and the CPU per job of every process.
"""

import argparse
import json
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

COLUMNS = [
    ("scenario", "scenario", "<", None),
    ("runs", "runs", ">", None),
    ("jobs", "jobs", ">", 0),
    ("jobs_per_s", "jobs/s", ">", 0),
    ("p50_ms", "p50 ms", ">", 2),
    ("p90_ms", "p90 ms", ">", 2),
    ("p99_ms", "p99 ms", ">", 2),
    ("max_ms", "max ms", ">", 2),
    ("errors", "errors", ">", 0),
    ("cpu_us_per_job", "cpu µs/job", ">", 0),
    ("other_cpu_s", "other cpu s", ">", 1),
    ("system", "system", "<", None),
]

#: Warm-up jobs of jobgate's scenarios (``--warmup`` in benches/run.sh):
#: jobgate-loadgen's CPU times cover them too.
JOBGATE_WARMUP = {
    r"echo-sequential": 100,
    r"echo-200-in-flight": 2000,
    r"python-sequential": 100,
    r"python-.*-200-in-flight": 500,
}

#: CPU time fields of each system's rows, in the order they are printed.
CPU_PARTS = {
    "jobgate": ("gateway_cpu_s", "redis_cpu_s", "worker_cpu_s", "loadgen_cpu_s"),
    "bullmq": ("redis_cpu_s", "worker_cpu_s", "client_cpu_s"),
    "celery": ("redis_cpu_s", "worker_cpu_s", "client_cpu_s"),
}


def cell(value: Any, places: int | None) -> str:
    if value is None:
        return "-"
    if places is not None and isinstance(value, int | float):
        return f"{value:,.{places}f}" if places == 0 else f"{value:.{places}f}"
    return str(value)


def table(columns: list[tuple[str, str, str, int | None]], rows: list[dict[str, Any]]) -> str:
    cells = [[cell(row.get(key), places) for key, _, _, places in columns] for row in rows]
    heads = [head for _, head, _, _ in columns]
    widths = [max(len(text) for text in column) for column in zip(heads, *cells, strict=True)]

    def line(texts: list[str]) -> str:
        aligned = (
            f"{text:{align}{width}}"
            for text, width, (_, _, align, _) in zip(texts, widths, columns, strict=True)
        )
        return " ".join(aligned).rstrip()

    lines = [line(heads), " ".join("-" * width for width in widths)]
    return "\n".join(lines + [line(c) for c in cells])


def family(row: dict[str, Any]) -> str:
    """jobgate, bullmq or celery, from the scenario's name."""
    scenario = str(row.get("scenario", ""))
    for name in ("bullmq", "celery"):
        if scenario.startswith(name):
            return name
    return "jobgate"


def with_cpu(row: dict[str, Any]) -> dict[str, Any]:
    """Adds ``cpu_us_per_job``: every process's CPU time over the measured jobs.

    jobgate-loadgen counts CPU time over the whole scenario, its warm-up
    included, so jobgate's times are divided by measured + warm-up jobs
    (``cpu_jobs``); BullMQ's and Celery's cover the measured jobs only.
    """
    jobs = row.get("jobs") or 0
    parts = CPU_PARTS[family(row)]
    if not jobs or any(row.get(part) is None for part in parts):
        return row
    if family(row) == "jobgate":
        scenario = str(row["scenario"])
        jobs += next((n for p, n in JOBGATE_WARMUP.items() if re.fullmatch(p, scenario)), 0)
    cpu = {part.removesuffix("_cpu_s"): row[part] * 1e6 / jobs for part in parts}
    return {**row, "cpu_jobs": jobs, "cpu_us_per_job": sum(cpu.values()), "cpu_us": cpu}


def load(logs: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(logs.glob("round-*/*.jsonl")):
        round_number = int(path.parent.name.removeprefix("round-"))
        for line in path.read_text().splitlines():
            if line.strip():
                rows.append(with_cpu({**json.loads(line), "round": round_number}))
    return rows


def median_rows(rows: list[dict[str, Any]], commit: str) -> list[dict[str, Any]]:
    """One row per scenario: the median of every number over the rounds."""
    by_scenario: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_scenario.setdefault(row["scenario"], []).append(row)
    medians = []
    for scenario, runs in by_scenario.items():
        merged: dict[str, Any] = {"scenario": scenario, "runs": len(runs)}
        keys = {key for run in runs for key, value in run.items() if is_number(value)}
        for key in sorted(keys - {"round"}):
            values = [run[key] for run in runs if is_number(run.get(key))]
            merged[key] = statistics.median(values)
        # Errors are summed: one lost job in any round counts.
        merged["errors"] = sum(run.get("errors") or 0 for run in runs)
        system = runs[0].get("system")
        merged["system"] = f"jobgate {commit}" if family(runs[0]) == "jobgate" else system
        medians.append(merged)
    return sorted(medians, key=order)


def order(row: dict[str, Any]) -> tuple[bool, int, str]:
    """Sequential scenarios first, then in flight; jobgate, BullMQ, Celery."""
    scenario = str(row["scenario"])
    systems = ["jobgate", "bullmq", "celery"]
    return ("in-flight" in scenario, systems.index(family(row)), scenario)


def figure(value: Any) -> Any:
    """A figure as the target table prints it: whole above 100, else 2 places."""
    if not is_number(value) or isinstance(value, int):
        return value
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def find(rows: list[dict[str, Any]], pattern: str) -> dict[str, Any] | None:
    return next((row for row in rows if re.fullmatch(pattern, row["scenario"])), None)


Target = tuple[str, str, str, str, float, Callable[[float, float], bool], str]


def targets(medians: list[dict[str, Any]], python_shape: str) -> list[dict[str, Any]]:
    """The issue's targets, each a ratio of two medians."""
    python = f"python-{python_shape}-200-in-flight"
    wanted: list[Target] = [
        ("200 in flight, echo worker: jobs/s", "echo-200-in-flight", "bullmq-200-in-flight",
         "jobs_per_s", 1.3, lambda ratio, bound: ratio >= bound, ">="),
        ("200 in flight, echo worker: p99", "echo-200-in-flight", "bullmq-200-in-flight",
         "p99_ms", 1.0, lambda ratio, bound: ratio <= bound, "<="),
        ("sequential, echo worker: median", "echo-sequential", "bullmq-sequential",
         "p50_ms", 0.75, lambda ratio, bound: ratio <= bound, "<="),
        ("sequential, echo worker: p99", "echo-sequential", "bullmq-sequential",
         "p99_ms", 1 / 3, lambda ratio, bound: ratio <= bound, "<="),
        ("200 in flight, Python worker: jobs/s", python, "celery-200-in-flight",
         "jobs_per_s", 4.0, lambda ratio, bound: ratio >= bound, ">="),
    ]  # fmt: skip
    out: list[dict[str, Any]] = []
    for name, ours, theirs, key, bound, meets, sign in wanted:
        mine, other = find(medians, ours), find(medians, theirs)
        if mine is None or other is None or not mine.get(key) or not other.get(key):
            out.append({"target": name, "met": None, "note": f"{ours} or {theirs} missing"})
            continue
        ratio = mine[key] / other[key]
        clean = not mine.get("errors") and not other.get("errors")
        out.append({
            "target": name, "figure": key, "jobgate": mine[key], "against": theirs,
            "theirs": other[key], "ratio": ratio, "bound": f"{sign} {bound:.2f}",
            "met": bool(meets(ratio, bound)) and clean,
            "errors": (mine.get("errors") or 0) + (other.get("errors") or 0),
        })  # fmt: skip
    return out


def target_lines(rows: list[dict[str, Any]]) -> str:
    columns = [
        ("target", "target", "<", None),
        ("jobgate", "jobgate", ">", None),
        ("theirs", "other", ">", None),
        ("against", "against", "<", None),
        ("ratio", "ratio", ">", 2),
        ("bound", "target ratio", "<", None),
        ("verdict", "", "<", None),
    ]
    shown = []
    for row in rows:
        verdict = {True: "met", False: "NOT met", None: "-"}[row.get("met")]
        if row.get("errors"):
            verdict += f" ({row['errors']} errors)"
        shown.append({
            **{key: figure(value) for key, value in row.items()},
            "verdict": row.get("note", verdict),
        })  # fmt: skip
    return table(columns, shown)


def cpu_lines(medians: list[dict[str, Any]], python_shape: str) -> str:
    """µs of CPU per job of every process, median over the rounds."""
    columns: list[tuple[str, str, str, int | None]] = [("scenario", "scenario", "<", None)]
    names = ["gateway", "redis", "worker", "loadgen", "client"]
    columns += [(name, name, ">", 0) for name in names]
    columns.append(("total", "total µs/job", ">", 0))
    shown = []
    for pattern in (
        "echo-200-in-flight",
        "bullmq-200-in-flight",
        f"python-{python_shape}-200-in-flight",
        "celery-200-in-flight",
    ):
        row = find(medians, pattern)
        if row is None or "cpu_us_per_job" not in row:
            continue
        line: dict[str, Any] = {"scenario": row["scenario"], "total": row["cpu_us_per_job"]}
        for part in CPU_PARTS[family(row)]:
            line[part.removesuffix("_cpu_s")] = row[part] * 1e6 / row["cpu_jobs"]
        shown.append(line)
    return table(columns, shown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--python-shape", default="2x8")
    parser.add_argument("--versions", default="")
    args = parser.parse_args()

    runs = load(args.logs)
    medians = median_rows(runs, args.commit)
    verdicts = targets(medians, args.python_shape)
    rounds = max((row["round"] for row in runs), default=0)
    print(f"median of {rounds} round(s), each jobgate, BullMQ and Celery back to back:")
    print(table(COLUMNS, medians))
    print("\nevery round (jobs/s, p50 ms, p99 ms):")
    for scenario in (row["scenario"] for row in medians):
        figures = [
            f"{cell(row.get('jobs_per_s'), 0)}/s {cell(row.get('p50_ms'), 2)} "
            f"{cell(row.get('p99_ms'), 2)}"
            for row in runs
            if row["scenario"] == scenario
        ]
        print(f"  {scenario:<28} " + " | ".join(figures))
    print("\ntargets (ratio = jobgate / other, medians):")
    print(target_lines(verdicts))
    print("\nCPU per job at 200 in flight, µs, every process (median of the rounds):")
    print(cpu_lines(medians, args.python_shape))
    report = {
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": args.commit,
        "versions": args.versions,
        "python_shape": args.python_shape,
        "rounds": rounds,
        "medians": medians,
        "targets": verdicts,
        "runs": runs,
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
