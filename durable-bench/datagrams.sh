#!/usr/bin/env bash
# UDP datagrams and CPU per call under `counter bench` (one client process, 64 calls
# in flight): how many packets a call costs (both directions, loopback: each datagram
# is counted once, as sent) and the host's and the client's CPU per call.
#   durable-bench/datagrams.sh BIN_DIR [OBJECTS=1] [SECONDS=4]
# BIN_DIR holds the example `host` and `counter` (cargo build --release -p
# durable-examples --bin host --bin counter). Datagrams come from `nstat`'s
# `UdpOutDatagrams` over the run: anything else sending UDP on the machine counts too.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=$1 objects=${2:-1} seconds=${3:-4}
start_host "$bin"
"${c[@]}" bench --objects "$objects" --concurrency 64 --seconds 1 >/dev/null
nstat -n
h0=$(awk '{print $14+$15}' "/proc/$pid/stat")
out=$(/usr/bin/time -f "%U %S" -o "$dir.time" "${c[@]}" bench --objects "$objects" --concurrency 64 --seconds "$seconds")
h1=$(awk '{print $14+$15}' "/proc/$pid/stat")
calls=$(echo "$out" | grep -o 'increments=[0-9]*' | cut -d= -f2)
[ "${calls:-0}" -gt 0 ] || { echo "no calls completed" >&2; exit 1; }
sent=$(nstat -z UdpOutDatagrams | awk '/UdpOutDatagrams/ {print $2}')
tick=$(getconf CLK_TCK)
awk -v out="$out" -v n="$calls" -v d="$sent" -v h=$((h1 - h0)) -v tick="$tick" -v client="$(cat "$dir.time")" 'BEGIN {
  split(client, cl, " ")
  printf "%s datagrams/call=%.3f host_us=%.2f client_us=%.2f\n", out, d / n, h / tick / n * 1e6, (cl[1] + cl[2]) / n * 1e6
}'
