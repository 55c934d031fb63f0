"""Prints the comparison's table and writes its figures as one JSON array.

Usage: report.py RESULTS_JSONL OUTPUT_JSON [JOBGATE_LATEST_JSON]

The table also shows jobgate's comparable scenarios from the last
`make bench` (target/bench/latest.json) when that file exists; the JSON
array holds only the scenarios of this run.
"""

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

# jobgate's scenarios that do what the comparison's do.
JOBGATE_SCENARIOS = re.compile(r"^(echo|python)-(sequential|.*200-in-flight)$")

COLUMNS = [
    ("scenario", "scenario", "<", None),
    ("jobs", "jobs", ">", None),
    ("jobs_per_s", "jobs/s", ">", 0),
    ("p50_ms", "p50 ms", ">", 2),
    ("p90_ms", "p90 ms", ">", 2),
    ("p99_ms", "p99 ms", ">", 2),
    ("max_ms", "max ms", ">", 2),
    ("errors", "errors", ">", None),
    ("cpu_ms_per_job", "cpu ms/job", ">", 3),
    ("other_cpu_s", "other cpu s", ">", 1),
    ("system", "system", "<", None),
]


def cell(value: Any, places: int | None) -> str:
    if value is None:
        return "-"
    if places is not None and isinstance(value, int | float):
        return f"{value:.{places}f}"
    return str(value)


def jobgate_rows(path: Path) -> list[dict[str, Any]]:
    """jobgate's comparable scenarios, with CPU per job worked out as here.

    jobgate-loadgen counts CPU time over the whole scenario, warm-up
    included, so its CPU per job is a little high next to this run's.
    """
    rows = []
    for row in json.loads(path.read_text()):
        if not JOBGATE_SCENARIOS.match(row.get("scenario", "")) or not row.get("jobs"):
            continue
        parts = ("gateway_cpu_s", "redis_cpu_s", "worker_cpu_s", "loadgen_cpu_s")
        cpu_s = sum(row.get(part) or 0 for part in parts)
        rows.append({**row, "cpu_ms_per_job": cpu_s * 1000 / row["jobs"], "system": "jobgate"})
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    cells = [[cell(row.get(key), places) for key, _, _, places in COLUMNS] for row in rows]
    heads = [head for _, head, _, _ in COLUMNS]
    widths = [max(len(text) for text in column) for column in zip(heads, *cells, strict=True)]

    def line(texts: list[str]) -> str:
        aligned = (
            f"{text:{align}{width}}"
            for text, width, (_, _, align, _) in zip(texts, widths, COLUMNS, strict=True)
        )
        return " ".join(aligned).rstrip()

    return [line(heads), " ".join("-" * width for width in widths)] + [line(c) for c in cells]


def main() -> None:
    results, output = Path(sys.argv[1]), Path(sys.argv[2])
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    output.write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(table(rows)))
    latest = Path(sys.argv[3]) if len(sys.argv) > 3 else None
    if latest and latest.exists() and (jobgate := jobgate_rows(latest)):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(latest.stat().st_mtime))
        print(f"\njobgate, from {latest} (written {when}; not re-run here):")
        print("\n".join(table(jobgate)))


if __name__ == "__main__":
    main()
