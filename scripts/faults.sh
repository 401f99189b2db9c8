#!/usr/bin/env bash
# The fault-injection suite's long form (as root): 200 fault cycles, seeded and replayable,
# ending with a summary table. The README's test command runs the short form (12 cycles).
# Environment: FAULT_CYCLES (200), FAULT_SEED (1), FAULT_CHECK_EVERY (1).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export FAULT_CYCLES="${FAULT_CYCLES:-200}" FAULT_SEED="${FAULT_SEED:-1}"
cargo test --release -p understudy --test faults -- --nocapture 2>&1 | tee /tmp/understudy-faults.log | grep --line-buffered -E "^(faults:|cycle|fault-injection|\||acknowledged|client outages|test result)|panicked"
