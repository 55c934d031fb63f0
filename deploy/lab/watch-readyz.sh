#!/usr/bin/env bash
# watch-readyz.sh <name=url>…: asks each URL's /readyz every 0.5 s and prints
# a line whenever a gateway's answer changes (status code, and the body of a
# non-200 answer), so a run's log shows when and why a gateway was unready —
# HAProxy takes a gateway out on the same answers.
declare -A last=()
body=$(mktemp)
trap 'rm -f "$body"; exit 0' TERM INT
while true; do
  for target in "$@"; do
    name=${target%%=*}
    : >"$body"
    code=$(curl -s -m 1 -o "$body" -w '%{http_code}' "${target#*=}/readyz") || true
    if [ "$code" != "${last[$name]:-}" ]; then
      detail=""
      # (without the per-node list, which says little more than failing_nodes)
      [ "$code" = 200 ] || detail=$(sed 's/"nodes":\[[^]]*\],\?//' "$body" | head -c 600)
      [ "$code" != 000 ] || detail="no answer within 1 s (refused, or the link is down)"
      printf '%s %s /readyz %s %s\n' "$(date +%H:%M:%S.%3N)" "$name" "$code" "$detail"
      last[$name]=$code
    fi
  done
  sleep 0.5
done
