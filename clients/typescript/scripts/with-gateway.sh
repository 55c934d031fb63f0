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

work_dir="$(mktemp -d)"
pids=()
cleanup() {
  local pid
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
