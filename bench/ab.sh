#!/usr/bin/env bash
# A/B comparison on a noisy machine: runs one benchmark alternately with the daemon built
# from REV and from the working tree, PAIRS times each (old, new, then new, old, ...), so both see
# the same machine, in ABBA order. Figures from separate runs minutes apart are not comparable here.
#
#   sudo ./bench/ab.sh REV TARGET TEST [PAIRS]
#   sudo ./bench/ab.sh HEAD~1 bench_replication seq_write_sync 3
#
# TARGET is a bench test target (bench, bench_replication, bench_resync, bench_channel).
# BENCH_* variables pass through; BENCH_ROUNDS defaults to 1 per run. REV is built in a
# worktree under /tmp with its own target directory (a full build the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 3 ]; then
    sed -n '2,11p' "$0"
    exit 2
fi
rev=$1 target=$2 test=$3 pairs=${4:-3}
old_tree=/tmp/understudy-ab-$(git rev-parse --short "$rev")
./scripts/setup.sh
if [ ! -d "$old_tree" ]; then
    git worktree add --detach "$old_tree" "$rev" >/dev/null
fi
(cd "$old_tree" && cargo build --release -p understudy --bin understudy)
cargo build --release -p understudy --bin understudy
bench_bin=$(cargo test --release -p understudy --test "$target" --no-run 2>&1 |
    grep -oE 'target/release/deps/[A-Za-z0-9_-]+' | head -1)
daemon=target/release/understudy
cp "$daemon" /tmp/understudy-ab-new
trap 'cp /tmp/understudy-ab-new "$daemon"' EXIT
# ABBA order (old, new, new, old, ...): the second run of a pair was measured slower with the
# same daemon in both slots (initial sync, 2026-11-29: 2.82 s against 3.04 s on average over
# four pairs), so a fixed order would bias every comparison against the new side.
for i in $(seq 1 "$pairs"); do
    order="old new"
    if [ $((i % 2)) -eq 0 ]; then order="new old"; fi
    for side in $order; do
        if [ "$side" = old ]; then cp "$old_tree/target/release/understudy" "$daemon"; else cp /tmp/understudy-ab-new "$daemon"; fi
        echo "== $side ($([ "$side" = old ] && echo "$rev" || echo "working tree")), run $i"
        BENCH_ROUNDS=${BENCH_ROUNDS:-1} "$bench_bin" --ignored --nocapture --test-threads=1 "$test" 2>&1 |
            grep -oE "BENCH .*" || true
    done
done
