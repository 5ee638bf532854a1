/*
** alloc.c -- the allocator of the core and of every worker state.
**
** In a build with -DLOOM_FAILPOINTS a test can make the k-th next
** allocation fail (loom.core._failpoint), to prove that every failure
** path reports an error and leaks nothing.  Only that test build has the
** process-wide counters below; the normal build has no state here.
*/
#include <stdlib.h>
#include <string.h>

#include "loom.h"

#ifdef LOOM_FAILPOINTS
static atomic_long fp_countdown;  /* fail as it goes 1 -> 0 and 0 -> -1 */
static atomic_long fp_counted;
static atomic_int fp_which;
static atomic_int fp_fired;

void loom_failpoint_arm(long k, int which) {
  atomic_store(&fp_countdown, -1);   /* disarmed while being set */
  atomic_store(&fp_counted, 0);
  atomic_store(&fp_fired, 0);
  atomic_store(&fp_which, which);
  atomic_store(&fp_countdown, k > 0 ? k : -1);
}

long loom_failpoint_count(void) { return atomic_load(&fp_counted); }
int loom_failpoint_fired(void) { return atomic_load(&fp_fired); }

/* The k-th allocation fails, and so does the one right after it: Lua
** answers a failed allocation with an emergency collection and one
** retry, which would otherwise hide every injected failure. */
static int should_fail(int which) {
  long left;
  if (!(atomic_load_explicit(&fp_which, memory_order_relaxed) & which))
    return 0;
  if (atomic_load_explicit(&fp_countdown, memory_order_relaxed) <= -1)
    return 0;
  left = atomic_fetch_sub(&fp_countdown, 1);
  if (left > 1) atomic_fetch_add(&fp_counted, 1);
  if (left == 1) atomic_store(&fp_fired, 1);
  return left == 1 || left == 0;
}
#else
void loom_failpoint_arm(long k, int which) { (void)k; (void)which; }
long loom_failpoint_count(void) { return -1; }
int loom_failpoint_fired(void) { return 0; }
#define should_fail(w) 0
#endif

void *loom_malloc(size_t n) {
  if (should_fail(LOOM_FAIL_CORE)) return NULL;
  return malloc(n);
}

void *loom_realloc(void *p, size_t n) {
  if (should_fail(LOOM_FAIL_CORE)) return NULL;
  return realloc(p, n);
}

void loom_free(void *p) { free(p); }

char *loom_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = (char *)loom_malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

int loom_grow(void **arr, int *cap, size_t elem) {
  int ncap = *cap ? *cap * 2 : 8;
  void *n = loom_realloc(*arr, elem * (size_t)ncap);
  if (n == NULL) return 0;
  *arr = n;
  *cap = ncap;
  return 1;
}

void *loom_lua_alloc(void *ud, void *p, size_t osize, size_t nsize) {
  (void)ud; (void)osize;
  if (nsize == 0) {
    free(p);
    return NULL;
  }
  if (nsize > osize || p == NULL) {  /* only growth may fail */
    if (should_fail(LOOM_FAIL_LUA)) return NULL;
  }
  return realloc(p, nsize);
}

/*
** A worker state's allocator under memory_limit: ud is the state's own
** loom_memlimit, touched only by the thread that runs the state (Lua calls
** its allocator from that thread alone), so it needs no lock.  Growth past
** the limit fails; Lua then collects and retries once, and raises "not
** enough memory" if that did not free enough.
*/
void *loom_lua_alloc_limited(void *ud, void *p, size_t osize, size_t nsize) {
  loom_memlimit *m = (loom_memlimit *)ud;
  size_t old = p ? osize : 0;   /* for a new block, osize is a type tag */
  void *q;
  if (nsize == 0) {
    free(p);
    m->used -= old;
    return NULL;
  }
  if (nsize > old && (nsize - old > m->limit - m->used
                      || should_fail(LOOM_FAIL_LUA)))
    return NULL;
  q = realloc(p, nsize);
  if (q != NULL) m->used = m->used - old + nsize;
  return q;
}
