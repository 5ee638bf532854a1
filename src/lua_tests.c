/*
** lua_tests.c -- the specs' hooks into the core, as Lua keeps its own in
** ltests.c: built only into the cores the specs load (build/test and
** the sanitizer builds, with -DLOOM_TESTS), never into loom/core.so,
** which make install, LuaRocks and make rock ship.  They are fields of
** loom.core whose names begin with "_".
*/
#include <string.h>

#include "loom.h"

/* ------------------------------------------------------------ new state */

/* Protected, in the new state: [1] = message; decode, maybe call,
** encode the results into a new message (lightuserdata [2] gets it). */
static int other_state_run(lua_State *L) {
  loom_msg *in = (loom_msg *)lua_touserdata(L, 1);
  loom_msg **out = (loom_msg **)lua_touserdata(L, 2);
  int call = lua_toboolean(L, 3), n;
  lua_settop(L, 3);
  n = loom_decode(L, in->data, in->len, 1, in);
  if (call) {
    lua_call(L, n - 1, LUA_MULTRET);
    n = lua_gettop(L) - 3;
  }
  *out = loom_encode(L, 4, n, LOOM_AT_RESULT, 0, LOOM_REFS_THREADS);
  return 0;
}

/* Protected: set up a fresh state as a worker's. */
static int open_worker_k(lua_State *L) {
  loom_open_worker_state(L, luaopen_loom_core);
  return 0;
}

static int in_new_state(lua_State *L, int call) {
  int n = lua_gettop(L), r;
  loom_msg *m, *out = NULL;
  lua_State *L2;
  loom_msg **box;
  box = loom_msgbox(L);
  m = loom_encode(L, 1, n, LOOM_AT_ARGUMENT, 1, LOOM_REFS_THREADS);
  *box = m;
  L2 = lua_newstate(loom_lua_alloc, NULL);
  if (L2 == NULL) return luaL_error(L, "cannot create a state");
  lua_pushcfunction(L2, open_worker_k);
  r = lua_pcall(L2, 0, 0, 0);
  if (r == LUA_OK) {
    lua_pushcfunction(L2, other_state_run);
    lua_pushlightuserdata(L2, m);
    lua_pushlightuserdata(L2, &out);
    lua_pushboolean(L2, call);
    r = lua_pcall(L2, 3, 0, 0);
  }
  if (r != LUA_OK) {   /* copy the error back */
    lua_pushcfunction(L2, other_state_run);
    lua_insert(L2, -2);
    lua_pushlightuserdata(L2, &out);
    lua_insert(L2, -2);
    out = loom_encode(L2, -1, 1, LOOM_AT_RESULT, 0, LOOM_REFS_THREADS);
  }
  lua_close(L2);
  *box = out;
  loom_msg_free(m);
  lua_settop(L, n + 1);
  n = loom_decode(L, out->data, out->len, 1, out);
  if (r != LUA_OK) return lua_error(L);
  return n;
}

static int l_roundtrip(lua_State *L) { return in_new_state(L, 0); }
static int l_call_in_new_state(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  return in_new_state(L, 1);
}

/* ---------------------------------------------------------------- probes */

/* core._inplace_arrays([on]): whether arrays of numbers are copied in
** place (see transfer.c), after turning that on or off if asked; for the
** specs, which compare both ways of copying. */
static int l_inplace_arrays(lua_State *L) {
  int on = lua_isnoneornil(L, 1) ? -1 : lua_toboolean(L, 1);
  lua_pushboolean(L, loom_arrays_inplace(on));
  return 1;
}

/* core._pins([s]): how many strings of this state (or references to the
** string s) are anchored for messages, after a sweep, and the length from
** which strings cross by reference; for the specs. */
static int l_pins(lua_State *L) {
  const char *s = lua_type(L, 1) == LUA_TSTRING ? lua_tostring(L, 1) : NULL;
  lua_pushinteger(L, loom_pins_live(L, s));
  lua_pushinteger(L, LOOM_PIN_MIN);
  return 2;
}

/* core._failpoint(k, which): make the k-th next allocation fail (see
** alloc.c; inert unless built with LOOM_FAILPOINTS); returns how many
** allocations the last arming counted and whether it fired. */
static int l_failpoint(lua_State *L) {
  lua_Integer k = luaL_checkinteger(L, 1);
  static const char *const opts[] = { "lua", "core", "both", NULL };
  int which = luaL_checkoption(L, 2, "both", opts) + 1;
  lua_pushinteger(L, loom_failpoint_count());
  lua_pushboolean(L, loom_failpoint_fired());
  loom_failpoint_arm((long)k, which);
  return 2;
}

/* core._builtin(name) -> the built-in source of module name, or nil
** (the specs compare it with the files). */
static int l_builtin(lua_State *L) {
  size_t len;
  const char *src = loom_preload_source(luaL_checkstring(L, 1), &len);
  if (src == NULL) return 0;
  lua_pushlstring(L, src, len);
  return 1;
}

/* ------------------------------------------------------------- opening */

static const luaL_Reg test_funcs[] = {
  {"_roundtrip", l_roundtrip},
  {"_call_in_new_state", l_call_in_new_state},
  {"_failpoint", l_failpoint},
  {"_inplace_arrays", l_inplace_arrays},
  {"_pins", l_pins},
  {"_builtin", l_builtin},
  {NULL, NULL}
};

void loom_open_tests(lua_State *L, int ms, int lib) {
  lua_pushvalue(L, lib);
  lua_pushvalue(L, ms);
  luaL_setfuncs(L, test_funcs, 1);
  lua_pop(L, 1);
}
