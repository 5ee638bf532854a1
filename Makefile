# loom -- build, test and tooling.
#
# Honours LuaRocks' variables: LUA, LUA_INCDIR, LIBFLAG, CFLAGS,
# INST_LIBDIR, INST_LUADIR; and PREFIX for 'make install'.

# The release; rockspec/loom-$(VERSION)-1.rockspec must agree (a spec checks).
VERSION = 0.2.0

LUA        ?= lua5.4
LUA_INCDIR ?= $(shell pkg-config --variable=includedir lua5.4 2>/dev/null)/lua5.4
CC         ?= cc
CFLAGS     ?= -O2 -g
WARN        = -std=c99 -Wall -Wextra -pedantic -Wshadow \
              -Wmissing-prototypes -Wstrict-prototypes
LIBFLAG    ?= -shared
PREFIX     ?= /usr/local
INST_LIBDIR ?= $(PREFIX)/lib/lua/5.4
INST_LUADIR ?= $(PREFIX)/share/lua/5.4
BUSTED     ?= busted
# loom-busted options for make test, e.g. TEST_JOBS=-j4 (default: a worker
# per processor)
TEST_JOBS  ?=

SRC  = src/alloc.c src/intr.c src/transfer.c src/encode.c src/decode.c \
       src/channel.c src/future.c src/task.c \
       src/pool.c src/procpool.c src/procspawn.c src/procworker.c \
       src/lua_aux.c src/lua_module.c src/lua_future.c src/lua_executor.c \
       src/lua_channel.c
# completion queues; loom's Lua modules built into the core
SRC += src/lua_queue.c src/lua_preload.c
HDR  = src/loom.h src/proc.h
SO  ?= loom/core.so

# The specs' hooks (core._roundtrip, _failpoint, ...) live in
# src/lua_tests.c, as Lua keeps its own in ltests.c: they are built only
# into the cores the specs load, $(TEST_SO) here and the sanitizer builds
# below (-DLOOM_TESTS), never into $(SO), which make install, LuaRocks
# and make rock ship.  'make' builds both, so that busted runs from the
# checkout (.busted loads $(TEST_SO)).
TEST_SRC = src/lua_tests.c
TEST_SO ?= build/test/loom/core.so

ALL_CFLAGS = $(WARN) -fPIC -fvisibility=hidden -D_POSIX_C_SOURCE=200809L \
             -I$(LUA_INCDIR) $(CFLAGS) $(EXTRA_CFLAGS)

# lua/loom/*.lua as a C header (not committed), which src/lua_preload.c
# includes, so that the core carries loom's Lua modules: a host that links
# loom in needs no Lua files, nor do worker states.
GENDIR ?= build/gen
GEN = $(GENDIR)/loom_lua.h
# (not loom/busted.lua: loom-busted's logic, which needs busted, is found
# on package.path by the command and its workers alike)
LUA_MODULES = $(sort $(filter-out lua/loom/busted.lua,$(wildcard lua/loom/*.lua)))
ALL_CFLAGS += -I$(GENDIR)

LUA_LIBDIR ?= $(shell pkg-config --variable=libdir lua5.4 2>/dev/null)
LUA_STATIC ?= $(LUA_LIBDIR)/liblua5.4.a
BUSTED_BIN  = $(shell command -v busted)

# Runs a script against this checkout's build.
RUN_LOCAL = LUA_PATH_5_4='$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;' \
            LUA_CPATH_5_4='$(CURDIR)/?.so;;'
# ... and against the test build, which has the specs' hooks.
RUN_TESTS = LUA_PATH_5_4='$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;' \
            LUA_CPATH_5_4='$(CURDIR)/$(patsubst %/loom/core.so,%,$(TEST_SO))/?.so;;'

.PHONY: all install test test-serial demo deps test-deps doc check lint asan tsan valgrind failpoints bench bench-plot callgrind fuzz soak clean
.PHONY: embed embed-valgrind

all: $(SO) $(TEST_SO)

# One object per source: a build against the wrong Lua headers stops at
# the first file, with its one #error line (-Wfatal-errors: nothing after).
OBJDIR ?= build/obj
OBJ = $(SRC:src/%.c=$(OBJDIR)/%.o)

$(OBJDIR)/%.o: src/%.c $(HDR)
	@mkdir -p $(OBJDIR)
	$(CC) $(ALL_CFLAGS) -Wfatal-errors -c -o $@ $<

$(OBJDIR)/lua_preload.o: $(GEN)

$(GEN): $(LUA_MODULES) src/embed.lua
	@mkdir -p $(GENDIR)
	$(LUA) src/embed.lua lua $(LUA_MODULES) > $@.tmp
	mv $@.tmp $@

$(SO): $(OBJ)
	@mkdir -p $(dir $(SO))
	$(CC) $(LIBFLAG) -o $@ $(OBJ) -pthread $(EXTRA_LDFLAGS)

# The test core: the same objects, but lua_module.c built again with
# -DLOOM_TESTS, and lua_tests.c.
TEST_OBJDIR = $(OBJDIR)/test
TEST_OBJ = $(filter-out $(OBJDIR)/lua_module.o,$(OBJ)) \
           $(TEST_OBJDIR)/lua_module.o $(TEST_OBJDIR)/lua_tests.o

$(TEST_OBJDIR)/%.o: src/%.c $(HDR)
	@mkdir -p $(TEST_OBJDIR)
	$(CC) $(ALL_CFLAGS) -DLOOM_TESTS -Wfatal-errors -c -o $@ $<

$(TEST_SO): $(TEST_OBJ)
	@mkdir -p $(dir $(TEST_SO))
	$(CC) $(LIBFLAG) -o $@ $(TEST_OBJ) -pthread $(EXTRA_LDFLAGS)

# bin/loom-busted goes to INST_BINDIR; LuaRocks sets it empty and installs
# the command itself (build.install.bin, with a wrapper that finds the tree).
INST_BINDIR ?= $(PREFIX)/bin
install: $(SO)
	install -d $(DESTDIR)$(INST_LIBDIR)/loom $(DESTDIR)$(INST_LUADIR)/loom
	install -m 0755 $(SO) $(DESTDIR)$(INST_LIBDIR)/loom/core.so
	install -m 0644 lua/loom/*.lua $(DESTDIR)$(INST_LUADIR)/loom/
	$(if $(INST_BINDIR),install -d $(DESTDIR)$(INST_BINDIR) && install -m 0755 bin/loom-busted $(DESTDIR)$(INST_BINDIR)/loom-busted)

# A source rock, loom-$(VERSION)-1.src.rock, from this checkout: the tracked
# files as they are now (committed or not) in loom-$(VERSION).tar.gz, with
# top folder loom-$(VERSION)/, packed with the rockspec by 'luarocks pack'.
# luarocks pack looks for a relative file:// URL in a temporary folder of
# its own, so it is given a copy of the rockspec that names the archive by
# its absolute path; the rockspec as committed then replaces that copy in
# the rock (a rock is a zip). 'make rock VERSION=scm' packs the scm rockspec.
ROCK = loom-$(VERSION)-1.src.rock
ROCKSPEC = rockspec/loom-$(VERSION)-1.rockspec
.PHONY: rock
rock: $(ROCKSPEC)
	@sh .ci/deps.sh luarocks
	rm -rf build/rock $(ROCK) && mkdir -p build/rock/abs
	stash=$$(git -c user.name=loom -c user.email=loom@localhost stash create) && \
	  git archive --format=tar.gz --prefix=loom-$(VERSION)/ \
	  -o build/rock/loom-$(VERSION).tar.gz $${stash:-HEAD}
	cp $(ROCKSPEC) build/rock/
	{ cat $(ROCKSPEC); echo 'source.url = "file://$(CURDIR)/build/rock/loom-$(VERSION).tar.gz"'; } \
	  > build/rock/abs/$(notdir $(ROCKSPEC))
	cd build/rock/abs && luarocks --lua-version=5.4 pack $(notdir $(ROCKSPEC))
	cd build/rock && zip -q abs/$(ROCK) $(notdir $(ROCKSPEC))
	mv build/rock/abs/$(ROCK) $(ROCK)

# Installs what is missing (as root), or says which apt-get line to run.
deps:
	@sh .ci/deps.sh

# What the specs use beyond the build: lfs, a real C module (cfunc_spec);
# LDoc, to check that the reference documents every function (doc_spec).
test-deps: deps
	@sh .ci/deps.sh lua-filesystem ldoc

# The API reference, from the LDoc comments of lua/loom/init.lua (see
# config.ld), as HTML in $(DOCDIR).
DOCDIR ?= build/doc
doc:
	@sh .ci/deps.sh ldoc
	ldoc --fatalwarnings -d $(DOCDIR) .

test: test-deps
	@sh .ci/deps.sh liblua5.3-dev || echo "loom: no Lua 5.3 headers, so the version guard spec is pending"
	@sh .ci/deps.sh lua-luv lua-cqueues || echo "loom: no lua-luv or lua-cqueues, so the event loop specs are pending"
	$(MAKE) all
	$(RUN_TESTS) $(LUA) bin/loom-busted $(TEST_JOBS) -o utfTerminal spec

# The specs through plain busted, one file after the other.
test-serial: test-deps all
	$(BUSTED) --lua=$(LUA) -o utfTerminal spec

demo: deps
	$(MAKE) all
	$(RUN_LOCAL) $(LUA) examples/primes.lua 2000000 2

# --- sanitizers ----------------------------------------------------------
# The specs run in spec/host/host.c, a Lua host built with the sanitizer
# (an instrumented core.so cannot be loaded into the stock lua5.4).
# Child processes started by specs use $$LOOM_LUA, which points at it.
SAN_CC     ?= gcc
ASAN_FLAGS  = -fsanitize=address,undefined -fno-sanitize-recover=all \
              -fno-omit-frame-pointer -g -O1
TSAN_FLAGS  = -fsanitize=thread -fno-omit-frame-pointer -g -O1
FAILPOINTS_FLAGS = $(ASAN_FLAGS) -DLOOM_FAILPOINTS
SAN_ENV     = ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1 \
              UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
              TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$(CURDIR)/spec/host/tsan.supp"

build/%/loom/core.so: $(SRC) $(TEST_SRC) $(HDR) $(GEN)
	@mkdir -p $(dir $@)
	$(SAN_CC) $(WARN) -fPIC -D_POSIX_C_SOURCE=200809L -I$(LUA_INCDIR) -I$(GENDIR) \
	  -DLOOM_TESTS $($(shell echo $* | tr a-z A-Z)_FLAGS) -shared -o $@ \
	  $(SRC) $(TEST_SRC) -pthread

build/%/host: spec/host/host.c
	@mkdir -p $(dir $@)
	$(SAN_CC) -I$(LUA_INCDIR) $($(shell echo $* | tr a-z A-Z)_FLAGS) \
	  -o $@ $< $(LUA_STATIC) -lm -ldl -Wl,-E -pthread

asan tsan: %: test-deps build/%/host build/%/loom/core.so
	$(SAN_ENV) LOOM_LUA=$(CURDIR)/build/$@/host LOOM_CPATH='$(CURDIR)/build/$@/?.so' \
	  LOOM_KEEP_LOADED=$(CURDIR)/build/$@/loom/core.so \
	  build/$@/host $(BUSTED_BIN) --ignore-lua --run=$@ spec

# --- benchmarks, fuzzing, soak (scripts live beside their data) -----------
bench: deps all
	sh .ci/deps.sh python3
	$(RUN_LOCAL) LUA=$(LUA) sh bench/run.sh
	$(RUN_TESTS) LUA=$(LUA) $(LUA) bench/busted_bench.lua

bench-plot: deps all
	sh .ci/deps.sh gnuplot python3
	$(RUN_LOCAL) LUA=$(LUA) sh bench/plot.sh

# Instructions per task on the caller's thread, under callgrind (W1, W4).
callgrind: deps all
	sh .ci/deps.sh valgrind
	LUA=$(LUA) sh bench/callgrind.sh

FUZZ_SECONDS ?= 60
fuzz: deps
	sh .ci/deps.sh clang clang-rt
	sh spec/fuzz/run.sh $(FUZZ_SECONDS)

soak: deps all
	$(BUSTED) --lua=$(LUA) --run=soak spec

# valgrind memcheck over the specs (stock lua5.4 and the normal build);
# errors, and anything definitely or indirectly lost, fail the run.
VALGRIND = valgrind -q --error-exitcode=99 --leak-check=full \
           --errors-for-leak-kinds=definite,indirect \
           --show-leak-kinds=definite,indirect --num-callers=30
valgrind: test-deps all
	sh .ci/deps.sh valgrind
	LOOM_LUA='$(VALGRIND) $(LUA)' $(VALGRIND) $(LUA) $(BUSTED_BIN) \
	  --ignore-lua --run=valgrind spec

# Allocation failures, injected one at a time (see alloc_failure_spec).
failpoints: deps build/failpoints/host build/failpoints/loom/core.so
	$(SAN_ENV) LOOM_LUA=$(CURDIR)/build/$@/host \
	  LOOM_KEEP_LOADED=$(CURDIR)/build/$@/loom/core.so \
	  build/$@/host $(BUSTED_BIN) --ignore-lua --run=$@ spec/alloc_failure_spec.lua

# --- embedding ------------------------------------------------------------
# examples/embed/host.c: a C program with Lua 5.4 and loom linked in (no
# core.so, no Lua files); -Wl,-E lets the Lua code it runs load C modules.
EMBED = build/embed/host
$(EMBED): examples/embed/host.c $(SRC) $(HDR) $(GEN)
	@mkdir -p $(dir $@)
	$(CC) $(WARN) -D_POSIX_C_SOURCE=200809L -I$(LUA_INCDIR) -I$(GENDIR) \
	  $(CFLAGS) -o $@ examples/embed/host.c $(SRC) $(LUA_STATIC) \
	  -lm -ldl -Wl,-E -pthread

embed: deps $(EMBED)
	$(EMBED)

embed-valgrind: deps $(EMBED)
	sh .ci/deps.sh valgrind
	$(VALGRIND) $(EMBED)

# Everything CI checks beyond 'make test': sanitizers, valgrind,
# allocation failures and a short fuzz run.
check: deps
	$(MAKE) asan
	$(MAKE) tsan
	$(MAKE) valgrind
	$(MAKE) embed-valgrind
	$(MAKE) failpoints
	$(MAKE) fuzz FUZZ_SECONDS=60

lint:
	luacheck lua spec examples bench src/embed.lua

clean:
	rm -rf loom build src/*.o
