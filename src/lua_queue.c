/*
** lua_queue.c -- the binding of completion queues (loom.completion_queue)
** and loom.poll: how an event loop learns, without blocking, that
** futures are done.
**
** A queue is a queueing waiter (future.c) with one link per future added
** and not yet popped.  Completion appends the future's link to the
** waiter's done list, so pop hands futures back in the order they
** completed; nothing is allocated then (each link is allocated by q:add).
** The queue's descriptor, made when first asked for, is readable exactly
** while the done list is not empty: completion writes it (under the waiter
** mutex), and pop drains it when it takes the last link (under the same
** mutex), so a completion racing with pop is never missed.
**
** The queue is one thread's: the state that made it adds and pops.  Its
** user value is a table that maps each added future handle to its link
** (a light userdata) and back, so that pop returns the handle that was
** added, and a future added twice is queued once.
*/
#include <errno.h>
#include <string.h>
#include <time.h>

#include "loom.h"

#define LOOM_QUEUE "loom.CompletionQueue"

typedef struct qlink {
  loom_wlink l;                 /* first: the done list hands back &l */
  struct qlink *next, *prev;    /* the queue's links (its thread only) */
} qlink;

typedef struct cqueue {
  loom_waiter w;                /* a queueing one; w.wake is &wake or NULL */
  loom_wakefd wake;             /* made by the first q:pollfd() */
  qlink *links;                 /* added and not popped; l.f is NULL until
                                   the future is watched (one reference) */
  lua_Integer n;                /* #q: futures added and not popped */
  int open;                     /* w is live: 0 before it is made and after
                                   close */
} cqueue;

static cqueue *toqueue(lua_State *L) {
  return (cqueue *)luaL_checkudata(L, 1, LOOM_QUEUE);
}

/* The queue at 1, or raise a 'closed' error. */
static cqueue *checkopen(lua_State *L) {
  cqueue *q = toqueue(L);
  if (!q->open) loom_raise(L, "closed", "the completion queue is closed");
  return q;
}

static void unlink_link(cqueue *q, qlink *k) {
  if (k->prev) k->prev->next = k->next; else q->links = k->next;
  if (k->next) k->next->prev = k->prev;
}

/* Stop watching every future, forget them and close the descriptor.
** Idempotent: close, __close and __gc. */
static void queue_release(cqueue *q) {
  qlink *k;
  if (!q->open) return;
  q->open = 0;
  /* after each unwatch no completion can reach the link, nor (after
  ** the last) the waiter */
  while ((k = q->links) != NULL) {
    q->links = k->next;
    if (k->l.f) {
      loom_future_unwatch(k->l.f, &k->l);
      loom_future_decref(k->l.f);
    }
    loom_free(k);
  }
  q->n = 0;
  loom_waiter_destroy(&q->w);
  if (q->w.wake) loom_wakefd_close(&q->wake);
}

static int queue_gc(lua_State *L) {
  queue_release(toqueue(L));
  return 0;
}

/* q:close(): the futures go on; the queue forgets them. */
static int queue_close(lua_State *L) {
  cqueue *q = toqueue(L);
  queue_release(q);
  lua_pushnil(L);                 /* let go of the handles */
  lua_setiuservalue(L, 1, 1);
  return 0;
}

/* loom.completion_queue() */
static int queue_new(lua_State *L) {
  cqueue *q = (cqueue *)lua_newuserdatauv(L, sizeof *q, 1);
  q->open = 0;
  q->links = NULL;
  q->n = 0;
  luaL_setmetatable(L, LOOM_QUEUE);
  lua_newtable(L);
  lua_setiuservalue(L, -2, 1);
  loom_waiter_init(&q->w, 1);
  q->open = 1;
  return 1;
}

/* q:add(f, ...): watch each future; a done one is queued at once, one
** already in the queue is left as it is.  Every argument is checked
** before any is added. */
static int queue_add(lua_State *L) {
  cqueue *q = checkopen(L);
  int n = lua_gettop(L), i, t;
  for (i = 2; i <= n; i++) loom_checkfuture(L, i);
  lua_getiuservalue(L, 1, 1);
  t = lua_gettop(L);
  for (i = 2; i <= n; i++) {
    loom_future *f;
    qlink *k;
    lua_pushvalue(L, i);
    if (lua_rawget(L, t) != LUA_TNIL) {   /* in the queue already */
      lua_pop(L, 1);
      continue;
    }
    lua_pop(L, 1);
    k = (qlink *)loom_malloc(sizeof *k);
    if (k == NULL) return luaL_error(L, "not enough memory");
    /* the queue owns k from here, so a memory error below leaks nothing */
    memset(k, 0, sizeof *k);
    k->next = q->links;
    if (q->links) q->links->prev = k;
    q->links = k;
    lua_pushlightuserdata(L, k);
    lua_pushvalue(L, i);
    lua_rawset(L, t);                 /* link -> handle (for pop) */
    lua_pushvalue(L, i);
    lua_pushlightuserdata(L, k);
    lua_rawset(L, t);                 /* handle -> link (for add) */
    f = ((loom_fhandle *)lua_touserdata(L, i))->f;
    loom_future_incref(f);            /* the link's */
    q->n++;
    if (loom_future_watch(f, &k->l, &q->w)) {   /* done already */
      pthread_mutex_lock(&q->w.mu);
      loom_waiter_push_locked(&q->w, &k->l);
      pthread_mutex_unlock(&q->w.mu);
    }
  }
  return 0;
}

/*
** Take the next completed link, waiting up to t seconds for one (t < 0:
** no limit; 0: no wait); NULL when none came.  The one place a queue
** blocks.
*/
static qlink *queue_wait(lua_State *L, cqueue *q, double t) {
  loom_wlink *l = loom_waiter_next(L, &q->w, t);
  pthread_mutex_lock(&q->w.mu);
  if (q->w.dhead == NULL) q->w.fired = 0;   /* a count it never reads */
  pthread_mutex_unlock(&q->w.mu);
  return (qlink *)l;
}

/*
** q:pop([timeout]) -> the next completed future, or nil and why:
** "timeout", "empty" (no future in the queue: none can come, so it does
** not wait), "closed".  Done callbacks due in this state run first, as
** in every waiting call.
*/
static int queue_pop(lua_State *L) {
  cqueue *q = toqueue(L);
  double t = loom_opttimeout(L, 2);
  qlink *k;
  lua_settop(L, 1);
  if (!q->open || q->n == 0) {
    loom_run_callbacks(L);
    lua_pushnil(L);
    lua_pushstring(L, q->open ? "empty" : "closed");
    return 2;
  }
  k = queue_wait(L, q, t);
  if (k == NULL) {
    loom_run_callbacks(L);
    lua_pushnil(L);
    lua_pushliteral(L, "timeout");
    return 2;
  }
  unlink_link(q, k);
  q->n--;
  loom_future_unwatch(k->l.f, &k->l);
  loom_future_decref(k->l.f);
  lua_getiuservalue(L, 1, 1);         /* 2 */
  lua_pushlightuserdata(L, k);
  lua_rawget(L, 2);                   /* 3: the handle */
  lua_pushlightuserdata(L, k);
  lua_pushnil(L);
  lua_rawset(L, 2);
  lua_pushvalue(L, 3);
  lua_pushnil(L);
  lua_rawset(L, 2);
  loom_free(k);
  loom_run_callbacks(L);
  return 1;
}

static int queue_len(lua_State *L) {
  lua_pushinteger(L, toqueue(L)->n);
  return 1;
}

/* q:pollfd(): readable while a completed future waits to be popped. */
static int queue_pollfd(lua_State *L) {
  cqueue *q = checkopen(L);
  if (q->w.wake == NULL) {   /* only this thread sets it */
    int err = loom_wakefd_open(&q->wake);
    if (err != 0)
      return luaL_error(L, "cannot make the queue's descriptor: %s",
                        strerror(err));
    pthread_mutex_lock(&q->w.mu);
    q->w.wake = &q->wake;
    if (q->w.dhead) loom_wakefd_signal(&q->wake);
    pthread_mutex_unlock(&q->w.mu);
  }
  lua_pushinteger(L, q->wake.r);
  return 1;
}

static int queue_events(lua_State *L) {
  checkopen(L);
  lua_pushliteral(L, "r");
  return 1;
}

static int queue_timeout(lua_State *L) {
  checkopen(L);
  lua_pushnil(L);
  return 1;
}

static int queue_tostring(lua_State *L) {
  cqueue *q = toqueue(L);
  if (!q->open) lua_pushliteral(L, "loom.CompletionQueue (closed)");
  else lua_pushfstring(L, "loom.CompletionQueue (%I futures): %p", q->n,
                       (void *)q);
  return 1;
}

/* loom.poll(): run the done callbacks due in this state; never blocks. */
static int l_poll(lua_State *L) {
  lua_pushinteger(L, loom_run_callbacks(L));
  return 1;
}

/* ------------------------------------------------------------- opening */

static const luaL_Reg queue_methods[] = {
  {"add", queue_add},
  {"pop", queue_pop},
  {"close", queue_close},
  {"pollfd", queue_pollfd},
  {"events", queue_events},
  {"timeout", queue_timeout},
  {NULL, NULL}
};

static const luaL_Reg queue_funcs[] = {
  {"completion_queue", queue_new},
  {"poll", l_poll},
  {NULL, NULL}
};

void loom_open_queue(lua_State *L, int ms, int lib) {
  loom_newclass(L, LOOM_QUEUE, queue_methods, queue_gc, queue_tostring, ms);
  luaL_getmetatable(L, LOOM_QUEUE);
  lua_pushvalue(L, ms);
  lua_pushcclosure(L, queue_len, 1);
  lua_setfield(L, -2, "__len");
  lua_pushvalue(L, ms);
  lua_pushcclosure(L, queue_close, 1);
  lua_setfield(L, -2, "__close");
  lua_pop(L, 1);
  lua_pushvalue(L, lib);
  lua_pushvalue(L, ms);
  luaL_setfuncs(L, queue_funcs, 1);
  lua_pop(L, 1);
}
