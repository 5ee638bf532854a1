#!/bin/sh
# Installs the Debian packages loom needs to build and test, when missing.
# As root it runs apt-get; otherwise it prints the exact line and fails.
# Usage: sh .ci/deps.sh [extra-package ...]
set -e
need=""
command -v lua5.4 >/dev/null 2>&1 || need="$need lua5.4"
[ -f /usr/include/lua5.4/lua.h ] || need="$need liblua5.4-dev"
command -v busted >/dev/null 2>&1 || need="$need lua-busted"
command -v cc >/dev/null 2>&1 || need="$need gcc libc6-dev"
command -v pkg-config >/dev/null 2>&1 || need="$need pkg-config"
for p in "$@"; do
  case "$p" in
    luarocks) command -v luarocks >/dev/null 2>&1 || need="$need luarocks" ;;
    clang) command -v clang-14 >/dev/null 2>&1 || need="$need clang-14" ;;
    clang-rt) [ -d /usr/lib/llvm-14/lib/clang ] && ls /usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 || need="$need libclang-rt-14-dev" ;;
    valgrind) command -v valgrind >/dev/null 2>&1 || need="$need valgrind" ;;
    gnuplot) command -v gnuplot >/dev/null 2>&1 || need="$need gnuplot-nox" ;;
    python3) command -v python3 >/dev/null 2>&1 || need="$need python3" ;;
    # make doc: LDoc, and the markdown module it formats comments with
    ldoc) command -v ldoc >/dev/null 2>&1 || need="$need lua-ldoc"
          dpkg -s lua-markdown >/dev/null 2>&1 || need="$need lua-markdown" ;;
    *) dpkg -s "$p" >/dev/null 2>&1 || need="$need $p" ;;
  esac
done
[ -z "$need" ] && exit 0
line="apt-get update && apt-get install -y$need"
if [ "$(id -u)" != 0 ]; then
  echo "loom: missing packages; run as root:" >&2
  echo "  $line" >&2
  exit 1
fi
echo "loom: installing$need" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq </dev/null
apt-get install -y -qq --no-install-recommends $need </dev/null
