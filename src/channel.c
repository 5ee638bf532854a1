/*
** channel.c -- a reference-counted, thread-safe FIFO of messages.
**
** A channel is the one value that crosses between states by reference:
** every handle (a userdata in some state) and every message that refers
** to it holds one reference.  ch->mu guards the ring and the flags; no
** Lua call is ever made with it held.  A handle is made here too, since
** the copier makes one for every channel it receives (the binding,
** lua_channel.c, gives handles their methods).
*/
#include <errno.h>
#include <string.h>
#include <time.h>

#include "loom.h"

loom_chan *loom_chan_new(size_t capacity) {
  loom_chan *c = (loom_chan *)loom_malloc(sizeof *c);
  pthread_condattr_t ca;
  if (c == NULL) return NULL;
  memset(c, 0, sizeof *c);
  atomic_init(&c->refs, 1);
  c->capacity = capacity;
  pthread_mutex_init(&c->mu, NULL);
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&c->can_pop, &ca);
  pthread_cond_init(&c->can_push, &ca);
  pthread_condattr_destroy(&ca);
  return c;
}

void loom_chan_incref(loom_chan *c) {
  atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void loom_chan_decref(loom_chan *c) {
  size_t i;
  if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
    return;
  /* last reference: nobody else can see it */
  for (i = 0; i < c->count; i++)
    loom_msg_free(c->ring[(c->head + i) % c->size]);
  loom_free(c->ring);
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->can_pop);
  pthread_cond_destroy(&c->can_push);
  loom_free(c);
}

/* Whether a wait with this deadline may still sleep. */
static int before(const struct timespec *deadline) {
  struct timespec now;
  if (deadline == NULL) return 1;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return now.tv_sec < deadline->tv_sec
         || (now.tv_sec == deadline->tv_sec
             && now.tv_nsec < deadline->tv_nsec);
}

/* Sleep on cv (c->mu held) until signalled or the deadline: 0 when the
** deadline passed or in fired (stop waiting), else 1. */
static int sleep_on(loom_chan *c, pthread_cond_t *cv,
                    const struct timespec *deadline, loom_intr *in) {
  if (loom_intr_fired(in)) return 0;
  if (deadline == NULL) pthread_cond_wait(cv, &c->mu);
  else if (pthread_cond_timedwait(cv, &c->mu, deadline) == ETIMEDOUT)
    return 0;
  return !loom_intr_fired(in);
}

loom_push_result loom_chan_push(loom_chan *c, loom_msg *m,
                                const struct timespec *deadline,
                                loom_intr *in) {
  int entered = 0;
  pthread_mutex_lock(&c->mu);
  while (!c->closed && c->capacity && c->count >= c->capacity) {
    if (!entered) {   /* publish the condition only when about to sleep */
      pthread_mutex_unlock(&c->mu);
      if (!before(deadline)) return LOOM_PUSH_FULL;
      loom_intr_enter(in, &c->mu, &c->can_push);
      entered = 1;
      pthread_mutex_lock(&c->mu);
      continue;
    }
    if (!sleep_on(c, &c->can_push, deadline, in)) {
      pthread_mutex_unlock(&c->mu);
      loom_intr_leave(in);
      return LOOM_PUSH_FULL;
    }
  }
  if (c->closed) {
    pthread_mutex_unlock(&c->mu);
    if (entered) loom_intr_leave(in);
    return LOOM_PUSH_CLOSED;
  }
  if (c->count == c->size) {  /* grow the ring, keeping order */
    size_t nsize = c->size ? c->size * 2 : 8, i;
    loom_msg **r = (loom_msg **)loom_malloc(nsize * sizeof *r);
    if (r == NULL) {
      pthread_mutex_unlock(&c->mu);
      if (entered) loom_intr_leave(in);
      return LOOM_PUSH_NOMEM;
    }
    for (i = 0; i < c->count; i++) r[i] = c->ring[(c->head + i) % c->size];
    loom_free(c->ring);
    c->ring = r;
    c->head = 0;
    c->size = nsize;
  }
  c->ring[(c->head + c->count) % c->size] = m;
  c->count++;
  pthread_cond_signal(&c->can_pop);
  pthread_mutex_unlock(&c->mu);
  if (entered) loom_intr_leave(in);
  return LOOM_PUSH_OK;
}

loom_pop_result loom_chan_pop(loom_chan *c, const struct timespec *deadline,
                              loom_intr *in, loom_msg **out) {
  loom_pop_result r = LOOM_POP_OK;
  int entered = 0;
  pthread_mutex_lock(&c->mu);
  while (c->count == 0 && !c->closed) {
    if (!entered) {   /* publish the condition only when about to sleep */
      pthread_mutex_unlock(&c->mu);
      if (!before(deadline)) return LOOM_POP_EMPTY;
      loom_intr_enter(in, &c->mu, &c->can_pop);
      entered = 1;
      pthread_mutex_lock(&c->mu);
      continue;
    }
    if (!sleep_on(c, &c->can_pop, deadline, in)) {
      if (c->count == 0 && !c->closed) r = LOOM_POP_EMPTY;
      break;
    }
  }
  if (r == LOOM_POP_OK) {
    if (c->count == 0) r = LOOM_POP_CLOSED;  /* and empty */
    else {
      *out = c->ring[c->head];
      c->head = (c->head + 1) % c->size;
      c->count--;
      pthread_cond_signal(&c->can_push);
    }
  }
  pthread_mutex_unlock(&c->mu);
  if (entered) loom_intr_leave(in);
  return r;
}

void loom_chan_close(loom_chan *c) {
  pthread_mutex_lock(&c->mu);
  c->closed = 1;
  pthread_cond_broadcast(&c->can_pop);
  pthread_cond_broadcast(&c->can_push);
  pthread_mutex_unlock(&c->mu);
}

size_t loom_chan_count(loom_chan *c) {
  size_t n;
  pthread_mutex_lock(&c->mu);
  n = c->count;
  pthread_mutex_unlock(&c->mu);
  return n;
}

/* ---------------------------------------------------------------- handles */

loom_chan *loom_tochannel(lua_State *L, int idx) {
  loom_chandle *h = (loom_chandle *)luaL_testudata(L, idx, LOOM_CHANNEL);
  return h ? h->c : NULL;
}

void loom_pushchannel(lua_State *L, loom_chan *c) {
  loom_chandle *h = (loom_chandle *)lua_newuserdatauv(L, sizeof *h, 0);
  h->c = NULL;
  luaL_setmetatable(L, LOOM_CHANNEL);
  loom_chan_incref(c);
  h->c = c;
}
