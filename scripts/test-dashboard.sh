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
work_dir="$(mktemp -d)"
pids=()
cleanup() {
  local pid
  # The gateway is the scenario's child; this stops it should the scenario not.
  [ ! -s "$work_dir/gateway.pid" ] || pids+=("$(cat "$work_dir/gateway.pid")")
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work_dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits up to 30 s for a command to succeed.
wait_for() {
  local what=$1
  shift
  for _ in $(seq 1 150); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "--- gateway log"; tail -n 20 "$work_dir/gateway.log" 2>/dev/null || true
  echo "--- worker log"; tail -n 20 "$work_dir/worker.log" 2>/dev/null || true
  fail "$what did not happen within 30 s"
}

redis_port="$(free_port)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$work_dir" --logfile "$work_dir/redis.log" &
pids+=("$!")
wait_for "redis-server to answer" redis-cli -p "$redis_port" ping

export JOBGATE_REDIS_URL="redis://127.0.0.1:$redis_port"
export JOBGATE_LISTEN="127.0.0.1:$(free_port)"
export JOBGATE_AUTH=jwt
JOBGATE_JWT_SECRET="$(head -c 32 /dev/urandom | base64 | tr -d '\n/+=')"
export JOBGATE_JWT_SECRET

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
