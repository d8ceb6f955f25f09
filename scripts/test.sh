#!/usr/bin/env bash
# The project's test command (README.md): installs what it needs, then
# checks formatting and lints and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
