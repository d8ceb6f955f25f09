#!/usr/bin/env bash
# The project's test command (README.md): installs what it needs, then
# checks formatting and lints, runs every test of the workspace, Schemathesis
# against live relays, relay-core's crate checks (each feature alone, the
# examples, rustdoc, MSRV, cargo-deny), and a short run of every fuzz target.
set -Eeuo pipefail
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
# Each stage's wall time, printed at the end (and on a failure, so far).
stages=()
run_started=$SECONDS
stage() { # <name> <command...>
  local name="$1" t0=$SECONDS
  shift
  "$@"
  stages+=("$(printf '%6ss  %s' "$((SECONDS - t0))" "$name")")
}
print_stages() {
  echo "== time per stage"
  printf '%s\n' "${stages[@]}"
  printf '%6ss  total\n' "$((SECONDS - run_started))"
}
trap 'failure_summary; print_stages >&2' ERR
cargo_logged() { cargo "$@" 2>&1 | tee -a "$log"; }
stage "Debian packages" scripts/setup-debian.sh
echo "disk space before building: $(df -h --output=avail . | tail -n 1)"
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy
stage "rustfmt" cargo fmt --all -- --check
stage "clippy (workspace)" cargo_logged clippy --workspace --all-targets --locked -- -D warnings
# aiortc (PyPI) in a venv: the WebRTC peers of relay-bin/tests/turn_webrtc.rs.
stage "WebRTC venv" scripts/setup-webrtc.sh
stage "tests (workspace)" cargo_logged test --workspace --locked
# The admin API against its own OpenAPI document (Schemathesis, every check).
stage "schemathesis" scripts/schemathesis.sh
# The systemd install steps, followed literally in a private mount namespace.
stage "systemd install" deploy/test-install.sh target/debug/ucmrc
# What `cargo build --release` and `cargo install --path relay-bin` build needs
# nothing but the Rust toolchain: no libclang (bindgen), no libsrtp.
if cargo tree -e normal,build --prefix none | grep -qE '^(bindgen|clang-sys|srtp|srtp2-sys) '; then
  echo "the default build pulls bindgen/libsrtp: it would need libclang" >&2
  exit 1
fi
# The kernel fast path: the committed BPF object is what its source compiles
# to, and the program forwards in a private network namespace (as root).
stage "BPF object" scripts/build-bpf.sh --check
stage "kernel fast path tests" cargo_logged test -p relay-core --features ebpf,srtp-keys --locked \
  --test ebpf_fast_path --test datapath_differential
# relay-core's features one by one, the examples, rustdoc, MSRV, cargo-deny.
stage "crate checks" scripts/check-crates.sh
# Every fuzz target for a short, bounded time (fuzz/smoke.sh installs cargo-fuzz).
stage "fuzz smoke" env FUZZ_SECONDS="${FUZZ_SECONDS:-15}" fuzz/smoke.sh
# One closing line for the whole run (cargo prints one per test binary).
print_stages
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
