#!/usr/bin/env bash
# Runs the whole system in the foreground as a small supervisor: its own
# redis-server (data and AOF under the state directory, unless
# JOBGATE_REDIS_URL points elsewhere), the gateway and JOBGATE_WORKERS
# pricing workers. It prints "jobgate is running" once the gateway is ready
# and a worker has registered its job kinds, so the first submit is accepted.
#
# Supervision:
# - A gateway or worker that exits is started again after a backoff (1 s,
#   doubling up to 30 s; back to 1 s once it has stayed up 60 s), with one
#   line saying which one died, how, and when it comes back.
# - A component that exits 5 times within 120 s is in a crash loop: everything
#   is stopped and the script exits non-zero.
# - So is a component that exits before jobgate was ever ready (a build,
#   install or configuration error is not worth retrying), and the Redis this
#   script started (its data stays in the state directory; run it again).
# - Ctrl-C or SIGTERM stops everything: gateway and workers first, then
#   Redis; a second Ctrl-C kills whatever is left.
#
# Environment (every other JOBGATE_* variable reaches the gateway and workers
# unchanged, e.g. JOBGATE_LEASE_MS):
#   JOBGATE_WORKERS      workers to run (default 1); worker n is consumer
#                        <JOBGATE_CONSUMER or hostname>-<n>
#   JOBGATE_LISTEN       gateway address (default 127.0.0.1:8080)
#   JOBGATE_REDIS_URL    use this Redis instead of starting one
#   JOBGATE_REDIS_PORT   port of the Redis started here (default 6390)
#   JOBGATE_AUTH         unset: jwt with a development secret and a token for
#                        the user "dev" written to <state dir>/dev-token
#   JOBGATE_STATE_DIR    Redis data, dev secret and token, logs (default .jobgate)
#   JOBGATE_BIN          gateway binary (default ./target/release/jobgate)
#   JOBGATE_WORKER_BIN   worker CLI (default .venv/bin/jobgate-worker)
#
# Logs: each component's stderr goes to the terminal and is appended to
# <state dir>/gateway.log or worker.log (all workers share it, as they share
# the terminal); Redis writes redis.log.
set -euo pipefail
cd "$(dirname "$0")/.."

# Restart policy (see the header).
readonly first_restart_delay_s=1
readonly max_restart_delay_s=30
readonly stable_uptime_s=60
readonly crash_loop_crashes=5
readonly crash_loop_window_s=120
# How long the gateway and the first worker may take to become ready.
readonly ready_timeout_s=90

readonly worker_app="examples.pricing:worker"
# A kind the worker above registers: once it is in jobgate:kinds:v2, submits are accepted.
readonly ready_kind="mc_option_price"

gateway_bin="${JOBGATE_BIN:-./target/release/jobgate}"
worker_bin="${JOBGATE_WORKER_BIN:-.venv/bin/jobgate-worker}"
worker_count="${JOBGATE_WORKERS:-1}"
consumer_prefix="${JOBGATE_CONSUMER:-${HOSTNAME:-$(uname -n)}}"
state_dir="${JOBGATE_STATE_DIR:-.jobgate}"

# Prints a message on stderr and exits; only before anything has started.
fail() {
  echo "run.sh: $*" >&2
  exit 1
}

[[ "$worker_count" =~ ^[1-9][0-9]*$ ]] ||
  fail "JOBGATE_WORKERS must be a positive integer (the number of workers), got '$worker_count'"
[ -x "$gateway_bin" ] ||
  fail "no gateway binary at $gateway_bin; run 'make build' (or set JOBGATE_BIN)"
[ -x "$worker_bin" ] ||
  fail "no worker CLI at $worker_bin; run 'make venv' (or set JOBGATE_WORKER_BIN)"
mkdir -p "$state_dir"
state_dir="$(cd "$state_dir" && pwd)"

# --- Bookkeeping -------------------------------------------------------------
# Components are named redis, gateway, worker-1 … worker-N.

declare -A owner_of=()       # pid of each live child → "component <name>", "restart <name>" or "ready-check"
declare -A started_at=()     # component → $SECONDS when it was last started
declare -A restart_delay=()  # component → backoff before its next restart, in s
declare -A crash_times=()    # component → $SECONDS of its recent crashes, space-separated
ready="no"
last_started_pid=""
tick_pid=""
delay_s=0

# One line on the terminal from the supervisor itself.
say() {
  printf '[run.sh %s] %s\n' "$(date +%H:%M:%S)" "$*"
}

# --- Starting components -----------------------------------------------------

start_redis() {
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$state_dir" \
    --appendonly yes --appendfsync everysec --save "" --stream-node-max-bytes 1024 \
    --logfile "$state_dir/redis.log" &
  track_component redis "$!"
}

start_gateway() {
  "$gateway_bin" 2> >(tee -a "$state_dir/gateway.log" >&2) &
  track_component gateway "$!"
}

# start_worker <n>: worker n, consumer <prefix>-<n> (the same name across
# restarts, so its logs and pending entries stay recognisable).
start_worker() {
  local number=$1
  "$worker_bin" --consumer "$consumer_prefix-$number" "$worker_app" \
    2> >(tee -a "$state_dir/worker.log" >&2) &
  track_component "worker-$number" "$!"
}

# start_component <name>: starts the named component.
start_component() {
  local name=$1
  case "$name" in
    redis) start_redis ;;
    gateway) start_gateway ;;
    worker-*) start_worker "${name#worker-}" ;;
  esac
}

# track_component <name> <pid>: remembers a started component.
track_component() {
  owner_of[$2]="component $1"
  started_at[$1]=$SECONDS
  last_started_pid=$2
}

# The log a component writes, for messages that point at it.
log_of() {
  case "$1" in
    worker-*) echo "$state_dir/worker.log" ;;
    *) echo "$state_dir/$1.log" ;;
  esac
}

# --- Readiness ---------------------------------------------------------------

# The Redis server's clock in ms (workers stamp their kinds with it).
redis_time_ms() {
  local -a now
  mapfile -t now < <(redis-cli -c -u "${JOBGATE_REDIS_URL%%,*}" time 2>/dev/null)
  [ "${#now[@]}" -eq 2 ] || return 1
  echo $((now[0] * 1000 + 10#${now[1]} / 1000))
}

# kind_registered_since <ms>: a worker wrote $ready_kind to jobgate:kinds:v2 at
# or after <ms>. (A field merely existing could be left over from an earlier
# run; its value is {"queue":…,"worker":…,"seen_at":<ms>}, see PROTOCOL.md.)
kind_registered_since() {
  local since_ms=$1 value
  value="$(redis-cli -c -u "${JOBGATE_REDIS_URL%%,*}" hget jobgate:kinds:v2 "$ready_kind" 2>/dev/null)" || return 1
  [[ "$value" =~ \"seen_at\":([0-9]+) ]] && [ "${BASH_REMATCH[1]}" -ge "$since_ms" ]
}

# wait_until_ready <since ms>: run in the background; exits 0 once /readyz
# answers 200 and a worker has registered its kinds, or 1 (saying which did
# not happen) after $ready_timeout_s.
wait_until_ready() {
  local since_ms=$1 deadline=$((SECONDS + ready_timeout_s))
  until curl -fsS -o /dev/null "http://$JOBGATE_LISTEN/readyz" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "the gateway's /readyz did not answer 200 within $ready_timeout_s s; see $(log_of gateway)"
      exit 1
    fi
    sleep 0.2
  done
  until kind_registered_since "$since_ms"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "no worker registered '$ready_kind' within $ready_timeout_s s; see $(log_of worker-1)"
      exit 1
    fi
    sleep 0.2
  done
}

start_ready_check() {
  wait_until_ready "$1" &
  owner_of[$!]="ready-check"
}

print_banner() {
  local dashboard="http://$JOBGATE_LISTEN/" logs="$state_dir/{gateway,worker,redis}.log"
  local token_line="none (JOBGATE_AUTH=$JOBGATE_AUTH)"
  if [ -n "$token" ]; then
    dashboard="http://$JOBGATE_LISTEN/?access_token=$token"
    token_line="$state_dir/dev-token  (curl -H \"Authorization: Bearer \$(cat $state_dir/dev-token)\" …)"
  fi
  [ -n "$redis_port" ] || logs="$state_dir/{gateway,worker}.log"
  local workers="1 (consumer $consumer_prefix-1)"
  if [ "$worker_count" -gt 1 ]; then
    workers="$worker_count (consumers $consumer_prefix-1 … $consumer_prefix-$worker_count)"
    logs="$logs  (the workers share worker.log)"
  fi
  cat <<MSG

  jobgate is running
    dashboard   $dashboard
    API         http://$JOBGATE_LISTEN/v1/jobs
    token       $token_line
    Redis       $JOBGATE_REDIS_URL
    workers     $workers, restarted when they die
    logs        $logs
  Press Ctrl-C to stop.

MSG
}

# --- Handling exits ----------------------------------------------------------

# describe_exit <status>: "exited with status 1" or "was killed by SIGKILL".
describe_exit() {
  local status=$1
  if [ "$status" -gt 128 ]; then
    echo "was killed by SIG$(kill -l $((status - 128)) 2>/dev/null || echo "$((status - 128))")"
  else
    echo "exited with status $status"
  fi
}

# record_crash <name>: adds now to the component's recent crashes (dropping
# those older than the window) and succeeds if that makes a crash loop.
record_crash() {
  local name=$1 time recent="" count=0
  for time in ${crash_times[$name]:-} $SECONDS; do
    if [ $((SECONDS - time)) -le "$crash_loop_window_s" ]; then
      recent="$recent $time"
      count=$((count + 1))
    fi
  done
  crash_times[$name]="$recent"
  [ "$count" -ge "$crash_loop_crashes" ]
}

# set_restart_delay <name>: sets delay_s to the backoff before this restart
# and doubles the next one (after a stable run it starts from the first
# delay again). It sets a variable rather than printing: a $(…) would run it
# in a subshell and lose the update.
set_restart_delay() {
  local name=$1
  if [ $((SECONDS - ${started_at[$name]})) -ge "$stable_uptime_s" ]; then
    restart_delay[$name]=$first_restart_delay_s
  fi
  delay_s=${restart_delay[$name]:-$first_restart_delay_s}
  restart_delay[$name]=$((delay_s * 2 > max_restart_delay_s ? max_restart_delay_s : delay_s * 2))
}

# on_component_exit <name> <pid> <status>: decides between a restart after a
# backoff and stopping everything.
on_component_exit() {
  local name=$1 pid=$2 how uptime_s
  uptime_s=$((SECONDS - ${started_at[$name]}))
  how="$(describe_exit "$3")"
  if [ "$name" = "redis" ]; then
    say "redis-server (pid $pid) $how; stopping everything. Its data is kept in $state_dir: start again to continue (see $(log_of redis))"
    stop_all 1
  fi
  if [ "$ready" = "no" ]; then
    say "$name (pid $pid) $how before jobgate was ready; stopping everything (see $(log_of "$name"))"
    stop_all 1
  fi
  if record_crash "$name"; then
    say "$name (pid $pid) $how: $crash_loop_crashes exits within $crash_loop_window_s s, a crash loop; stopping everything (see $(log_of "$name"))"
    stop_all 1
  fi
  set_restart_delay "$name"
  say "$name (pid $pid) $how after $uptime_s s up; restarting it in $delay_s s"
  sleep "$delay_s" &
  owner_of[$!]="restart $name"
}

on_ready_check_exit() {
  if [ "$1" -ne 0 ]; then
    stop_all 1
  fi
  ready="yes"
  print_banner
}

# on_child_exit <pid> <status>: acts on the exit of one child.
on_child_exit() {
  local pid=$1 status=$2 what
  what="${owner_of[$pid]}"
  unset 'owner_of[$pid]'
  case "$what" in
    "component "*) on_component_exit "${what#component }" "$pid" "$status" ;;
    "restart "*)
      start_component "${what#restart }"
      say "${what#restart } restarted (pid $last_started_pid)"
      ;;
    "ready-check") on_ready_check_exit "$status" ;;
    "tick") tick_pid="" ;;
  esac
}

# The supervisor loop. Only stop_all (from here or from the INT/TERM trap)
# leaves it, by exiting.
#
# `wait -n` only wakes it up: bash forgets a background job killed by a
# signal while a foreground command (a `sleep`, a `date`) was running, and
# `wait -n` would never report it. So every pass checks each child with
# `kill -0` and collects the status of those gone with `wait <pid>` (which
# bash keeps); a 1 s tick bounds how late a forgotten exit is noticed.
supervise() {
  local pid status
  while true; do
    if [ -z "$tick_pid" ]; then
      sleep 1 &
      tick_pid=$!
      owner_of[$tick_pid]="tick"
    fi
    wait -n 2>/dev/null || true
    for pid in "${!owner_of[@]}"; do
      if ! kill -0 "$pid" 2>/dev/null; then
        status=0
        wait "$pid" 2>/dev/null || status=$?
        on_child_exit "$pid" "$status"
      fi
    done
  done
}

# --- Stopping ----------------------------------------------------------------

# The live children other than Redis.
pids_except_redis() {
  local pid
  for pid in "${!owner_of[@]}"; do
    [ "${owner_of[$pid]}" = "component redis" ] || echo "$pid"
  done
}

# stop_pids <pid>…: SIGTERM to each, then waits for all of them.
stop_pids() {
  local pid
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "$@"; do
    wait "$pid" 2>/dev/null || true
    unset 'owner_of[$pid]'
  done
}

# stop_all [status]: stops everything (gateway and workers first, so they can
# still reach Redis while they finish) and exits with status (default 0).
stop_all() {
  local exit_status=${1:-0}
  trap - EXIT
  trap 'say "killing what is left"; kill -KILL "${!owner_of[@]}" 2>/dev/null || true' INT TERM
  # shellcheck disable=SC2046 # one pid per word
  stop_pids $(pids_except_redis)
  stop_pids "${!owner_of[@]}"
  wait 2>/dev/null || true
  echo "jobgate stopped."
  exit "$exit_status"
}

# Ctrl-C or SIGTERM: a clean stop, which may wait for running jobs.
on_stop_signal() {
  say "stopping (Ctrl-C again kills everything at once)"
  stop_all 0
}

# --- Main --------------------------------------------------------------------

trap 'stop_all 1' EXIT
trap on_stop_signal INT TERM

redis_port=""
if [ -z "${JOBGATE_REDIS_URL:-}" ]; then
  redis_port="${JOBGATE_REDIS_PORT:-6390}"
  if redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
    trap - EXIT
    fail "port $redis_port already has a Redis that is not ours; set JOBGATE_REDIS_PORT or JOBGATE_REDIS_URL"
  fi
  start_redis
  export JOBGATE_REDIS_URL="redis://127.0.0.1:$redis_port"
  for _ in $(seq 1 100); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  redis-cli -p "$redis_port" ping >/dev/null 2>&1 ||
    { say "redis-server did not start; see $(log_of redis)"; stop_all 1; }
fi
# Taken before any worker starts: a kind registered after it is this run's.
started_ms="$(redis_time_ms)" ||
  { say "Redis at $JOBGATE_REDIS_URL does not answer"; stop_all 1; }

export JOBGATE_LISTEN="${JOBGATE_LISTEN:-127.0.0.1:8080}"

# Authentication is on: a development secret (kept in the state directory so
# tokens survive restarts) and a ready token for the user "dev".
if [ -z "${JOBGATE_AUTH:-}" ]; then
  secret_file="$state_dir/dev-secret"
  if [ ! -s "$secret_file" ]; then
    (umask 077; head -c 48 /dev/urandom | base64 | tr -d '\n/+=' > "$secret_file")
  fi
  export JOBGATE_AUTH=jwt
  JOBGATE_JWT_SECRET="$(cat "$secret_file")"
  export JOBGATE_JWT_SECRET
fi
token=""
if [ "$JOBGATE_AUTH" = "jwt" ] && [ -n "${JOBGATE_JWT_SECRET:-}" ]; then
  token="$("$gateway_bin" token --sub dev --ttl-s 604800)" ||
    { say "could not make the dev token with $gateway_bin (its error is above)"; stop_all 1; }
  (umask 077; printf '%s\n' "$token" > "$state_dir/dev-token")
fi

start_gateway
for number in $(seq 1 "$worker_count"); do
  start_worker "$number"
done
start_ready_check "$started_ms"
supervise
