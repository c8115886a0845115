#!/usr/bin/env bash
# The main job: builds in release mode and runs the KVS benchmark — ixkvs on
# our dataplane over a memif wire, the same KVS on Linux sockets, and
# memcached, under the same open-loop ETC load — with the quick sweep
# (under 2 minutes). Extra arguments go to `ixctl bench kvs` (e.g.
# `--workload usr`, `--json`). The full sweep: `target/release/ixctl bench
# kvs`; the echo benchmark: `target/release/ixctl bench echo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p ix-tools --bins
exec target/release/ixctl bench kvs --quick "$@"
