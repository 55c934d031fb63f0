#!/usr/bin/env bash
# `make bench-compare`: jobgate, BullMQ and Celery on this machine, in one
# sitting (see README.md).
#
# Builds jobgate's release binaries, installs the pinned BullMQ and Celery
# locally (bullmq/node_modules, .venv), then runs rounds back to back, each
# round all three systems one after the other:
#   jobgate   benches/run.sh's echo-sequential, echo-200-in-flight and
#             python-<shape>-200-in-flight (its own Redis, gateway, workers)
#   BullMQ    bullmq-sequential, bullmq-200-in-flight
#   Celery    celery-sequential, celery-200-in-flight
# and prints the median of each figure over the rounds, the issue's target
# ratios (met or not) and CPU per job over all processes, and writes them to
# target/bench/compare.json. Everything it starts is stopped on exit.
#
# Environment:
#   COMPARE_QUICK=1           smaller counts and one round (a smoke run)
#   COMPARE_ROUNDS            rounds (default 3; 1 with COMPARE_QUICK=1)
#   COMPARE_ONLY              jobgate, bullmq or celery: run only those (a
#                             space-separated list)
#   COMPARE_PYTHON_SHAPE      the Python worker's <processes>x<threads> at
#                             200 in flight (default 2x64; Celery runs 4
#                             prefork processes)
#   COMPARE_SKIP_BUILD=1      use the binaries already in target/release
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

out="$root/target/bench"
logs="$out/compare-logs"
rm -rf "$logs"
mkdir -p "$logs/redis"

log() { printf '==> %s\n' "$*" >&2; }
fail() { printf 'compare: %s\n' "$*" >&2; exit 1; }
# shellcheck source=benches/lib.sh
. "$root/benches/lib.sh"

quick=${COMPARE_QUICK:-0}
if [ "$quick" = 1 ]; then
  counts=(--jobs 300 --warmup 100 --in-flight-warmup 500 --duration 3)
  rounds=${COMPARE_ROUNDS:-1}
else
  counts=(--jobs 1000 --warmup 100 --in-flight-warmup 2000 --duration 15)
  rounds=${COMPARE_ROUNDS:-3}
fi
python_shape=${COMPARE_PYTHON_SHAPE:-2x64}
[[ $python_shape =~ ^[1-9][0-9]*x[1-9][0-9]*$ ]] || fail "COMPARE_PYTHON_SHAPE must look like 2x8"
[[ $rounds =~ ^[1-9][0-9]*$ ]] || fail "COMPARE_ROUNDS must be a positive number"

selected() { [ -z "${COMPARE_ONLY:-}" ] || [[ " $COMPARE_ONLY " == *" $1 "* ]]; }

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

command -v python3 >/dev/null || fail "python3 is missing"
if selected bullmq; then
  command -v node >/dev/null || fail "node is missing (Node.js 18 or later, for BullMQ)"
  command -v npm >/dev/null || fail "npm is missing"
fi
if selected jobgate; then
  command -v cargo >/dev/null || fail "cargo is missing (for jobgate's release binaries)"
  log "installing redis-server and the worker's venv (make deps)"
  make -C "$root" --no-print-directory deps >"$logs/deps.log" 2>&1 ||
    fail "make deps failed; see $logs/deps.log"
  if [ "${COMPARE_SKIP_BUILD:-0}" != 1 ]; then
    log "building jobgate's release binaries"
    (cd "$root" && cargo build --release --locked -p jobgate -p jobgate-loadgen -p jobgate-echo-worker) \
      >"$logs/build.log" 2>&1 || fail "cargo build failed; see $logs/build.log"
  fi
fi
command -v redis-server >/dev/null || "$root/scripts/install-redis.sh"

if selected bullmq; then
  log "installing BullMQ (npm ci)"
  npm ci --prefix "$here/bullmq" --no-audit --no-fund --loglevel=error >"$logs/npm.log" 2>&1 ||
    fail "npm ci failed; see $logs/npm.log"
fi
[ -x "$here/.venv/bin/python" ] || python3 -m venv "$here/.venv"
python="$here/.venv/bin/python"
if selected celery; then
  log "installing Celery (pip, $here/.venv)"
  "$python" -m pip install --quiet --disable-pip-version-check \
    -r "$here/celery/requirements.txt" >"$logs/pip.log" 2>&1 ||
    fail "pip install failed; see $logs/pip.log"
fi

# BullMQ's and Celery's Redis (jobgate's run.sh starts its own, with the same flags).
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$logs/redis" \
  --appendonly no --save "" --stream-node-max-bytes 1024 --logfile "$logs/redis.log" &
pids+=("$!")
for _ in $(seq 1 100); do
  redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.05
done
redis-cli -p "$redis_port" ping >/dev/null || fail "redis-server did not start; see $logs/redis.log"
export REDIS_URL="redis://127.0.0.1:$redis_port"

machine | tee "$logs/machine.txt" >&2
versions="$(redis-server --version | cut -d' ' -f1-3), $("$python" --version)"
if command -v node >/dev/null; then versions+=", node $(node --version)"; fi
log "$versions"
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  commit+="+changes"
fi

# --- benchmarks --------------------------------------------------------------

# system <name> <round> <command…>: its JSON lines go to round-<n>/<name>.jsonl;
# a failure leaves an error line, so the table says so instead of silently
# missing a system.
system() {
  local name=$1 round=$2
  shift 2
  selected "$name" || return 0
  log "round $round: $name"
  local results="$logs/round-$round/$name.jsonl"
  mkdir -p "$logs/round-$round"
  : >"$results"
  "$@" >>"$results" 2>"$logs/round-$round/$name.log" &
  pids+=("$!")
  if ! wait "$!"; then
    printf '{"scenario":"%s","errors":1,"system":"failed: see %s"}\n' \
      "$name" "$logs/round-$round/$name.log" >>"$results"
  fi
}

# jobgate_round <round>: jobgate's scenarios through benches/run.sh (its own
# Redis, gateway and workers, stopped by its own exit); its results.jsonl
# becomes the round's jobgate.jsonl.
jobgate_round() {
  local round=$1
  selected jobgate || return 0
  log "round $round: jobgate"
  local dir="$logs/round-$round"
  mkdir -p "$dir"
  env BENCH_OUT="$dir/jobgate-run" \
    BENCH_SKIP_BUILD=1 \
    BENCH_QUICK="$quick" \
    BENCH_PYTHON_SHAPES="$python_shape" \
    BENCH_ONLY="^(echo-sequential|echo-200-in-flight|python-$python_shape-200-in-flight)\$" \
    "$root/benches/run.sh" >"$dir/jobgate.log" 2>&1 &
  pids+=("$!")
  if wait "$!" && [ -s "$dir/jobgate-run/results.jsonl" ]; then
    cp "$dir/jobgate-run/results.jsonl" "$dir/jobgate.jsonl"
  else
    printf '{"scenario":"jobgate","errors":1,"system":"failed: see %s"}\n' "$dir/jobgate.log" \
      >"$dir/jobgate.jsonl"
  fi
}

for round in $(seq 1 "$rounds"); do
  jobgate_round "$round"
  redis-cli -p "$redis_port" flushall >/dev/null # each system starts on an empty Redis
  system bullmq "$round" node "$here/bullmq/bench.mjs" "${counts[@]}"
  redis-cli -p "$redis_port" flushall >/dev/null
  system celery "$round" "$python" "$here/celery/bench.py" "${counts[@]}"
done

# --- report ------------------------------------------------------------------

echo
machine
"$python" "$here/report.py" --logs "$logs" --output "$out/compare.json" --commit "$commit" \
  --python-shape "$python_shape" --versions "$versions"
echo "figures: $out/compare.json; logs: $logs"
