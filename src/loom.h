/*
** loom.h -- the internal header of loom's C core: the map of its parts,
** each declaration under the file that defines it, the files in the
** order a reader would open them (src/README.md says more).
**
** The core, from the bottom up:
**   alloc.c        the allocator of the core and of worker states
**   intr.c         interrupt points (how a task is stopped), the clock
**   transfer.c     the value copier's shared part: errors, messages,
**                  pins, the raw-array check, the C function map
**   encode.c       a Lua value -> a self-contained message (loom_msg)
**   decode.c       a message -> a Lua value in another lua_State
**   channel.c      reference-counted thread-safe FIFO queues
**   future.c       futures, and waiters that block on one or many; they
**                  know a pool only as a loom_sched (its lock and ops)
**   task.c         running a task inside a state, for every kind of pool
**   pool.c         the thread pool: a task queue and worker threads
**   procpool.c     the process pool: worker processes and their manager
**   procspawn.c    starting a worker process
**   procworker.c   the main loop of a worker process
** The binding (src/lua_*.c), which calls down into the core and never
** the other way:
**   lua_module.c   luaopen_loom_core, the per-state module record,
**                  module functions
**   lua_aux.c      what the binding files share: checks, blocking
**   lua_future.c   the binding of futures, waiting, as_completed
**   lua_executor.c the binding of executors, and of map
**   lua_channel.c  the binding of channels
**   lua_queue.c    the binding of completion queues, and loom.poll
**   lua_preload.c  loom's Lua modules, built into the core
**   lua_tests.c    the specs' hooks, only in test builds (as ltests.c)
** The process pool's three files share proc.h besides.
**
** Only luaopen_loom_core is exported; everything else is hidden.
*/
#ifndef loom_h
#define loom_h

#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

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
#define LOOM_CFUNCS   "loom.cfuncs"    /* C function -> its encoded name */

/* Longest module or field name by which a C function crosses. */
#define LOOM_CNAME_MAX 255

/* Deepest nesting of tables/functions the copier accepts. */
#define LOOM_MAX_DEPTH 200000

/* A pause inside a spin loop. */
#if defined(__x86_64__) || defined(__i386__)
#define loom_cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define loom_cpu_relax() __asm__ __volatile__("yield")
#else
#define loom_cpu_relax() ((void)0)
#endif

/* -------------------------------------------------------------- alloc.c */

/* Test hook: make the k-th next allocation (core or worker state) fail;
** 0 disarms. Returns the number of allocations counted since arming. */
LOOM_API void loom_failpoint_arm(long k, int which);
LOOM_API long loom_failpoint_count(void);
LOOM_API int loom_failpoint_fired(void);
#define LOOM_FAIL_LUA  1   /* worker lua_State allocations */
#define LOOM_FAIL_CORE 2   /* loom_malloc/loom_realloc */

/*
** Every malloc of the core goes through these, so that a build with
** -DLOOM_FAILPOINTS can make the k-th one fail (see loom_failpoint_*).
*/
LOOM_API void *loom_malloc(size_t n);
LOOM_API void *loom_realloc(void *p, size_t n);
LOOM_API void  loom_free(void *p);
LOOM_API char *loom_strdup(const char *s);   /* NULL: out of memory */
/* Double the array *arr of *cap elements of elem bytes (8 at first): 1,
** or 0 when out of memory (*arr is then unchanged). */
LOOM_API int loom_grow(void **arr, int *cap, size_t elem);
/* The lua_Alloc of every worker state; ud is unused. */
LOOM_API void *loom_lua_alloc(void *ud, void *p, size_t osize, size_t nsize);
/* The lua_Alloc of a worker state under a memory limit; ud is its own
** loom_memlimit (used starts at 0; used <= limit always holds). */
typedef struct loom_memlimit {
  size_t used, limit;
} loom_memlimit;
LOOM_API void *loom_lua_alloc_limited(void *ud, void *p, size_t osize,
                                      size_t nsize);

/* --------------------------------------------------------------- intr.c */

/* Monotonic deadline 'secs' from now into *ts. */
LOOM_API void loom_deadline(struct timespec *ts, double secs);
LOOM_API double loom_now(void);   /* monotonic seconds */

/* The deepest chain of resumed coroutines that a stop follows. */
#define LOOM_CHAIN_MAX 64

/*
** The interrupt point of a state that runs tasks: how another thread
** stops the task that state is running (f:cancel{running = true},
** task_timeout, shutdown{cancel_running = true}).  gen counts the
** state's tasks; stop names the one to stop: the running task is to stop
** while stop == gen.  A blocked loom call of that state publishes the lock
** and condition it sleeps on (wmu, wcv), so that the stopper wakes it at
** once.  Lock order: mu before any published wmu.
*/
typedef struct loom_intr {
  pthread_mutex_t mu;      /* guards wmu, wcv and L, and makes stopping
                              (setting the state's hooks) exclusive */
  pthread_mutex_t *wmu;    /* what a blocked call sleeps on, or NULL */
  pthread_cond_t *wcv;
  atomic_uint gen, stop;   /* written by the owner / by stoppers */
  lua_State *L;            /* the state's main thread; NULL once closed */
  /* The coroutines being resumed, innermost last: written by the owner
  ** without a lock; 'busy' (a stopper reads them) makes the owner wait
  ** before a popped one can go away. */
  atomic_uintptr_t chain[LOOM_CHAIN_MAX];
  atomic_int nchain, busy;
  int unwinding;           /* the owner's: the stopped task unwinds */
} loom_intr;

LOOM_API void loom_intr_init(loom_intr *in);
LOOM_API void loom_intr_destroy(loom_intr *in);
/* 1 when the running task is to stop (in may be NULL: never). */
LOOM_API int loom_intr_fired(loom_intr *in);
/* A blocking call publishes (mu, cv) before it sleeps, and withdraws them
** after; in may be NULL.  Called without mu held. */
LOOM_API void loom_intr_enter(loom_intr *in, pthread_mutex_t *mu,
                              pthread_cond_t *cv);
LOOM_API void loom_intr_leave(loom_intr *in);
/* With in->mu held: wake the call blocked in the state, if any. */
LOOM_API void loom_intr_wake_locked(loom_intr *in);

/* ----------------------------------------------------------- transfer.c */

/*
** What the encoder (encode.c) and the decoder (decode.c) share: loom's
** error values, messages and what they refer to, pinned strings, shared
** bytecode, the raw-array check and the map of C functions.
*/

/* Push a loom error table {kind=, message=} (without raising it). */
LOOM_API void loom_pusherror(lua_State *L, const char *kind,
                             const char *fmt, ...);
/* Push a text for the value at idx and return it: the value itself if a
** string or number, else its tostring run protected; when __tostring
** raises or gives no string, "(error object is a T value)", as lua.c
** says.  Raises only on a memory error.  Needs 3 free stack slots. */
LOOM_API const char *loom_pushtext(lua_State *L, int idx);
/* Push a loom error table and raise it. */
LOOM_API int loom_raise(lua_State *L, const char *kind, const char *fmt, ...);

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

/*
** A large string crossing by reference: the message refers to the
** sender's own Lua string, anchored in the sender's state until no
** message holds the pin, and the receiver's lua_pushlstring is the one
** copy of its bytes.  If the sender's state closes first, the pin gets a
** malloc'd copy of the bytes.  Refcounted: the sender holds one reference
** while the string is anchored, each message one.
*/
typedef struct loom_pin loom_pin;

/* Something a message refers to by pointer, holding one reference. */
typedef struct loom_ref {
  int kind;                /* LOOM_REF_* */
  void *p;
} loom_ref;
enum { LOOM_REF_CHAN, LOOM_REF_PROTO, LOOM_REF_PIN };

#define LOOM_INLINE_REFS 2

/*
** A message: the bytes of one or more encoded values, plus what they refer
** to by pointer (channels, shared bytecode, large strings: loom_ref, each
** holding one reference).  A message belongs to one thread at a time; it
** is handed over under a lock.  A large message is the encoder's own
** buffer, handed over rather than copied out (cap may exceed len).
*/
typedef struct loom_msg {
  size_t len, cap;
  loom_ref *refs;          /* NULL while the references fit in inl */
  int nrefs, refcap;       /* refcap: the size of refs when not NULL */
  loom_ref inl[LOOM_INLINE_REFS];
  unsigned char data[1];   /* len bytes used, cap allocated */
} loom_msg;

/* The references of m (channels, protos and pins, one reference each). */
#define loom_msg_refs(m) ((m)->refs ? (m)->refs : (m)->inl)

/* The format of a message's bytes: its grammar is at the top of
** transfer.c; encode.c writes it, decode.c reads it. */
#define LOOM_MAGIC "LOOM"
#define LOOM_VERSION 3     /* bump on every change of the format */
#define LOOM_HEADER_LEN 9  /* magic, version, nobjs */
enum {   /* the scalars come first, up to LOOM_T_STR (d_item relies on it) */
  LOOM_T_NIL, LOOM_T_FALSE, LOOM_T_TRUE, LOOM_T_INT, LOOM_T_INT8,
  LOOM_T_FLT, LOOM_T_STR, LOOM_T_TABLE, LOOM_T_FUNC, LOOM_T_CFUNC,
  LOOM_T_REF, LOOM_T_ENV, LOOM_T_CHAN, LOOM_T_JOIN, LOOM_T_ERRMT,
  LOOM_T_PROTO, LOOM_T_PIN
};

/* Frames of either walk that live on the C stack; deeper ones go to a
** userdata. */
#define LOOM_INLINE_FRAMES 32

LOOM_API void loom_proto_decref(loom_proto *p);
/* Drop m's references (nrefs becomes 0). */
LOOM_API void loom_msg_unref(loom_msg *m);
LOOM_API void loom_msg_free(loom_msg *m);   /* m may be NULL */

/* Pins.  The sender's state keeps the pins it made in its pinset, a
** userdata in the registry.  Each function below needs 3 free stack
** slots; psidx is an absolute stack index. */
typedef struct loom_pinset loom_pinset;
LOOM_API void loom_pin_incref(loom_pin *p);
/* Push this state's pinset and return it; when there is none yet, make
** it if 'make', else push nil and return NULL. */
LOOM_API loom_pinset *loom_pinset_push(lua_State *L, int make);
/* Whether a sweep of ps is due (it is open and has pins to look at). */
LOOM_API int loom_pinset_due(const loom_pinset *ps);
/* Un-anchor the pins of the pinset at psidx that no message holds. */
LOOM_API void loom_pinset_sweep(lua_State *L, int psidx);
/* A new pin of the string at stridx, anchored in the pinset at psidx,
** with one reference (the pinset's); NULL when the pinset is closed (the
** state is closing).  Raises a memory error. */
LOOM_API loom_pin *loom_pin_new(lua_State *L, int psidx, int stridx);
/* Un-anchor the strings of this state that no message refers to any
** more.  Cheap when there are none; never raises. */
LOOM_API void loom_pins_sweep(lua_State *L);
/* The number of this state's strings still anchored for a message (of
** those with these bytes, unless NULL), after sweeping all of them; for
** the specs. */
LOOM_API int loom_pins_live(lua_State *L, const char *bytes);
/* Push a copy of p's bytes.  Raises only a memory error. */
LOOM_API void loom_pin_push(lua_State *L, loom_pin *p);

/* A userdata owning one reference to a proto (p may be NULL): the
** encoder's cache (closure -> box) and the decoder's (proto -> box whose
** user value is the loaded function) hold protos this way. */
typedef struct loom_protobox {
  loom_proto *p;
} loom_protobox;
LOOM_API loom_protobox *loom_newprotobox(lua_State *L);

/* The frames of a walk (n in use, *cap of 'size' bytes each), doubled
** into a new userdata that replaces the value at stack index slot (the
** old frames, when in a userdata); returns the new array.  Raises a
** memory error. */
LOOM_API void *loom_frames_grow(lua_State *L, void *f, int n, int *cap,
                                size_t size, int slot);

/* Raw arrays: the array part of a table, read and written in place (see
** transfer.c for when). */
typedef struct loom_rawtvalue {
  union { void *p; lua_Integer i; lua_Number n; } v;
  unsigned char tt;
} loom_rawtvalue;
#define LOOM_RAW_VNUMINT 0x03   /* makevariant(LUA_TNUMBER, 0) */
#define LOOM_RAW_VNUMFLT 0x13   /* makevariant(LUA_TNUMBER, 1) */
/* Check, once per process, that this interpreter's tables are laid out
** as expected; if not, the copier keeps to the C API.  Called by
** luaopen.  Stack: unchanged.  May raise a memory error. */
LOOM_API void loom_arrays_check(lua_State *L);
/* 1 when the in-place path is in use; on >= 0 turns it on or off (on
** only where the check passed). */
LOOM_API int loom_arrays_inplace(int on);
/* The array part of the table at idx, and its allocated length in *n
** (the table's length may be less); NULL when not in use. */
LOOM_API loom_rawtvalue *loom_rawarray(lua_State *L, int idx,
                                       unsigned int *n);

/* Add every C function of a module in package.loaded to the map at
** stack index map (function -> its encoded name). */
LOOM_API void loom_cfuncs_scan(lua_State *L, int map);
/* Build (again) the map of a state from the C functions that are fields
** of modules in package.loaded to the names they cross by, and keep it
** in the registry (LOOM_CFUNCS). */
LOOM_API void loom_cfuncs_init(lua_State *L);

/* ------------------------------------------------------------- encode.c */

/* Where a value being encoded sits, for error messages. */
typedef enum {
  LOOM_AT_VALUE, LOOM_AT_ARGUMENT, LOOM_AT_RESULT,
  LOOM_AT_MAP   /* a map chunk: fn, then nseq arguments per call */
} loom_place;

/*
** What a message may refer to by pointer.  Between threads
** (LOOM_REFS_THREADS) a message may refer to channels, shared bytecode
** and strings of at least LOOM_PIN_MIN bytes, which then cross by
** reference (loom_pin).  A string (loom.encode, LOOM_REFS_NONE) and a
** message to another process (LOOM_REFS_PROCESS) are self-contained, and
** the latter refuses a channel as one that cannot cross into another
** process.
*/
#define LOOM_REFS_NONE    0
#define LOOM_REFS_THREADS 1
#define LOOM_REFS_PROCESS 2

/* Strings this long or longer cross by reference when the refs mode
** allows (and the sending state has no memory limit: a pinned string
** outlives its task, and would count against the limit meanwhile). */
#define LOOM_PIN_MIN (32 * 1024)

/* How a message is encoded (callers name the fields they set with a
** designated initializer; the others are 0). */
typedef struct loom_encode_opts {
  loom_place place;        /* where the values sit, for errors */
  int argbase;             /* LOOM_AT_ARGUMENT: value i (from 0) is
                              "argument #(argbase + i)" */
  int refs;                /* what the message may refer to: LOOM_REFS_* */
  int list;                /* the n values go as one array table of
                              length n, which the decoder builds directly
                              (a map chunk's results) */
  lua_Integer i0;          /* LOOM_AT_MAP: the values are fn, then nseq */
  int nseq;                /* values per call, the first call's index i0;
                              errors name "element i of sequence #s" */
} loom_encode_opts;

/*
** Encode the n values at stack [first, first+n-1] into a new message, as
** o says.  Raises a transfer error (or a memory error) on failure; never
** leaks.  Stack: unchanged on return.
*/
LOOM_API loom_msg *loom_encode_with(lua_State *L, int first, int n,
                                    const loom_encode_opts *o);

/* Free m, a message that state L has decoded and needs no more; a large
** one becomes L's encode buffer instead (until a small message comes), so
** that the next large message is written into memory already mapped.
** Needs 1 free stack slot; never raises. */
LOOM_API void loom_msg_recycle(lua_State *L, loom_msg *m);

/* loom_encode_with, o being {place, argbase, refs}: "argument #k" in an
** error is value k - argbase. */
LOOM_API loom_msg *loom_encode(lua_State *L, int first, int n,
                               loom_place place, int argbase, int refs);

/* ------------------------------------------------------------- decode.c */

/*
** Decode a message of len bytes at p, pushing its values; returns their
** number.  'functions' allows bytecode (never for untrusted input).
** 'm' (may be NULL) supplies the references.  Raises a transfer error on
** malformed input; never reads outside [p, p+len).
*/
LOOM_API int loom_decode(lua_State *L, const unsigned char *p, size_t len,
                         int functions, const loom_msg *m);

/* ------------------------------------------------------------ channel.c */

typedef struct loom_chan {
  atomic_int refs;
  pthread_mutex_t mu;      /* guards everything below */
  pthread_cond_t can_pop;  /* signalled on push and on close */
  pthread_cond_t can_push; /* signalled on pop and on close */
  loom_msg **ring;         /* circular buffer of messages */
  size_t head, count, size;
  size_t capacity;         /* 0 = unbounded */
  int closed;
} loom_chan;

LOOM_API loom_chan *loom_chan_new(size_t capacity);
LOOM_API void loom_chan_incref(loom_chan *c);
LOOM_API void loom_chan_decref(loom_chan *c);
/* What a push gives: done (it took m), the channel is closed, it is still
** full at the deadline (NULL: none) or when in fired, or no memory. */
typedef enum {
  LOOM_PUSH_OK, LOOM_PUSH_CLOSED, LOOM_PUSH_FULL, LOOM_PUSH_NOMEM
} loom_push_result;
LOOM_API loom_push_result loom_chan_push(loom_chan *c, loom_msg *m,
                                         const struct timespec *deadline,
                                         loom_intr *in);
/* What a pop gives: a message (in *out), closed and empty, or still empty
** at the deadline (NULL: none; in the past: do not wait) or when in
** fired. */
typedef enum {
  LOOM_POP_OK, LOOM_POP_CLOSED, LOOM_POP_EMPTY
} loom_pop_result;
LOOM_API loom_pop_result loom_chan_pop(loom_chan *c,
                                       const struct timespec *deadline,
                                       loom_intr *in, loom_msg **out);
LOOM_API void loom_chan_close(loom_chan *c);
LOOM_API size_t loom_chan_count(loom_chan *c);

/* A channel handle: a userdata of metatable LOOM_CHANNEL holding one
** reference (c is NULL until it is set, and after __gc). */
typedef struct loom_chandle {
  loom_chan *c;
} loom_chandle;

/* The channel of the handle at idx, or NULL. */
LOOM_API loom_chan *loom_tochannel(lua_State *L, int idx);
/* Push a channel handle (a new userdata holding a reference). */
LOOM_API void loom_pushchannel(lua_State *L, loom_chan *c);

/* ------------------------------------------------------------- future.c */

typedef struct loom_sched loom_sched;
typedef struct loom_future loom_future;
typedef struct loom_waiter loom_waiter;

/*
** A scheduler: a kind of pool (threads, processes) as the futures and
** the binding see it.  Each kind embeds a loom_sched as the first
** member of its own struct and implements the ops; nothing above this
** line knows threads from processes.
*/
typedef struct loom_sched_ops {
  /* Queue f (one reference is taken): 0 queued (or failed at once when
  ** the pool is broken), 1 refused: the pool is shut down. */
  int (*submit)(loom_sched *s, loom_future *f);
  /* Cancel f: a pending one always; a running one only when 'running'
  ** (it is stopped).  1 if f is now cancelled, 0 if not. */
  int (*cancel)(loom_sched *s, loom_future *f, int running);
  /* Accept no more tasks; cancel the queued ones, and stop the running
  ** ones, if asked.  Idempotent. */
  void (*shutdown)(loom_sched *s, int cancel_futures, int cancel_running);
  /* Wait until every worker has ended (after shutdown) and reap them:
  ** 1 done, 0 when the deadline (NULL: none) passed first.  Idempotent. */
  int (*join)(loom_sched *s, const struct timespec *deadline);
  int (*nworkers)(loom_sched *s);
  void (*free)(loom_sched *s);   /* the last reference went */
} loom_sched_ops;

struct loom_sched {
  const loom_sched_ops *ops;
  atomic_int refs;
  pthread_mutex_t mu;      /* guards the state and waiter list of every
                              future of this sched, and whatever the kind
                              keeps under it (its queue) */
};

LOOM_API void loom_sched_init(loom_sched *s, const loom_sched_ops *ops);
LOOM_API void loom_sched_incref(loom_sched *s);
LOOM_API void loom_sched_decref(loom_sched *s);

enum { LOOM_PENDING, LOOM_RUNNING, LOOM_FINISHED, LOOM_CANCELLED };

/* How a task ended, as its future keeps it. */
typedef struct loom_outcome {
  loom_msg *result;        /* the results, or {error value, traceback} */
  int failed;              /* result holds {error value, traceback} */
  const char *errkind;     /* or a loom condition: kind (static) ...    */
  char *errmsg;            /* ... and message (owned; NULL: no memory)  */
} loom_outcome;

LOOM_API void loom_outcome_free(loom_outcome *o);

/* One registration of a waiter on one future. */
typedef struct loom_wlink {
  loom_waiter *w;
  struct loom_wlink *next, *prev;  /* the future's waiters (sched->mu) */
  struct loom_wlink *dnext;        /* the waiter's done list (w->mu) */
  loom_future *f;
  int idx;                 /* its place in the watcher's list */
} loom_wlink;

/*
** A waiter: a thread blocked until futures it registered on complete.
** A queueing waiter also collects the links of completed futures, in
** the order they completed.  Lock order: sched->mu before w->mu.
*/
struct loom_waiter {
  pthread_mutex_t mu;      /* guards fired and the done list */
  pthread_cond_t cv;
  int fired;               /* completions seen */
  int queue;               /* keep the done list */
  loom_wlink *dhead, *dtail;
  struct loom_wakefd *wake; /* or NULL: readable while the done list is
                              not empty (see loom_waiter_push_locked) */
};

struct loom_future {
  atomic_int refs;
  atomic_int state;        /* LOOM_*; written under sched->mu */
  loom_sched *sched;       /* one reference; NULL until submitted */
  /* Under sched->mu: */
  struct loom_future *next, *prev;  /* the pool's queue links */
  loom_wlink *waiters;
  void *runner;            /* the pool's: what runs it, while running */
  /* The task: set before submit; the worker takes it. */
  loom_msg *task;          /* function and arguments */
  int nchunk, nseq;        /* a map chunk: nchunk calls of nseq args */
  int xflags;              /* LOOM_TASK_*, for the task runner */
  /* Set once, under sched->mu, when it finishes; read-only after. */
  loom_outcome out;
  /* f:pollfd(): made on first request (set under sched->mu), readable
  ** once f is done; NULL for every future nobody asked.  Closed when the
  ** future is freed. */
  struct loom_wakefd *pollfd;
};

/* A new pending future holding task (taken), or NULL: out of memory. */
LOOM_API loom_future *loom_future_new(loom_msg *task);
LOOM_API void loom_future_incref(loom_future *f);
LOOM_API void loom_future_decref(loom_future *f);
LOOM_API int loom_future_isdone(loom_future *f);
/* With sched->mu held: mark f done (FINISHED or CANCELLED), wake its
** waiters. */
LOOM_API void loom_future_complete_locked(loom_future *f, int state);
/* With sched->mu held: finish a running f with outcome o (taken; freed
** instead when f is done already, cancelled while it ran); 1 if it did. */
LOOM_API int loom_future_finish_locked(loom_future *f, loom_outcome *o);
/* With sched->mu held: fail f with a loom condition. */
LOOM_API void loom_future_fail_locked(loom_future *f, const char *kind,
                                      const char *msg);

/*
** What every kind of pool does alike, with its sched's lock held: a FIFO
** of pending futures (linked through f->next/prev), and the admission
** that starts a submit.
*/
typedef struct loom_fqueue {
  loom_future *head, *tail;
} loom_fqueue;

LOOM_API void loom_fqueue_push(loom_fqueue *q, loom_future *f);
LOOM_API void loom_fqueue_push_front(loom_fqueue *q, loom_future *f);
LOOM_API loom_future *loom_fqueue_pop(loom_fqueue *q);      /* or NULL */
LOOM_API void loom_fqueue_remove(loom_fqueue *q, loom_future *f);

/* The start of submitting f to s, with s->mu held.  When the pool is shut
** down (stopping) or broken (f fails with that message), it unlocks and
** returns what submit returns: 1 (refused) or 0 (f is done); else it
** gives f its sched and the pool's reference and returns -1, the lock
** still held, for the pool to queue f. */
LOOM_API int loom_sched_admit(loom_sched *s, loom_future *f, int stopping,
                              const char *broken);

LOOM_API void loom_waiter_init(loom_waiter *w, int queue);
LOOM_API void loom_waiter_destroy(loom_waiter *w);
/* Register l (of waiter w) on f; returns 1 (and does not link) if f is
** done already. */
LOOM_API int loom_future_watch(loom_future *f, loom_wlink *l, loom_waiter *w);
LOOM_API void loom_future_unwatch(loom_future *f, loom_wlink *l);
/* Wait until fired, the deadline (NULL: none), or in fires: 1 fired,
** 0 not (yet). */
LOOM_API int loom_waiter_wait(loom_waiter *w, const struct timespec *deadline,
                              loom_intr *in);
/* With w->mu held: append the fired link l to w's done list (signalling
** w->wake when the list was empty). */
LOOM_API void loom_waiter_push_locked(loom_waiter *w, loom_wlink *l);
/* The next link of the done list (with w->mu held), or NULL; a waiter's
** wake descriptor is drained when its list becomes empty. */
LOOM_API loom_wlink *loom_waiter_pop_locked(loom_waiter *w);

/*
** A descriptor that an event loop (luv, cqueues, a C host's poll) watches
** for reading: an eventfd (Linux) or a pipe.  It is readable exactly while
** 'up' is set; whoever owns it guards 'up' with one lock (a queue's
** waiter mutex, a future's sched mutex).  Signalling is a non-blocking
** write and never allocates, so it may run under those locks.
*/
typedef struct loom_wakefd {
  int r, w;                /* read and write ends (equal for an eventfd) */
  int up;                  /* readable: signalled and not drained */
} loom_wakefd;

/* Open e (not signalled): 0, or an errno value. */
LOOM_API int loom_wakefd_open(loom_wakefd *e);
LOOM_API void loom_wakefd_close(loom_wakefd *e);
LOOM_API void loom_wakefd_signal(loom_wakefd *e);   /* make it readable */
/* The descriptor of f (made on first call): readable once f is done.
** -1 with errno set when it cannot be made.  Only f's owner calls it. */
LOOM_API int loom_future_pollfd(loom_future *f);

/* --------------------------------------------------------------- task.c */

/*
** Running a task inside a lua_State: decode the function and arguments,
** call under a message handler that keeps the traceback, encode the
** results (or the error value and traceback), and the same for a map
** chunk.  Every kind of worker runs its tasks here.
*/

/* f->xflags: the results go to another process, so they are encoded
** self-contained (LOOM_REFS_PROCESS); f->task is the caller's, not freed. */
#define LOOM_TASK_SELFCONTAINED 1
#define LOOM_TASK_BORROWED      2

/* A map chunk's call that did not return one value has its results
** packed as {n = count, ...} in the chunk's list (see run_chunk): replace
** that table, at the top, by its values; returns their number. */
LOOM_API int loom_unpack_results(lua_State *L);

/* Run the task of f (taken from f->task) in L, filling *o.  Never raises;
** the stack is empty again on return.  Returns 1 when the state ran out
** of memory (in the task or around it), else 0. */
LOOM_API int loom_task_run(lua_State *L, loom_future *f, loom_outcome *o);

/* Stop task number gen of the state of in, if it still runs it: its state
** raises a cancelled error at its next instruction (a count hook, set from
** this thread as lua.c sets one from a signal handler), in whichever
** coroutine runs, and a loom call it is blocked in wakes at once.  The
** caller has set in->stop = gen.  Never touches Lua otherwise. */
LOOM_API void loom_task_stop(loom_intr *in, unsigned gen);
/* The owner, between tasks, after its task number gen was stopped:
** remove the hook again. */
LOOM_API void loom_task_unstop(loom_intr *in);

/* Set up a fresh worker state: libraries, loom.core (opened by
** open_core, the binding's luaopen_loom_core), os.exit, print, and
** coroutine.resume/wrap that a stop can follow.  May raise.  Stack:
** unchanged. */
LOOM_API void loom_open_worker_state(lua_State *L, lua_CFunction open_core);

/* Set up worker state L: libraries, loom.core (open_core),
** package.path/cpath (may be NULL) and init (function and init_args, may
** be NULL).  With an interrupt point (in, may be NULL), the state's tasks
** can be stopped (loom_task_stop).  Protected inside: returns NULL, or
** the error text (owned) when something failed. */
LOOM_API char *loom_task_setup(lua_State *L, lua_CFunction open_core,
                               const char *path, const char *cpath,
                               const loom_msg *init, loom_intr *in);

/* A host's C module loaders: the creator's package.preload entries that
** are C functions without upvalues, for thread workers (a function
** pointer is valid in the whole process).  One block; a NULL name ends
** the list.  loom_preload_collect reads them from the table at idx (the
** registry's _PRELOAD); it never raises: NULL when there are none (or no
** memory). */
typedef struct loom_preload {
  const char *name;
  lua_CFunction open;
} loom_preload;
LOOM_API loom_preload *loom_preload_collect(lua_State *L, int idx);
/* Put them in the package.preload of a fresh state L, before its
** libraries are opened: NULL, or the error text (owned). */
LOOM_API char *loom_task_preload(lua_State *L, const loom_preload *pl);

/* --------------------------------------------------------------- pool.c */

typedef struct loom_pool_config {
  int workers;
  const char *name;        /* thread name prefix, may be NULL */
  double task_timeout;     /* seconds a task may run; 0: no limit */
  size_t memory_limit;     /* bytes per worker state; 0: no limit */
  const char *path, *cpath;
  loom_msg *init;          /* function + init_args, or NULL (taken) */
  loom_preload *preload;   /* or NULL (taken, freed with loom_free) */
  lua_CFunction open_core; /* opens loom.core in a worker state: the
                              binding's luaopen_loom_core, so that the pool
                              need not call up into the binding */
} loom_pool_config;

/* A thread pool with its workers started; NULL with *err set on error. */
LOOM_API loom_sched *loom_pool_new(loom_pool_config *cfg, const char **err);

/* ----------------------------------------------------------- procpool.c */

/*
** A pool of worker processes: procpool.c is the parent's side (it
** implements the sched ops), procspawn.c starts a worker process, and
** procworker.c is what runs in each (core._process_worker).  What these
** three share (the protocol between parent and worker, and the parent's
** structs) is in proc.h, included by them alone.
*/
typedef struct loom_procpool_config {
  loom_pool_config base;   /* name is not used */
  long max_tasks;          /* tasks per worker process; 0: no limit */
  const char *interpreter; /* the Lua interpreter that runs the workers */
} loom_procpool_config;

/* A process pool (its manager thread starts the workers); NULL with *err
** set when even that cannot be made. */
LOOM_API loom_sched *loom_procpool_new(loom_procpool_config *cfg,
                                       const char **err);

/* ---------------------------------------------------------- procspawn.c */

/* The default interpreter (owned): the running executable when argv0
** (the lowest arg[] of the creating state, may be NULL) names it, so that
** a standalone interpreter runs its own kind of worker, and always in a
** sanitizer build; else "lua5.4", found in PATH. */
LOOM_API char *loom_procpool_interpreter(const char *argv0);

/* --------------------------------------------------------- procworker.c */

/* The main loop of a worker process whose parent is ppid, opening
** loom.core in its state with open_core; returns the process's exit
** status (core._process_worker). */
LOOM_API int loom_process_worker(lua_Integer ppid, lua_CFunction open_core);

/*
** ======================================================================
** The Lua binding (src/lua_*.c) from here on: it calls down into the
** core above, and the core never calls it.
** ======================================================================
*/

/* --------------------------------------------------------- lua_module.c */

/*
** Per state that loads the module there is one module record (a userdata,
** upvalue 1 of every binding function).  The core sets two of its fields:
** intr (task.c, in a worker state) and pinned (transfer.c).
*/
#define LOOM_MODULE "loom.Module"

typedef struct loom_mstate {
  loom_intr *intr;         /* a worker state's interrupt point, or NULL */
  loom_sched **scheds;     /* made here and not yet joined; one ref each */
  int nscheds, capscheds;
  loom_chan **chans;       /* made here; one ref each (pruned) */
  int nchans, capchans, prunechans;
  int ncallbacks;          /* futures with callbacks still to run */
  int closed;
  int pinned;              /* strings crossed by reference (transfer.c):
                              waiting functions sweep them */
} loom_mstate;

#define loom_getmstate(L) \
  ((loom_mstate *)lua_touserdata(L, lua_upvalueindex(1)))

/* The module record's user values: pending callbacks, then metatables
** (kept there so that hot paths check types without a registry lookup). */
enum { LOOM_UV_CALLBACKS = 1, LOOM_UV_FUTURE, LOOM_UV_EXECUTOR,
       LOOM_UV_CHANNEL, LOOM_UV_POKE, LOOM_UV_N = LOOM_UV_POKE };

/* The one exported symbol. */
#if defined(__GNUC__)
__attribute__((visibility("default")))
#endif
int luaopen_loom_core(lua_State *L);

/* ------------------------------------------------------------ lua_aux.c */

/* The userdata at idx if its metatable is user value uv, else NULL. */
LOOM_API void *loom_fastudata(lua_State *L, int idx, int uv);
/* As loom_fastudata, or raise the usual "tname expected" error. */
LOOM_API void *loom_checkud(lua_State *L, int idx, int uv, const char *tname);
/* Set the metatable of the value at the top to user value uv. */
LOOM_API void loom_setmeta(lua_State *L, int uv);
/* Optional timeout at idx: < 0 forever (absent/nil), else seconds. */
LOOM_API double loom_opttimeout(lua_State *L, int idx);
/* Report the error value at the top through warn, then pop it. */
LOOM_API void loom_warn_error(lua_State *L, const char *what);

/*
** Blocking in the binding.  Every loom call that blocks waits in slices of
** at most LOOM_SLICE seconds and, between slices, lets Lua run when the
** state's hook changed: that is how the stock interpreter delivers Ctrl-C
** (its SIGINT handler sets a hook, which raises "interrupted!"), and how a
** stopped task's state is stopped (loom_task_stop sets a hook and wakes
** the call at once through the state's interrupt point).
*/
#define LOOM_SLICE 0.1

typedef struct loom_block {
  lua_State *L, *main;     /* the running thread and the state's main one */
  double deadline;         /* monotonic seconds; < 0: none */
  loom_intr *in;           /* this state's interrupt point, or NULL */
} loom_block;

/* Begin a wait of timeout seconds (< 0: forever); may let Lua run first
** (a hook is set), so the caller holds nothing yet.  Stack: unchanged. */
LOOM_API void loom_block_begin(lua_State *L, loom_block *b, double timeout);
/* The end of the next slice into *ts: 1, or 0 when the wait's own
** deadline has passed (*ts is then that deadline). */
LOOM_API int loom_block_slice(loom_block *b, struct timespec *ts);
/* 1 when Lua must run before the wait goes on (a hook is set, or this
** state's task is stopped). */
LOOM_API int loom_block_interrupted(loom_block *b);
/* Let Lua run the hook (it may raise: the caller holds nothing then);
** when it returns, the wait goes on from here. */
LOOM_API void loom_block_poke(loom_block *b);

/* Push a box that owns a message while Lua code could raise (set *box;
** the box frees it when collected unless it is set back to NULL). */
LOOM_API loom_msg **loom_msgbox(lua_State *L);
/* Make metatable 'name' with methods, __gc and __tostring, each function
** with the module record (at stack index ms) as upvalue 1. */
LOOM_API void loom_newclass(lua_State *L, const char *name,
                            const luaL_Reg *methods, lua_CFunction gc,
                            lua_CFunction tostr, int ms);

/* Register the metatables of lua_aux.c (loom.MsgBox). */
LOOM_API void loom_open_aux(lua_State *L);

/* --------------------------------------------------------- lua_future.c */

typedef struct loom_fhandle { loom_future *f; } loom_fhandle;
LOOM_API loom_future *loom_checkfuture(lua_State *L, int idx);
/* Run the done callbacks of the futures of this state that are done;
** returns how many callbacks ran. */
LOOM_API int loom_run_callbacks(lua_State *L);
/* Add a note to a task's error value at idx (a string) that says a
** global it found nil is set in this state: workers have their own. */
LOOM_API void loom_note_global(lua_State *L, int idx);
/* Wait for f (timeout at stack slot 2, slot 1 its handle) and push its
** results (returning their number), or raise its error. */
LOOM_API int loom_future_results(lua_State *L, loom_future *f);
/* The next link on the done list of queueing waiter w, waiting up to t
** seconds (< 0: forever) as every blocking call does; NULL if none came. */
LOOM_API loom_wlink *loom_waiter_next(lua_State *L, loom_waiter *w, double t);
LOOM_API void loom_open_future(lua_State *L, int ms, int lib);

/* ------------------------------------------------------- lua_executor.c */

/*
** The options of executors (and of shutdown) are checked on the Lua side
** only, by loom/init.lua, once for every kind of executor: one rule and
** one message per mistake.  The C side trusts what it gets.  The one
** limit both sides know, the most workers, is this constant, which the
** Lua side reads as core._WORKERS_MAX.
*/
#define LOOM_WORKERS_MAX 4096

LOOM_API void loom_open_executor(lua_State *L, int ms, int lib);

/* -------------------------------------------------------- lua_channel.c */

/* Close the channels this state made (at its end). */
LOOM_API void loom_close_channels(loom_mstate *ms);
LOOM_API void loom_open_channel(lua_State *L, int ms, int lib);

/* ---------------------------------------------------------- lua_queue.c */

/* Completion queues, and loom.poll. */
LOOM_API void loom_open_queue(lua_State *L, int ms, int lib);

/* -------------------------------------------------------- lua_preload.c */

/* The built-in source of loom's Lua module name (*len bytes), or NULL. */
LOOM_API const char *loom_preload_source(const char *name, size_t *len);
/* package.preload entries for loom's own Lua modules, built into the
** core (for hosts that link it in, and worker states). */
LOOM_API void loom_open_preload(lua_State *L);

/* ---------------------------------------------------------- lua_tests.c */

/* The specs' hooks (core._roundtrip, ...), in test builds only
** (-DLOOM_TESTS), as Lua's ltests.c. */
LOOM_API void loom_open_tests(lua_State *L, int ms, int lib);

#endif
