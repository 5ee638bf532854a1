/*
** pool.c -- the thread pool: a task queue and worker threads.
**
** Design (after libuv's threadpool): one mutex (the sched's mu) and one
** condition variable (work).  A worker loops with the lock held, sleeping
** while the queue is empty; a submit signals only when a worker is idle.
** Shutdown sets 'stopping' and wakes everyone; workers drain the queue
** and exit; join waits for all of them.
**
** Each worker owns one lua_State, created and closed on its own thread;
** no other thread ever touches it.  All Lua work on a worker runs inside
** lua_pcall (task.c), and no Lua call is made with the lock held.
**
** References: the executor userdata, every future, and the module record
** of the creating state (until it joins the workers) each hold one.
**
** Stopping a running task (cancel{running = true}, task_timeout,
** shutdown{cancel_running = true}) completes its future at once, under the
** lock, then asks the worker's state to stop (loom_task_stop, task.c);
** whatever the task still produces is dropped (loom_future_finish_locked).
** With task_timeout, a watchdog thread finds overdue tasks.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom.h"

#define WORKER_STACK (4u << 20)
#define WORKER_SPIN 4000   /* pauses: some tens of microseconds */

typedef struct loom_pool loom_pool;

typedef struct worker {
  loom_pool *pool;
  int index;
  pthread_t thread;
  loom_intr intr;          /* stops the task its state runs */
  loom_memlimit mem;       /* its state's allocator, with memory_limit */
  /* Under the pool's lock: */
  loom_future *cur;        /* the running task's future, or NULL */
  double started;          /* when it started (with task_timeout) */
} worker;

struct loom_pool {
  loom_sched base;         /* first; base.mu guards every field below */
  pthread_cond_t work;     /* workers sleep here while the queue is empty */
  pthread_cond_t exited;   /* signalled as each worker ends */
  loom_fqueue q;            /* the pending futures, one ref each */
  int nworkers, nidle, nstarted, nexited;
  int nspinning;           /* a worker is spinning for work (at most one) */
  int spin_paid;           /* the last spin found a task */
  atomic_int nqueued;      /* tasks in the queue, readable without mu */
  int stopping;            /* shutdown: accept no more tasks */
  int joined;
  char *broken;            /* init failed: its message (or NOMEM) */
  worker *workers;
  char *name, *path, *cpath;
  loom_msg *init;          /* function and init_args, or NULL */
  loom_preload *preload;   /* the creator's C module loaders, or NULL */
  lua_CFunction open_core; /* opens loom.core in a worker state */
  double task_timeout;     /* seconds; 0: none */
  size_t memory_limit;     /* bytes per worker state; 0: none */
  pthread_t watchdog;      /* with task_timeout: finds overdue tasks */
  int watching;            /* the watchdog runs (until join ends it) */
  pthread_cond_t watch;    /* wakes the watchdog to end */
};

#define POOL(s) ((loom_pool *)(s))

/* The message of a pool broken by a failure too short of memory to say
** more (never freed). */
static char NOMEM[] = "not enough memory";

static void pool_free(loom_sched *s) {
  loom_pool *p = POOL(s);
  /* the workers were joined before the module record let go */
  int i;
  pthread_cond_destroy(&p->work);
  pthread_cond_destroy(&p->exited);
  pthread_cond_destroy(&p->watch);
  if (p->workers)
    for (i = 0; i < p->nworkers; i++) loom_intr_destroy(&p->workers[i].intr);
  loom_msg_free(p->init);
  loom_free(p->preload);
  if (p->broken != NOMEM) loom_free(p->broken);
  loom_free(p->workers);
  loom_free(p->name);
  loom_free(p->path);
  loom_free(p->cpath);
  loom_free(p);
}

static int pool_nworkers(loom_sched *s) { return POOL(s)->nworkers; }

/* Take the first queued future (mu held), or NULL. */
static loom_future *dequeue_locked(loom_pool *p) {
  loom_future *f = loom_fqueue_pop(&p->q);
  if (f != NULL)
    atomic_fetch_sub_explicit(&p->nqueued, 1, memory_order_relaxed);
  return f;
}

/* A running task to stop once the lock is let go. */
typedef struct stopreq {
  worker *wk;
  unsigned gen;
} stopreq;

/* With the lock held: end the running task of wk now (its future is
** completed as 'state', or failed with a loom condition when kind is set)
** and mark its state to stop; returns the task number for
** loom_task_stop, to be called after the unlock. */
static unsigned stop_locked(worker *wk, const char *kind, const char *msg) {
  unsigned gen = atomic_load(&wk->intr.gen);
  atomic_store(&wk->intr.stop, gen);
  if (kind) loom_future_fail_locked(wk->cur, kind, msg);
  else loom_future_complete_locked(wk->cur, LOOM_CANCELLED);
  return gen;
}

/* ------------------------------------------------------------- a worker */

static void name_thread(loom_pool *p, int index) {
  /* the kernel keeps 15 characters: as much of the prefix as fits beside
  ** the worker number */
  char name[32], num[12];
  int nl = snprintf(num, sizeof num, "-%d", index + 1);
  snprintf(name, sizeof name, "%.*s%s", 15 - nl,
           p->name ? p->name : "loom", num);
  pthread_setname_np(pthread_self(), name);
}

/* A worker's end: after its state is closed, so that join waits for no
** Lua code. */
static void worker_exit(loom_pool *p) {
  pthread_mutex_lock(&p->base.mu);
  p->nexited++;
  pthread_cond_broadcast(&p->exited);
  pthread_mutex_unlock(&p->base.mu);
}

/* init failed (or no state): the executor is broken; fail all queued
** work, now and (in submit) later.  Takes broken (NULL: even its message
** ran out of memory). */
static void worker_broken(loom_pool *p, char *broken) {
  loom_future *f, *failed = NULL;
  pthread_mutex_lock(&p->base.mu);
  if (p->broken == NULL) {
    p->broken = broken ? broken : NOMEM;
    broken = NULL;
  }
  while ((f = dequeue_locked(p)) != NULL) {
    loom_future_fail_locked(f, "broken", p->broken);
    f->next = failed;   /* their queue references go after the unlock */
    failed = f;
  }
  pthread_mutex_unlock(&p->base.mu);
  while ((f = failed) != NULL) {
    failed = f->next;
    f->next = NULL;
    loom_future_decref(f);
  }
  loom_free(broken);
}

/* Make the worker's state and run init; NULL, or why it failed. */
static char *worker_start(worker *wk, lua_State **out) {
  loom_pool *p = wk->pool;
  lua_State *L;
  char *err;
  if (p->memory_limit > 0) {
    wk->mem.used = 0;
    wk->mem.limit = p->memory_limit;
    L = lua_newstate(loom_lua_alloc_limited, &wk->mem);
  }
  else L = lua_newstate(loom_lua_alloc, NULL);
  *out = L;
  if (L == NULL) err = loom_strdup("not enough memory");
  else if ((err = loom_task_preload(L, p->preload)) == NULL)
    err = loom_task_setup(L, p->open_core, p->path, p->cpath, p->init,
                          &wk->intr);
  if (err != NULL && p->memory_limit > 0
      && strcmp(err, "not enough memory") == 0) {
    char msg[128];
    snprintf(msg, sizeof msg, "memory_limit (%lu bytes) is too small to "
             "start a worker: not enough memory",
             (unsigned long)p->memory_limit);
    loom_free(err);
    err = loom_strdup(msg);
    if (err == NULL) err = loom_strdup("not enough memory");
  }
  return err;
}

static void *worker_main(void *arg) {
  worker *wk = (worker *)arg;
  loom_pool *p = wk->pool;
  loom_future *done = NULL;   /* finished; the queue's ref still to drop */
  lua_State *L;
  char *broken;
  int stopped = 0;            /* the last task was stopped: unhook */
  name_thread(p, wk->index);
  broken = worker_start(wk, &L);
  if (broken != NULL || L == NULL) {
    worker_broken(p, broken);
    if (L) lua_close(L);
    worker_exit(p);
    return NULL;
  }
  pthread_mutex_lock(&p->base.mu);
  for (;;) {
    loom_future *f;
    loom_outcome o;
    if (done != NULL && p->q.head == NULL) {   /* about to wait: let go now */
      pthread_mutex_unlock(&p->base.mu);
      loom_future_decref(done);
      done = NULL;
      pthread_mutex_lock(&p->base.mu);
    }
    while (p->q.head == NULL && !p->stopping) {
      /* Before sleeping, one worker spins a little: a task submitted
      ** meanwhile then costs the submitter no wake-up call. */
      if (p->nspinning == 0) {
        /* Spin long only while spinning pays (the last spin found a
        ** task); yield now and then, so that on a busy machine the
        ** spinner gives its core to the threads that have work. */
        int k, limit = p->spin_paid ? WORKER_SPIN : WORKER_SPIN / 16;
        p->nspinning = 1;
        pthread_mutex_unlock(&p->base.mu);
        for (k = 0; k < limit; k++) {
          if (atomic_load_explicit(&p->nqueued, memory_order_relaxed) > 0)
            break;
          if ((k & 127) == 127) sched_yield();
          else loom_cpu_relax();
        }
        pthread_mutex_lock(&p->base.mu);
        p->nspinning = 0;
        p->spin_paid = p->q.head != NULL;
        if (p->q.head != NULL || p->stopping) break;
      }
      p->nidle++;
      pthread_cond_wait(&p->work, &p->base.mu);
      p->nidle--;
    }
    f = dequeue_locked(p);
    if (f == NULL) break;   /* stopping and drained */
    if (p->broken) {   /* another worker's init failed */
      loom_future_fail_locked(f, "broken", p->broken);
      pthread_mutex_unlock(&p->base.mu);
      if (done != NULL) loom_future_decref(done);
      done = NULL;
      loom_future_decref(f);
      pthread_mutex_lock(&p->base.mu);
      continue;
    }
    /* a new task number: a stop of the last one no longer applies */
    atomic_store_explicit(&wk->intr.gen, atomic_load(&wk->intr.gen) + 1,
                          memory_order_release);
    atomic_store_explicit(&f->state, LOOM_RUNNING, memory_order_release);
    f->runner = wk;
    wk->cur = f;
    if (p->task_timeout > 0) wk->started = loom_now();
    pthread_mutex_unlock(&p->base.mu);
    if (done != NULL) loom_future_decref(done);
    if (stopped) loom_task_unstop(&wk->intr);
    loom_task_run(L, f, &o);
    /* Completing and taking the next task share one hold of the lock;
    ** the queue's reference to f goes after the next unlock. */
    pthread_mutex_lock(&p->base.mu);
    f->runner = NULL;
    wk->cur = NULL;
    loom_future_finish_locked(f, &o);
    stopped = atomic_load(&wk->intr.stop) == atomic_load(&wk->intr.gen);
    done = f;
  }
  pthread_mutex_unlock(&p->base.mu);
  if (done != NULL) loom_future_decref(done);
  pthread_mutex_lock(&wk->intr.mu);
  wk->intr.L = NULL;   /* no stop may touch the state from here on */
  pthread_mutex_unlock(&wk->intr.mu);
  lua_close(L);
  worker_exit(p);
  return NULL;
}

/*
** The watchdog (with task_timeout): it sleeps until the earliest deadline
** of the running tasks, or for task_timeout when none runs, since a task
** that starts later ends later; so starting a task costs it nothing.
*/
static void *watchdog_main(void *arg) {
  loom_pool *p = (loom_pool *)arg;
  char msg[96];
  stopreq *late = (stopreq *)loom_malloc(sizeof(stopreq)
                                         * (size_t)p->nworkers);
  snprintf(msg, sizeof msg, "the task ran longer than its time limit "
           "(task_timeout = %g s)", p->task_timeout);
  pthread_mutex_lock(&p->base.mu);
  while (p->watching) {
    double now = loom_now(), next = now + p->task_timeout;
    struct timespec ts;
    int i, n = 0;
    for (i = 0; i < p->nworkers; i++) {
      worker *wk = &p->workers[i];
      double end = wk->started + p->task_timeout;
      if (wk->cur == NULL || loom_future_isdone(wk->cur)) continue;
      if (end <= now && late != NULL) {
        late[n].wk = wk;
        late[n++].gen = stop_locked(wk, "timeout", msg);
      }
      else if (end < next) next = end;
    }
    if (n > 0) {
      pthread_mutex_unlock(&p->base.mu);
      for (i = 0; i < n; i++) loom_task_stop(&late[i].wk->intr, late[i].gen);
      pthread_mutex_lock(&p->base.mu);
      continue;
    }
    ts.tv_sec = (time_t)next;
    ts.tv_nsec = (long)((next - (double)ts.tv_sec) * 1e9);
    if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
    pthread_cond_timedwait(&p->watch, &p->base.mu, &ts);
  }
  pthread_mutex_unlock(&p->base.mu);
  loom_free(late);
  return NULL;
}

/* ------------------------------------------------------------- the ops */

static int pool_submit(loom_sched *s, loom_future *f) {
  loom_pool *p = POOL(s);
  int wake, r;
  pthread_mutex_lock(&s->mu);
  if ((r = loom_sched_admit(s, f, p->stopping, p->broken)) >= 0) return r;
  loom_fqueue_push(&p->q, f);
  /* A spinning worker takes one task by itself; wake a sleeping one for
  ** any task beyond that (else it could wait behind a long task).  The
  ** signal goes after the unlock, so the woken worker does not at once
  ** block on the mutex we still hold. */
  wake = atomic_fetch_add_explicit(&p->nqueued, 1, memory_order_relaxed) + 1
             > p->nspinning
         && p->nidle > 0;
  pthread_mutex_unlock(&s->mu);
  if (wake) pthread_cond_signal(&p->work);
  return 0;
}

static int pool_cancel(loom_sched *s, loom_future *f, int running) {
  loom_pool *p = POOL(s);
  worker *wk = NULL;
  unsigned gen = 0;
  int r = 0, st;
  pthread_mutex_lock(&s->mu);
  st = atomic_load_explicit(&f->state, memory_order_relaxed);
  if (st == LOOM_PENDING) {
    loom_fqueue_remove(&p->q, f);
    atomic_fetch_sub_explicit(&p->nqueued, 1, memory_order_relaxed);
    loom_future_complete_locked(f, LOOM_CANCELLED);
    r = 2;
  }
  else if (st == LOOM_RUNNING && running && f->runner != NULL) {
    wk = (worker *)f->runner;
    gen = stop_locked(wk, NULL, NULL);
    r = 1;
  }
  else if (st == LOOM_CANCELLED) r = 1;
  pthread_mutex_unlock(&s->mu);
  if (r == 2) loom_future_decref(f);   /* the queue's reference */
  if (wk != NULL) loom_task_stop(&wk->intr, gen);
  return r != 0;
}

static void pool_shutdown(loom_sched *s, int cancel_futures,
                          int cancel_running) {
  loom_pool *p = POOL(s);
  loom_future *cancelled = NULL, *f;
  stopreq *stops = NULL;
  int i, n = 0;
  if (cancel_running)   /* out of memory: the running ones go on */
    stops = (stopreq *)loom_malloc(sizeof(stopreq) * (size_t)p->nworkers);
  pthread_mutex_lock(&s->mu);
  p->stopping = 1;
  if (cancel_futures) {
    while ((f = dequeue_locked(p)) != NULL) {
      loom_future_complete_locked(f, LOOM_CANCELLED);
      f->next = cancelled;   /* decref outside the lock */
      cancelled = f;
    }
  }
  if (stops != NULL)
    for (i = 0; i < p->nworkers; i++) {
      worker *wk = &p->workers[i];
      if (wk->cur == NULL || loom_future_isdone(wk->cur)) continue;
      stops[n].wk = wk;
      stops[n++].gen = stop_locked(wk, NULL, NULL);
    }
  pthread_cond_broadcast(&p->work);
  pthread_mutex_unlock(&s->mu);
  for (i = 0; i < n; i++) loom_task_stop(&stops[i].wk->intr, stops[i].gen);
  loom_free(stops);
  while ((f = cancelled) != NULL) {
    cancelled = f->next;
    f->next = NULL;
    loom_future_decref(f);
  }
}

static int pool_join(loom_sched *s, const struct timespec *deadline) {
  loom_pool *p = POOL(s);
  int i, n, watching;
  pthread_mutex_lock(&s->mu);
  while (!p->joined && p->nexited < p->nstarted) {
    if (deadline == NULL) pthread_cond_wait(&p->exited, &s->mu);
    else if (pthread_cond_timedwait(&p->exited, &s->mu, deadline)
             == ETIMEDOUT && p->nexited < p->nstarted) {
      pthread_mutex_unlock(&s->mu);
      return 0;
    }
  }
  if (p->joined) {
    pthread_mutex_unlock(&s->mu);
    return 1;
  }
  p->joined = 1;
  n = p->nstarted;
  watching = p->watching;
  p->watching = 0;
  pthread_cond_signal(&p->watch);
  pthread_mutex_unlock(&s->mu);
  /* every worker has ended its work: these return at once */
  for (i = 0; i < n; i++) pthread_join(p->workers[i].thread, NULL);
  if (watching) pthread_join(p->watchdog, NULL);
  return 1;
}

static const loom_sched_ops pool_ops = {
  pool_submit, pool_cancel, pool_shutdown, pool_join, pool_nworkers,
  pool_free
};

/* ----------------------------------------------------------------- pool */

loom_sched *loom_pool_new(loom_pool_config *cfg, const char **err) {
  loom_pool *p = (loom_pool *)loom_malloc(sizeof *p);
  pthread_attr_t attr;
  pthread_condattr_t ca;
  sigset_t all, old;
  int i, failed;
  *err = "not enough memory";
  if (p == NULL) return NULL;
  memset(p, 0, sizeof *p);
  loom_sched_init(&p->base, &pool_ops);
  atomic_init(&p->nqueued, 0);
  pthread_cond_init(&p->work, NULL);
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&p->exited, &ca);
  pthread_cond_init(&p->watch, &ca);
  pthread_condattr_destroy(&ca);
  p->nworkers = cfg->workers;
  p->task_timeout = cfg->task_timeout;
  p->memory_limit = cfg->memory_limit;
  p->init = cfg->init;
  cfg->init = NULL;
  p->preload = cfg->preload;
  cfg->preload = NULL;
  p->open_core = cfg->open_core;
  p->workers = (worker *)loom_malloc(sizeof(worker) * (size_t)cfg->workers);
  if (p->workers != NULL) {
    memset(p->workers, 0, sizeof(worker) * (size_t)cfg->workers);
    for (i = 0; i < cfg->workers; i++) loom_intr_init(&p->workers[i].intr);
  }
  if ((cfg->name && (p->name = loom_strdup(cfg->name)) == NULL)
      || (cfg->path && (p->path = loom_strdup(cfg->path)) == NULL)
      || (cfg->cpath && (p->cpath = loom_strdup(cfg->cpath)) == NULL)
      || p->workers == NULL) {
    loom_sched_decref(&p->base);
    return NULL;
  }
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, WORKER_STACK);
  /* workers block every signal: they are the host's to handle */
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  for (i = 0; i < cfg->workers; i++) {
    worker *wk = &p->workers[i];
    wk->pool = p;
    wk->index = i;
    if (pthread_create(&wk->thread, &attr, worker_main, wk) != 0) {
      *err = "cannot start a worker thread";
      break;
    }
  }
  failed = i < cfg->workers;
  if (!failed && p->task_timeout > 0) {
    p->watching = 1;
    if (pthread_create(&p->watchdog, &attr, watchdog_main, p) != 0) {
      p->watching = 0;
      *err = "cannot start the watchdog thread";
      failed = 1;
    }
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  pthread_mutex_lock(&p->base.mu);
  p->nstarted = i;
  pthread_mutex_unlock(&p->base.mu);
  if (failed) {   /* stop the ones that started */
    pool_shutdown(&p->base, 1, 1);
    pool_join(&p->base, NULL);
    loom_sched_decref(&p->base);
    return NULL;
  }
  return &p->base;
}
