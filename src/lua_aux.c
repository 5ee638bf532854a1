/*
** lua_aux.c -- what the binding files share (as lauxlib.c for Lua's
** libraries): fast type checks against the module record's metatables,
** timeouts, the loop every blocking call waits in, boxes that own a
** message while Lua code may raise, and classes.  It calls nothing of
** the other binding files.
*/
#include <time.h>

#include "loom.h"

/* ---------------------------------------------------------------- checks */

void *loom_fastudata(lua_State *L, int idx, int uv) {
  void *p = lua_touserdata(L, idx);
  int same;
  if (p == NULL || !lua_getmetatable(L, idx)) return NULL;
  lua_getiuservalue(L, lua_upvalueindex(1), uv);
  same = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return same ? p : NULL;
}

void *loom_checkud(lua_State *L, int idx, int uv, const char *tname) {
  void *p = loom_fastudata(L, idx, uv);
  return p ? p : luaL_checkudata(L, idx, tname);   /* raises */
}

void loom_setmeta(lua_State *L, int uv) {
  lua_getiuservalue(L, lua_upvalueindex(1), uv);
  lua_setmetatable(L, -2);
}

double loom_opttimeout(lua_State *L, int idx) {
  lua_Number t;
  if (lua_isnoneornil(L, idx)) return -1;
  /* a number, not a numeric string: as wait, as_completed and map take it */
  if (lua_type(L, idx) != LUA_TNUMBER) luaL_typeerror(L, idx, "number");
  t = lua_tonumber(L, idx);
  luaL_argcheck(L, t == t, idx, "timeout is NaN");
  return t < 0 ? 0 : t;
}

/* Its text is made protected: a callback's error, whatever its
** __tostring does, never escapes and never stops the next callback. */
void loom_warn_error(lua_State *L, const char *what) {
  const char *msg = loom_pushtext(L, -1);
  lua_warning(L, what, 1);
  lua_warning(L, msg, 0);
  lua_pop(L, 2);
}

/* ------------------------------------------------------------ blocking */

/*
** A blocked call lets Lua run whenever a hook is set on the state (on the
** running thread, or on the main one, where lua.c sets its Ctrl-C hook):
** at the start of the wait and after every slice.  It does not compare
** with the hook the wait began with: a Ctrl-C landing just before the
** wait would then go unseen.  A hook that does not raise (a debugger's, a
** profiler's) just runs once per slice.
*/
void loom_block_begin(lua_State *L, loom_block *b, double timeout) {
  b->L = L;
  b->deadline = timeout < 0 ? -1 : loom_now() + timeout;
  b->in = loom_getmstate(L)->intr;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  b->main = lua_tothread(L, -1);
  lua_pop(L, 1);
  if (loom_block_interrupted(b)) loom_block_poke(b);
}

int loom_block_slice(loom_block *b, struct timespec *ts) {
  double now = loom_now(), end = now + LOOM_SLICE;
  int more = 1;
  if (b->deadline >= 0 && b->deadline <= end) {
    end = b->deadline;
    more = now < end;
  }
  ts->tv_sec = (time_t)end;
  ts->tv_nsec = (long)((end - (double)ts->tv_sec) * 1e9);
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
  return more;
}

/* Reading the hook races, by design, with a signal handler (as in lua.c)
** or a stopper setting it: a torn read only makes this see it one slice
** early or late. */
int loom_block_interrupted(loom_block *b) {
  return loom_intr_fired(b->in) || lua_gethook(b->L) != NULL
         || lua_gethook(b->main) != NULL;
}

void loom_block_poke(loom_block *b) {
  lua_State *L = b->L;
  if (b->main != L && lua_gethook(b->main) != NULL
      && lua_gethook(L) == NULL)
    /* lua.c sets its hook on the main thread; a wait inside a coroutine
    ** takes it over, so that it acts here and now (it acts again in the
    ** main thread, as it would have) */
    lua_sethook(L, lua_gethook(b->main), lua_gethookmask(b->main),
                lua_gethookcount(b->main));
  /* a call of a Lua function runs an instruction: a count, call or line
  ** hook acts now; it may raise (this call holds nothing) */
  luaL_checkstack(L, 2, NULL);
  lua_getiuservalue(L, lua_upvalueindex(1), LOOM_UV_POKE);
  lua_call(L, 0, 0);
  /* it did not raise: go on waiting.  A stop that did not raise here (a
  ** __close handler runs as a stopped task unwinds) no longer cuts the
  ** wait short. */
  if (loom_intr_fired(b->in)) b->in = NULL;
}

static int msgbox_gc(lua_State *L) {
  loom_msg **box = (loom_msg **)lua_touserdata(L, 1);
  loom_msg_free(*box);
  *box = NULL;
  return 0;
}

loom_msg **loom_msgbox(lua_State *L) {
  loom_msg **box = (loom_msg **)lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  luaL_setmetatable(L, "loom.MsgBox");
  return box;
}

void loom_newclass(lua_State *L, const char *name, const luaL_Reg *methods,
                   lua_CFunction gc, lua_CFunction tostr, int ms) {
  luaL_newmetatable(L, name);
  lua_newtable(L);
  lua_pushvalue(L, ms);
  luaL_setfuncs(L, methods, 1);
  lua_setfield(L, -2, "__index");
  if (gc) {
    lua_pushvalue(L, ms);
    lua_pushcclosure(L, gc, 1);
    lua_setfield(L, -2, "__gc");
  }
  if (tostr) {
    lua_pushvalue(L, ms);
    lua_pushcclosure(L, tostr, 1);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
}

void loom_open_aux(lua_State *L) {
  luaL_newmetatable(L, "loom.MsgBox");
  lua_pushcfunction(L, msgbox_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
}
