#!/usr/bin/env bash
# Runs an embedded relay on loopback with simulated SRTP calls through it
# (no config file needed). Extra arguments go to the example, e.g.
#   scripts/demo.sh --calls 100 --seconds 0
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
exec cargo run --release --locked -p relay-core --example simulated_call -- "$@"
