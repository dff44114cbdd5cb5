#!/usr/bin/env bash
# The host's CPU and context switches per call, thread by thread, under `counter
# bench` (one client process, 64 calls in flight): where the host's CPU per call goes
# (shards, network threads, log writer) and how often each kind of thread sleeps
# (voluntary switches: it waited for work) or is pushed off its CPU (involuntary).
#   durable-bench/thread-split.sh BIN_DIR [OBJECTS=256] [SECONDS=5]
# BIN_DIR holds the example `host` and `counter` (cargo build --release -p
# durable-examples --bin host --bin counter). Host environment passes through (for
# example DURABLE_SHARDS=1 or TOKIO_WORKER_THREADS=1). Ticks are 10 ms: compare
# alternated runs of two builds or settings, not one run against another machine.
set -euo pipefail
bin=$1 objects=${2:-256} seconds=${3:-5}
dir=$(mktemp -d)
"$bin/host" serve --data-dir "$dir" --listen 127.0.0.1:0 >"$dir.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir" "$dir.log" "$dir.a" "$dir.b"' EXIT
addr=""
for _ in $(seq 100); do
  addr=$(grep -o '^listening on [0-9.:]*' "$dir.log" | head -1 | awk '{print $3}' || true)
  [ -n "$addr" ] && break
  sleep 0.1
done
c=("$bin/counter" --connect "$addr" --ca "$dir/tls/ca.pem" --token-file "$dir/tls/token")
"${c[@]}" bench --objects "$objects" --concurrency 64 --seconds 1 >/dev/null
# Per thread name: voluntary and involuntary switches, and user + system ticks.
snap() {
  for t in /proc/$pid/task/*; do
    echo "$(tr ' ' _ <"$t/comm")" \
      "$(awk '/^voluntary_ctxt/{v=$2} /^nonvoluntary_ctxt/{n=$2} END{print v, n}' "$t/status")" \
      "$(awk '{print $14+$15}' "$t/stat")"
  done | awk '{v[$1]+=$2; n[$1]+=$3; c[$1]+=$4} END {for (k in v) print k, v[k], n[k], c[k]}' | sort
}
snap >"$dir.a"
out=$("${c[@]}" bench --objects "$objects" --concurrency 64 --seconds "$seconds")
snap >"$dir.b"
echo "$out"
calls=$(echo "$out" | grep -o 'increments=[0-9]*' | cut -d= -f2)
tick=$(getconf CLK_TCK)
printf '%-18s %10s %10s %12s\n' thread "vol/call" "invol/call" "CPU us/call"
join "$dir.a" "$dir.b" | awk -v n="$calls" -v tick="$tick" '
  { cpu = ($7 - $4) * 1e6 / tick / n; vol = ($5 - $2) / n; inv = ($6 - $3) / n
    if (cpu > 0 || vol > 0.001) printf "%-18s %10.3f %10.3f %12.1f\n", $1, vol, inv, cpu
    total += cpu }
  END { printf "%-18s %10s %10s %12.1f\n", "host", "", "", total }'
