#!/bin/sh
# Install the workerd baseline of durable-bench (the exact version pinned in
# package-lock.json) into durable-bench/workerd/node_modules. Needs Node >= 16 and npm.
set -eu
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
./node_modules/.bin/workerd --version
