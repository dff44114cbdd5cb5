#!/usr/bin/env bash
# Host CPU per activation of an evicted object, by thread: N counters incremented on a
# host with `--idle-timeout-secs 0.5`, 2 s for all of them to be evicted, then N
# sequential `counter get a<i>` (one client process each), with the host's per-thread
# user + system time over them divided by N. The objects are evicted again 0.5 s after
# their call, so the figure covers eviction too.
#   durable-bench/activation-cpu.sh BIN_DIR [N=300] [PERF_OUT]
# BIN_DIR holds the example `host` and `counter` (cargo build --release -p
# durable-examples --bin host --bin counter). With PERF_OUT, `perf record --call-graph
# dwarf` of the host over the calls is written there. Ticks are 10 ms: at N=300 a
# figure moves in steps of ~33 µs; compare alternated runs of two builds.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=$1 n=${2:-300} perfout=${3:-}
start_host "$bin" --idle-timeout-secs 0.5
for i in $(seq "$n"); do "${c[@]}" increment "a$i" >/dev/null; done
sleep 2
perf_start "$pid" "$perfout"
thread_cpu "$pid" >"$dir.a"
for i in $(seq "$n"); do "${c[@]}" get "a$i" >/dev/null; done
thread_cpu "$pid" >"$dir.b"
perf_stop
per_thread "$dir.a" "$dir.b" "$n" activation
