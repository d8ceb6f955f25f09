#!/usr/bin/env bash
# Runs Schemathesis (from PyPI, in a venv under target/) against live relays
# built from this tree: with a bearer token under two seeds — a fixed one and
# one chosen at random for this run (printed: ST_SEED=... replays it) — and
# tokenless on loopback under another fixed seed. Every check is on; the
# number of examples is bounded. Called by scripts/test.sh.
#   ST_EXAMPLES=500 scripts/schemathesis.sh     # a longer run
#   ST_SEED=123456 scripts/schemathesis.sh      # replay a random seed
set -euo pipefail
cd "$(dirname "$0")/.."
version="4.32.5"
venv="target/schemathesis-venv"
examples="${ST_EXAMPLES:-100}"
if [ ! -x "$venv/bin/st" ] || ! "$venv/bin/st" --version 2>/dev/null | grep -q "$version"; then
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian's own python3 needs python3-venv for this.
    SUDO=""; if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get install -y -q --no-install-recommends python3-venv
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q "schemathesis==$version"
fi
cargo build -q -p ucmrc --locked
bin="target/debug/ucmrc"
work="$(mktemp -d)"
pids=()
cleanup() {
  # drain_timeout_secs = 0: the relays leave at once, sessions or not.
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Starts a relay with config $1 in this shell (so cleanup can stop it) and
# sets $addr to its admin address once it serves.
addr=""
start_relay() {
  local config="$1" out="$work/$(basename "$1").out"
  "$bin" relay --config "$config" >"$out" 2>"$out.err" &
  pids+=("$!")
  for _ in $(seq 1 200); do
    addr="$(sed -n 's/.*admin API on http:\/\/\([0-9.:]*\).*/\1/p' "$out" | head -1)"
    if [ -n "$addr" ]; then return 0; fi
    sleep 0.05
  done
  echo "relay did not start: $(cat "$out.err")" >&2
  return 1
}

token="schemathesis-$(date +%s%N)"
hash="$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)"
# A loopback relay config: media range $1-$2, then any extra [admin] lines.
relay_config() {
  cat <<TOML
[relay]
port_min = $1
port_max = $2
workers = 2
drain_timeout_secs = 0
[ng]
enabled = false
[admin]
listen = "127.0.0.1:0"
${3:-}
TOML
}
relay_config 20000 24999 "token_sha256 = \"$hash\"" >"$work/token.toml"
relay_config 25000 29999 >"$work/tokenless.toml"

random_seed="${ST_SEED:-$(( (RANDOM << 15) | RANDOM ))}"
run() {
  local label="$1" addr="$2" seed="$3"; shift 3
  echo "schemathesis: $label relay at $addr, seed $seed ($examples examples per operation, every check)"
  (cd "$work" && "$OLDPWD/$venv/bin/st" run "http://$addr/v1/openapi.json" --checks all \
      --max-examples "$examples" --seed "$seed" --no-color "$@") ||
    { echo "schemathesis: failed with seed $seed (replay: ST_SEED=$seed scripts/schemathesis.sh)" >&2; return 1; }
}
start_relay "$work/token.toml"
run token "$addr" 20261130 -H "Authorization: Bearer $token"
run token "$addr" "$random_seed" -H "Authorization: Bearer $token"
start_relay "$work/tokenless.toml"
run tokenless "$addr" 20261206
echo "schemathesis: every run passed (seeds 20261130, $random_seed, 20261206)"
