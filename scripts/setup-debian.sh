#!/usr/bin/env bash
# Installs the Debian packages the workspace needs to build and test.
# Idempotent: does nothing when everything is already present.
#   libclang1-14  bindgen (srtp2-sys) finds libclang-14.so.1 through it
#   libssl-dev, pkg-config, make, gcc, g++  build libsrtp with OpenSSL crypto
#   systemd, curl  deploy/test-install.sh (systemd-analyze verify/security; /readyz)
#   python3-venv   scripts/schemathesis.sh (Schemathesis from PyPI in a venv)
#   kamailio       relay-bin/tests/kamailio.rs (a real Kamailio with its rtpengine
#                  module drives the relay's ng protocol)
#   clang, libbpf-dev  scripts/build-bpf.sh (the kernel fast path's tc program)
#   iproute2       network namespaces for the fast path's and HA tests
#   redis-server   relay-cluster's tests (session replication, leases, takeover)
#   iputils-arping the HA test's takeover hook announces the moved service
#                  address (gratuitous ARP), as keepalived would
#   prometheus     promtool lints the /metrics exposition (relay-bin's tests)
#   openssl        the oracle for TURN's credentials (HMAC-SHA1, MD5, SHA-256)
#   coturn         its turnutils_uclient/turnutils_peer drive ucmrc's TURN server
#                  (relay-bin/tests/turn_clients.rs); its own server stays off
set -euo pipefail
packages=(libclang1-14 libssl-dev pkg-config make gcc g++ systemd curl python3-venv kamailio clang libbpf-dev iproute2 redis-server iputils-arping prometheus openssl coturn)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
