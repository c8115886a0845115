#!/usr/bin/env bash
# Instructions per KVS request, transport aside: tools/examples/kvs-cost.rs
# feeds a seeded ETC and a USR request stream through Session::feed (parse,
# store, reply queue) and consume against a store holding every key, and
# callgrind counts only inside its measured function: repeatable whatever
# else the machine is doing. Use it before and after a change to the KVS
# hot path. Needs valgrind. Usage: scripts/kvs-cost.sh [REQUESTS]
# (default 100000 per workload); KVS_COST_OUT=DIR keeps the callgrind
# profiles there for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-100000}
cargo build --release -p ix-tools --example kvs-cost 2>/dev/null
bin=${CARGO_TARGET_DIR:-target}/release/examples/kvs-cost
for workload in etc usr; do
    if [ -n "${KVS_COST_OUT:-}" ]; then
        out="$KVS_COST_OUT/kvs-cost-$workload.cg"
    else
        out=$(mktemp)
    fi
    log=$(valgrind --tool=callgrind --callgrind-out-file="$out" \
        --toggle-collect='*kvs_cost::measure' "$bin" "$workload" "$requests" 2>&1)
    [ -n "${KVS_COST_OUT:-}" ] || rm -f "$out"
    total=$(echo "$log" | sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
    echo "$workload: instructions: $total, requests: $requests, per request: $((total / requests))"
done
