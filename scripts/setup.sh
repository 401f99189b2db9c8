#!/usr/bin/env bash
# Installs the Debian packages Understudy's tests and demo need. Idempotent.
set -euo pipefail
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v nft >/dev/null 2>&1 || need+=(nftables)
# xattrs in the replication tests (setfattr/getfattr); rsync is the resync benchmarks' baseline.
command -v setfattr >/dev/null 2>&1 || need+=(attr)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
# The tests' workloads are small python3 programs (with its sqlite3 module); the fault suite
# gives each node a loop-device ext4 disk.
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v mkfs.ext4 >/dev/null 2>&1 || need+=(e2fsprogs)
command -v fallocate >/dev/null 2>&1 || need+=(util-linux)
# Real peers for the tests: Knot answers RFC 2136 updates, resource-agents ships the
# Pacemaker OCF agents (ocf:heartbeat:Dummy).
[ -x /usr/sbin/knotd ] || need+=(knot)
[ -d /usr/lib/ocf/resource.d/heartbeat ] || need+=(resource-agents)
# A real systemd user manager for the systemd module's tests (not as PID 1).
[ -x /lib/systemd/systemd ] || need+=(systemd)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install: ${need[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
