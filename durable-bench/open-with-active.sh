#!/usr/bin/env bash
# Host CPU per reopening of an object file while K other objects have theirs open: N
# counters incremented, 11 s quiet (each closes its database after
# `--connection-idle-secs`, 10 s), then K other counters driven for 2 s and 3 s quiet
# (their files open, their quiet digests made), then N sequential `counter get` (one client process each; each reopens its
# file), with the host's per-thread user + system time over them divided by N.
#   durable-bench/open-with-active.sh BIN_DIR [N=300] [K=0] [PERF_OUT]
# BIN_DIR holds the example `host` and `counter` (cargo build --release -p
# durable-examples --bin host --bin counter). Ticks are 10 ms: at N=300 a figure moves
# in steps of ~33 µs; compare alternated runs of two builds, or of two K. With
# PERF_OUT, `perf record --call-graph dwarf` of the host over the calls is written there.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=$1 n=${2:-300} k=${3:-0} perfout=${4:-}
start_host "$bin" --idle-timeout-secs 3600
for i in $(seq "$n"); do "${c[@]}" increment "a$i" >/dev/null; done
sleep 11
if [ "$k" -gt 0 ]; then
  "${c[@]}" bench --objects "$k" --seconds 2 >/dev/null
  # Past the quiet digest (1 s) of each of the K, before their quiet close (10 s).
  sleep 3
fi
perf_start "$pid" "$perfout"
thread_cpu "$pid" >"$dir.a"
for i in $(seq "$n"); do "${c[@]}" get "a$i" >/dev/null; done
thread_cpu "$pid" >"$dir.b"
perf_stop
per_thread "$dir.a" "$dir.b" "$n" open
