#!/usr/bin/env bash
# Property-based fuzzing of the REST API against its OpenAPI document
# (proto-schemas/openapi.json) with schemathesis: no answer may be a 5xx,
# and every answer must have a documented status, content type and body.
#
# Starts everything it needs and stops it on exit: its own redis-server on
# a free port, the gateway (auth on, a fresh HS256 secret) and the Python
# pricing worker, which registers the job kinds. The WebSocket and SSE
# routes are left out: schemathesis cannot consume an upgrade or an endless
# stream (crates/jobgate/tests/openapi.rs checks them).
#
#   scripts/api-fuzz.sh                       # the default budget
#   API_FUZZ_EXAMPLES=500 API_FUZZ_SEED=7 scripts/api-fuzz.sh
#
# Environment: API_FUZZ_EXAMPLES (cases per operation and phase, default
# 150), API_FUZZ_SEED (default fixed, so CI runs are reproducible),
# JOBGATE_BIN (default: target/debug/jobgate, built if needed),
# API_FUZZ_DOCUMENT (another copy of the document, e.g. to check that a
# wrong one fails).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

schemathesis_version="4.32.5"
examples="${API_FUZZ_EXAMPLES:-150}"
document="$(realpath "${API_FUZZ_DOCUMENT:-$root/proto-schemas/openapi.json}")"
seed="${API_FUZZ_SEED:-20261127}"

[ -x .venv/bin/jobgate-worker ] || make venv
if ! .venv/bin/schemathesis --version 2>/dev/null | grep -q "$schemathesis_version"; then
  echo "api-fuzz: installing schemathesis $schemathesis_version into .venv…"
  .venv/bin/pip install --quiet "schemathesis==$schemathesis_version"
fi
if [ -z "${JOBGATE_BIN:-}" ]; then
  cargo build --quiet --bin jobgate
  JOBGATE_BIN="$root/target/debug/jobgate"
fi

work="$(mktemp -d)"
pids=()
stop_all() {
  local status=$?
  trap - EXIT INT TERM
  # Worker first (it finishes its jobs), then the gateway, then Redis.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "${pids[i]}" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  rm -rf "$work"
  exit "$status"
}
trap stop_all EXIT INT TERM

free_port() {
  .venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

redis_port="$(free_port)"
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work" \
  --save "" --appendonly no --logfile "$work/redis.log" &
pids+=($!)
for _ in $(seq 1 100); do
  redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
redis-cli -p "$redis_port" ping >/dev/null || { echo "api-fuzz: redis-server did not start" >&2; exit 1; }

export JOBGATE_REDIS_URL="redis://127.0.0.1:$redis_port"
export JOBGATE_AUTH=jwt
JOBGATE_JWT_SECRET="$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=')"
export JOBGATE_JWT_SECRET
gateway_port="$(free_port)"
export JOBGATE_LISTEN="127.0.0.1:$gateway_port"
base="http://$JOBGATE_LISTEN"

"$JOBGATE_BIN" 2>"$work/gateway.log" &
pids+=($!)
.venv/bin/jobgate-worker examples.pricing:worker --concurrency 2 2>"$work/worker.log" &
pids+=($!)

for _ in $(seq 1 100); do
  curl -fsS "$base/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "$base/readyz" >/dev/null || { echo "api-fuzz: the gateway is not ready" >&2; tail -20 "$work/gateway.log" >&2; exit 1; }
for _ in $(seq 1 600); do
  [ "$(redis-cli -p "$redis_port" hexists jobgate:kinds:v2 echo)" = "1" ] && break
  sleep 0.1
done
[ "$(redis-cli -p "$redis_port" hexists jobgate:kinds:v2 echo)" = "1" ] || {
  echo "api-fuzz: the worker registered no kinds" >&2; tail -20 "$work/worker.log" >&2; exit 1; }

# An admin token, so that the admin routes are fuzzed past their 403.
token="$("$JOBGATE_BIN" token --sub fuzz --ttl-s 3600 --admin)"

echo "api-fuzz: schemathesis $schemathesis_version against $base (seed $seed, $examples examples per operation)"
# Run from the temporary folder: schemathesis keeps a cache of earlier
# failures in ./.schemathesis, which must neither land in the repository nor
# make one run depend on another.
run_schemathesis() {
  (cd "$work" && "$root/.venv/bin/schemathesis" run "$document" \
    --url "$base" \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --exclude-path /v1/ws \
    --exclude-path-regex '/events$' \
    --phases examples,coverage,fuzzing \
    --mode all \
    --max-examples "$examples" \
    --seed "$seed" \
    --workers 2 \
    --request-timeout 10 \
    --output-sanitize true) \
    2>&1 | tee "$work/schemathesis.log"
}
status=0
run_schemathesis || status=$?
# A crash inside the tool itself (reported as "Runtime Error", e.g. a
# Hypothesis FlakyFailure while it generates data) says nothing about the
# API: run again, at most twice more. The seed is fixed, so a real failure
# fails every time.
for _ in 1 2; do
  if [ "$status" -eq 0 ] || ! grep -q "Runtime Error" "$work/schemathesis.log"; then
    break
  fi
  echo "api-fuzz: schemathesis itself crashed (Runtime Error); running it again" >&2
  status=0
  run_schemathesis || status=$?
done

# The summary prints "Test cases:" and, on the next line, "N generated, N passed…".
cases="$(grep -A1 '^Test cases:' "$work/schemathesis.log" | tail -1 | sed 's/^ *//' || true)"
echo "api-fuzz: test cases: ${cases:-(count not found in the output)}"
# The gateway's own error lines (client log records it relays carry
# "source":"client" and may say anything).
gateway_errors() { grep '"level":"error"' "$work/gateway.log" | grep -v '"source":"client"' || true; }
if [ -n "$(gateway_errors)" ]; then
  echo "api-fuzz: the gateway logged errors meanwhile (the last ones):" >&2
  gateway_errors | tail -10 >&2
fi
if [ "$status" -ne 0 ]; then
  echo "api-fuzz: FAILED (schemathesis exit $status)" >&2
  exit "$status"
fi
echo "api-fuzz: passed"
