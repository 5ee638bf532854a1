-- For `luarocks make rockspec/loom-scm-1.rockspec` in a checkout, which
-- builds the files as they are and ignores `source`. The source named here
-- is the archive of the checkout that `make rock VERSION=scm` writes and
-- packs with this file into loom-scm-1.src.rock. Apart from the version,
-- this file is the release rockspec beside it.
rockspec_format = "3.0"
package = "loom"
version = "scm-1"
source = {
  url = "file://loom-scm.tar.gz",
  dir = "loom-scm",
}
description = {
  summary = "A parallel executor for Lua 5.4: futures, map, as_completed and wait on native threads",
  detailed = [[
loom runs Lua functions in parallel on a pool of native threads, each
worker with its own lua_State. Arguments and results are copied exactly
between states. The API follows Python's concurrent.futures.
]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.4, < 5.5",
}
-- The Makefile is the one list of the C sources, so LuaRocks runs it:
-- `make` (target all) and then `make install`, with the same compiler
-- settings both times, so that install finds core.so up to date.
build = {
  type = "make",
  build_variables = {
    CFLAGS = "$(CFLAGS)",
    LIBFLAG = "$(LIBFLAG)",
    LUA_INCDIR = "$(LUA_INCDIR)",
    LUA = "$(LUA)",
  },
  install_variables = {
    CFLAGS = "$(CFLAGS)",
    LIBFLAG = "$(LIBFLAG)",
    LUA_INCDIR = "$(LUA_INCDIR)",
    LUA = "$(LUA)",
    INST_LIBDIR = "$(LIBDIR)",
    INST_LUADIR = "$(LUADIR)",
    INST_BINDIR = "",   -- the command: LuaRocks installs it (install.bin)
  },
  install = {
    bin = { ["loom-busted"] = "bin/loom-busted" },
  },
}
-- `luarocks test` first makes sure of test_dependencies, and LuaRocks 3.8
-- does not see a busted installed by apt (lua-busted): with no rocks server
-- it stops at "Could not satisfy dependency busted" and runs nothing.
-- Online it installs the busted rock. Offline, declare Debian's busted in a
-- LuaRocks config, as .ci/run does:
--   echo 'rocks_provided = { busted = "2.1.1-1" }' >/tmp/offline.lua
--   LUAROCKS_CONFIG=/tmp/offline.lua luarocks --lua-version=5.4 test rockspec/<this file>
-- The type is "command", not "busted": the core must be built first, and
-- the "busted" type wants a busted from a rocks tree (a provided one is
-- refused as "already provided by VM"). Arguments after `--` go to busted.
test_dependencies = {
  "busted",
}
test = {
  type = "command",
  command = "make all && busted --lua=lua5.4",
}
