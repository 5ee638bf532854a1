/*
** loom.h -- the one internal header of loom's C core.
**
** Parts:
**   transfer.c  the value copier: a Lua value -> a self-contained message
**               (loom_msg) -> a Lua value in another lua_State
**   channel.c   reference-counted thread-safe FIFO queues
**   future.c    futures, and waiters that block on one or many of them
**   pool.c      the task queue and the worker threads, each with a state
**   lua_loom.c  the Lua binding (luaopen_loom_core) and the per-state
**               module record
**
** Only luaopen_loom_core is exported; everything else is hidden.
*/
#ifndef loom_h
#define loom_h

#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <stdatomic.h>

#include "lua.h"
/* Other Lua versions: one clear error, before any 5.4-only call can warn. */
#if LUA_VERSION_NUM == 501
#error "loom needs Lua 5.4 headers (lua.h says 5.1)"
#elif LUA_VERSION_NUM == 502
#error "loom needs Lua 5.4 headers (lua.h says 5.2)"
#elif LUA_VERSION_NUM == 503
#error "loom needs Lua 5.4 headers (lua.h says 5.3)"
#elif LUA_VERSION_NUM == 505
#error "loom needs Lua 5.4 headers (lua.h says 5.5)"
#elif LUA_VERSION_NUM != 504
#error "loom needs Lua 5.4 headers (lua.h says another version)"
#endif
#include "lauxlib.h"

#if defined(__GNUC__)
#define LOOM_API __attribute__((visibility("hidden"))) extern
#else
#define LOOM_API extern
#endif

/* Registry keys and metatable names. */
#define LOOM_EXECUTOR "loom.Executor"
#define LOOM_FUTURE   "loom.Future"
#define LOOM_CHANNEL  "loom.Channel"
#define LOOM_ERROR    "loom.Error"
#define LOOM_SCRATCH  "loom.Scratch"
#define LOOM_CFUNCS   "loom.cfuncs"    /* fnptr <-> "lib.name", per state */

/* Deepest nesting of tables/functions the copier accepts. */
#define LOOM_MAX_DEPTH 200000

/* ---------------------------------------------------------------- alloc */

/*
** Every malloc of the core goes through these, so that a build with
** -DLOOM_FAILPOINTS can make the k-th one fail (see loom_failpoint_*).
*/
LOOM_API void *loom_malloc(size_t n);
LOOM_API void *loom_realloc(void *p, size_t n);
LOOM_API void  loom_free(void *p);
/* The lua_Alloc of every worker state; ud is unused. */
LOOM_API void *loom_lua_alloc(void *ud, void *p, size_t osize, size_t nsize);
/* Test hook: make the k-th next allocation (core or worker state) fail;
** 0 disarms. Returns the number of allocations counted since arming. */
LOOM_API void loom_failpoint_arm(long k, int which);
LOOM_API long loom_failpoint_count(void);
LOOM_API int loom_failpoint_fired(void);
#define LOOM_FAIL_LUA  1   /* worker lua_State allocations */
#define LOOM_FAIL_CORE 2   /* loom_malloc/loom_realloc */

/* ------------------------------------------------------------- messages */

typedef struct loom_chan loom_chan;

/*
** A message: the bytes of one or more encoded values, plus the channels
** they refer to (each holding one reference).  A message belongs to one
** thread at a time; it is handed over under a lock.
*/
/*
** The bytecode of one Lua function, shared between threads.  A state
** caches it per closure, so a function submitted again is not dumped
** again, and each worker caches the function it loaded from it.
*/
typedef struct loom_proto {
  atomic_int refs;
  int simple;              /* no upvalue but _ENV: workers may reuse it */
  size_t len;
  unsigned char code[1];
} loom_proto;

LOOM_API void loom_proto_decref(loom_proto *p);

/* Something a message refers to by pointer, holding one reference. */
typedef struct loom_ref {
  int kind;                /* LOOM_REF_* */
  void *p;
} loom_ref;
enum { LOOM_REF_CHAN, LOOM_REF_PROTO };

#define LOOM_INLINE_REFS 2

typedef struct loom_msg {
  size_t len, cap;
  loom_ref *refs;          /* NULL while the references fit in inl */
  int nrefs, refcap;       /* refcap: the size of refs when not NULL */
  loom_ref inl[LOOM_INLINE_REFS];
  unsigned char data[1];   /* len bytes used, cap allocated */
} loom_msg;

/* The references of m (channels and protos, one reference each). */
#define loom_msg_refs(m) ((m)->refs ? (m)->refs : (m)->inl)

LOOM_API void loom_msg_free(loom_msg *m);

/* Where a value being encoded sits, for error messages. */
typedef enum {
  LOOM_AT_VALUE, LOOM_AT_ARGUMENT, LOOM_AT_RESULT,
  LOOM_AT_MAP   /* a map chunk: fn, then nseq arguments per call */
} loom_place;

/*
** Encode the n values at stack [first, first+n-1] into a new message.
** 'place' and 'argbase' name the roots in errors ("argument #k" with
** k = argbase + i).  'refs_ok' says whether channels may be referenced
** (false for loom.encode, whose string cannot own a reference).
** Raises a transfer error (or a memory error) on failure; never leaks.
** Stack: unchanged on return.
*/
LOOM_API loom_msg *loom_encode(lua_State *L, int first, int n,
                               loom_place place, int argbase, int refs_ok);

/* Check, once per process, that this interpreter's tables are laid out
** as transfer.c expects for reading and writing arrays of numbers in
** place; if not, the copier keeps to the C API.  Called by luaopen. */
void loom_arrays_check(lua_State *L);
int loom_arrays_inplace(int on);   /* 1 when in use; on >= 0 sets it */

/* As loom_encode (arguments, refs allowed), for a map chunk: fn and then
** nseq values for each call from index i0 on; errors name "element i of
** sequence #s". */
LOOM_API loom_msg *loom_encode_map(lua_State *L, int first, int n,
                                   lua_Integer i0, int nseq);

/* As loom_encode (results, refs allowed), but the n values go as one
** array table of length n, which the decoder builds directly. */
LOOM_API loom_msg *loom_encode_list(lua_State *L, int first, int n);

/*
** Decode a message of len bytes at p, pushing its values; returns their
** number.  'functions' allows bytecode (never for untrusted input).
** 'm' (may be NULL) supplies the channel references.  Raises a transfer
** error on malformed input; never reads outside [p, p+len).
*/
LOOM_API int loom_decode(lua_State *L, const unsigned char *p, size_t len,
                         int functions, const loom_msg *m);

/* Push a loom error table {kind=, message=} and raise it. */
LOOM_API int loom_raise(lua_State *L, const char *kind, const char *fmt, ...);
/* Push (without raising) a loom error table. */
LOOM_API void loom_pusherror(lua_State *L, const char *kind,
                             const char *fmt, ...);
/* Build the C function name map of a state (idempotent). */
LOOM_API void loom_cfuncs_init(lua_State *L);

/* -------------------------------------------------------------- channel */

struct loom_chan {
  atomic_int refs;
  pthread_mutex_t mu;      /* guards everything below */
  pthread_cond_t can_pop;  /* signalled on push and on close */
  pthread_cond_t can_push; /* signalled on pop and on close */
  loom_msg **ring;         /* circular buffer of messages */
  size_t head, count, size;
  size_t capacity;         /* 0 = unbounded */
  int closed;
};

LOOM_API loom_chan *loom_chan_new(size_t capacity);
LOOM_API void loom_chan_incref(loom_chan *c);
LOOM_API void loom_chan_decref(loom_chan *c);
/* 0 ok, 1 closed, -1 out of memory.  Takes m on success. Blocks. */
LOOM_API int loom_chan_push(loom_chan *c, loom_msg *m);
/* 0 ok (*out set), 1 closed and empty, 2 timeout. timeout<0 = forever. */
LOOM_API int loom_chan_pop(loom_chan *c, double timeout, loom_msg **out);
LOOM_API void loom_chan_close(loom_chan *c);
LOOM_API size_t loom_chan_count(loom_chan *c);

/* Push a channel handle (a new userdata holding a reference). */
LOOM_API void loom_pushchannel(lua_State *L, loom_chan *c);
/* The channel of the handle at idx, or NULL. */
LOOM_API loom_chan *loom_tochannel(lua_State *L, int idx);

/* --------------------------------------------------------------- future */

typedef struct loom_pool loom_pool;
typedef struct loom_waiter loom_waiter;

enum { LOOM_PENDING, LOOM_RUNNING, LOOM_FINISHED, LOOM_CANCELLED };

/* One registration of a waiter on one future. */
typedef struct loom_wlink {
  loom_waiter *w;
  struct loom_wlink *next, *prev;
  int idx;                 /* position in the waiter's watch list */
} loom_wlink;

/*
** A waiter: a thread blocked until one of the futures it registered on
** completes.  Lock order: pool->mu before w->mu.
*/
struct loom_waiter {
  pthread_mutex_t mu;      /* guards fired, q and qn */
  pthread_cond_t cv;
  int fired;               /* completions seen */
  int *q, qn, qcap;        /* if q: the idx of each completion, in order */
};

typedef struct loom_future {
  atomic_int refs;
  atomic_int state;        /* LOOM_*; written under pool->mu */
  loom_pool *pool;         /* one reference held */
  /* Under pool->mu: */
  struct loom_future *next, *prev;  /* pool queue links while pending */
  loom_wlink *waiters;
  /* Owned by the worker while running; read-only once done. */
  loom_msg *task;          /* function and arguments */
  loom_msg *result;        /* results, or {error value, traceback} */
  int failed;              /* result holds {error value, traceback} */
  int nchunk, nseq;        /* a map chunk: nchunk calls of nseq args */
  const char *errkind;     /* or a loom condition: kind (static) ... */
  char *errmsg;            /* ... and message (owned) */
} loom_future;

/* Under mu: the pool.  Workers, futures and the executor share it. */
struct loom_pool {
  atomic_int refs;
  pthread_mutex_t mu;      /* guards every field below and the queue */
  pthread_cond_t work;     /* workers sleep here while the queue is empty */
  loom_future *head, *tail;   /* FIFO of pending futures, one ref each */
  int nworkers, nidle, nstarted, nexited;
  int nspinning;           /* a worker is spinning for work (at most one) */
  int spin_paid;           /* the last spin found a task */
  atomic_int nqueued;      /* tasks in the queue, readable without mu */
  int stopping;            /* shutdown: accept no more tasks */
  int joined;
  char *broken;            /* init failed: its message */
  pthread_t *threads;
  char *name, *path, *cpath;
  loom_msg *init;          /* function and init_args, or NULL */
};

LOOM_API void loom_future_incref(loom_future *f);
LOOM_API void loom_future_decref(loom_future *f);

LOOM_API void loom_waiter_init(loom_waiter *w);
LOOM_API void loom_waiter_destroy(loom_waiter *w);
/* Register; returns 1 (and does not link) if f is already done. */
LOOM_API int loom_future_watch(loom_future *f, loom_wlink *l, loom_waiter *w);
LOOM_API void loom_future_unwatch(loom_future *f, loom_wlink *l);
/* Wait until fired or the deadline (<0: forever). 1 fired, 0 timeout. */
LOOM_API int loom_waiter_wait(loom_waiter *w, const struct timespec *deadline);
/* Called with pool->mu held: mark done and wake its waiters. */
LOOM_API void loom_future_complete_locked(loom_future *f, int state);
LOOM_API int loom_future_isdone(loom_future *f);

/* A pause inside a spin loop. */
#if defined(__x86_64__) || defined(__i386__)
#define loom_cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define loom_cpu_relax() __asm__ __volatile__("yield")
#else
#define loom_cpu_relax() ((void)0)
#endif

/* Monotonic deadline 'secs' from now into *ts. */
LOOM_API void loom_deadline(struct timespec *ts, double secs);

/* ----------------------------------------------------------------- pool */

typedef struct loom_pool_config {
  int workers;
  const char *name;        /* thread name prefix, may be NULL */
  const char *path, *cpath;
  loom_msg *init;          /* function + init_args, or NULL (taken) */
} loom_pool_config;

/* Creates the pool and starts its workers; NULL with *err set on error. */
LOOM_API loom_pool *loom_pool_new(loom_pool_config *cfg, const char **err);
/* A new future (one reference), or NULL when out of memory. */
LOOM_API loom_future *loom_future_new(loom_msg *task);
LOOM_API void loom_pool_incref(loom_pool *p);
LOOM_API void loom_pool_decref(loom_pool *p);
/* 0 queued; 1 shut down. A broken pool fails the future at once. */
LOOM_API int loom_pool_submit(loom_pool *p, loom_future *f);
/* Set up a fresh worker-like state: libraries, loom, os.exit, print. */
LOOM_API int loom_open_worker_state(lua_State *L);
LOOM_API char *loom_strdup(const char *s);
/* Cancel a pending future: 1 cancelled (now or before), 0 not. */
LOOM_API int loom_pool_cancel(loom_future *f);
/* Stop accepting tasks; optionally cancel queued ones. */
LOOM_API void loom_pool_shutdown(loom_pool *p, int cancel_futures);
/* Wait for all workers to exit and join them (idempotent). */
LOOM_API void loom_pool_join(loom_pool *p);
LOOM_API int loom_pool_nworkers(loom_pool *p);

#endif
