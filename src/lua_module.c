/*
** lua_module.c -- the Lua binding's entry: luaopen_loom_core, the
** per-state module record, and the module's own functions (encode,
** decode, cpu_count...).  The classes live in lua_future.c,
** lua_executor.c, lua_channel.c and lua_queue.c; each registers itself
** from here.  What they share is in lua_aux.c; the specs' hooks, in test
** builds only, in lua_tests.c.
**
** Per state that loads the module there is one module record (a
** userdata, upvalue 1 of every binding function).  It remembers the
** pools and channels this state created, so that when the state closes
** it can close those channels (waking tasks blocked on them) and join
** every worker before the library can be unloaded.  Its user values hold
** the done callbacks still to run and the class metatables.
*/
#define _GNU_SOURCE
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lualib.h"
#include "loom.h"

#if defined(__GNUC__)
#define LOOM_EXPORT __attribute__((visibility("default")))
#else
#define LOOM_EXPORT
#endif

/* --------------------------------------------------------- module record */

/* At lua_close (or collection of the record): close, then join. */
static int module_gc(lua_State *L) {
  loom_mstate *ms = (loom_mstate *)lua_touserdata(L, 1);
  int i;
  if (ms->closed) return 0;
  ms->closed = 1;
  loom_close_channels(ms);
  for (i = 0; i < ms->nscheds; i++)
    ms->scheds[i]->ops->shutdown(ms->scheds[i], 0, 0);
  for (i = 0; i < ms->nscheds; i++) {
    ms->scheds[i]->ops->join(ms->scheds[i], NULL);
    loom_sched_decref(ms->scheds[i]);
  }
  /* Nobody will pop what is left: drop it.  This also frees channels
  ** that hold references to themselves, directly or in a cycle. */
  for (i = 0; i < ms->nchans; i++) {
    loom_msg *m;
    static const struct timespec past = { 0, 0 };
    while (loom_chan_pop(ms->chans[i], &past, NULL, &m) == LOOM_POP_OK)
      loom_msg_free(m);
  }
  for (i = 0; i < ms->nchans; i++) loom_chan_decref(ms->chans[i]);
  loom_free(ms->scheds);
  loom_free(ms->chans);
  ms->scheds = NULL;
  ms->chans = NULL;
  ms->nscheds = ms->nchans = 0;
  return 0;
}

/* ----------------------------------------------------- encode / decode */

static int l_encode(lua_State *L) {
  loom_msg *m;
  loom_msg **box;
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  /* pushing the string may fail: a userdata owns the message meanwhile */
  box = loom_msgbox(L);
  m = loom_encode(L, 1, 1, LOOM_AT_VALUE, 0, LOOM_REFS_NONE);
  *box = m;
  lua_pushlstring(L, (const char *)m->data, m->len);
  loom_msg_free(m);
  *box = NULL;
  return 1;
}

static int l_decode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  int functions = 0, n;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "functions");
    functions = lua_toboolean(L, -1);
  }
  lua_settop(L, 1);
  n = loom_decode(L, (const unsigned char *)s, len, functions, NULL);
  if (n != 1)
    return loom_raise(L, "transfer", "malformed message: %d values, "
                      "expected 1", n);
  return 1;
}

/* ---------------------------------------------------------------- misc */

static int l_cpu_count(lua_State *L) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  lua_pushinteger(L, n > 0 ? n : 1);
  return 1;
}

/* core._isatty(fd): whether the descriptor is a terminal (map's bar) */
static int l_isatty(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  lua_pushboolean(L, fd >= 0 && fd <= INT_MAX && isatty((int)fd));
  return 1;
}

static int l_clock(lua_State *L) {
  lua_pushnumber(L, (lua_Number)loom_now());
  return 1;
}

static int l_error(lua_State *L) {
  const char *kind = luaL_checkstring(L, 1);
  const char *msg = luaL_checkstring(L, 2);
  loom_pusherror(L, kind, "%s", msg);
  return 1;
}

/* core._process_worker(ppid): the main loop of a worker process (see
** procworker.c); returns its exit status. */
static int l_process_worker(lua_State *L) {
  lua_Integer ppid = luaL_checkinteger(L, 1);
  lua_pushinteger(L, loom_process_worker(ppid, luaopen_loom_core));
  return 1;
}

static int error_tostring(lua_State *L) {
  lua_getfield(L, 1, "kind");
  lua_getfield(L, 1, "message");
  lua_pushfstring(L, "loom.%s: %s", luaL_optstring(L, -2, "error"),
                  luaL_optstring(L, -1, "?"));
  return 1;
}

/* ------------------------------------------------------------- opening */

static const luaL_Reg funcs[] = {
  {"encode", l_encode},
  {"decode", l_decode},
  {"cpu_count", l_cpu_count},
  {"clock", l_clock},
  {"error", l_error},
  {"_isatty", l_isatty},
  {"_process_worker", l_process_worker},
  {NULL, NULL}
};

LOOM_EXPORT int luaopen_loom_core(lua_State *L) {
  loom_mstate *ms;
  int msi, lib;
  loom_arrays_check(L);
  /* one module record per state, however often the module is opened */
  if (lua_getfield(L, LUA_REGISTRYINDEX, LOOM_MODULE) == LUA_TNIL) {
    lua_pop(L, 1);
    ms = (loom_mstate *)lua_newuserdatauv(L, sizeof *ms, LOOM_UV_N);
    memset(ms, 0, sizeof *ms);
    ms->prunechans = 16;
    lua_newtable(L);
    lua_setiuservalue(L, -2, LOOM_UV_CALLBACKS);
    /* the Lua function a blocked call runs to let a hook act */
    if (luaL_loadbuffer(L, "return", 6, "=loom wait") != LUA_OK)
      lua_error(L);
    lua_setiuservalue(L, -2, LOOM_UV_POKE);
    lua_newtable(L);
    lua_pushcfunction(L, module_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, LOOM_MODULE);
  }
  msi = lua_gettop(L);
  loom_open_aux(L);
  luaL_newmetatable(L, LOOM_ERROR);
  lua_pushcfunction(L, error_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  luaL_newlibtable(L, funcs);
  lib = lua_gettop(L);
  lua_pushvalue(L, msi);
  luaL_setfuncs(L, funcs, 1);
  loom_open_future(L, msi, lib);
  loom_open_executor(L, msi, lib);
  loom_open_channel(L, msi, lib);
  loom_open_queue(L, msi, lib);
  loom_open_preload(L);
#ifdef LOOM_TESTS
  loom_open_tests(L, msi, lib);   /* the specs' hooks (lua_tests.c) */
#endif
  luaL_getmetatable(L, LOOM_ERROR);
  lua_setfield(L, lib, "Error");
  return 1;
}
