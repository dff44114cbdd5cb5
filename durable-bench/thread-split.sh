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
# Threads are grouped by their 15-character name: a shard's blocking threads
# (`durable-shard-N-io`) count with the shard, tokio's blocking threads with the
# network threads. The window includes the client's connect and its first call to
# each object (a first activation); `host` is the whole process's CPU per call.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=$1 objects=${2:-256} seconds=${3:-5}
dir=$(mktemp -d)
"$bin/host" serve --data-dir "$dir" --listen 127.0.0.1:0 >"$dir.log" 2>&1 &
pid=$!
trap 'status=$?; [ $status -ne 0 ] && cat "$dir.log" >&2; kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir" "$dir.log" "$dir.a" "$dir.b"' EXIT
addr=$(wait_addr "$dir.log")
c=("$bin/counter" --connect "$addr" --ca "$dir/tls/ca.pem" --token-file "$dir/tls/token")
"${c[@]}" bench --objects "$objects" --concurrency 64 --seconds 1 >/dev/null
# Per thread name: voluntary and involuntary switches, and user + system ticks.
snap() {
  for t in /proc/$pid/task/*; do
    # utime and stime: fields 14 and 15, counted after the `)` that ends the name.
    echo "$(tr ' ' _ <"$t/comm")" \
      "$(awk '/^voluntary_ctxt/{v=$2} /^nonvoluntary_ctxt/{n=$2} END{print v, n}' "$t/status")" \
      "$(sed 's/.*) //' "$t/stat" | awk '{print $12+$13}')"
  done | awk '{v[$1]+=$2; n[$1]+=$3; c[$1]+=$4} END {for (k in v) print k, v[k], n[k], c[k]}' | sort
}
total() { sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12+$13}'; }
t0=$(total)
snap >"$dir.a"
out=$("${c[@]}" bench --objects "$objects" --concurrency 64 --seconds "$seconds")
snap >"$dir.b"
t1=$(total)
echo "$out"
calls=$(echo "$out" | grep -o 'increments=[0-9]*' | cut -d= -f2)
[ "${calls:-0}" -gt 0 ] || { echo "no calls completed" >&2; exit 1; }
tick=$(getconf CLK_TCK)
printf '%-18s %10s %10s %12s\n' thread "vol/call" "invol/call" "CPU us/call"
# Threads started during the window count from zero; threads that ended are left out
# of their name's line (the `host` line counts them: the process's own total).
join -a2 -e0 -o 0,1.2,1.3,1.4,2.2,2.3,2.4 "$dir.a" "$dir.b" |
  awk -v n="$calls" -v tick="$tick" '
  { cpu = ($7 - $4) * 1e6 / tick / n; vol = ($5 - $2) / n; inv = ($6 - $3) / n
    if (cpu > 0 || vol > 0.001) printf "%-18s %10.3f %10.3f %12.1f\n", $1, vol, inv, cpu }'
awk -v n="$calls" -v tick="$tick" -v a="$t0" -v b="$t1" \
  'BEGIN { printf "%-18s %10s %10s %12.1f\n", "host", "", "", (b - a) * 1e6 / tick / n }'
