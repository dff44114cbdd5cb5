# Shared by the bench scripts (sourced, not run).

# wait_addr LOG [PREFIX="listening on"] [TRIES=100]: the address a host printed after
# PREFIX at the start of a line of LOG, looked for every 0.1 s up to TRIES times;
# empty if it never came.
wait_addr() {
  local log=$1 prefix=${2:-listening on} tries=${3:-100} addr=""
  for _ in $(seq "$tries"); do
    addr=$(grep -o "^$prefix [0-9.:]*" "$log" | head -1 | awk '{print $NF}' || true)
    [ -n "$addr" ] && break
    sleep 0.1
  done
  echo "$addr"
}

# thread_cpu PID: per thread name of process PID (spaces as `_`), its user + system
# ticks summed, one "name ticks" line each, sorted (for `join`).
thread_cpu() {
  local pid=$1 t
  for t in /proc/"$pid"/task/*; do
    echo "$(tr ' ' _ <"$t/comm") $(awk '{print $14+$15}' "$t/stat")"
  done | awk '{a[$1]+=$2} END {for (k in a) print k, a[k]}' | sort
}

# per_thread BEFORE AFTER N UNIT: from two `thread_cpu` files, each thread's CPU
# over N operations, as "name  X us/UNIT" (threads that used none left out).
per_thread() {
  local tick
  tick=$(getconf CLK_TCK)
  join "$1" "$2" | awk -v n="$3" -v tick="$tick" -v unit="$4" \
    '{d=$3-$2; if (d>0) printf "%-18s %6.0f us/%s\n", $1, d*1000000/tick/n, unit}'
}

# perf_start PID OUT: `perf record --call-graph dwarf` of PID into OUT in the
# background (its pid in $perf_pid), after a second for perf to attach; nothing if
# OUT is empty. perf_stop: end it and wait for its file.
perf_start() {
  [ -n "$2" ] || return 0
  perf record -F 4999 --call-graph dwarf -o "$2" -p "$1" >/dev/null 2>&1 &
  perf_pid=$!
  sleep 1
}
perf_stop() {
  [ -n "${perf_pid:-}" ] || return 0
  kill -INT "$perf_pid"
  wait "$perf_pid" || true
}

# start_host BIN [HOST ARGS...]: BIN's example host serving on loopback from a new
# data directory ($dir, its log $dir.log), its pid in $pid, its address in $addr, and
# `c` the `counter` client command for it (an array). On exit the host is killed and
# $dir and every $dir.* file removed.
start_host() {
  local bin=$1
  shift
  dir=$(mktemp -d)
  "$bin/host" serve --data-dir "$dir" --listen 127.0.0.1:0 "$@" >"$dir.log" 2>&1 &
  pid=$!
  trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir" "$dir".*' EXIT
  addr=$(wait_addr "$dir.log")
  c=("$bin/counter" --connect "$addr" --ca "$dir/tls/ca.pem" --token-file "$dir/tls/token")
}
