#!/usr/bin/env bash
# The demo: installs the Debian packages it lacks, builds Understudy, then runs
# `understudy demo` (crates/cli/src/demo.rs). That puts two nodes (alpha, beta) and a client
# in network namespaces on this machine, shows a switchover, a power failure of the active
# and the takeover, checks that no acknowledged write was lost, brings the failed node back
# (resynced) and switches back to it, then removes everything it made. Run as root on
# Debian. Arguments go to `understudy demo` (e.g. --no-color).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo.sh: run as root (it creates network namespaces)" >&2; exit 1; }
./scripts/setup.sh
command -v cargo >/dev/null || { echo "demo.sh: needs Rust's cargo" >&2; exit 1; }
echo "== building (release)"
cargo build --release -q -p understudy
exec target/release/understudy demo "$@"
