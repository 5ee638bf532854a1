/*
** procpool.c -- the process pool: worker processes and their manager.
**
** Design.  Each worker is a Lua interpreter started with posix_spawn
** (never fork: the host runs threads), in a process group of its own so
** that stopping it stops whatever it started, with only its pipes and
** shared files open (procspawn.c starts it; procworker.c is its side;
** proc.h has the protocol between them).  One manager thread per
** pool, as in CPython's process pool, waits in poll() on every worker's
** result pipe and process descriptor (pidfd) and on a wake-up eventfd,
** so that no death goes unnoticed: when a worker ends, its last results
** are read, then its task is failed ('crashed') or, if it had not started
** it, queued again, and a replacement starts.  Only when workers cannot
** be started at all (no interpreter, init fails) is the pool broken.
**
** The path of a task.  submit writes a task straight into the pipe of
** the worker with the fewest tasks in flight, with the lock held; when
** none can take it, it waits in the queue until results free a place.
** A worker may have up to LOOM_PW_DEPTH tasks in flight while its tasks
** are short (so it never waits for the next one), one while they are
** long (so none waits behind a long one).  As in CPython, a task is
** 'running' once it is handed to a worker process.  The frames for one
** worker go out in one write.  The writes never block: the pages each
** write can take in the pipe are counted (see charge()), and nothing is
** written that would not fit (the pipe is non-blocking all the same: a
** write that fails ends that worker, never stalls the pool); the parent
** also keeps the pipe's read end, so a write to a dead worker cannot
** raise SIGPIPE.  A payload larger than LOOM_PW_INLINE goes through a shared
** memory region (one each way per worker, reused so its pages stay
** warm), the frame in the pipe only naming it.
**
** Cancelling and limits.  The control page has a slot per task in
** flight: the worker claims a task (QUEUED -> STARTED, with the time)
** before it runs it, and cancel claims it first (QUEUED -> CANCELLED) or
** finds it started and kills the worker's group.  The manager's poll
** timeout follows the earliest deadline of the started tasks under
** task_timeout, and kills the worker of an overdue one.
**
** Locking.  The sched's mu guards the queue, the pool's flags and every
** worker field not marked as the manager's; the manager's own fields
** (input buffer, up region, what it learnt from a death) are touched by
** it alone.  Syscalls made with mu held never block: pipe writes that
** fit, kill, close.  Spawning, polling, reading and reaping happen with
** mu released.  References: like the thread pool's (a future in the
** queue or in flight holds one for the pool).
*/
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include "proc.h"

#define MANAGER_STACK (1u << 20)
#define SHORT_TASK 2e-3          /* seconds: below, a worker is pipelined */
#define SETUP_SEQ UINT64_MAX     /* downseq while the setup is in down */

#define PP(s) ((procpool *)(s))

static void wake_manager(procpool *p) {
  uint64_t one = 1;
  ssize_t r = write(p->wakefd, &one, sizeof one);
  (void)r;   /* a full counter wakes the manager all the same */
}

/* ------------------------------------------------------ queue and slots */

/* A done future whose pool reference goes after the unlock: on *list. */
static void drop_later(loom_future **list, loom_future *f) {
  f->next = *list;
  *list = f;
}

static void drop_all(loom_future *list) {
  while (list != NULL) {
    loom_future *f = list;
    list = f->next;
    f->next = NULL;
    loom_future_decref(f);
  }
}

/*
** The pipe pages a write of n bytes may take: the kernel fills whole new
** pages, after it may have put the write's first bytes into the page
** written last, when the pipe is not empty (and it is empty when nothing
** is charged: every task written was read, since its result came).
** Released when the task's result (or READY, for the setup) comes.
*/
static int charge(pworker *w, size_t n) {
  return (int)((n + LOOM_PW_PAGE - 1) / LOOM_PW_PAGE) + (w->pages > 0);
}

/* Whether w can take a task with a payload of len bytes now, and how:
** *shm set when through the down region. */
static int can_take(pworker *w, size_t len, int *shm) {
  size_t frame = sizeof(loom_pwframe) + len;
  if (w->state != W_LIVE || w->nflight >= w->depth) return 0;
  if (len <= LOOM_PW_INLINE && charge(w, frame) <= w->maxpages - w->pages) {
    *shm = 0;
    return 1;
  }
  if (!w->downbusy
      && charge(w, sizeof(loom_pwframe)) <= w->maxpages - w->pages) {
    *shm = 1;
    return 1;
  }
  return 0;
}

/* The worker with the fewest tasks in flight that can take a task of len
** bytes now (round robin among equals), or NULL. */
static pworker *pick_locked(procpool *p, size_t len, int *shm) {
  pworker *best = NULL;
  int k, s, bestn = INT_MAX;
  for (k = 0; k < p->nworkers && bestn > 0; k++) {
    pworker *w = &p->w[(p->rr + k) % p->nworkers];
    if (w->nflight < bestn && can_take(w, len, &s)) {
      best = w;
      bestn = w->nflight;
      *shm = s;
    }
  }
  if (best) p->rr = (int)(best - p->w + 1) % p->nworkers;
  return best;
}

/* End w's process group at once (cancel, timeout, shutdown, a write that
** failed, a malformed frame).  Its tasks are the caller's to complete; the
** manager sees the death and queues again those that had not started. */
static void kill_locked(pworker *w) {
  if (w->state != W_LIVE && w->state != W_CLOSED) return;
  if (kill(-w->pid, SIGKILL) != 0) kill(w->pid, SIGKILL);
  w->niov = 0;
  if (w->tfd >= 0) close(w->tfd);
  w->tfd = -1;
  w->state = W_KILLED;
}

/* Write the frames staged for w, in one go (they fit: see charge). */
static void flush_locked(pworker *w) {
  if (w->niov > 0 && w->tfd >= 0
      && loom_pw_write(w->tfd, w->iov, w->niov) != 0)
    kill_locked(w);
  w->niov = 0;
}

/* Close w's task pipe: it ends after the tasks it has. */
static void close_tasks_locked(pworker *w) {
  flush_locked(w);
  if (w->tfd >= 0) close(w->tfd);
  w->tfd = -1;
  if (w->state == W_LIVE) w->state = W_CLOSED;
}

/*
** Hand f to w (which can take it: can_take said how): f is in flight, its
** frame staged for flush_locked (if that write fails, w is killed, and f
** goes back to the queue when its end is seen).  Returns 1 when the
** manager must look (a deadline to watch).  If the payload cannot be
** placed, f fails (its pool reference then goes on *drop).
*/
static int send_locked(procpool *p, pworker *w, loom_future *f, int shm,
                       loom_future **drop) {
  loom_msg *m = f->task;
  uint64_t seq = w->seq0 + (uint64_t)w->nflight;
  int k = (int)(seq % LOOM_PW_DEPTH), c, wake = 0;
  loom_pwframe *fr = &w->out[k];
  memset(fr, 0, sizeof *fr);
  fr->len = m->len;
  fr->seq = seq;
  fr->nchunk = f->nchunk;
  fr->nseq = f->nseq;
  fr->kind = LOOM_PW_TASK;
  if (shm) {
    if (loom_pw_reserve(w, m->len) != 0) {
      loom_future_fail_locked(f, "transfer", "not enough memory to send "
                              "the task to a worker process");
      drop_later(drop, f);
      return 0;
    }
    memcpy(w->down + LOOM_PW_DATA, m->data, m->len);
    fr->flags = LOOM_PW_SHM;
    w->downbusy = 1;
    w->downseq = seq;
  }
  w->iov[w->niov].iov_base = fr;
  w->iov[w->niov++].iov_len = sizeof *fr;
  if (!shm) {
    w->iov[w->niov].iov_base = m->data;
    w->iov[w->niov++].iov_len = m->len;
  }
  c = charge(w, sizeof *fr + (shm ? 0 : m->len));
  atomic_store(&w->ctl->slot[k].started, 0);
  atomic_store(&w->ctl->slot[k].state, seq << 2 | LOOM_PW_QUEUED);
  w->pages += c;
  w->charge[k] = c;
  w->flight[k] = f;
  if (w->nflight++ == 0) {
    w->since = loom_now();
    if (p->task_timeout > 0 && p->untimed) wake = 1;
  }
  w->ntasks++;
  f->runner = w;
  atomic_store_explicit(&f->state, LOOM_RUNNING, memory_order_release);
  /* its last task: it ends after it, and a replacement starts */
  if (p->max_tasks > 0 && w->ntasks >= p->max_tasks) close_tasks_locked(w);
  return wake;
}

/* Hand queued tasks to the workers that can take them, in order; one
** write per worker. */
static int dispatch_locked(procpool *p, loom_future **drop) {
  int wake = 0, shm, i;
  pworker *w;
  while (p->q.head != NULL
         && (w = pick_locked(p, p->q.head->task->len, &shm)) != NULL)
    wake |= send_locked(p, w, loom_fqueue_pop(&p->q), shm, drop);
  for (i = 0; i < p->nworkers; i++) flush_locked(&p->w[i]);
  return wake;
}

/* No worker can start: fail what is queued, now and (in submit) later,
** and let the workers end after their tasks.  msg may be NULL (no
** memory). */
static void break_locked(procpool *p, const char *msg, loom_future **drop) {
  loom_future *f;
  int i;
  if (p->broken == NULL)
    p->broken = loom_strdup(msg ? msg : "not enough memory");
  while ((f = loom_fqueue_pop(&p->q)) != NULL) {
    loom_future_fail_locked(f, "broken", p->broken ? p->broken
                                                   : "not enough memory");
    drop_later(drop, f);
  }
  for (i = 0; i < p->nworkers; i++) close_tasks_locked(&p->w[i]);
}

/* ------------------------------------------------------------ the ops */

static int pp_submit(loom_sched *s, loom_future *f) {
  procpool *p = PP(s);
  pworker *w;
  loom_future *drop = NULL;
  int shm, wake = 0, r;
  pthread_mutex_lock(&s->mu);
  if ((r = loom_sched_admit(s, f, p->stopping, p->broken)) >= 0) return r;
  if (p->q.head == NULL && (w = pick_locked(p, f->task->len, &shm)) != NULL) {
    wake = send_locked(p, w, f, shm, &drop);
    flush_locked(w);
  }
  else loom_fqueue_push(&p->q, f);
  pthread_mutex_unlock(&s->mu);
  if (wake) wake_manager(p);
  drop_all(drop);
  return 0;
}

static int pp_cancel(loom_sched *s, loom_future *f, int running) {
  procpool *p = PP(s);
  int r = 0, st;
  pthread_mutex_lock(&s->mu);
  st = atomic_load_explicit(&f->state, memory_order_relaxed);
  if (st == LOOM_PENDING) {
    loom_fqueue_remove(&p->q, f);
    loom_future_complete_locked(f, LOOM_CANCELLED);
    r = 2;
  }
  else if (st == LOOM_CANCELLED) r = 1;
  else if (st == LOOM_RUNNING && running) {
    pworker *w = (pworker *)f->runner;
    int i;
    for (i = 0; i < w->nflight; i++) {
      uint64_t seq = w->seq0 + (uint64_t)i;
      unsigned long long want = seq << 2 | LOOM_PW_QUEUED;
      int k = (int)(seq % LOOM_PW_DEPTH);
      if (w->flight[k] != f) continue;
      /* not started: the worker will skip it; else end the worker */
      if (!atomic_compare_exchange_strong(&w->ctl->slot[k].state, &want,
                                          seq << 2 | LOOM_PW_CANCELLED))
        kill_locked(w);
      loom_future_complete_locked(f, LOOM_CANCELLED);
      r = 1;
      break;
    }
  }
  pthread_mutex_unlock(&s->mu);
  if (r == 2) loom_future_decref(f);   /* the queue's reference */
  return r != 0;
}

static void pp_shutdown(loom_sched *s, int cancel_futures,
                        int cancel_running) {
  procpool *p = PP(s);
  loom_future *drop = NULL, *f;
  int i, j;
  pthread_mutex_lock(&s->mu);
  p->stopping = 1;
  if (cancel_futures) {
    while ((f = loom_fqueue_pop(&p->q)) != NULL) {
      loom_future_complete_locked(f, LOOM_CANCELLED);
      drop_later(&drop, f);
    }
  }
  if (cancel_running) {
    for (i = 0; i < p->nworkers; i++) {
      pworker *w = &p->w[i];
      if (w->nflight == 0) continue;
      for (j = 0; j < w->nflight; j++) {
        f = w->flight[(w->seq0 + (uint64_t)j) % LOOM_PW_DEPTH];
        if (!loom_future_isdone(f))
          loom_future_complete_locked(f, LOOM_CANCELLED);
      }
      kill_locked(w);
    }
  }
  pthread_mutex_unlock(&s->mu);
  wake_manager(p);
  drop_all(drop);
}

static int pp_join(loom_sched *s, const struct timespec *deadline) {
  procpool *p = PP(s);
  pthread_mutex_lock(&s->mu);
  while (!p->manager_done) {
    if (deadline == NULL) pthread_cond_wait(&p->ended, &s->mu);
    else if (pthread_cond_timedwait(&p->ended, &s->mu, deadline)
             == ETIMEDOUT && !p->manager_done) {
      pthread_mutex_unlock(&s->mu);
      return 0;
    }
  }
  if (p->joined) {
    pthread_mutex_unlock(&s->mu);
    return 1;
  }
  p->joined = 1;
  pthread_mutex_unlock(&s->mu);
  pthread_join(p->manager, NULL);   /* it has ended: returns at once */
  return 1;
}

static int pp_nworkers(loom_sched *s) { return PP(s)->nworkers; }

static void pp_free(loom_sched *s) {
  procpool *p = PP(s);
  int i;
  /* the manager has ended and reaped every worker */
  for (i = 0; p->w && i < p->nworkers; i++) {
    pworker *w = &p->w[i];
    if (w->ctl) munmap(w->ctl, LOOM_PW_PAGE);
    if (w->down) munmap(w->down, w->downmap);
    if (w->up) munmap(w->up, w->upmap);
    if (w->ctlfd >= 0) close(w->ctlfd);
    if (w->downfd >= 0) close(w->downfd);
    if (w->upfd >= 0) close(w->upfd);
    loom_free(w->in);
  }
  if (p->wakefd >= 0) close(p->wakefd);
  pthread_cond_destroy(&p->ended);
  loom_free(p->broken);
  loom_free(p->interpreter);
  loom_free(p->chunk);
  loom_free(p->setup);
  loom_free(p->dones);
  loom_free(p->fds);
  loom_free(p->fdw);
  loom_free(p->w);
  loom_free(p);
}

static const loom_sched_ops procpool_ops = {
  pp_submit, pp_cancel, pp_shutdown, pp_join, pp_nworkers, pp_free
};

/* Start workers for the free slots while the pool has a use for them
** (mu held; released around each spawn). */
static void spawn_missing_locked(procpool *p, loom_future **drop) {
  char err[512];
  int i;
  for (i = 0; i < p->nworkers; i++) {
    pworker *w = &p->w[i];
    int r;
    if (w->state != W_FREE) continue;
    if (p->broken || (p->stopping && p->q.head == NULL)) return;
    w->state = W_STARTING;
    pthread_mutex_unlock(&p->base.mu);
    r = loom_pw_spawn(p, w, err, sizeof err);
    pthread_mutex_lock(&p->base.mu);
    if (r != 0) {
      w->state = W_FREE;
      break_locked(p, err, drop);
      return;
    }
    w->state = W_LIVE;
    w->ready = 0;
    w->nflight = 0;
    w->seq0 = 0;
    w->ntasks = 0;
    w->depth = 1;
    w->why = NULL;
    w->setup_charge = w->pages = charge(w, sizeof(loom_pwframe));
    w->downbusy = 1;
    w->downseq = SETUP_SEQ;
    w->eof = w->exited = 0;
    w->bad = NULL;
    w->status = -1;
    dispatch_locked(p, drop);
  }
}

/* ------------------------------------------------------------- results */

/* The up region mapped over at least need bytes (the worker grew it). */
static int up_map(pworker *w, size_t need) {
  struct stat st;
  void *m;
  if (w->upmap >= need) return 0;
  if (fstat(w->upfd, &st) != 0 || (size_t)st.st_size < need) return -1;
  m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, w->upfd, 0);
  if (m == MAP_FAILED) return -1;
  if (w->up) munmap(w->up, w->upmap);
  w->up = (unsigned char *)m;
  w->upmap = (size_t)st.st_size;
  return 0;
}

/* Turn the frames in w's input into dones (manager, mu not held).  A
** payload is copied out of the up region, which is then free again. */
static void parse_frames(procpool *p, pworker *w) {
  size_t pos = 0;
  while (p->ndones < p->capdones && w->inlen - pos >= sizeof(loom_pwframe)) {
    pdone *d = &p->dones[p->ndones];
    const unsigned char *src;
    size_t len, need = sizeof(loom_pwframe);
    int shm;
    memcpy(&d->fr, w->in + pos, sizeof d->fr);
    shm = d->fr.flags & LOOM_PW_SHM;
    if (d->fr.len > SIZE_MAX / 2) {   /* malformed: end the worker */
      w->eof = 1;
      w->bad = "sent a malformed message and was stopped";
      break;
    }
    len = (size_t)d->fr.len;
    if (!shm) need += len;
    if (w->inlen - pos < need) break;
    src = w->in + pos + sizeof(loom_pwframe);
    if (shm) {
      if (up_map(w, LOOM_PW_DATA + len) != 0) src = NULL;
      else src = w->up + LOOM_PW_DATA;
    }
    d->w = w;
    d->msg = NULL;
    d->text = NULL;
    if (src != NULL && (d->fr.kind == LOOM_PW_OK
                        || d->fr.kind == LOOM_PW_FAILED)) {
      d->msg = (loom_msg *)loom_malloc(offsetof(loom_msg, data) + len);
      if (d->msg) {
        memset(d->msg, 0, offsetof(loom_msg, data));
        d->msg->len = d->msg->cap = len;
        memcpy(d->msg->data, src, len);
      }
    }
    else if (src != NULL && len > 0) {
      d->text = (char *)loom_malloc(len + 1);
      if (d->text) {
        memcpy(d->text, src, len);
        d->text[len] = '\0';
      }
    }
    if (shm) atomic_store_explicit(&w->ctl->up_busy, 0, memory_order_release);
    p->ndones++;
    pos += need;
  }
  if (pos > 0) {
    memmove(w->in, w->in + pos, w->inlen - pos);
    w->inlen -= pos;
  }
}

/* Read what w sent (manager, mu not held), until the pipe is empty when
** 'drain', else once; then parse it. */
static void pull(procpool *p, pworker *w, int drain) {
  for (;;) {
    ssize_t n;
    size_t room;
    if (w->incap - w->inlen < LOOM_PW_INLINE) {
      /* room for a whole inline frame, and more */
      size_t cap = w->incap ? w->incap * 2 : 4 * LOOM_PW_INLINE;
      unsigned char *b;
      if (w->inlen > 0 && w->inlen >= sizeof(loom_pwframe)) {
        loom_pwframe fr;
        memcpy(&fr, w->in, sizeof fr);
        if (!(fr.flags & LOOM_PW_SHM) && fr.len < SIZE_MAX / 4
            && cap < sizeof fr + fr.len + LOOM_PW_INLINE)
          cap = sizeof fr + (size_t)fr.len + LOOM_PW_INLINE;
      }
      if ((b = (unsigned char *)loom_realloc(w->in, cap)) == NULL) {
        w->eof = 1;   /* it is ended (under mu) */
        w->bad = "could not be read (not enough memory) and was stopped";
        return;
      }
      w->in = b;
      w->incap = cap;
    }
    room = w->incap - w->inlen;
    n = read(w->rfd, w->in + w->inlen, room);
    if (n > 0) {
      w->inlen += (size_t)n;
      parse_frames(p, w);
      if (!drain && (size_t)n < room) return;
    }
    else if (n == 0) {
      w->eof = 1;
      return;
    }
    else if (errno != EINTR) {
      if (errno != EAGAIN) w->eof = 1;
      return;
    }
  }
}

static const char *static_kind(const char *k) {
  static const char *const kinds[] = { "transfer", "cancelled", "timeout",
                                       "shutdown", "broken", "closed",
                                       "crashed", NULL };
  int i;
  for (i = 0; kinds[i]; i++)
    if (strcmp(k, kinds[i]) == 0) return kinds[i];
  return "transfer";
}

/* Apply one frame (mu held). */
static void apply_locked(procpool *p, pdone *d, loom_future **drop) {
  pworker *w = d->w;
  loom_future *f;
  loom_outcome o;
  double now;
  int k;
  if (d->fr.kind == LOOM_PW_READY || d->fr.kind == LOOM_PW_INITFAIL) {
    if (!w->ready) {
      w->ready = 1;
      w->pages -= w->setup_charge;
      if (w->downbusy && w->downseq == SETUP_SEQ) w->downbusy = 0;
    }
    if (d->fr.kind == LOOM_PW_INITFAIL)
      break_locked(p, d->text ? d->text : "init failed", drop);
    loom_free(d->text);
    return;
  }
  if (w->nflight == 0 || d->fr.seq != w->seq0 || d->fr.kind < LOOM_PW_OK
      || d->fr.kind > LOOM_PW_SKIPPED || !w->ready) {
    w->why = "sent a malformed message and was stopped";
    kill_locked(w);
    loom_msg_free(d->msg);
    loom_free(d->text);
    return;
  }
  k = (int)(d->fr.seq % LOOM_PW_DEPTH);
  f = w->flight[k];
  w->flight[k] = NULL;
  w->pages -= w->charge[k];
  w->seq0++;
  w->nflight--;
  if (w->downbusy && w->downseq == d->fr.seq) {
    w->downbusy = 0;
    if (w->downmap > LOOM_PW_KEEP) {   /* one huge task: not kept for good */
      munmap(w->down, w->downmap);
      w->down = NULL;
      w->downmap = 0;
      if (ftruncate(w->downfd, 0) != 0) { /* kept, then */ }
    }
  }
  /* pipelined while its tasks are short */
  now = loom_now();
  w->depth = now - w->since < SHORT_TASK ? LOOM_PW_DEPTH : 1;
  w->since = now;
  f->runner = NULL;
  loom_msg_free(f->task);
  f->task = NULL;
  memset(&o, 0, sizeof o);
  switch (d->fr.kind) {
    case LOOM_PW_OK: case LOOM_PW_FAILED:
      o.result = d->msg;   /* NULL: no memory, said as such */
      o.failed = d->msg != NULL && d->fr.kind == LOOM_PW_FAILED;
      break;
    case LOOM_PW_COND:
      if (d->text) {
        o.errkind = static_kind(d->text);
        o.errmsg = loom_strdup(d->text + strlen(d->text) + 1
                               <= d->text + d->fr.len
                               ? d->text + strlen(d->text) + 1 : "");
      }
      break;
    case LOOM_PW_PLAIN:
      o.errmsg = d->text;
      d->text = NULL;
      break;
    default:   /* SKIPPED: cancelled before it started */
      if (!loom_future_isdone(f))
        loom_future_complete_locked(f, LOOM_CANCELLED);
  }
  loom_free(d->text);
  loom_future_finish_locked(f, &o);   /* frees o if f is done already */
  drop_later(drop, f);
}

/* w's process has ended and its last results are applied (mu held):
** fail the task it was running, queue again the ones it had not started,
** and free the slot for a replacement. */
static void bury_locked(procpool *p, pworker *w, loom_future **drop) {
  char why[160];
  int i, n = w->nflight;
  loom_future *again[LOOM_PW_DEPTH];
  int nagain = 0;
  loom_pw_describe_end(w, why, sizeof why);
  for (i = 0; i < n; i++) {
    uint64_t seq = w->seq0 + (uint64_t)i;
    int k = (int)(seq % LOOM_PW_DEPTH);
    loom_future *f = w->flight[k];
    uint64_t st = atomic_load(&w->ctl->slot[k].state);
    w->flight[k] = NULL;
    f->runner = NULL;
    if (loom_future_isdone(f)) drop_later(drop, f);
    else if (st == (seq << 2 | LOOM_PW_STARTED)) {
      loom_future_fail_locked(f, "crashed", why);
      drop_later(drop, f);
    }
    else again[nagain++] = f;
  }
  while (nagain > 0) {   /* back to the front, in their order */
    loom_future *f = again[--nagain];
    atomic_store_explicit(&f->state, LOOM_PENDING, memory_order_release);
    loom_fqueue_push_front(&p->q, f);
  }
  if (!w->ready && w->state != W_KILLED) {
    char msg[700];
    if (w->status >= 0 && WIFEXITED(w->status)
        && WEXITSTATUS(w->status) == 127)   /* where exec failed late */
      snprintf(msg, sizeof msg, "cannot start a worker process: interpreter "
               "'%s' not found (exit status 127)", p->interpreter);
    else
      snprintf(msg, sizeof msg, "%s before it was ready (interpreter '%s')",
               why, p->interpreter);
    break_locked(p, msg, drop);
  }
  if (p->broken) break_locked(p, p->broken, drop);   /* the ones above */
  loom_pw_closefd(&w->tfd);
  loom_pw_closefd(&w->tkeep);
  loom_pw_closefd(&w->rfd);
  loom_pw_closefd(&w->pidfd);
  w->inlen = 0;   /* a partial frame of the dead: dropped */
  w->state = W_FREE;
  w->nflight = 0;
  w->pages = 0;
  w->downbusy = 0;
  w->ready = 0;
}

/* Reap w (manager, mu not held): its pidfd said it ended, or (without
** pidfd) its pipe did; read what it sent last first. */
static void reap(procpool *p, pworker *w) {
  int st;
  pid_t r;
  pull(p, w, 1);
  do r = waitpid(w->pid, &st, 0); while (r < 0 && errno == EINTR);
  w->status = r == w->pid ? st : -1;   /* -1: reaped elsewhere */
  w->exited = 1;
}

/* ------------------------------------------------------------- manager */

/* Kill the workers of overdue tasks (mu held); the seconds until the
** next deadline, or -1: none. */
static double check_deadlines_locked(procpool *p) {
  double next = -1, now = loom_now();
  int i;
  if (p->task_timeout <= 0) return -1;
  for (i = 0; i < p->nworkers; i++) {
    pworker *w = &p->w[i];
    int k;
    uint64_t st;
    double due;
    if ((w->state != W_LIVE && w->state != W_CLOSED) || w->nflight == 0)
      continue;
    k = (int)(w->seq0 % LOOM_PW_DEPTH);
    st = atomic_load(&w->ctl->slot[k].state);
    if (st == (w->seq0 << 2 | LOOM_PW_STARTED)) {
      /* the worker writes the start time before it marks the task
      ** started, so this is the time (never the 0 the slot was reset to) */
      int64_t ns = atomic_load(&w->ctl->slot[k].started);
      due = (double)ns * 1e-9 + p->task_timeout;
      if (ns > 0 && due <= now) {
        loom_future *f = w->flight[k];
        char msg[160];
        snprintf(msg, sizeof msg, "the task ran longer than its time limit "
                 "(task_timeout = %g s)", p->task_timeout);
        if (!loom_future_isdone(f)) loom_future_fail_locked(f, "timeout",
                                                            msg);
        kill_locked(w);
        continue;
      }
    }
    else due = now + p->task_timeout;   /* not started: look again then */
    if (next < 0 || due - now < next) next = due - now;
  }
  return next;
}

static int finished_locked(procpool *p) {
  int i;
  if (!(p->stopping || p->broken) || p->q.head != NULL) return 0;
  for (i = 0; i < p->nworkers; i++)
    if (p->w[i].state != W_FREE) return 0;
  return 1;
}

static void *manager_main(void *arg) {
  procpool *p = (procpool *)arg;
  loom_future *drop = NULL;
  int i;
  pthread_mutex_lock(&p->base.mu);
  for (;;) {
    double next;
    int nfds = 1, timeout;
    spawn_missing_locked(p, &drop);
    if (finished_locked(p)) break;
    if (p->stopping && p->q.head == NULL)
      for (i = 0; i < p->nworkers; i++) close_tasks_locked(&p->w[i]);
    next = check_deadlines_locked(p);
    /* poll counts milliseconds in an int: a deadline further off (a
    ** task_timeout of weeks or more) is looked at again then */
    timeout = next < 0 ? -1 : next >= INT_MAX / 1000 ? INT_MAX
                                                     : (int)(next * 1000) + 1;
    p->fds[0].fd = p->wakefd;
    p->fds[0].events = POLLIN;
    for (i = 0; i < p->nworkers; i++) {
      pworker *w = &p->w[i];
      if (w->state == W_FREE || w->state == W_STARTING) continue;
      if (!w->eof) {
        p->fds[nfds].fd = w->rfd;
        p->fds[nfds].events = POLLIN;
        p->fdw[nfds++] = w;
      }
      if (w->pidfd >= 0) {
        p->fds[nfds].fd = w->pidfd;
        p->fds[nfds].events = POLLIN;
        p->fdw[nfds++] = w;
      }
    }
    p->untimed = timeout < 0;
    pthread_mutex_unlock(&p->base.mu);
    drop_all(drop);
    drop = NULL;
    while (poll(p->fds, (nfds_t)nfds, timeout) < 0 && errno == EINTR) {}
    if (p->fds[0].revents) {
      uint64_t v;
      ssize_t r = read(p->wakefd, &v, sizeof v);
      (void)r;
    }
    p->ndones = 0;
    for (i = 1; i < nfds; i++) {
      pworker *w = p->fdw[i];
      if (!p->fds[i].revents || w->exited) continue;
      if (p->fds[i].fd == w->rfd) {
        pull(p, w, 0);
        /* without a pidfd, end-of-file is how its end shows */
        if (w->eof && w->pidfd < 0) reap(p, w);
      }
      else reap(p, w);
    }
    pthread_mutex_lock(&p->base.mu);
    p->untimed = 0;
    for (i = 0; i < p->ndones; i++) apply_locked(p, &p->dones[i], &drop);
    for (i = 0; i < p->nworkers; i++)
      if (p->w[i].bad && !p->w[i].exited) {
        p->w[i].why = p->w[i].bad;
        kill_locked(&p->w[i]);
      }
    for (i = 0; i < p->nworkers; i++)
      if (p->w[i].exited) bury_locked(p, &p->w[i], &drop);
    if (p->broken) break_locked(p, p->broken, &drop);
    dispatch_locked(p, &drop);
  }
  p->manager_done = 1;
  pthread_cond_broadcast(&p->ended);
  pthread_mutex_unlock(&p->base.mu);
  drop_all(drop);
  return NULL;
}

/* ----------------------------------------------------------------- pool */

loom_sched *loom_procpool_new(loom_procpool_config *cfg, const char **err) {
  procpool *p = (procpool *)loom_malloc(sizeof *p);
  pthread_condattr_t ca;
  pthread_attr_t attr;
  sigset_t all, old;
  int i, n = cfg->base.workers, rc;
  *err = "not enough memory";
  if (p == NULL) return NULL;
  memset(p, 0, sizeof *p);
  loom_sched_init(&p->base, &procpool_ops);
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&p->ended, &ca);
  pthread_condattr_destroy(&ca);
  p->manager_done = p->joined = 1;   /* until it runs */
  p->wakefd = -1;
  p->nworkers = n;
  p->task_timeout = cfg->base.task_timeout;
  p->max_tasks = cfg->max_tasks;
  p->w = (pworker *)loom_malloc(sizeof(pworker) * (size_t)n);
  for (i = 0; p->w && i < n; i++) {
    pworker *w = &p->w[i];
    memset(w, 0, sizeof *w);
    w->tfd = w->tkeep = w->rfd = w->pidfd = -1;
    w->ctlfd = w->downfd = w->upfd = -1;
    w->state = W_FREE;
  }
  p->capdones = n * (LOOM_PW_DEPTH + 2);
  p->dones = (pdone *)loom_malloc(sizeof(pdone) * (size_t)p->capdones);
  p->fds = (struct pollfd *)loom_malloc(sizeof(struct pollfd)
                                        * (size_t)(2 * n + 1));
  p->fdw = (pworker **)loom_malloc(sizeof(pworker *) * (size_t)(2 * n + 1));
  if (loom_pw_program(p, cfg, err) != 0 || p->w == NULL || p->dones == NULL
      || p->fds == NULL || p->fdw == NULL) {
    loom_sched_decref(&p->base);
    return NULL;
  }
  /* Without pidfd (old kernels; valgrind, which warns on each call),
  ** end-of-file on the result pipe tells of a death. */
  {
    const char *pre = getenv("LD_PRELOAD");
#ifdef SYS_pidfd_open
    p->use_pidfd = pre == NULL || strstr(pre, "vgpreload") == NULL;
#else
    (void)pre;
#endif
  }
  p->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (p->wakefd < 0) {
    *err = "cannot create an eventfd";
    loom_sched_decref(&p->base);
    return NULL;
  }
  /* The manager starts the workers: a worker's parent-death signal
  ** follows the thread that started it, and the manager lives as long as
  ** any worker.  It blocks every signal: they are the host's. */
  p->manager_done = p->joined = 0;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, MANAGER_STACK);
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  rc = pthread_create(&p->manager, &attr, manager_main, p);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  if (rc != 0) {
    *err = "cannot start the manager thread";
    p->manager_done = p->joined = 1;
    loom_sched_decref(&p->base);
    return NULL;
  }
  loom_msg_free(cfg->base.init);   /* taken: the setup holds a copy */
  cfg->base.init = NULL;
  return &p->base;
}
