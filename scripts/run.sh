#!/usr/bin/env bash
# Runs the whole system in the foreground: its own redis-server (data and
# AOF under .jobgate/, unless JOBGATE_REDIS_URL points elsewhere), the
# gateway and the pricing worker. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

state_dir="$PWD/.jobgate"
mkdir -p "$state_dir"
pids=()

stop_all() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "jobgate stopped."
}
trap stop_all EXIT INT TERM

if [ -z "${JOBGATE_REDIS_URL:-}" ]; then
  redis_port="${JOBGATE_REDIS_PORT:-6390}"
  if redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
    echo "port $redis_port already has a Redis that is not ours; set JOBGATE_REDIS_PORT or JOBGATE_REDIS_URL" >&2
    exit 1
  fi
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$state_dir" \
    --appendonly yes --appendfsync everysec --save "" \
    --logfile "$state_dir/redis.log" &
  pids+=($!)
  export JOBGATE_REDIS_URL="redis://127.0.0.1:$redis_port"
  for _ in $(seq 1 100); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  redis-cli -p "$redis_port" ping >/dev/null || { echo "redis-server did not start; see $state_dir/redis.log" >&2; exit 1; }
fi

listen="${JOBGATE_LISTEN:-127.0.0.1:8080}"
export JOBGATE_LISTEN="$listen"

# Authentication is on: a development secret (kept under .jobgate/ so tokens
# survive restarts) and a ready token for the user "dev".
if [ -z "${JOBGATE_AUTH:-}" ]; then
  secret_file="$state_dir/dev-secret"
  if [ ! -s "$secret_file" ]; then
    (umask 077; head -c 48 /dev/urandom | base64 | tr -d '\n/+=' > "$secret_file")
  fi
  export JOBGATE_AUTH=jwt
  export JOBGATE_JWT_SECRET="$(cat "$secret_file")"
fi
token=""
if [ "$JOBGATE_AUTH" = "jwt" ] && [ -n "${JOBGATE_JWT_SECRET:-}" ]; then
  token="$(./target/release/jobgate token --sub dev --ttl-s 604800)"
  (umask 077; printf '%s\n' "$token" > "$state_dir/dev-token")
fi

./target/release/jobgate 2> >(tee -a "$state_dir/gateway.log" >&2) &
pids+=($!)
.venv/bin/jobgate-worker examples.pricing:worker 2> >(tee -a "$state_dir/worker.log" >&2) &
pids+=($!)

for _ in $(seq 1 100); do
  curl -fsS "http://$listen/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

dashboard="http://$listen/"
[ -n "$token" ] && dashboard="http://$listen/?access_token=$token"
cat <<MSG

  jobgate is running
    dashboard   $dashboard
    API         http://$listen/v1/jobs
    token       $state_dir/dev-token  (curl -H "Authorization: Bearer \$(cat .jobgate/dev-token)" …)
    Redis       $JOBGATE_REDIS_URL
    logs        $state_dir/{gateway,worker,redis}.log
  Press Ctrl-C to stop.

MSG

# Stop everything as soon as any component exits.
wait -n
