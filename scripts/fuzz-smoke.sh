#!/usr/bin/env bash
# A short, bounded run of every cargo fuzz target in fuzz/ (part of
# `make test`). Fails on any crash, panic, timeout or out-of-memory, and
# prints the input that caused it.
#
#   scripts/fuzz-smoke.sh                 # every target, FUZZ_SECONDS each
#   FUZZ_SECONDS=300 scripts/fuzz-smoke.sh job_record
#
# cargo fuzz needs rustc's -Z flags (the sanitizer and -Zbuild-std options).
# The machine has a stable toolchain only, so the script sets
# RUSTC_BOOTSTRAP=1, which lets stable rustc take them; that is the only
# thing the variable is used for, and only for this build. cargo-fuzz itself
# is installed from crates.io when missing (about two minutes, once).
#
# Each run starts from the committed seeds in fuzz/corpus/<target>/ and
# writes what it discovers to a temporary folder, so the committed corpus
# changes only when someone adds to it on purpose (`cargo fuzz cmin`).
# A crashing input is kept in fuzz/artifacts/<target>/ (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

cargo_fuzz_version="0.13.2"
seconds="${FUZZ_SECONDS:-25}"
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  targets=(ws_client_message event_header job_record)
fi

if ! cargo fuzz --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
  echo "fuzz-smoke: installing cargo-fuzz $cargo_fuzz_version (once)…"
  cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked --quiet
fi

export RUSTC_BOOTSTRAP=1
target_dir="$root/target/fuzz"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# `cargo fuzz <command> <options> <target> …`: the options go before the
# target, as everything after `--` is libFuzzer's.
fuzz() {
  local command="$1"
  shift
  cargo fuzz "$command" --fuzz-dir "$root/fuzz" --target-dir "$target_dir" --debug-assertions "$@"
}

echo "fuzz-smoke: building ${targets[*]}"
for target in "${targets[@]}"; do
  fuzz build "$target"
done

failed=()
for target in "${targets[@]}"; do
  corpus="$work/$target"
  artifacts="$root/fuzz/artifacts/$target"
  mkdir -p "$corpus" "$artifacts"
  log="$work/$target.log"
  echo "fuzz-smoke: $target for ${seconds}s"
  status=0
  fuzz run "$target" "$corpus" "$root/fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1 || status=$?
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  if [ "$status" -ne 0 ]; then
    failed+=("$target")
    echo "fuzz-smoke: $target FAILED (exit $status) after ${runs:-?} executions" >&2
    grep -E "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY|Test unit written" "$log" >&2 || tail -40 "$log" >&2
    for input in $(sed -n 's/.*Test unit written to \([^ ]*\).*/\1/p' "$log"); do
      echo "fuzz-smoke: input ($input), as escaped text:" >&2
      od -c "$input" | head -40 >&2
    done
  else
    echo "fuzz-smoke: $target ok: $runs executions, $(find "$corpus" -type f | wc -l) new corpus entries"
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz-smoke: crashes in ${failed[*]}" >&2
  exit 1
fi
echo "fuzz-smoke: no crash in ${targets[*]}"
