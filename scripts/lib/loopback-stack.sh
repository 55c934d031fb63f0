# shellcheck shell=bash
# A jobgate stack on loopback for a test script: its own redis-server on a
# free port and a JWT-authenticated gateway's environment. Sourced by
# scripts/test-dashboard.sh and clients/typescript/scripts/with-gateway.sh,
# which define `fail` (print and exit) first.
#
#   stack_init           a work directory and a trap that stops every pid in
#                        `pids` (and a gateway whose pid is in
#                        $work_dir/gateway.pid) on exit
#   start_redis          redis-server on a free port; sets redis_port and
#                        exports JOBGATE_REDIS_URL
#   export_gateway_env   JOBGATE_LISTEN on a free port, JWT auth with a fresh
#                        secret (JOBGATE_AUTH, JOBGATE_JWT_SECRET)
#   wait_for WHAT CMD…   runs CMD until it succeeds, for up to 30 s; then
#                        prints the gateway's and worker's logs and fails

stack_init() {
  work_dir="$(mktemp -d)"
  pids=()
  trap stack_cleanup EXIT
  trap 'exit 1' INT TERM
}

stack_cleanup() {
  local pid
  # A gateway a test started itself; stopped here should the test not.
  [ ! -s "$work_dir/gateway.pid" ] || pids+=("$(cat "$work_dir/gateway.pid")")
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work_dir"
}

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

start_redis() {
  redis_port="$(free_port)"
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$work_dir" --logfile "$work_dir/redis.log" &
  pids+=("$!")
  wait_for "redis-server to answer" redis-cli -p "$redis_port" ping
  export JOBGATE_REDIS_URL="redis://127.0.0.1:$redis_port"
}

export_gateway_env() {
  JOBGATE_LISTEN="127.0.0.1:$(free_port)"
  export JOBGATE_LISTEN
  export JOBGATE_AUTH=jwt
  JOBGATE_JWT_SECRET="$(head -c 32 /dev/urandom | base64 | tr -d '\n/+=')"
  export JOBGATE_JWT_SECRET
}
