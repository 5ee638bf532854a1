/* Helper for bench/callgrind.sh (built into a temporary folder, never
** installed). The script loads it twice: as LD_PRELOAD, for time(), and
** as the Lua module callgrind_ctl, for uncounted().
**
** time() returns $LOOM_CG_SEED. Lua seeds its string hashes with time()
** (luai_makeseed), and the seed decides which keys collide in the tables
** that every method call looks into: left to the clock, it moved the count
** per task by up to 1% from run to run.
**
** The module's functions:
**   uncounted(fn, ...)  calls fn(...) with callgrind's instruction
**                       collection off for the calling thread (outside
**                       valgrind, a plain call)
**   sleep(seconds)      nanosleep: waits without spinning or allocating */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <time.h>
#include <lua.h>
#include <valgrind/callgrind.h>

time_t time(time_t *t) {
  const char *s = getenv("LOOM_CG_SEED");
  time_t v = s ? (time_t)atol(s) : 1;
  if (t) *t = v;
  return v;
}

static int uncounted(lua_State *L) {
  CALLGRIND_TOGGLE_COLLECT;
  lua_call(L, lua_gettop(L) - 1, 0);
  CALLGRIND_TOGGLE_COLLECT;
  return 0;
}

static int sleep_(lua_State *L) {
  double s = lua_tonumber(L, 1);
  struct timespec ts;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
  nanosleep(&ts, NULL);
  return 0;
}

int luaopen_callgrind_ctl(lua_State *L);
int luaopen_callgrind_ctl(lua_State *L) {
  lua_createtable(L, 0, 2);
  lua_pushcfunction(L, uncounted);
  lua_setfield(L, -2, "uncounted");
  lua_pushcfunction(L, sleep_);
  lua_setfield(L, -2, "sleep");
  return 1;
}
