#!/usr/bin/env bash
# `make bench`: the standard benchmark scenarios of jobgate, on this machine.
#
# Builds the release binaries, starts its own redis-server, gateway and
# workers on free loopback ports, runs the scenarios one after another,
# prints one table and writes the same figures to target/bench/latest.json
# (one object per scenario). Everything it starts is stopped on exit.
#
# Redis runs without persistence (no AOF, no snapshots): the benchmark
# measures the gateway and the Redis path, not the disk. With
# `appendfsync always` (the test harness's setting) every write would also
# wait for an fsync.
#
# Environment:
#   BENCH_QUICK=1         smaller counts (a smoke run of the whole suite)
#   BENCH_SKIP_BUILD=1    use the binaries already in target/release
#   BENCH_SKIP_PYTHON=1   skip the Python worker scenarios
#   BENCH_GATEWAY_LOG     the gateway's JOBGATE_LOG (default: info, as deployed)
#   BENCH_IDLE_SESSIONS   sessions of the idle scenario (default 10000)
#   BENCH_ONLY            run only the scenarios whose name matches this
#                         regular expression (e.g. 'echo-200|fanout')
#   BENCH_PYTHON_SHAPES   the Python worker's <processes>x<threads> shapes at
#                         200 in flight (default "1x4 1x16 2x8"; the first
#                         one also runs python-sequential)
#   BENCH_OUT             where results and logs go (default target/bench)
#   BENCH_BIN_DIR         run the binaries in this directory instead (another
#                         tree's target/release: old against new); no build
#   BENCH_GATEWAY_THREADS the gateway's JOBGATE_THREADS (default 1)
#   BENCH_FANOUT_THREADS  the gateway's and the load generator's threads in
#                         the fan-out scenario (default 0: one per CPU)
#   BENCH_TOOL_THREADS    runtime threads of the load generator and the echo
#                         worker (default 1)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

out="${BENCH_OUT:-$root/target/bench}"
logs="$out/logs"
results="$out/results.jsonl"
rm -rf "$logs"
mkdir -p "$logs" "$out/redis"
: >"$results"

quick=${BENCH_QUICK:-0}
scale() { if [ "$quick" = 1 ]; then echo "$2"; else echo "$1"; fi; }

log() { printf '==> %s\n' "$*" >&2; }
fail() { printf 'bench: %s\n' "$*" >&2; exit 1; }
# shellcheck source=benches/lib.sh
. "$root/benches/lib.sh"

# --- processes -------------------------------------------------------------

pids=()
worker_pids=()

cleanup() {
  trap - EXIT INT TERM
  local pid
  for pid in "${worker_pids[@]}" "${pids[@]}"; do
    stop_pid "$pid"
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# --- set-up ------------------------------------------------------------------

command -v redis-server >/dev/null || fail "redis-server is missing (make deps installs it)"
command -v curl >/dev/null || fail "curl is missing"

# Thousands of sockets: the gateway and the load generator each need a
# file descriptor per connection.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fd_limit=$(ulimit -n)
idle_sessions=${BENCH_IDLE_SESSIONS:-$(scale 10000 2000)}
if [ "$fd_limit" != unlimited ] && [ "$fd_limit" -lt $((idle_sessions + 1000)) ]; then
  idle_sessions=$((fd_limit - 1000))
  log "open-file limit is $fd_limit: the idle scenario opens $idle_sessions sessions"
fi

# BENCH_BIN_DIR runs the binaries of another build (an older tree's, to
# measure old against new back to back); nothing is built then.
bin_dir=${BENCH_BIN_DIR:-$root/target/release}
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ] && [ -z "${BENCH_BIN_DIR:-}" ]; then
  log "building release binaries"
  cargo build --release -p jobgate -p jobgate-loadgen -p jobgate-echo-worker
fi
gateway_bin="$bin_dir/jobgate"
loadgen_bin="$bin_dir/jobgate-loadgen"
echo_bin="$bin_dir/jobgate-echo-worker"
# Gateway, Redis, worker and load generator share the machine's cores: for
# many small jobs, one runtime thread each for the gateway (JOBGATE_THREADS)
# and the Rust tools does better than one per CPU on two cores. Fan-out (one
# event written to 2,000 connections at once, and read by as many) is
# parallel work: there the gateway and the load generator get one thread
# per CPU (benches/RESULTS.md has both figures). 0 means one per CPU.
gateway_threads=${BENCH_GATEWAY_THREADS:-1}
tool_threads=${BENCH_TOOL_THREADS:-1}
fanout_threads=${BENCH_FANOUT_THREADS:-0}
python_worker="$root/.venv/bin/jobgate-worker"

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$out/redis" \
  --appendonly no --save "" --stream-node-max-bytes 1024 --logfile "$logs/redis.log" &
redis_pid=$!
pids+=("$redis_pid")
redis_url="redis://127.0.0.1:$redis_port"
for _ in $(seq 1 100); do
  redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.05
done
redis-cli -p "$redis_port" ping >/dev/null || fail "redis-server did not start; see $logs/redis.log"

# The gateway runs with its defaults except where one load generator (a
# single owner, from one address) would trip the per-owner and per-session
# limits meant for real clients: those are raised so far that they never
# trigger, while the code that enforces them still runs on every request.
gateway_pid=""
gateway_port=""
# start_gateway [threads]: a fresh gateway (JOBGATE_THREADS, default
# $gateway_threads).
# A free port can still be taken by the time the gateway binds it (an
# outgoing connection's local port): then it tries another.
start_gateway() {
  if [ -n "$gateway_pid" ]; then
    stop_pid "$gateway_pid"
  fi
  local attempt
  for attempt in 1 2 3 4 5; do
    launch_gateway "$@"
    if wait_ready; then
      return
    fi
    kill -0 "$gateway_pid" 2>/dev/null && break
    log "the gateway could not start (attempt $attempt); trying another port"
  done
  fail "the gateway did not become ready; see $logs/gateway.log"
}

# wait_ready: whether the gateway answers /readyz before it exits or 5 s pass.
wait_ready() {
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$gateway_port/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$gateway_pid" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

launch_gateway() {
  gateway_port=$(free_port)
  JOBGATE_AUTH=none \
    JOBGATE_REDIS_URL="$redis_url" \
    JOBGATE_LISTEN="127.0.0.1:$gateway_port" \
    JOBGATE_MAX_CONNECTIONS=$((idle_sessions + 5000)) \
    JOBGATE_MAX_CONNECTIONS_PER_OWNER=$((idle_sessions + 5000)) \
    JOBGATE_SUBMITS_PER_MINUTE=1000000000 \
    JOBGATE_WS_MESSAGES_PER_S=1000000 \
    JOBGATE_LOG="${BENCH_GATEWAY_LOG:-info}" \
    JOBGATE_THREADS="${1:-$gateway_threads}" \
    "$gateway_bin" 2>>"$logs/gateway.log" &
  gateway_pid=$!
  pids+=("$gateway_pid")
}

stop_workers() {
  local pid
  for pid in "${worker_pids[@]}"; do
    stop_pid "$pid"
  done
  worker_pids=()
}

# Waits until a worker named $1 has registered the `echo` kind.
wait_registered() {
  for _ in $(seq 1 200); do
    if redis-cli -p "$redis_port" hget jobgate:kinds:v2 echo 2>/dev/null | grep -q "\"$1"; then
      return
    fi
    sleep 0.05
  done
  fail "worker $1 did not register; see $logs"
}

start_echo_worker() {
  local runtime=()
  if [ "$tool_threads" != 0 ]; then runtime=(TOKIO_WORKER_THREADS="$tool_threads"); fi
  env "${runtime[@]}" "$echo_bin" --redis-url "$redis_url" --consumer bench-echo "$@" 2>>"$logs/echo-worker.log" &
  worker_pids+=("$!")
  wait_registered bench-echo
}

# start_python_workers <processes> <concurrency>
start_python_workers() {
  local i
  for i in $(seq 1 "$1"); do
    (cd "$root" && JOBGATE_REDIS_URL="$redis_url" exec "$python_worker" examples.pricing:worker \
      --consumer "bench-py-$i" --concurrency "$2" 2>>"$logs/python-worker.log") &
    worker_pids+=("$!")
  done
  wait_registered bench-py-
  sleep 1 # let every process reach its first read
}

# wanted <name>…: whether BENCH_ONLY selects any of these scenarios.
wanted() {
  local name
  for name in "$@"; do
    if [ -z "${BENCH_ONLY:-}" ] || [[ $name =~ $BENCH_ONLY ]]; then
      return 0
    fi
  done
  return 1
}

# scenario <name> <loadgen args…>: one JSON object appended to the results,
# and Redis's per-command counts of the scenario in logs/commandstats-<name>.txt.
scenario() {
  local name=$1
  shift
  wanted "$name" || return 0
  log "$name"
  local workers
  workers=$(IFS=,; echo "${worker_pids[*]}")
  redis-cli -p "$redis_port" config resetstat >/dev/null
  local threads=${scenario_threads:-$tool_threads} runtime=()
  if [ "$threads" != 0 ]; then runtime=(TOKIO_WORKER_THREADS="$threads"); fi
  if ! env "${runtime[@]}" "$loadgen_bin" --url "http://127.0.0.1:$gateway_port" --scenario "$name" --json \
    --gateway-pid "$gateway_pid" --redis-pid "$redis_pid" \
    ${workers:+--worker-pids "$workers"} "$@" >>"$results" 2>>"$logs/loadgen.log"; then
    printf '{"scenario":"%s","errors":1,"note":"the load generator failed; see %s/loadgen.log"}\n' \
      "$name" "$logs" >>"$results"
  fi
  redis-cli -p "$redis_port" info commandstats >"$logs/commandstats-$name.txt" 2>/dev/null || true
  { redis-cli -p "$redis_port" dbsize; redis-cli -p "$redis_port" info memory; } >"$logs/memory-$name.txt" 2>/dev/null || true
  # Another process on the machine may have stopped ours: say so, and go on
  # with fresh ones rather than measuring a dead gateway.
  if ! kill -0 "$redis_pid" 2>/dev/null; then
    fail "redis-server exited during $name; see $logs/redis.log"
  fi
  if ! kill -0 "$gateway_pid" 2>/dev/null; then
    log "the gateway exited during $name (see $logs/gateway.log); starting a new one"
    start_gateway
  fi
}

machine | tee "$out/machine.txt" >&2
read -r load _ </proc/loadavg
if awk -v l="$load" 'BEGIN { exit !(l > 0.5) }'; then
  log "the machine is busy (load average $load): other processes compete for the cores; see other_cpu_s"
fi

# --- scenarios -------------------------------------------------------------

read -r -a python_shapes <<<"${BENCH_PYTHON_SHAPES:-1x4 1x16 2x8}"
idle_scenario="idle-$idle_sessions-ws"
echo_scenarios=(echo-sequential echo-200-in-flight echo-sse-per-job push-ws-100-in-flight
  poll-100-in-flight fanout-1000-sse-1000-ws "$idle_scenario")
python_scenarios=(python-sequential)
for shape in "${python_shapes[@]}"; do
  python_scenarios+=("python-$shape-200-in-flight")
done

if wanted "${echo_scenarios[@]}"; then
  start_gateway
  start_echo_worker

  scenario echo-sequential --mode ws --jobs "$(scale 1000 300)" --warmup 100 \
    --target 'p50_ms<=1' --target 'p99_ms<=3'
  scenario echo-200-in-flight --mode ws --jobs 200000 --warmup 2000 --concurrency 200 --sessions 20 \
    --duration "$(scale 15 3)" --target 'jobs_per_s>=10000'
  scenario echo-sse-per-job --mode sse --jobs "$(scale 2000 200)" --warmup 100 --concurrency 20
  scenario push-ws-100-in-flight --mode ws --jobs "$(scale 1000 200)" --concurrency 100 --sessions 100
  scenario poll-100-in-flight --mode poll --jobs "$(scale 1000 200)" --concurrency 100 \
    --poll-interval-ms 2000 --compare-with push-ws-100-in-flight
  if wanted fanout-1000-sse-1000-ws; then
    start_gateway "$fanout_threads"
  fi
  scenario_threads=$fanout_threads scenario fanout-1000-sse-1000-ws --mode fanout --sessions 1000 --sse-streams 1000 \
    --fanout-delay-ms 5000 --fanout-steps 20 --fanout-step-ms 100 --target 'p99_ms<=50'

  if wanted "$idle_scenario"; then
    # A fresh gateway, so the idle sessions' memory is not served from what
    # earlier scenarios freed.
    start_gateway
    scenario "$idle_scenario" --mode idle --sessions "$idle_sessions" --connect-concurrency 200 \
      --target 'rss_per_session_kb<=20'
  fi
  stop_workers
fi

if [ "${BENCH_SKIP_PYTHON:-0}" != 1 ] && [ -x "$python_worker" ] && wanted "${python_scenarios[@]}"; then
  start_gateway
  # The first shape (by default one process with the default 4 handler
  # threads), then more threads and more processes (each process has one
  # reader and its own interpreter lock).
  first=${python_shapes[0]}
  start_python_workers "${first%x*}" "${first#*x}"
  scenario python-sequential --mode ws --jobs "$(scale 1000 200)" --warmup 100 --target 'p50_ms<=3'
  for shape in "${python_shapes[@]}"; do
    wanted "python-$shape-200-in-flight" || continue
    if [ "$shape" != "$first" ]; then
      stop_workers
      start_python_workers "${shape%x*}" "${shape#*x}"
    fi
    first=""
    scenario "python-$shape-200-in-flight" --mode ws --jobs 100000 --warmup 500 --concurrency 200 \
      --sessions 20 --duration "$(scale 10 3)" --target 'jobs_per_s>=1000'
  done
  stop_workers
elif [ "${BENCH_SKIP_PYTHON:-0}" != 1 ] && ! [ -x "$python_worker" ]; then
  log "skipping the Python worker scenarios: $python_worker is missing (make venv)"
fi

# --- report ------------------------------------------------------------------

echo
machine
"$loadgen_bin" --mode report --input "$results" --output "$out/latest.json"
echo "figures: $out/latest.json; logs: $logs"
