#!/usr/bin/env bash
# The demo pair: builds Understudy, puts two nodes (alpha, beta) and a client/gateway in
# network namespaces on this machine, starts `understudy run` on both, kills the active
# with kill -9, shows the takeover, then switches back. Cleans everything up on exit.
# Run as root on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo.sh: run as root (it creates network namespaces)" >&2; exit 1; }
./scripts/setup.sh
command -v cargo >/dev/null || { echo "demo.sh: needs Rust's cargo" >&2; exit 1; }
echo "== building (release)"
cargo build --release -q -p understudy
BIN="$PWD/target/release/understudy"
DIR="$(mktemp -d /tmp/understudy-demo.XXXXXX)"
P="usdemo$$"
SW="$P-sw" A="$P-a" B="$P-b" C="$P-c"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  for ns in "$A" "$B" "$C" "$SW"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  echo "== cleaned up (logs kept in $DIR)"
}
trap cleanup EXIT
bold() { printf '\033[1m%s\033[0m\n' "$*"; }

# A switch namespace holds the bridges, so the root namespace stays untouched.
for ns in "$SW" "$A" "$B" "$C"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
for br in brch brpub; do ip -n "$SW" link add "$br" type bridge; ip -n "$SW" link set "$br" up; done
# Each node's cable ends are named ch and pub inside its namespace.
ip -n "$SW" link add a-ch type veth peer name ch netns "$A"; ip -n "$SW" link add b-ch type veth peer name ch netns "$B"
ip -n "$SW" link add a-pub type veth peer name pub netns "$A"; ip -n "$SW" link add b-pub type veth peer name pub netns "$B"
ip -n "$SW" link add c-pub type veth peer name pub netns "$C"
for l in a-ch b-ch; do ip -n "$SW" link set "$l" master brch up; done
for l in a-pub b-pub c-pub; do ip -n "$SW" link set "$l" master brpub up; done
ip -n "$A" addr add 10.50.0.1/24 dev ch; ip -n "$B" addr add 10.50.0.2/24 dev ch
ip -n "$A" addr add 10.60.0.11/24 dev pub; ip -n "$B" addr add 10.60.0.12/24 dev pub; ip -n "$C" addr add 10.60.0.100/24 dev pub
for ns in "$A" "$B"; do ip -n "$ns" link set ch up; ip -n "$ns" link set pub up; done
ip -n "$C" link set pub up

cat > "$DIR/understudy.toml" <<TOML
[pair]
name = "demo"
heartbeat_interval_ms = 100
failover_timeout_ms = 1000
isolation_timeout_ms = 600
probe_timeout_ms = 250
state_dir = "$DIR/state"
control_socket = "$DIR/unused.sock"
tls_dir = "$DIR/tls"

[[node]]
name = "alpha"
channel = ["10.50.0.1:7400"]
management = "10.60.0.11:7401"

[[node]]
name = "beta"
channel = ["10.50.0.2:7400"]
management = "10.60.0.12:7401"

[public_check]
targets = ["10.60.0.100"]
interval_ms = 200
timeout_ms = 150

# The service's data: replicated in real time, synchronously (an acknowledged fsync is on
# both nodes). On the active, $DIR/kv is a capture filesystem; the passive applies every
# change to its own copy.
[[replicate]]
name = "kv"
path = "$DIR/kv"
mode = "sync"

# The floating address clients use, then the application behind it.
[[resource]]
name = "address"
kind = "vip"
address = "10.60.0.50/24"
interface = "pub"
conflict_probe_ms = 200

[[resource]]
name = "kv"
kind = "exec"
start = "$BIN demo-service --listen 0.0.0.0:8080 --dir $DIR/kv --node \$UNDERSTUDY_NODE >/dev/null 2>&1 & echo \$! > $DIR/kv-\$UNDERSTUDY_NODE.pid; sleep 0.05"
stop = "kill \$(cat $DIR/kv-\$UNDERSTUDY_NODE.pid) 2>/dev/null; true"
monitor = "kill -0 \$(cat $DIR/kv-\$UNDERSTUDY_NODE.pid) 2>/dev/null || exit 7"
monitor_interval_ms = 500
TOML
# `init` writes a commented template and the pair's CA and certificates; the demo keeps
# its own config (shorter timeouts, paths under $DIR) and takes only the certificates.
"$BIN" --config "$DIR/init.toml" init --pair demo --tls-dir "$DIR/tls" \
  --node alpha=10.50.0.1,10.60.0.11 --node beta=10.50.0.2,10.60.0.12 >/dev/null
"$BIN" --config "$DIR/understudy.toml" check

start() { # index name ns
  UNDERSTUDY_NODE="$2" ip netns exec "$3" "$BIN" --config "$DIR/understudy.toml" --socket "$DIR/$2.sock" \
    run --node "$2" --state-dir "$DIR/state-$2" >"$DIR/$2.log" 2>&1 &
  PIDS[$1]=$!
  disown "$!" # its death is part of the show, not a job-control message
}
st() { "$BIN" --config "$DIR/understudy.toml" --socket "$DIR/$1.sock" status "${@:2}"; }
role() { st "$1" --json 2>/dev/null | grep -m1 '"role"' | cut -d'"' -f4; }
wait_role() { # name role timeout_ms
  local t=0; while [ "$(role "$1")" != "$2" ]; do sleep 0.01; t=$((t+10)); [ $t -lt "$3" ] || return 1; done
}
# One HTTP request from the client namespace through the floating address.
client_get() {
  ip netns exec "$C" timeout 0.3 bash -c 'exec 3<>/dev/tcp/10.60.0.50/8080 && printf "GET / HTTP/1.0\r\n\r\n" >&3 && tail -n 1 <&3' 2>/dev/null
}
# Store a key through the floating address (the service fsyncs before answering).
client_put() { # key value
  ip netns exec "$C" timeout 1 bash -c 'exec 3<>/dev/tcp/10.60.0.50/8080 && printf "PUT /%s HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" "$1" "${#2}" "$2" >&3 && head -n 1 <&3' _ "$1" "$2" 2>/dev/null
}
client_get_key() { # key
  ip netns exec "$C" timeout 1 bash -c 'exec 3<>/dev/tcp/10.60.0.50/8080 && printf "GET /%s HTTP/1.0\r\n\r\n" "$1" >&3 && tail -n 1 <&3' _ "$1" 2>/dev/null
}
# A node failure: every process in the node dies and its cables are pulled.
power_off() { # name ns
  for pid in $(ip netns pids "$2"); do kill -9 "$pid" 2>/dev/null || true; done
  ip -n "$SW" link set "${1:0:1}-ch" down; ip -n "$SW" link set "${1:0:1}-pub" down
}
# Power back: a reboot forgets the floating address; cables in; the daemon starts passive.
power_on() { # index name ns
  ip -n "$3" addr del 10.60.0.50/24 dev pub 2>/dev/null || true
  ip -n "$SW" link set "${2:0:1}-ch" up; ip -n "$SW" link set "${2:0:1}-pub" up
  start "$1" "$2" "$3"
}

bold "== starting alpha and beta"
start 0 alpha "$A"; start 1 beta "$B"
for i in $(seq 100); do
  [ "$(role alpha)/$(role beta)" = "active/passive" ] || [ "$(role alpha)/$(role beta)" = "passive/active" ] && break
  sleep 0.1
done
sleep 0.5
st alpha; echo; st beta
if [ "$(role alpha)" = active ]; then act=alpha; pas=beta; idx=0; else act=beta; pas=alpha; idx=1; fi
echo
bold "== the client reaches the service through the floating address 10.60.0.50:"
echo "   $(client_get)"
echo
bold "== the client stores a key; the service fsyncs it, so it is on both nodes before the answer"
echo "   PUT /greeting -> $(client_put greeting "hello, stored on $act")"
sleep 0.3
st "$act" | sed -n '/^replication:/,/^recent/p' | grep -v '^recent'
echo
bold "== understudy switchover: a planned move to $pas (the queue drains to zero first)"
t0=$(date +%s%N)
"$BIN" --config "$DIR/understudy.toml" --socket "$DIR/$act.sock" switchover
wait_role "$pas" active 5000 && t1=$(date +%s%N)
until [ "$(client_get)" = "ok $pas" ]; do sleep 0.02; done
bold "== $pas is active after $(( (t1 - t0) / 1000000 )) ms; the client reads the key there:"
echo "   GET /greeting -> $(client_get_key greeting)"
st "$act" --json | grep -o '"text": *"set kv[^"]*"' | tail -n 1 | sed 's/^/   event on '"$act"': /'
echo
old=$act; act=$pas; pas=$old; idx=$((1 - idx))
echo "   PUT /greeting -> $(client_put greeting "hello again, stored on $act")"
sleep 0.3
bold "== power failure on the active ($act): kill -9 everything on it, pull its cables"
if [ "$act" = alpha ]; then actns=$A; else actns=$B; fi
if [ "$pas" = alpha ]; then pasns=$A; else pasns=$B; fi
t0=$(date +%s%N)
power_off "$act" "$actns"
until [ "$(client_get)" = "ok $pas" ]; do
  sleep 0.02; [ $(( ($(date +%s%N) - t0) / 1000000 )) -lt 5000 ] || { echo "takeover failed; see $DIR"; exit 1; }
done
t1=$(date +%s%N)
bold "== the client is served by $pas again $(( (t1 - t0) / 1000000 )) ms after the failure (failover_timeout 1000 ms)"
echo "   GET /greeting -> $(client_get_key greeting)   (the last acknowledged write survived)"
echo; st "$pas"
echo
bold "== power back on $act: it rejoins as passive"
power_on "$idx" "$act" "$actns"
wait_role "$act" passive 10000
sleep 1.5
st "$act" | sed -n '/^replication:/,/^recent/p' | grep -v '^recent'
echo "   Its copy may hold changes from after the failover point, so it is out of sync and not"
echo "   eligible to take over until it is resynchronised (see the issue list: resync)."
