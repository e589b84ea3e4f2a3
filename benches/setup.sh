#!/usr/bin/env bash
# Set-up for the benchmark harness on a fresh Debian/Ubuntu machine: installs PMDK's
# libpmemobj (loaded by the bench at run time with dlopen; the PMDK peer is not optional) and a
# C compiler if there is none (the bundled SQLite and LMDB are compiled from C).
# Run as root or with sudo available. Then: cargo run --release -p txheap-benches -- --quick
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup.sh: run as root (apt-get needs it)" >&2; exit 1; }
    SUDO="sudo"
fi

packages=(libpmemobj1)
command -v cc >/dev/null || packages+=(gcc libc6-dev)

echo "setup.sh: apt-get install ${packages[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${packages[@]}"

# Check that the library the bench dlopens is there.
if ! /sbin/ldconfig -p | grep -q 'libpmemobj\.so\.1 '; then
    echo "setup.sh: libpmemobj.so.1 still not found by the dynamic loader" >&2
    exit 1
fi
echo "setup.sh: ok (libpmemobj.so.1 installed)"
