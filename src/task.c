/*
** task.c -- running a task inside a lua_State, for every kind of worker.
**
** A task is a message: the function, then its arguments (or, for a map
** chunk, the function and nchunk argument lists).  It is decoded in the
** worker's state, called under a message handler that keeps the
** traceback, and its results (or its error value and the traceback) are
** encoded into the future's outcome.  Everything runs protected: no Lua
** error leaves loom_task_run, and the worker's stack is empty after it.
*/
#include <string.h>

#include "lualib.h"
#include "loom.h"

/* The traceback of the last task error, kept by the message handler. */
#define TRACEBACK_KEY "loom.traceback"

static int msghandler(lua_State *L) {
  /* only the traceback's text is derived; the error value stays as it is,
  ** whatever its __tostring does */
  luaL_traceback(L, L, loom_pushtext(L, 1), 1);
  lua_setfield(L, LUA_REGISTRYINDEX, TRACEBACK_KEY);
  lua_settop(L, 1);
  return 1;
}

/* Push the traceback the message handler kept, and forget it. */
static void push_traceback(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, TRACEBACK_KEY);
  if (!lua_isstring(L, -1)) {
    lua_pop(L, 1);
    lua_pushstring(L, "(no traceback)");
  }
  lua_pushnil(L);
  lua_setfield(L, LUA_REGISTRYINDEX, TRACEBACK_KEY);
}

/* The refs mode of f's results: self-contained when they go to another
** process. */
#define result_refs(f) (((f)->xflags & LOOM_TASK_SELFCONTAINED) \
                        ? LOOM_REFS_PROCESS : LOOM_REFS_THREADS)

/* Protected: [1] = loom_msg **out or NULL (only check), [2] = refs mode,
** then the values to encode as results. */
static int encode_k(lua_State *L) {
  loom_msg **out = (loom_msg **)lua_touserdata(L, 1);
  loom_msg *m = loom_encode_mode(L, 3, lua_gettop(L) - 2, LOOM_AT_RESULT, 0,
                                 (int)lua_tointeger(L, 2), 0, 0, 0);
  if (out) *out = m;
  else loom_msg_free(m);
  return 0;
}

/* Protected: [1] = loom_msg **out, [2] = refs mode, then the values of a
** chunk's list. */
static int encode_list_k(lua_State *L) {
  *(loom_msg **)lua_touserdata(L, 1) =
      loom_encode_mode(L, 3, lua_gettop(L) - 2, LOOM_AT_RESULT, 0,
                       (int)lua_tointeger(L, 2), 1, 0, 0);
  return 0;
}

/* Try to encode the n values at the top (popping them) in refs mode
** refs; 1 on success, with the message in *out if out is not NULL; else 0
** and the error at the top. */
static int try_encode(lua_State *L, int n, loom_msg **out, int refs) {
  lua_pushcfunction(L, encode_k);
  lua_pushlightuserdata(L, out);
  lua_pushinteger(L, refs);
  lua_rotate(L, -n - 3, 3);
  return lua_pcall(L, n + 2, 0, 0) == LUA_OK;
}

/* Make the error value at idx one that can cross: itself when it can be
** copied, else its text (what chunksize = 1 and a plain task both send). */
static void crossable_error(lua_State *L, int idx, int refs) {
  idx = lua_absindex(L, idx);
  lua_pushvalue(L, idx);
  if (try_encode(L, 1, NULL, refs)) return;
  lua_pop(L, 1);
  loom_pushtext(L, idx);
  lua_replace(L, idx);
}

/*
** A map chunk: call fn on nchunk argument lists, in order.  Stack:
** [1] message handler, [base+1] fn, then the arguments, nseq per call.
** The results go out as one list {extras, r1, ..., rm}: rj is call j's
** only result.  extras is nil when every call returned exactly one value
** (the common case, and the fast one); otherwise a table with, at [j],
** {n = count, results...} for a call j that returned some other number,
** and, when call j raised, fail = j, err = value, tb = traceback.  The
** calls after a failing one do not run.
*/
static void chunk_extras(lua_State *L, int out) {
  if (lua_type(L, out + 1) != LUA_TTABLE) {
    lua_newtable(L);
    lua_replace(L, out + 1);
  }
}

/* Mark call j of the chunk as failed with the error at the top (popped)
** and drop what the calls after it left. */
static void chunk_fail(lua_State *L, int out, int j, int k) {
  int a;
  chunk_extras(L, out);
  lua_setfield(L, out + 1, "err");
  lua_pushinteger(L, j);
  lua_setfield(L, out + 1, "fail");
  for (a = j; a <= k; a++) {
    lua_pushnil(L);
    lua_rawseti(L, out + 1, a);
  }
  if (lua_gettop(L) > out + j) lua_settop(L, out + j);
}

/*
** The chunk's results could not all be copied: end the chunk where
** chunksize = 1 would have seen the first failure, in call order.  A call
** whose results cannot cross fails with the transfer error that a plain
** task gets ("result #k: ..."); an error value that cannot cross goes as
** its text.  The calls before it keep their results.
*/
static void chunk_fixup(lua_State *L, int out, int k, int refs) {
  int j, failj = 0, ran = lua_gettop(L) - out - 1;
  if (lua_type(L, out + 1) == LUA_TTABLE) {
    lua_getfield(L, out + 1, "fail");
    failj = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
  }
  for (j = 1; j <= ran; j++) {   /* the calls before a failing one */
    int n = 1;
    if (lua_type(L, out + 1) == LUA_TTABLE
        && lua_rawgeti(L, out + 1, j) == LUA_TTABLE) {
      int t = lua_gettop(L), a;
      lua_getfield(L, t, "n");
      n = (int)lua_tointeger(L, -1);
      lua_pop(L, 1);
      luaL_checkstack(L, n, "too many results");
      for (a = 1; a <= n; a++) lua_rawgeti(L, t, a);
      lua_remove(L, t);
    }
    else {
      if (lua_type(L, out + 1) == LUA_TTABLE) lua_pop(L, 1);
      lua_pushvalue(L, out + 1 + j);
    }
    if (!try_encode(L, n, NULL, refs)) {  /* as a plain task's: no traceback */
      chunk_extras(L, out);
      lua_pushnil(L);
      lua_setfield(L, out + 1, "tb");
      chunk_fail(L, out, j, k);
      return;
    }
  }
  if (failj) {   /* every earlier call is fine: the error value itself */
    lua_getfield(L, out + 1, "err");
    crossable_error(L, -1, refs);
    lua_setfield(L, out + 1, "err");
  }
}

static int run_chunk(lua_State *L, loom_future *f, loom_outcome *o,
                     int base, int n) {
  int k = f->nchunk, q = f->nseq, out = lua_gettop(L), j, a;
  if (n != 1 + k * q) return luaL_error(L, "malformed task");
  luaL_checkstack(L, k + q + 8, "too many results");
  lua_pushnil(L);                           /* out+1: extras */
  for (j = 0; j < k; j++) {
    int top = lua_gettop(L), nr;
    lua_pushvalue(L, base + 1);
    for (a = 0; a < q; a++) lua_pushvalue(L, base + 2 + j * q + a);
    if (lua_pcall(L, q, LUA_MULTRET, 1) != LUA_OK) {
      push_traceback(L);                    /* top+1 error, top+2 tb */
      chunk_extras(L, out);
      lua_setfield(L, out + 1, "tb");
      chunk_fail(L, out, j + 1, k);
      break;
    }
    nr = lua_gettop(L) - top;
    if (nr == 1) continue;
    /* not one result: pack them into extras[j + 1], leave a nil here */
    luaL_checkstack(L, 4, "too many results");
    chunk_extras(L, out);
    lua_createtable(L, nr, 1);
    lua_insert(L, top + 1);
    for (a = nr; a >= 1; a--) lua_rawseti(L, top + 1, a);
    lua_pushinteger(L, nr);
    lua_setfield(L, top + 1, "n");
    lua_rawseti(L, out + 1, j + 1);
    lua_pushnil(L);
  }
  /* The common case encodes once, from copies of the values; only when
  ** that fails are the calls looked at one by one. */
  {
    int nv = lua_gettop(L) - out, i;
    luaL_checkstack(L, nv + 4, "too many results");
    lua_pushcfunction(L, encode_list_k);
    lua_pushlightuserdata(L, &o->result);
    lua_pushinteger(L, result_refs(f));
    for (i = 1; i <= nv; i++) lua_pushvalue(L, out + i);
    if (lua_pcall(L, nv + 2, 0, 0) == LUA_OK) return 0;
    lua_pop(L, 1);
  }
  chunk_fixup(L, out, k, result_refs(f));
  o->result = loom_encode_mode(L, out + 1, lua_gettop(L) - out,
                               LOOM_AT_RESULT, 0, result_refs(f), 1, 0, 0);
  return 0;
}
/*
** Run one task.  Protected: stack [1] = lightuserdata future, [2] =
** lightuserdata outcome.  Sets o->result (and o->failed), or raises (the
** caller turns that into a loom condition).
*/
static int run_task(lua_State *L) {
  loom_future *f = (loom_future *)lua_touserdata(L, 1);
  loom_outcome *o = (loom_outcome *)lua_touserdata(L, 2);
  loom_msg *task = f->task;
  int n, base, st;
  lua_settop(L, 0);
  lua_pushcfunction(L, msghandler);          /* 1 */
  base = lua_gettop(L);
  n = loom_decode(L, task->data, task->len, 1, task);
  f->task = NULL;   /* (kept until here: if decoding raises, it is freed) */
  if (!(f->xflags & LOOM_TASK_BORROWED))
    loom_msg_free(task);                     /* the copy is made */
  if (n < 1 || !lua_isfunction(L, base + 1))
    return luaL_error(L, "malformed task");
  if (f->nchunk > 0) return run_chunk(L, f, o, base, n);
  st = lua_pcall(L, n - 1, LUA_MULTRET, 1);
  if (st == LUA_OK) {
    o->result = loom_encode_mode(L, base + 1, lua_gettop(L) - base,
                                 LOOM_AT_RESULT, 0, result_refs(f), 0, 0, 0);
    return 0;
  }
  /* the error value is at the top: send it and the traceback */
  st = lua_gettop(L);
  crossable_error(L, st, result_refs(f));
  push_traceback(L);
  o->failed = 1;
  o->result = loom_encode_mode(L, st, 2, LOOM_AT_VALUE, 0, result_refs(f),
                               0, 0, 0);
  return 0;
}

/* Protected: [1] = char **out, [2] = an error value; its text. */
static int error_text(lua_State *L) {
  char **out = (char **)lua_touserdata(L, 1);
  const char *msg = NULL;
  if (lua_type(L, 2) == LUA_TTABLE && lua_getfield(L, 2, "message")
                                      == LUA_TSTRING)
    msg = lua_tostring(L, -1);
  if (msg == NULL) msg = loom_pushtext(L, 2);
  *out = loom_strdup(msg);
  return 0;
}

/*
** The text of the error value at idx, as a new C string, or NULL when
** even that runs out of memory.  Turning a value into text can allocate,
** so it runs protected: an unprotected error here would end the process.
*/
static char *safe_error_text(lua_State *L, int idx) {
  char *out = NULL;
  idx = lua_absindex(L, idx);
  if (!lua_checkstack(L, 4)) return NULL;
  lua_pushcfunction(L, error_text);     /* these pushes never allocate */
  lua_pushlightuserdata(L, &out);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) lua_pop(L, 1);
  return out;
}

int loom_task_run(lua_State *L, loom_future *f, loom_outcome *o) {
  int st;
  memset(o, 0, sizeof *o);
  lua_settop(L, 0);
  lua_pushcfunction(L, run_task);
  lua_pushlightuserdata(L, f);
  lua_pushlightuserdata(L, o);
  st = lua_pcall(L, 2, 0, 0);
  if (st != LUA_OK) {
    /* The task could not start, or its results could not be copied, or
    ** the worker ran out of memory outside the task's own code. */
    loom_outcome_free(o);
    if (st == LUA_ERRMEM) lua_gc(L, LUA_GCCOLLECT);   /* room to say it */
    o->errmsg = safe_error_text(L, -1);
    if (st != LUA_ERRMEM && lua_type(L, -1) == LUA_TTABLE)
      o->errkind = "transfer";   /* loom's own: results not copyable */
    /* else raised to the caller as a plain string (NULL: no memory) */
  }
  if (!(f->xflags & LOOM_TASK_BORROWED))
    loom_msg_free(f->task);   /* when decoding did not finish */
  f->task = NULL;
  lua_settop(L, 0);
  return st;
}

/* Protected: [1] = path, [2] = cpath, [3] = init message; set the state
** up and run init. */
static int task_setup(lua_State *L) {
  const char *path = (const char *)lua_touserdata(L, 1);
  const char *cpath = (const char *)lua_touserdata(L, 2);
  const loom_msg *init = (const loom_msg *)lua_touserdata(L, 3);
  int n;
  lua_settop(L, 0);
  loom_open_worker_state(L);
  lua_getglobal(L, "package");
  if (path) {
    lua_pushstring(L, path);
    lua_setfield(L, -2, "path");
  }
  if (cpath) {
    lua_pushstring(L, cpath);
    lua_setfield(L, -2, "cpath");
  }
  lua_settop(L, 0);
  if (init) {
    lua_pushcfunction(L, msghandler);
    n = loom_decode(L, init->data, init->len, 1, init);
    if (lua_pcall(L, n - 1, 0, 1) != LUA_OK) return lua_error(L);
  }
  return 0;
}

char *loom_task_setup(lua_State *L, const char *path, const char *cpath,
                      const loom_msg *init) {
  char *err = NULL;
  lua_settop(L, 0);
  lua_pushcfunction(L, task_setup);
  lua_pushlightuserdata(L, (void *)path);
  lua_pushlightuserdata(L, (void *)cpath);
  lua_pushlightuserdata(L, (void *)init);
  if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
    err = safe_error_text(L, -1);
    if (err == NULL) err = loom_strdup("not enough memory");
  }
  lua_settop(L, 0);
  return err;
}

