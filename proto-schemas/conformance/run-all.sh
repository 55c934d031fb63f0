#!/usr/bin/env bash
# The conformance suite against the TypeScript client: installs the suite's
# requirements into the project's .venv (created by `make venv` when
# missing), builds clients/typescript (npm ci when node_modules is missing),
# runs the suite's own tests, every scenario against the fake gateway, then
# the replay against the real gateway (JOBGATE_BIN, default
# target/debug/jobgate, as `cargo test` builds it). Prints a summary; exits
# non-zero when anything failed. Reports: $CONFORMANCE_REPORT_DIR (default
# target/conformance).
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=.venv
[[ -x $venv/bin/python ]] || make venv
$venv/bin/pip install --quiet -r proto-schemas/conformance/requirements.txt

(cd clients/typescript && { [[ -d node_modules ]] || npm ci --silent; } && npm run --silent build)

report_dir="${CONFORMANCE_REPORT_DIR:-target/conformance}"
mkdir -p "$report_dir"
export JOBGATE_BIN="${JOBGATE_BIN:-target/debug/jobgate}"
[[ -x $JOBGATE_BIN ]] || { echo "run-all.sh: $JOBGATE_BIN is missing (cargo build --bin jobgate)" >&2; exit 1; }
driver="node clients/typescript/dist/conformance/driver.js"

status=0
$venv/bin/python -m pytest -q -p no:cacheprovider proto-schemas/conformance || status=1
# --real runs each scenario against the fake first, then replays it.
$venv/bin/python proto-schemas/conformance/run.py --client "$driver" --real \
  --report "$report_dir/typescript.json" | tee "$report_dir/typescript.txt" || status=1
echo "conformance (TypeScript client): $(tail -1 "$report_dir/typescript.txt"); report $report_dir/typescript.json"
exit $status
