#!/usr/bin/env bash
# The conformance suite against the TypeScript client, from a fresh clone:
#  1. the project's .venv (`make venv` when it is missing) gets the suite's
#     pinned requirements (requirements.txt);
#  2. clients/typescript: `npm ci` when node_modules is missing or older than
#     package-lock.json, then the driver and the client's sources are compiled
#     by conformance/tsconfig.json into clients/typescript/conformance/build
#     (its own output: a `npm run build` elsewhere, which empties dist/, never
#     pulls the driver away mid-run);
#  3. the suite's own tests (pytest), then every scenario against the scripted
#     fake gateway and replayed against the real one (JOBGATE_BIN, default
#     target/debug/jobgate as `cargo test` builds it; redis-server on PATH).
# Prints one summary; exits non-zero when anything failed. Reports go to
# $CONFORMANCE_REPORT_DIR (default target/conformance).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

fail() {
  echo "conformance: $*" >&2
  exit 1
}

venv=.venv
if [[ ! -x $venv/bin/python || ! -x $venv/bin/jobgate-worker ]]; then
  make --no-print-directory venv || fail "make venv failed"
fi
$venv/bin/pip install --quiet --disable-pip-version-check -r proto-schemas/conformance/requirements.txt ||
  fail "installing proto-schemas/conformance/requirements.txt into $venv failed"

command -v node >/dev/null || fail "node is required (Node.js 20)"
command -v redis-server >/dev/null || fail "redis-server is required (make redis-server)"
export JOBGATE_BIN="${JOBGATE_BIN:-target/debug/jobgate}"
[[ -x $JOBGATE_BIN ]] || fail "$JOBGATE_BIN is missing (cargo build -p jobgate --bin jobgate)"

(
  cd clients/typescript || exit 1
  if [[ ! -d node_modules || package-lock.json -nt node_modules/.package-lock.json ]]; then
    npm ci --no-audit --no-fund --silent || exit 1
  fi
  node_modules/.bin/tsc -p conformance/tsconfig.json
) || fail "building the TypeScript client's driver failed"
driver="node clients/typescript/conformance/build/conformance/driver.js"

report_dir="${CONFORMANCE_REPORT_DIR:-target/conformance}"
mkdir -p "$report_dir"
started=$SECONDS

tests=passed
(cd proto-schemas/conformance && ../../$venv/bin/python -m pytest -q -p no:cacheprovider) || tests=failed

# --real plays each scenario against the fake gateway, then replays it
# against the real one and compares what the app saw.
scenarios=passed
$venv/bin/python proto-schemas/conformance/run.py --client "$driver" --real \
  --report "$report_dir/typescript.json" | tee "$report_dir/typescript.txt"
[[ ${PIPESTATUS[0]} -eq 0 ]] || scenarios=failed

summary="$(tail -1 "$report_dir/typescript.txt")"
[[ $summary == *" passed, "*" failed" ]] || summary="did not finish (see above)"
echo "conformance (TypeScript client): suite tests $tests; scenarios $summary" \
  "(fake and real gateway) in $((SECONDS - started)) s; report $report_dir/typescript.json"
[[ $tests == passed && $scenarios == passed ]]
