-- The release rockspec; its version is the Makefile's VERSION (a spec
-- checks that they agree). `make rock` writes the source archive,
-- loom-0.2.0.tar.gz (top folder loom-0.2.0/), and packs it with this file
-- into loom-0.2.0-1.src.rock. The relative URL names the archive in the
-- current folder: `luarocks build` of this file works from the folder that
-- holds it, but `luarocks pack` looks in a temporary folder of its own, so
-- pack with `make rock`.
rockspec_format = "3.0"
package = "loom"
version = "0.2.0-1"
source = {
  url = "file://loom-0.2.0.tar.gz",
  dir = "loom-0.2.0",
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
