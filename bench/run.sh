#!/usr/bin/env bash
# Runs every benchmark (as root: it builds network namespaces) and prints the BENCH lines.
# Environment: BENCH_FAILOVER_RUNS (10), BENCH_SWITCHOVER_RUNS (10),
# BENCH_PARTITION_TRIALS (50), BENCH_LOAD_SECS (600); replication: BENCH_SEQ_MIB (2048),
# BENCH_SYNC_WRITES (5000), BENCH_FILES (10000), BENCH_READ_MIB (2048), BENCH_MEMORY_GIB (10),
# BENCH_ROUNDS (3); channel: BENCH_TLS_MIB (1024); FUSE transports: BENCH_FUSE_STATS (50000).
# Results go to docs/BENCHMARKS.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo test --release -p understudy --test bench --test bench_identity --test bench_replication --test bench_resync --test bench_channel --test bench_fuse_transport -- --ignored --nocapture --test-threads=1 "$@" 2>&1 | tee /tmp/understudy-bench.log | grep -oE "BENCH .*|test result.*"
