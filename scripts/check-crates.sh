#!/usr/bin/env bash
# The crate boundary embedders rely on (part of the test command):
#  - relay-core builds, lints, tests and documents with each feature alone
#    and with none (the feature list is read from Cargo.toml, so a new
#    feature is covered without editing this script);
#  - the engine and the connector pull in only what they use; relay-cluster
#    builds with and without its ng feature;
#  - the examples run;
#  - rustdoc is warning-free; the public API is the committed list;
#    the declared MSRV builds the crates;
#  - cargo-deny accepts every licence, ban and source (offline checks).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step says how long the one before it took (the test command's
# time per stage shows this script's total).
step_name=""
step_started=$SECONDS
step() {
  [ -n "$step_name" ] && printf '== %s: %ss\n' "$step_name" "$((SECONDS - step_started))"
  step_name="$*"
  step_started=$SECONDS
  printf '\n== %s\n' "$*"
}

features=$(cargo metadata --no-deps --format-version 1 --locked | python3 -c '
import json, sys
d = json.load(sys.stdin)
core = next(p for p in d["packages"] if p["name"] == "relay-core")
print(" ".join(sorted(f for f in core["features"] if f != "default")))')

for f in "" $features; do
  args=(-p relay-core --no-default-features --locked)
  [ -n "$f" ] && args+=(--features "$f")
  step "relay-core ${f:-(no features)}"
  cargo clippy "${args[@]}" --lib -- -D warnings
  cargo test "${args[@]}" --lib -q
  RUSTDOCFLAGS="-D warnings" cargo doc "${args[@]}" --no-deps -q
done

step "relay-cluster with and without its ng and turn features"
cargo clippy -p relay-cluster --no-default-features --locked --lib -- -D warnings
cargo clippy -p relay-cluster --no-default-features --features turn --locked --lib -- -D warnings
cargo clippy -p relay-cluster --locked --lib -- -D warnings

step "rustdoc with every feature, and the binary's"
RUSTDOCFLAGS="-D warnings" cargo doc -p relay-core --all-features --no-deps --locked -q
RUSTDOCFLAGS="-D warnings" cargo doc -p relay-cluster --no-deps --locked -q
RUSTDOCFLAGS="-D warnings" cargo doc -p ucmrc --no-deps --locked -q

step "public API (relay-core/public-api.txt)"
scripts/check-public-api.sh

step "what an embedder pays for"
# crates that must not appear: name, and the builds that must not have it.
refuse() { # <description> <pattern> <cargo tree args...>
  local what="$1" pattern="$2"
  shift 2
  local found
  found=$(cargo tree --locked -e normal --prefix none "$@" | grep -E "$pattern" | sort -u || true)
  if [ -n "$found" ]; then
    echo "cargo tree $*: $what:" >&2
    echo "$found" >&2
    exit 1
  fi
}
heavy='^(rustls|ring|rcgen|serde_json|tokio-rustls|aws-lc-rs) '
refuse "the media engine pulls TLS, certificates or JSON" "$heavy" -p relay-core
refuse "relay-core without features pulls TLS, certificates or JSON" "$heavy" -p relay-core --no-default-features
refuse "the connector pulls io_uring or certificate generation" '^(io-uring|rcgen) ' \
  -p relay-core --no-default-features --features connector
refuse "ucmrc without its demo links certificate generation" '^rcgen ' -p ucmrc --no-default-features
if cargo tree --locked -p ucmrc --no-default-features -e normal,features --prefix none -i relay-core |
  grep -q '^relay-core feature "testkit"'; then
  echo "ucmrc without its demo enables relay-core's testkit" >&2
  exit 1
fi
for build in "" "--no-default-features"; do
  # tokio's runtime (feature "rt") must not be enabled for the engine.
  # shellcheck disable=SC2086
  if cargo tree --locked -p relay-core $build -e normal,features --prefix none -i tokio 2>/dev/null |
    grep -qE '^tokio feature "(rt|rt-multi-thread|net|time)"'; then
    echo "relay-core $build enables tokio's runtime" >&2
    exit 1
  fi
done
for build in "" "--no-default-features"; do
  # shellcheck disable=SC2086
  echo "relay-core ${build:-(default)}: $(cargo tree --locked -p relay-core $build -e normal --prefix none | sed 's/ (\*)$//' | sort -u | wc -l) crates"
done

step "examples"
cargo run --locked -q -p relay-core --example embed_in_tokio
cargo run --locked -q -p relay-core --example drive_a_shard
cargo run --locked -q -p relay-core --features control,connector,testkit --example pbx_connector

step "MSRV"
msrv=$(cargo metadata --no-deps --format-version 1 --locked | python3 -c '
import json, sys
print(next(p["rust_version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "relay-core"))')
# clippy's incompatible_msrv lint (in the clippy runs above, -D warnings)
# already refuses std APIs newer than rust-version; with the toolchain
# itself, the crates are built by it too. A machine that cannot download a
# toolchain says so here and keeps the lint's check.
if rustup toolchain list | grep -q "^$msrv" || rustup toolchain install "$msrv" --profile minimal; then
  CARGO_TARGET_DIR=target/msrv cargo "+$msrv" check --locked -p relay-core --all-features
  CARGO_TARGET_DIR=target/msrv cargo "+$msrv" check --locked -p relay-core --no-default-features
  CARGO_TARGET_DIR=target/msrv cargo "+$msrv" check --locked -p ucmrc -p loadtest
else
  echo "MSRV: toolchain $msrv cannot be installed on this machine; checked by clippy's incompatible_msrv lint only" >&2
fi

step "cargo deny (licences, bans, sources)"
# A debug build of the tool: its checks take a second either way, and it
# builds in a fraction of a release build's time.
command -v cargo-deny >/dev/null ||
  CARGO_TARGET_DIR=target/tools cargo install cargo-deny --locked --debug --version 0.20.2
cargo deny --locked --all-features check --hide-inclusion-graph licenses bans sources
step done
