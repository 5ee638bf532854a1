#!/bin/sh
# Runs loom's benchmark suite and prints one table: `make bench`, or
#   sh bench/run.sh            (from anywhere; uses this checkout's build)
# Environment: LUA (default lua5.4); RUNS and W2_RUNS, the recorded runs
# after the warm-up (defaults 5 and 3, at least 3). See bench/README.md.
set -e
root=$(cd "$(dirname "$0")/.." && pwd)
# `make bench` points Lua at the checkout; do the same when run by hand.
: "${LUA:=lua5.4}"
: "${LUA_PATH_5_4:=$root/lua/?.lua;$root/lua/?/init.lua;;}"
: "${LUA_CPATH_5_4:=$root/?.so;;}"
export LUA LUA_PATH_5_4 LUA_CPATH_5_4
if [ ! -f "$root/loom/core.so" ]; then
  echo "bench: loom/core.so is missing; run 'make' first" >&2
  exit 1
fi
exec python3 "$root/bench/run.py"
