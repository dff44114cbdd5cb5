#!/usr/bin/env bash
# A/B two host builds on the same load, alternated, with the same client:
#   durable-bench/ab.sh BASE_BIN_DIR NEW_BIN_DIR [objects=256] [seconds=6] [rounds=3]
# Each BIN_DIR holds a `host` built from one commit (e.g. a `git worktree` built with
# its own CARGO_TARGET_DIR); the client is NEW_BIN_DIR/counter for both. Prints, per
# run, the increments per second and the host process's CPU time per increment (user +
# system from /proc/PID/stat, over the measured run). Compare pairs, not absolutes.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
base=$1 new=$2 objects=${3:-256} secs=${4:-6} rounds=${5:-3}
client="$new/counter"
tick=$(getconf CLK_TCK)
run() {
  local bin=$1 dir
  dir=$(mktemp -d)
  "$bin/host" serve --data-dir "$dir" --listen 127.0.0.1:0 >"$dir.log" 2>&1 &
  local pid=$!
  local addr
  addr=$(wait_addr "$dir.log")
  local c=("$client" --connect "$addr" --ca "$dir/tls/ca.pem" --token-file "$dir/tls/token")
  "${c[@]}" bench --objects "$objects" --concurrency 64 --seconds 1 >/dev/null
  local t0 t1 out n
  t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
  out=$("${c[@]}" bench --objects "$objects" --concurrency 64 --seconds "$secs" | tail -1)
  t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  n=$(sed 's/.*increments=\([0-9]*\).*/\1/' <<<"$out")
  echo "$(sed 's/.*per_second=\([0-9]*\).*/\1/' <<<"$out") incr/s, $(( (t1 - t0) * 1000000 / tick / n )) us host CPU/op"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$dir" "$dir.log"
}
for r in $(seq "$rounds"); do
  echo "round $r  base: $(run "$base")"
  echo "round $r  new:  $(run "$new")"
done
