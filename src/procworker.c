/*
** procworker.c -- the main loop of a worker process of a process pool.
**
** procpool.c starts a Lua interpreter with a chunk that loads this very
** core.so and calls core._process_worker(ppid).  Its descriptors 3..7
** are the task pipe (in), the result pipe (out), the control page and
** the two payload regions (see loom.h).  It makes a fresh state for the
** tasks (under loom_lua_alloc_limited when there is a memory limit), sets
** it up with loom_task_setup and runs every task with loom_task_run: the
** same code as a thread worker.  Results are encoded self-contained
** (LOOM_TASK_SELFCONTAINED) and framed back, in the order the tasks came.
**
** It ends when its task pipe reaches end-of-file (the parent closed it,
** or died), and at once when its parent dies (PR_SET_PDEATHSIG; and the
** parent pid it was given is checked after that is set, in case the
** parent was gone already).
*/
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include "proc.h"

#define BIG_TASK (1u << 20)   /* bytes of payload */

typedef struct wstate {
  loom_pwctl *ctl;
  unsigned char *down, *up;   /* mappings of the regions */
  size_t downmap, upmap;
  unsigned char *in;          /* bytes read from the task pipe */
  size_t inpos, inlen, incap;
} wstate;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Map region fd (the whole file, which is at least 'need' bytes) at *map,
** unless the mapping covers it already.  0, or -1. */
static int map_region(int fd, size_t need, unsigned char **map,
                      size_t *mapped) {
  struct stat st;
  void *m;
  if (*mapped >= need) return 0;
  if (fstat(fd, &st) != 0 || (size_t)st.st_size < need) return -1;
  m = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED,
           fd, 0);
  if (m == MAP_FAILED) return -1;
  if (*map) munmap(*map, *mapped);
  *map = (unsigned char *)m;
  *mapped = (size_t)st.st_size;
  return 0;
}

/* The next frame from the task pipe into *fr, its inline payload at
** *payload (valid until the next call).  0, or 1 at end-of-file (or an
** error: the parent is gone either way). */
static int next_frame(wstate *w, loom_pwframe *fr, unsigned char **payload) {
  for (;;) {
    size_t avail = w->inlen - w->inpos, need = sizeof *fr;
    ssize_t n;
    if (avail >= sizeof *fr) {
      memcpy(fr, w->in + w->inpos, sizeof *fr);
      if (!(fr->flags & LOOM_PW_SHM)) {
        if (fr->len > SIZE_MAX - sizeof *fr) return 1;
        need += (size_t)fr->len;
      }
      if (avail >= need) {
        *payload = w->in + w->inpos + sizeof *fr;
        w->inpos += need;
        return 0;
      }
    }
    if (w->inpos > 0) {   /* keep the partial frame at the start */
      memmove(w->in, w->in + w->inpos, avail);
      w->inlen = avail;
      w->inpos = 0;
    }
    if (need > w->incap) {
      size_t cap = w->incap * 2 > need ? w->incap * 2 : need;
      if (cap < LOOM_PW_INLINE) cap = LOOM_PW_INLINE;
      unsigned char *b = (unsigned char *)loom_realloc(w->in, cap);
      if (b == NULL) return 1;
      w->in = b;
      w->incap = cap;
    }
    n = read(LOOM_PW_TASKS, w->in + w->inlen, w->incap - w->inlen);
    if (n > 0) w->inlen += (size_t)n;
    else if (n == 0 || errno != EINTR) return 1;
  }
}

/* Send one frame with a payload of len bytes (two parts: a and b).  A
** large one goes through the up region while the parent has taken the
** last one out of it. */
static int send_frame(wstate *w, int kind, uint64_t seq, const void *a,
                      size_t alen, const void *b, size_t blen) {
  loom_pwframe fr;
  struct iovec iov[3];
  size_t len = alen + blen;
  memset(&fr, 0, sizeof fr);
  fr.kind = (uint16_t)kind;
  fr.seq = seq;
  fr.len = len;
  iov[0].iov_base = &fr;
  iov[0].iov_len = sizeof fr;
  if (w->upmap > LOOM_PW_KEEP && len <= LOOM_PW_KEEP
      && !atomic_load_explicit(&w->ctl->up_busy, memory_order_acquire)) {
    /* the parent has taken a huge result out: give the memory back */
    munmap(w->up, w->upmap);
    w->up = NULL;
    w->upmap = 0;
    if (ftruncate(LOOM_PW_UP, 0) != 0) { /* kept, then */ }
  }
  if (len > LOOM_PW_INLINE
      && !atomic_load_explicit(&w->ctl->up_busy, memory_order_acquire)) {
    size_t need = LOOM_PW_DATA + len;
    struct stat st;
    if (fstat(LOOM_PW_UP, &st) == 0 && (size_t)st.st_size < need) {
      size_t grow = (size_t)st.st_size * 2;
      if (ftruncate(LOOM_PW_UP, (off_t)(grow > need ? grow : need)) != 0)
        need = SIZE_MAX;
    }
    if (need != SIZE_MAX && map_region(LOOM_PW_UP, need, &w->up,
                                       &w->upmap) == 0) {
      memcpy(w->up + LOOM_PW_DATA, a, alen);
      if (blen) memcpy(w->up + LOOM_PW_DATA + alen, b, blen);
      atomic_store_explicit(&w->ctl->up_busy, 1, memory_order_release);
      fr.flags = LOOM_PW_SHM;
      return loom_pw_write(LOOM_PW_RESULTS, iov, 1);
    }
  }
  iov[1].iov_base = (void *)a;
  iov[1].iov_len = alen;
  iov[2].iov_base = (void *)b;
  iov[2].iov_len = blen;
  return loom_pw_write(LOOM_PW_RESULTS, iov, 3);
}

/* Send how a task ended.  The kinds and texts say what loom_outcome
** holds, so the parent rebuilds the same outcome. */
static int send_outcome(wstate *w, uint64_t seq, const loom_outcome *o) {
  if (o->errkind) {
    const char *msg = o->errmsg ? o->errmsg : "not enough memory";
    return send_frame(w, LOOM_PW_COND, seq, o->errkind,
                      strlen(o->errkind) + 1, msg, strlen(msg));
  }
  if (o->result == NULL)
    return send_frame(w, LOOM_PW_PLAIN, seq, o->errmsg,
                      o->errmsg ? strlen(o->errmsg) : 0, NULL, 0);
  return send_frame(w, o->failed ? LOOM_PW_FAILED : LOOM_PW_OK, seq,
                    o->result->data, o->result->len, NULL, 0);
}

/* A message that owns a copy of len bytes at p, or NULL. */
static loom_msg *copy_msg(const unsigned char *p, size_t len) {
  loom_msg *m = (loom_msg *)loom_malloc(offsetof(loom_msg, data) + len);
  if (m == NULL) return NULL;
  memset(m, 0, offsetof(loom_msg, data));
  m->len = m->cap = len;
  memcpy(m->data, p, len);
  return m;
}

static int run_task(wstate *w, lua_State *W, const loom_pwframe *fr,
                    unsigned char *payload) {
  atomic_ullong *state = &w->ctl->slot[fr->seq % LOOM_PW_DEPTH].state;
  unsigned long long want = fr->seq << 2 | LOOM_PW_QUEUED;
  loom_future f;
  loom_outcome o;
  int r;
  /* the start time goes first: the parent, seeing STARTED, reads it */
  atomic_store(&w->ctl->slot[fr->seq % LOOM_PW_DEPTH].started, now_ns());
  if (!atomic_compare_exchange_strong(state, &want,
                                      fr->seq << 2 | LOOM_PW_STARTED))
    return send_frame(w, LOOM_PW_SKIPPED, fr->seq, NULL, 0, NULL, 0);
  memset(&f, 0, sizeof f);
  atomic_init(&f.refs, 1);
  atomic_init(&f.state, LOOM_RUNNING);
  f.nchunk = fr->nchunk;
  f.nseq = fr->nseq;
  f.xflags = LOOM_TASK_SELFCONTAINED;
  if (fr->flags & LOOM_PW_SHM) {
    /* decoded where it lies: a message header in front of the payload
    ** (the region leaves LOOM_PW_DATA bytes for it) */
    if (fr->len > SIZE_MAX - LOOM_PW_DATA
        || map_region(LOOM_PW_DOWN, LOOM_PW_DATA + (size_t)fr->len,
                      &w->down, &w->downmap) != 0)
      return send_frame(w, LOOM_PW_PLAIN, fr->seq, "not enough memory",
                        17, NULL, 0);
    f.task = (loom_msg *)(void *)(w->down + LOOM_PW_DATA
                                  - offsetof(loom_msg, data));
    memset(f.task, 0, offsetof(loom_msg, data));
    f.task->len = f.task->cap = (size_t)fr->len;
    f.xflags |= LOOM_TASK_BORROWED;
  }
  else if ((f.task = copy_msg(payload, (size_t)fr->len)) == NULL)
    return send_frame(w, LOOM_PW_PLAIN, fr->seq, "not enough memory", 17,
                      NULL, 0);
  loom_task_run(W, &f, &o);
  r = send_outcome(w, fr->seq, &o);
  loom_outcome_free(&o);
  /* After a large task, free its garbage now (the result has gone): the
  ** next large one then gets the same, warm, memory from malloc, not
  ** fresh pages. */
  if (fr->len >= BIG_TASK) lua_gc(W, LUA_GCCOLLECT);
  return r;
}

/* The backstop under memory_limit: an address-space limit well above it,
** for what C code allocates past the state's allocator.  The
** interpreter's own mappings count too, so it starts from their size; a
** sanitizer's shadow (terabytes) leaves nothing sensible to limit. */
static void limit_address_space(size_t limit) {
  unsigned long pages = 0;
  size_t vm, cap, extra = (size_t)256 << 20;
  struct rlimit r;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f == NULL) return;
  if (fscanf(f, "%lu", &pages) != 1) pages = 0;
  fclose(f);
  vm = (size_t)pages * (size_t)sysconf(_SC_PAGESIZE);
  if (pages == 0 || vm > ((size_t)64 << 30) || limit > ((size_t)1 << 46))
    return;
  cap = vm + 2 * limit + extra;
  if (getrlimit(RLIMIT_AS, &r) != 0) return;
  if (r.rlim_max != RLIM_INFINITY && cap > r.rlim_max) cap = r.rlim_max;
  if (r.rlim_cur != RLIM_INFINITY && r.rlim_cur < cap) return;
  r.rlim_cur = cap;
  setrlimit(RLIMIT_AS, &r);
}

/* Setup: the payload in the down region (loom.h) into its parts; the
** strings are copied (NULL when absent), the init message too. */
typedef struct setup {
  uint64_t limit;
  char *path, *cpath;
  loom_msg *init;
} setup;

static int take_part(const unsigned char **p, const unsigned char *end,
                     uint64_t len, char **s, loom_msg **m) {
  if (len == UINT64_MAX) return 0;
  if (len > (uint64_t)(end - *p)) return -1;
  if (s) {
    if ((*s = (char *)loom_malloc((size_t)len + 1)) == NULL) return -1;
    memcpy(*s, *p, (size_t)len);
    (*s)[len] = '\0';
  }
  else if ((*m = copy_msg(*p, (size_t)len)) == NULL) return -1;
  *p += len;
  return 0;
}

static int read_setup(wstate *w, setup *su) {
  loom_pwframe fr;
  unsigned char *payload;
  const unsigned char *p, *end;
  uint64_t h[4];
  if (next_frame(w, &fr, &payload) != 0 || fr.kind != LOOM_PW_SETUP
      || !(fr.flags & LOOM_PW_SHM) || fr.len < sizeof h
      || fr.len > SIZE_MAX - LOOM_PW_DATA
      || map_region(LOOM_PW_DOWN, LOOM_PW_DATA + (size_t)fr.len, &w->down,
                    &w->downmap) != 0)
    return -1;
  p = w->down + LOOM_PW_DATA;
  end = p + fr.len;
  memcpy(h, p, sizeof h);
  p += sizeof h;
  su->limit = h[0];
  if (take_part(&p, end, h[1], &su->path, NULL) != 0
      || take_part(&p, end, h[2], &su->cpath, NULL) != 0
      || take_part(&p, end, h[3], NULL, &su->init) != 0)
    return -1;
  return 0;
}

static int worker_loop(wstate *w, lua_Integer ppid,
                       lua_CFunction open_core) {
  setup su;
  loom_memlimit ml;
  lua_State *W;
  loom_pwframe fr;
  unsigned char *payload;
  char *err;
  int fd;
#ifdef M_TRIM_THRESHOLD
  /* This process is loom's own: let malloc keep and reuse large blocks
  ** (warm pages) instead of giving them back and faulting fresh ones in
  ** for every large task. */
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
#endif
  /* die with the parent, even one killed outright */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if ((lua_Integer)getppid() != ppid) return 3;
  for (fd = LOOM_PW_TASKS; fd < LOOM_PW_NFD; fd++)   /* not for our own */
    fcntl(fd, F_SETFD, FD_CLOEXEC);                  /* children */
  w->ctl = (loom_pwctl *)mmap(NULL, sizeof(loom_pwctl),
                              PROT_READ | PROT_WRITE, MAP_SHARED,
                              LOOM_PW_CTL, 0);
  if (w->ctl == MAP_FAILED) {
    w->ctl = NULL;
    return 4;
  }
  memset(&su, 0, sizeof su);
  if (read_setup(w, &su) != 0) {
    loom_free(su.path);
    loom_free(su.cpath);
    loom_msg_free(su.init);
    return 5;
  }
  ml.used = 0;
  ml.limit = (size_t)su.limit;
  if (su.limit > 0) limit_address_space((size_t)su.limit);
  W = su.limit > 0 ? lua_newstate(loom_lua_alloc_limited, &ml)
                   : lua_newstate(loom_lua_alloc, NULL);
  err = W ? loom_task_setup(W, open_core, su.path, su.cpath, su.init, NULL)
          : loom_strdup("cannot create a worker state");
  loom_free(su.path);
  loom_free(su.cpath);
  loom_msg_free(su.init);
  if (err != NULL || W == NULL) {
    const char *msg = err ? err : "not enough memory";
    send_frame(w, LOOM_PW_INITFAIL, 0, msg, strlen(msg), NULL, 0);
    loom_free(err);
    if (W) lua_close(W);
    return 1;
  }
  if (send_frame(w, LOOM_PW_READY, 0, NULL, 0, NULL, 0) == 0) {
    while (next_frame(w, &fr, &payload) == 0) {
      if (fr.kind != LOOM_PW_TASK || run_task(w, W, &fr, payload) != 0)
        break;
    }
  }
  lua_close(W);
  return 0;
}

int loom_process_worker(lua_Integer ppid, lua_CFunction open_core) {
  wstate w;
  int code;
  memset(&w, 0, sizeof w);
  code = worker_loop(&w, ppid, open_core);
  if (w.ctl) munmap(w.ctl, sizeof(loom_pwctl));
  if (w.down) munmap(w.down, w.downmap);
  if (w.up) munmap(w.up, w.upmap);
  loom_free(w.in);
  return code;
}
