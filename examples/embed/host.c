/*
** host.c -- a C program that embeds Lua 5.4 and links loom into itself:
** no loom/core.so to find, and no Lua files on disk (package.path and
** package.cpath are emptied to show it).  Built and run by `make embed`:
**
**   cc -std=c99 -D_POSIX_C_SOURCE=200809L -I/usr/include/lua5.4 \
**      -Ibuild/gen examples/embed/host.c src/(every .c file) \
**      /usr/lib/x86_64-linux-gnu/liblua5.4.a -lm -ldl -pthread
**
** (build/gen/loom_lua.h, loom's Lua modules as C data, is written by
** `make build/gen/loom_lua.h`.)
**
** It shows, in order:
**   1. loom in a host's state: require "loom", tasks that require "loom"
**      themselves, and a completion queue polled by the host;
**   2. two lua_States on two host threads, each using loom at once;
**   3. lua_close while tasks run: it waits for the running tasks, and
**      wakes a task blocked on a channel of the closing state.
** Every state is closed, so valgrind sees no leak (`make embed-valgrind`).
*/
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

/* loom's one entry point, linked in from its sources. */
int luaopen_loom_core(lua_State *L);

/* A state with the standard libraries and loom.core registered, as a
** host does it; package.preload then holds loom's Lua modules. */
static lua_State *new_state(void) {
  lua_State *L = luaL_newstate();
  if (L == NULL) return NULL;
  luaL_openlibs(L);
  luaL_requiref(L, "loom.core", luaopen_loom_core, 0);
  lua_pop(L, 1);
  /* nothing is looked for on disk, here or in the workers (which get
  ** these paths): require "loom" is served from package.preload */
  (void)luaL_dostring(L, "package.path = '' package.cpath = ''");
  return L;
}

/* Run chunk in L with 'id' as its argument; report an error. */
static int run(lua_State *L, const char *chunk, int id) {
  if (luaL_loadstring(L, chunk) != LUA_OK) {
    fprintf(stderr, "host: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    return 1;
  }
  lua_pushinteger(L, id);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    fprintf(stderr, "host: state %d: %s\n", id, lua_tostring(L, -1));
    lua_pop(L, 1);
    return 1;
  }
  return 0;
}

static const char *const basics =
  "local id = ...\n"
  "local loom = require 'loom'\n"
  "local ex <close> = loom.executor(2)\n"
  /* a task that requires loom itself: served from its state's preload */
  "local f = ex:submit(function(x)\n"
  "  local loom = require 'loom'\n"
  "  return x * x, type(loom.executor)\n"
  "end, 7)\n"
  "print(('state %d: 7 * 7 = %d; in a task, loom.executor is a %s')\n"
  "      :format(id, f:result()))\n"
  "local sum = 0\n"
  "for _, v in ex:map(function(x) return x * x end, {1, 2, 3, 4}) do\n"
  "  sum = sum + v\n"
  "end\n"
  "print(('state %d: map sum of squares 1..4 = %d'):format(id, sum))\n"
  /* what an event loop does: wait on the queue, take what is done */
  "local q <close> = loom.completion_queue()\n"
  "for i = 1, 10 do q:add(ex:submit(function(x) return x end, i)) end\n"
  "local total = 0\n"
  "while #q > 0 do total = total + assert(q:pop(60)):result() end\n"
  "print(('state %d: completion queue total = %d'):format(id, total))\n";

static void *thread_main(void *arg) {
  int id = *(int *)arg, *failed = (int *)arg + 1;
  lua_State *L = new_state();
  *failed = L == NULL || run(L, basics, id) != 0;
  if (L) lua_close(L);
  return NULL;
}

/* Left running when the state closes: a task that finishes on its own,
** and one blocked on a channel of the closing state. */
static const char *const closing =
  "local loom = require 'loom'\n"
  "local ex = loom.executor(2)\n"
  "local ch, started = loom.channel(), loom.channel()\n"
  "ex:submit(function(s)\n"
  "  s:push(1)\n"
  "  local n = 0\n"
  "  for i = 1, 2e6 do n = n + i end\n"
  "  print('task: finished its loop before lua_close returned')\n"
  "end, started)\n"
  "ex:submit(function(c, s)\n"
  "  s:push(2)\n"
  "  print('task: channel pop returned ' .. tostring(select(2, c:pop())))\n"
  "end, ch, started)\n"
  "started:pop() started:pop()   -- both are running now\n"
  "print('state 3: closing with two tasks running')\n";

int main(void) {
  lua_State *L;
  pthread_t th[2];
  int args[2][2] = { { 1, 0 }, { 2, 0 } }, i, status = 0;

  printf("1. loom linked into the host\n");
  fflush(stdout);
  L = new_state();
  if (L == NULL || run(L, basics, 0) != 0) return 1;
  lua_close(L);

  printf("2. two states on two host threads\n");
  fflush(stdout);
  for (i = 0; i < 2; i++)
    if (pthread_create(&th[i], NULL, thread_main, args[i]) != 0) return 1;
  for (i = 0; i < 2; i++) {
    pthread_join(th[i], NULL);
    status |= args[i][1];
  }

  printf("3. lua_close while tasks run\n");
  fflush(stdout);
  L = new_state();
  if (L == NULL || run(L, closing, 3) != 0) return 1;
  fflush(stdout);
  lua_close(L);   /* closes the state's channels, then joins its workers */
  printf("host: lua_close returned\n");
  return status;
}
