/*
** procspawn.c -- starting a worker process of a process pool (the
** parent's side; procworker.c is the worker's): which program it runs,
** and the four steps of a start (shared memory, pipes, the spawn, the
** setup frame).
**
** A worker is a Lua interpreter started with posix_spawn (never fork:
** the host runs threads), running a -e chunk that loads this very core.so
** and calls core._process_worker.  It runs in a process group of its own,
** so that stopping it stops whatever it started, with only its pipes and
** shared files open, at descriptors 3..7 (LOOM_PW_*).  Its shared files
** outlive it: a replacement gets the same ones, their pages still warm.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include "proc.h"

extern char **environ;

#define PIPE_BYTES (1 << 20)     /* asked for each pipe (F_SETPIPE_SZ) */

/* ---------------------------------------------------------------- files */

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

void loom_pw_closefd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

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

int loom_pw_reserve(pworker *w, size_t len) {
  size_t need, size;
  void *m;
  if (len > SIZE_MAX / 2 - LOOM_PW_DATA) return -1;
  need = LOOM_PW_DATA + len;
  if (w->downmap >= need) return 0;
  size = w->downmap * 2 > need ? w->downmap * 2 : need;
  size = (size + LOOM_PW_PAGE - 1) / LOOM_PW_PAGE * LOOM_PW_PAGE;
  if (ftruncate(w->downfd, (off_t)size) != 0) return -1;
  m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, w->downfd, 0);
  if (m == MAP_FAILED) return -1;
  if (w->down) munmap(w->down, w->downmap);
  w->down = (unsigned char *)m;
  w->downmap = size;
  return 0;
}

/* -------------------------------------------------------------- program */

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

int loom_pw_program(procpool *p, const loom_procpool_config *cfg,
                    const char **err) {
  char *core;
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
  if (core == NULL) *err = "cannot find the path of loom's core module";
  loom_free(core);
  return p->interpreter && p->setup && p->chunk ? 0 : -1;
}

/* ---------------------------------------------------------------- start */

/* Step 1: the shared files (kept from one process of w to the next),
** the control page cleared, and the setup payload in the down region.
** NULL, or what failed (errno says why). */
static const char *open_shared(procpool *p, pworker *w) {
  if (new_memfd("loom-ctl", &w->ctlfd) != 0
      || new_memfd("loom-down", &w->downfd) != 0
      || new_memfd("loom-up", &w->upfd) != 0)
    return "cannot create shared memory";
  if (w->ctl == NULL) {
    void *m;
    if (ftruncate(w->ctlfd, LOOM_PW_PAGE) != 0
        || (m = mmap(NULL, LOOM_PW_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED,
                     w->ctlfd, 0)) == MAP_FAILED)
      return "cannot map shared memory";
    w->ctl = (loom_pwctl *)m;
  }
  memset(w->ctl, 0, sizeof *w->ctl);
  if (loom_pw_reserve(w, p->setuplen) != 0)
    return "cannot map shared memory";
  memcpy(w->down + LOOM_PW_DATA, p->setup, p->setuplen);
  return NULL;
}

/* Step 2: the task pipe (the worker reads tp[0]) and the result pipe (it
** writes rp[1]), the child's ends moved above its descriptors.  NULL, or
** what failed (errno says why; the caller closes what was opened). */
static const char *open_pipes(pworker *w, int tp[2], int rp[2]) {
  int rc;
  if (pipe2(tp, O_CLOEXEC) != 0 || pipe2(rp, O_CLOEXEC) != 0)
    return "cannot create a pipe";
  fcntl(tp[1], F_SETPIPE_SZ, PIPE_BYTES);   /* a smaller pipe works too */
  fcntl(rp[1], F_SETPIPE_SZ, PIPE_BYTES);
  rc = fcntl(tp[1], F_GETPIPE_SZ);
  w->maxpages = rc > 0 ? rc / LOOM_PW_PAGE : 1;
  fcntl(rp[0], F_SETFL, O_NONBLOCK);
  /* Never blocks by the count of pages; if it ever would, the worker is
  ** ended (its tasks go to another), not the pool stalled. */
  fcntl(tp[1], F_SETFL, O_NONBLOCK);
  tp[0] = high_fd(tp[0]);
  rp[1] = high_fd(rp[1]);
  if (tp[0] < 0 || rp[1] < 0) return "cannot create a pipe";
  return NULL;
}

/* Step 3: spawn the interpreter on the worker's chunk, with tfd, rfd
** and w's shared files as its descriptors 3..7, standard input from
** /dev/null, every signal at its default and unblocked, in a process
** group of its own.  0 (*pid set), or an errno value. */
static int start_process(procpool *p, pworker *w, int tfd, int rfd,
                         pid_t *pid) {
  int child[5], i, rc;
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  sigset_t none, all;
  char *argv[4];
  child[0] = tfd;
  child[1] = rfd;
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
  rc = posix_spawnp(pid, p->interpreter, &fa, &attr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  return rc;
}

/* Step 4: the setup frame, naming the payload in the down region.  The
** pipe is empty: this cannot block.  If it fails, the worker ends, and
** the manager sees that. */
static void send_setup(procpool *p, pworker *w) {
  loom_pwframe fr;
  struct iovec iov;
  memset(&fr, 0, sizeof fr);
  fr.kind = LOOM_PW_SETUP;
  fr.flags = LOOM_PW_SHM;
  fr.len = p->setuplen;
  iov.iov_base = &fr;
  iov.iov_len = sizeof fr;
  loom_pw_write(w->tfd, &iov, 1);
}

int loom_pw_spawn(procpool *p, pworker *w, char *err, size_t errlen) {
  int tp[2] = { -1, -1 }, rp[2] = { -1, -1 }, rc;
  pid_t pid;
  const char *what = open_shared(p, w);
  if (what == NULL) what = open_pipes(w, tp, rp);
  if (what != NULL) {
    snprintf(err, errlen, "%s for a worker process: %s", what,
             strerror(errno));
    loom_pw_closefd(&tp[0]);
    loom_pw_closefd(&tp[1]);
    loom_pw_closefd(&rp[0]);
    loom_pw_closefd(&rp[1]);
    return -1;
  }
  rc = start_process(p, w, tp[0], rp[1], &pid);
  loom_pw_closefd(&rp[1]);
  if (rc != 0) {
    if (rc == ENOENT)
      snprintf(err, errlen, "cannot start a worker process: interpreter "
               "'%s' not found", p->interpreter);
    else
      snprintf(err, errlen, "cannot start a worker process with "
               "interpreter '%s': %s", p->interpreter, strerror(rc));
    loom_pw_closefd(&tp[0]);
    loom_pw_closefd(&tp[1]);
    loom_pw_closefd(&rp[0]);
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
  send_setup(p, w);
  return 0;
}

/* ------------------------------------------------------------------ end */

void loom_pw_describe_end(const pworker *w, char *buf, size_t len) {
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
