/*
** host.c -- a minimal Lua 5.4 interpreter for running the specs under
** sanitizers.  It links Debian's static liblua5.4.a into an executable
** built with the sanitizer, so that loom's instrumented core.so can be
** loaded (an instrumented module cannot be loaded into the stock lua5.4).
**
** Usage, like lua5.4:  host [-e chunk]... [script [args...]]
** The state is always closed at the end, so leaks are real leaks.
** Like lua.c, it turns the first SIGINT during a chunk into an
** "interrupted!" error (a hook set from the signal handler), and a second
** one ends the process.
** $LOOM_KEEP_LOADED names a module (core.so) to load first and never
** unload, so that leak reports at exit can still name its functions.
*/
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) msg = luaL_tolstring(L, 1, NULL);
  luaL_traceback(L, L, msg, 1);
  return 1;
}

static lua_State *globalL = NULL;

/* As lua.c's lstop and laction. */
static void lstop(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "interrupted!");
}

static void laction(int i) {
  int flag = LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT;
  signal(i, SIG_DFL);   /* a second Ctrl-C ends the process */
  lua_sethook(globalL, lstop, flag, 1);
}

static int run(lua_State *L, int status) {
  if (status == LUA_OK) {
    int base = lua_gettop(L) - lua_tointeger(L, -1) - 1;
    int nargs = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    lua_pushcfunction(L, traceback);
    lua_insert(L, base);
    globalL = L;
    signal(SIGINT, laction);
    status = lua_pcall(L, nargs, 0, base);
    signal(SIGINT, SIG_DFL);
    lua_remove(L, base);
  }
  if (status != LUA_OK) {
    fprintf(stderr, "host: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  return status;
}

int main(int argc, char **argv) {
  lua_State *L;
  int i, status = LUA_OK, script = 0;
  const char *keep = getenv("LOOM_KEEP_LOADED");
  if (keep != NULL && *keep != '\0'
      && dlopen(keep, RTLD_NOW | RTLD_GLOBAL | RTLD_NODELETE) == NULL)
    fprintf(stderr, "host: %s\n", dlerror());
  L = luaL_newstate();
  if (L == NULL) return 1;
  luaL_openlibs(L);
  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-e") == 0 && i + 1 < argc) {
      status = luaL_loadstring(L, argv[++i]);
      if (status == LUA_OK) lua_pushinteger(L, 0);
      if (run(L, status) != LUA_OK) { lua_close(L); return 1; }
    }
    else { script = i; break; }
  }
  if (script) {
    int k;
    lua_createtable(L, argc - script, script + 1);
    for (k = 0; k < argc; k++) {
      lua_pushstring(L, argv[k]);
      lua_rawseti(L, -2, k - script);
    }
    lua_setglobal(L, "arg");
    status = luaL_loadfile(L, argv[script]);
    if (status == LUA_OK) {
      for (k = script + 1; k < argc; k++) lua_pushstring(L, argv[k]);
      lua_pushinteger(L, argc - script - 1);
    }
    status = run(L, status);
  }
  lua_close(L);
  return status == LUA_OK ? 0 : 1;
}
