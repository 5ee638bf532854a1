/*
** lua_executor.c -- the binding of executors: submit, map (its tasks and
** its iterator), shutdown, close, collection.
**
** An executor handle holds one reference to a loom_sched, whatever kind
** of pool it is; everything here goes through the sched's ops.  The
** handle is made empty (NULL) and filled in after the last call that
** could raise, so a Lua error never leaks a pool.
**
** ex:map (above: Executor:map in lua/loom/init.lua; below: task.c).
*/
#include <limits.h>
#include <math.h>
#include <string.h>

#include "loom.h"

/* sched is NULL before it is made and after the finalizer let it go; a
** finalized executor is shut down (shut), so that a finalizer running
** later (an object whose __gc shuts its executor down) finds it so. */
typedef struct xhandle {
  loom_sched *sched;
  int shut;
  int nworkers;
  int refs;       /* how its tasks are encoded: LOOM_REFS_THREADS, or
                     LOOM_REFS_PROCESS for a pool of worker processes */
} xhandle;

static xhandle *checkexecutor(lua_State *L, int idx) {
  xhandle *x = (xhandle *)loom_checkud(L, idx, LOOM_UV_EXECUTOR,
                                       LOOM_EXECUTOR);
  if (x->sched == NULL && !x->shut)
    luaL_argerror(L, idx, "executor is not initialised");
  return x;
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
  if (!*retired) loom_close_channels(loom_getmstate(L));
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

/* Join and drop scheds whose workers have all ended. */
static void prune_scheds(loom_mstate *ms) {
  struct timespec now;
  int i, j = 0;
  loom_deadline(&now, 0);
  for (i = 0; i < ms->nscheds; i++) {
    loom_sched *s = ms->scheds[i];
    if (s->ops->join(s, &now)) loom_sched_decref(s);
    else ms->scheds[j++] = s;
  }
  ms->nscheds = j;
}

/* Make room to remember one more sched (raises when out of memory). */
static void sched_reserve(lua_State *L) {
  loom_mstate *ms = loom_getmstate(L);
  prune_scheds(ms);
  if (ms->nscheds == ms->capscheds
      && !loom_grow((void **)&ms->scheds, &ms->capscheds,
                    sizeof(loom_sched *)))
    luaL_error(L, "not enough memory");
}

/* Remember s (taking a reference; room was reserved), so that lua_close
** joins it. */
static void sched_keep(lua_State *L, loom_sched *s) {
  loom_mstate *ms = loom_getmstate(L);
  loom_sched_incref(s);
  ms->scheds[ms->nscheds++] = s;   /* room was reserved */
}

/*
** Options.  Every option of every kind of executor (and of shutdown) is
** checked once, by loom/init.lua: one rule and one message per mistake,
** in the same words for every kind.  The C side trusts what it checked
** and reads it as it is: a value of another type reads as absent.  The
** one thing checked again is what would be undefined behaviour here (a
** count of workers past LOOM_WORKERS_MAX), for a caller of loom.core
** that went around loom, which gets one plain error for it.
*/

/* Field k of the options table at 1: an integer, or def. */
static lua_Integer optint(lua_State *L, const char *k, lua_Integer def) {
  lua_Integer v;
  int ok;
  lua_getfield(L, 1, k);
  v = lua_tointegerx(L, -1, &ok);
  lua_pop(L, 1);
  return ok ? v : def;
}

/* Field k of the options table at 1: a number > 0 (math.huge and NaN
** read as 0: no limit). */
static double optlimit(lua_State *L, const char *k) {
  lua_Number v = 0;
  if (lua_getfield(L, 1, k) == LUA_TNUMBER) v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  return v > 0 && v < HUGE_VAL ? (double)v : 0;
}

/*
** The options every kind of executor takes (workers, name, init,
** init_args, task_timeout, memory_limit), as loom/init.lua checked them,
** into *cfg, and a new empty handle whose tasks are encoded in refs mode.
** Stack after: [1] opts, [2] name, [3] init, [4] init_args, [5] the
** handle, [6] path, [7] cpath (cfg's strings point there).  cfg->init is
** a new message or NULL; nothing can raise after it is made.
*/
static xhandle *new_executor(lua_State *L, loom_pool_config *cfg, int refs) {
  xhandle *x;
  lua_Integer n, mem;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  n = optint(L, "workers", 0);
  if (n < 1 || n > LOOM_WORKERS_MAX)
    luaL_error(L, "loom.core: options not checked by loom (workers)");
  cfg->workers = (int)n;
  cfg->task_timeout = optlimit(L, "task_timeout");
  mem = optint(L, "memory_limit", 0);
  cfg->memory_limit = mem > 0 ? (size_t)mem : 0;
  lua_getfield(L, 1, "name");        /* 2 */
  cfg->name = lua_tostring(L, 2);
  lua_getfield(L, 1, "init");        /* 3 */
  lua_getfield(L, 1, "init_args");   /* 4 */
  x = (xhandle *)lua_newuserdatauv(L, sizeof *x, 0);   /* 5 */
  x->sched = NULL;
  x->shut = 0;
  x->nworkers = cfg->workers;
  x->refs = refs;
  luaL_setmetatable(L, LOOM_EXECUTOR);
  lua_getglobal(L, "package");
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "path");
    lua_getfield(L, -2, "cpath");
    lua_remove(L, -3);
  }
  else {
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_pushnil(L);
  }
  cfg->path = lua_tostring(L, 6);
  cfg->cpath = lua_tostring(L, 7);
  sched_reserve(L);
  cfg->preload = NULL;
  cfg->init = NULL;
  cfg->open_core = luaopen_loom_core;
  if (lua_isfunction(L, 3)) {
    int k, na = 0, base = lua_gettop(L);
    lua_pushvalue(L, 3);
    if (lua_istable(L, 4)) {   /* its length is at most MAX_INIT_ARGS */
      lua_Integer len = luaL_len(L, 4);
      na = len > 0 && len < INT_MAX ? (int)len : 0;
      luaL_checkstack(L, na, "too many init_args");
      for (k = 1; k <= na; k++) lua_geti(L, 4, k);
    }
    cfg->init = loom_encode(L, base + 1, na + 1, LOOM_AT_ARGUMENT, 0, refs);
    lua_settop(L, base);
  }
  return x;
}

/* Put the new pool s (NULL: err says why) into handle x (at 5), or raise;
** init is the message the pool took, freed here when there is no pool. */
static int set_executor(lua_State *L, xhandle *x, loom_sched *s,
                        const char *err, loom_msg *init) {
  if (s == NULL) {
    loom_msg_free(init);
    return luaL_error(L, "cannot create the executor: %s", err);
  }
  x->sched = s;
  sched_keep(L, s);
  lua_settop(L, 5);
  renew_sentinel(L);
  return 1;
}

/* core.executor(opts): a thread pool.  Its workers also get the C
** functions of this state's package.preload (loom_preload_collect). */
static int executor_new(lua_State *L) {
  loom_pool_config cfg;
  const char *err;
  xhandle *x = new_executor(L, &cfg, LOOM_REFS_THREADS);
  loom_sched *s;
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);   /* 8 */
  cfg.preload = loom_preload_collect(L, 8);   /* never raises */
  s = loom_pool_new(&cfg, &err);   /* takes cfg.init and cfg.preload */
  if (s == NULL) loom_free(cfg.preload);
  return set_executor(L, x, s, err, cfg.init);
}

/* The lowest entry of the global 'arg' (the interpreter, as the
** standalone interpreter and busted set it), or NULL. */
static const char *interpreter_arg(lua_State *L) {
  const char *s = NULL;
  lua_Integer i;
  if (lua_getglobal(L, "arg") == LUA_TTABLE)
    for (i = -1; i > -100 && lua_geti(L, -1, i) == LUA_TSTRING; i--) {
      s = lua_tostring(L, -1);
      lua_pop(L, 1);
    }
  /* the strings stay referenced by the table, which stays on the stack */
  return s;
}

/*
** core.process_executor(opts): a pool of worker processes; opts as
** core.executor's, plus max_tasks_per_child and interpreter (default: see
** loom_procpool_interpreter).
*/
static int process_executor_new(lua_State *L) {
  loom_procpool_config cfg;
  const char *err;
  char *dflt = NULL;
  xhandle *x;
  loom_sched *s;
  lua_Integer max;
  x = new_executor(L, &cfg.base, LOOM_REFS_PROCESS);
  max = optint(L, "max_tasks_per_child", 0);
  cfg.max_tasks = max > 0 && max <= LONG_MAX ? (long)max : 0;
  lua_getfield(L, 1, "interpreter");   /* 8 */
  if (!lua_isstring(L, 8)) {   /* nothing below raises until dflt is freed */
    dflt = loom_procpool_interpreter(interpreter_arg(L));
    cfg.interpreter = dflt;
  }
  else cfg.interpreter = lua_tostring(L, 8);
  if (cfg.interpreter == NULL) {
    s = NULL;
    err = "not enough memory";
  }
  else s = loom_procpool_new(&cfg, &err);   /* takes cfg.base.init */
  loom_free(dflt);
  return set_executor(L, x, s, err, cfg.base.init);
}

/* Push a new, empty future handle of executor x (at stack slot 1), or
** raise 'shutdown'.  The handle exists before anything is allocated for
** it, so a Lua error from here on leaks nothing. */
static loom_fhandle *newfuture(lua_State *L, xhandle *x) {
  loom_fhandle *h;
  if (x->shut)
    loom_raise(L, "shutdown", "cannot schedule new futures after shutdown");
  h = (loom_fhandle *)lua_newuserdatauv(L, sizeof *h, 1);
  h->f = NULL;
  loom_setmeta(L, LOOM_UV_FUTURE);
  lua_pushvalue(L, 1);                 /* a future keeps its executor */
  lua_setiuservalue(L, -2, 1);
  return h;
}

/* Give the task message m to handle h and queue it (a map chunk when
** nchunk > 0).  Returns 1: the handle, at the top. */
static int enqueue(lua_State *L, xhandle *x, loom_fhandle *h, loom_msg *m,
                   int nchunk, int nseq) {
  h->f = loom_future_new(m);
  if (h->f == NULL) {
    loom_msg_free(m);
    return luaL_error(L, "not enough memory");
  }
  h->f->nchunk = nchunk;
  h->f->nseq = nseq;
  if (x->sched->ops->submit(x->sched, h->f) != 0)
    return loom_raise(L, "shutdown",
                      "cannot schedule new futures after shutdown");
  return 1;
}

static int executor_submit(lua_State *L) {
  xhandle *x = checkexecutor(L, 1);
  int n = lua_gettop(L);
  loom_fhandle *h;
  if (lua_type(L, 2) != LUA_TFUNCTION)
    return luaL_error(L, "bad argument #1 to 'submit' (function expected, "
                      "got %s)", lua_isnone(L, 2) ? "nil"
                                                 : luaL_typename(L, 2));
  h = newfuture(L, x);
  return enqueue(L, x, h, loom_encode(L, 2, n - 1, LOOM_AT_ARGUMENT, 1,
                                      x->refs), 0, 0);
}

#define SEQS_ON_STACK 64   /* _map_task: sequences kept on the stack */

/* A misuse of map found here: named as map's, the caller's function. */
static int map_error(lua_State *L, const char *msg) {
  return luaL_error(L, "bad argument to 'map' (%s)", msg);
}

/*
** ex:_map_task(fn, i0, i1, seqs, nseq, chunk): queue the calls
** fn(seqs[1][i], ..., seqs[nseq][i]), i = i0..i1, as one task.  As a
** chunk its results come back as one list (run_chunk in task.c); as a
** plain task (one call: map with chunksize 1), as a submit's do.  map
** (init.lua) keeps (i1 - i0 + 1) * nseq within what a Lua stack holds.
*/
static int executor_map_task(lua_State *L) {
  xhandle *x = checkexecutor(L, 1);
  lua_Integer i0 = luaL_checkinteger(L, 3), i1 = luaL_checkinteger(L, 4), i;
  lua_Integer nseq = luaL_checkinteger(L, 6);
  int chunk = lua_toboolean(L, 7), onstack, a, base;
  loom_fhandle *h;
  loom_msg *m;
  luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_checktype(L, 5, LUA_TTABLE);
  if (i0 < 1 || i1 < i0 || nseq < 1 || (i1 - i0 + 1) > INT_MAX / nseq
      || (!chunk && i1 != i0))
    return map_error(L, "bad chunk");
  lua_settop(L, 5);
  h = newfuture(L, x);                 /* 6 */
  /* few sequences sit on the stack; many are fetched for each value */
  onstack = nseq <= SEQS_ON_STACK;
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
  {
    loom_encode_opts o = { .place = LOOM_AT_MAP, .refs = x->refs,
                           .i0 = i0, .nseq = (int)nseq };
    m = loom_encode_with(L, base + 1, lua_gettop(L) - base, &o);
  }
  lua_settop(L, 6);
  return enqueue(L, x, h, m, chunk ? (int)(i1 - i0 + 1) : 0, (int)nseq);
}

/*
** The iterator of ex:map, in C: a generic for calls it once per result,
** so its cost is the caller's cost per call.  Upvalues: 1 the module
** record, 2 the futures (one per call for chunksize 1, else one per
** chunk; each is dropped once its results are taken), 3 a mapiter, 4 the
** current chunk's result list {extras, r1, ...} (see run_chunk in
** task.c), 5 its extras (nil when every call gave one result), 6 the
** progress function or nil.
*/
typedef struct mapiter {
  lua_Integer i, n, chunksize;   /* calls yielded, calls in all, per task */
  lua_Integer chunk;             /* the chunk in upvalue 4 */
  double deadline;               /* monotonic seconds; < 0: none */
  int progress;                  /* upvalue 6 is a function */
  int ended;                     /* it was told done == total */
  double next_report;            /* monotonic seconds */
} mapiter;

/* Seconds between two progress reports: a few a second. */
#define PROGRESS_EVERY 0.2

/* progress(done, total): at the first step, at most every PROGRESS_EVERY
** seconds after, and once at the end, in the caller's thread. */
static void map_progress(lua_State *L, mapiter *it) {
  double now = loom_now();
  int end = it->i >= it->n;
  if (end ? it->ended : it->i > 0 && now < it->next_report) return;
  it->ended = end;
  it->next_report = now + PROGRESS_EVERY;
  lua_pushvalue(L, lua_upvalueindex(6));
  lua_pushinteger(L, it->i);
  lua_pushinteger(L, it->n);
  lua_call(L, 2, 0);
}

/* Wait for future k and push its results after slot 1, which it takes
** (loom_future_results expects [future, timeout]); returns their number. */
static int map_results(lua_State *L, mapiter *it, lua_Integer k) {
  lua_settop(L, 0);
  lua_rawgeti(L, lua_upvalueindex(2), k);
  if (it->deadline < 0) lua_pushnil(L);
  else {
    double left = it->deadline - loom_now();
    lua_pushnumber(L, left < 0 ? 0 : left);
  }
  return loom_future_results(L, loom_checkfuture(L, 1));
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
  if (it->progress) map_progress(L, it);
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
  if (lua_rawgeti(L, lua_upvalueindex(5), j) == LUA_TTABLE)
    return loom_unpack_results(L) + 1;
  lua_pop(L, 1);
  lua_getfield(L, lua_upvalueindex(5), "fail");
  if (lua_tointeger(L, -1) == j) {
    lua_getfield(L, lua_upvalueindex(5), "err");
    loom_note_global(L, -1);
    return lua_error(L);
  }
  lua_pop(L, 1);
  lua_rawgeti(L, lua_upvalueindex(4), j + 1);
  return 2;
}

/* core._map_iter(futures, n, chunksize, deadline-or-nil, progress-or-nil):
** ex:map's step function, over the futures made by _map_task. */
static int l_map_iter(lua_State *L) {
  mapiter *it;
  luaL_checktype(L, 1, LUA_TTABLE);
  if (!lua_isnoneornil(L, 5)) luaL_checktype(L, 5, LUA_TFUNCTION);
  lua_settop(L, 5);
  it = (mapiter *)lua_newuserdatauv(L, sizeof *it, 0);   /* 6 */
  it->i = 0;
  it->n = luaL_checkinteger(L, 2);
  it->chunksize = luaL_checkinteger(L, 3);
  luaL_argcheck(L, it->chunksize >= 1, 3, "chunksize must be >= 1");
  it->deadline = lua_isnoneornil(L, 4) ? -1 : luaL_checknumber(L, 4);
  it->chunk = 0;
  it->progress = !lua_isnil(L, 5);
  it->ended = 0;
  it->next_report = 0;
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 6);
  lua_pushnil(L);
  lua_pushnil(L);
  lua_pushvalue(L, 5);
  lua_pushcclosure(L, map_step, 6);
  return 1;
}

/* Field k of the options table at idx (checked by loom/init.lua): a
** boolean, or def when absent. */
static int optfield(lua_State *L, int idx, const char *k, int def) {
  int r = def;
  if (lua_getfield(L, idx, k) == LUA_TBOOLEAN) r = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return r;
}

/* Join the workers of s, waiting in slices like every blocking call (a
** Ctrl-C ends the wait; the workers are joined at exit then). */
static void join(lua_State *L, loom_sched *s) {
  loom_block b;
  struct timespec ts;
  loom_block_begin(L, &b, -1);
  for (;;) {
    loom_block_slice(&b, &ts);
    if (s->ops->join(s, &ts)) return;
    if (loom_block_interrupted(&b)) loom_block_poke(&b);
  }
}

static void do_shutdown(lua_State *L, xhandle *x, int wait, int cancel,
                        int cancel_running) {
  x->shut = 1;
  if (x->sched != NULL) {   /* else finalized: shut down and joined */
    x->sched->ops->shutdown(x->sched, cancel, cancel_running);
    if (wait) join(L, x->sched);
  }
  loom_run_callbacks(L);
}

static int executor_shutdown(lua_State *L) {
  xhandle *x = checkexecutor(L, 1);
  int wait = 1, cancel = 0, running = 0;
  if (lua_istable(L, 2)) {
    wait = optfield(L, 2, "wait", 1);
    cancel = optfield(L, 2, "cancel_futures", 0);
    running = optfield(L, 2, "cancel_running", 0);
  }
  do_shutdown(L, x, wait, cancel, running);
  return 0;
}

static int executor_close(lua_State *L) {
  xhandle *x = checkexecutor(L, 1);
  do_shutdown(L, x, 1, 0, 0);
  return 0;
}

/* Collected (or the state closes): shutdown{wait = true}.  No Lua is
** run here: the callbacks of its futures run at the next waiting call. */
static int executor_gc(lua_State *L) {
  xhandle *x = (xhandle *)luaL_checkudata(L, 1, LOOM_EXECUTOR);
  if (x->sched) {
    x->sched->ops->shutdown(x->sched, 0, 0);
    x->sched->ops->join(x->sched, NULL);
    loom_sched_decref(x->sched);
    x->sched = NULL;
    x->shut = 1;
  }
  return 0;
}

static int executor_workers(lua_State *L) {
  xhandle *x = checkexecutor(L, 1);
  lua_pushinteger(L, x->nworkers);
  return 1;
}

static int executor_tostring(lua_State *L) {
  xhandle *x = (xhandle *)luaL_checkudata(L, 1, LOOM_EXECUTOR);
  if (x->sched == NULL) {
    lua_pushliteral(L, "loom.Executor (closed)");
    return 1;
  }
  lua_pushfstring(L, "loom.Executor (%d worker%s%s): %p", x->nworkers,
                  x->refs == LOOM_REFS_PROCESS ? " processes" : "s",
                  x->shut ? ", shut down" : "", (void *)x->sched);
  return 1;
}

/* core.is_executor(v) -> is one, is usable (made; maybe shut), shut */
static int l_is_executor(lua_State *L) {
  xhandle *x = (xhandle *)loom_fastudata(L, 1, LOOM_UV_EXECUTOR);
  lua_pushboolean(L, x != NULL);
  lua_pushboolean(L, x != NULL && (x->sched != NULL || x->shut));
  lua_pushboolean(L, x != NULL && x->shut);
  return 3;
}

/* ------------------------------------------------------------- opening */

static const luaL_Reg executor_methods[] = {
  {"submit", executor_submit},
  {"shutdown", executor_shutdown},
  {"close", executor_close},
  {"workers", executor_workers},
  {"_map_task", executor_map_task},
  {NULL, NULL}
};

static const luaL_Reg executor_funcs[] = {
  {"executor", executor_new},
  {"process_executor", process_executor_new},
  {"is_executor", l_is_executor},
  {"_map_iter", l_map_iter},
  {NULL, NULL}
};

void loom_open_executor(lua_State *L, int ms, int lib) {
  loom_newclass(L, LOOM_EXECUTOR, executor_methods, executor_gc,
                executor_tostring, ms);
  luaL_getmetatable(L, LOOM_EXECUTOR);
  lua_pushvalue(L, ms);
  lua_pushcclosure(L, executor_close, 1);
  lua_setfield(L, -2, "__close");
  lua_getfield(L, -1, "__index");
  lua_setfield(L, lib, "Executor");      /* so loom/init.lua can add map */
  lua_setiuservalue(L, ms, LOOM_UV_EXECUTOR);
  luaL_newmetatable(L, "loom.Sentinel");
  lua_pushvalue(L, ms);
  lua_pushcclosure(L, sentinel_gc, 1);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_pushvalue(L, lib);
  lua_pushvalue(L, ms);
  luaL_setfuncs(L, executor_funcs, 1);
  lua_pop(L, 1);
  lua_pushinteger(L, LOOM_WORKERS_MAX);
  lua_setfield(L, lib, "_WORKERS_MAX");
}
