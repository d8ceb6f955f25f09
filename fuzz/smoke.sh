#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (FUZZ_SECONDS, default 20) on
# stable Rust without a sanitizer (`-s none`), starting from the committed
# seeds. Installs cargo-fuzz if it is missing. A crash fails the script and
# leaves the input in fuzz/artifacts/TARGET/.
#   FUZZ_SECONDS=600 fuzz/smoke.sh          # the 10-minute runs of docs/SECURITY-TESTING.md
#   FUZZ_SANITIZER=address fuzz/smoke.sh    # ASan (needs RUSTC_BOOTSTRAP=1 on stable)
set -euo pipefail
cd "$(dirname "$0")"
# A debug build of the tool: it only drives cargo, and builds in a fraction
# of a release build's time (the test command installs it from source).
command -v cargo-fuzz >/dev/null 2>&1 ||
  CARGO_TARGET_DIR=../target/tools cargo install cargo-fuzz --locked --debug --version 0.13.2
seconds="${FUZZ_SECONDS:-20}"
sanitizer="${FUZZ_SANITIZER:-none}"
if [ "$sanitizer" != none ]; then export RUSTC_BOOTSTRAP=1; fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Every target built at once (in parallel, dependencies once); each run
# below then finds its binary built.
cargo fuzz build -s "$sanitizer"
for target in $(cargo fuzz list); do
  mkdir -p "$work/$target"
  echo "fuzz: $target for ${seconds}s"
  status=0
  cargo fuzz run -s "$sanitizer" "$target" "$work/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$work/$target.log" 2>&1 || status=$?
  grep -E "^Done|stat::number_of_executed_units|stat::peak_rss|ERROR|panicked|SUMMARY" "$work/$target.log" || true
  if [ "$status" -ne 0 ]; then
    tail -40 "$work/$target.log"
    echo "fuzz: $target FAILED (input in fuzz/artifacts/$target/)"
    exit 1
  fi
done
echo "fuzz: all targets ran ${seconds}s without a crash"
