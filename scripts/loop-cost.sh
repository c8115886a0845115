#!/usr/bin/env bash
# Instructions per echo round trip through two elastic threads joined by an
# in-process wire (both ends: RX, IP, TCP, app, TCP output, TX), counted by
# callgrind: repeatable whatever else the machine is doing. Use it before
# and after a hot-path change. Needs valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release -p ix-dataplane --test steady_state_alloc --no-run 2>/dev/null
bin=$(ls -t target/release/deps/steady_state_alloc-* | grep -v '\.d$' | head -1)
out=$(mktemp)
log=$(valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --test-threads=1 --nocapture 2>&1)
total=$(echo "$log" | sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
trips=$(echo "$log" | sed -n 's/.*(\([0-9]*\) round trips in all).*/\1/p')
rm -f "$out"
echo "instructions: $total, round trips: $trips, per round trip: $((total / trips))"
