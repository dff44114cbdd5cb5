#!/usr/bin/env bash
# The main example, end to end: start a host, call a Counter through the typed stub
# from a separate process, run a short benchmark of writes and one of reads, stop the
# host.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p durable-examples --bins
bin=${CARGO_TARGET_DIR:-target}/release
data=$(mktemp -d)
addr=127.0.0.1:${PORT:-4433}
# The host's log (its warnings included) goes to a file, shown if it fails to start.
"$bin/host" serve --data-dir "$data" --listen "$addr" > "$data/host.out" 2> "$data/host.err" &
host=$!
trap 'kill $host 2>/dev/null; wait $host 2>/dev/null; rm -rf "$data"' EXIT
trap 'exit 130' INT TERM
until grep -q "listening on" "$data/host.out" 2>/dev/null; do
  if ! kill -0 "$host" 2>/dev/null; then
    echo "the host did not start:" >&2
    cat "$data/host.err" >&2
    exit 1
  fi
  sleep 0.05
done
head -1 "$data/host.out"
counter() { "$bin/counter" --connect "$addr" --ca "$data/tls/ca.pem" --token-file "$data/tls/token" "$@"; }
echo "+ counter increment hits";    counter increment hits
echo "+ counter increment hits 41"; counter increment hits 41
echo "+ counter get hits";          counter get hits
echo "+ counter bench --objects 256 --concurrency 64 --seconds 3"
counter bench --objects 256 --concurrency 64 --seconds 3
echo "+ counter bench --reads --objects 1 --concurrency 1 --seconds 2"
counter bench --reads --objects 1 --concurrency 1 --seconds 2
