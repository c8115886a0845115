#!/usr/bin/env bash
# Runs the tests marked #[ignore] because they reproduce an open bug (each
# says which in its doc comment). Not part of .ci/run: they fail until the
# bug is fixed; run this when working on one, and drop the #[ignore] once
# it passes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --workspace --release -- --ignored "$@"
