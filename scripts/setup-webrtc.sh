#!/usr/bin/env bash
# A venv under target/ with aiortc (a WebRTC stack from PyPI) for
# relay-bin/tests/turn_webrtc.rs: two relay-only peers exchange data
# through ucmrc's TURN. Idempotent; called by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
version="1.16.0"
venv="target/webrtc-venv"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import aiortc, sys; sys.exit(aiortc.__version__ != '$version')" 2>/dev/null; then
  exit 0
fi
if ! python3 -m venv "$venv" >/dev/null 2>&1; then
  # Debian's own python3 needs python3-venv for this.
  SUDO=""; if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get install -y -q --no-install-recommends python3-venv
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q "aiortc==$version"
