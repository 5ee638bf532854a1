/*
** future.c -- futures and the waiters that block on them.
**
** A future is shared by the caller's userdata and, while queued or
** running, by its pool: both hold a reference.  Its state moves
** PENDING -> RUNNING -> FINISHED, or to CANCELLED from PENDING or
** RUNNING, always under its sched's mutex, and is also readable without
** the lock (an atomic), which lets result() skip all locking once the
** future is done.  The outcome is written once, under that mutex, before
** the state says done, and never changes after.
**
** Futures know their pool only as a loom_sched: its mutex and its ops.
** Whichever kind of pool runs a future, it completes it here.
**
** Waiting: a thread that waits on one future or many builds a waiter and
** links it into each future's waiter list (under that future's sched
** mutex).  Completion fires every linked waiter, so a result is never lost
** between the check and the sleep: the check and the linking happen under
** the same lock as the completion.  Lock order: sched->mu, then w->mu.
**
** Event loops wait on descriptors instead (see loom_wakefd): a queueing
** waiter may have one, readable while its done list is not empty, and a
** future gets one of its own when first asked.  Completion writes them
** (a non-blocking write, under the same locks); nobody who never asks
** for a descriptor pays a system call for it.
*/
#include <errno.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/eventfd.h>
#else
#include <fcntl.h>
#endif

#include "loom.h"

/* ---------------------------------------------------------------- scheds */

void loom_sched_init(loom_sched *s, const loom_sched_ops *ops) {
  s->ops = ops;
  atomic_init(&s->refs, 1);
  pthread_mutex_init(&s->mu, NULL);
}

void loom_sched_incref(loom_sched *s) {
  atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
}

void loom_sched_decref(loom_sched *s) {
  if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
    return;
  pthread_mutex_destroy(&s->mu);
  s->ops->free(s);
}

/* --------------------------------------------------------------- futures */

void loom_outcome_free(loom_outcome *o) {
  loom_msg_free(o->result);
  loom_free(o->errmsg);
  memset(o, 0, sizeof *o);
}

loom_future *loom_future_new(loom_msg *task) {
  loom_future *f = (loom_future *)loom_malloc(sizeof *f);
  if (f == NULL) return NULL;
  memset(f, 0, sizeof *f);
  atomic_init(&f->refs, 1);
  atomic_init(&f->state, LOOM_PENDING);
  f->task = task;
  return f;
}

void loom_future_incref(loom_future *f) {
  atomic_fetch_add_explicit(&f->refs, 1, memory_order_relaxed);
}

void loom_future_decref(loom_future *f) {
  if (atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel) != 1)
    return;
  loom_msg_free(f->task);
  loom_outcome_free(&f->out);
  if (f->pollfd) {
    loom_wakefd_close(f->pollfd);
    loom_free(f->pollfd);
  }
  if (f->sched) loom_sched_decref(f->sched);
  loom_free(f);
}

int loom_future_isdone(loom_future *f) {
  int s = atomic_load_explicit(&f->state, memory_order_acquire);
  return s == LOOM_FINISHED || s == LOOM_CANCELLED;
}

/*
** The waiters first, the state next, f's own descriptor last.  Whoever
** sees f done (its state is read without the lock) then finds it in every
** queue it was added to, each queue's descriptor readable; a waiter that
** wakes before the state is stored unwatches f (under sched->mu) before it
** looks, so it sees f done too.  f's descriptor is readable only once f
** says done, so a loop woken by it never finds f still running.
*/
void loom_future_complete_locked(loom_future *f, int state) {
  loom_wlink *l;
  for (l = f->waiters; l != NULL; l = l->next) {
    loom_waiter *w = l->w;
    pthread_mutex_lock(&w->mu);
    w->fired++;
    if (w->queue) loom_waiter_push_locked(w, l);
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
  }
  atomic_store_explicit(&f->state, state, memory_order_release);
  if (f->pollfd) loom_wakefd_signal(f->pollfd);
}

int loom_future_finish_locked(loom_future *f, loom_outcome *o) {
  if (loom_future_isdone(f)) {   /* cancelled, or timed out, as it ran */
    loom_outcome_free(o);
    return 0;
  }
  f->out = *o;
  memset(o, 0, sizeof *o);
  loom_future_complete_locked(f, LOOM_FINISHED);
  return 1;
}

void loom_future_fail_locked(loom_future *f, const char *kind,
                             const char *msg) {
  loom_outcome o;
  memset(&o, 0, sizeof o);
  o.errkind = kind;
  o.errmsg = loom_strdup(msg);   /* NULL (out of memory) is reported */
  loom_future_finish_locked(f, &o);
}

/* --------------------------------------------------- pending futures */

void loom_fqueue_push(loom_fqueue *q, loom_future *f) {
  f->next = NULL;
  f->prev = q->tail;
  if (q->tail) q->tail->next = f; else q->head = f;
  q->tail = f;
}

void loom_fqueue_push_front(loom_fqueue *q, loom_future *f) {
  f->prev = NULL;
  f->next = q->head;
  if (q->head) q->head->prev = f; else q->tail = f;
  q->head = f;
}

loom_future *loom_fqueue_pop(loom_fqueue *q) {
  loom_future *f = q->head;
  if (f != NULL) loom_fqueue_remove(q, f);
  return f;
}

void loom_fqueue_remove(loom_fqueue *q, loom_future *f) {
  if (f->prev) f->prev->next = f->next; else q->head = f->next;
  if (f->next) f->next->prev = f->prev; else q->tail = f->prev;
  f->next = f->prev = NULL;
}

int loom_sched_admit(loom_sched *s, loom_future *f, int stopping,
                     const char *broken) {
  if (stopping) {
    pthread_mutex_unlock(&s->mu);
    return 1;
  }
  loom_sched_incref(s);
  f->sched = s;
  loom_future_incref(f);     /* the pool's reference */
  if (broken == NULL) return -1;
  loom_future_fail_locked(f, "broken", broken);
  pthread_mutex_unlock(&s->mu);
  loom_future_decref(f);
  return 0;
}

static void wakefd_drain(loom_wakefd *e);

/* --------------------------------------------------------------- waiters */

void loom_waiter_init(loom_waiter *w, int queue) {
  pthread_condattr_t ca;
  pthread_mutex_init(&w->mu, NULL);
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&w->cv, &ca);
  pthread_condattr_destroy(&ca);
  w->fired = 0;
  w->queue = queue;
  w->dhead = w->dtail = NULL;
  w->wake = NULL;
}

void loom_waiter_destroy(loom_waiter *w) {
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
}

int loom_future_watch(loom_future *f, loom_wlink *l, loom_waiter *w) {
  pthread_mutex_t *mu = &f->sched->mu;
  l->f = f;
  pthread_mutex_lock(mu);
  if (loom_future_isdone(f)) {
    pthread_mutex_unlock(mu);
    l->w = NULL;
    return 1;
  }
  l->w = w;
  l->prev = NULL;
  l->next = f->waiters;
  if (f->waiters) f->waiters->prev = l;
  f->waiters = l;
  pthread_mutex_unlock(mu);
  return 0;
}

void loom_future_unwatch(loom_future *f, loom_wlink *l) {
  pthread_mutex_t *mu = &f->sched->mu;
  if (l->w == NULL) return;
  pthread_mutex_lock(mu);
  if (l->prev) l->prev->next = l->next;
  else f->waiters = l->next;
  if (l->next) l->next->prev = l->prev;
  pthread_mutex_unlock(mu);
  l->w = NULL;
}

int loom_waiter_wait(loom_waiter *w, const struct timespec *deadline,
                     loom_intr *in) {
  int fired;
  loom_intr_enter(in, &w->mu, &w->cv);
  pthread_mutex_lock(&w->mu);
  while (!w->fired && !loom_intr_fired(in)) {
    if (deadline == NULL) pthread_cond_wait(&w->cv, &w->mu);
    else if (pthread_cond_timedwait(&w->cv, &w->mu, deadline) == ETIMEDOUT)
      break;
  }
  fired = w->fired;
  pthread_mutex_unlock(&w->mu);
  loom_intr_leave(in);
  return fired;
}

void loom_waiter_push_locked(loom_waiter *w, loom_wlink *l) {
  l->dnext = NULL;
  if (w->dtail) w->dtail->dnext = l; else w->dhead = l;
  w->dtail = l;
  if (w->wake) loom_wakefd_signal(w->wake);
}

loom_wlink *loom_waiter_pop_locked(loom_waiter *w) {
  loom_wlink *l = w->dhead;
  if (l != NULL) {
    w->dhead = l->dnext;
    if (w->dhead == NULL) {
      w->dtail = NULL;
      if (w->wake) wakefd_drain(w->wake);
    }
  }
  return l;
}

/* ------------------------------------------------------- wake descriptors */

#if !defined(__linux__)
static int set_flags(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -1;
  return fcntl(fd, F_SETFD, FD_CLOEXEC);
}
#endif

int loom_wakefd_open(loom_wakefd *e) {
  e->up = 0;
#if defined(__linux__)
  e->r = e->w = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  return e->r < 0 ? errno : 0;
#else
  {
    int fds[2], err;
    if (pipe(fds) != 0) return errno;
    if (set_flags(fds[0]) != 0 || set_flags(fds[1]) != 0) {
      err = errno;
      close(fds[0]);
      close(fds[1]);
      return err;
    }
    e->r = fds[0];
    e->w = fds[1];
    return 0;
  }
#endif
}

void loom_wakefd_close(loom_wakefd *e) {
  if (e->r >= 0) close(e->r);
  if (e->w >= 0 && e->w != e->r) close(e->w);
  e->r = e->w = -1;
  e->up = 0;
}

/* One write makes it readable, and 'up' keeps it to one: a pipe never
** fills, an eventfd's counter never nears its limit. */
void loom_wakefd_signal(loom_wakefd *e) {
  ssize_t n;
  if (e->up) return;
  e->up = 1;
#if defined(__linux__)
  {
    uint64_t one = 1;
    do n = write(e->w, &one, sizeof one); while (n < 0 && errno == EINTR);
  }
#else
  do n = write(e->w, "", 1); while (n < 0 && errno == EINTR);
#endif
  (void)n;
}

static void wakefd_drain(loom_wakefd *e) {
  ssize_t n;
  if (!e->up) return;
  e->up = 0;
#if defined(__linux__)
  {
    uint64_t v;   /* reading an eventfd resets its counter */
    do n = read(e->r, &v, sizeof v); while (n < 0 && errno == EINTR);
  }
#else
  {
    char buf[16];
    do n = read(e->r, buf, sizeof buf); while (n > 0 || (n < 0 && errno == EINTR));
  }
#endif
  (void)n;
}

int loom_future_pollfd(loom_future *f) {
  loom_wakefd *e = f->pollfd;   /* only this thread sets it */
  int err;
  if (e != NULL) return e->r;
  e = (loom_wakefd *)loom_malloc(sizeof *e);
  if (e == NULL) {
    errno = ENOMEM;
    return -1;
  }
  if ((err = loom_wakefd_open(e)) != 0) {
    loom_free(e);
    errno = err;
    return -1;
  }
  /* under the lock that completion holds: done now, or signalled later */
  pthread_mutex_lock(&f->sched->mu);
  f->pollfd = e;
  if (loom_future_isdone(f)) loom_wakefd_signal(e);
  pthread_mutex_unlock(&f->sched->mu);
  return e->r;
}
