/*
** procpool.c -- the process pool: worker processes and their manager.
**
** Design.  Each worker is a Lua interpreter started with posix_spawn
** (never fork: the host runs threads), in a process group of its own so
** that stopping it stops whatever it started, with only its pipes and
** shared files open (procworker.c is its side).  One manager thread per
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
#include <spawn.h>
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

#include "loom.h"

extern char **environ;

#define PAGE 4096
#define PIPE_BYTES (1 << 20)     /* asked for each pipe (F_SETPIPE_SZ) */
#define MANAGER_STACK (1u << 20)
#define SHORT_TASK 2e-3          /* seconds: below, a worker is pipelined */
#define SETUP_SEQ UINT64_MAX     /* downseq while the setup is in down */

enum { W_FREE, W_STARTING, W_LIVE, W_CLOSED, W_KILLED };

typedef struct pworker {
  /* Under mu; the manager, which alone writes the process fields (pid,
  ** the descriptors, ctl), also reads them without it. */
  int state;               /* W_*: CLOSED: its task pipe is closed, it ends
                              after its tasks; KILLED: loom ended it */
  int ready;               /* it said READY: set up */
  pid_t pid;
  int tfd, tkeep;          /* task pipe: write end, and its read end */
  int rfd, pidfd;          /* result pipe, read end; pidfd or -1 */
  int ctlfd, downfd, upfd; /* the shared files, kept for the next process */
  loom_pwctl *ctl;
  unsigned char *down;     /* the down region, downmap bytes mapped */
  size_t downmap;
  int downbusy;            /* it holds the payload of downseq */
  uint64_t downseq;
  loom_future *flight[LOOM_PW_DEPTH];   /* by seq % LOOM_PW_DEPTH */
  int charge[LOOM_PW_DEPTH];            /* pipe pages of each */
  uint64_t seq0;           /* the oldest task in flight */
  int nflight;
  int pages, maxpages;     /* pipe pages charged; the pipe's */
  int setup_charge;
  loom_pwframe out[LOOM_PW_DEPTH];      /* frames staged for one write, */
  struct iovec iov[2 * LOOM_PW_DEPTH];  /* by seq % LOOM_PW_DEPTH */
  int niov;
  long ntasks;             /* tasks sent to this process */
  int depth;               /* tasks it may have in flight now */
  double since;            /* its oldest task cannot have started before */
  const char *why;         /* KILLED for what it sent: why (for 'crashed') */
  /* The manager's alone: */
  unsigned char *up;       /* the up region */
  size_t upmap;
  unsigned char *in;       /* bytes read from rfd, not yet parsed */
  size_t inlen, incap;
  int eof;                 /* rfd said end-of-file */
  const char *bad;         /* its results could not be read: why; end it */
  int exited;              /* the process ended (pidfd, or eof) */
  int status;              /* its wait status, or -1: unknown */
} pworker;

/* A frame the manager read, applied with mu held. */
typedef struct pdone {
  pworker *w;
  loom_pwframe fr;
  loom_msg *msg;           /* OK, FAILED: the payload (NULL: no memory) */
  char *text;              /* INITFAIL, COND, PLAIN: the payload */
} pdone;

typedef struct procpool {
  loom_sched base;         /* first; base.mu guards what is not marked */
  pthread_cond_t ended;    /* signalled when the manager ends */
  pthread_t manager;
  int manager_done, joined;
  loom_fqueue q;            /* the pending futures, one ref each */
  int stopping;            /* shutdown: accept no more tasks */
  char *broken;            /* workers cannot start: why */
  int untimed;             /* the manager polls with no deadline */
  int rr;                  /* where the next pick starts */
  int nworkers;
  pworker *w;
  int wakefd;              /* an eventfd that wakes the manager */
  int use_pidfd;           /* watch each worker's pidfd */
  double task_timeout;
  long max_tasks;
  char *interpreter, *chunk;  /* argv of a worker: interp -e chunk */
  unsigned char *setup;    /* the setup payload (loom.h) */
  size_t setuplen;
  /* The manager's alone: */
  pdone *dones;            /* room for every frame one round can bring */
  int ndones, capdones;
  struct pollfd *fds;
  pworker **fdw;           /* the worker of each fds[i] */
} procpool;

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
  return (int)((n + PAGE - 1) / PAGE) + (w->pages > 0);
}

/* Map the down region for a payload of len bytes, growing it. */
static int down_reserve(pworker *w, size_t len) {
  size_t need, size;
  void *m;
  if (len > SIZE_MAX / 2 - LOOM_PW_DATA) return -1;
  need = LOOM_PW_DATA + len;
  if (w->downmap >= need) return 0;
  size = w->downmap * 2 > need ? w->downmap * 2 : need;
  size = (size + PAGE - 1) / PAGE * PAGE;
  if (ftruncate(w->downfd, (off_t)size) != 0) return -1;
  m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, w->downfd, 0);
  if (m == MAP_FAILED) return -1;
  if (w->down) munmap(w->down, w->downmap);
  w->down = (unsigned char *)m;
  w->downmap = size;
  return 0;
}

int loom_pw_write(int fd, struct iovec *iov, int n) {
  while (n > 0) {
    ssize_t k = writev(fd, iov, n);
    if (k < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    while (n > 0 && (size_t)k >= iov->iov_len) {
      k -= (ssize_t)iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (char *)iov->iov_base + k;
      iov->iov_len -= (size_t)k;
    }
  }
  return 0;
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
    if (down_reserve(w, m->len) != 0) {
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
    if (w->ctl) munmap(w->ctl, PAGE);
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

/* ------------------------------------------------------------- spawning */

/* fd moved to a number >= LOOM_PW_NFD (close-on-exec), so that the
** child's dup2s into 3..7 cannot overwrite one another's source. */
static int high_fd(int fd) {
  int h;
  if (fd >= LOOM_PW_NFD) return fd;
  h = fcntl(fd, F_DUPFD_CLOEXEC, LOOM_PW_NFD);
  close(fd);
  return h;
}

static int new_memfd(const char *name, int *fd) {
  if (*fd >= 0) return 0;
  *fd = memfd_create(name, MFD_CLOEXEC);
  if (*fd >= 0) *fd = high_fd(*fd);
  return *fd >= 0 ? 0 : -1;
}

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

/*
** Start the process of worker w (mu not held; w is W_STARTING, so no
** other thread looks at it).  0, or -1 with the reason in err[].
*/
static int spawn_worker(procpool *p, pworker *w, char *err, size_t errlen) {
  int tp[2] = { -1, -1 }, rp[2] = { -1, -1 }, child[5], i, rc;
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  sigset_t none, all;
  char *argv[4];
  loom_pwframe fr;
  pid_t pid;
  const char *what = "cannot create a pipe";
  if (new_memfd("loom-ctl", &w->ctlfd) != 0
      || new_memfd("loom-down", &w->downfd) != 0
      || new_memfd("loom-up", &w->upfd) != 0) {
    what = "cannot create shared memory";
    goto fail;
  }
  if (w->ctl == NULL) {
    void *m;
    if (ftruncate(w->ctlfd, PAGE) != 0
        || (m = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED,
                     w->ctlfd, 0)) == MAP_FAILED) {
      what = "cannot map shared memory";
      goto fail;
    }
    w->ctl = (loom_pwctl *)m;
  }
  memset(w->ctl, 0, sizeof *w->ctl);
  if (down_reserve(w, p->setuplen) != 0) {
    what = "cannot map shared memory";
    goto fail;
  }
  memcpy(w->down + LOOM_PW_DATA, p->setup, p->setuplen);
  if (pipe2(tp, O_CLOEXEC) != 0 || pipe2(rp, O_CLOEXEC) != 0) goto fail;
  fcntl(tp[1], F_SETPIPE_SZ, PIPE_BYTES);   /* a smaller pipe works too */
  fcntl(rp[1], F_SETPIPE_SZ, PIPE_BYTES);
  rc = fcntl(tp[1], F_GETPIPE_SZ);
  w->maxpages = rc > 0 ? rc / PAGE : 1;
  fcntl(rp[0], F_SETFL, O_NONBLOCK);
  /* Never blocks by the count of pages; if it ever would, the worker is
  ** ended (its tasks go to another), not the pool stalled. */
  fcntl(tp[1], F_SETFL, O_NONBLOCK);
  tp[0] = high_fd(tp[0]);
  rp[1] = high_fd(rp[1]);
  if (tp[0] < 0 || rp[1] < 0) goto fail;
  child[0] = tp[0];
  child[1] = rp[1];
  child[2] = w->ctlfd;
  child[3] = w->downfd;
  child[4] = w->upfd;
  posix_spawn_file_actions_init(&fa);
  for (i = 0; i < 5; i++)
    posix_spawn_file_actions_adddup2(&fa, child[i], LOOM_PW_TASKS + i);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 34)
  posix_spawn_file_actions_addclosefrom_np(&fa, LOOM_PW_NFD);
#endif
  posix_spawnattr_init(&attr);
  sigemptyset(&none);
  sigfillset(&all);
  sigdelset(&all, SIGKILL);
  sigdelset(&all, SIGSTOP);
  posix_spawnattr_setsigmask(&attr, &none);      /* the manager blocks all */
  posix_spawnattr_setsigdefault(&attr, &all);    /* nothing ignored */
  posix_spawnattr_setpgroup(&attr, 0);           /* a group of its own */
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP
                           | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  argv[0] = p->interpreter;
  argv[1] = (char *)"-e";
  argv[2] = p->chunk;
  argv[3] = NULL;
  rc = posix_spawnp(&pid, p->interpreter, &fa, &attr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  close_fd(&rp[1]);
  if (rc != 0) {
    if (rc == ENOENT)
      snprintf(err, errlen, "cannot start a worker process: interpreter "
               "'%s' not found", p->interpreter);
    else
      snprintf(err, errlen, "cannot start a worker process with "
               "interpreter '%s': %s", p->interpreter, strerror(rc));
    close_fd(&tp[0]);
    close_fd(&tp[1]);
    close_fd(&rp[0]);
    return -1;
  }
  w->pid = pid;
#ifdef SYS_pidfd_open
  w->pidfd = p->use_pidfd ? (int)syscall(SYS_pidfd_open, pid, 0) : -1;
#else
  w->pidfd = -1;
#endif
  w->tfd = tp[1];
  w->tkeep = tp[0];
  w->rfd = rp[0];
  /* the setup, in the down region: the pipe is empty, this cannot block */
  memset(&fr, 0, sizeof fr);
  fr.kind = LOOM_PW_SETUP;
  fr.flags = LOOM_PW_SHM;
  fr.len = p->setuplen;
  {
    struct iovec iov;
    iov.iov_base = &fr;
    iov.iov_len = sizeof fr;
    loom_pw_write(w->tfd, &iov, 1);   /* if it fails, the worker ends: seen */
  }
  return 0;
fail:
  snprintf(err, errlen, "%s for a worker process: %s", what,
           strerror(errno));
  close_fd(&tp[0]);
  close_fd(&tp[1]);
  close_fd(&rp[0]);
  close_fd(&rp[1]);
  return -1;
}

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
    r = spawn_worker(p, w, err, sizeof err);
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

/* Its end, in words, for a 'crashed' error. */
static void describe_end(pworker *w, char *buf, size_t len) {
  int st = w->status;
  if (w->why)
    snprintf(buf, len, "worker process %d %s", (int)w->pid, w->why);
  else if (st >= 0 && WIFSIGNALED(st)) {
    int sig = WTERMSIG(st);
    const char *name = sig == SIGKILL ? " (SIGKILL)" : sig == SIGSEGV
        ? " (SIGSEGV)" : sig == SIGABRT ? " (SIGABRT)" : sig == SIGBUS
        ? " (SIGBUS)" : sig == SIGTERM ? " (SIGTERM)" : sig == SIGFPE
        ? " (SIGFPE)" : "";
    snprintf(buf, len, "worker process %d was killed by signal %d%s",
             (int)w->pid, sig, name);
  }
  else if (st >= 0 && WIFEXITED(st))
    snprintf(buf, len, "worker process %d exited with status %d",
             (int)w->pid, WEXITSTATUS(st));
  else
    snprintf(buf, len, "worker process %d ended", (int)w->pid);
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
  describe_end(w, why, sizeof why);
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
  close_fd(&w->tfd);
  close_fd(&w->tkeep);
  close_fd(&w->rfd);
  close_fd(&w->pidfd);
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
    timeout = next < 0 ? -1 : (int)(next * 1000) + 1;
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

/* The path of this core.so, for the workers to load: from the mapping
** that holds this code (absolute, whatever the current directory). */
static char *core_path(void) {
  unsigned long lo, hi, here = (unsigned long)(size_t)&core_path;
  char line[4096 + 128];
  char *found = NULL;
  FILE *f = fopen("/proc/self/maps", "r");
  if (f == NULL) return NULL;
  while (found == NULL && fgets(line, sizeof line, f) != NULL) {
    char *path;
    if (sscanf(line, "%lx-%lx", &lo, &hi) != 2 || here < lo || here >= hi)
      continue;
    path = strchr(line, '/');
    if (path) {
      size_t n = strcspn(path, "\n"), d = sizeof " (deleted)" - 1;
      /* replaced since it was loaded (an upgrade): the file there now */
      if (n > d && memcmp(path + n - d, " (deleted)", d) == 0) n -= d;
      path[n] = '\0';
      found = loom_strdup(path);
    }
  }
  fclose(f);
  return found;
}

static int same_file(const char *path, const struct stat *b) {
  struct stat a;
  return stat(path, &a) == 0 && a.st_dev == b->st_dev
         && a.st_ino == b->st_ino;
}

/* A core built with a sanitizer loads only into an interpreter built with
** it (the specs' host, spec/host/host.c): the running one. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

char *loom_procpool_interpreter(const char *argv0) {
  struct stat exe;
  char buf[PATH_MAX];
  int match = SANITIZED;
  if (!match && argv0 != NULL && *argv0 && stat("/proc/self/exe", &exe) == 0) {
    if (strchr(argv0, '/')) match = same_file(argv0, &exe);
    else {   /* as the shell found it: along PATH */
      const char *path = getenv("PATH"), *s;
      for (s = path; s && *s && !match; s += *s == ':') {
        size_t n = strcspn(s, ":");
        if (n > 0 && n + strlen(argv0) + 2 <= sizeof buf) {
          memcpy(buf, s, n);
          buf[n] = '/';
          strcpy(buf + n + 1, argv0);
          match = same_file(buf, &exe);
        }
        s += n;
      }
    }
  }
  if (match) {
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n > 0) {
      buf[n] = '\0';
      return loom_strdup(buf);
    }
  }
  return loom_strdup("lua5.4");
}

/* The -e chunk of a worker: load this core.so, run the worker loop. */
static char *worker_chunk(const char *core) {
  static const char fmt[] =
      "local open, err = package.loadlib([%s[%s]%s], 'luaopen_loom_core') "
      "if not open then io.stderr:write('loom worker: ', err, '\\n') "
      "os.exit(70) end "
      "os.exit(open()._process_worker(%ld))";
  char eq[16] = "";
  size_t n;
  char *chunk;
  int level;
  for (level = 0; level < 12; level++) {   /* a long bracket not in core */
    char close[20];
    snprintf(close, sizeof close, "]%s]", eq);
    if (strstr(core, close) == NULL) break;
    strcat(eq, "=");
  }
  n = sizeof fmt + 2 * strlen(eq) + strlen(core) + 32;
  chunk = (char *)loom_malloc(n);
  if (chunk) snprintf(chunk, n, fmt, eq, core, eq, (long)getpid());
  return chunk;
}

/* The setup payload (loom.h): limit, path, cpath, init. */
static unsigned char *make_setup(const loom_pool_config *c, size_t *len) {
  uint64_t h[4];
  size_t lp = c->path ? strlen(c->path) : 0, lc = c->cpath ? strlen(c->cpath)
                                                           : 0;
  size_t li = c->init ? c->init->len : 0, n = sizeof h + lp + lc + li;
  unsigned char *s = (unsigned char *)loom_malloc(n), *q;
  if (s == NULL) return NULL;
  h[0] = c->memory_limit;
  h[1] = c->path ? lp : UINT64_MAX;
  h[2] = c->cpath ? lc : UINT64_MAX;
  h[3] = c->init ? li : UINT64_MAX;
  memcpy(s, h, sizeof h);
  q = s + sizeof h;
  if (lp) memcpy(q, c->path, lp);
  q += lp;
  if (lc) memcpy(q, c->cpath, lc);
  q += lc;
  if (li) memcpy(q, c->init->data, li);
  *len = n;
  return s;
}

loom_sched *loom_procpool_new(loom_procpool_config *cfg, const char **err) {
  procpool *p = (procpool *)loom_malloc(sizeof *p);
  pthread_condattr_t ca;
  pthread_attr_t attr;
  sigset_t all, old;
  char *core;
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
  /* a path is made absolute now: the current directory may change */
  if (cfg->interpreter && strchr(cfg->interpreter, '/')
      && cfg->interpreter[0] != '/') {
    char cwd[PATH_MAX];
    size_t len = strlen(cfg->interpreter) + 2;
    if (getcwd(cwd, sizeof cwd) != NULL
        && (p->interpreter = (char *)loom_malloc(strlen(cwd) + len)) != NULL)
      sprintf(p->interpreter, "%s/%s", cwd, cfg->interpreter);
  }
  if (p->interpreter == NULL)
    p->interpreter = loom_strdup(cfg->interpreter ? cfg->interpreter
                                                  : "lua5.4");
  p->setup = make_setup(&cfg->base, &p->setuplen);
  core = core_path();
  p->chunk = core ? worker_chunk(core) : NULL;
  if (p->w == NULL || p->dones == NULL || p->fds == NULL || p->fdw == NULL
      || p->interpreter == NULL || p->setup == NULL || p->chunk == NULL) {
    if (core == NULL) *err = "cannot find the path of loom's core module";
    loom_free(core);
    loom_sched_decref(&p->base);
    return NULL;
  }
  loom_free(core);
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
