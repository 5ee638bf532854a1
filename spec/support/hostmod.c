/*
** hostmod.c -- a stand-in for a C host, for spec/cfunc_spec.lua.
**
** require "loomtest_host" does what a program embedding Lua does with its
** own C functions: it links a module into the interpreter as
** package.preload.loomtest_linked (no file on any path), registers the
** global C function loomtest_global, and opens loomtest_unlisted straight
** into package.loaded (luaL_requiref), with no preload and no file.
*/
#include "lua.h"
#include "lauxlib.h"

static int triple(lua_State *L) {
  lua_pushinteger(L, 3 * luaL_checkinteger(L, 1));
  return 1;
}

static int tag(lua_State *L) {
  lua_pushliteral(L, "linked");
  return 1;
}

static int open_linked(lua_State *L) {
  static const luaL_Reg funcs[] = { {"triple", triple}, {"tag", tag},
                                    {NULL, NULL} };
  luaL_newlib(L, funcs);
  return 1;
}

static int global_fn(lua_State *L) {
  lua_pushliteral(L, "global");
  return 1;
}

static int unlisted_fn(lua_State *L) {
  lua_pushliteral(L, "unlisted");
  return 1;
}

static int open_unlisted(lua_State *L) {
  lua_newtable(L);
  lua_pushcfunction(L, unlisted_fn);
  lua_setfield(L, -2, "fn");
  return 1;
}

int luaopen_loomtest_host(lua_State *L);
int luaopen_loomtest_host(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, open_linked);
  lua_setfield(L, -2, "loomtest_linked");
  lua_pop(L, 1);
  lua_register(L, "loomtest_global", global_fn);
  luaL_requiref(L, "loomtest_unlisted", open_unlisted, 0);
  lua_pop(L, 1);
  lua_newtable(L);
  return 1;
}
