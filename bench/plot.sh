#!/bin/sh
# Draws the W2 scaling curve into bench/scaling.png: `make bench-plot`, or
#   sh bench/plot.sh [--rerun]
# It plots the W2 figures of bench/results.json (from `make bench`) when
# present; otherwise, or with --rerun, it runs W2 alone for loom first.
set -e
root=$(cd "$(dirname "$0")/.." && pwd)
: "${LUA:=lua5.4}"
: "${LUA_PATH_5_4:=$root/lua/?.lua;$root/lua/?/init.lua;;}"
: "${LUA_CPATH_5_4:=$root/?.so;;}"
export LUA LUA_PATH_5_4 LUA_CPATH_5_4
command -v gnuplot >/dev/null 2>&1 || {
  echo "bench-plot: gnuplot is missing (apt-get install gnuplot-nox)" >&2
  exit 1
}
exec python3 "$root/bench/plot.py" "$@"
