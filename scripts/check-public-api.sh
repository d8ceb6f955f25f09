#!/usr/bin/env bash
# relay-core's public API (every feature on) against the committed list
# relay-core/public-api.txt, so that growth is a reviewed diff and not an
# accident. `--bless` rewrites the list after a deliberate change.
#
# rustdoc's JSON output is unstable: RUSTC_BOOTSTRAP=1 lets the stable
# toolchain write it (its own target directory, so the main build's
# fingerprints are untouched); scripts/public-api.py reads only its basics.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=target/public-api
RUSTC_BOOTSTRAP=1 cargo rustdoc -q --locked -p relay-core --all-features --lib -- -Z unstable-options --output-format json
current="$(mktemp)"
trap 'rm -f "$current"' EXIT
python3 scripts/public-api.py "$CARGO_TARGET_DIR/doc/relay_core.json" >"$current"
if [ "${1:-}" = "--bless" ]; then
  cp "$current" relay-core/public-api.txt
  echo "relay-core/public-api.txt: $(wc -l <"$current") items"
  exit 0
fi
if ! diff -u relay-core/public-api.txt "$current"; then
  echo "relay-core's public API changed (above: - committed, + now). If deliberate, run" >&2
  echo "scripts/check-public-api.sh --bless and commit relay-core/public-api.txt." >&2
  exit 1
fi
echo "relay-core public API: $(wc -l <"$current") items, as committed"
