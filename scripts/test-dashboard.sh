#!/usr/bin/env bash
# The dashboard in a real browser: headless Chromium (Debian's chromium,
# driven by playwright-core from tests/browser) against its own redis-server,
# the debug gateway that `cargo test` built (JWT auth) and the real Python
# pricing worker, all on loopback. The scenario is tests/browser/dashboard.mjs,
# which starts the gateway itself so that it can restart it mid-job;
# screenshots go to target/dashboard/*.png.
#
# First, without a browser: the dashboard's copy of @jobgate/client's bundle
# (examples/dashboard/jobgate-client.js) must equal a fresh build of
# clients/typescript, and the page's pure modules pass their unit tests
# (tests/browser/*.test.mjs).
#
# Installs what it needs when missing (chromium with apt-get, playwright-core
# with npm ci). Stops every process it started, also on failure. Prints
# "N passed, M failed" last and exits non-zero on a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

# The whole run, after installs, is bounded by this.
readonly run_timeout_s=240
gateway_bin="${JOBGATE_BIN:-./target/debug/jobgate}"
worker_bin="${JOBGATE_WORKER_BIN:-.venv/bin/jobgate-worker}"

fail() {
  echo "test-dashboard: $*" >&2
  echo "0 passed, 1 failed"
  exit 1
}

# --- Installs ------------------------------------------------------------------
if [ ! -x /usr/bin/chromium ]; then
  echo "test-dashboard: installing chromium" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null ||
    fail "could not install chromium (apt-get install chromium)"
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  command -v npm >/dev/null || fail "npm is required (apt-get install npm)"
  (cd tests/browser && npm ci --no-audit --no-fund --silent) || fail "npm ci in tests/browser failed"
fi
[ -x "$gateway_bin" ] || fail "no gateway at $gateway_bin; run 'cargo test' or 'cargo build -p jobgate' first"
[ -x "$worker_bin" ] || fail "no worker CLI at $worker_bin; run 'make venv'"

# --- The client bundle and the page's modules ------------------------------------
client_dir=clients/typescript
if [ ! -d "$client_dir/node_modules" ]; then
  (cd "$client_dir" && npm ci --no-audit --no-fund --silent) || fail "npm ci in $client_dir failed"
fi
build_output="$(cd "$client_dir" && npm run build --silent 2>&1)" ||
  { echo "$build_output" >&2; fail "npm run build in $client_dir failed"; }
cmp -s "$client_dir/dist-bundle/jobgate-client.js" examples/dashboard/jobgate-client.js ||
  fail "examples/dashboard/jobgate-client.js is not the client's fresh bundle: run npm run build in clients/typescript and copy dist-bundle/jobgate-client.js to examples/dashboard/ (then rebuild the gateway)"
node --test tests/browser/*.test.mjs >/dev/null 2>&1 || {
  node --test tests/browser/*.test.mjs || true
  fail "the dashboard's unit tests (node --test tests/browser/*.test.mjs) failed"
}

# --- Services ------------------------------------------------------------------
# shellcheck source=scripts/lib/loopback-stack.sh
. scripts/lib/loopback-stack.sh
stack_init
start_redis
export_gateway_env

"$worker_bin" --consumer dashboard-test-1 examples.pricing:worker >"$work_dir/worker.log" 2>&1 &
pids+=("$!")
wait_for "the worker registering kind fail" bash -c "[ -n \"\$(redis-cli -p $redis_port hget jobgate:kinds:v2 fail)\" ]"

admin_token="$("$gateway_bin" token --sub dashboard-admin --admin)"
user_token="$("$gateway_bin" token --sub dashboard-user)"

# --- The browser scenario ------------------------------------------------------
status=0
BASE_URL="http://$JOBGATE_LISTEN" ADMIN_TOKEN="$admin_token" USER_TOKEN="$user_token" REDIS_PORT="$redis_port" \
  SCREENSHOT_DIR="$PWD/target/dashboard" GATEWAY_BIN="$gateway_bin" GATEWAY_LOG="$work_dir/gateway.log" \
  GATEWAY_PID_FILE="$work_dir/gateway.pid" \
  timeout --kill-after=5 "$run_timeout_s" node tests/browser/dashboard.mjs || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- gateway log (last lines)"; tail -n 20 "$work_dir/gateway.log" || true
  echo "--- worker log (last lines)"; tail -n 20 "$work_dir/worker.log" || true
  [ "$status" -ne 124 ] || echo "0 passed, 1 failed (the scenario took over $run_timeout_s s)"
fi
exit "$status"
