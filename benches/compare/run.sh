#!/usr/bin/env bash
# BullMQ and Celery on this machine, measured like jobgate's `make bench`
# scenarios echo-sequential and echo-200-in-flight (see README.md).
#
# Installs the pinned dependencies locally (bullmq/node_modules, .venv),
# starts its own redis-server on a free loopback port without persistence,
# runs both benchmarks against it, prints one table (with jobgate's figures
# from target/bench/latest.json, when a `make bench` left them) and writes
# target/bench/compare.json. Everything it starts is stopped on exit.
#
# Environment:
#   COMPARE_QUICK=1   smaller counts (a smoke run, ~30 s)
#   COMPARE_ONLY      bullmq or celery: run only that one
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

out="$root/target/bench"
logs="$out/compare-logs"
results="$logs/results.jsonl"
rm -rf "$logs"
mkdir -p "$logs/redis"
: >"$results"

log() { printf '==> %s\n' "$*" >&2; }
fail() { printf 'compare: %s\n' "$*" >&2; exit 1; }
# shellcheck source=benches/lib.sh
. "$root/benches/lib.sh"

if [ "${COMPARE_QUICK:-0}" = 1 ]; then
  counts=(--jobs 300 --warmup 100 --in-flight-warmup 500 --duration 3)
else
  counts=(--jobs 1000 --warmup 100 --in-flight-warmup 2000 --duration 15)
fi

# --- processes -------------------------------------------------------------

pids=()

cleanup() {
  trap - EXIT
  local i
  # Newest first: the benchmarks (which stop their own workers), then Redis.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    stop_pid "${pids[i]}"
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT
# Interrupted: stop, through the EXIT trap, rather than go on to the report.
trap 'exit 130' INT
trap 'exit 143' TERM

# --- set-up ------------------------------------------------------------------

command -v node >/dev/null || fail "node is missing"
command -v npm >/dev/null || fail "npm is missing"
command -v python3 >/dev/null || fail "python3 is missing"
command -v redis-server >/dev/null || "$root/scripts/install-redis.sh"

log "installing BullMQ (npm ci) and Celery (pip, $here/.venv)"
npm ci --prefix "$here/bullmq" --no-audit --no-fund --loglevel=error >"$logs/npm.log" 2>&1 ||
  fail "npm ci failed; see $logs/npm.log"
[ -x "$here/.venv/bin/python" ] || python3 -m venv "$here/.venv"
"$here/.venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  -r "$here/celery/requirements.txt" >"$logs/pip.log" 2>&1 ||
  fail "pip install failed; see $logs/pip.log"
python="$here/.venv/bin/python"

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$logs/redis" \
  --appendonly no --save "" --logfile "$logs/redis.log" &
pids+=("$!")
for _ in $(seq 1 100); do
  redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.05
done
redis-cli -p "$redis_port" ping >/dev/null || fail "redis-server did not start; see $logs/redis.log"
export REDIS_URL="redis://127.0.0.1:$redis_port"

machine >&2
log "$(redis-server --version | cut -d' ' -f1-3), node $(node --version), $("$python" --version)"

# --- benchmarks --------------------------------------------------------------

# bench <name> <command…>: its JSON lines go to the results; a failure leaves
# an error line, so the table says so instead of silently missing a system.
bench() {
  local name=$1
  shift
  if [ -n "${COMPARE_ONLY:-}" ] && [ "$name" != "$COMPARE_ONLY" ]; then
    return 0
  fi
  log "$name"
  redis-cli -p "$redis_port" flushall >/dev/null # each system starts on an empty Redis
  "$@" "${counts[@]}" >>"$results" 2>"$logs/$name.log" &
  pids+=("$!")
  if ! wait "$!"; then
    printf '{"scenario":"%s","errors":1,"system":"failed: see %s"}\n' "$name" "$logs/$name.log" >>"$results"
  fi
}

bench bullmq node "$here/bullmq/bench.mjs"
bench celery "$python" "$here/celery/bench.py"

# --- report ------------------------------------------------------------------

echo
machine
"$python" "$here/report.py" "$results" "$out/compare.json" "$out/latest.json"
echo "figures: $out/compare.json; logs: $logs"
