/*
** fuzz_decode.c -- libFuzzer harness for loom's value copier (issue 5).
**
** Each input goes through two steps:
**
**  (a) the public decoder, exactly as loom.decode(input) runs it: inside a
**      lua_pcall, loom_decode(L, data, size, 0, NULL) (functions refused),
**      then "exactly one value".  The input is decoded straight from
**      libFuzzer's buffer (not from a Lua string copy), so ASan sees a read
**      one byte past the end.  The outcome must be a value or a loom error
**      table with kind "transfer"; anything else aborts.
**
**  (b) if (a) produced a value: the copier's path into another state.  The
**      value is encoded again (loom_encode, LOOM_REFS_NONE), which must
**      succeed, and that message is decoded in a second state built like
**      a worker's (loom_lua_alloc + loom_open_worker_state) and encoded
**      there once more.  The bytes of the two encodings are NOT
**      compared: lua_next order differs between states (string hashes are
**      seeded per state), so table entries and object numbers come out in
**      another order.  Instead both copies get an order-independent
**      fingerprint (objects, entries, metatables, and commutative sums of
**      hashes of every scalar key and value), which must be equal, and both
**      messages must count the same number of objects, which must be the
**      number of tables the fingerprint walked.  The garbage collector is
**      stopped during (b) so that weak tables keep their entries and no
**      finalizer runs in the middle; it runs during (a).
**
** Finalizers.  A decoded table may get a metatable whose __gc (or __lt,
** __index...) is a standard C function reached by name, which the garbage
** collector may later call with attacker-shaped arguments.  So that such a
** call can have no effect outside the process, and cannot stop the
** collector or exit the process (a false "crash"), each state replaces,
** before its C function map is built, every function of io, os and debug
** and a few others (print, dofile, loadfile, require, collectgarbage, warn,
** package.loadlib/searchpath, loom.core.executor/watch/_failpoint/
** _call_in_new_state) with one inert C function.  Names still resolve, so
** the decoder's code paths are the same as in a stock state.
**
** Both states live for the whole process (made lazily on the first input);
** after every input the stacks are cleared and both states fully collected
** (see FULL_GC_EVERY); the first state collects in generational mode.  With FUZZ_DECODE_STATS in the environment, the
** numbers of inputs decoded and refused are printed at exit.
**
** Build and run: sh spec/fuzz/run.sh SECONDS  (or make fuzz).
*/
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"
#include "loom.h"

/* Defined in src/lua_module.c with default visibility. */
int luaopen_loom_core(lua_State *L);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Inputs between full collections of both states.  With 1, memory is
** back where it was after each input, so libFuzzer's leak check stays on
** (it turns itself off when inputs keep leaving memory allocated), a
** finalizer runs in the input that made its object, and each input starts
** from the same heap: faster too, the heaps staying small. */
#ifndef FULL_GC_EVERY
#define FULL_GC_EVERY 1
#endif

static lua_State *L1;   /* like the lua5.4 interpreter after require "loom" */
static lua_State *L2;   /* like a worker's state */
static unsigned long nruns, ndecoded;

/* With FUZZ_DECODE_STATS set, say at exit how many inputs decoded (run.sh
** checks that the seeds it made with loom/core.so decode here). */
static void print_stats(void) {
  fprintf(stderr, "fuzz_decode: inputs=%lu decoded=%lu refused=%lu\n",
          nruns, ndecoded, nruns - ndecoded);
}

/* ----------------------------------------------------------- failures */

static void fail(const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "\nfuzz_decode: INVARIANT VIOLATED: ");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\n");
  abort();
}

/* A short description of the value at idx, for failure messages. */
static const char *describe(lua_State *L, int idx) {
  static char buf[256];
  int t = lua_type(L, idx);
  if (t == LUA_TTABLE) {
    const char *kind = "?", *msg = "?";
    if (lua_getfield(L, idx, "kind") == LUA_TSTRING) kind = lua_tostring(L, -1);
    if (lua_getfield(L, idx < 0 ? idx - 1 : idx, "message") == LUA_TSTRING)
      msg = lua_tostring(L, -1);
    snprintf(buf, sizeof buf, "table {kind = %s, message = %s}", kind, msg);
    lua_pop(L, 2);
  }
  else if (t == LUA_TSTRING)
    snprintf(buf, sizeof buf, "string \"%.200s\"", lua_tostring(L, idx));
  else
    snprintf(buf, sizeof buf, "%s", lua_typename(L, t));
  return buf;
}

/* --------------------------------------------------------------- states */

static int inert(lua_State *L) { (void)L; return 0; }

static const char *const inert_libs[] = { "io", "os", "debug", NULL };
static const char *const inert_funcs[] = {
  "_G.print", "_G.dofile", "_G.loadfile", "_G.require", "_G.collectgarbage",
  "_G.warn", "package.loadlib", "package.searchpath", "loom.core.executor",
  "loom.core.watch", "loom.core._failpoint", "loom.core._call_in_new_state",
  NULL
};

/* Replace the functions above in package.loaded (see the header). */
static void neutralize(lua_State *L) {
  int i;
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  for (i = 0; inert_libs[i] != NULL; i++) {
    if (lua_getfield(L, -1, inert_libs[i]) == LUA_TTABLE) {
      lua_pushnil(L);
      while (lua_next(L, -2)) {   /* only existing fields are assigned */
        if (lua_type(L, -2) == LUA_TSTRING && lua_isfunction(L, -1)) {
          lua_pushvalue(L, -2);
          lua_pushcfunction(L, inert);
          lua_rawset(L, -5);
        }
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  }
  for (i = 0; inert_funcs[i] != NULL; i++) {
    const char *dot = strrchr(inert_funcs[i], '.');
    lua_pushlstring(L, inert_funcs[i], (size_t)(dot - inert_funcs[i]));
    if (lua_rawget(L, -2) == LUA_TTABLE) {
      lua_pushcfunction(L, inert);
      lua_setfield(L, -2, dot + 1);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

/* Both states are set up as a worker's is (a worker's pcall, xpcall and
** coroutine functions are loom's own), so that a name resolves to the
** same C function in both, which the fingerprints compare by address;
** the first also gets 'loom.core' as a global library, as a host has it. */
static int open_primary(lua_State *L) {
  loom_open_worker_state(L, luaopen_loom_core);
  luaL_requiref(L, "loom.core", luaopen_loom_core, 1);
  lua_pop(L, 1);
  neutralize(L);
  loom_cfuncs_init(L);   /* the map sees the inert functions */
  return 0;
}

static int open_secondary(lua_State *L) {
  /* builds the C function map ... */
  loom_open_worker_state(L, luaopen_loom_core);
  neutralize(L);
  loom_cfuncs_init(L);         /* ... so build it again */
  return 0;
}

static lua_State *make_state(lua_State *L, lua_CFunction open) {
  if (L == NULL) fail("cannot create a lua_State");
  lua_pushcfunction(L, open);
  if (lua_pcall(L, 0, 0, 0) != LUA_OK)
    fail("cannot set up a state: %s", describe(L, -1));
  lua_settop(L, 0);
  return L;
}

static void setup(void) {
  L1 = make_state(luaL_newstate(), open_primary);
  L2 = make_state(lua_newstate(loom_lua_alloc, NULL), open_secondary);
  /* a full collection follows every input: generational mode makes the
  ** collector still step during the larger decodes (minor collections) */
  lua_gc(L1, LUA_GCGEN, 0, 0);
  if (getenv("FUZZ_DECODE_STATS") != NULL) atexit(print_stats);
}

/* ------------------------------------------------------ protected steps */

typedef struct job {
  const unsigned char *p;
  size_t len;
  loom_msg *out;   /* p_encode's result */
} job;

/* [1] = job: decode as loom.decode does (l_decode in src/lua_module.c). */
static int p_decode(lua_State *L) {
  job *j = (job *)lua_touserdata(L, 1);
  int n;
  lua_settop(L, 0);
  n = loom_decode(L, j->p, j->len, 0, NULL);
  if (n < 0 || lua_gettop(L) != n)
    fail("loom_decode returned %d but pushed %d values", n, lua_gettop(L));
  if (n != 1)
    return loom_raise(L, "transfer", "malformed message: %d values, "
                      "expected 1", n);
  return 1;
}

/* [1] = job, [2] = value: encode it into j->out. */
static int p_encode(lua_State *L) {
  job *j = (job *)lua_touserdata(L, 1);
  int top = lua_gettop(L);
  j->out = loom_encode(L, 2, 1, LOOM_AT_VALUE, 0, LOOM_REFS_NONE);
  if (lua_gettop(L) != top)
    fail("loom_encode changed the stack from %d to %d", top, lua_gettop(L));
  return 0;
}

/* -------------------------------------------------------- fingerprints */

typedef struct fingerprint {
  uint64_t objs;      /* tables walked (not _G or loom.Error) */
  uint64_t entries;   /* non-nil table entries */
  uint64_t metas;     /* tables with a metatable */
  uint64_t sum;       /* sum of a hash per entry, metatable and the root */
  uint64_t xsum;      /* sum of the squares of those hashes */
} fingerprint;

static uint64_t mix(uint64_t x) {   /* splitmix64 finalizer */
  x ^= x >> 30; x *= 0xbf58476d1ce4e5b9u;
  x ^= x >> 27; x *= 0x94d049bb133111ebu;
  x ^= x >> 31;
  return x;
}

enum { K_NIL = 1, K_FALSE, K_TRUE, K_INT, K_FLT, K_STR, K_TABLE, K_ENV,
       K_ERRMT, K_CFUNC };

typedef struct walker {
  lua_State *L;
  int seen, todo, globals, errmt;   /* stack indices */
  lua_Integer ntodo;
  fingerprint *fp;
} walker;

/* Hash of the value at the top (popped); a new table joins the work list. */
static uint64_t w_value(walker *w) {
  lua_State *L = w->L;
  uint64_t h;
  switch (lua_type(L, -1)) {
    case LUA_TNIL: h = K_NIL; break;
    case LUA_TBOOLEAN: h = lua_toboolean(L, -1) ? K_TRUE : K_FALSE; break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, -1))
        h = mix(K_INT) ^ (uint64_t)lua_tointeger(L, -1);
      else {
        lua_Number x = lua_tonumber(L, -1);
        uint64_t u;
        memcpy(&u, &x, sizeof u);
        h = mix(K_FLT) ^ u;
      }
      break;
    case LUA_TSTRING: {
      size_t len, i;
      const char *s = lua_tolstring(L, -1, &len);
      h = 0xcbf29ce484222325u;   /* FNV-1a */
      for (i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3u;
      }
      h = mix(K_STR) ^ h ^ len;
      break;
    }
    case LUA_TTABLE:
      if (lua_rawequal(L, -1, w->globals)) { h = K_ENV; break; }
      if (lua_rawequal(L, -1, w->errmt)) { h = K_ERRMT; break; }
      h = K_TABLE;
      lua_pushvalue(L, -1);
      if (lua_rawget(L, w->seen) == LUA_TNIL) {
        lua_pushvalue(L, -2);
        lua_pushboolean(L, 1);
        lua_rawset(L, w->seen);
        lua_pushvalue(L, -2);
        lua_rawseti(L, w->todo, ++w->ntodo);
        w->fp->objs++;
      }
      lua_pop(L, 1);
      break;
    case LUA_TFUNCTION:
      if (!lua_iscfunction(L, -1))
        fail("decoded a Lua function although functions were refused");
      /* the same C function has the same address in both states */
      h = mix(K_CFUNC) ^ (uint64_t)(size_t)lua_tocfunction(L, -1);
      break;
    default:
      fail("decoded a value of type %s", luaL_typename(L, -1));
      h = 0;
  }
  lua_pop(L, 1);
  return mix(h);
}

static void w_add(walker *w, uint64_t h) {
  h = mix(h);
  w->fp->sum += h;
  w->fp->xsum += h * h;
}

/* [1] = fingerprint, [2] = value (kept). */
static int p_fingerprint(lua_State *L) {
  walker w;
  w.L = L;
  w.fp = (fingerprint *)lua_touserdata(L, 1);
  memset(w.fp, 0, sizeof *w.fp);
  lua_settop(L, 2);
  lua_newtable(L);                                       /* 3 */
  w.seen = 3;
  lua_newtable(L);                                       /* 4 */
  w.todo = 4;
  w.ntodo = 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);  /* 5 */
  w.globals = 5;
  luaL_getmetatable(L, LOOM_ERROR);                      /* 6 */
  w.errmt = 6;
  lua_pushvalue(L, 2);
  w_add(&w, 0x726f6f74u + w_value(&w));                  /* the root */
  while (w.ntodo > 0) {
    int t;
    lua_rawgeti(L, w.todo, w.ntodo);
    lua_pushnil(L);
    lua_rawseti(L, w.todo, w.ntodo--);
    t = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, t)) {   /* t, key, value */
      uint64_t hv = w_value(&w), hk;
      lua_pushvalue(L, -1);
      hk = w_value(&w);
      w_add(&w, hk * 0x9e3779b97f4a7c15u + hv);
      w.fp->entries++;
    }
    if (lua_getmetatable(L, t)) {
      w.fp->metas++;
      w_add(&w, 0x6d657461u + w_value(&w));
    }
    lua_pop(L, 1);
  }
  lua_settop(L, 2);
  return 0;
}

/* ------------------------------------------------------------ the steps */

static uint32_t msg_nobjs(const loom_msg *m) {
  if (m->len < 9) fail("an encoded message of %zu bytes", m->len);
  return (uint32_t)m->data[5] | (uint32_t)m->data[6] << 8
       | (uint32_t)m->data[7] << 16 | (uint32_t)m->data[8] << 24;
}

/* Fingerprint and encode the value at the top of L (GC stopped). */
static loom_msg *fingerprint_and_encode(lua_State *L, fingerprint *fp,
                                        const char *which) {
  int v = lua_gettop(L);
  job j;
  lua_pushcfunction(L, p_fingerprint);
  lua_pushlightuserdata(L, fp);
  lua_pushvalue(L, v);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK)
    fail("%s: fingerprinting the decoded value failed: %s", which,
         describe(L, -1));
  j.p = NULL; j.len = 0; j.out = NULL;
  lua_pushcfunction(L, p_encode);
  lua_pushlightuserdata(L, &j);
  lua_pushvalue(L, v);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK)
    fail("%s: encoding a decoded value failed: %s", which, describe(L, -1));
  if (j.out == NULL) fail("%s: loom_encode returned NULL", which);
  if ((uint64_t)msg_nobjs(j.out) != fp->objs)
    fail("%s: the message counts %u objects, the value has %llu tables",
         which, (unsigned)msg_nobjs(j.out), (unsigned long long)fp->objs);
  return j.out;
}

static void check_same(const fingerprint *a, const fingerprint *b) {
  if (memcmp(a, b, sizeof *a) != 0)
    fail("the copy differs: objects %llu/%llu, entries %llu/%llu, "
         "metatables %llu/%llu, hash %016llx/%016llx, %016llx/%016llx",
         (unsigned long long)a->objs, (unsigned long long)b->objs,
         (unsigned long long)a->entries, (unsigned long long)b->entries,
         (unsigned long long)a->metas, (unsigned long long)b->metas,
         (unsigned long long)a->sum, (unsigned long long)b->sum,
         (unsigned long long)a->xsum, (unsigned long long)b->xsum);
}

/* (b): the value at the top of L1 into L2 and out again. */
static void copy_to_second_state(void) {
  fingerprint fp1, fp2;
  loom_msg *m1, *m2;
  job j;
  int t1;
  lua_gc(L1, LUA_GCSTOP);
  m1 = fingerprint_and_encode(L1, &fp1, "first state");
  t1 = lua_type(L1, -1);
  lua_gc(L1, LUA_GCRESTART);

  lua_gc(L2, LUA_GCSTOP);
  j.p = m1->data; j.len = m1->len; j.out = NULL;
  lua_pushcfunction(L2, p_decode);
  lua_pushlightuserdata(L2, &j);
  if (lua_pcall(L2, 1, 1, 0) != LUA_OK)
    fail("the second state cannot decode a message loom_encode wrote: %s",
         describe(L2, -1));
  if (lua_type(L2, -1) != t1)
    fail("a %s became a %s", lua_typename(L1, t1), luaL_typename(L2, -1));
  m2 = fingerprint_and_encode(L2, &fp2, "second state");
  check_same(&fp1, &fp2);
  if (msg_nobjs(m2) != msg_nobjs(m1))
    fail("re-encoding changed the object count from %u to %u",
         (unsigned)msg_nobjs(m1), (unsigned)msg_nobjs(m2));
  lua_settop(L2, 0);
  lua_gc(L2, LUA_GCRESTART);
  loom_msg_free(m1);
  loom_msg_free(m2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  job j;
  int status;
  if (L1 == NULL) setup();
  j.p = data; j.len = size; j.out = NULL;
  lua_pushcfunction(L1, p_decode);
  lua_pushlightuserdata(L1, &j);
  status = lua_pcall(L1, 1, 1, 0);
  if (status == LUA_OK) {
    ndecoded++;
    copy_to_second_state();
  }
  else if (status != LUA_ERRMEM) {
    int ok = 0;
    if (status == LUA_ERRRUN && lua_type(L1, -1) == LUA_TTABLE) {
      lua_getfield(L1, -1, "kind");
      lua_getfield(L1, -2, "message");
      ok = lua_type(L1, -2) == LUA_TSTRING
        && strcmp(lua_tostring(L1, -2), "transfer") == 0
        && lua_type(L1, -1) == LUA_TSTRING;
      lua_pop(L1, 2);
    }
    if (!ok)
      fail("decode raised something else than a transfer error "
           "(status %d): %s", status, describe(L1, -1));
  }
  lua_settop(L1, 0);
  if (++nruns % FULL_GC_EVERY == 0) {
    lua_gc(L1, LUA_GCCOLLECT);
    lua_gc(L2, LUA_GCCOLLECT);
  }
  return 0;
}
