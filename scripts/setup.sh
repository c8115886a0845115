#!/usr/bin/env bash
# Installs what the dataplane's tests and benchmarks need on a fresh Debian
# machine (run as root; harmless to run again) and prepares the kernel:
# hugepages for packet buffers. Everything here is optional for a plain
# `cargo build`; the test suites that need a piece say SKIPPED without it.
set -euo pipefail

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v ethtool >/dev/null || need+=(ethtool)
command -v dpdk-testpmd >/dev/null || need+=(dpdk-dev)
# The `dpdk` feature (dpdk-sys): DPDK headers and libraries, pkg-config,
# and clang/libclang for bindgen and the C shim.
pkg-config --exists libdpdk 2>/dev/null || need+=(libdpdk-dev pkg-config)
command -v clang >/dev/null || need+=(clang)
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || need+=(libclang-dev)
command -v python3 >/dev/null || need+=(python3)
command -v ping >/dev/null || need+=(iputils-ping)
# The KVS benchmark's third row and the KVS interop tests.
command -v memcached >/dev/null || need+=(memcached)
command -v memcslap >/dev/null || need+=(libmemcached-tools)
/usr/bin/python3 -c 'import pymemcache' 2>/dev/null || need+=(python3-pymemcache)

if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing ${need[*]} and not root: those suites will be SKIPPED" >&2
    else
        echo "setup: installing ${need[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
fi

# Hugepages for packet-buffer pools (2 MiB pages). Pools fall back to 4 KiB
# pages when none are reserved, so a failure here is not fatal.
if [ "$(id -u)" -eq 0 ] && [ -w /proc/sys/vm/nr_hugepages ]; then
    have=$(cat /proc/sys/vm/nr_hugepages)
    if [ "$have" -lt 512 ]; then
        echo 512 > /proc/sys/vm/nr_hugepages || true
    fi
    echo "setup: $(cat /proc/sys/vm/nr_hugepages) hugepages reserved" >&2
fi
