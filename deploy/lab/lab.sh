#!/usr/bin/env bash
# `make lab`: a multi-host jobgate deployment on this one machine, and the
# faults it must survive.
#
# One network namespace per host (deploy/lab/net.sh): 6 Redis nodes (3
# masters, 3 replicas, `redis-cli --cluster create`), 2 gateways, HAProxy
# (deploy/haproxy/jobgate.cfg), a Dask scheduler with 2 Dask workers, 2
# jobgate workers and a load generator (deploy/lab/driver.py). Under a
# steady load of watched jobs it runs each scenario, then prints one table
# and writes target/lab/latest.json (deploy/lab/report.py). It exits
# non-zero if any scenario lost a job or an event, delivered a duplicate or
# left a job unfinished.
#
# Traffic stays on the lab's own /24 (10.77.0.0/24) inside its namespaces.
# Everything it starts is stopped and every namespace removed on exit, also
# on Ctrl-C or a failure; leftovers of a run that could not clean up are
# removed at the start.
#
# Environment:
#   LAB_SCENARIOS   scenarios to run, space-separated (default: all, in the
#                   order below); `make test-lab` runs
#                   "redis-master-kill gateway-sigterm" with LAB_SHORT=1
#   LAB_SHORT=1     shorter phases (the test version)
#   LAB_REDIS       cluster (default) or standalone: one Redis node, for
#                   gateways and workers without cluster support; the Redis
#                   scenarios are then skipped
#   LAB_RATE        jobs submitted per second (default 15)
#   LAB_SKIP_BUILD=1  use target/release/jobgate as it is
#
# Scenarios:
#   two-gateways          submit via gw1, watch via gw2 and via HAProxy; the
#                         sizing figures (CPU per job) are taken here
#   redis-master-kill     kill -9 the master of a running job's slot; its
#                         replica is promoted; the node is restarted (rejoins
#                         as a replica)
#   slot-migration        move a running job's slot to another master
#                         (IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE)
#   gateway-link-cut      gw2's link down for 15 s
#   gateway-sigterm       SIGTERM gw1 (sessions through HAProxy get 1001 and
#                         resume on gw2); gw1 started again
#   dask-scheduler-kill   kill -9 the Dask scheduler; started again after 3 s
#                         (the Dask workers, which exit without it, run under
#                         deploy/lab/keep-running.sh)
#   worker-kill           kill -9 jobgate worker wk1; its jobs are reclaimed
#                         by wk2 after the lease (10 s); wk1 started again
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
# shellcheck source=deploy/lab/net.sh
. "$root/deploy/lab/net.sh"

all_scenarios=(two-gateways redis-master-kill slot-migration gateway-link-cut
  gateway-sigterm dask-scheduler-kill worker-kill)
read -r -a scenarios <<<"${LAB_SCENARIOS:-${all_scenarios[*]}}"
short=${LAB_SHORT:-0}
redis_mode=${LAB_REDIS:-cluster}
rate=${LAB_RATE:-15}

out="$root/target/lab"
logs="$out/logs"
gateway_bin="$root/target/release/jobgate"
venv="$root/.venv"

started_s=$SECONDS
say() { printf '[lab %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() { say "error: $*"; exit 1; }
# nap <seconds>: sleeps, but a Ctrl-C or SIGTERM stops the lab at once (bash
# runs a trap only after the foreground command, so the sleep is waited for).
nap() {
  sleep "$1" &
  wait $!
}
# pick <normal> <short>: the phase length for this run.
pick() { if [ "$short" = 1 ]; then echo "$2"; else echo "$1"; fi; }

# --- checks ------------------------------------------------------------------

[ "$(id -u)" = 0 ] || fail "the lab needs root (network namespaces)"
case "$redis_mode" in cluster | standalone) ;; *) fail "LAB_REDIS must be cluster or standalone" ;; esac
for scenario in "${scenarios[@]}"; do
  [[ " ${all_scenarios[*]} " == *" $scenario "* ]] ||
    fail "unknown scenario '$scenario' (known: ${all_scenarios[*]})"
done
command -v ip >/dev/null || fail "iproute2 (ip) is missing"
command -v redis-server >/dev/null || fail "redis-server is missing (make deps installs it)"
command -v curl >/dev/null || fail "curl is missing"
if ! command -v haproxy >/dev/null; then
  say "installing haproxy (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null ||
    fail "could not install haproxy"
fi
[ -x "$venv/bin/jobgate-worker" ] || fail "no $venv; run 'make venv'"
if [ "${LAB_SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --quiet --bin jobgate
fi
[ -x "$gateway_bin" ] || fail "no $gateway_bin; run 'make build'"

# --- processes and cleanup ---------------------------------------------------

declare -A pid_of=()  # component → pid
declare -A host_of=() # component → host (namespace)
declare -A command_of=() # component → its command line, for restarts

cleanup() {
  local status=$?
  # A second Ctrl-C must not leave processes and namespaces behind.
  trap - EXIT
  trap '' INT TERM
  exec 7>&-
  say "stopping everything and removing the namespaces"
  # (bash would report each process killed after the grace period)
  { lab_net_down 3; wait; } 2>/dev/null || true
  if [ -n "$(lab_namespaces)" ]; then
    say "some namespaces could not be removed: $(lab_namespaces | tr '\n' ' ')"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

# start <component> <host> <command>…: runs it in the host's namespace, its
# output appended to target/lab/logs/<component>.log, its input
# $START_INPUT (default /dev/null).
start() {
  local component=$1 host=$2 input=${START_INPUT:-/dev/null}
  shift 2
  host_of[$component]=$host
  command_of[$component]="$(printf '%q ' "$@")"
  ip netns exec "$(ns "$host")" "$@" <"$input" >>"$logs/$component.log" 2>&1 &
  pid_of[$component]=$!
}

# restart <component>: the same command again.
restart() {
  local component=$1
  eval "start $component ${host_of[$component]} ${command_of[$component]}"
}

alive() {
  kill -0 "${pid_of[$1]}" 2>/dev/null
}

# wait_for <seconds> <what> <command>…: until the command succeeds.
wait_for() {
  local timeout_s=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + timeout_s))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$what did not happen within $timeout_s s (logs: $logs)"
    sleep 0.2
  done
}

# --- Redis -------------------------------------------------------------------

redis_hosts=(redis1 redis2 redis3 redis4 redis5 redis6)
[ "$redis_mode" = cluster ] || redis_hosts=(redis1)

# rcli <host> <args>…: redis-cli against that node, from its namespace.
rcli() {
  local host=$1
  shift
  on "$host" redis-cli -h "$(addr "$host")" -p 6379 "$@"
}

host_at() {
  local host
  for host in "${!lab_octet[@]}"; do
    [ "$(addr "$host")" = "$1" ] && { echo "$host"; return; }
  done
  return 1
}

start_redis() {
  local host=$1 dir="$out/redis/$1"
  mkdir -p "$dir"
  local -a cluster=()
  [ "$redis_mode" = cluster ] && cluster=(--cluster-enabled yes)
  start "$host" "$host" redis-server "$root/deploy/lab/redis-node.conf" \
    --bind "$(addr "$host")" --dir "$dir" --logfile "" "${cluster[@]}"
}

# A live node to ask about the cluster (the first that answers).
any_redis() {
  local host
  for host in "${redis_hosts[@]}"; do
    if alive "$host" && rcli "$host" ping >/dev/null 2>&1; then
      echo "$host"
      return
    fi
  done
  return 1
}

cluster_ok_everywhere() {
  local host
  for host in "${redis_hosts[@]}"; do
    alive "$host" || continue
    rcli "$host" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
  done
}

# master_of <slot>: the host of the master serving the slot.
master_of() {
  local slot=$1 ip
  ip=$(rcli "$(any_redis)" cluster nodes | awk -v slot="$slot" '
    $3 ~ /master/ && $3 !~ /fail/ {
      for (i = 9; i <= NF; i++) {
        n = split($i, range, "-")
        lo = range[1]; hi = (n == 2) ? range[2] : range[1]
        if (lo ~ /^[0-9]+$/ && slot >= lo + 0 && slot <= hi + 0) { split($2, a, ":"); print a[1]; exit }
      }
    }')
  [ -n "$ip" ] || return 1
  host_at "$ip"
}

# slots_of <host>: its slot ranges as JSON ([[lo, hi], …]).
slots_of() {
  rcli "$1" cluster nodes | awk '$3 ~ /myself/ {
    printf "["
    for (i = 9; i <= NF; i++) {
      if ($i ~ /^\[/) continue
      n = split($i, range, "-")
      printf "%s[%s,%s]", (i > 9 ? "," : ""), range[1], (n == 2 ? range[2] : range[1])
    }
    print "]"
  }'
}

is_replica() {
  rcli "$1" role 2>/dev/null | head -1 | grep -q slave &&
    rcli "$1" info replication | grep -q 'master_link_status:up'
}

# --- the load generator --------------------------------------------------------

driver_fifo="$out/driver.in"

tell_driver() {
  printf '%s\n' "$*" >&7
}

# The driver's results of a scenario, once it has drained it.
await_result() {
  local name=$1 timeout_s=$2 deadline
  deadline=$((SECONDS + timeout_s))
  until [ -s "$out/scenarios/$name.json" ]; do
    alive driver || fail "the load generator exited; see $logs/driver.log"
    [ "$SECONDS" -lt "$deadline" ] || fail "no result for $name within $timeout_s s"
    sleep 0.2
  done
}

# The slot of a job that is running now (the driver lists them).
running_slot() {
  python3 - "$out/inflight.json" <<'PY'
import json, sys
running = json.load(open(sys.argv[1]))
if not running:
    sys.exit(1)
print(running[len(running) // 2]["slot"])
PY
}

# lab_note <scenario> <json object>: the lab's own figures for a scenario.
lab_note() {
  printf '%s\n' "$2" >"$out/scenarios/$1.lab.json"
}

# --- sizing ------------------------------------------------------------------

# CPU ticks used so far by every process in the host's namespace.
ns_ticks() {
  local pid total=0 fields
  for pid in $(pids_in "$(ns "$1")"); do
    fields=$(cut -d' ' -f14,15 "/proc/$pid/stat" 2>/dev/null) || continue
    total=$((total + ${fields% *} + ${fields#* }))
  done
  echo "$total"
}

# cpu_snapshot <file>: CPU seconds so far per host, and each Redis master's
# used_cpu_sys + used_cpu_user.
cpu_snapshot() {
  local file=$1 host hz first=1
  hz=$(getconf CLK_TCK)
  {
    printf '{"hosts": {'
    for host in gw1 gw2 lb wk1 wk2 dask-sched daskw1 daskw2 load; do
      printf '%s"%s": %s' "$([ $first = 1 ] || echo ,)" "$host" \
        "$(awk -v t="$(ns_ticks "$host")" -v hz="$hz" 'BEGIN { printf "%.3f", t / hz }')"
      first=0
    done
    printf '}, "redis_masters": {'
    first=1
    for host in "${redis_hosts[@]}"; do
      alive "$host" || continue
      rcli "$host" role 2>/dev/null | head -1 | grep -q master || continue
      printf '%s"%s": %s' "$([ $first = 1 ] || echo ,)" "$host" \
        "$(rcli "$host" info cpu | tr -d '\r' |
          awk -F: '/^used_cpu_(sys|user):/ { s += $2 } END { printf "%.3f", s }')"
      first=0
    done
    printf '}}\n'
  } >"$file"
}

# --- scenarios ---------------------------------------------------------------

steady_s=$(pick 6 4)

begin() {
  say "scenario $1"
  rm -f "$out/scenarios/$1.json"
  tell_driver "scenario $1"
}

finish() {
  local name=$1 timeout_s=${2:-40}
  tell_driver "drain $timeout_s"
  await_result "$name" $((timeout_s + 90))
}

scenario_two-gateways() {
  cpu_snapshot "$out/sizing-before.json"
  begin two-gateways
  nap "$(pick 15 6)"
  finish two-gateways
  cpu_snapshot "$out/sizing-after.json"
}

scenario_redis-master-kill() {
  local slot victim slots killed_at failover_s rejoin_s
  begin redis-master-kill
  nap "$steady_s"
  slot=$(running_slot) || fail "no running job to aim at"
  victim=$(master_of "$slot") || fail "no master found for slot $slot"
  slots=$(slots_of "$victim")
  say "kill -9 $victim (master of slot $slot, a running job's; slots $slots)"
  tell_driver "fault {\"kind\": \"slots\", \"slots\": $slots}"
  killed_at=$(date +%s.%N)
  kill -KILL "${pid_of[$victim]}"
  wait "${pid_of[$victim]}" 2>/dev/null || true
  wait_for 30 "a replica's promotion for slot $slot" promoted "$slot" "$victim"
  failover_s=$(awk -v a="$killed_at" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
  say "slot $slot is served by $(master_of "$slot") after ${failover_s} s"
  nap "$(pick 8 4)"
  restart "$victim"
  wait_for 30 "$victim rejoining as a replica" is_replica "$victim"
  rejoin_s=$(awk -v a="$killed_at" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
  say "$victim is a replica again"
  wait_for 30 "cluster_state:ok on every node" cluster_ok_everywhere
  lab_note redis-master-kill "{\"killed\": \"$victim\", \"slot\": $slot, \"failover_s\": $failover_s, \"rejoined_s\": $rejoin_s}"
  finish redis-master-kill
}

promoted() {
  local owner
  owner=$(master_of "$1") && [ "$owner" != "$2" ] && cluster_ok_everywhere
}

scenario_slot-migration() {
  local slot source target source_id target_id host keys moved=0 started_at migrate_s
  begin slot-migration
  nap "$steady_s"
  slot=$(running_slot) || fail "no running job to aim at"
  source=$(master_of "$slot")
  for host in "${redis_hosts[@]}"; do
    if [ "$host" != "$source" ] && alive "$host" &&
      rcli "$host" role | head -1 | grep -q master; then
      target=$host
      break
    fi
  done
  source_id=$(rcli "$source" cluster myid)
  target_id=$(rcli "$target" cluster myid)
  say "moving slot $slot (a running job's) from $source to $target"
  tell_driver "fault {\"kind\": \"slots\", \"slots\": [[$slot, $slot]]}"
  started_at=$(date +%s.%N)
  rcli "$target" cluster setslot "$slot" importing "$source_id" >/dev/null
  rcli "$source" cluster setslot "$slot" migrating "$target_id" >/dev/null
  while true; do
    mapfile -t keys < <(rcli "$source" cluster getkeysinslot "$slot" 100)
    [ "${#keys[@]}" -gt 0 ] && [ -n "${keys[0]}" ] || break
    rcli "$source" migrate "$(addr "$target")" 6379 "" 0 5000 keys "${keys[@]}" >/dev/null
    moved=$((moved + ${#keys[@]}))
  done
  rcli "$target" cluster setslot "$slot" node "$target_id" >/dev/null
  rcli "$source" cluster setslot "$slot" node "$target_id" >/dev/null
  for host in "${redis_hosts[@]}"; do
    if [ "$host" != "$source" ] && [ "$host" != "$target" ] && alive "$host" &&
      rcli "$host" role | head -1 | grep -q master; then
      rcli "$host" cluster setslot "$slot" node "$target_id" >/dev/null
    fi
  done
  migrate_s=$(awk -v a="$started_at" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
  say "slot $slot moved ($moved keys) in ${migrate_s} s"
  lab_note slot-migration "{\"slot\": $slot, \"from\": \"$source\", \"to\": \"$target\", \"keys\": $moved, \"migrate_s\": $migrate_s}"
  nap "$(pick 8 4)"
  finish slot-migration
}

scenario_gateway-link-cut() {
  begin gateway-link-cut
  nap "$steady_s"
  say "cutting gw2's link for 15 s"
  tell_driver 'fault {"kind": "gateway", "gateway": "gw2"}'
  link_down gw2
  nap 15
  link_up gw2
  say "gw2's link is back"
  nap "$(pick 5 3)"
  finish gateway-link-cut
}

scenario_gateway-sigterm() {
  local stopped_at stop_s
  begin gateway-sigterm
  nap "$steady_s"
  say "SIGTERM to gw1"
  tell_driver 'fault {"kind": "gateway", "gateway": "gw1", "submissions": true, "expect_close": 1001}'
  stopped_at=$SECONDS
  kill -TERM "${pid_of[gw1]}"
  wait "${pid_of[gw1]}" 2>/dev/null || true
  stop_s=$((SECONDS - stopped_at))
  say "gw1 stopped after ~${stop_s} s"
  nap "$(pick 6 3)"
  restart gw1
  wait_for 30 "gw1 ready again" gateway_ready gw1
  say "gw1 is back"
  lab_note gateway-sigterm "{\"stop_s\": $stop_s}"
  nap "$(pick 4 2)"
  finish gateway-sigterm
}

scenario_dask-scheduler-kill() {
  begin dask-scheduler-kill
  nap "$steady_s"
  say "kill -9 the Dask scheduler"
  tell_driver 'fault {"kind": "started_after"}'
  kill -KILL "${pid_of[dask-sched]}"
  wait "${pid_of[dask-sched]}" 2>/dev/null || true
  nap 3
  restart dask-sched
  say "Dask scheduler started again (the Dask workers restart on their own)"
  nap "$(pick 12 6)"
  finish dask-scheduler-kill 60
}

scenario_worker-kill() {
  begin worker-kill
  nap "$steady_s"
  say "kill -9 jobgate worker wk1"
  tell_driver 'fault {"kind": "worker", "worker": "wk1"}'
  kill -KILL "${pid_of[wk1]}"
  wait "${pid_of[wk1]}" 2>/dev/null || true
  nap 5
  restart wk1
  say "wk1 started again"
  nap "$(pick 8 4)"
  finish worker-kill 60
}

gateway_ready() {
  on load curl -fsS -m 1 -o /dev/null "http://$(addr "$1"):8080/readyz"
}

# --- set-up --------------------------------------------------------------------

rm -rf "$out/logs" "$out/redis" "$out/scenarios" "$out"/sizing-*.json "$out/inflight.json" "$out/driver.in" \
  "$out/driver.ready"
mkdir -p "$logs" "$out/scenarios"

if [ -n "$(lab_namespaces)" ]; then
  say "removing a previous run's leftovers: $(lab_namespaces | tr '\n' ' ')"
  lab_net_down 1
fi
say "network: ${#lab_hosts[@]} namespaces on one bridge, $lab_net.0/24"
lab_net_up

for host in "${redis_hosts[@]}"; do
  start_redis "$host"
done
for host in "${redis_hosts[@]}"; do
  wait_for 20 "$host answering" rcli "$host" ping
done
if [ "$redis_mode" = cluster ]; then
  seeds=()
  for host in "${redis_hosts[@]}"; do seeds+=("$(addr "$host"):6379"); done
  on load redis-cli --cluster create "${seeds[@]}" --cluster-replicas 1 --cluster-yes \
    >>"$logs/cluster-create.log" 2>&1 || fail "redis-cli --cluster create failed; see $logs/cluster-create.log"
  wait_for 30 "cluster_state:ok on every node" cluster_ok_everywhere
  say "Redis Cluster: 3 masters, 3 replicas"
fi
redis_url=""
for host in "${redis_hosts[@]}"; do
  redis_url="${redis_url:+$redis_url,}redis://$(addr "$host"):6379"
done

export PYTHONPATH="$root:$root/deploy/lab"
start dask-sched dask-sched "$venv/bin/dask" scheduler --host "$(addr dask-sched)" --port 8786 \
  --no-dashboard
for host in daskw1 daskw2; do
  start "$host" "$host" "$root/deploy/lab/keep-running.sh" "$venv/bin/dask" worker "tcp://$(addr dask-sched):8786" \
    --host "$(addr "$host")" --name "$host" --nthreads 4 --no-nanny --no-dashboard \
    --preload jobgate_worker.dask_preload
done

secret=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=')
export JOBGATE_AUTH=jwt JOBGATE_JWT_SECRET="$secret" JOBGATE_REDIS_URL="$redis_url"
(umask 077 && "$gateway_bin" token --sub lab --ttl-s 3600 >"$out/token")
for host in gw1 gw2; do
  start "$host" "$host" env JOBGATE_LISTEN="$(addr "$host"):8080" JOBGATE_SHUTDOWN_GRACE_S=5 \
    "$gateway_bin"
done
for host in gw1 gw2; do
  wait_for 30 "$host ready" gateway_ready "$host"
done
for host in wk1 wk2; do
  start "$host" "$host" env JOBGATE_CONSUMER="$host" JOBGATE_CONCURRENCY=32 \
    DASK_SCHEDULER_ADDRESS="tcp://$(addr dask-sched):8786" JOBGATE_GRACE_S=5 \
    "$venv/bin/jobgate-worker" lab_worker:worker
done
start lb lb env JOBGATE_LB_BIND="$(addr lb):8080" JOBGATE_GATEWAY_1="$(addr gw1):8080" \
  JOBGATE_GATEWAY_2="$(addr gw2):8080" haproxy -W -db -f "$root/deploy/haproxy/jobgate.cfg"
wait_for 20 "HAProxy passing requests" gateway_ready lb
start readyz load "$root/deploy/lab/watch-readyz.sh" "gw1=http://$(addr gw1):8080" \
  "gw2=http://$(addr gw2):8080"

# Commands go to the driver through a FIFO held open read-write here (so
# neither side blocks opening it).
mkfifo "$driver_fifo"
exec 7<>"$driver_fifo"
gw1_url="gw1=http://$(addr gw1):8080"
gw2_url="gw2=http://$(addr gw2):8080"
lb_url="lb=http://$(addr lb):8080"
START_INPUT=/dev/fd/7 start driver load "$venv/bin/python" "$root/deploy/lab/driver.py" --out "$out" \
  --token-file "$out/token" --rate "$rate" \
  --submit "$gw1_url,$lb_url" --history "$gw1_url,$gw2_url" \
  --watch "direct:2:$gw2_url,$gw1_url" --watch "balanced:4:$lb_url"
wait_for 90 "a first job through the lab (driver ready)" test -e "$out/driver.ready"
say "everything is up after $((SECONDS - started_s)) s; $rate jobs/s of lab_sleep (0.5-2 s)"

# --- run -----------------------------------------------------------------------

ran=()
for scenario in "${scenarios[@]}"; do
  case "$scenario" in
    redis-master-kill | slot-migration)
      if [ "$redis_mode" != cluster ]; then
        say "skipping $scenario: LAB_REDIS=standalone"
        continue
      fi
      ;;
  esac
  "scenario_$scenario"
  ran+=("$scenario")
done
tell_driver quit
wait "${pid_of[driver]}" 2>/dev/null || true

status=0
"$venv/bin/python" "$root/deploy/lab/report.py" --out "$out" --redis "$redis_mode" \
  --elapsed-s $((SECONDS - started_s)) --short "$short" "${ran[@]}" || status=$?
exit "$status"
