#!/bin/sh
# Callgrind instructions per task on the caller's thread: `make callgrind`,
# or `sh bench/callgrind.sh` after `make`. Two workloads of bench/README.md,
# 2 workers, f = function(x) return x + 1 end:
#   W1  futs[i] = ex:submit(f, i) for 20,000 i, then futs[i]:result()
#   W4  ex:submit(f, i):result(), one at a time, on an idle pool
# For "the per-task path did not get slower": run it at both commits and
# compare. Nothing here judges the figures.
#
# How the figures are made repeatable (two runs agree to ~0.01%):
# - Only the caller's thread counts: --separate-threads=yes writes one file
#   per thread, and the figure is thread 1's 'totals:'.
# - Each workload runs at two sizes and the figure is
#   (Ir(N2) - Ir(N1)) / (N2 - N1): start-up, executor creation and teardown
#   cancel; the futures' finalizers, run at exit, stay in.
# - Waiting is not counted. The caller spins briefly before it sleeps, and
#   for how long depends on thread timing, not on loom's code (counted, it
#   made W4 vary by 20%). The driver waits inside uncounted(...), then calls
#   result() on a done future: what counts is submit, plus result() of a
#   finished task, plus the loop.
# - W1 submits while both workers are parked on a channel: no worker takes
#   the queue's lock meanwhile and none needs waking.
# - W4 sleeps 2 ms (uncounted) after each result, so every submit finds
#   both workers asleep and pays the wake-up call. Left to timing, a
#   submit sometimes found a worker still spinning (no wake-up, ~100 Ir
#   less) and the figure moved by up to 1.5% between runs.
# - Lua seeds its string hashes with time() and a few addresses, and the
#   seed decides which keys collide in the tables every call looks into:
#   with random seeds the figures moved by up to 1% between runs.
#   bench/callgrind_ctl.c pins time() (LD_PRELOAD), the runs get a fixed
#   environment and argv (the addresses move with their length), and each
#   figure is the mean over SEEDS seeds, the same ones in every checkout.
#   'spread' is max - min over the seeds: differences between two commits
#   well under it can be hash luck (a change that adds or renames a key can
#   move the mean by some tenths of a percent), not the code path.
set -e
root=$(cd "$(dirname "$0")/.." && pwd)
: "${LUA:=lua5.4}" "${SEEDS:=8}"
[ -f "$root/loom/core.so" ] || { echo "callgrind: run 'make' first" >&2; exit 1; }
vg=$(command -v valgrind) || {
  echo "callgrind: valgrind is missing (apt-get install valgrind)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
${CC:-cc} -O2 -shared -fPIC -I"$(pkg-config --variable=includedir lua5.4)/lua5.4" \
  -o "$tmp/callgrind_ctl.so" "$root/bench/callgrind_ctl.c"

# ir WORKLOAD N SEED: the instructions of thread 1 in one run, with the
# same environment, relative paths and argv length from any checkout.
lua=$(command -v "$LUA") || { echo "callgrind: $LUA not found" >&2; exit 1; }
ir() {
  rm -f "$tmp"/out*
  (cd "$root" && env -i LOOM_CG_SEED="$3" LD_PRELOAD="$tmp/callgrind_ctl.so" \
    LUA_PATH_5_4='lua/?.lua;lua/?/init.lua;;' LUA_CPATH_5_4="$tmp/?.so;./?.so;;" \
    "$vg" --tool=callgrind --separate-threads=yes \
    --callgrind-out-file="$tmp/out" "$lua" bench/callgrind_driver.lua \
    "$1" "$(printf %06d "$2")") 2>"$tmp/log" || { cat "$tmp/log" >&2; exit 1; }
  v=$(sed -n 's/^totals: *//p' "$tmp/out-01")
  [ -n "$v" ] || { echo "callgrind: no totals for thread 1" >&2; exit 1; }
  echo "$v"
}

# row WORKLOAD N1 N2 DESCRIPTION
row() {
  : >"$tmp/runs"
  s=1
  while [ "$s" -le "$SEEDS" ]; do
    seed=$((s * 2654435761))   # spread out: nearby seeds gave alike tables
    a=$(ir "$1" "$2" "$seed")
    b=$(ir "$1" "$3" "$seed")
    echo "$a $b" >>"$tmp/runs"
    s=$((s + 1))
  done
  awk -v n1="$2" -v n2="$3" -v d="$1  $4" '
    { x = ($2 - $1) / (n2 - n1); sum += x
      if (NR == 1 || x < lo) lo = x; if (NR == 1 || x > hi) hi = x }
    END { printf "%-42s %9.1f %8.1f\n", d, sum / NR, hi - lo }' "$tmp/runs"
}

printf '%-42s %9s %8s\n' "workload (2 workers, caller's thread)" "Ir/task" "spread"
row W1 2000 20000 "20,000 submits, then 20,000 result()"
row W4 200 2000 "submit, then result(), one at a time"
