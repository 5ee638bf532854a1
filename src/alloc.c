/*
** alloc.c -- the allocator of the core and of every worker state.
**
** In a build with -DLOOM_FAILPOINTS a test can make the k-th next
** allocation fail (loom.core._failpoint), to prove that every failure
** path reports an error and leaks nothing.  Only that test build has the
** process-wide counters below; the normal build has no state here.
*/
#include <stdlib.h>

#include "loom.h"

#ifdef LOOM_FAILPOINTS
static atomic_long fp_countdown;  /* >0: fail when it reaches 0 */
static atomic_long fp_counted;
static atomic_int fp_which;

void loom_failpoint_arm(long k, int which) {
  atomic_store(&fp_counted, 0);
  atomic_store(&fp_which, which);
  atomic_store(&fp_countdown, k);
}

long loom_failpoint_count(void) { return atomic_load(&fp_counted); }

static int should_fail(int which) {
  if (!(atomic_load_explicit(&fp_which, memory_order_relaxed) & which))
    return 0;
  if (atomic_load_explicit(&fp_countdown, memory_order_relaxed) <= 0)
    return 0;
  atomic_fetch_add(&fp_counted, 1);
  return atomic_fetch_sub(&fp_countdown, 1) == 1;
}
#else
void loom_failpoint_arm(long k, int which) { (void)k; (void)which; }
long loom_failpoint_count(void) { return -1; }
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
