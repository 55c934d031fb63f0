#!/usr/bin/env bash
# Builds and tests @jobgate/client: npm ci (when node_modules is missing or
# older than package-lock.json), build, unit tests, the integration tests
# against a real gateway, then npm pack and a check that the tarball
# installs into an empty project where the README's example imports — and,
# against the real gateway, runs to `completed`.
#
# The real gateway: JOBGATE_TEST_URL (+ JOBGATE_TEST_TOKEN, and for the
# token-refresh and restart tests JOBGATE_JWT_SECRET, JOBGATE_BIN,
# JOBGATE_REDIS_URL) when set; otherwise this script starts one with
# scripts/with-gateway.sh. Nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
package_dir="$PWD"

fail() {
  echo "test-client: $*" >&2
  exit 1
}
command -v node >/dev/null || fail "node is required (Node.js 20)"
command -v npm >/dev/null || fail "npm is required"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 20 ] || fail "Node.js 20 or later is required (found $(node --version))"

# --- Install and build -----------------------------------------------------------
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "test-client: npm ci" >&2
  npm ci --no-audit --no-fund --silent
fi
npm run --silent build >/dev/null

# --- Unit tests ------------------------------------------------------------------
echo "test-client: unit tests" >&2
node --test dist/test/

# --- Integration tests against a real gateway ------------------------------------
# The README example, as the README shows it.
example="$(mktemp -d)"
trap 'rm -rf "$example"' EXIT
sed -n '/<!-- example:start -->/,/<!-- example:end -->/p' README.md | sed '1,2d;$d' | sed '$d' >"$example/price.mjs"
grep -q 'new JobgateClient' "$example/price.mjs" || fail "no example between the README's example markers"

# The tarball, installed into an empty project with ws beside it.
echo "test-client: npm pack and install" >&2
rm -rf dist-pack && mkdir -p dist-pack
npm pack --silent --pack-destination dist-pack >/dev/null
tarball="$(ls dist-pack/jobgate-client-*.tgz)"
(
  cd "$example"
  npm init -y >/dev/null
  npm install --no-audit --no-fund --silent "$package_dir/$tarball" "ws@$(node -p 'require("'"$package_dir"'/node_modules/ws/package.json").version')"
  node --input-type=module -e '
    import { JobgateClient, Engine } from "@jobgate/client";
    import { readFileSync } from "node:fs";
    if (typeof JobgateClient !== "function" || typeof Engine !== "function") throw new Error("exports missing");
    const pkg = JSON.parse(readFileSync("node_modules/@jobgate/client/package.json", "utf8"));
    for (const file of ["dist/src/index.d.ts", "dist-bundle/jobgate-client.js"]) readFileSync("node_modules/@jobgate/client/" + file);
    console.error(`test-client: ${pkg.name}@${pkg.version} installs and imports`);
  '
) || fail "the packed tarball does not install or import"

run_integration() {
  node --test --test-concurrency=1 dist/test-integration/
  echo "test-client: the README example against $JOBGATE_TEST_URL" >&2
  local output
  output="$(cd "$example" && JOBGATE_URL="$JOBGATE_TEST_URL" JOBGATE_TOKEN="${JOBGATE_TEST_TOKEN:-}" timeout 120 node price.mjs)" ||
    fail "the README example failed"
  echo "$output" | tail -n 2 >&2
  echo "$output" | grep -q ' completed ' || fail "the README example did not print a completed event"
}
export -f run_integration fail
export example

if [ -n "${JOBGATE_TEST_URL:-}" ]; then
  run_integration
else
  echo "test-client: JOBGATE_TEST_URL is not set: starting a gateway (scripts/with-gateway.sh)" >&2
  scripts/with-gateway.sh bash -c run_integration
fi
echo "test-client: all checks passed" >&2
