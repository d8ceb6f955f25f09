#!/usr/bin/env bash
# Compiles the kernel fast path's tc program (relay-core/src/io/ebpf/
# forward.bpf.c) into the object relay-core embeds (forward.bpf.o, committed,
# so building relay-core — with or without the `ebpf` feature — needs no
# clang). Run it after changing the C file; `--check` (the test command)
# fails when the committed object is not what the source compiles to.
# Needs Debian's clang and libbpf-dev (scripts/setup-debian.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/../relay-core/src/io/ebpf"
multiarch="$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)"
build() {
  # Deterministic: no absolute paths in the debug info (BTF needs -g).
  clang -O2 -g -target bpf -Wall -Werror -I"/usr/include/$multiarch" \
    -fdebug-compilation-dir=. -fdebug-prefix-map="$PWD"=. \
    -c forward.bpf.c -o "$1"
}
if [ "${1:-}" = "--check" ]; then
  tmp="$(mktemp)"
  trap 'rm -f "$tmp"' EXIT
  build "$tmp"
  if ! cmp -s "$tmp" forward.bpf.o; then
    echo "relay-core/src/io/ebpf/forward.bpf.o is stale: run scripts/build-bpf.sh and commit it" >&2
    exit 1
  fi
  echo "bpf: forward.bpf.o matches forward.bpf.c"
else
  build forward.bpf.o
  echo "bpf: wrote relay-core/src/io/ebpf/forward.bpf.o"
fi
