#!/usr/bin/env bash
# Follows the install steps written in deploy/ucmrc.service literally — the
# lines between BEGIN INSTALL and END INSTALL — in a private mount namespace
# (overlays on /etc and /usr/local: the host is untouched), then starts the
# relay exactly as the unit does (its User, capabilities, ExecStartPre and
# ExecStart) and checks that it serves /readyz. Two substitutions only: the
# binary is this build's (argument 1, default target/debug/ucmrc) instead of
# target/release/ucmrc, and `systemctl` (no systemd runs here) is replaced by
# `systemd-analyze verify`/`security` and the unit's own command lines.
# Needs root (CI runs as root). Called by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" != "--inside" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "test-install: needs root to create a user and mount namespaces (CI runs as root): sudo $0" >&2
    exit 1
  fi
  exec unshare --mount --propagation private "$0" --inside "${1:-target/debug/ucmrc}"
fi
bin="$2"
work="$(mktemp -d)"
relay_pid=""
cleanup() { [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
for d in /etc /usr/local; do
  mkdir -p "$work/up$d" "$work/wk$d"
  mount -t overlay overlay -o "lowerdir=$d,upperdir=$work/up$d,workdir=$work/wk$d" "$d"
done
mkdir -p /etc/systemd/system /usr/local/bin

unit=deploy/ucmrc.service
echo "test-install: running the install steps of $unit"
sed -n '/^# BEGIN INSTALL/,/^# END INSTALL/p' "$unit" | sed -e '1d' -e '$d' -e 's/^#   //' | while read -r line; do
  case "$line" in
    systemctl*) echo "  (skipped: $line)"; continue ;;
  esac
  line="${line//target\/release\/ucmrc/$bin}"
  echo "  \$ $line"
  eval "$line"
done

echo "test-install: systemd-analyze"
systemd-analyze verify /etc/systemd/system/ucmrc.service
systemd-analyze security --offline=true --threshold=30 /etc/systemd/system/ucmrc.service | tail -1
systemd-analyze verify deploy/ucmrc-connect.service 2>&1 | grep -v "is not executable\|connect.toml" || true

# Start it as the unit does.
field() { sed -n "s/^$1=//p" /etc/systemd/system/ucmrc.service; }
user="$(field User)"
caps="$(field AmbientCapabilities | tr 'A-Z' 'a-z' | sed -e 's/cap_//g' -e 's/ /,+/g' -e 's/^/+/')"
as_unit=(setpriv --reuid="$user" --regid="$user" --init-groups --no-new-privs --inh-caps="$caps" --ambient-caps="$caps")
echo "test-install: as $user with $caps: $(field ExecStartPre)"
"${as_unit[@]}" $(field ExecStartPre) >/dev/null
"${as_unit[@]}" $(field ExecStart) >"$work/relay.out" 2>&1 &
relay_pid=$!
for _ in $(seq 1 100); do
  if curl -fsS http://127.0.0.1:9180/readyz >/dev/null 2>&1; then
    uid="$(awk '/^Uid:/ {print $2}' "/proc/$relay_pid/status")"
    [ "$uid" = "$(id -u "$user")" ] || { echo "test-install: the relay runs as uid $uid, not $user" >&2; exit 1; }
    echo "test-install: /readyz answers; the relay runs as $user (uid $uid)"
    exit 0
  fi
  kill -0 "$relay_pid" 2>/dev/null || break
  sleep 0.1
done
echo "test-install: the relay did not become ready:" >&2
cat "$work/relay.out" >&2
exit 1
