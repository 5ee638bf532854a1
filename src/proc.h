/*
** proc.h -- the process pool's own header, for its three files only:
** procpool.c (the parent: the pool and its manager thread), procspawn.c
** (the parent: starting a worker process) and procworker.c (the worker
** process).  What the rest of the core sees of the process pool is in
** loom.h; here are the protocol between parent and worker, and the
** parent's structs.
*/
#ifndef loom_proc_h
#define loom_proc_h

#include <poll.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "loom.h"

/* ------------------------------------------------------------- protocol */

/*
** Between a parent and each worker: two pipes (tasks down, results up),
** each message framed by a loom_pwframe, and three shared memory files:
** a control page (loom_pwctl) and one region each way for payloads too
** large for the pipe.  Every message is self-contained
** (LOOM_REFS_PROCESS).
*/
/* The worker's descriptors, as the parent sets them up. */
enum { LOOM_PW_TASKS = 3, LOOM_PW_RESULTS, LOOM_PW_CTL, LOOM_PW_DOWN,
       LOOM_PW_UP, LOOM_PW_NFD };

#define LOOM_PW_DEPTH 8       /* tasks in flight to one worker, at most */
#define LOOM_PW_DATA  4096    /* a payload's offset in its region */
#define LOOM_PW_INLINE (64 * 1024)   /* a larger payload goes through its
                                        region (when that is free) */
#define LOOM_PW_KEEP ((size_t)64 << 20)  /* a larger region is given back
                                            once its payload is taken */

/* One frame, either way: a header and len bytes of payload, which follow
** it in the pipe or (LOOM_PW_SHM) sit at LOOM_PW_DATA in the region. */
typedef struct loom_pwframe {
  uint64_t len;
  uint64_t seq;            /* the task's number in this worker process */
  int32_t nchunk, nseq;    /* a task: the map chunk's shape */
  uint16_t kind, flags;
  uint32_t pad;
} loom_pwframe;

enum {   /* kinds: down, then up */
  LOOM_PW_SETUP = 1, LOOM_PW_TASK,
  LOOM_PW_READY, LOOM_PW_INITFAIL,   /* payload: the error text */
  LOOM_PW_OK, LOOM_PW_FAILED,        /* payload: a message */
  LOOM_PW_COND,                      /* payload: "kind\0message" */
  LOOM_PW_PLAIN,                     /* payload: an error text, or none */
  LOOM_PW_SKIPPED                    /* cancelled before it started */
};
#define LOOM_PW_SHM 1

/* The control page.  A task's slot (seq % LOOM_PW_DEPTH) holds seq << 2
** | state: the parent sets QUEUED before sending it; the worker moves it
** to STARTED (and sets 'started') when it starts it, unless the parent
** moved it to CANCELLED first.  up_busy: the up region holds a payload
** the parent has not copied out yet. */
enum { LOOM_PW_QUEUED = 1, LOOM_PW_STARTED, LOOM_PW_CANCELLED };
typedef struct loom_pwctl {
  struct {
    atomic_ullong state;
    atomic_llong started;      /* CLOCK_MONOTONIC, ns */
  } slot[LOOM_PW_DEPTH];
  atomic_int up_busy;
} loom_pwctl;

/* Setup, the first payload down (in the down region): four uint64 (the
** memory limit, then the lengths of path, cpath and the init message;
** UINT64_MAX: none), then those bytes. */

#define LOOM_PW_PAGE 4096   /* pipe pages, and the control page's size */

/* ----------------------------------------------------------- procpool.c */

/* The parent's side of a pool and of each of its workers (procpool.c
** and procspawn.c). */
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

/* ---------------------------------------------------------- procspawn.c */

/* Write the n buffers of iov to fd, whatever the partial writes: 0, or
** -1 (errno set; EAGAIN on a non-blocking fd that is full).  Both sides
** write their frames with it. */
LOOM_API int loom_pw_write(int fd, struct iovec *iov, int n);
/* Close *fd if open, and mark it closed (-1). */
LOOM_API void loom_pw_closefd(int *fd);
/* Map w's down region for a payload of len bytes, growing it: 0, or -1. */
LOOM_API int loom_pw_reserve(pworker *w, size_t len);
/* What p's workers run (p->interpreter, made absolute; p->chunk; the
** setup payload p->setup): 0, or -1 with *err set when it cannot be
** made (left as it was when only memory ran out). */
LOOM_API int loom_pw_program(procpool *p, const loom_procpool_config *cfg,
                             const char **err);
/* Start the process of worker w (mu not held; w is W_STARTING, so no
** other thread looks at it), and send it the setup frame.  0, or -1 with
** the reason in err[]. */
LOOM_API int loom_pw_spawn(procpool *p, pworker *w, char *err,
                           size_t errlen);
/* The end of w's process, in words, for a 'crashed' error. */
LOOM_API void loom_pw_describe_end(const pworker *w, char *buf, size_t len);

#endif
