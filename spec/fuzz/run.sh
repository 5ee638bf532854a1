#!/bin/sh
# Fuzzes loom's decoder (and the copy of what it decodes into another
# state) with libFuzzer for SECONDS seconds.  See fuzz_decode.c.
#
# Usage: sh spec/fuzz/run.sh SECONDS        (make fuzz FUZZ_SECONDS=N)
#
# Builds build/fuzz/fuzz_decode with clang-14 (ASan + UBSan + libFuzzer)
# and loom/core.so (make all), writes the seed messages (make_corpus.lua)
# and checks that the harness decodes them, adds them and the committed
# seeds (spec/fuzz/seeds/) to build/fuzz/corpus (kept between runs, so
# runs add up), and fuzzes with one process, replaying the regression
# inputs (spec/fuzz/regressions/) first.
# Exits non-zero if libFuzzer found a crash, leak, timeout or OOM; such
# an input is copied to spec/fuzz/regressions/ (commit it, and fix the bug:
# spec/fuzz_regressions_spec.lua replays every file there).
#
# Environment: FUZZ_CC (clang-14), LUA (lua5.4), LUA_INCDIR, LUA_STATIC,
# FUZZ_ARGS (more libFuzzer flags, e.g. "-runs=1000000" or "-seed=1").
set -eu
cd "$(dirname "$0")/../.."

secs=${1:-}
case $secs in
  '' | *[!0-9]*) echo "usage: sh spec/fuzz/run.sh SECONDS" >&2; exit 2 ;;
esac

CC=${FUZZ_CC:-clang-14}
LUA=${LUA:-lua5.4}
if [ -z "${LUA_INCDIR:-}" ]; then
  LUA_INCDIR=$(pkg-config --variable=includedir lua5.4 2>/dev/null || true)/lua5.4
  [ -f "$LUA_INCDIR/lua.h" ] || LUA_INCDIR=/usr/include/lua5.4
fi
if [ -z "${LUA_STATIC:-}" ]; then
  LUA_STATIC=$(pkg-config --variable=libdir lua5.4 2>/dev/null || true)/liblua5.4.a
  [ -f "$LUA_STATIC" ] || LUA_STATIC=/usr/lib/x86_64-linux-gnu/liblua5.4.a
fi

out=build/fuzz
bin=$out/fuzz_decode
src=$(ls src/*.c)
mkdir -p "$out/corpus" "$out/artifacts"

# --- the harness (rebuilt when a source is newer) ------------------------
# src/lua_preload.c includes loom's Lua modules, as a header make writes
${MAKE:-make} -s build/gen/loom_lua.h
if [ ! -x "$bin" ] || [ -n "$(find src build/gen spec/fuzz/fuzz_decode.c spec/fuzz/run.sh \
                                  -newer "$bin" -name '*.[ch]' -o -newer "$bin" -name run.sh)" ]; then
  echo "fuzz: building $bin" >&2
  # shellcheck disable=SC2086
  "$CC" -std=c99 -D_POSIX_C_SOURCE=200809L -g -O1 -fno-omit-frame-pointer \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -Wall -Wextra -I"$LUA_INCDIR" -Isrc -Ibuild/gen \
    -o "$bin.tmp" spec/fuzz/fuzz_decode.c $src "$LUA_STATIC" -lm -ldl -pthread
  mv "$bin.tmp" "$bin"
fi

# --- the seed corpus ------------------------------------------------------
# loom.encode needs the ordinary build.  'make all' (not only when
# loom/core.so is missing): seeds written by a core.so older than the
# sources may be in another format, which the harness would just refuse.
${MAKE:-make} -s all
seeds=$out/seeds
rm -rf "$seeds"
counts=$(LUA_PATH_5_4='lua/?.lua;lua/?/init.lua;;' LUA_CPATH_5_4='./?.so;;' \
  "$LUA" spec/fuzz/make_corpus.lua "$seeds")
want=${counts##*[!0-9]}
# Each file given by name runs once (a leak check would run some twice):
# all seeds meant to decode must decode.
if ! FUZZ_DECODE_STATS=1 "$bin" -detect_leaks=0 -artifact_prefix="$out/artifacts/" "$seeds"/* \
     >"$out/preflight.log" 2>&1; then
  cat "$out/preflight.log"
  echo "fuzz: the harness FAILED on a seed message (above)" >&2
  exit 1
fi
got=$(sed -n 's/^fuzz_decode: .*decoded=\([0-9]*\).*/\1/p' "$out/preflight.log")
if [ "$got" != "$want" ]; then
  echo "fuzz: the harness decodes ${got:-no} seeds, not $want: is loom/core.so" \
       "built from other sources than $bin?" >&2
  exit 1
fi
echo "fuzz: the harness decodes the $want seeds that should decode" >&2
# The corpus grows run after run: past 1000 inputs, keep a minimal set.
if [ "$(ls "$out/corpus" | wc -l)" -gt 1000 ]; then
  rm -rf "$out/corpus.new"
  mkdir "$out/corpus.new"
  if "$bin" -merge=1 -detect_leaks=0 -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
       "$out/corpus.new" "$out/corpus" >"$out/merge.log" 2>&1; then
    rm -rf "$out/corpus"
    mv "$out/corpus.new" "$out/corpus"
    echo "fuzz: corpus minimized to $(ls "$out/corpus" | wc -l) inputs" >&2
  fi
fi
cp "$seeds"/* "$out/corpus/"
if [ -d spec/fuzz/seeds ]; then
  for f in spec/fuzz/seeds/*; do
    [ -f "$f" ] && cp "$f" "$out/corpus/"
  done
fi
dirs="$out/corpus"
for f in spec/fuzz/regressions/*; do
  case $f in *.md | *'*') continue ;; esac
  dirs="$dirs spec/fuzz/regressions"   # replayed first; not written to
  break
done

# --- fuzz ----------------------------------------------------------------
sources=$(cat src/*.c src/*.h | cksum | cut -d' ' -f1)   # which code is fuzzed
echo "fuzz: $secs s, corpus $(ls "$out/corpus" | wc -l) inputs" >&2
before=$(ls "$out/artifacts")   # to tell this run's findings
log=$out/last.log
set +e
# shellcheck disable=SC2086
(
  ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:detect_stack_use_after_return=1} \
  UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
  "$bin" -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$out/artifacts/" -dict=spec/fuzz/loom.dict \
    -print_final_stats=1 ${FUZZ_ARGS:-} $dirs </dev/null 2>&1
  echo $? >"$out/.status"
) | tee "$log"
set -e
status=$(cat "$out/.status")

execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
if [ -z "$execs" ]; then   # not printed after a crash: the last status line
  execs=$(sed -n 's/^#\([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)
fi
execs=${execs:-0}
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) seconds=$secs executions=$execs status=$status sources=$sources" \
  >>"$out/history"
total=$(awk -F'executions=' '{ split($2, a, " "); n += a[1] } END { print n + 0 }' \
  "$out/history")
echo "fuzz: $execs executions in this run ($total in build/fuzz/history)"

if [ "$status" != 0 ]; then
  found=0
  for a in "$out"/artifacts/crash-* "$out"/artifacts/leak-* \
           "$out"/artifacts/timeout-* "$out"/artifacts/oom-*; do
    [ -f "$a" ] || continue
    base=$(basename "$a")
    case " $(echo $before) " in *" $base "*) continue ;; esac
    # not crash-*: .gitignore ignores that name
    dest=spec/fuzz/regressions/$(echo "$base" | sed 's/^\([a-z]*\)-/\1_/')
    mkdir -p spec/fuzz/regressions
    cp "$a" "$dest"
    found=1
    echo "fuzz: FOUND $a, saved as $dest"
    echo "fuzz:   reproduce: $bin $a"
    echo "fuzz:   minimize:  $bin -minimize_crash=1 -runs=100000 $a"
  done
  [ "$found" = 1 ] || echo "fuzz: libFuzzer exited with status $status"
  exit 1
fi
