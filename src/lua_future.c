/*
** lua_future.c -- the binding of futures: result, exception, cancel,
** done callbacks; and waiting on many futures at once (the watcher behind
** as_completed and wait).
**
** A future handle is a userdata holding one reference to a loom_future;
** its user value is its executor, which a future keeps alive.  Done
** callbacks run in the state and thread that made the future: they wait
** in the module record's user value (a table future -> {fn, ...}) until a
** loom call of that thread finds the future done.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <string.h>
#include <time.h>

#include "loom.h"

#define LOOM_WATCHER "loom.Watcher"

loom_future *loom_checkfuture(lua_State *L, int idx) {
  loom_fhandle *h = (loom_fhandle *)loom_checkud(L, idx, LOOM_UV_FUTURE, LOOM_FUTURE);
  if (h->f == NULL) luaL_argerror(L, idx, "future is not initialised");
  return h->f;
}

/* Every future is collected: the type check compares metatables (no
** registry lookup by name) unless it fails. */
static int future_gc(lua_State *L) {
  loom_fhandle *h = (loom_fhandle *)loom_checkud(L, 1, LOOM_UV_FUTURE,
                                                 LOOM_FUTURE);
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
int loom_run_callbacks(lua_State *L) {
  loom_mstate *ms = loom_getmstate(L);
  int top, pending, list, n = 0, i, ran = 0;
  if (ms->pinned) loom_pins_sweep(L);   /* strings read meanwhile */
  if (ms->ncallbacks <= 0) return 0;
  top = lua_gettop(L);
  luaL_checkstack(L, 8, NULL);
  lua_getiuservalue(L, lua_upvalueindex(1), LOOM_UV_CALLBACKS);
  pending = lua_gettop(L);
  lua_newtable(L);              /* future, callbacks, future, callbacks... */
  list = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, pending)) {
    loom_fhandle *h = (loom_fhandle *)lua_touserdata(L, -2);
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
    lua_rawgeti(L, list, i + 1);
    ran += (int)lua_rawlen(L, -1);   /* what loom.poll reports */
    lua_pop(L, 1);
  }
  for (i = 1; i <= n; i += 2) {
    lua_pushcfunction(L, call_callbacks_k);
    lua_rawgeti(L, list, i);
    lua_rawgeti(L, list, i + 1);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
      loom_warn_error(L, "loom: done callback failed: ");
    }
  }
  lua_settop(L, top);
  return ran;
}

/* [1] future, [2] callbacks: run each, in order, warning on errors. */
static int call_callbacks_k(lua_State *L) {
  lua_Integer i, n = luaL_len(L, 2);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, 2, i);
    lua_pushvalue(L, 1);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
      loom_warn_error(L, "loom: done callback failed: ");
    }
  }
  return 0;
}

static int future_add_done_callback(lua_State *L) {
  loom_mstate *ms = loom_getmstate(L);
  loom_future *f = loom_checkfuture(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (loom_future_isdone(f)) {
    loom_run_callbacks(L);   /* earlier ones first */
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 1);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
      loom_warn_error(L, "loom: done callback failed: ");
    }
    return 0;
  }
  lua_getiuservalue(L, lua_upvalueindex(1), LOOM_UV_CALLBACKS);
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

/* Wait until f is done or the timeout passes; 1 if done.  The waiter
** lives on this C stack: it is unlinked before Lua may run (a poke). */
static int wait_one(lua_State *L, loom_future *f, double timeout) {
  loom_waiter w;
  loom_wlink l;
  loom_block b;
  int done = 0, spin;
  if (loom_future_isdone(f)) return 1;
  if (timeout == 0) return 0;
  for (spin = 0; spin < 2000; spin++) {   /* short tasks: skip sleeping */
    if (loom_future_isdone(f)) return 1;
    if ((spin & 127) == 127) sched_yield();   /* a busy machine: give way */
    else loom_cpu_relax();
  }
  loom_block_begin(L, &b, timeout);
  for (;;) {
    struct timespec ts;
    int more = 1;
    loom_waiter_init(&w, 0);
    l.idx = 0;
    if (loom_future_watch(f, &l, &w)) done = 1;
    else {
      while ((more = loom_block_slice(&b, &ts)) != 0
             && !loom_waiter_wait(&w, &ts, b.in)
             && !loom_block_interrupted(&b))
        ;
      loom_future_unwatch(f, &l);
      done = loom_future_isdone(f);
    }
    loom_waiter_destroy(&w);
    if (done || !more) return done;
    loom_block_poke(&b);   /* a hook changed: let it act, then go on */
  }
}

static void raise_state(lua_State *L, loom_future *f) {
  if (atomic_load(&f->state) == LOOM_CANCELLED)
    loom_raise(L, "cancelled", "the future was cancelled");
}

/*
** A task's string error about a global that is nil in the worker
** ("attempt to index a nil value (global 'CONFIG')") while this state,
** which submitted the task, has it set: add a note to the message, as
** workers have globals of their own.  Only the calling state can tell.
** The error value is at idx; nothing else changes.
*/
void loom_note_global(lua_State *L, int idx) {
  static const char pat[] = "a nil value (global '";
  const char *msg, *name, *end;
  int top = lua_gettop(L);
  if (lua_type(L, idx) != LUA_TSTRING) return;
  msg = lua_tostring(L, idx);
  if ((name = strstr(msg, pat)) == NULL) return;
  name += sizeof pat - 1;
  if ((end = strchr(name, '\'')) == NULL) return;
  idx = lua_absindex(L, idx);
  luaL_checkstack(L, 4, NULL);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  lua_pushlstring(L, name, (size_t)(end - name));
  if (lua_rawget(L, -2) != LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushlstring(L, name, (size_t)(end - name));
    lua_pushfstring(L, "%s\n(loom: each worker has its own globals; "
                    "'%s' is set only in the state that submitted the task: "
                    "pass it as an argument or an upvalue, or set it in the "
                    "executor's init)", msg, lua_tostring(L, -1));
    lua_replace(L, idx);
  }
  lua_settop(L, top);
}

/* Push the future's outcome: n results, or (error value, traceback). */
static int push_outcome(lua_State *L, loom_future *f) {
  if (f->out.errkind) {
    loom_pusherror(L, f->out.errkind, "%s",
                   f->out.errmsg ? f->out.errmsg : "not enough memory");
    lua_pushliteral(L, "(no traceback)");
    return -1;
  }
  if (f->out.result == NULL) {
    /* the worker failed outside the task (out of memory, most likely):
    ** a plain string error, as if the task had raised it */
    lua_pushstring(L, f->out.errmsg ? f->out.errmsg : "not enough memory");
    lua_pushliteral(L, "(no traceback)");
    return -1;
  }
  {
    int n = loom_decode(L, f->out.result->data, f->out.result->len, 1, f->out.result);
    if (f->out.failed) loom_note_global(L, -2);
    return f->out.failed ? -1 : n;
  }
}

static void await(lua_State *L, loom_future *f, int tidx) {
  double t = loom_opttimeout(L, tidx);
  int done = wait_one(L, f, t);
  loom_run_callbacks(L);
  if (!done) loom_raise(L, "timeout", "the future did not finish in time");
  raise_state(L, f);
}

int loom_future_results(lua_State *L, loom_future *f) {
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
  return loom_future_results(L, loom_checkfuture(L, 1));
}

static int future_exception(lua_State *L) {
  loom_future *f = loom_checkfuture(L, 1);
  int n;
  await(L, f, 2);
  lua_settop(L, 1);
  if (!f->out.failed && !f->out.errkind && f->out.result != NULL) {
    lua_pushnil(L);
    return 1;
  }
  n = push_outcome(L, f);
  (void)n;
  return 2;
}

static int future_cancel(lua_State *L) {
  loom_future *f = loom_checkfuture(L, 1);
  int running = 0;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "running");
    running = lua_toboolean(L, -1);
  }
  lua_pushboolean(L, f->sched != NULL
                     && f->sched->ops->cancel(f->sched, f, running));
  return 1;
}

static int future_cancelled(lua_State *L) {
  loom_future *f = loom_checkfuture(L, 1);
  lua_pushboolean(L, atomic_load(&f->state) == LOOM_CANCELLED);
  return 1;
}

static int future_running(lua_State *L) {
  loom_future *f = loom_checkfuture(L, 1);
  lua_pushboolean(L, atomic_load(&f->state) == LOOM_RUNNING);
  return 1;
}

static int future_done(lua_State *L) {
  loom_future *f = loom_checkfuture(L, 1);
  lua_pushboolean(L, loom_future_isdone(f));
  return 1;
}

/* true when finished with an error (for wait's FIRST_EXCEPTION) */
static int future_failed(lua_State *L) {
  loom_future *f = loom_checkfuture(L, 1);
  lua_pushboolean(L, atomic_load(&f->state) == LOOM_FINISHED
                     && (f->out.failed || f->out.errkind != NULL
                         || f->out.result == NULL));
  return 1;
}

static int future_tostring(lua_State *L) {
  static const char *const names[] = {
    "pending", "running", "finished", "cancelled"
  };
  loom_fhandle *h = (loom_fhandle *)luaL_checkudata(L, 1, LOOM_FUTURE);
  if (h->f == NULL) lua_pushliteral(L, "loom.Future (closed)");
  else lua_pushfstring(L, "loom.Future (%s): %p",
                       names[atomic_load(&h->f->state)], (void *)h->f);
  return 1;
}

/* --------------------------------------------------- polling protocol */

/* f:pollfd(): cqueues' polling protocol (with events and timeout): a
** descriptor readable once f is done, made on first request and closed
** when f is freed; so cqueues.poll(f) returns once f is done. */
static int future_pollfd(lua_State *L) {
  int fd = loom_future_pollfd(loom_checkfuture(L, 1));
  if (fd < 0)
    return luaL_error(L, "cannot make the future's descriptor: %s",
                      strerror(errno));
  lua_pushinteger(L, fd);
  return 1;
}

static int future_events(lua_State *L) {
  loom_checkfuture(L, 1);
  lua_pushliteral(L, "r");
  return 1;
}

static int future_timeout(lua_State *L) {
  loom_checkfuture(L, 1);
  lua_pushnil(L);   /* no deadline of its own */
  return 1;
}

/* ------------------------------------------------------------- watcher */

/*
** A watcher waits on many futures at once: it registers one link per
** future, and each completion appends its index to w.q, in order.
*/
typedef struct watcher {
  loom_waiter w;           /* a queueing one: completed links, in order */
  int n, nout, live;       /* futures, handed out, links made */
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
    loom_checkfuture(L, -1);
    lua_pop(L, 1);
  }
  sz = sizeof(watcher) + (size_t)n * (sizeof(loom_future *)
                                      + sizeof(loom_wlink));
  mem = (char *)lua_newuserdatauv(L, sz, 0);
  wt = (watcher *)mem;
  wt->live = 0;
  luaL_setmetatable(L, LOOM_WATCHER);
  wt->n = (int)n;
  wt->nout = 0;
  wt->links = (loom_wlink *)(mem + sizeof(watcher));
  wt->fs = (loom_future **)(wt->links + n);
  loom_waiter_init(&wt->w, 1);
  for (i = 0; i < n; i++) wt->fs[i] = NULL;
  wt->live = 1;
  /* no Lua call may raise from here until every link is made */
  for (i = 0; i < n; i++) {
    loom_future *f;
    loom_wlink *l = &wt->links[i];
    lua_geti(L, 1, i + 1);
    f = ((loom_fhandle *)lua_touserdata(L, -1))->f;
    lua_pop(L, 1);
    loom_future_incref(f);
    wt->fs[i] = f;
    l->idx = (int)i;
    if (loom_future_watch(f, l, &wt->w)) {
      pthread_mutex_lock(&wt->w.mu);   /* done already: queue it now */
      l->dnext = NULL;
      if (wt->w.dtail) wt->w.dtail->dnext = l; else wt->w.dhead = l;
      wt->w.dtail = l;
      pthread_mutex_unlock(&wt->w.mu);
    }
  }
  return 1;
}

/*
** The next link on the done list of queueing waiter w, waiting up to t
** seconds (< 0: forever) in slices, as every blocking call does; NULL
** when none came in time.  The done list only grows while this waits.
*/
loom_wlink *loom_waiter_next(lua_State *L, loom_waiter *w, double t) {
  loom_wlink *l = NULL;
  loom_block b;
  int begun = 0;
  for (;;) {
    struct timespec ts;
    int more = 1, slept = 0;
    if (begun) more = loom_block_slice(&b, &ts);
    loom_intr_enter(begun ? b.in : NULL, &w->mu, &w->cv);
    pthread_mutex_lock(&w->mu);
    for (;;) {
      if ((l = loom_waiter_pop_locked(w)) != NULL) break;
      if (t == 0 || !begun || !more || slept || loom_intr_fired(b.in))
        break;
      /* one slice: a completion, or the slice's end, ends it */
      slept = pthread_cond_timedwait(&w->cv, &w->mu, &ts) == ETIMEDOUT;
    }
    pthread_mutex_unlock(&w->mu);
    loom_intr_leave(begun ? b.in : NULL);
    if (l != NULL || t == 0 || !more) return l;
    if (!begun) {   /* nothing yet: from now on, wait in slices */
      loom_block_begin(L, &b, t);
      begun = 1;
    }
    else if (loom_block_interrupted(&b)) loom_block_poke(&b);
  }
}

/* w:next([timeout]) -> index of the next completed future, or nil */
static int watch_next(lua_State *L) {
  watcher *wt = (watcher *)luaL_checkudata(L, 1, LOOM_WATCHER);
  double t = loom_opttimeout(L, 2);
  loom_wlink *l = NULL;
  int idx;
  if (wt->live && wt->nout < wt->n) l = loom_waiter_next(L, &wt->w, t);
  if (l == NULL) {
    loom_run_callbacks(L);
    return 0;
  }
  idx = l->idx;
  wt->nout++;
  /* handed out: the watcher no longer keeps it (nor its results).  The
  ** unwatch takes the sched's lock, so the completion that queued the
  ** link is over (the state says done) before its callbacks are run. */
  loom_future_unwatch(wt->fs[idx], l);
  loom_future_decref(wt->fs[idx]);
  wt->fs[idx] = NULL;
  loom_run_callbacks(L);
  lua_pushinteger(L, idx + 1);
  return 1;
}

/* ------------------------------------------------------------- opening */

static int l_is_future(lua_State *L) {
  loom_fhandle *h = (loom_fhandle *)loom_fastudata(L, 1, LOOM_UV_FUTURE);
  lua_pushboolean(L, h != NULL && h->f != NULL);
  return 1;
}

static int l_run_callbacks(lua_State *L) {
  loom_run_callbacks(L);
  return 0;
}

static const luaL_Reg future_methods[] = {
  {"result", future_result},
  {"exception", future_exception},
  {"cancel", future_cancel},
  {"cancelled", future_cancelled},
  {"running", future_running},
  {"done", future_done},
  {"add_done_callback", future_add_done_callback},
  {"_failed", future_failed},
  {"pollfd", future_pollfd},
  {"events", future_events},
  {"timeout", future_timeout},
  {NULL, NULL}
};

static const luaL_Reg watcher_methods[] = {
  {"next", watch_next},
  {"close", watcher_gc},
  {NULL, NULL}
};

static const luaL_Reg future_funcs[] = {
  {"watch", watch_new},
  {"run_callbacks", l_run_callbacks},
  {"is_future", l_is_future},
  {NULL, NULL}
};

void loom_open_future(lua_State *L, int ms, int lib) {
  loom_newclass(L, LOOM_FUTURE, future_methods, future_gc, future_tostring,
                ms);
  loom_newclass(L, LOOM_WATCHER, watcher_methods, watcher_gc, NULL, ms);
  luaL_getmetatable(L, LOOM_FUTURE);
  lua_getfield(L, -1, "__index");
  lua_setfield(L, lib, "Future");
  lua_setiuservalue(L, ms, LOOM_UV_FUTURE);
  lua_pushvalue(L, lib);
  lua_pushvalue(L, ms);
  luaL_setfuncs(L, future_funcs, 1);
  lua_pop(L, 1);
}
