/*
** intr.c -- interrupt points, and the clock: what every blocking call
** of the core needs (channels, waiters, the pools).
**
** An interrupt point (loom_intr, see loom.h) is how another thread stops
** the task a state runs and wakes a loom call it is blocked in: the
** blocked call publishes the lock and condition it sleeps on, and the
** stopper signals them.  Setting the stop hook itself is task.c's.
*/
#include <string.h>
#include <time.h>

#include "loom.h"

/* ------------------------------------------------------------------ clock */

void loom_deadline(struct timespec *ts, double secs) {
  clock_gettime(CLOCK_MONOTONIC, ts);
  if (secs > 1e9) secs = 1e9;   /* far enough: avoids time_t overflow */
  ts->tv_sec += (time_t)secs;
  ts->tv_nsec += (long)((secs - (double)(time_t)secs) * 1e9);
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}

double loom_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------ interrupt points */

void loom_intr_init(loom_intr *in) {
  memset(in, 0, sizeof *in);
  pthread_mutex_init(&in->mu, NULL);
  atomic_init(&in->gen, 0);
  atomic_init(&in->stop, 0);
  atomic_init(&in->nchain, 0);
  atomic_init(&in->busy, 0);
}

void loom_intr_destroy(loom_intr *in) {
  pthread_mutex_destroy(&in->mu);
}

int loom_intr_fired(loom_intr *in) {
  return in != NULL
         && atomic_load_explicit(&in->stop, memory_order_acquire)
            == atomic_load_explicit(&in->gen, memory_order_relaxed);
}

/* The check of loom_intr_fired and the sleep happen under the published
** mutex, and a stopper sets 'stop' before it takes in->mu and then that
** mutex to signal: either the sleeper sees the flag, or it is asleep and
** gets the signal. */
void loom_intr_enter(loom_intr *in, pthread_mutex_t *mu,
                     pthread_cond_t *cv) {
  if (in == NULL) return;
  pthread_mutex_lock(&in->mu);
  in->wmu = mu;
  in->wcv = cv;
  pthread_mutex_unlock(&in->mu);
}

void loom_intr_leave(loom_intr *in) {
  if (in == NULL) return;
  pthread_mutex_lock(&in->mu);
  in->wmu = NULL;
  in->wcv = NULL;
  pthread_mutex_unlock(&in->mu);
}

void loom_intr_wake_locked(loom_intr *in) {
  if (in->wmu == NULL) return;
  pthread_mutex_lock(in->wmu);
  pthread_cond_broadcast(in->wcv);
  pthread_mutex_unlock(in->wmu);
}
