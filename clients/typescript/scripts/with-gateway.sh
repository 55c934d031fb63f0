#!/usr/bin/env bash
# Runs a command against a real jobgate on loopback: its own redis-server,
# the debug gateway (JWT auth) and the Python pricing worker, stopped again
# when the command ends. The command gets JOBGATE_TEST_URL, JOBGATE_TEST_TOKEN,
# JOBGATE_JWT_SECRET, and JOBGATE_BIN + JOBGATE_REDIS_URL (so a test can run
# a second gateway on the same Redis and restart it).
#
#   scripts/with-gateway.sh npm run test:integration
#
# JOBGATE_BIN (default <repo>/target/debug/jobgate) and JOBGATE_WORKER_BIN
# (default <repo>/.venv/bin/jobgate-worker) pick the binaries.
set -euo pipefail
package_dir="$(cd "$(dirname "$0")/.." && pwd)"
repo_dir="$(cd "$package_dir/../.." && pwd)"
gateway_bin="${JOBGATE_BIN:-$repo_dir/target/debug/jobgate}"
worker_bin="${JOBGATE_WORKER_BIN:-$repo_dir/.venv/bin/jobgate-worker}"

fail() {
  echo "with-gateway: $*" >&2
  exit 1
}
[ -x "$gateway_bin" ] || fail "no gateway at $gateway_bin (cargo build -p jobgate)"
[ -x "$worker_bin" ] || fail "no worker CLI at $worker_bin (make venv)"
command -v redis-server >/dev/null || fail "redis-server is required (scripts/install-redis.sh)"

# shellcheck source=scripts/lib/loopback-stack.sh
. "$repo_dir/scripts/lib/loopback-stack.sh"
stack_init
start_redis
export_gateway_env
export JOBGATE_BIN="$gateway_bin"

"$gateway_bin" >"$work_dir/gateway.log" 2>&1 &
pids+=("$!")
(cd "$repo_dir" && exec "$worker_bin" --consumer ts-client-test-1 examples.pricing:worker) >"$work_dir/worker.log" 2>&1 &
pids+=("$!")
wait_for "the gateway's /readyz" curl -fsS "http://$JOBGATE_LISTEN/readyz"
wait_for "the worker registering kind echo" bash -c "[ -n \"\$(redis-cli -p $redis_port hget jobgate:kinds:v2 echo)\" ]"
wait_for "the worker registering kind mc_option_price" bash -c "[ -n \"\$(redis-cli -p $redis_port hget jobgate:kinds:v2 mc_option_price)\" ]"

export JOBGATE_TEST_URL="http://$JOBGATE_LISTEN"
JOBGATE_TEST_TOKEN="$("$gateway_bin" token --sub ts-client-test)"
export JOBGATE_TEST_TOKEN

status=0
"$@" || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- gateway log (last lines)"; tail -n 30 "$work_dir/gateway.log" || true
  echo "--- worker log (last lines)"; tail -n 30 "$work_dir/worker.log" || true
fi
exit "$status"
