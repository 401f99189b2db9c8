#!/usr/bin/env bash
# Runs every test: formatting and lints, unit and decision-table tests, 10,000 simulation
# seeds, and the system tests with real daemons in network namespaces (root only; they
# skip elsewhere and fail under CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -eq 0 ]; then ./scripts/setup.sh; fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
SIM_SEEDS="${SIM_SEEDS:-10000}" cargo test --workspace -- --test-threads=1
