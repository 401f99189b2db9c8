#!/usr/bin/env bash
# Runs every benchmark (as root: it builds network namespaces) and prints the BENCH lines.
# Environment: BENCH_FAILOVER_RUNS (10), BENCH_SWITCHOVER_RUNS (10),
# BENCH_PARTITION_TRIALS (50), BENCH_LOAD_SECS (600). Results go to docs/BENCHMARKS.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo test --release -p understudy --test bench --test bench_identity -- --ignored --nocapture --test-threads=1 "$@" 2>&1 | tee /tmp/understudy-bench.log | grep -oE "BENCH .*|test result.*"
