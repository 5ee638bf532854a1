/*
** task.c -- running a task inside a lua_State, for every kind of worker.
**
** A task is a message: the function, then its arguments (or, for a map
** chunk, the function and nchunk argument lists).  It is decoded in the
** worker's state, called under a message handler that keeps the
** traceback, and its results (or its error value and the traceback) are
** encoded into the future's outcome.  Everything runs protected: no Lua
** error leaves loom_task_run, and the worker's stack is empty after it.
**
** Stopping a running task (f:cancel{running = true}, task_timeout,
** shutdown{cancel_running = true}) is done here too, the way lua.c stops
** a script on Ctrl-C: another thread sets a count hook on the state, and
** the hook raises at the next instruction.  That costs nothing until a
** stop is asked for.  The hook must reach the coroutine that runs, so a
** worker state's coroutine.resume and coroutine.wrap keep the chain of
** coroutines being resumed where a stopper can see it (loom_intr).
**
** ex:map (above: lua_executor.c's _map_task; below: encode.c): run_chunk.
*/
#include <stdio.h>
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

/* The n values at first, a map chunk's results, as one list (see
** run_chunk). */
static loom_msg *encode_list(lua_State *L, int first, int n, int refs) {
  loom_encode_opts o = { .place = LOOM_AT_RESULT, .refs = refs, .list = 1 };
  return loom_encode_with(L, first, n, &o);
}

/* Protected: [1] = loom_msg **out or NULL (only check), [2] = refs mode,
** then the values to encode as results. */
static int encode_k(lua_State *L) {
  loom_msg **out = (loom_msg **)lua_touserdata(L, 1);
  loom_msg *m = loom_encode(L, 3, lua_gettop(L) - 2, LOOM_AT_RESULT, 0,
                            (int)lua_tointeger(L, 2));
  if (out) *out = m;
  else loom_msg_free(m);
  return 0;
}

/* Protected: [1] = loom_msg **out, [2] = refs mode, then the values of a
** chunk's list. */
static int encode_list_k(lua_State *L) {
  *(loom_msg **)lua_touserdata(L, 1) =
      encode_list(L, 3, lua_gettop(L) - 2, (int)lua_tointeger(L, 2));
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
int loom_unpack_results(lua_State *L) {
  int n, a, t = lua_gettop(L);
  lua_getfield(L, t, "n");
  n = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  luaL_checkstack(L, n, "too many results");
  for (a = 1; a <= n; a++) lua_rawgeti(L, t, a);
  lua_remove(L, t);
  return n;
}

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
        && lua_rawgeti(L, out + 1, j) == LUA_TTABLE)
      n = loom_unpack_results(L);
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
  o->result = encode_list(L, out + 1, lua_gettop(L) - out, result_refs(f));
  return 0;
}
/*
** Run one task.  Protected: stack [1] = lightuserdata runctx.  Sets
** o->result (and o->failed), or raises (the caller turns that into a
** loom condition).
*/
typedef struct runctx {
  loom_future *f;
  loom_outcome *o;
  int errmem;              /* the task ran out of memory */
} runctx;

static int run_task(lua_State *L) {
  runctx *rc = (runctx *)lua_touserdata(L, 1);
  loom_future *f = rc->f;
  loom_outcome *o = rc->o;
  loom_msg *task = f->task;
  int n, base, st;
  lua_settop(L, 0);
  lua_pushcfunction(L, msghandler);          /* 1 */
  base = lua_gettop(L);
  /* f keeps the message until it is decoded: a decode that raises (out
  ** of memory, a C function's module that will not load) leaves it to
  ** loom_task_run to free */
  n = loom_decode(L, task->data, task->len, 1, task);
  f->task = NULL;
  if (!(f->xflags & LOOM_TASK_BORROWED))
    loom_msg_recycle(L, task);               /* the copy is made */
  if (n < 1 || !lua_isfunction(L, base + 1))
    return luaL_error(L, "malformed task");
  if (f->nchunk > 0) return run_chunk(L, f, o, base, n);
  st = lua_pcall(L, n - 1, LUA_MULTRET, 1);
  if (st == LUA_OK) {
    o->result = loom_encode(L, base + 1, lua_gettop(L) - base,
                            LOOM_AT_RESULT, 0, result_refs(f));
    return 0;
  }
  if (st == LUA_ERRMEM) rc->errmem = 1;
  /* the error value is at the top: send it and the traceback */
  st = lua_gettop(L);
  crossable_error(L, st, result_refs(f));
  push_traceback(L);
  o->failed = 1;
  o->result = loom_encode(L, st, 2, LOOM_AT_VALUE, 0, result_refs(f));
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
  runctx rc;
  int st;
  memset(o, 0, sizeof *o);
  rc.f = f;
  rc.o = o;
  rc.errmem = 0;
  lua_settop(L, 0);
  lua_pushcfunction(L, run_task);
  lua_pushlightuserdata(L, &rc);
  st = lua_pcall(L, 1, 0, 0);
  if (st != LUA_OK) {
    /* The task could not start, or its results could not be copied, or
    ** the worker ran out of memory outside the task's own code. */
    loom_outcome_free(o);
    if (st == LUA_ERRMEM) rc.errmem = 1;
    if (rc.errmem) lua_gc(L, LUA_GCCOLLECT);   /* room to say it */
    o->errmsg = safe_error_text(L, -1);
    if (st != LUA_ERRMEM && lua_type(L, -1) == LUA_TTABLE)
      o->errkind = "transfer";   /* loom's own: results not copyable */
    /* else raised to the caller as a plain string (NULL: no memory) */
  }
  if (!(f->xflags & LOOM_TASK_BORROWED))
    loom_msg_free(f->task);   /* when decoding did not finish */
  f->task = NULL;
  lua_settop(L, 0);
  /* the state goes on serving: what the task built is garbage now */
  if (rc.errmem) lua_gc(L, LUA_GCCOLLECT);
  return rc.errmem;
}

/* ------------------------------------------------------- worker states */

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

/* The interrupt point of a state, in its extra space (which coroutines
** copy from the main thread when they are made), or NULL. */
#define intr_of(L) (*(loom_intr **)lua_getextraspace(L))

static const char STOP_KEY = 's';   /* registry: the error a stop raises */

/*
** The hook a stop sets raises the stop error at the next instruction.
** From then on the task unwinds, and Lua code runs only in __close
** handlers and message handlers: they get a budget of STOP_BUDGET
** instructions each time the hook raises, so that they run to their end
** unless they run away.  The task cannot catch the error and carry on:
** a worker state's pcall, xpcall and coroutine.resume raise it again
** when they catch it (and a C module's lua_pcall that swallows it meets
** the hook again within the budget).  A hook left on a coroutine from an
** earlier task removes itself.
*/
#define STOP_BUDGET 1000000

static void stop_hook(lua_State *L, lua_Debug *ar) {
  loom_intr *in = intr_of(L);
  int first;
  (void)ar;
  if (!loom_intr_fired(in)) {
    lua_sethook(L, NULL, 0, 0);
    return;
  }
  first = lua_gethookcount(L) == 1;   /* the stopper's hook, not a budget */
  lua_sethook(L, stop_hook, LUA_MASKCOUNT, STOP_BUDGET);
  if (in->unwinding && first) return;   /* a coroutine's, as the task
                                           unwinds: it gets a budget too */
  in->unwinding = 1;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &STOP_KEY);
  lua_error(L);
}

/* When a stopped task catches an error: raise it again.  Its to-be-closed
** variables have been closed (by the catching call, or, for a coroutine,
** here). */
static int rethrow_if_stopped(lua_State *L, lua_State *co) {
  if (!loom_intr_fired(intr_of(L))) return 0;
  if (co != NULL && lua_status(co) != LUA_OK && lua_status(co) != LUA_YIELD)
    lua_resetthread(co);
  return lua_error(L);
}

#define sethook_stop(L) lua_sethook(L, stop_hook, LUA_MASKCOUNT, 1)

void loom_task_stop(loom_intr *in, unsigned gen) {
  int i, n;
  pthread_mutex_lock(&in->mu);
  if (in->L != NULL && atomic_load(&in->gen) == gen) {
    /* lua_sethook may be called asynchronously (ldebug.c); lua.c calls
    ** it from a signal handler.  The chain's coroutines cannot go away
    ** meanwhile: busy makes their owner wait before popping one.  What
    ** remains racy is lua_sethook's own walk down the running thread's
    ** CallInfo list (to set their traps): were this thread preempted just
    ** after reading L->ci, and the owner to return from that call and
    ** shrink its CallInfo list in a collection meanwhile, the walk would
    ** read a freed CallInfo.  That takes a preemption within a few
    ** instructions and a collection of this thread in that moment;
    ** Lanes stops its lanes the same way. */
    sethook_stop(in->L);
    atomic_store(&in->busy, 1);
    n = atomic_load(&in->nchain);
    for (i = 0; i < n; i++)
      sethook_stop((lua_State *)atomic_load(&in->chain[i]));
    atomic_store(&in->busy, 0);
    loom_intr_wake_locked(in);
  }
  pthread_mutex_unlock(&in->mu);
}

void loom_task_unstop(loom_intr *in) {
  pthread_mutex_lock(&in->mu);
  lua_sethook(in->L, NULL, 0, 0);
  in->unwinding = 0;
  pthread_mutex_unlock(&in->mu);
}

/*
** lua_resume, with co on the chain a stopper sees while it runs.  The
** owner pushes and pops without a lock: after a push it checks for a stop
** itself (one of the two sees the other: both sides are seq_cst), and
** before a popped coroutine can go away it waits out a stopper reading
** the chain.
*/
static int tracked_resume(lua_State *L, lua_State *co, int narg,
                          int *nres) {
  loom_intr *in = intr_of(L);
  int st, n = 0;
  if (in != NULL && (n = atomic_load(&in->nchain)) < LOOM_CHAIN_MAX) {
    atomic_store(&in->chain[n], (uintptr_t)co);
    atomic_store(&in->nchain, n + 1);
    if (atomic_load(&in->stop) == atomic_load(&in->gen)) sethook_stop(co);
  }
  else in = NULL;   /* too deep to follow: a stop acts when it returns */
  st = lua_resume(co, L, narg, nres);
  if (in != NULL) {
    atomic_store(&in->nchain, n);
    while (atomic_load(&in->busy)) loom_cpu_relax();
  }
  return st;
}

/* As lcorolib.c's auxresume, through tracked_resume. */
static int auxresume(lua_State *L, lua_State *co, int narg) {
  int status, nres;
  if (!lua_checkstack(co, narg)) {
    lua_pushliteral(L, "too many arguments to resume");
    return -1;
  }
  lua_xmove(L, co, narg);
  status = tracked_resume(L, co, narg, &nres);
  if (status == LUA_OK || status == LUA_YIELD) {
    if (!lua_checkstack(L, nres + 1)) {
      lua_pop(co, nres);
      lua_pushliteral(L, "too many results to resume");
      return -1;
    }
    lua_xmove(co, L, nres);
    return nres;
  }
  lua_xmove(co, L, 1);   /* the error */
  return -1;
}

static int co_resume(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  int r;
  luaL_argexpected(L, co, 1, "coroutine");
  r = auxresume(L, co, lua_gettop(L) - 1);
  if (r < 0) {
    rethrow_if_stopped(L, co);
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, -(r + 1));
  return r + 1;
}

static int co_wrapped(lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  int r = auxresume(L, co, lua_gettop(L));
  if (r < 0) {
    int stat = lua_status(co);
    if (stat != LUA_OK && stat != LUA_YIELD) {   /* an error in co */
      stat = lua_resetthread(co);   /* close its to-be-closed variables */
      lua_xmove(co, L, 1);
    }
    if (stat != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
      luaL_where(L, 1);
      lua_insert(L, -2);
      lua_concat(L, 2);
    }
    return lua_error(L);
  }
  return r;
}

static int co_wrap(lua_State *L) {
  lua_State *co;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_pushcclosure(L, co_wrapped, 1);
  return 1;
}

/* pcall and xpcall as lbaselib.c's, but a stopped task's error is
** raised again instead of caught. */
static int finishpcall(lua_State *L, int status, lua_KContext extra) {
  if (status != LUA_OK && status != LUA_YIELD) {
    rethrow_if_stopped(L, NULL);
    lua_pushboolean(L, 0);
    lua_pushvalue(L, -2);
    return 2;
  }
  return lua_gettop(L) - (int)extra;
}

static int worker_pcall(lua_State *L) {
  int status;
  luaL_checkany(L, 1);
  lua_pushboolean(L, 1);   /* the first result if no error */
  lua_insert(L, 1);
  status = lua_pcallk(L, lua_gettop(L) - 2, LUA_MULTRET, 0, 0, finishpcall);
  return finishpcall(L, status, 0);
}

static int worker_xpcall(lua_State *L) {
  int status, n = lua_gettop(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushboolean(L, 1);
  lua_pushvalue(L, 1);
  lua_rotate(L, 3, 2);   /* below the function's arguments */
  status = lua_pcallk(L, n - 2, LUA_MULTRET, 2, 2, finishpcall);
  return finishpcall(L, status, 2);
}

void loom_open_worker_state(lua_State *L, lua_CFunction open_core) {
  intr_of(L) = NULL;
  luaL_openlibs(L);
  lua_getglobal(L, "os");
  lua_pushcfunction(L, worker_exit);
  lua_setfield(L, -2, "exit");
  lua_pop(L, 1);
  lua_pushcfunction(L, worker_print);
  lua_setglobal(L, "print");
  lua_pushcfunction(L, worker_pcall);
  lua_setglobal(L, "pcall");
  lua_pushcfunction(L, worker_xpcall);
  lua_setglobal(L, "xpcall");
  lua_getglobal(L, "coroutine");
  lua_pushcfunction(L, co_resume);
  lua_setfield(L, -2, "resume");
  lua_pushcfunction(L, co_wrap);
  lua_setfield(L, -2, "wrap");
  lua_pop(L, 1);
  luaL_requiref(L, "loom.core", open_core, 0);
  lua_pop(L, 1);
  /* before any user code can change the libraries; print, os.exit,
  ** pcall, xpcall and the coroutine functions are named as usual, so they
  ** cross as the receiver's own */
  loom_cfuncs_init(L);
}

/* Protected: [1] = path, [2] = cpath, [3] = init message, [4] = interrupt
** point, [5] = the opener of loom.core; set the state up and run init. */
static int task_setup(lua_State *L) {
  const char *path = (const char *)lua_touserdata(L, 1);
  const char *cpath = (const char *)lua_touserdata(L, 2);
  const loom_msg *init = (const loom_msg *)lua_touserdata(L, 3);
  loom_intr *in = (loom_intr *)lua_touserdata(L, 4);
  lua_CFunction open_core = lua_tocfunction(L, 5);
  int n;
  lua_settop(L, 0);
  loom_open_worker_state(L, open_core);
  if (in != NULL) {
    /* before any coroutine is made: each copies the main thread's */
    intr_of(L) = in;
    loom_pusherror(L, "cancelled", "the task was stopped");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &STOP_KEY);
    lua_getfield(L, LUA_REGISTRYINDEX, LOOM_MODULE);
    ((loom_mstate *)lua_touserdata(L, -1))->intr = in;
    lua_pop(L, 1);
  }
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

char *loom_task_setup(lua_State *L, lua_CFunction open_core,
                      const char *path, const char *cpath,
                      const loom_msg *init, loom_intr *in) {
  char *err = NULL;
  lua_settop(L, 0);
  lua_pushcfunction(L, task_setup);
  lua_pushlightuserdata(L, (void *)path);
  lua_pushlightuserdata(L, (void *)cpath);
  lua_pushlightuserdata(L, (void *)init);
  lua_pushlightuserdata(L, in);
  lua_pushcfunction(L, open_core);   /* a light C function: no allocation */
  if (lua_pcall(L, 5, 0, 0) != LUA_OK) {
    err = safe_error_text(L, -1);
    if (err == NULL) err = loom_strdup("not enough memory");
  }
  lua_settop(L, 0);
  if (err == NULL && in != NULL) {
    pthread_mutex_lock(&in->mu);
    in->L = L;   /* stoppable from now on */
    pthread_mutex_unlock(&in->mu);
  }
  return err;
}

/* ------------------------------------------------------------- preload */

/* The value at the top is a C function with no upvalue (pops nothing). */
static int plain_cfunction(lua_State *L) {
  if (lua_tocfunction(L, -1) == NULL) return 0;
  if (lua_getupvalue(L, -1, 1) == NULL) return 1;
  lua_pop(L, 1);
  return 0;
}

loom_preload *loom_preload_collect(lua_State *L, int idx) {
  loom_preload *pl;
  char *names;
  size_t n = 0, bytes = 0, len;
  /* lua_next and reading string keys neither allocate nor raise */
  if (lua_type(L, idx) != LUA_TTABLE || !lua_checkstack(L, 4)) return NULL;
  idx = lua_absindex(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) {   /* count them, and the bytes of the names */
    if (lua_type(L, -2) == LUA_TSTRING && plain_cfunction(L)) {
      lua_tolstring(L, -2, &len);
      n++;
      bytes += len + 1;
    }
    lua_pop(L, 1);
  }
  pl = n == 0 || n > 100000 ? NULL
       : (loom_preload *)loom_malloc((n + 1) * sizeof *pl + bytes);
  if (pl == NULL) return NULL;
  names = (char *)(pl + n + 1);
  n = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) == LUA_TSTRING && plain_cfunction(L)) {
      const char *s = lua_tolstring(L, -2, &len);
      memcpy(names, s, len + 1);
      pl[n].name = names;
      pl[n].open = lua_tocfunction(L, -1);
      names += len + 1;
      n++;
    }
    lua_pop(L, 1);
  }
  pl[n].name = NULL;
  return pl;
}

/* Protected: [1] = the list; registry._PRELOAD, which the package
** library will take as package.preload, gets each loader. */
static int task_preload(lua_State *L) {
  const loom_preload *pl = (const loom_preload *)lua_touserdata(L, 1);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (; pl->name != NULL; pl++) {
    lua_pushcfunction(L, pl->open);
    lua_setfield(L, -2, pl->name);
  }
  return 0;
}

char *loom_task_preload(lua_State *L, const loom_preload *pl) {
  char *err = NULL;
  if (pl == NULL) return NULL;
  lua_pushcfunction(L, task_preload);
  lua_pushlightuserdata(L, (void *)pl);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    err = safe_error_text(L, -1);
    if (err == NULL) err = loom_strdup("not enough memory");
  }
  lua_settop(L, 0);
  return err;
}
