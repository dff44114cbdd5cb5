#!/usr/bin/env bash
# Where a call's time goes inside the host, under `counter bench` (one client process,
# 64 calls in flight): the means of the host's stage histograms (docs/operations.md,
# "Where a call's time goes"), the log's rounds, and the host's and the client's CPU
# per call.
#   durable-bench/call-stages.sh BIN_DIR [OBJECTS=1] [SECONDS=4]
# BIN_DIR holds the example `host` and `counter` (cargo build --release -p
# durable-examples --bin host --bin counter). OBJECTS=1 is increments_hot's shape.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=$1 objects=${2:-1} seconds=${3:-4}
dir=$(mktemp -d)
"$bin/host" serve --data-dir "$dir" --listen 127.0.0.1:0 --http 127.0.0.1:0 >"$dir.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir" "$dir.log" "$dir.time"' EXIT
addr=$(wait_addr "$dir.log")
http=$(wait_addr "$dir.log" "http listening on")
c=("$bin/counter" --connect "$addr" --ca "$dir/tls/ca.pem" --token-file "$dir/tls/token")
metrics() {
  curl -s -H "Authorization: Bearer $(cat "$dir/tls/token")" "http://$http/metrics" |
    grep -E '^durable_(call_seconds|call_queue_seconds|batch_seconds|gate_seconds|log_sync_seconds|batch_calls|log_round_records)_(sum|count)' |
    sed 's/{[^}]*}//'
}
# Warm up, then measure the differences over the timed run.
"${c[@]}" bench --objects "$objects" --concurrency 64 --seconds 1 >/dev/null
before=$(metrics)
h0=$(awk '{print $14+$15}' "/proc/$pid/stat")
/usr/bin/time -f "%U %S" -o "$dir.time" "${c[@]}" bench --objects "$objects" --concurrency 64 --seconds "$seconds" | tail -1
h1=$(awk '{print $14+$15}' "/proc/$pid/stat")
after=$(metrics)
tick=$(getconf CLK_TCK)
join <(echo "$before" | sort) <(echo "$after" | sort) | awk -v h=$((h1 - h0)) -v tick="$tick" -v client="$(cat "$dir.time")" '
  { d[$1] = $3 - $2 }
  function mean(n) { return d[n "_count"] > 0 ? d[n "_sum"] / d[n "_count"] : 0 }
  END {
    calls = d["durable_call_seconds_count"]
    printf "calls %d\n", calls
    printf "per call, in the host (mean us): queue %.0f  batch %.0f  gate %.0f  reply hand-back %.0f  = call %.0f\n",
      mean("durable_call_queue_seconds") * 1e6, mean("durable_batch_seconds") * 1e6,
      mean("durable_gate_seconds") * 1e6,
      (mean("durable_call_seconds") - mean("durable_call_queue_seconds") - mean("durable_batch_seconds") - mean("durable_gate_seconds")) * 1e6,
      mean("durable_call_seconds") * 1e6
    printf "log: %d rounds, sync mean %.0f us, %.2f batches per round, %.1f calls per batch\n",
      d["durable_log_sync_seconds_count"], mean("durable_log_sync_seconds") * 1e6,
      mean("durable_log_round_records"), mean("durable_batch_calls")
    split(client, cl, " ")
    printf "CPU per call: host %.1f us, client %.1f us\n", h / tick / calls * 1e6, (cl[1] + cl[2]) / calls * 1e6
  }'
