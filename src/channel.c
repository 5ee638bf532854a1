/*
** channel.c -- a reference-counted, thread-safe FIFO of messages.
**
** A channel is the one value that crosses between states by reference:
** every handle (a userdata in some state) and every message that refers
** to it holds one reference.  ch->mu guards the ring and the flags; no
** Lua call is ever made with it held.
*/
#include <errno.h>
#include <string.h>

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

int loom_chan_push(loom_chan *c, loom_msg *m) {
  pthread_mutex_lock(&c->mu);
  while (!c->closed && c->capacity && c->count >= c->capacity)
    pthread_cond_wait(&c->can_push, &c->mu);
  if (c->closed) {
    pthread_mutex_unlock(&c->mu);
    return 1;
  }
  if (c->count == c->size) {  /* grow the ring, keeping order */
    size_t nsize = c->size ? c->size * 2 : 8, i;
    loom_msg **r = (loom_msg **)loom_malloc(nsize * sizeof *r);
    if (r == NULL) {
      pthread_mutex_unlock(&c->mu);
      return -1;
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
  return 0;
}

int loom_chan_pop(loom_chan *c, double timeout, loom_msg **out) {
  struct timespec dl;
  int r = 0;
  if (timeout > 0) loom_deadline(&dl, timeout);
  pthread_mutex_lock(&c->mu);
  while (c->count == 0 && !c->closed) {
    if (timeout == 0) { r = 2; break; }
    if (timeout < 0) pthread_cond_wait(&c->can_pop, &c->mu);
    else if (pthread_cond_timedwait(&c->can_pop, &c->mu, &dl) == ETIMEDOUT
             && c->count == 0 && !c->closed) {
      r = 2;
      break;
    }
  }
  if (r == 0) {
    if (c->count == 0) r = 1;  /* closed and empty */
    else {
      *out = c->ring[c->head];
      c->head = (c->head + 1) % c->size;
      c->count--;
      pthread_cond_signal(&c->can_push);
    }
  }
  pthread_mutex_unlock(&c->mu);
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
