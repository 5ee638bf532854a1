# loom -- build, test and tooling.
#
# Honours LuaRocks' variables: LUA, LUA_INCDIR, LIBFLAG, CFLAGS,
# INST_LIBDIR, INST_LUADIR; and PREFIX for 'make install'.

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

SRC  = src/alloc.c src/transfer.c src/channel.c src/future.c src/pool.c \
       src/lua_loom.c
HDR  = src/loom.h
SO   = loom/core.so

ALL_CFLAGS = $(WARN) -fPIC -fvisibility=hidden -D_POSIX_C_SOURCE=200809L \
             -I$(LUA_INCDIR) $(CFLAGS) $(EXTRA_CFLAGS)

.PHONY: all install test demo deps check lint asan clean

all: $(SO)

$(SO): $(SRC) $(HDR)
	@mkdir -p loom
	$(CC) $(ALL_CFLAGS) $(LIBFLAG) -o $@ $(SRC) -pthread $(EXTRA_LDFLAGS)

install: $(SO)
	install -d $(DESTDIR)$(INST_LIBDIR)/loom $(DESTDIR)$(INST_LUADIR)/loom
	install -m 0755 $(SO) $(DESTDIR)$(INST_LIBDIR)/loom/core.so
	install -m 0644 lua/loom/*.lua $(DESTDIR)$(INST_LUADIR)/loom/

# Installs what is missing (as root), or says which apt-get line to run.
deps:
	@sh .ci/deps.sh

test: deps
	$(MAKE) all
	$(BUSTED) --lua=$(LUA) -o utfTerminal spec

demo: deps
	$(MAKE) all
	$(LUA) -e 'package.path="lua/?.lua;lua/?/init.lua;"..package.path; package.cpath="./?.so;"..package.cpath' examples/demo.lua

lint:
	luacheck lua spec examples bench

clean:
	rm -rf loom build
