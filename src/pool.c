/*
** pool.c -- the task queue and the worker threads.
**
** Design (after libuv's threadpool): one mutex (pool->mu) and one
** condition variable (pool->work).  A worker loops with the lock held,
** sleeping while the queue is empty; a submit signals only when a worker
** is idle.  Shutdown sets 'stopping' and wakes everyone; workers drain
** the queue and exit; join waits for all of them.
**
** Each worker owns one lua_State, created and closed on its own thread;
** no other thread ever touches it.  All Lua work on a worker runs inside
** lua_pcall, and no Lua call is made with pool->mu held.
**
** References: the executor userdata, every future, and the module record
** of the creating state (until it joins the workers) each hold one.
*/
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lualib.h"
#include "loom.h"

#define WORKER_STACK (4u << 20)
#define WORKER_SPIN 4000   /* pauses: some tens of microseconds */

char *loom_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = (char *)loom_malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

void loom_pool_incref(loom_pool *p) {
  atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
}

void loom_pool_decref(loom_pool *p) {
  if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) != 1)
    return;
  /* the workers were joined before the module record let go */
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->work);
  loom_msg_free(p->init);
  loom_free(p->broken);
  loom_free(p->threads);
  loom_free(p->name);
  loom_free(p->path);
  loom_free(p->cpath);
  loom_free(p);
}

int loom_pool_nworkers(loom_pool *p) { return p->nworkers; }

/* Fail a future with a loom condition; called with p->mu held. */
static void fail_locked(loom_future *f, const char *kind, const char *msg) {
  f->errkind = kind;
  f->errmsg = loom_strdup(msg);   /* NULL (out of memory) is reported */
  loom_future_complete_locked(f, LOOM_FINISHED);
}

/* ------------------------------------------------------------- a worker */

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

/* Protected: [1] = loom_msg **out or NULL (only check), then the values
** to encode as results. */
static int encode_k(lua_State *L) {
  loom_msg **out = (loom_msg **)lua_touserdata(L, 1);
  loom_msg *m = loom_encode(L, 2, lua_gettop(L) - 1, LOOM_AT_RESULT, 0, 1);
  if (out) *out = m;
  else loom_msg_free(m);
  return 0;
}

/* Protected: [1] = loom_msg **out, then the values of a chunk's list. */
static int encode_list_k(lua_State *L) {
  *(loom_msg **)lua_touserdata(L, 1) = loom_encode_list(L, 2,
                                                         lua_gettop(L) - 1);
  return 0;
}

/* Try to encode the n values at the top (popping them); 1 on success,
** with the message in *out if out is not NULL; else 0 and the error at
** the top. */
static int try_encode(lua_State *L, int n, loom_msg **out) {
  lua_pushcfunction(L, encode_k);
  lua_pushlightuserdata(L, out);
  lua_rotate(L, -n - 2, 2);
  return lua_pcall(L, n + 1, 0, 0) == LUA_OK;
}

/* Make the error value at idx one that can cross: itself when it can be
** copied, else its text (what chunksize = 1 and a plain task both send). */
static void crossable_error(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  lua_pushvalue(L, idx);
  if (try_encode(L, 1, NULL)) return;
  lua_pop(L, 1);
  loom_pushtext(L, idx);
  lua_replace(L, idx);
}

/*
** A map chunk: call fn on nchunk argument lists, in order.  Stack:
** [2] message handler, [base+1] fn, then the arguments, nseq per call.
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
static void chunk_fixup(lua_State *L, int out, int k) {
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
    if (!try_encode(L, n, NULL)) {   /* as a plain task's: no traceback */
      chunk_extras(L, out);
      lua_pushnil(L);
      lua_setfield(L, out + 1, "tb");
      chunk_fail(L, out, j, k);
      return;
    }
  }
  if (failj) {   /* every earlier call is fine: the error value itself */
    lua_getfield(L, out + 1, "err");
    crossable_error(L, -1);
    lua_setfield(L, out + 1, "err");
  }
}

static int run_chunk(lua_State *L, loom_future *f, int base, int n) {
  int k = f->nchunk, q = f->nseq, out = lua_gettop(L), j, a;
  if (n != 1 + k * q) return luaL_error(L, "malformed task");
  luaL_checkstack(L, k + q + 8, "too many results");
  lua_pushnil(L);                           /* out+1: extras */
  for (j = 0; j < k; j++) {
    int top = lua_gettop(L), nr;
    lua_pushvalue(L, base + 1);
    for (a = 0; a < q; a++) lua_pushvalue(L, base + 2 + j * q + a);
    if (lua_pcall(L, q, LUA_MULTRET, 2) != LUA_OK) {
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
    lua_pushlightuserdata(L, &f->result);
    for (i = 1; i <= nv; i++) lua_pushvalue(L, out + i);
    if (lua_pcall(L, nv + 1, 0, 0) == LUA_OK) return 0;
    lua_pop(L, 1);
  }
  chunk_fixup(L, out, k);
  f->result = loom_encode_list(L, out + 1, lua_gettop(L) - out);
  return 0;
}
/*
** Run one task.  Protected: stack [1] = lightuserdata future.
** Leaves f->result/f->failed set, or raises (the caller turns that into
** a loom condition on the future).
*/
static int run_task(lua_State *L) {
  loom_future *f = (loom_future *)lua_touserdata(L, 1);
  int n, base, st;
  lua_pushcfunction(L, msghandler);          /* 2 */
  base = lua_gettop(L);
  n = loom_decode(L, f->task->data, f->task->len, 1, f->task);
  loom_msg_free(f->task);                    /* the copy is made */
  f->task = NULL;
  if (n < 1 || !lua_isfunction(L, base + 1))
    return luaL_error(L, "malformed task");
  if (f->nchunk > 0) return run_chunk(L, f, base, n);
  st = lua_pcall(L, n - 1, LUA_MULTRET, 2);
  if (st == LUA_OK) {
    f->result = loom_encode(L, base + 1, lua_gettop(L) - base,
                            LOOM_AT_RESULT, 0, 1);
    return 0;
  }
  /* the error value is at the top: send it and the traceback */
  st = lua_gettop(L);
  crossable_error(L, st);
  push_traceback(L);
  f->failed = 1;
  f->result = loom_encode(L, st, 2, LOOM_AT_VALUE, 0, 1);
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

static void worker_run(lua_State *L, loom_future *f) {
  int st;
  lua_settop(L, 0);
  lua_pushcfunction(L, run_task);
  lua_pushlightuserdata(L, f);
  st = lua_pcall(L, 1, 0, 0);
  if (st == LUA_OK) return;
  /* The task could not start, or its results could not be copied, or
  ** the worker ran out of memory outside the task's own code. */
  loom_msg_free(f->result);
  f->result = NULL;
  f->failed = 0;
  f->errmsg = safe_error_text(L, -1);
  if (st != LUA_ERRMEM && lua_type(L, -1) == LUA_TTABLE)
    f->errkind = "transfer";   /* loom's own error: results not copyable */
  /* else: raised to the caller as a plain string (NULL: out of memory) */
  lua_settop(L, 0);
}

typedef struct worker_arg {
  loom_pool *pool;
  int index;
} worker_arg;

/* Protected: set the worker's state up and run init.  [1] = pool. */
static int worker_setup(lua_State *L) {
  loom_pool *p = (loom_pool *)lua_touserdata(L, 1);
  int n;
  loom_open_worker_state(L);
  lua_getglobal(L, "package");
  if (p->path) {
    lua_pushstring(L, p->path);
    lua_setfield(L, -2, "path");
  }
  if (p->cpath) {
    lua_pushstring(L, p->cpath);
    lua_setfield(L, -2, "cpath");
  }
  lua_pop(L, 1);
  if (p->init) {
    lua_settop(L, 1);
    lua_pushcfunction(L, msghandler);
    n = loom_decode(L, p->init->data, p->init->len, 1, p->init);
    if (lua_pcall(L, n - 1, 0, 2) != LUA_OK) return lua_error(L);
  }
  return 0;
}

static void *worker_main(void *arg) {
  worker_arg wa = *(worker_arg *)arg;
  loom_pool *p = wa.pool;
  loom_future *done = NULL;   /* finished; the queue's ref still to drop */
  lua_State *L;
  char *broken = NULL;
  loom_free(arg);
  {
    /* the kernel keeps 15 characters: as much of the prefix as fits
    ** beside the worker number */
    char name[32], num[12];
    int nl = snprintf(num, sizeof num, "-%d", wa.index + 1);
    snprintf(name, sizeof name, "%.*s%s", 15 - nl,
             p->name ? p->name : "loom", num);
    pthread_setname_np(pthread_self(), name);
  }
  L = lua_newstate(loom_lua_alloc, NULL);
  if (L == NULL) broken = loom_strdup("cannot create a worker state");
  else {
    lua_pushcfunction(L, worker_setup);
    lua_pushlightuserdata(L, p);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
      broken = safe_error_text(L, -1);
      if (broken == NULL) broken = loom_strdup("init failed");
    }
    lua_settop(L, 0);
  }
  pthread_mutex_lock(&p->mu);
  if (broken != NULL || L == NULL) {
    /* init failed: the executor is broken; fail all queued work */
    loom_future *f;
    if (p->broken == NULL) {
      p->broken = broken ? broken : loom_strdup("init failed");
      broken = NULL;
    }
    while ((f = p->head) != NULL) {
      p->head = f->next;
      if (p->head) p->head->prev = NULL; else p->tail = NULL;
      atomic_fetch_sub_explicit(&p->nqueued, 1, memory_order_relaxed);
      fail_locked(f, "broken", p->broken ? p->broken : "init failed");
      loom_future_decref(f);
    }
    p->nexited++;
    pthread_mutex_unlock(&p->mu);
    loom_free(broken);
    if (L) lua_close(L);
    return NULL;
  }
  for (;;) {
    loom_future *f;
    if (done != NULL && p->head == NULL) {   /* about to wait: let go now */
      pthread_mutex_unlock(&p->mu);
      loom_future_decref(done);
      done = NULL;
      pthread_mutex_lock(&p->mu);
    }
    while (p->head == NULL && !p->stopping) {
      /* Before sleeping, one worker spins a little: a task submitted
      ** meanwhile then costs the submitter no wake-up call. */
      if (p->nspinning == 0) {
        /* Spin long only while spinning pays (the last spin found a
        ** task); yield now and then, so that on a busy machine the
        ** spinner gives its core to the threads that have work. */
        int k, limit = p->spin_paid ? WORKER_SPIN : WORKER_SPIN / 16;
        p->nspinning = 1;
        pthread_mutex_unlock(&p->mu);
        for (k = 0; k < limit; k++) {
          if (atomic_load_explicit(&p->nqueued, memory_order_relaxed) > 0)
            break;
          if ((k & 127) == 127) sched_yield();
          else loom_cpu_relax();
        }
        pthread_mutex_lock(&p->mu);
        p->nspinning = 0;
        p->spin_paid = p->head != NULL;
        if (p->head != NULL || p->stopping) break;
      }
      p->nidle++;
      pthread_cond_wait(&p->work, &p->mu);
      p->nidle--;
    }
    f = p->head;
    if (f == NULL) break;   /* stopping and drained */
    atomic_fetch_sub_explicit(&p->nqueued, 1, memory_order_relaxed);
    p->head = f->next;
    if (p->head) p->head->prev = NULL; else p->tail = NULL;
    f->next = f->prev = NULL;
    if (p->broken) {   /* another worker's init failed */
      fail_locked(f, "broken", p->broken);
      pthread_mutex_unlock(&p->mu);
      if (done != NULL) loom_future_decref(done);
      done = NULL;
      loom_future_decref(f);
      pthread_mutex_lock(&p->mu);
      continue;
    }
    atomic_store_explicit(&f->state, LOOM_RUNNING, memory_order_release);
    pthread_mutex_unlock(&p->mu);
    if (done != NULL) loom_future_decref(done);
    worker_run(L, f);
    /* Completing and taking the next task share one hold of the lock;
    ** the queue's reference to f goes after the next unlock. */
    pthread_mutex_lock(&p->mu);
    loom_future_complete_locked(f, LOOM_FINISHED);
    done = f;
  }
  p->nexited++;
  pthread_mutex_unlock(&p->mu);
  if (done != NULL) loom_future_decref(done);
  lua_close(L);
  return NULL;
}

/* ----------------------------------------------------------------- pool */

loom_pool *loom_pool_new(loom_pool_config *cfg, const char **err) {
  loom_pool *p = (loom_pool *)loom_malloc(sizeof *p);
  pthread_attr_t attr;
  sigset_t all, old;
  int i;
  *err = "not enough memory";
  if (p == NULL) return NULL;
  memset(p, 0, sizeof *p);
  atomic_init(&p->refs, 1);
  atomic_init(&p->nqueued, 0);
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->work, NULL);
  p->nworkers = cfg->workers;
  p->init = cfg->init;
  cfg->init = NULL;
  p->threads = (pthread_t *)loom_malloc(sizeof(pthread_t)
                                        * (size_t)cfg->workers);
  if ((cfg->name && (p->name = loom_strdup(cfg->name)) == NULL)
      || (cfg->path && (p->path = loom_strdup(cfg->path)) == NULL)
      || (cfg->cpath && (p->cpath = loom_strdup(cfg->cpath)) == NULL)
      || p->threads == NULL) {
    loom_pool_decref(p);
    return NULL;
  }
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, WORKER_STACK);
  /* workers block every signal: they are the host's to handle */
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  for (i = 0; i < cfg->workers; i++) {
    worker_arg *wa = (worker_arg *)loom_malloc(sizeof *wa);
    if (wa != NULL) {
      wa->pool = p;
      wa->index = i;
      if (pthread_create(&p->threads[i], &attr, worker_main, wa) == 0)
        continue;
      loom_free(wa);
    }
    *err = "cannot start a worker thread";
    break;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  p->nstarted = i;
  if (i < cfg->workers) {   /* stop the ones that started */
    loom_pool_shutdown(p, 1);
    loom_pool_join(p);
    loom_pool_decref(p);
    return NULL;
  }
  return p;
}

int loom_pool_submit(loom_pool *p, loom_future *f) {
  int wake;
  pthread_mutex_lock(&p->mu);
  if (p->stopping) {
    pthread_mutex_unlock(&p->mu);
    return 1;
  }
  loom_pool_incref(p);
  f->pool = p;
  loom_future_incref(f);     /* the queue's reference */
  if (p->broken) {
    fail_locked(f, "broken", p->broken);
    pthread_mutex_unlock(&p->mu);
    loom_future_decref(f);
    return 0;
  }
  f->next = NULL;
  f->prev = p->tail;
  if (p->tail) p->tail->next = f; else p->head = f;
  p->tail = f;
  /* A spinning worker takes one task by itself; wake a sleeping one for
  ** any task beyond that (else it could wait behind a long task).  The
  ** signal goes after the unlock, so the woken worker does not at once
  ** block on the mutex we still hold. */
  wake = atomic_fetch_add_explicit(&p->nqueued, 1, memory_order_relaxed) + 1
             > p->nspinning
         && p->nidle > 0;
  pthread_mutex_unlock(&p->mu);
  if (wake) pthread_cond_signal(&p->work);
  return 0;
}

int loom_pool_cancel(loom_future *f) {
  loom_pool *p = f->pool;
  int r = 0, st;
  if (p == NULL) return 0;
  pthread_mutex_lock(&p->mu);
  st = atomic_load_explicit(&f->state, memory_order_relaxed);
  if (st == LOOM_PENDING) {
    if (f->prev) f->prev->next = f->next; else p->head = f->next;
    if (f->next) f->next->prev = f->prev; else p->tail = f->prev;
    f->next = f->prev = NULL;
    atomic_fetch_sub_explicit(&p->nqueued, 1, memory_order_relaxed);
    loom_future_complete_locked(f, LOOM_CANCELLED);
    r = 2;
  }
  else if (st == LOOM_CANCELLED) r = 1;
  pthread_mutex_unlock(&p->mu);
  if (r == 2) loom_future_decref(f);   /* the queue's reference */
  return r != 0;
}

void loom_pool_shutdown(loom_pool *p, int cancel_futures) {
  loom_future *cancelled = NULL, *f;
  pthread_mutex_lock(&p->mu);
  p->stopping = 1;
  if (cancel_futures) {
    while ((f = p->head) != NULL) {
      p->head = f->next;
      loom_future_complete_locked(f, LOOM_CANCELLED);
      f->next = cancelled;   /* decref outside the lock */
      cancelled = f;
    }
    p->tail = NULL;
    atomic_store_explicit(&p->nqueued, 0, memory_order_relaxed);
  }
  pthread_cond_broadcast(&p->work);
  pthread_mutex_unlock(&p->mu);
  while ((f = cancelled) != NULL) {
    cancelled = f->next;
    f->next = f->prev = NULL;
    loom_future_decref(f);
  }
}

void loom_pool_join(loom_pool *p) {
  int i, n;
  pthread_mutex_lock(&p->mu);
  if (p->joined) {
    pthread_mutex_unlock(&p->mu);
    return;
  }
  p->joined = 1;
  n = p->nstarted;
  pthread_mutex_unlock(&p->mu);
  for (i = 0; i < n; i++) pthread_join(p->threads[i], NULL);
}
