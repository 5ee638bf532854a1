/*
** lua_preload.c -- loom's own Lua modules (lua/loom/NAME.lua), built into
** the core as package.preload entries.
**
** A C host that links loom in registers loom.core with luaL_requiref and
** then needs no Lua files on disk for require "loom"; nor do worker
** states, which open loom.core the same way.  The sources are copied in
** at build time (src/embed.lua writes loom_lua.h), so they are the
** files of the same build.  An entry is set only where package.preload
** has none, so a host may put its own first.
**
** Which copy wins: the preload searcher comes first, but a state that
** loads loom as usual (require "loom" from package.path) runs init.lua
** from disk before loom.core registers anything; its later requires of
** loom.luv or loom.cqueues, and tasks' require "loom", find the built-in
** copies.  The Makefile rebuilds the core whenever a module changes.
*/
#include <string.h>

#include "loom.h"
#include "loom_lua.h"   /* generated: LOOM_BUILTINS */

typedef struct builtin {
  const char *name, *chunkname;
  const unsigned char *src;
  size_t len;
} builtin;

static const builtin builtins[] = {
  LOOM_BUILTINS
  { NULL, NULL, NULL, 0 }
};

/* The loader in package.preload; upvalue 1: its builtin.  As a file's
** chunk, the module's chunk gets the module name and where it is from. */
static int load_builtin(lua_State *L) {
  const builtin *b = (const builtin *)lua_touserdata(L, lua_upvalueindex(1));
  if (luaL_loadbufferx(L, (const char *)b->src, b->len, b->chunkname, "t")
      != LUA_OK)
    return lua_error(L);
  lua_pushstring(L, b->name);
  lua_pushstring(L, b->chunkname + 1);
  lua_call(L, 2, 1);
  return 1;
}

const char *loom_preload_source(const char *name, size_t *len) {
  const builtin *b;
  for (b = builtins; b->name; b++)
    if (strcmp(b->name, name) == 0) {
      *len = b->len;
      return (const char *)b->src;
    }
  return NULL;
}

void loom_open_preload(lua_State *L) {
  const builtin *b;
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (b = builtins; b->name; b++) {
    if (lua_getfield(L, -1, b->name) == LUA_TNIL) {
      lua_pushlightuserdata(L, (void *)b);
      lua_pushcclosure(L, load_builtin, 1);
      lua_setfield(L, -3, b->name);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}
