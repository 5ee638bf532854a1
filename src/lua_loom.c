/*
** lua_loom.c -- the Lua binding: luaopen_loom_core.
**
** Per state that loads the module there is one module record (a
** userdata, upvalue 1 of every function here).  It remembers the pools
** and channels this state created, so that when the state closes it can
** close those channels (waking tasks blocked on them) and join every
** worker before the library can be unloaded.  Its uservalue holds the
** done callbacks still to run.
**
** Handles are created already "closed" (NULL) and filled in after the
** last call that could raise, so a Lua error never leaks a C object.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lualib.h"
#include "loom.h"

#define LOOM_MODULE  "loom.Module"
#define LOOM_WATCHER "loom.Watcher"

/* --------------------------------------------------------- module record */

typedef struct mstate {
  loom_pool **pools;       /* created here and not yet joined; one ref each */
  int npools, cappools;
  loom_chan **chans;       /* created here; one ref each (pruned) */
  int nchans, capchans, prunechans;
  int ncallbacks;          /* futures with callbacks still to run */
  int closed;
} mstate;

#define getmstate(L) ((mstate *)lua_touserdata(L, lua_upvalueindex(1)))

/* The module record's user values: pending callbacks, then metatables
** (kept there so the hot paths check types without a registry lookup). */
enum { UV_CALLBACKS = 1, UV_FUTURE, UV_EXECUTOR, UV_CHANNEL, UV_N = UV_CHANNEL };

/* The userdata at idx if its metatable is user value 'uv', else NULL. */
static void *fastudata(lua_State *L, int idx, int uv) {
  void *p = lua_touserdata(L, idx);
  int same;
  if (p == NULL || !lua_getmetatable(L, idx)) return NULL;
  lua_getiuservalue(L, lua_upvalueindex(1), uv);
  same = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return same ? p : NULL;
}

static void *checkud(lua_State *L, int idx, int uv, const char *tname) {
  void *p = fastudata(L, idx, uv);
  return p ? p : luaL_checkudata(L, idx, tname);   /* raises */
}

static void setmeta(lua_State *L, int uv) {
  lua_getiuservalue(L, lua_upvalueindex(1), uv);
  lua_setmetatable(L, -2);
}

static int grow(void **arr, int *cap, size_t elem) {
  int ncap = *cap ? *cap * 2 : 8;
  void *n = loom_realloc(*arr, elem * (size_t)ncap);
  if (n == NULL) return 0;
  *arr = n;
  *cap = ncap;
  return 1;
}

/* Join and drop pools whose workers have all exited. */
static void prune_pools(mstate *ms) {
  int i, j = 0;
  for (i = 0; i < ms->npools; i++) {
    loom_pool *p = ms->pools[i];
    int done;
    pthread_mutex_lock(&p->mu);
    done = p->joined || (p->stopping && p->nexited == p->nstarted);
    pthread_mutex_unlock(&p->mu);
    if (done) {
      loom_pool_join(p);
      loom_pool_decref(p);
    }
    else ms->pools[j++] = p;
  }
  ms->npools = j;
}

static void prune_chans(mstate *ms) {
  int i, j = 0;
  for (i = 0; i < ms->nchans; i++) {
    loom_chan *c = ms->chans[i];
    if (atomic_load(&c->refs) == 1) loom_chan_decref(c);  /* only ours */
    else ms->chans[j++] = c;
  }
  ms->nchans = j;
  ms->prunechans = j * 2 + 16;
}

/* At lua_close (or collection of the record): close, then join. */
static int module_gc(lua_State *L) {
  mstate *ms = (mstate *)lua_touserdata(L, 1);
  int i;
  if (ms->closed) return 0;
  ms->closed = 1;
  for (i = 0; i < ms->nchans; i++) loom_chan_close(ms->chans[i]);
  for (i = 0; i < ms->npools; i++) loom_pool_shutdown(ms->pools[i], 0);
  for (i = 0; i < ms->npools; i++) {
    loom_pool_join(ms->pools[i]);
    loom_pool_decref(ms->pools[i]);
  }
  /* Nobody will pop what is left: drop it.  This also frees channels
  ** that hold references to themselves, directly or in a cycle. */
  for (i = 0; i < ms->nchans; i++) {
    loom_msg *m;
    while (loom_chan_pop(ms->chans[i], 0, &m) == 0) loom_msg_free(m);
  }
  for (i = 0; i < ms->nchans; i++) loom_chan_decref(ms->chans[i]);
  loom_free(ms->pools);
  loom_free(ms->chans);
  ms->pools = NULL;
  ms->chans = NULL;
  ms->npools = ms->nchans = 0;
  return 0;
}

/* ------------------------------------------------------------- helpers */

/* Optional timeout at idx: <0 forever (absent/nil), else seconds >= 0. */
static double opttimeout(lua_State *L, int idx) {
  lua_Number t;
  if (lua_isnoneornil(L, idx)) return -1;
  /* a number, not a numeric string: as wait, as_completed and map take it */
  if (lua_type(L, idx) != LUA_TNUMBER) luaL_typeerror(L, idx, "number");
  t = lua_tonumber(L, idx);
  luaL_argcheck(L, t == t, idx, "timeout is NaN");
  return t < 0 ? 0 : t;
}

/* Report the error value at the top through warn.  Its text is made
** protected: a callback's error, whatever its __tostring does, never
** escapes and never stops the next callback. */
static void warn_error(lua_State *L, const char *what) {
  const char *msg = loom_pushtext(L, -1);
  lua_warning(L, what, 1);
  lua_warning(L, msg, 0);
  lua_pop(L, 1);
}

/* ------------------------------------------------------------- futures */

typedef struct fhandle {
  loom_future *f;
} fhandle;

static loom_future *checkfuture(lua_State *L, int idx) {
  fhandle *h = (fhandle *)checkud(L, idx, UV_FUTURE, LOOM_FUTURE);
  if (h->f == NULL) luaL_argerror(L, idx, "future is not initialised");
  return h->f;
}

static int future_gc(lua_State *L) {
  fhandle *h = (fhandle *)luaL_checkudata(L, 1, LOOM_FUTURE);
  if (h->f) loom_future_decref(h->f);
  h->f = NULL;
  return 0;
}

/*
** Run the done callbacks of every done future of this state.  The
** pending ones live in the module record's uservalue: a table
** future -> {fn, ...}.  Errors go to warn.
*/
static int call_callbacks_k(lua_State *L);
static void run_callbacks(lua_State *L) {
  mstate *ms = getmstate(L);
  int top, pending, list, n = 0, i;
  if (ms->ncallbacks <= 0) return;
  top = lua_gettop(L);
  luaL_checkstack(L, 8, NULL);
  lua_getiuservalue(L, lua_upvalueindex(1), UV_CALLBACKS);
  pending = lua_gettop(L);
  lua_newtable(L);              /* future, callbacks, future, callbacks... */
  list = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, pending)) {
    fhandle *h = (fhandle *)lua_touserdata(L, -2);
    if (h && h->f && loom_future_isdone(h->f)) {
      lua_pushvalue(L, -2);
      lua_rawseti(L, list, ++n);
      lua_rawseti(L, list, ++n);  /* pops the callbacks */
    }
    else lua_pop(L, 1);
  }
  /* Detach them all before running any: a callback may itself call a
  ** waiting function, which runs this again; each runs exactly once. */
  for (i = 1; i <= n; i += 2) {
    lua_rawgeti(L, list, i);
    lua_pushnil(L);
    lua_rawset(L, pending);
    ms->ncallbacks--;
  }
  for (i = 1; i <= n; i += 2) {
    lua_pushcfunction(L, call_callbacks_k);
    lua_rawgeti(L, list, i);
    lua_rawgeti(L, list, i + 1);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
      warn_error(L, "loom: done callback failed: ");
      lua_pop(L, 1);
    }
  }
  lua_settop(L, top);
}

/* [1] future, [2] callbacks: run each, in order, warning on errors. */
static int call_callbacks_k(lua_State *L) {
  lua_Integer i, n = luaL_len(L, 2);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, 2, i);
    lua_pushvalue(L, 1);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
      warn_error(L, "loom: done callback failed: ");
      lua_pop(L, 1);
    }
  }
  return 0;
}

static int future_add_done_callback(lua_State *L) {
  mstate *ms = getmstate(L);
  loom_future *f = checkfuture(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (loom_future_isdone(f)) {
    run_callbacks(L);   /* earlier ones first */
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 1);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
      warn_error(L, "loom: done callback failed: ");
      lua_pop(L, 1);
    }
    return 0;
  }
  lua_getiuservalue(L, lua_upvalueindex(1), UV_CALLBACKS);
  lua_pushvalue(L, 1);
  if (lua_rawget(L, -2) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, -2);
    lua_rawset(L, -4);
    ms->ncallbacks++;
  }
  lua_pushvalue(L, 2);
  lua_rawseti(L, -2, (lua_Integer)luaL_len(L, -2) + 1);
  return 0;
}

/* Wait until f is done or the timeout passes; 1 if done. */
static int wait_one(loom_future *f, double timeout) {
  loom_waiter w;
  loom_wlink l;
  struct timespec dl;
  int done, spin;
  if (loom_future_isdone(f)) return 1;
  if (timeout == 0) return 0;
  for (spin = 0; spin < 2000; spin++) {   /* short tasks: skip sleeping */
    if (loom_future_isdone(f)) return 1;
    if ((spin & 127) == 127) sched_yield();   /* a busy machine: give way */
    else loom_cpu_relax();
  }
  if (timeout > 0) loom_deadline(&dl, timeout);
  loom_waiter_init(&w);
  l.idx = 0;
  if (loom_future_watch(f, &l, &w)) done = 1;
  else {
    loom_waiter_wait(&w, timeout > 0 ? &dl : NULL);
    loom_future_unwatch(f, &l);
    done = loom_future_isdone(f);
  }
  loom_waiter_destroy(&w);
  return done;
}

static void raise_state(lua_State *L, loom_future *f) {
  if (atomic_load(&f->state) == LOOM_CANCELLED)
    loom_raise(L, "cancelled", "the future was cancelled");
}

/* Push the future's outcome: n results, or (error value, traceback). */
static int push_outcome(lua_State *L, loom_future *f) {
  if (f->errkind) {
    loom_pusherror(L, f->errkind, "%s",
                   f->errmsg ? f->errmsg : "not enough memory");
    lua_pushliteral(L, "(no traceback)");
    return -1;
  }
  if (f->result == NULL) {
    /* the worker failed outside the task (out of memory, most likely):
    ** a plain string error, as if the task had raised it */
    lua_pushstring(L, f->errmsg ? f->errmsg : "not enough memory");
    lua_pushliteral(L, "(no traceback)");
    return -1;
  }
  {
    int n = loom_decode(L, f->result->data, f->result->len, 1, f->result);
    return f->failed ? -1 : n;
  }
}

static void await(lua_State *L, loom_future *f, int tidx) {
  double t = opttimeout(L, tidx);
  int done = wait_one(f, t);
  run_callbacks(L);
  if (!done) loom_raise(L, "timeout", "the future did not finish in time");
  raise_state(L, f);
}

/* Wait (timeout at stack slot 2) and push the results, or raise. */
static int results(lua_State *L, loom_future *f) {
  int n;
  await(L, f, 2);
  lua_settop(L, 1);
  n = push_outcome(L, f);
  if (n < 0) {
    lua_pop(L, 1);   /* the traceback */
    return lua_error(L);
  }
  return n;
}

static int future_result(lua_State *L) {
  return results(L, checkfuture(L, 1));
}

/*
** The iterator of ex:map, in C: a generic for calls it once per result,
** so its cost is the caller's cost per call.  Upvalues: 1 the module
** record, 2 the futures (one per call for chunksize 1, else one per
** chunk; each is dropped once its results are taken), 3 a mapiter, 4 the current chunk's result list
** {extras, r1, ...} (see run_chunk in pool.c), 5 its extras (nil when
** every call gave one result).
*/
typedef struct mapiter {
  lua_Integer i, n, chunksize;   /* calls yielded, calls in all, per task */
  lua_Integer chunk;             /* the chunk in upvalue 4 */
  double deadline;               /* monotonic seconds; < 0: none */
} mapiter;

static double now_monotonic(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Wait for future k and push its results after slot 1, which it takes
** (results expects [future, timeout]); returns their number. */
static int map_results(lua_State *L, mapiter *it, lua_Integer k) {
  lua_settop(L, 0);
  lua_rawgeti(L, lua_upvalueindex(2), k);
  if (it->deadline < 0) lua_pushnil(L);
  else {
    double left = it->deadline - now_monotonic();
    lua_pushnumber(L, left < 0 ? 0 : left);
  }
  return results(L, checkfuture(L, 1));
}

/* The results of future k are in hand: drop it, so that a long map does
** not keep every future (and its results) until the loop ends. */
static void forget(lua_State *L, lua_Integer k) {
  lua_pushnil(L);
  lua_rawseti(L, lua_upvalueindex(2), k);
}

static int map_step(lua_State *L) {
  mapiter *it = (mapiter *)lua_touserdata(L, lua_upvalueindex(3));
  lua_Integer k, j;
  if (it->i >= it->n) return 0;
  it->i++;
  if (it->chunksize == 1) {   /* plain tasks: their results as they are */
    int n = map_results(L, it, it->i);
    lua_pushinteger(L, it->i);
    lua_replace(L, 1);
    forget(L, it->i);
    return n + 1;
  }
  k = (it->i - 1) / it->chunksize + 1;
  j = it->i - (k - 1) * it->chunksize;   /* the call's place in chunk k */
  if (k != it->chunk) {
    map_results(L, it, k);   /* [future, list] */
    lua_rawgeti(L, 2, 1);
    lua_replace(L, lua_upvalueindex(5));
    lua_replace(L, lua_upvalueindex(4));
    it->chunk = k;
    forget(L, k);
  }
  lua_pushinteger(L, it->i);
  if (lua_type(L, lua_upvalueindex(5)) == LUA_TNIL) {   /* the fast way */
    lua_rawgeti(L, lua_upvalueindex(4), j + 1);
    return 2;
  }
  if (lua_rawgeti(L, lua_upvalueindex(5), j) == LUA_TTABLE) {
    int n, a, t = lua_gettop(L);
    lua_getfield(L, t, "n");
    n = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    luaL_checkstack(L, n, "too many results");
    for (a = 1; a <= n; a++) lua_rawgeti(L, t, a);
    lua_remove(L, t);
    return n + 1;
  }
  lua_pop(L, 1);
  lua_getfield(L, lua_upvalueindex(5), "fail");
  if (lua_tointeger(L, -1) == j) {
    lua_getfield(L, lua_upvalueindex(5), "err");
    return lua_error(L);
  }
  lua_pop(L, 1);
  lua_rawgeti(L, lua_upvalueindex(4), j + 1);
  return 2;
}

/* core._map_iter(futures, n, chunksize, deadline-or-nil): ex:map's step
** function, over the futures made by _map_task. */
static int l_map_iter(lua_State *L) {
  mapiter *it;
  luaL_checktype(L, 1, LUA_TTABLE);
  it = (mapiter *)lua_newuserdatauv(L, sizeof *it, 0);
  it->i = 0;
  it->n = luaL_checkinteger(L, 2);
  it->chunksize = luaL_checkinteger(L, 3);
  luaL_argcheck(L, it->chunksize >= 1, 3, "chunksize must be >= 1");
  it->deadline = lua_isnoneornil(L, 4) ? -1 : luaL_checknumber(L, 4);
  it->chunk = 0;
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, 1);
  lua_pushvalue(L, -3);
  lua_pushnil(L);
  lua_pushnil(L);
  lua_pushcclosure(L, map_step, 5);
  return 1;
}

static int future_exception(lua_State *L) {
  loom_future *f = checkfuture(L, 1);
  int n;
  await(L, f, 2);
  lua_settop(L, 1);
  if (!f->failed && !f->errkind && f->result != NULL) {
    lua_pushnil(L);
    return 1;
  }
  n = push_outcome(L, f);
  (void)n;
  return 2;
}

static int future_cancel(lua_State *L) {
  loom_future *f = checkfuture(L, 1);
  lua_pushboolean(L, loom_pool_cancel(f));
  return 1;
}

static int future_cancelled(lua_State *L) {
  loom_future *f = checkfuture(L, 1);
  lua_pushboolean(L, atomic_load(&f->state) == LOOM_CANCELLED);
  return 1;
}

static int future_running(lua_State *L) {
  loom_future *f = checkfuture(L, 1);
  lua_pushboolean(L, atomic_load(&f->state) == LOOM_RUNNING);
  return 1;
}

static int future_done(lua_State *L) {
  loom_future *f = checkfuture(L, 1);
  lua_pushboolean(L, loom_future_isdone(f));
  return 1;
}

/* true when finished with an error (for wait's FIRST_EXCEPTION) */
static int future_failed(lua_State *L) {
  loom_future *f = checkfuture(L, 1);
  lua_pushboolean(L, atomic_load(&f->state) == LOOM_FINISHED
                     && (f->failed || f->errkind != NULL
                         || f->result == NULL));
  return 1;
}

static int future_tostring(lua_State *L) {
  static const char *const names[] = {
    "pending", "running", "finished", "cancelled"
  };
  fhandle *h = (fhandle *)luaL_checkudata(L, 1, LOOM_FUTURE);
  if (h->f == NULL) lua_pushliteral(L, "loom.Future (closed)");
  else lua_pushfstring(L, "loom.Future (%s): %p",
                       names[atomic_load(&h->f->state)], (void *)h->f);
  return 1;
}

/* ------------------------------------------------------------ executor */

/* pool is NULL before it is made and after the finalizer let it go; a
** finalized executor is shut down (shut), so that a finalizer running
** later (an object whose __gc shuts its executor down) finds it so. */
typedef struct xhandle {
  loom_pool *pool;
  int shut;
  int nworkers;
} xhandle;

static xhandle *checkexecutor(lua_State *L, int idx) {
  xhandle *x = (xhandle *)checkud(L, idx, UV_EXECUTOR, LOOM_EXECUTOR);
  if (x->pool == NULL && !x->shut)
    luaL_argerror(L, idx, "executor is not initialised");
  return x;
}

static void renew_sentinel(lua_State *L);

/* core.executor(workers, name, init, init_args) */
static int executor_new(lua_State *L) {
  mstate *ms = getmstate(L);
  loom_pool_config cfg;
  xhandle *x;
  const char *err;
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 1 && n <= 4096, 1, "workers must be in 1..4096");
  cfg.workers = (int)n;
  cfg.name = luaL_optstring(L, 2, NULL);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TFUNCTION);
  if (!lua_isnoneornil(L, 4)) luaL_checktype(L, 4, LUA_TTABLE);
  lua_settop(L, 4);
  x = (xhandle *)lua_newuserdatauv(L, sizeof *x, 0);   /* 5 */
  x->pool = NULL;
  x->shut = 0;
  x->nworkers = cfg.workers;
  luaL_setmetatable(L, LOOM_EXECUTOR);
  lua_getglobal(L, "package");
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "path");
    lua_getfield(L, -2, "cpath");
  }
  else {
    lua_pushnil(L);
    lua_pushnil(L);
  }
  cfg.path = lua_tostring(L, -2);
  cfg.cpath = lua_tostring(L, -1);
  if (ms->npools == ms->cappools)
    if (!grow((void **)&ms->pools, &ms->cappools, sizeof(loom_pool *)))
      return luaL_error(L, "not enough memory");
  cfg.init = NULL;
  if (!lua_isnil(L, 3)) {
    int k, na = 0, base = lua_gettop(L);
    lua_pushvalue(L, 3);
    if (!lua_isnil(L, 4)) {
      lua_Integer len = luaL_len(L, 4);
      luaL_argcheck(L, len >= 0 && len <= 100000, 4,
                    "init_args has an unreasonable length");
      na = (int)len;
      luaL_checkstack(L, na, "too many init_args");
      for (k = 1; k <= na; k++) lua_geti(L, 4, k);
    }
    cfg.init = loom_encode(L, base + 1, na + 1, LOOM_AT_ARGUMENT, 0, 1);
    lua_settop(L, base);
  }
  prune_pools(ms);
  x->pool = loom_pool_new(&cfg, &err);   /* takes cfg.init */
  if (x->pool == NULL) {
    loom_msg_free(cfg.init);
    return luaL_error(L, "cannot create the executor: %s", err);
  }
  loom_pool_incref(x->pool);
  ms->pools[ms->npools++] = x->pool;
  lua_settop(L, 5);
  renew_sentinel(L);
  return 1;
}

/* Push a new, empty future handle of executor x (at stack slot 1), or
** raise 'shutdown'.  The handle exists before anything is allocated for
** it, so a Lua error from here on leaks nothing. */
static fhandle *newfuture(lua_State *L, xhandle *x) {
  fhandle *h;
  if (x->shut)
    loom_raise(L, "shutdown", "cannot schedule new futures after shutdown");
  h = (fhandle *)lua_newuserdatauv(L, sizeof *h, 1);
  h->f = NULL;
  setmeta(L, UV_FUTURE);
  lua_pushvalue(L, 1);                 /* a future keeps its executor */
  lua_setiuservalue(L, -2, 1);
  return h;
}

/* Give the task message m to handle h and queue it (a map chunk when
** nchunk > 0).  Returns 1: the handle, at the top. */
static int enqueue(lua_State *L, xhandle *x, fhandle *h, loom_msg *m,
                   int nchunk, int nseq) {
  h->f = loom_future_new(m);
  if (h->f == NULL) {
    loom_msg_free(m);
    return luaL_error(L, "not enough memory");
  }
  h->f->nchunk = nchunk;
  h->f->nseq = nseq;
  if (loom_pool_submit(x->pool, h->f) != 0)
    return loom_raise(L, "shutdown",
                      "cannot schedule new futures after shutdown");
  return 1;
}

static int executor_submit(lua_State *L) {
  xhandle *x = checkexecutor(L, 1);
  int n = lua_gettop(L);
  fhandle *h;
  if (lua_type(L, 2) != LUA_TFUNCTION)
    return luaL_error(L, "bad argument #1 to 'submit' (function expected, "
                      "got %s)", lua_isnone(L, 2) ? "nil" : luaL_typename(L, 2));
  h = newfuture(L, x);
  return enqueue(L, x, h, loom_encode(L, 2, n - 1, LOOM_AT_ARGUMENT, 1, 1),
                 0, 0);
}

/* A misuse of map found here: named as map's, the caller's function. */
static int map_error(lua_State *L, const char *msg) {
  return luaL_error(L, "bad argument to 'map' (%s)", msg);
}

/*
** ex:_map_task(fn, i0, i1, seqs, nseq, chunk): queue the calls
** fn(seqs[1][i], ..., seqs[nseq][i]), i = i0..i1, as one task.  As a
** chunk its results come back as one list (run_chunk in pool.c); as a
** plain task (one call: map with chunksize 1), as a submit's do.  map
** (init.lua) keeps (i1 - i0 + 1) * nseq within what a Lua stack holds.
*/
static int executor_map_task(lua_State *L) {
  xhandle *x = checkexecutor(L, 1);
  lua_Integer i0 = luaL_checkinteger(L, 3), i1 = luaL_checkinteger(L, 4), i;
  lua_Integer nseq = luaL_checkinteger(L, 6);
  int chunk = lua_toboolean(L, 7), onstack, a, base;
  fhandle *h;
  loom_msg *m;
  luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_checktype(L, 5, LUA_TTABLE);
  if (i0 < 1 || i1 < i0 || nseq < 1 || (i1 - i0 + 1) > INT_MAX / nseq
      || (!chunk && i1 != i0))
    return map_error(L, "bad chunk");
  lua_settop(L, 5);
  h = newfuture(L, x);                 /* 6 */
  /* few sequences sit on the stack; many are fetched for each value */
  onstack = nseq <= 64;
  if (!lua_checkstack(L, (int)((i1 - i0 + 1) * nseq) + (int)nseq + 8))
    return map_error(L, "too many values for one call");
  if (onstack)
    for (a = 1; a <= nseq; a++) lua_rawgeti(L, 5, a);
  base = lua_gettop(L);
  lua_pushvalue(L, 2);
  for (i = i0; i <= i1; i++)
    for (a = 0; a < nseq; a++) {
      if (onstack) lua_geti(L, 7 + a, i);
      else {
        lua_rawgeti(L, 5, a + 1);
        lua_geti(L, -1, i);
        lua_remove(L, -2);
      }
    }
  m = loom_encode_map(L, base + 1, lua_gettop(L) - base, i0, (int)nseq);
  lua_settop(L, 6);
  return enqueue(L, x, h, m, chunk ? (int)(i1 - i0 + 1) : 0, (int)nseq);
}

static int optfield(lua_State *L, int idx, const char *k, int def) {
  int r = def;
  if (lua_getfield(L, idx, k) != LUA_TNIL) {
    if (!lua_isboolean(L, -1))
      return luaL_error(L, "bad option '%s' to 'shutdown' (boolean "
                        "expected, got %s)", k, luaL_typename(L, -1));
    r = lua_toboolean(L, -1);
  }
  lua_pop(L, 1);
  return r;
}

static void do_shutdown(lua_State *L, xhandle *x, int wait, int cancel) {
  x->shut = 1;
  if (x->pool != NULL) {   /* else finalized: shut down and joined */
    loom_pool_shutdown(x->pool, cancel);
    if (wait) loom_pool_join(x->pool);
  }
  run_callbacks(L);
}

static int executor_shutdown(lua_State *L) {
  xhandle *x = checkexecutor(L, 1);
  int wait = 1, cancel = 0;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    wait = optfield(L, 2, "wait", 1);
    cancel = optfield(L, 2, "cancel_futures", 0);
  }
  do_shutdown(L, x, wait, cancel);
  return 0;
}

static int executor_close(lua_State *L) {
  xhandle *x = checkexecutor(L, 1);
  do_shutdown(L, x, 1, 0);
  return 0;
}

/* Collected (or the state closes): shutdown{wait = true}.  No Lua is
** run here: the callbacks of its futures run at the next waiting call. */
static int executor_gc(lua_State *L) {
  xhandle *x = (xhandle *)luaL_checkudata(L, 1, LOOM_EXECUTOR);
  if (x->pool) {
    loom_pool_shutdown(x->pool, 0);
    loom_pool_join(x->pool);
    loom_pool_decref(x->pool);
    x->pool = NULL;
    x->shut = 1;
  }
  return 0;
}

/*
** The closing sentinel.  lua_close runs finalizers newest first, and
** executor_gc waits for the executor's tasks; a task blocked on a
** channel of this state would then hang the program's end.  So every
** new executor also makes a new sentinel (retiring the previous one):
** being newer than every executor, it is finalized first at lua_close,
** and closes this state's channels, waking such tasks with "closed".
** A retired sentinel, collected normally, does nothing.
*/
static int sentinel_gc(lua_State *L) {
  int *retired = (int *)lua_touserdata(L, 1);
  mstate *ms = getmstate(L);
  int i;
  if (*retired) return 0;
  for (i = 0; i < ms->nchans; i++) loom_chan_close(ms->chans[i]);
  return 0;
}

static void renew_sentinel(lua_State *L) {
  int *s;
  if (lua_getfield(L, LUA_REGISTRYINDEX, "loom.sentinel") == LUA_TUSERDATA)
    *(int *)lua_touserdata(L, -1) = 1;
  lua_pop(L, 1);
  s = (int *)lua_newuserdatauv(L, sizeof *s, 0);
  *s = 0;
  luaL_setmetatable(L, "loom.Sentinel");
  lua_setfield(L, LUA_REGISTRYINDEX, "loom.sentinel");
}

static int executor_workers(lua_State *L) {
  xhandle *x = checkexecutor(L, 1);
  lua_pushinteger(L, x->nworkers);
  return 1;
}

static int executor_tostring(lua_State *L) {
  xhandle *x = (xhandle *)luaL_checkudata(L, 1, LOOM_EXECUTOR);
  if (x->pool == NULL) {
    lua_pushliteral(L, "loom.Executor (closed)");
    return 1;
  }
  lua_pushfstring(L, "loom.Executor (%d workers%s): %p",
                  loom_pool_nworkers(x->pool), x->shut ? ", shut down" : "",
                  (void *)x->pool);
  return 1;
}

/* ------------------------------------------------------------- watcher */

/*
** A watcher waits on many futures at once: it registers one link per
** future, and each completion appends its index to w.q, in order.
*/
typedef struct watcher {
  loom_waiter w;
  int n, qhead, live;
  loom_future **fs;
  loom_wlink *links;
} watcher;

static void watcher_release(watcher *wt) {
  int i;
  if (!wt->live) return;
  for (i = 0; i < wt->n; i++) {
    if (wt->fs[i] == NULL) continue;
    loom_future_unwatch(wt->fs[i], &wt->links[i]);
    loom_future_decref(wt->fs[i]);
    wt->fs[i] = NULL;
  }
  loom_waiter_destroy(&wt->w);
  wt->live = 0;
}

static int watcher_gc(lua_State *L) {
  watcher_release((watcher *)luaL_checkudata(L, 1, LOOM_WATCHER));
  return 0;
}

/* core.watch({future, ...}) */
static int watch_new(lua_State *L) {
  lua_Integer n, i;
  watcher *wt;
  size_t sz;
  char *mem;
  luaL_checktype(L, 1, LUA_TTABLE);
  n = luaL_len(L, 1);
  luaL_argcheck(L, n >= 0 && n <= 10000000, 1, "too many futures");
  for (i = 1; i <= n; i++) {
    lua_geti(L, 1, i);
    checkfuture(L, -1);
    lua_pop(L, 1);
  }
  sz = sizeof(watcher) + (size_t)n * (sizeof(loom_future *)
       + sizeof(loom_wlink) + sizeof(int));
  mem = (char *)lua_newuserdatauv(L, sz, 0);
  wt = (watcher *)mem;
  wt->live = 0;
  luaL_setmetatable(L, LOOM_WATCHER);
  wt->n = (int)n;
  wt->qhead = 0;
  wt->links = (loom_wlink *)(mem + sizeof(watcher));
  wt->fs = (loom_future **)(wt->links + n);
  loom_waiter_init(&wt->w);
  wt->w.q = (int *)(wt->fs + n);
  wt->w.qcap = (int)n;
  for (i = 0; i < n; i++) wt->fs[i] = NULL;
  wt->live = 1;
  /* no Lua call may raise from here until every link is made */
  for (i = 0; i < n; i++) {
    loom_future *f;
    lua_geti(L, 1, i + 1);
    f = ((fhandle *)lua_touserdata(L, -1))->f;
    lua_pop(L, 1);
    loom_future_incref(f);
    wt->fs[i] = f;
    wt->links[i].idx = (int)i;
    if (f->pool == NULL || loom_future_watch(f, &wt->links[i], &wt->w)) {
      pthread_mutex_lock(&wt->w.mu);   /* done already: queue it now */
      wt->w.q[wt->w.qn++] = (int)i;
      pthread_mutex_unlock(&wt->w.mu);
    }
  }
  return 1;
}

/* w:next([timeout]) -> index of the next completed future, or nil */
static int watch_next(lua_State *L) {
  watcher *wt = (watcher *)luaL_checkudata(L, 1, LOOM_WATCHER);
  double t = opttimeout(L, 2);
  struct timespec dl;
  int idx = -1;
  if (!wt->live) return 0;
  if (t > 0) loom_deadline(&dl, t);
  pthread_mutex_lock(&wt->w.mu);
  for (;;) {
    if (wt->qhead < wt->w.qn) {
      idx = wt->w.q[wt->qhead++];
      break;
    }
    if (wt->qhead >= wt->n || t == 0) break;
    if (t < 0) pthread_cond_wait(&wt->w.cv, &wt->w.mu);
    else if (pthread_cond_timedwait(&wt->w.cv, &wt->w.mu, &dl) == ETIMEDOUT
             && wt->qhead >= wt->w.qn)
      break;
  }
  pthread_mutex_unlock(&wt->w.mu);
  if (idx >= 0 && wt->fs[idx] != NULL) {
    /* handed out: the watcher no longer keeps it (nor its results) */
    loom_future_unwatch(wt->fs[idx], &wt->links[idx]);
    loom_future_decref(wt->fs[idx]);
    wt->fs[idx] = NULL;
  }
  run_callbacks(L);
  if (idx < 0) return 0;
  lua_pushinteger(L, idx + 1);
  return 1;
}

/* ------------------------------------------------------------- channels */

typedef struct chandle {
  loom_chan *c;
} chandle;

loom_chan *loom_tochannel(lua_State *L, int idx) {
  chandle *h = (chandle *)luaL_testudata(L, idx, LOOM_CHANNEL);
  return h ? h->c : NULL;
}

void loom_pushchannel(lua_State *L, loom_chan *c) {
  chandle *h = (chandle *)lua_newuserdatauv(L, sizeof *h, 0);
  h->c = NULL;
  luaL_setmetatable(L, LOOM_CHANNEL);
  loom_chan_incref(c);
  h->c = c;
}

static loom_chan *checkchannel(lua_State *L, int idx) {
  chandle *h = (chandle *)checkud(L, idx, UV_CHANNEL, LOOM_CHANNEL);
  if (h->c == NULL) luaL_argerror(L, idx, "channel is not initialised");
  return h->c;
}

static int channel_new(lua_State *L) {
  mstate *ms = getmstate(L);
  lua_Integer cap = luaL_optinteger(L, 1, 0);
  chandle *h;
  luaL_argcheck(L, cap >= 0, 1, "capacity must be >= 0");
  h = (chandle *)lua_newuserdatauv(L, sizeof *h, 0);
  h->c = NULL;
  luaL_setmetatable(L, LOOM_CHANNEL);
  if (ms->nchans >= ms->prunechans) prune_chans(ms);
  if (ms->nchans == ms->capchans)
    if (!grow((void **)&ms->chans, &ms->capchans, sizeof(loom_chan *)))
      return luaL_error(L, "not enough memory");
  h->c = loom_chan_new((size_t)cap);
  if (h->c == NULL) return luaL_error(L, "not enough memory");
  loom_chan_incref(h->c);          /* the module record's reference */
  ms->chans[ms->nchans++] = h->c;
  if (ms->closed) loom_chan_close(h->c);
  return 1;
}

static int channel_gc(lua_State *L) {
  chandle *h = (chandle *)luaL_checkudata(L, 1, LOOM_CHANNEL);
  if (h->c) loom_chan_decref(h->c);
  h->c = NULL;
  return 0;
}

static int channel_push(lua_State *L) {
  loom_chan *c = checkchannel(L, 1);
  loom_msg *m;
  int r;
  luaL_argcheck(L, !lua_isnoneornil(L, 2), 2, "cannot push nil");
  lua_settop(L, 2);
  m = loom_encode(L, 2, 1, LOOM_AT_VALUE, 0, 1);
  r = loom_chan_push(c, m);
  if (r != 0) {
    loom_msg_free(m);
    if (r < 0) return luaL_error(L, "not enough memory");
    return loom_raise(L, "closed", "the channel is closed");
  }
  return 0;
}

static int channel_pop(lua_State *L) {
  loom_chan *c = checkchannel(L, 1);
  double t = opttimeout(L, 2);
  loom_msg *m = NULL, **box;
  int r;
  /* decode can raise: the message is owned by a userdata meanwhile,
  ** made before the message leaves the channel */
  box = (loom_msg **)lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  luaL_setmetatable(L, "loom.MsgBox");
  r = loom_chan_pop(c, t, &m);
  if (r != 0) {
    lua_pushnil(L);
    lua_pushstring(L, r == 1 ? "closed" : "timeout");
    return 2;
  }
  *box = m;
  loom_decode(L, m->data, m->len, 1, m);
  loom_msg_free(m);
  *box = NULL;
  return 1;
}

static int msgbox_gc(lua_State *L) {
  loom_msg **box = (loom_msg **)lua_touserdata(L, 1);
  loom_msg_free(*box);
  *box = NULL;
  return 0;
}

static int channel_close(lua_State *L) {
  loom_chan_close(checkchannel(L, 1));
  return 0;
}

static int channel_len(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)loom_chan_count(checkchannel(L, 1)));
  return 1;
}

static int channel_tostring(lua_State *L) {
  chandle *h = (chandle *)luaL_checkudata(L, 1, LOOM_CHANNEL);
  loom_chan *c = h->c;
  if (c == NULL) {
    lua_pushliteral(L, "loom.Channel (closed)");
    return 1;
  }
  lua_pushfstring(L, "loom.Channel (%d waiting): %p",
                  (int)loom_chan_count(c), (void *)c);
  return 1;
}

/* ----------------------------------------------------- encode / decode */

static int l_encode(lua_State *L) {
  loom_msg *m;
  loom_msg **box;
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  /* pushing the string may fail: a userdata owns the message meanwhile */
  box = (loom_msg **)lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  luaL_setmetatable(L, "loom.MsgBox");
  m = loom_encode(L, 1, 1, LOOM_AT_VALUE, 0, 0);
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

/* ------------------------------------------------ test-only: new state */

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
  *out = loom_encode(L, 4, n, LOOM_AT_RESULT, 0, 1);
  return 0;
}

static int in_new_state(lua_State *L, int call) {
  int n = lua_gettop(L), r;
  loom_msg *m, *out = NULL;
  lua_State *L2;
  loom_msg **box;
  box = (loom_msg **)lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  luaL_setmetatable(L, "loom.MsgBox");
  m = loom_encode(L, 1, n, LOOM_AT_ARGUMENT, 1, 1);
  *box = m;
  L2 = lua_newstate(loom_lua_alloc, NULL);
  if (L2 == NULL) return luaL_error(L, "cannot create a state");
  lua_pushcfunction(L2, loom_open_worker_state);
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
    out = loom_encode(L2, -1, 1, LOOM_AT_RESULT, 0, 1);
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

/* ---------------------------------------------------------------- misc */

/* core._inplace_arrays([on]): whether arrays of numbers are copied in
** place (see transfer.c), after turning that on or off if asked; for the
** specs, which compare both ways of copying. */
static int l_inplace_arrays(lua_State *L) {
  int on = lua_isnoneornil(L, 1) ? -1 : lua_toboolean(L, 1);
  lua_pushboolean(L, loom_arrays_inplace(on));
  return 1;
}

static int l_cpu_count(lua_State *L) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  lua_pushinteger(L, n > 0 ? n : 1);
  return 1;
}

static int l_clock(lua_State *L) {
  lua_pushnumber(L, (lua_Number)now_monotonic());
  return 1;
}

static int l_error(lua_State *L) {
  const char *kind = luaL_checkstring(L, 1);
  const char *msg = luaL_checkstring(L, 2);
  loom_pusherror(L, kind, "%s", msg);
  return 1;
}

static int l_is_future(lua_State *L) {
  fhandle *h = (fhandle *)fastudata(L, 1, UV_FUTURE);
  lua_pushboolean(L, h != NULL && h->f != NULL);
  return 1;
}

static int l_is_executor(lua_State *L) {
  xhandle *x = (xhandle *)fastudata(L, 1, UV_EXECUTOR);
  lua_pushboolean(L, x != NULL);
  lua_pushboolean(L, x != NULL && (x->pool != NULL || x->shut));
  lua_pushboolean(L, x != NULL && x->shut);
  return 3;
}

static int l_run_callbacks(lua_State *L) {
  run_callbacks(L);
  return 0;
}

static int l_failpoint(lua_State *L) {
  lua_Integer k = luaL_checkinteger(L, 1);
  static const char *const opts[] = { "lua", "core", "both", NULL };
  int which = luaL_checkoption(L, 2, "both", opts) + 1;
  lua_pushinteger(L, loom_failpoint_count());
  lua_pushboolean(L, loom_failpoint_fired());
  loom_failpoint_arm((long)k, which);
  return 2;
}

static int error_tostring(lua_State *L) {
  lua_getfield(L, 1, "kind");
  lua_getfield(L, 1, "message");
  lua_pushfstring(L, "loom.%s: %s", luaL_optstring(L, -2, "error"),
                  luaL_optstring(L, -1, "?"));
  return 1;
}

/* Worker states: os.exit must not end the host; print writes lines. */
static int worker_exit(lua_State *L) {
  return luaL_error(L, "os.exit is not allowed in a loom worker");
}

static int worker_print(lua_State *L) {
  int n = lua_gettop(L), i;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (i = 1; i <= n; i++) {
    if (i > 1) luaL_addchar(&b, '\t');
    luaL_tolstring(L, i, NULL);
    luaL_addvalue(&b);
  }
  luaL_addchar(&b, '\n');
  luaL_pushresult(&b);
  {
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    fwrite(s, 1, len, stdout);   /* one call: one whole line */
    fflush(stdout);
  }
  return 0;
}

/* The one exported symbol. */
#if defined(__GNUC__)
#define LOOM_EXPORT __attribute__((visibility("default")))
#else
#define LOOM_EXPORT
#endif
LOOM_EXPORT int luaopen_loom_core(lua_State *L);

int loom_open_worker_state(lua_State *L) {
  luaL_openlibs(L);
  lua_getglobal(L, "os");
  lua_pushcfunction(L, worker_exit);
  lua_setfield(L, -2, "exit");
  lua_pop(L, 1);
  lua_pushcfunction(L, worker_print);
  lua_setglobal(L, "print");
  luaL_requiref(L, "loom.core", luaopen_loom_core, 0);
  lua_pop(L, 1);
  /* before any user code can change the libraries; print and os.exit
  ** are named as usual, so they cross as the receiver's own */
  loom_cfuncs_init(L);
  return 0;
}

/* ------------------------------------------------------------- opening */

static const luaL_Reg future_methods[] = {
  {"result", future_result},
  {"exception", future_exception},
  {"cancel", future_cancel},
  {"cancelled", future_cancelled},
  {"running", future_running},
  {"done", future_done},
  {"add_done_callback", future_add_done_callback},
  {"_failed", future_failed},
  {NULL, NULL}
};

static const luaL_Reg executor_methods[] = {
  {"submit", executor_submit},
  {"shutdown", executor_shutdown},
  {"close", executor_close},
  {"workers", executor_workers},
  {"_map_task", executor_map_task},
  {NULL, NULL}
};

static const luaL_Reg channel_methods[] = {
  {"push", channel_push},
  {"pop", channel_pop},
  {"close", channel_close},
  {NULL, NULL}
};

static const luaL_Reg watcher_methods[] = {
  {"next", watch_next},
  {"close", watcher_gc},
  {NULL, NULL}
};

static const luaL_Reg funcs[] = {
  {"executor", executor_new},
  {"channel", channel_new},
  {"watch", watch_new},
  {"encode", l_encode},
  {"decode", l_decode},
  {"cpu_count", l_cpu_count},
  {"clock", l_clock},
  {"error", l_error},
  {"run_callbacks", l_run_callbacks},
  {"is_future", l_is_future},
  {"is_executor", l_is_executor},
  {"_roundtrip", l_roundtrip},
  {"_call_in_new_state", l_call_in_new_state},
  {"_failpoint", l_failpoint},
  {"_map_iter", l_map_iter},
  {"_inplace_arrays", l_inplace_arrays},
  {NULL, NULL}
};

/* Make metatable 'name' with methods (upvalue: module record at -2...). */
static void newclass(lua_State *L, const char *name, const luaL_Reg *m,
                     lua_CFunction gc, lua_CFunction tostr, int ms) {
  luaL_newmetatable(L, name);
  lua_newtable(L);
  lua_pushvalue(L, ms);
  luaL_setfuncs(L, m, 1);
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

LOOM_EXPORT int luaopen_loom_core(lua_State *L) {
  mstate *ms;
  int msi;
  loom_arrays_check(L);
  /* one module record per state, however often the module is opened */
  if (lua_getfield(L, LUA_REGISTRYINDEX, LOOM_MODULE) == LUA_TNIL) {
    lua_pop(L, 1);
    ms = (mstate *)lua_newuserdatauv(L, sizeof *ms, UV_N);
    memset(ms, 0, sizeof *ms);
    ms->prunechans = 16;
    lua_newtable(L);
    lua_setiuservalue(L, -2, 1);
    lua_newtable(L);
    lua_pushcfunction(L, module_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, LOOM_MODULE);
  }
  msi = lua_gettop(L);
  newclass(L, LOOM_FUTURE, future_methods, future_gc, future_tostring, msi);
  newclass(L, LOOM_EXECUTOR, executor_methods, executor_gc,
           executor_tostring, msi);
  luaL_getmetatable(L, LOOM_EXECUTOR);
  lua_pushvalue(L, msi);
  lua_pushcclosure(L, executor_close, 1);
  lua_setfield(L, -2, "__close");
  lua_pop(L, 1);
  newclass(L, LOOM_CHANNEL, channel_methods, channel_gc, channel_tostring,
           msi);
  luaL_getmetatable(L, LOOM_CHANNEL);
  lua_pushvalue(L, msi);
  lua_pushcclosure(L, channel_len, 1);
  lua_setfield(L, -2, "__len");
  lua_pop(L, 1);
  newclass(L, LOOM_WATCHER, watcher_methods, watcher_gc, NULL, msi);
  luaL_getmetatable(L, LOOM_FUTURE);
  lua_setiuservalue(L, msi, UV_FUTURE);
  luaL_getmetatable(L, LOOM_EXECUTOR);
  lua_setiuservalue(L, msi, UV_EXECUTOR);
  luaL_getmetatable(L, LOOM_CHANNEL);
  lua_setiuservalue(L, msi, UV_CHANNEL);
  luaL_newmetatable(L, "loom.Sentinel");
  lua_pushvalue(L, msi);
  lua_pushcclosure(L, sentinel_gc, 1);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  luaL_newmetatable(L, "loom.MsgBox");
  lua_pushcfunction(L, msgbox_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  luaL_newmetatable(L, LOOM_ERROR);
  lua_pushcfunction(L, error_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  luaL_newlibtable(L, funcs);
  lua_pushvalue(L, msi);
  luaL_setfuncs(L, funcs, 1);
  luaL_getmetatable(L, LOOM_EXECUTOR);
  lua_getfield(L, -1, "__index");
  lua_setfield(L, -3, "Executor");      /* so loom/init.lua can add map */
  lua_pop(L, 1);
  luaL_getmetatable(L, LOOM_FUTURE);
  lua_getfield(L, -1, "__index");
  lua_setfield(L, -3, "Future");
  lua_pop(L, 1);
  luaL_getmetatable(L, LOOM_ERROR);
  lua_setfield(L, -2, "Error");
  return 1;
}
