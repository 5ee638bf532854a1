rockspec_format = "3.0"
package = "loom"
version = "scm-1"
source = {
  url = "git+file:///dev/null",  -- installed from a checkout: luarocks make
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
build = {
  type = "builtin",
  modules = {
    ["loom"] = "lua/loom/init.lua",
    ["loom.core"] = {
      sources = {
        "src/alloc.c", "src/transfer.c", "src/channel.c", "src/future.c",
        "src/pool.c", "src/lua_loom.c",
      },
      defines = { "_POSIX_C_SOURCE=200809L" },
      libraries = { "pthread" },
      incdirs = { "src" },
    },
  },
}
test_dependencies = {}
test = {
  type = "command",
  command = "make test",
}
