#!/usr/bin/env bash
# Runs `ucmrc demo`: a relay, a simulated PBX and N phones on loopback with
# real SRTP through the relay. Arguments go to the demo, e.g.
#   scripts/demo.sh --calls 100 --seconds 0
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release --locked -p ucmrc -- demo "$@"
