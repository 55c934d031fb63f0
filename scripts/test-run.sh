#!/usr/bin/env bash
# Tests scripts/run.sh, the supervisor behind `make run`, as a user meets it:
# run.sh in the background with the debug gateway (target/debug/jobgate, built
# by `cargo test`), its own Redis on a free port, a temporary state directory
# and everything on loopback. Checks that
#   (a) a submit right after the banner is accepted (the kinds were registered);
#   (b) a worker killed with SIGKILL while it runs a job is reported and
#       restarted, and the job completes (re-run once its lease expires);
#   (c) a gateway killed with SIGKILL is restarted and ready again;
#   (d) SIGTERM to run.sh stops every process it started;
#   (e) in a second run, a worker that keeps crashing is a crash loop: run.sh
#       says so, stops everything and exits non-zero.
# Takes under a minute; the last line is "N passed, M failed" and the exit
# status is non-zero if anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly gateway_bin="target/debug/jobgate"
readonly worker_bin=".venv/bin/jobgate-worker"
# Workers' lease: a job held by a killed worker is re-run after it.
readonly lease_ms=3000
readonly banner_timeout_s=60
readonly restart_timeout_s=15
readonly job_timeout_s=60
readonly stop_timeout_s=15
# Four restarts (1 + 2 + 4 + 8 s of backoff) before the fifth exit ends it.
readonly crash_loop_timeout_s=45
# The largest pricing job the example accepts, on one Dask thread: a few
# seconds, so the worker can be killed while it runs.
readonly slow_job='{"kind":"mc_option_price","params":{"spot":100,"strike":105,"rate":0.03,"volatility":0.25,"maturity":0.5,"paths":50000000,"chunks":50,"seed":7}}'

passed=0
failed=0
run_pid=""
run_output=""     # where the current run.sh prints
started_pids=()   # every process run.sh started that this test saw
work_dir=""

ok() {
  passed=$((passed + 1))
  echo "ok     $*"
}

not_ok() {
  failed=$((failed + 1))
  echo "FAILED $*"
}

# check <description> <command…>: one test result.
check() {
  local description=$1
  shift
  if "$@"; then ok "$description"; else not_ok "$description"; fi
}

# abort <description>: a failure the remaining checks cannot go on from.
abort() {
  not_ok "$1"
  exit 1
}

# wait_for <seconds> <command…>: retries the command until it succeeds; fails
# after the given time.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

# A loopback port nothing listens on (other than the ones in $*).
free_port() {
  local port
  for _ in $(seq 1 100); do
    port=$((20000 + RANDOM % 30000))
    [[ " $* " == *" $port "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  echo "no free loopback port found" >&2
  return 1
}

# Stops run.sh if it still runs, kills what it left behind, removes the
# temporary directory and prints the summary.
clean_up() {
  local status=$? pid
  if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
    not_ok "the test stopped at an unexpected error (status $status)"
  fi
  if [ -n "$run_pid" ] && kill -0 "$run_pid" 2>/dev/null; then
    kill -TERM "$run_pid" 2>/dev/null || true
    wait_for "$stop_timeout_s" process_gone "$run_pid" || true
  fi
  for pid in $(processes_of_this_test); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ "$failed" -gt 0 ] && [ -s "$run_output" ]; then
    echo "--- the last lines run.sh printed, apart from the components' JSON logs ---"
    grep -v '^{' "$run_output" | tail -n 30
    echo "--- the last JSON log lines ---"
    grep '^{' "$run_output" | tail -n 8
  fi
  [ -n "$work_dir" ] && rm -rf "$work_dir"
  echo "$passed passed, $failed failed"
  if [ "$failed" -gt 0 ] || [ "$status" -ne 0 ]; then exit 1; fi
}
trap clean_up EXIT
trap 'exit 1' INT TERM

# all_running <pid>…: every pid given is set and runs.
all_running() {
  local pid
  for pid in "$@"; do
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  done
}

process_gone() {
  ! kill -0 "$1" 2>/dev/null
}

# output_has <extended regex>: run.sh printed a matching line.
output_has() {
  grep -qE "$1" "$run_output"
}

# api <method> <path> [json body]: prints the HTTP status, a space and the body.
api() {
  local method=$1 path=$2 body=${3:-}
  local -a args=(-sS -X "$method" -H "Authorization: Bearer $token" -w '%{http_code} ' -o "$work_dir/body")
  [ -z "$body" ] || args+=(-H 'content-type: application/json' -d "$body")
  local status
  rm -f "$work_dir/body"
  status="$(curl "${args[@]}" "$base_url$path" 2>/dev/null)" || status="000 "
  printf '%s%s' "$status" "$(cat "$work_dir/body" 2>/dev/null)"
}

# submit <json>: prints the job id of an accepted submit; fails otherwise,
# printing the answer.
submit() {
  local answer
  answer="$(api POST /v1/jobs "$1")"
  if [[ "$answer" =~ ^202\ .*\"job_id\":\"([^\"]+)\" ]]; then
    echo "${BASH_REMATCH[1]}"
  else
    echo "submit answered: $answer" >&2
    return 1
  fi
}

# job_field <job id> <field>: a string or number field of the job's snapshot.
job_field() {
  local answer
  answer="$(api GET "/v1/jobs/$1")"
  [[ "$answer" =~ \"$2\":\"?([a-z0-9_]+) ]] && echo "${BASH_REMATCH[1]}"
}

job_status_is() {
  [ "$(job_field "$1" status)" = "$2" ]
}

job_finished() {
  [[ "$(job_field "$1" status)" =~ ^(completed|failed|cancelled)$ ]]
}

ready() {
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$base_url/readyz")" = 200 ]
}

# child_pid <pgrep args…>: the pid of run.sh's child that matches (nothing
# if none does).
child_pid() {
  pgrep -P "$run_pid" "$@" | head -n 1 || true
}

# find_component_pids: sets redis_pid, gateway_pid and worker_pid to run.sh's
# children (worker 1 found by its consumer name); aborts if one is missing.
find_component_pids() {
  redis_pid="$(child_pid -x redis-server)"
  gateway_pid="$(child_pid -x jobgate)"
  worker_pid="$(child_pid -f -- "--consumer $consumer-1( |$)")"
  started_pids+=("$redis_pid" "$gateway_pid" "$worker_pid")
  if [ -z "$redis_pid" ] || [ -z "$gateway_pid" ] || [ -z "$worker_pid" ]; then
    abort "run.sh started redis-server, the gateway and worker $consumer-1 (pids '$redis_pid' '$gateway_pid' '$worker_pid')"
  fi
}

# start_run_sh <name> [VAR=value…]: run.sh in the background on fresh
# loopback ports with its own state directory, with this test's settings and
# the given ones; sets run_pid, run_output, base_url and state_dir.
start_run_sh() {
  local name=$1 api_port redis_port
  shift
  api_port="$(free_port)"
  redis_port="$(free_port "$api_port")"
  base_url="http://127.0.0.1:$api_port"
  state_dir="$work_dir/$name-state"
  run_output="$work_dir/$name.out"
  : >"$run_output"
  env -u JOBGATE_REDIS_URL -u JOBGATE_AUTH -u JOBGATE_JWT_SECRET \
    JOBGATE_BIN="$gateway_bin" \
    JOBGATE_STATE_DIR="$state_dir" \
    JOBGATE_LISTEN="127.0.0.1:$api_port" \
    JOBGATE_REDIS_PORT="$redis_port" \
    JOBGATE_CONSUMER="$consumer" \
    JOBGATE_LEASE_MS="$lease_ms" \
    JOBGATE_DASK_THREADS=1 \
    "$@" scripts/run.sh >"$run_output" 2>&1 &
  run_pid=$!
}

banner_or_exit() {
  output_has "jobgate is running" || process_gone "$run_pid"
}

# wait_for_banner: aborts unless run.sh prints its banner in time.
wait_for_banner() {
  wait_for "$banner_timeout_s" banner_or_exit || true
  output_has "jobgate is running" ||
    abort "run.sh printed 'jobgate is running' within $banner_timeout_s s"
}

# wait_run_sh_exit <seconds>: waits that long at most for run.sh to exit; sets
# run_status (its exit status, or "still running") and run_took_s.
wait_run_sh_exit() {
  local timeout_s=$1 started=$SECONDS
  run_took_s="?"
  if wait_for "$timeout_s" process_gone "$run_pid"; then
    run_status=0
    wait "$run_pid" || run_status=$?
    run_pid=""
    run_took_s=$((SECONDS - started))
  else
    run_status="still running"
  fi
}

# processes_of_this_test: the pids of run.sh and everything it started (tee
# included), known by JOBGATE_STATE_DIR in their environment: it names this
# test's directory, so no other process on the machine can match.
processes_of_this_test() {
  local environ pid
  [ -n "$work_dir" ] || return 0
  for environ in /proc/[0-9]*/environ; do
    if grep -qzF "JOBGATE_STATE_DIR=$work_dir/" "$environ" 2>/dev/null; then
      pid="${environ#/proc/}"
      echo "${pid%/environ}"
    fi
  done
}

# processes_left: prints those of started_pids still running and any other
# process of this test; fails if there is one.
processes_left() {
  local pid left=()
  for pid in "${started_pids[@]}" $(processes_of_this_test); do
    if kill -0 "$pid" 2>/dev/null; then left+=("$pid"); fi
  done
  [ "${#left[@]}" -eq 0 ] || { echo "${left[*]}"; return 1; }
}

# no_process_left: none is left, allowing a moment for a tee to read its
# last line.
no_process_left() {
  local left
  wait_for 2 processes_left >/dev/null && return 0
  left="$(processes_left)" && return 0
  echo "still running:"
  ps -o pid,args -p "$left" || true
  return 1
}

# --- Preconditions -----------------------------------------------------------

[ -x "$gateway_bin" ] || abort "$gateway_bin is missing: build it first (cargo test, or make test-rust)"
[ -x "$worker_bin" ] || abort "$worker_bin is missing: run make venv first"
command -v redis-server >/dev/null || abort "redis-server is missing: run make redis-server first"

work_dir="$(mktemp -d "${TMPDIR:-/tmp}/jobgate-test-run.XXXXXX")"
consumer="test-run-$$"
started_at=$SECONDS

# --- (a) start, banner, first submit -----------------------------------------

start_run_sh supervise JOBGATE_WORKERS=1
wait_for_banner
token="$(cat "$state_dir/dev-token")"
echo_job="$(submit '{"kind":"echo","params":{"x":1}}')" ||
  abort "a submit right after the banner is accepted (202)"
ok "a submit right after the banner is accepted (202), $((SECONDS - started_at)) s after the start"
check "the first job completes" wait_for 10 job_status_is "$echo_job" completed

find_component_pids

# --- (b) kill -9 of the worker during a job ----------------------------------

slow_job_id="$(submit "$slow_job")" || abort "the slow pricing job is accepted"
wait_for 20 job_status_is "$slow_job_id" running || abort "the slow pricing job starts running"
kill -KILL "$worker_pid"
killed_at=$SECONDS
check "the killed worker is reported with its restart delay" \
  wait_for 5 output_has "worker-1 \\(pid $worker_pid\\) was killed by SIGKILL .*restarting it in [0-9]+ s"
check "the worker is restarted" wait_for "$restart_timeout_s" output_has "worker-1 restarted \\(pid [0-9]+\\)"
new_worker_pid="$(child_pid -f -- "--consumer $consumer-1( |$)")"
started_pids+=("$new_worker_pid")
check "the new worker runs (pid ${new_worker_pid:-none})" \
  test -n "$new_worker_pid" -a "$new_worker_pid" != "$worker_pid"
wait_for "$job_timeout_s" job_finished "$slow_job_id" || true
check "the job that was running completes after the restart ($((SECONDS - killed_at)) s after the kill)" \
  job_status_is "$slow_job_id" completed
attempt="$(job_field "$slow_job_id" attempt || true)"
check "it was run again after the kill (attempt ${attempt:-unknown})" test "${attempt:-0}" -ge 2

# --- (c) kill -9 of the gateway ----------------------------------------------

kill -KILL "$gateway_pid"
check "the killed gateway is reported" \
  wait_for 5 output_has "gateway \\(pid $gateway_pid\\) was killed by SIGKILL .*restarting it in [0-9]+ s"
check "the gateway is restarted and /readyz answers 200" wait_for "$restart_timeout_s" ready
new_gateway_pid="$(child_pid -x jobgate)"
started_pids+=("$new_gateway_pid")
submit_accepted() {
  submit "$1" >/dev/null
}
check "submits are accepted again" submit_accepted '{"kind":"echo","params":{"x":2}}'
check "the same worker and Redis still run" all_running "$new_worker_pid" "$redis_pid"

# --- (d) SIGTERM stops everything --------------------------------------------

kill -TERM "$run_pid"
wait_run_sh_exit "$stop_timeout_s"
check "run.sh stops on SIGTERM within $stop_timeout_s s (took $run_took_s s) with status 0 (got $run_status)" \
  test "$run_status" = 0
check "it says 'jobgate stopped.'" output_has "^jobgate stopped\\.$"
check "no process it started is left (${#started_pids[@]} pids, and any process with its state dir)" no_process_left

# --- (e) a crash loop stops everything ---------------------------------------

# A worker that runs once, then exits with status 3 at every start.
cat >"$work_dir/flaky-worker" <<FLAKY
#!/usr/bin/env bash
if [ -e "$work_dir/flaky-worker-ran" ]; then
  echo "flaky worker: failing on purpose" >&2
  exit 3
fi
touch "$work_dir/flaky-worker-ran"
exec "$PWD/$worker_bin" "\$@"
FLAKY
chmod +x "$work_dir/flaky-worker"
start_run_sh crash-loop JOBGATE_WORKERS=1 JOBGATE_WORKER_BIN="$work_dir/flaky-worker"
wait_for_banner
find_component_pids
kill -KILL "$worker_pid"
wait_run_sh_exit "$crash_loop_timeout_s"
check "a worker that keeps crashing stops run.sh within $crash_loop_timeout_s s (took $run_took_s s) with a non-zero status (got $run_status)" \
  test "$run_status" != 0 -a "$run_status" != "still running"
check "it says the worker is in a crash loop" output_has "worker-1 .*exited with status 3: 5 exits within [0-9]+ s, a crash loop; stopping everything"
check "it backed off 1, 2, 4 and 8 s" output_has "restarting it in 8 s"
check "no process it started is left (${#started_pids[@]} pids, and any process with its state dir)" no_process_left
echo "took $((SECONDS - started_at)) s"
