#!/usr/bin/env bash
# `make bench-cluster`: what one job costs Redis on a single server and on a
# 3-master Redis Cluster, in one sitting, for the sizing figures in
# benches/RESULTS.md.
#
# For each layout it starts its own Redis (one server, or three masters
# joined by `redis-cli --cluster create`), one release gateway and Python
# workers (examples.pricing, kind `echo`), all on loopback, runs the same
# WebSocket load, and reads each Redis's `used_cpu_sys + used_cpu_user`
# and the gateway's and workers' CPU time (/proc) before and after. It
# prints one table and writes target/bench/cluster-sizing.json. Everything
# it starts is stopped on exit.
#
# Environment:
#   SIZING_JOBS         jobs per layout (default 6000)
#   SIZING_IN_FLIGHT    jobs in flight (default 100)
#   BENCH_SKIP_BUILD=1  use the binaries already in target/release
set -euo pipefail

fail() {
  echo "cluster-sizing: $*" >&2
  exit 1
}

root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=benches/lib.sh
. "$root/benches/lib.sh"

jobs=${SIZING_JOBS:-6000}
in_flight=${SIZING_IN_FLIGHT:-100}
out="$root/target/bench/cluster-sizing"
rm -rf "$out"
mkdir -p "$out"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -p jobgate -p jobgate-loadgen
fi
gateway_bin="$root/target/release/jobgate"
loadgen_bin="$root/target/release/jobgate-loadgen"
python_worker="$root/.venv/bin/jobgate-worker"

# start_redis <dir> [cluster]: one redis-server on a free port, in $started_port.
started_port=""
start_redis() {
  local port dir=$1 try
  local extra=()
  for try in 1 2 3 4 5; do
    port=$(free_port)
    # A cluster node also listens on port + 10000 (its bus).
    if [ "${2:-}" = cluster ]; then
      [ "$port" -lt 55000 ] || continue
      (exec 3<>"/dev/tcp/127.0.0.1/$((port + 10000))") 2>/dev/null && continue
      extra=(--cluster-enabled yes --cluster-node-timeout 2000
        --cluster-config-file "$dir/$port/nodes.conf")
    fi
    mkdir -p "$dir/$port"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir/$port" --appendonly no --save "" \
      --logfile "$dir/$port/redis.log" "${extra[@]}" >/dev/null 2>&1 &
    pids+=("$!")
    for _ in $(seq 1 100); do
      redis-cli -p "$port" ping >/dev/null 2>&1 && break
      sleep 0.05
    done
    if redis-cli -p "$port" ping >/dev/null 2>&1; then
      started_port=$port
      return
    fi
  done
  fail "redis-server did not start; see $dir/*/redis.log"
}

redis_cpu() { # <port>: CPU seconds Redis has used
  redis-cli -p "$1" info cpu | tr -d '\r' |
    awk -F: '/^used_cpu_(sys|user):/ { s += $2 } END { printf "%.4f", s }'
}

proc_cpu() { # <pid>…: CPU seconds of these processes and their children
  local ticks total=0 pid
  ticks=$(getconf CLK_TCK)
  for pid in "$@"; do
    [ -r "/proc/$pid/stat" ] || continue
    total=$((total + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat")))
  done
  awk -v t="$total" -v k="$ticks" 'BEGIN { printf "%.4f", t / k }'
}

# run_layout <name> <ports…>: gateway + workers against the Redis at ports
run_layout() {
  local name=$1
  shift
  local ports=("$@") urls=() port
  for port in "${ports[@]}"; do urls+=("redis://127.0.0.1:$port"); done
  local url
  url=$(IFS=,; echo "${urls[*]}")
  local gw_port
  gw_port=$(free_port)
  JOBGATE_AUTH=none JOBGATE_REDIS_URL="$url" JOBGATE_LISTEN="127.0.0.1:$gw_port" \
    JOBGATE_SUBMITS_PER_MINUTE=1000000000 JOBGATE_WS_MESSAGES_PER_S=1000000 \
    JOBGATE_MAX_CONNECTIONS_PER_OWNER=10000 \
    "$gateway_bin" 2>>"$out/gateway-$name.log" &
  local gw=$!
  pids+=("$gw")
  local workers=()
  for i in 1 2; do
    (cd "$root" && JOBGATE_REDIS_URL="$url" exec "$python_worker" examples.pricing:worker \
      --consumer "sizing-$name-$i" --concurrency 8 2>>"$out/worker-$name.log") &
    workers+=("$!")
    pids+=("$!")
  done
  for _ in $(seq 1 200); do
    curl -fsS "http://127.0.0.1:$gw_port/readyz" >/dev/null 2>&1 &&
      redis-cli -c -p "${ports[0]}" hget jobgate:kinds:v2 echo 2>/dev/null | grep -q sizing && break
    sleep 0.1
  done
  sleep 1
  # warm-up, not counted
  "$loadgen_bin" --url "http://127.0.0.1:$gw_port" --mode ws --jobs 500 --concurrency "$in_flight" \
    --sessions 10 --scenario warmup >/dev/null 2>&1 || true
  local before=() after=()
  for port in "${ports[@]}"; do before+=("$(redis_cpu "$port")"); done
  local gw_before workers_before
  gw_before=$(proc_cpu "$gw")
  workers_before=$(proc_cpu "${workers[@]}")
  "$loadgen_bin" --url "http://127.0.0.1:$gw_port" --mode ws --jobs "$jobs" \
    --concurrency "$in_flight" --sessions 10 --scenario "sizing-$name" \
    --json >"$out/loadgen-$name.json" 2>"$out/loadgen-$name.err"
  for port in "${ports[@]}"; do after+=("$(redis_cpu "$port")"); done
  local gw_after workers_after
  gw_after=$(proc_cpu "$gw")
  workers_after=$(proc_cpu "${workers[@]}")
  python3 - "$name" "$jobs" "$gw_before" "$gw_after" "$workers_before" "$workers_after" \
    "${before[*]}" "${after[*]}" "$out/loadgen-$name.json" >>"$out/results.jsonl" <<'EOF'
import json, sys
name, jobs = sys.argv[1], int(sys.argv[2])
gw = float(sys.argv[4]) - float(sys.argv[3])
wk = float(sys.argv[6]) - float(sys.argv[5])
before = [float(x) for x in sys.argv[7].split()]
after = [float(x) for x in sys.argv[8].split()]
per_node = [round((a - b) / jobs * 1e6, 1) for a, b in zip(after, before)]
try:
    load = json.load(open(sys.argv[9]))
    load = load[0] if isinstance(load, list) else load
except (OSError, ValueError):
    load = {}
print(json.dumps({
    "layout": name, "jobs": jobs,
    "jobs_per_s": load.get("jobs_per_s"), "errors": load.get("errors"),
    "redis_us_per_job": round(sum(per_node), 1), "redis_us_per_job_by_node": per_node,
    "gateway_us_per_job": round(gw / jobs * 1e6, 1), "workers_us_per_job": round(wk / jobs * 1e6, 1),
}))
EOF
  kill "$gw" "${workers[@]}" 2>/dev/null || true
  wait "$gw" "${workers[@]}" 2>/dev/null || true
}

# A single server.
start_redis "$out/single"
run_layout standalone "$started_port"

# Three masters.
masters=()
for _ in 1 2 3; do
  start_redis "$out/cluster" cluster
  masters+=("$started_port")
done
redis-cli --cluster create "${masters[@]/#/127.0.0.1:}" --cluster-yes >"$out/cluster-create.log" 2>&1
for _ in $(seq 1 100); do
  ok=1
  for port in "${masters[@]}"; do
    redis-cli -p "$port" cluster info | grep -q 'cluster_state:ok' || ok=0
  done
  [ "$ok" = 1 ] && break
  sleep 0.1
done
run_layout cluster-3-masters "${masters[@]}"

python3 - "$out/results.jsonl" "$root/target/bench/cluster-sizing.json" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
json.dump(rows, open(sys.argv[2], "w"), indent=2)
print(f"{'layout':<20}{'jobs':>7}{'jobs/s':>9}{'errors':>8}{'Redis µs/job':>14}  {'by master':<24}{'gateway µs/job':>16}{'workers µs/job':>16}")
for r in rows:
    by = "/".join(str(x) for x in r["redis_us_per_job_by_node"])
    jps = r["jobs_per_s"]
    print(f"{r['layout']:<20}{r['jobs']:>7}{(round(jps) if jps else '-'):>9}{str(r['errors']):>8}"
          f"{r['redis_us_per_job']:>14}  {by:<24}{r['gateway_us_per_job']:>16}{r['workers_us_per_job']:>16}")
EOF
