#!/usr/bin/env bash
# User-space instructions per call in the host, counted by valgrind (cachegrind, no
# cache simulation): a figure that does not move with the machine's other guests, for
# A/B comparisons of CPU work where timings cannot be trusted (`stolen` high). Runs the
# example host under valgrind twice, with `counter bench` (64 calls in flight) for
# SHORT and for LONG seconds, and divides the difference of the two instruction counts
# by the difference of the calls: start-up, the objects' first calls and shutdown
# cancel out. Prints that figure and the functions that make it (`cg_annotate` of the
# difference).
#   durable-bench/instructions.sh BIN_DIR [OBJECTS=256] [SHORT=10] [LONG=20] [TOP=30]
# Needs valgrind (Debian: `apt-get install valgrind`). BIN_DIR holds the example `host`
# and `counter`. The host runs ~50x slower under valgrind, so timing-driven paths
# change: objects are called less often, batches hold fewer calls, quiet-time work
# (deferred file commits, digests) comes more often. Compare builds with each other,
# not with figures from a normal run. Kernel work (system calls, context switches,
# loopback UDP) is not counted.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=$1 objects=${2:-256} short=${3:-10} long=${4:-20} top=${5:-30}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() { # seconds -> "calls" ; writes $work/cg.$1
  local secs=$1 dir="$work/data.$1" log="$work/host.$1.log"
  valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$work/cg.$secs" \
    "$bin/host" serve --data-dir "$dir" --listen 127.0.0.1:0 >"$log" 2>&1 &
  local pid=$! addr
  addr=$(wait_addr "$log" "listening on" 600)
  [ -n "$addr" ] || { cat "$log" >&2; kill "$pid"; return 1; }
  "$bin/counter" --connect "$addr" --ca "$dir/tls/ca.pem" --token-file "$dir/tls/token" \
    --deadline-ms 60000 bench --objects "$objects" --concurrency 64 --seconds "$secs" |
    grep -o 'increments=[0-9]*' | cut -d= -f2
  kill -INT "$pid"
  wait "$pid" || true
}
a=$(run "$short")
b=$(run "$long")
[ "$b" -gt "$a" ] || { echo "the long run made no more calls than the short one" >&2; exit 1; }
cg_diff "$work/cg.$short" "$work/cg.$long" >"$work/delta" 2>/dev/null
cg_annotate "$work/delta" >"$work/annotated" 2>/dev/null
total=$(awk '/PROGRAM TOTALS/ && !done {gsub(",","",$1); print $1; done=1}' "$work/annotated")
echo "calls: $a (${short} s), $b (${long} s)"
awk -v t="$total" -v n="$((b - a))" 'BEGIN { printf "user-space instructions per call: %.0f\n", t / n }'
awk '/file:function/{on=1; getline; next} on && NF' "$work/annotated" |
  sed -n "1,${top}p" | sed 's|/root/.cargo/registry/src/[^/]*/||; s|/rustc/[0-9a-f]*/library/||'
