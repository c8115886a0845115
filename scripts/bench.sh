#!/usr/bin/env bash
# The main job: builds in release mode and runs the echo benchmark (our
# dataplane over a memif wire vs Linux kernel TCP over loopback, same app
# logic, one run). Extra arguments go to `ixctl bench echo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p ix-tools --bins
exec target/release/ixctl bench echo "$@"
