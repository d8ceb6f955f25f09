#!/usr/bin/env bash
# The project's test command (README.md): installs what it needs, then
# checks formatting and lints, runs every test of the workspace, Schemathesis
# against live relays, relay-core's crate checks (each feature alone, the
# examples, rustdoc, MSRV, cargo-deny), and a short run of every fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# On a failure, the last lines of cargo's output again with very long lines
# (a linker's command line runs to hundreds of kilobytes) cut short, so the
# reason is not buried, and the disk space left (a full disk fails links).
failure_summary() {
  echo "== test command failed; the end of cargo's output (clippy, tests), long lines cut:" >&2
  tail -n 60 "$log" | cut -c1-300 >&2
  df -h . >&2
}
trap failure_summary ERR
scripts/setup-debian.sh
echo "disk space before building: $(df -h --output=avail . | tail -n 1)"
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings 2>&1 | tee -a "$log"
cargo test --workspace --locked 2>&1 | tee -a "$log"
# The admin API against its own OpenAPI document (Schemathesis, every check).
scripts/schemathesis.sh
# The systemd install steps, followed literally in a private mount namespace.
deploy/test-install.sh target/debug/ucmrc
# What `cargo build --release` and `cargo install --path relay-bin` build needs
# nothing but the Rust toolchain: no libclang (bindgen), no libsrtp.
if cargo tree -e normal,build --prefix none | grep -qE '^(bindgen|clang-sys|srtp|srtp2-sys) '; then
  echo "the default build pulls bindgen/libsrtp: it would need libclang" >&2
  exit 1
fi
# The kernel fast path: the committed BPF object is what its source compiles
# to, and the program forwards in a private network namespace (as root).
scripts/build-bpf.sh --check
cargo test -p relay-core --features ebpf,srtp-keys --locked --test ebpf_fast_path --test datapath_differential 2>&1 | tee -a "$log"
# relay-core's features one by one, the examples, rustdoc, MSRV, cargo-deny.
scripts/check-crates.sh
# Every fuzz target for a short, bounded time (fuzz/smoke.sh installs cargo-fuzz).
FUZZ_SECONDS="${FUZZ_SECONDS:-15}" fuzz/smoke.sh
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
