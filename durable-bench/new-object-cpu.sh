#!/usr/bin/env bash
# Host CPU per new object, by thread: N sequential first calls (`counter get new<i>`,
# one client process each, so the spare pool never runs dry), with the host's
# per-thread user + system time over them divided by N.
#   durable-bench/new-object-cpu.sh BIN_DIR [N=300]
# BIN_DIR holds the example `host` and `counter` (cargo build --release -p
# durable-examples --bin host --bin counter). Ticks are 10 ms: at N=300 a figure moves
# in steps of ~33 µs; compare alternated runs of two builds.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=$1 n=${2:-300}
start_host "$bin"
"${c[@]}" get warm >/dev/null
sleep 0.5
thread_cpu "$pid" >"$dir.a"
for i in $(seq "$n"); do "${c[@]}" get "new$i" >/dev/null; done
thread_cpu "$pid" >"$dir.b"
per_thread "$dir.a" "$dir.b" "$n" "new object"
