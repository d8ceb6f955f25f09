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

# Runs the lines between BEGIN INSTALL and END INSTALL of file $1.
install_steps() {
  echo "test-install: running the install steps of $1"
  sed -n '/^# BEGIN INSTALL/,/^# END INSTALL/p' "$1" | sed -e '1d' -e '$d' -e 's/^#   //' | while read -r line; do
    case "$line" in
      systemctl*) echo "  (skipped: $line)"; continue ;;
    esac
    line="${line//target\/release\/ucmrc/$bin}"
    echo "  \$ $line"
    eval "$line"
  done
}

unit=deploy/ucmrc.service
install_steps "$unit"

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
    break
  fi
  kill -0 "$relay_pid" 2>/dev/null || { echo "test-install: the relay did not become ready:" >&2; cat "$work/relay.out" >&2; exit 1; }
  sleep 0.1
done
curl -fsS http://127.0.0.1:9180/readyz >/dev/null || { echo "test-install: no /readyz:" >&2; cat "$work/relay.out" >&2; exit 1; }
kill "$relay_pid"
wait "$relay_pid" 2>/dev/null || true
relay_pid=""

# A node of a redundant pair: the HA drop-in's steps, then its hooks run as
# the unit runs them (user, capabilities with the drop-in's added), in a
# network namespace of their own with a veth pair standing for the LAN.
dropin=deploy/ucmrc-ha.conf
install_steps "$dropin"
systemd-analyze verify /etc/systemd/system/ucmrc.service
dfield() { sed -n "s/^$1=//p" /etc/systemd/system/ucmrc.service /etc/systemd/system/ucmrc.service.d/ha.conf | tr '\n' ' '; }
families="$(dfield RestrictAddressFamilies)"
case " $families " in *" AF_PACKET "*) ;; *) echo "test-install: AF_PACKET not allowed: $families" >&2; exit 1 ;; esac
tocaps() { tr 'A-Z' 'a-z' | xargs -n1 | sed 's/^cap_/+/' | paste -sd, -; }
ha_caps="$(dfield AmbientCapabilities | tocaps)"
bound="$(dfield CapabilityBoundingSet | tocaps)"
[ "$ha_caps" = "$bound" ] || { echo "test-install: ambient $ha_caps but bounding $bound" >&2; exit 1; }
as_ha=(setpriv --reuid="$user" --regid="$user" --init-groups --no-new-privs --bounding-set="-all,$bound" --inh-caps="$ha_caps" --ambient-caps="$ha_caps")
# What the unit alone would run the hooks with (the bounding set without
# the drop-in): arping must fail there, or the drop-in proves nothing.
unit_bound="$(field CapabilityBoundingSet | tocaps)"
as_unit_only=(setpriv --reuid="$user" --regid="$user" --init-groups --no-new-privs --bounding-set="-all,$unit_bound" --inh-caps="$caps" --ambient-caps="$caps")
stop_post="$(sed -n 's/^ExecStopPost=-//p' /etc/systemd/system/ucmrc.service.d/ha.conf)"
echo "test-install: the hooks as $user with $ha_caps, and ExecStopPost ($stop_post)"
# shellcheck disable=SC2016
unshare --net env UCMRC_VIP=192.0.2.10/24 UCMRC_VIP_DEV=v0 bash -euc '
  ip link add v0 type veth peer name v1 && ip link set v0 up && ip link set v1 up
  "$@"
' _ bash -euc '
  n="$1"; shift
  as_ha=("${@:1:$n}"); as_unit=("${@:$((n + 1)):$(($# - n - 1))}"); stop_post="${@: -1}"
  "${as_ha[@]}" /usr/local/sbin/ucmrc-vip up
  ip -o addr show dev v0 | grep -q " 192.0.2.10/24 " || { echo "test-install: ucmrc-vip up added nothing" >&2; exit 1; }
  "${as_ha[@]}" arping -q -U -c 1 -w 1 -I v0 192.0.2.10 || { echo "test-install: arping fails as the unit" >&2; exit 1; }
  if "${as_unit[@]}" arping -q -U -c 1 -w 1 -I v0 192.0.2.10 2>/dev/null; then
    echo "test-install: arping works without the drop-in: the test proves nothing" >&2; exit 1
  fi
  "${as_ha[@]}" $stop_post
  ! ip -o addr show dev v0 | grep -q " 192.0.2.10/" || { echo "test-install: the address stayed after ExecStopPost" >&2; exit 1; }
' _ "${#as_ha[@]}" "${as_ha[@]}" "${as_unit_only[@]}" "$stop_post"
echo "test-install: the HA hooks move the address as the unit's user; ExecStopPost gives it up"
exit 0
