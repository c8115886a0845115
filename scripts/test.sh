#!/usr/bin/env bash
# The test command: sets the machine up, then runs every suite of the
# workspace. Suites that need root, namespaces or DPDK's testpmd run when
# those exist and print "SKIPPED: <reason>" when they do not.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --workspace --all-targets --release -- --test-threads=2 "$@"
cargo test --workspace --doc --release
