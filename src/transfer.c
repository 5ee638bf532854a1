/*
** transfer.c -- the value copier.
**
** A value is copied between two lua_States in two steps: loom_encode
** walks it in the source state and writes a self-contained byte message;
** loom_decode rebuilds it in the destination state.  The format:
**
**   "LOOM" version:u8  nobjs:u32  nvalues:varint  value*
**
**   value := NIL | FALSE | TRUE | INT i64 | INT8 i8 | FLT f64
**          | STR len bytes
**          | TABLE narr:u32 nhash:u32 value{narr} (key value){nhash}
**                  hasmeta:u8 [value]
**          | FUNC len bytecode nups:u8 upvalue{nups}
**          | CFUNC len module len field  -- package.loaded[module][field]
**          | REF index            -- a table/function seen before
**          | ENV                  -- the receiving state's globals
**          | CHAN index           -- msg->refs[index], by reference
**          | ERRMT                -- the receiver's loom.Error metatable
**          | PROTO index          -- msg->refs[index]: shared bytecode of a
**                                    function with no upvalue but _ENV
**          | PIN index            -- msg->refs[index]: a string of the
**                                    sender's, by reference (see pins)
**   upvalue := value | JOIN fobj:varint up:varint  -- shares an upvalue
**
** Tables and functions are numbered in the order they first appear, so
** REF keeps identity and cycles within one message.
**
** Both directions walk with an explicit stack of frames, never with C
** recursion, so nesting depth is bounded only by LOOM_MAX_DEPTH.  Every
** buffer a Lua error could skip over is owned by a userdata (the scratch
** encoder buffer, the frame arrays), so a longjmp cannot leak it.
*/
#include <limits.h>
#include <string.h>
#include <stdio.h>
#include <stdarg.h>
#include <math.h>

#include "loom.h"

#define MAGIC "LOOM"
#define VERSION 3   /* bump on every change of the format */
#define HEADER_LEN 9   /* magic, version, nobjs */

/* Like CHAN and PROTO, PIN never appears in a message made without
** refs_ok (loom.encode), so adding it did not change the version. */
enum {   /* the scalars come first, up to T_STR (d_item relies on it) */
  T_NIL, T_FALSE, T_TRUE, T_INT, T_INT8, T_FLT, T_STR, T_TABLE, T_FUNC,
  T_CFUNC, T_REF, T_ENV, T_CHAN, T_JOIN, T_ERRMT, T_PROTO, T_PIN
};

/* Registry keys (their addresses): the caller's closure -> bytecode
** cache, and a worker's bytecode -> loaded function cache. */
static const char FCACHE_KEY = 'f';
static const char PCACHE_KEY = 'p';
static const char SCRATCH_KEY = 's';
static const char PINS_KEY = 'n';
#define PCACHE_MAX 4096
#define SCRATCH_KEEP 4096   /* messages up to this size are copied out */
/* A scratch buffer larger than this (one given back by loom_msg_recycle)
** is kept only while large messages keep coming: the next small message
** lets it go. */
#define SCRATCH_BIG (64 * 1024)

/* ---------------------------------------------------------------- errors */

static void pusherrorv(lua_State *L, const char *kind, const char *fmt,
                       va_list ap) {
  lua_createtable(L, 0, 2);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  lua_pushvfstring(L, fmt, ap);
  lua_setfield(L, -2, "message");
  luaL_setmetatable(L, LOOM_ERROR);
}

void loom_pusherror(lua_State *L, const char *kind, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  pusherrorv(L, kind, fmt, ap);
  va_end(ap);
}

/* Protected: [1] a value; its tostring (may run __tostring, may raise). */
static int tostring_k(lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}

const char *loom_pushtext(lua_State *L, int idx) {
  int t = lua_type(L, idx);
  idx = lua_absindex(L, idx);
  if (t == LUA_TSTRING || t == LUA_TNUMBER) {
    lua_pushvalue(L, idx);
    return lua_tostring(L, -1);   /* converts the copy, not the original */
  }
  lua_pushcfunction(L, tostring_k);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TSTRING)
    return lua_tostring(L, -1);
  lua_pop(L, 1);
  return lua_pushfstring(L, "(error object is a %s value)",
                         lua_typename(L, t));
}

int loom_raise(lua_State *L, const char *kind, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  pusherrorv(L, kind, fmt, ap);
  va_end(ap);
  return lua_error(L);
}

/* ------------------------------------------------------------- messages */

void loom_proto_decref(loom_proto *p) {
  if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) == 1)
    loom_free(p);
}

static void release_refs(loom_msg *m) {
  loom_ref *r = loom_msg_refs(m);
  int i;
  for (i = 0; i < m->nrefs; i++) {
    if (r[i].kind == LOOM_REF_CHAN) loom_chan_decref((loom_chan *)r[i].p);
    else if (r[i].kind == LOOM_REF_PROTO)
      loom_proto_decref((loom_proto *)r[i].p);
    else loom_pin_decref((loom_pin *)r[i].p);
  }
  m->nrefs = 0;
}

void loom_msg_free(loom_msg *m) {
  if (m == NULL) return;
  release_refs(m);
  loom_free(m->refs);
  loom_free(m);
}

/* ------------------------------------------------------------------ pins */

/*
** A string of LOOM_PIN_MIN bytes or more crosses by reference: the
** message holds a pin, which points at the bytes of the sender's own Lua
** string, and the receiver's lua_pushlstring is the one copy.
**
** The sender's state keeps the pins it made in its pinset, a userdata in
** the registry whose user value (lightuserdata pin -> string) anchors the
** strings.  Only the sender's thread touches the pinset and the anchors.
** A pin that no message holds any more (refs back to 1, the pinset's
** own) is un-anchored and freed by the sender's next sweep: at the start
** of an encode, or through loom_pins_sweep.  A receiver drops its
** reference only after its copy is made, so once the sender sees refs at
** 1 (acquire), no one reads the bytes any more.
**
** At the sender's lua_close the pinset's __gc runs (before any object is
** freed) and gives each pin still held a malloc'd copy of the bytes, after
** waiting for the readers copying at that moment.  Without memory for
** the copy the pin keeps no bytes, and its readers raise "not enough
** memory".  A reader never holds p->mu while it copies: it counts itself
** in p->readers, copies (under lua_pcall, so that a memory error cannot
** skip the count; with the collector stopped, so that no finalizer, and
** so no user code, runs in that window) and counts itself out.
*/
struct loom_pin {
  atomic_int refs;         /* the pinset's (while anchored) + a message's */
  pthread_mutex_t mu;      /* guards readers, closing and bytes */
  pthread_cond_t idle;     /* readers dropped to 0 while closing */
  int readers, closing;
  const char *bytes;       /* the anchored string's, then 'owned' */
  char *owned;             /* the copy made at the sender's close (NULL:
                              none, or no memory: bytes is NULL too) */
  size_t len;              /* >= LOOM_PIN_MIN, so bytes is never NULL
                              before the close */
};

#define PINS_SCAN 16   /* up to this many live pins, each sweep checks all */

typedef struct pinset {
  loom_pin **pins;         /* live pins made here, one reference each */
  int n, cap;
  int mark;                /* above PINS_SCAN: sweep when n reaches it */
  int closed;              /* __gc ran (lua_close): no more pins */
} pinset;

void loom_pin_decref(loom_pin *p) {
  if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) == 1) {
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->idle);
    loom_free(p->owned);
    loom_free(p);
  }
}

/* The sender's state is closing: give p bytes of its own. */
static void pin_detach(loom_pin *p) {
  char *c;
  pthread_mutex_lock(&p->mu);
  p->closing = 1;
  while (p->readers > 0) pthread_cond_wait(&p->idle, &p->mu);
  c = (char *)loom_malloc(p->len);
  if (c != NULL) memcpy(c, p->bytes, p->len);
  p->owned = c;
  p->bytes = c;
  p->closing = 0;
  pthread_mutex_unlock(&p->mu);
}

/* Drop the pins that only the pinset at stack index psidx holds; with
** 'all', every pin (copying the held ones).  Needs 3 free stack slots;
** never raises: a rawset of nil allocates nothing. */
static void pins_sweep(lua_State *L, int psidx, int all) {
  pinset *ps = (pinset *)lua_touserdata(L, psidx);
  int i, j = 0, anchors;
  lua_getiuservalue(L, psidx, 1);
  anchors = lua_gettop(L);
  for (i = 0; i < ps->n; i++) {
    loom_pin *p = ps->pins[i];
    if (atomic_load_explicit(&p->refs, memory_order_acquire) > 1) {
      if (!all) {
        ps->pins[j++] = p;
        continue;
      }
      pin_detach(p);
    }
    lua_pushlightuserdata(L, p);
    lua_pushnil(L);
    lua_rawset(L, anchors);
    loom_pin_decref(p);
  }
  ps->n = j;
  ps->mark = 2 * j;
  lua_pop(L, 1);
}

/* At lua_close (or if the registry lost it): no more pins here; the held
** ones get their own copies. */
static int pinset_gc(lua_State *L) {
  pinset *ps = (pinset *)lua_touserdata(L, 1);
  if (ps->closed) return 0;
  ps->closed = 1;
  lua_settop(L, 1);
  pins_sweep(L, 1, 1);
  loom_free(ps->pins);
  ps->pins = NULL;
  ps->cap = 0;
  return 0;
}

/* Push this state's pinset and return it; when there is none yet, make
** it if 'make', else push nil and return NULL. */
static pinset *pushpinset(lua_State *L, int make) {
  pinset *ps;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &PINS_KEY) == LUA_TUSERDATA)
    return (pinset *)lua_touserdata(L, -1);
  if (!make) return NULL;
  lua_pop(L, 1);
  ps = (pinset *)lua_newuserdatauv(L, sizeof *ps, 1);
  memset(ps, 0, sizeof *ps);
  lua_newtable(L);
  lua_setiuservalue(L, -2, 1);
  if (luaL_newmetatable(L, "loom.Pins")) {
    lua_pushcfunction(L, pinset_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &PINS_KEY);
  /* from now on the binding's waiting functions sweep too */
  if (lua_getfield(L, LUA_REGISTRYINDEX, LOOM_MODULE) == LUA_TUSERDATA)
    ((loom_mstate *)lua_touserdata(L, -1))->pinned = 1;
  lua_pop(L, 1);
  return ps;
}

/* A sweep is due when there are pins, and few, or twice as many as the
** last sweep left (so that many pins held for long cost O(1) a call). */
#define pins_due(ps) \
  ((ps)->n > 0 && ((ps)->n <= PINS_SCAN || (ps)->n >= (ps)->mark))

void loom_pins_sweep(lua_State *L) {
  pinset *ps;
  if (!lua_checkstack(L, 4)) return;
  ps = pushpinset(L, 0);
  if (ps != NULL && !ps->closed && pins_due(ps))
    pins_sweep(L, lua_gettop(L), 0);
  lua_pop(L, 1);
}

int loom_pins_live(lua_State *L, const char *bytes) {
  pinset *ps;
  int n = 0, i;
  if (!lua_checkstack(L, 4)) return -1;
  ps = pushpinset(L, 0);
  if (ps != NULL && !ps->closed) {   /* every one, due or not */
    pins_sweep(L, lua_gettop(L), 0);
    for (i = 0; i < ps->n; i++)
      n += bytes == NULL || ps->pins[i]->bytes == bytes;
  }
  lua_pop(L, 1);
  return n;
}

/* Protected: [1] lightuserdata bytes, [2] length; push the string. */
static int pin_push_k(lua_State *L) {
  lua_pushlstring(L, (const char *)lua_touserdata(L, 1),
                  (size_t)lua_tointeger(L, 2));
  return 1;
}

/* Push a copy of p's bytes (3 free stack slots).  Raises only a memory
** error, and never with p->mu held or p's reader count taken. */
static void pin_push(lua_State *L, loom_pin *p) {
  const char *b;
  /* -1 inside a finalizer (5.4.4 on), 0 when stopped: leave it so */
  int st, gc = lua_gc(L, LUA_GCISRUNNING);
  /* Run before the copy the collector step that its allocation would run
  ** after: the garbage it frees (often the last such string) then leaves
  ** room in memory already mapped, where the copy goes. */
  if (gc == 1)
    lua_gc(L, LUA_GCSTEP, p->len >> 10 > INT_MAX ? INT_MAX
                                                : (int)(p->len >> 10));
  pthread_mutex_lock(&p->mu);
  b = p->bytes;
  if (b != NULL) p->readers++;
  pthread_mutex_unlock(&p->mu);
  if (b == NULL)
    luaL_error(L, "not enough memory (for a string whose sender ended)");
  if (gc == 1) lua_gc(L, LUA_GCSTOP);
  lua_pushcfunction(L, pin_push_k);
  lua_pushlightuserdata(L, (void *)b);
  lua_pushinteger(L, (lua_Integer)p->len);
  st = lua_pcall(L, 2, 1, 0);
  if (gc == 1) lua_gc(L, LUA_GCRESTART);
  pthread_mutex_lock(&p->mu);
  if (--p->readers == 0 && p->closing) pthread_cond_broadcast(&p->idle);
  pthread_mutex_unlock(&p->mu);
  if (st != LUA_OK) lua_error(L);
}

/*
** The scratch encoder: one per state, in the registry.  It owns the
** message being written, so a Lua error in the middle frees nothing by
** hand: the next encode (or the GC) reuses or frees it.  'busy' guards
** against a finalizer that encodes while an encode is under way; such a
** nested encode puts a fresh scratch in the registry (see loom_encode).
*/
typedef struct scratch {
  loom_msg *m;
  int busy;
  /* The last function sent by reference and its proto (one reference
  ** held): submitting the same function again skips the cache lookups.
  ** The function is the userdata's user value, so while it is cached its
  ** address cannot be taken by another object. */
  const void *lastfn;
  loom_proto *lastp;
  /* This state's pinset, or NULL until the first pin; the scratch's
  ** second user value keeps it alive while this pointer is used. */
  pinset *pins;
} scratch;

static void scratch_reset(scratch *s) {
  if (s->m == NULL) return;
  release_refs(s->m);
  s->m->len = 0;
}

static int scratch_gc(lua_State *L) {
  scratch *s = (scratch *)lua_touserdata(L, 1);
  scratch_reset(s);
  loom_msg_free(s->m);
  s->m = NULL;
  if (s->lastp) loom_proto_decref(s->lastp);
  s->lastp = NULL;
  s->lastfn = NULL;
  return 0;
}

static scratch *newscratch(lua_State *L) {
  scratch *s = (scratch *)lua_newuserdatauv(L, sizeof(scratch), 2);
  s->m = NULL;
  s->busy = 0;
  s->lastfn = NULL;
  s->lastp = NULL;
  if (luaL_newmetatable(L, LOOM_SCRATCH)) {
    lua_pushcfunction(L, scratch_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  /* a scratch made to replace a busy one sweeps the same pins */
  s->pins = pushpinset(L, 0);
  lua_setiuservalue(L, -2, 2);
  return s;
}

/* --------------------------------------------------------------- encoder */

typedef struct eframe {
  int obj;            /* stack index of the table or function */
  int isfunc;
  int phase;
  lua_Integer i, n;   /* array position / upvalue number, and bound */
  size_t patch;       /* where the hash count goes */
  uint32_t nhash;
  int objindex;       /* this object's number */
} eframe;

enum { EP_NEXT, EP_VALUE, EP_META, EP_DONE, EP_UPVAL };

#define INLINE_FRAMES 32

/* Stack slots of the encoder, relative to 'base'; all but the scratch
** start as nil and are filled when first needed. */
enum { S_SCRATCH = 1, S_SEEN, S_UPSEEN, S_FRAMES, S_GLOBALS, S_CFUNCS,
       S_ERRMT, S_FCACHE, S_NSLOTS = S_FCACHE };

typedef struct encoder {
  lua_State *L;
  scratch *s;
  int base;           /* the slots are base + S_* */
  int have;           /* bit (1 << S_*) set once a slot is filled */
  int nobjs;
  int refs_ok;
  int xproc;          /* LOOM_REFS_PROCESS: a channel is refused as such */
  loom_place place;
  int argbase, root;  /* for error messages */
  lua_Integer i0;     /* LOOM_AT_MAP: the first call's index; nseq per call */
  int nseq;
  eframe *f;          /* frames: inline or in the S_FRAMES userdata */
  int nf, capf;
  eframe inl[INLINE_FRAMES];
} encoder;

/* The stack index of slot k, filling it on first use. */
static int e_slot(encoder *e, int k) {
  lua_State *L = e->L;
  int idx = e->base + k;
  if (e->have & (1 << k)) return idx;
  switch (k) {
    case S_SEEN: case S_UPSEEN: lua_newtable(L); break;
    case S_GLOBALS: lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
      break;
    case S_CFUNCS:
      if (lua_getfield(L, LUA_REGISTRYINDEX, LOOM_CFUNCS) != LUA_TTABLE) {
        lua_pop(L, 1);
        loom_cfuncs_init(L);
        lua_getfield(L, LUA_REGISTRYINDEX, LOOM_CFUNCS);
      }
      break;
    case S_ERRMT: luaL_getmetatable(L, LOOM_ERROR); break;
    case S_FCACHE:
      if (lua_rawgetp(L, LUA_REGISTRYINDEX, &FCACHE_KEY) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);                 /* closure -> bytecode, weak */
        lua_createtable(L, 0, 1);
        lua_pushliteral(L, "k");
        lua_setfield(L, -2, "__mode");
        lua_setmetatable(L, -2);
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &FCACHE_KEY);
      }
      break;
    default: lua_pushnil(L);
  }
  lua_replace(L, idx);
  e->have |= 1 << k;
  return idx;
}

static void e_grow(encoder *e, size_t need) {
  loom_msg *m = e->s->m;
  size_t cap;
  if (m->cap - m->len >= need) return;
  if (need > ((size_t)-1) / 4 - m->len) luaL_error(e->L, "message too large");
  /* One large piece (a string) gets room for itself and a little more:
  ** doubling past it would waste up to half, and a block past 32 MiB
  ** always gets fresh pages from glibc, where a reused one is warm. */
  if (need > m->cap) cap = m->len + need + 4096;
  else cap = m->cap * 2;
  while (cap - m->len < need) cap *= 2;
  m = (loom_msg *)loom_realloc(m, offsetof(loom_msg, data) + cap);
  if (m == NULL) luaL_error(e->L, "not enough memory");
  m->cap = cap;
  e->s->m = m;
}

static void e_bytes(encoder *e, const void *p, size_t n) {
  loom_msg *m = e->s->m;
  if (m->cap - m->len < n) {
    e_grow(e, n);
    m = e->s->m;
  }
  memcpy(m->data + m->len, p, n);
  m->len += n;
}

static void e_byte(encoder *e, int b) {
  loom_msg *m = e->s->m;
  if (m->len == m->cap) {
    e_grow(e, 1);
    m = e->s->m;
  }
  m->data[m->len++] = (unsigned char)b;
}

static void e_varint(encoder *e, uint64_t v) {
  unsigned char b[10];
  int n = 0;
  do {
    unsigned char c = (unsigned char)(v & 0x7f);
    v >>= 7;
    if (v) c |= 0x80;
    b[n++] = c;
  } while (v);
  e_bytes(e, b, (size_t)n);
}


/* Little-endian 8 bytes.  On a little-endian host this is one store
** (the byte loop was ~40 instructions on the hottest path). */
static void put_u64(unsigned char *p, uint64_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  memcpy(p, &v, 8);
#else
  int i;
  for (i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
#endif
}

static void put_u32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
  p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
}

static int dump_writer(lua_State *L, const void *p, size_t sz, void *ud) {
  encoder *e = (encoder *)ud;
  loom_msg *m = e->s->m;
  (void)L;
  if (m->cap - m->len < sz) {
    size_t cap = m->cap;
    while (cap - m->len < sz) cap *= 2;
    m = (loom_msg *)loom_realloc(m, offsetof(loom_msg, data) + cap);
    if (m == NULL) return 1;
    m->cap = cap;
    e->s->m = m;
  }
  memcpy(m->data + m->len, p, sz);
  m->len += sz;
  return 0;
}

/* Describe where frame k currently is, pushing a string. */
static void e_pushplace(encoder *e, int k) {
  lua_State *L = e->L;
  eframe *f = &e->f[k];
  if (f->isfunc) {
    const char *name = lua_getupvalue(L, f->obj, (int)f->i - 1);
    if (name == NULL) name = "?";
    lua_pop(L, 1);
    lua_pushfstring(L, "upvalue '%s'", *name ? name : "?");
  }
  else if (f->phase == EP_META || f->phase == EP_DONE)
    lua_pushliteral(L, "metatable");
  else {  /* key is at obj+1; encoding the key itself or its value */
    int key = f->obj + 1;
    const char *what = f->phase == EP_VALUE ? "key " : "";
    if (lua_type(L, key) == LUA_TSTRING)
      lua_pushfstring(L, "%sfield '%s'", what, lua_tostring(L, key));
    else if (lua_isinteger(L, key))
      lua_pushfstring(L, "%sindex %I", what,
                      (LUAI_UACINT)lua_tointeger(L, key));
    else if (lua_type(L, key) == LUA_TNUMBER)
      lua_pushfstring(L, "%sindex %f", what, lua_tonumber(L, key));
    else
      lua_pushfstring(L, "%skey of type %s", what, luaL_typename(L, key));
  }
}

/* Raise a transfer error naming the place of the value being encoded. */
static int e_error(encoder *e, const char *what) {
  lua_State *L = e->L;
  luaL_Buffer b;
  int k;
  e->s->busy = 0;
  luaL_buffinit(L, &b);
  if (e->place == LOOM_AT_ARGUMENT) {
    lua_pushfstring(L, "argument #%d: ", e->argbase + e->root);
    luaL_addvalue(&b);
  }
  else if (e->place == LOOM_AT_RESULT) {
    lua_pushfstring(L, "result #%d: ", e->root + 1);
    luaL_addvalue(&b);
  }
  else if (e->place == LOOM_AT_MAP) {   /* fn, then nseq values per call */
    if (e->root == 0) lua_pushliteral(L, "the function: ");
    else
      lua_pushfstring(L, "element %I of sequence #%d: ",
                      (LUAI_UACINT)(e->i0 + (e->root - 1) / e->nseq),
                      (e->root - 1) % e->nseq + 1);
    luaL_addvalue(&b);
  }
  for (k = 0; k < e->nf; k++) {
    if (e->nf > 12 && k == 4) {   /* keep the message short */
      lua_pushfstring(L, "... (%d levels) ...: ", e->nf - 8);
      luaL_addvalue(&b);
      k = e->nf - 5;
      continue;
    }
    e_pushplace(e, k);
    luaL_addvalue(&b);
    luaL_addstring(&b, ": ");
  }
  luaL_addstring(&b, what);
  luaL_pushresult(&b);
  return loom_raise(L, "transfer", "%s", lua_tostring(L, -1));
}

static eframe *e_push(encoder *e) {
  if (e->nf >= LOOM_MAX_DEPTH)
    e_error(e, "nesting deeper than 200000 levels");
  if (e->nf == e->capf) {
    lua_State *L = e->L;
    int ncap = e->capf * 2;
    eframe *nf;
    nf = (eframe *)lua_newuserdatauv(L, sizeof(eframe) * (size_t)ncap, 0);
    memcpy(nf, e->f, sizeof(eframe) * (size_t)e->nf);
    lua_replace(L, e->base + S_FRAMES);
    e->f = nf;
    e->capf = ncap;
  }
  return &e->f[e->nf++];
}

/* Number a new object (at stack top); returns its number. */
static int e_register(encoder *e) {
  lua_State *L = e->L;
  int seen = e_slot(e, S_SEEN);
  lua_pushvalue(L, -1);
  lua_pushinteger(L, e->nobjs);
  lua_rawset(L, seen);
  return e->nobjs++;
}

/* Returns the number of the object at top if seen before, else -1. */
static int e_seen(encoder *e) {
  lua_State *L = e->L;
  int r = -1;
  if (!(e->have & (1 << S_SEEN))) return -1;  /* nothing numbered yet */
  lua_pushvalue(L, -1);
  if (lua_rawget(L, e->base + S_SEEN) == LUA_TNUMBER)
    r = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  return r;
}

static void cfuncs_scan(lua_State *L, int map);

/* The encoded name (len module len field) of the C function at the top,
** pushed above it, or NULL (nothing pushed).  A function not in the map
** may belong to a module loaded since it was built: scan again. */
static const char *cfunc_name(encoder *e, size_t *len) {
  lua_State *L = e->L;
  int cfuncs = e_slot(e, S_CFUNCS);
  lua_pushvalue(L, -1);
  if (lua_rawget(L, cfuncs) != LUA_TSTRING) {
    lua_pop(L, 1);
    cfuncs_scan(L, cfuncs);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, cfuncs) != LUA_TSTRING) {
      lua_pop(L, 1);
      return NULL;
    }
  }
  return lua_tolstring(L, -1, len);
}

/*
** Direct access to a table's array part.  Through the C API each number
** of an array costs a lua_next or lua_rawseti (~50 ns); read or written
** in place it costs a few.  This mirrors the layout of Lua 5.4's Table
** and TValue (lobject.h), unchanged from 5.4.0 to 5.4.7.  It is used only
** when the headers are 5.4 and loom_arrays_check, run by luaopen, found
** the running interpreter's tables laid out so; otherwise the API path
** is taken.  Only numbers are read or written this way: they are not
** collectable, so the collector needs no barrier, and the table is never
** resized meanwhile.  As everywhere, only the owning thread does this.
*/
typedef struct rawtvalue {
  union { void *p; lua_Integer i; lua_Number n; } v;
  unsigned char tt;
} rawtvalue;

typedef struct rawtable {
  void *next;
  unsigned char tt, marked, flags, lsizenode;
  unsigned int alimit;
  rawtvalue *array;
} rawtable;

#define RAW_VNUMINT 0x03   /* makevariant(LUA_TNUMBER, 0) */
#define RAW_VNUMFLT 0x13   /* makevariant(LUA_TNUMBER, 1) */
#define RAW_VTABLE 0x05    /* makevariant(LUA_TTABLE, 0), as an object's tag */

#if LUA_VERSION_NUM == 504
static atomic_int arrays_ok;   /* 0 unknown/no, 1 yes, 2 yes but off */
#endif

/* Stack: pushes one table and pops it.  May raise a memory error. */
void loom_arrays_check(lua_State *L) {
#if LUA_VERSION_NUM == 504
  const rawtable *t;
  int ok;
  if (atomic_load(&arrays_ok) != 0 || lua_version(L) != 504) return;
  lua_createtable(L, 3, 0);
  lua_pushnumber(L, 1.5);
  lua_rawseti(L, -2, 1);
  lua_pushinteger(L, -7);
  lua_rawseti(L, -2, 2);
  lua_pushnumber(L, 2.5);
  lua_rawseti(L, -2, 3);
  t = (const rawtable *)lua_topointer(L, -1);
  /* the header first: array is not followed unless it matches */
  ok = t != NULL && t->tt == RAW_VTABLE && t->alimit == 3
       && t->array != NULL
       && t->array[0].tt == RAW_VNUMFLT && t->array[0].v.n == 1.5
       && t->array[1].tt == RAW_VNUMINT && t->array[1].v.i == -7
       && t->array[2].tt == RAW_VNUMFLT && t->array[2].v.n == 2.5;
  lua_pop(L, 1);
  if (ok) atomic_store(&arrays_ok, 1);
#else
  (void)L;
#endif
}

/* on < 0: just ask; else turn the in-place path on or off (on only
** where the check passed: arrays_ok 2 means supported but turned off). */
int loom_arrays_inplace(int on) {
#if LUA_VERSION_NUM == 504
  int cur = atomic_load(&arrays_ok);
  if (on >= 0 && cur != 0) atomic_store(&arrays_ok, on ? 1 : 2);
  return atomic_load(&arrays_ok) == 1;
#else
  (void)on;
  return 0;
#endif
}

static void e_num(encoder *e, int isint, lua_Integer i, lua_Number d);

/* The array part of the table at idx, and its length in *n (all of it
** is allocated; the table's length may be less); NULL if not usable. */
static rawtvalue *rawarray(lua_State *L, int idx, unsigned int *n) {
#if LUA_VERSION_NUM == 504
  rawtable *t;
  if (atomic_load_explicit(&arrays_ok, memory_order_relaxed) != 1)
    return NULL;
  t = (rawtable *)lua_topointer(L, idx);
  *n = t->alimit;
  return t->array;
#else
  (void)L; (void)idx; (void)n;
  return NULL;
#endif
}

/*
** A table is walked once with lua_next.  While the keys run 1, 2, 3...
** (Lua visits the array part first, in order) the values go out as the
** array part, without keys; from the first other key on, as pairs.
** Both counts are patched in at the end.
*/
static void e_table(encoder *e, int index) {
  lua_State *L = e->L;
  eframe *f;
  size_t patch;
  e_byte(e, T_TABLE);
  patch = e->s->m->len;
  e_bytes(e, "\0\0\0\0\0\0\0\0", 8);   /* narr, nhash */
  f = e_push(e);
  f->obj = lua_gettop(L);
  f->isfunc = 0;
  f->phase = EP_NEXT;
  f->i = 1;            /* still in the array part */
  f->n = 0;            /* array values sent */
  f->patch = patch;
  f->nhash = 0;
  f->objindex = index;
  lua_pushnil(L);      /* the first key */
  {
    /* the leading numbers of the array part, read in place; lua_next
    ** then goes on after the last of them */
    unsigned int n = 0, k;
    const rawtvalue *arr = rawarray(L, f->obj, &n);
    if (arr == NULL) return;
    /* a large array: room for its numbers in one step, not by doubling
    ** (a realloc each time, and those below malloc's mmap threshold copy) */
    if (n > 1024) e_grow(e, (size_t)n * 9);
    for (k = 0; k < n; k++) {
      if (arr[k].tt == RAW_VNUMFLT) e_num(e, 0, 0, arr[k].v.n);
      else if (arr[k].tt == RAW_VNUMINT) e_num(e, 1, arr[k].v.i, 0);
      else break;
    }
    if (k > 0) {
      f->n = k;
      lua_pushinteger(L, (lua_Integer)k);
      lua_replace(L, -2);
    }
  }
}

/* Add a reference to p (taking one) to the message being written;
** returns its index. */
static int e_addref(encoder *e, int kind, void *p) {
  loom_msg *m = e->s->m;
  loom_ref *r;
  if (m->refs == NULL && m->nrefs == LOOM_INLINE_REFS) {  /* spill */
    r = (loom_ref *)loom_malloc(sizeof(loom_ref) * 8);
    if (r == NULL) luaL_error(e->L, "not enough memory");
    memcpy(r, m->inl, sizeof m->inl);
    m->refs = r;
    m->refcap = 8;
  }
  else if (m->refs != NULL && m->nrefs == m->refcap) {
    int ncap = m->refcap * 2;
    r = (loom_ref *)loom_realloc(m->refs, sizeof(loom_ref) * (size_t)ncap);
    if (r == NULL) luaL_error(e->L, "not enough memory");
    m->refs = r;
    m->refcap = ncap;
  }
  /* the reference is taken only now that nothing can fail */
  if (kind == LOOM_REF_CHAN) loom_chan_incref((loom_chan *)p);
  else if (kind == LOOM_REF_PROTO)
    atomic_fetch_add_explicit(&((loom_proto *)p)->refs, 1,
                              memory_order_relaxed);
  else atomic_fetch_add_explicit(&((loom_pin *)p)->refs, 1,
                                 memory_order_relaxed);
  r = loom_msg_refs(m);
  r[m->nrefs].kind = kind;
  r[m->nrefs].p = p;
  return m->nrefs++;
}

/*
** Write the string at the top (len bytes at 'bytes', len >= LOOM_PIN_MIN)
** as a reference to it, anchoring it in this state's pinset; returns 0,
** writing nothing, where pins are not used: a state under a memory limit
** (a pinned string outlives its task and would count against the limit)
** or one whose pinset was closed (an encode inside lua_close).  Each step
** that can fail comes before the one that would leak: the pin is in the
** pinset (which frees it) before it is anchored, and the message takes
** its reference last.
*/
static int e_pin(encoder *e, const char *bytes, size_t len) {
  lua_State *L = e->L;
  scratch *s = e->s;
  loom_pin *p;
  if (lua_getallocf(L, NULL) == loom_lua_alloc_limited) return 0;
  if (!lua_checkstack(L, 4)) e_error(e, "value nested too deeply");
  if (s->pins == NULL) {   /* the scratch keeps the pinset it uses */
    s->pins = pushpinset(L, 1);
    lua_setiuservalue(L, e->base + S_SCRATCH, 2);
  }
  if (s->pins->closed) return 0;
  if (s->pins->n == s->pins->cap
      && !loom_grow((void **)&s->pins->pins, &s->pins->cap,
                    sizeof(loom_pin *)))
    luaL_error(L, "not enough memory");
  p = (loom_pin *)loom_malloc(sizeof *p);
  if (p == NULL) luaL_error(L, "not enough memory");
  atomic_init(&p->refs, 1);
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->idle, NULL);
  p->readers = p->closing = 0;
  p->bytes = bytes;
  p->owned = NULL;
  p->len = len;
  s->pins->pins[s->pins->n++] = p;
  lua_getiuservalue(L, e->base + S_SCRATCH, 2);
  lua_getiuservalue(L, -1, 1);            /* string, pinset, anchors */
  lua_pushlightuserdata(L, p);
  lua_pushvalue(L, -4);
  lua_rawset(L, -3);                      /* anchors[p] = string */
  lua_pop(L, 2);
  e_byte(e, T_PIN);
  e_varint(e, (uint64_t)e_addref(e, LOOM_REF_PIN, p));
  return 1;
}

/* A userdata owning one reference to a proto. */
typedef struct protobox { loom_proto *p; } protobox;

static int protobox_gc(lua_State *L) {
  protobox *b = (protobox *)lua_touserdata(L, 1);
  if (b->p) loom_proto_decref(b->p);
  b->p = NULL;
  return 0;
}

static protobox *newprotobox(lua_State *L) {
  protobox *b = (protobox *)lua_newuserdatauv(L, sizeof *b, 1);
  b->p = NULL;
  if (luaL_newmetatable(L, "loom.Proto")) {
    lua_pushcfunction(L, protobox_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return b;
}

/*
** The bytecode of the Lua function at the top, from this state's cache
** (closure -> proto, weak keys), dumping it on a miss.  The dump goes to
** the end of the message being written and is then moved into the proto.
*/
static loom_proto *e_proto(encoder *e, int nups) {
  lua_State *L = e->L;
  int cache = e_slot(e, S_FCACHE);
  protobox *b;
  loom_msg *m;
  size_t start, len;
  lua_pushvalue(L, -1);
  if (lua_rawget(L, cache) == LUA_TUSERDATA) {
    loom_proto *p = ((protobox *)lua_touserdata(L, -1))->p;
    lua_pop(L, 1);
    return p;
  }
  lua_pop(L, 1);
  b = newprotobox(L);
  lua_pushvalue(L, -2);           /* the function */
  start = e->s->m->len;
  if (lua_dump(L, dump_writer, e, 0) != 0)
    luaL_error(L, "not enough memory");
  lua_pop(L, 1);
  m = e->s->m;
  len = m->len - start;
  b->p = (loom_proto *)loom_malloc(offsetof(loom_proto, code) + len);
  if (b->p == NULL) luaL_error(L, "not enough memory");
  atomic_init(&b->p->refs, 1);
  b->p->len = len;
  memcpy(b->p->code, m->data + start, len);
  m->len = start;                 /* take the dump back out */
  if (nups == 0) b->p->simple = 1;
  else {
    const char *name = lua_getupvalue(L, -2, 1);
    lua_pop(L, 1);
    b->p->simple = nups == 1 && name != NULL && strcmp(name, "_ENV") == 0;
  }
  lua_pushvalue(L, -2);
  lua_pushvalue(L, -2);
  lua_rawset(L, cache);           /* function -> box */
  lua_pop(L, 1);
  return b->p;
}

static void e_function(encoder *e) {
  lua_State *L = e->L;
  eframe *f;
  loom_proto *p;
  int nups = 0, index;
  const void *id = lua_topointer(L, -1);
  scratch *s = e->s;
  if (id == s->lastfn && e->refs_ok) {   /* the same function as last time */
    p = s->lastp;
    goto byref;
  }
  while (lua_getupvalue(L, -1, nups + 1) != NULL) {
    lua_pop(L, 1);
    nups++;
  }
  if (nups > 255) e_error(e, "function has too many upvalues");
  p = e_proto(e, nups);
  if (p->simple && e->refs_ok) {  /* sent by reference, loaded once */
    /* remember it; e->s is the scratch at slot S_SCRATCH */
    atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    if (s->lastp) loom_proto_decref(s->lastp);
    s->lastp = p;
    s->lastfn = id;
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, e->base + S_SCRATCH, 1);
  byref:
    index = e_addref(e, LOOM_REF_PROTO, p);
    e_byte(e, T_PROTO);
    e_varint(e, (uint64_t)index);
    lua_pop(L, 1);
    return;
  }
  index = e_register(e);
  e_byte(e, T_FUNC);
  e_varint(e, p->len);
  e_bytes(e, p->code, p->len);
  e_byte(e, nups);
  f = e_push(e);
  f->obj = lua_gettop(L);
  f->isfunc = 1;
  f->phase = EP_UPVAL;
  f->i = 1;
  f->n = nups;
  f->objindex = index;
}

/* Write one number, an integer (isint) or the bits of a float: 2 or 9
** bytes. */
static void e_num(encoder *e, int isint, lua_Integer i, lua_Number d) {
  loom_msg *m = e->s->m;
  unsigned char *p;
  uint64_t u;
  if (m->cap - m->len < 9) {
    e_grow(e, 9);
    m = e->s->m;
  }
  p = m->data + m->len;
  if (isint) {
    if (i >= -128 && i <= 127) {
      p[0] = T_INT8;
      p[1] = (unsigned char)(signed char)i;
      m->len += 2;
      return;
    }
    p[0] = T_INT;
    u = (uint64_t)i;
  }
  else {
    p[0] = T_FLT;
    memcpy(&u, &d, sizeof u);
  }
  put_u64(p + 1, u);
  m->len += 9;
}

/* Write the number at stack index idx (not popped). */
static void e_number(encoder *e, int idx) {
  lua_State *L = e->L;
  if (lua_isinteger(L, idx)) e_num(e, 1, lua_tointeger(L, idx), 0);
  else e_num(e, 0, 0, lua_tonumber(L, idx));
}

/*
** Encode the value at the stack top.  A scalar is written and popped; a
** new table or function gets a frame and stays on the stack until its
** frame ends.
*/
static void e_item(encoder *e) {
  lua_State *L = e->L;
  switch (lua_type(L, -1)) {
    case LUA_TNIL: e_byte(e, T_NIL); break;
    case LUA_TBOOLEAN: e_byte(e, lua_toboolean(L, -1) ? T_TRUE : T_FALSE);
      break;
    case LUA_TNUMBER:
      e_number(e, -1);
      break;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, -1, &len);
      if (len >= LOOM_PIN_MIN && e->refs_ok && e_pin(e, s, len)) break;
      e_byte(e, T_STR);
      e_varint(e, len);
      e_bytes(e, s, len);
      break;
    }
    case LUA_TTABLE: case LUA_TFUNCTION: {
      int idx;
      if (lua_type(L, -1) == LUA_TTABLE) {
        if (lua_rawequal(L, -1, e_slot(e, S_GLOBALS))) {
          e_byte(e, T_ENV);
          break;
        }
        if (lua_rawequal(L, -1, e_slot(e, S_ERRMT))) {  /* loom's errors */
          e_byte(e, T_ERRMT);
          break;
        }
      }
      idx = e_seen(e);
      if (idx >= 0) {
        e_byte(e, T_REF);
        e_varint(e, (uint64_t)idx);
        break;
      }
      if (lua_type(L, -1) == LUA_TTABLE) {
        if (!lua_checkstack(L, 4)) e_error(e, "value nested too deeply");
        e_table(e, e_register(e));
        return;  /* stays on the stack */
      }
      if (lua_iscfunction(L, -1)) {
        size_t len;
        const char *name = cfunc_name(e, &len);
        if (name == NULL)
          e_error(e, "cannot transfer a C function that is not a field "
                     "of a module in package.loaded");
        e_byte(e, T_CFUNC);
        e_bytes(e, name, len);   /* already encoded: len module len field */
        lua_pop(L, 1);
        break;
      }
      if (!lua_checkstack(L, 6)) e_error(e, "value nested too deeply");
      e_function(e);
      return;
    }
    case LUA_TUSERDATA: {
      loom_chan *c = loom_tochannel(L, -1);
      int idx;
      if (c == NULL) e_error(e, "cannot transfer a userdata");
      if (e->xproc)
        e_error(e, "a channel cannot cross into another process");
      if (!e->refs_ok)
        e_error(e, "cannot encode a channel into a string");
      idx = e_addref(e, LOOM_REF_CHAN, c);
      e_byte(e, T_CHAN);
      e_varint(e, (uint64_t)idx);
      break;
    }
    case LUA_TLIGHTUSERDATA:
      e_error(e, "cannot transfer a light userdata");
      break;
    case LUA_TTHREAD:
      e_error(e, "cannot transfer a coroutine");
      break;
    default:
      e_error(e, "cannot transfer this value");
  }
  lua_pop(L, 1);
}

/* Run frames until the one at depth 'base' is gone. */
static void e_run(encoder *e) {
  lua_State *L = e->L;
  while (e->nf > 0) {
    eframe *f = &e->f[e->nf - 1];
    if (f->isfunc) {
      const char *name;
      void *id;
      if (f->i > f->n) {
        e->nf--;
        lua_pop(L, 1);
        continue;
      }
      /* f->i moves on before the value is encoded: a frame opened for
      ** the value resumes this one at the next upvalue */
      name = lua_getupvalue(L, f->obj, (int)f->i);
      id = lua_upvalueid(L, f->obj, (int)f->i);
      f->i++;
      if (name != NULL && strcmp(name, "_ENV") == 0
          && lua_type(L, -1) == LUA_TTABLE) {
        lua_pop(L, 1);
        e_byte(e, T_ENV);
        continue;
      }
      lua_pushlightuserdata(L, id);
      if (lua_rawget(L, e_slot(e, S_UPSEEN)) == LUA_TNUMBER) {  /* shared */
        lua_Integer v = lua_tointeger(L, -1);
        lua_pop(L, 2);
        e_byte(e, T_JOIN);
        e_varint(e, (uint64_t)(v >> 8));
        e_varint(e, (uint64_t)(v & 0xff));
        continue;
      }
      lua_pop(L, 1);
      lua_pushlightuserdata(L, id);
      lua_pushinteger(L, ((lua_Integer)f->objindex << 8) | (f->i - 1));
      lua_rawset(L, e->base + S_UPSEEN);
      e_item(e);
      continue;
    }
    switch (f->phase) {
      case EP_NEXT:
        if (lua_next(L, f->obj) == 0) {
          f->phase = EP_META;
          break;
        }
        if (f->i) {   /* array part: numbers stay in this loop */
          for (;;) {
            if (!lua_isinteger(L, -2) || lua_tointeger(L, -2) != f->n + 1) {
              f->i = 0;   /* from here on, pairs */
              break;
            }
            if (f->n == 0xffffffff) e_error(e, "table too large");
            f->n++;
            if (lua_type(L, -1) != LUA_TNUMBER) {
              e_item(e);   /* may open a frame, which must run first */
              break;
            }
            e_number(e, -1);
            lua_pop(L, 1);
            if (lua_next(L, f->obj) == 0) {
              f->phase = EP_META;
              break;
            }
          }
          if (f->i || f->phase == EP_META) break;
        }
        if (f->nhash == 0xffffffffu) e_error(e, "table too large");
        f->nhash++;
        f->phase = EP_VALUE;
        lua_pushvalue(L, -2);
        e_item(e);   /* the key */
        break;
      case EP_VALUE:
        f->phase = EP_NEXT;
        e_item(e);   /* the value; the key stays for lua_next */
        break;
      case EP_META:
        put_u32(e->s->m->data + f->patch, (uint32_t)f->n);
        put_u32(e->s->m->data + f->patch + 4, f->nhash);
        f->phase = EP_DONE;
        if (lua_getmetatable(L, f->obj)) {
          e_byte(e, 1);
          e_item(e);
        }
        else e_byte(e, 0);
        break;
      default:  /* EP_DONE */
        e->nf--;
        lua_pop(L, 1);
        break;
    }
  }
}

/* loom_encode and loom_encode_mode (see loom.h). */
static loom_msg *encode(lua_State *L, int first, int n, loom_place place,
                        int argbase, int refs_ok, int list, lua_Integer i0,
                        int nseq) {
  encoder e;
  scratch *s;
  loom_msg *m;
  int i;
  first = lua_absindex(L, first);
  luaL_checkstack(L, S_NSLOTS + 8, "value nested too deeply");
  e.base = lua_gettop(L);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &SCRATCH_KEY) != LUA_TUSERDATA) {
    lua_pop(L, 1);
    newscratch(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &SCRATCH_KEY);
  }
  s = (scratch *)lua_touserdata(L, -1);
  if (s->busy) {
    /* Either a finalizer encodes while an encode is under way, or an
    ** earlier encode was cut short by a memory error that left the flag
    ** set.  Either way a fresh one replaces it in the registry: a running
    ** encode keeps its own anchored on its stack (slot S_SCRATCH), and a
    ** stale one is collected, so later encodes are not slowed for good. */
    lua_pop(L, 1);
    s = newscratch(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &SCRATCH_KEY);
  }
  if (s->pins != NULL && pins_due(s->pins) && !s->pins->closed) {
    lua_getiuservalue(L, -1, 2);   /* un-anchor what was read meanwhile */
    pins_sweep(L, lua_gettop(L), 0);
    lua_pop(L, 1);
  }
  lua_settop(L, e.base + S_NSLOTS);   /* the other slots, all nil */
  s->busy = 1;
  scratch_reset(s);
  if (s->m == NULL) {
    size_t cap = 256;
    s->m = (loom_msg *)loom_malloc(offsetof(loom_msg, data) + cap);
    if (s->m == NULL) { s->busy = 0; luaL_error(L, "not enough memory"); }
    s->m->len = 0; s->m->cap = cap;
    s->m->refs = NULL; s->m->nrefs = s->m->refcap = 0;
  }
  e.L = L;
  e.s = s;
  e.have = 0;
  e.nobjs = 0;
  e.refs_ok = refs_ok == LOOM_REFS_THREADS;
  e.xproc = refs_ok == LOOM_REFS_PROCESS;
  e.place = place;
  e.argbase = argbase;
  e.i0 = i0;
  e.nseq = nseq > 0 ? nseq : 1;
  e.root = 0;
  e.f = e.inl;
  e.nf = 0;
  e.capf = INLINE_FRAMES;
  e_bytes(&e, MAGIC, 4);
  e_byte(&e, VERSION);
  e_bytes(&e, "\0\0\0\0", 4);      /* nobjs, patched below */
  if (list) {   /* one value: an array table that was never built */
    e_varint(&e, 1);
    unsigned char sizes[8] = { 0 };   /* narr = n, nhash = 0 */
    put_u32(sizes, (uint32_t)n);
    e_byte(&e, T_TABLE);
    e_bytes(&e, sizes, 8);
    e.nobjs = 1;   /* it is object 0, as the decoder numbers it */
  }
  else e_varint(&e, (uint64_t)n);
  for (i = 0; i < n; i++) {
    if (lua_type(L, first + i) == LUA_TNUMBER) {   /* common; no frame */
      e_number(&e, first + i);
      continue;
    }
    e.root = i;
    lua_pushvalue(L, first + i);
    e_item(&e);
    e_run(&e);
  }
  if (list) e_byte(&e, 0);   /* no metatable */
  m = s->m;
  put_u32(m->data + 5, (uint32_t)e.nobjs);
  if (m->len <= SCRATCH_KEEP && m->refs == NULL) {
    /* small: copy it out at its size, and keep the buffer for next time
    ** (a queued task then holds tens of bytes, not a whole buffer) */
    loom_msg *c = (loom_msg *)loom_malloc(offsetof(loom_msg, data) + m->len);
    if (c == NULL) { s->busy = 0; luaL_error(L, "not enough memory"); }
    memcpy(c, m, offsetof(loom_msg, data) + m->len);
    c->cap = m->len;
    m->nrefs = 0;          /* the copy holds the references now */
    m->len = 0;
    if (m->cap > SCRATCH_BIG) {   /* a large one, given back: let it go */
      loom_msg_free(m);
      s->m = NULL;
    }
    m = c;
  }
  else {   /* large: the caller takes the buffer itself */
    s->m = NULL;
    if (m->cap - m->len > m->len + SCRATCH_BIG) {
      /* mostly unused (room reserved for an array, or a buffer given back
      ** by a larger message, whose pages are in memory): return the rest */
      loom_msg *t = (loom_msg *)loom_realloc(m, offsetof(loom_msg, data)
                                                + m->len);
      if (t != NULL) {
        t->cap = t->len;
        m = t;
      }
    }
  }
  s->busy = 0;
  lua_settop(L, e.base);
  return m;
}

void loom_msg_recycle(lua_State *L, loom_msg *m) {
  scratch *s = NULL;
  if (m != NULL && m->cap > SCRATCH_BIG) {
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &SCRATCH_KEY) == LUA_TUSERDATA)
      s = (scratch *)lua_touserdata(L, -1);
    lua_pop(L, 1);   /* the registry keeps it */
    if (s != NULL && !s->busy && (s->m == NULL || s->m->cap < m->cap)) {
      release_refs(m);
      loom_free(m->refs);
      m->refs = NULL;
      m->refcap = 0;
      m->len = 0;
      loom_msg_free(s->m);
      s->m = m;
      return;
    }
  }
  loom_msg_free(m);
}

loom_msg *loom_encode(lua_State *L, int first, int n, loom_place place,
                      int argbase, int refs_ok) {
  return encode(L, first, n, place, argbase, refs_ok, 0, 0, 0);
}

loom_msg *loom_encode_mode(lua_State *L, int first, int n, loom_place place,
                           int argbase, int refs, int list, lua_Integer i0,
                           int nseq) {
  return encode(L, first, n, place, argbase, refs, list, i0, nseq);
}

/* --------------------------------------------------------------- decoder */

typedef struct dframe {
  int obj;             /* stack index of the table or function */
  int isfunc;
  uint64_t narr, nhash, i;
  int phase;           /* tables: 0 array, 1 key, 2 value, 3 meta, 4 done */
} dframe;

typedef struct decoder {
  lua_State *L;
  const unsigned char *p, *end, *start;
  int functions;
  const loom_msg *m;
  int objs;            /* stack index: number -> object */
  int nobjs, maxobjs;
  int framebuf;
  dframe *f;
  int nf, capf;
  dframe inl[INLINE_FRAMES];
} decoder;

static int d_error(decoder *d, const char *what) {
  return loom_raise(d->L, "transfer", "malformed message: %s at byte %d",
                    what, (int)(d->p - d->start));
}

static int d_byte(decoder *d) {
  if (d->p >= d->end) d_error(d, "truncated");
  return *d->p++;
}

static uint64_t d_varint(decoder *d) {
  uint64_t v = 0;
  int shift = 0;
  for (;;) {
    int c = d_byte(d);
    if (shift == 63 && (c & 0x7e)) d_error(d, "bad varint");
    v |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80)) return v;
    shift += 7;
    if (shift > 63) d_error(d, "bad varint");
  }
}

/* 8 little-endian bytes at p (the caller checked they are there) */
static uint64_t get_u64(const unsigned char *p) {
  uint64_t v = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  memcpy(&v, p, 8);
#else
  int i;
  for (i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
#endif
  return v;
}

static uint64_t d_u64(decoder *d) {
  uint64_t v;
  if (d->end - d->p < 8) d_error(d, "truncated");
  v = get_u64(d->p);
  d->p += 8;
  return v;
}

/* If the next item is a number with all its bytes there, read it and
** return 1 (an integer in *i when *isint, else a float in *x); else 0,
** reading nothing. */
static inline int d_num(decoder *d, int *isint, lua_Integer *i,
                        lua_Number *x) {
  ptrdiff_t left = d->end - d->p;
  if (left < 2) return 0;
  switch (*d->p) {
    case T_INT8:
      *isint = 1;
      *i = (signed char)d->p[1];
      d->p += 2;
      return 1;
    case T_INT: case T_FLT: {
      uint64_t u;
      if (left < 9) return 0;
      u = get_u64(d->p + 1);
      if ((*isint = *d->p == T_INT)) *i = (lua_Integer)u;
      else memcpy(x, &u, sizeof *x);
      d->p += 9;
      return 1;
    }
    default:
      return 0;
  }
}

static uint32_t d_u32(decoder *d) {
  uint32_t v;
  if (d->end - d->p < 4) d_error(d, "truncated");
  v = (uint32_t)d->p[0] | (uint32_t)d->p[1] << 8
    | (uint32_t)d->p[2] << 16 | (uint32_t)d->p[3] << 24;
  d->p += 4;
  return v;
}

static size_t d_left(decoder *d) { return (size_t)(d->end - d->p); }

static dframe *d_push(decoder *d) {
  if (d->nf >= LOOM_MAX_DEPTH) d_error(d, "nesting too deep");
  if (d->nf == d->capf) {
    lua_State *L = d->L;
    int ncap = d->capf * 2;
    dframe *nf;
    nf = (dframe *)lua_newuserdatauv(L, sizeof(dframe) * (size_t)ncap, 0);
    memcpy(nf, d->f, sizeof(dframe) * (size_t)d->nf);
    lua_replace(L, d->framebuf);
    d->f = nf;
    d->capf = ncap;
  }
  return &d->f[d->nf++];
}

static void d_register(decoder *d) {
  lua_State *L = d->L;
  if (d->nobjs >= d->maxobjs) d_error(d, "too many objects");
  lua_pushvalue(L, -1);
  lua_rawseti(L, d->objs, ++d->nobjs);
}



typedef struct chunk { const char *p; size_t left; } chunk;

static const char *d_reader(lua_State *L, void *ud, size_t *sz) {
  chunk *c = (chunk *)ud;
  (void)L;
  *sz = c->left;
  c->left = 0;
  return *sz ? c->p : NULL;
}

/*
** Push the function loaded from proto p, from this state's cache
** (lightuserdata p -> box holding a reference to p, whose uservalue is
** the function).  The box keeps p alive, so its address cannot be
** reused while it is a key.  Such functions have no upvalue but _ENV,
** which lua_load sets to the globals; one closure serves every task.
*/
static void d_proto(decoder *d, loom_proto *p) {
  lua_State *L = d->L;
  chunk c;
  protobox *b;
  lua_Integer n;
  int st;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &PCACHE_KEY) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &PCACHE_KEY);
  }
  if (lua_rawgetp(L, -1, p) == LUA_TUSERDATA) {
    lua_getiuservalue(L, -1, 1);
    lua_replace(L, -3);
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  lua_getfield(L, -1, "n");
  n = lua_tointeger(L, -1);
  lua_pop(L, 1);
  if (n >= PCACHE_MAX) {   /* full: start over; old boxes are collected */
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &PCACHE_KEY);
    n = 0;
  }
  b = newprotobox(L);
  atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
  b->p = p;
  c.p = (const char *)p->code;
  c.left = p->len;
  if ((st = lua_load(L, d_reader, &c, "=?", "b")) != LUA_OK) {
    if (st == LUA_ERRMEM) lua_error(L);
    lua_pop(L, 1);
    d_error(d, "bad bytecode");
  }
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, -3, 1);     /* box.uservalue = function */
  lua_pushvalue(L, -2);
  lua_rawsetp(L, -4, p);           /* cache[p] = box */
  lua_pushinteger(L, n + 1);
  lua_setfield(L, -4, "n");
  lua_replace(L, -3);              /* function over the cache */
  lua_pop(L, 1);
}

/* Read a reference's index: the pointer of that reference of the
** message, which must be of this kind (else the error 'what'). */
static void *d_ref(decoder *d, int kind, const char *what) {
  uint64_t k = d_varint(d);
  if (d->m == NULL || k >= (uint64_t)d->m->nrefs
      || loom_msg_refs(d->m)[k].kind != kind)
    d_error(d, what);
  return loom_msg_refs(d->m)[k].p;
}

/*
** Read one item and push it.  Returns 1 if it opened a frame (the new
** object stays at the top and the frame fills it), else 0.
*/
/* Protected: [1] a module name; require it. */
static int require_k(lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushvalue(L, 1);
  lua_call(L, 1, 1);
  return 1;
}

/* A name of a C function's module or field: len bytes. */
static void d_cname(decoder *d) {
  uint64_t len = d_varint(d);
  if (len == 0 || len > LOOM_CNAME_MAX || len > d_left(d))
    d_error(d, "bad C function name");
  lua_pushlstring(d->L, (const char *)d->p, (size_t)len);
  d->p += len;
}

/*
** CFUNC: push package.loaded[module][field].  A module that is not loaded
** is required, but only from a trusted message (functions allowed): an
** untrusted one must not make the receiver load code.
*/
static void d_cfunc(decoder *d) {
  lua_State *L = d->L;
  int top = lua_gettop(L), mod = top + 1, fld = top + 2;
  if (!lua_checkstack(L, 8)) d_error(d, "nesting too deep");
  d_cname(d);
  d_cname(d);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushvalue(L, mod);
  if (lua_rawget(L, -2) != LUA_TTABLE) {
    int st;
    if (!d->functions)
      loom_raise(L, "transfer", "C function '%s.%s': module '%s' is not "
                 "loaded (decode with {functions = true} to require it)",
                 lua_tostring(L, mod), lua_tostring(L, fld),
                 lua_tostring(L, mod));
    lua_pop(L, 1);
    lua_pushcfunction(L, require_k);
    lua_pushvalue(L, mod);
    if ((st = lua_pcall(L, 1, 1, 0)) != LUA_OK) {
      if (st == LUA_ERRMEM) lua_error(L);
      loom_raise(L, "transfer", "C function '%s.%s': cannot load module "
                 "'%s': %s", lua_tostring(L, mod), lua_tostring(L, fld),
                 lua_tostring(L, mod), loom_pushtext(L, -1));
    }
    if (lua_type(L, -1) != LUA_TTABLE)
      loom_raise(L, "transfer", "C function '%s.%s': module '%s' is not "
                 "a table", lua_tostring(L, mod), lua_tostring(L, fld),
                 lua_tostring(L, mod));
  }
  lua_pushvalue(L, fld);
  if (lua_rawget(L, -2) != LUA_TFUNCTION)
    loom_raise(L, "transfer", "C function '%s.%s': module '%s' has no "
               "function '%s'", lua_tostring(L, mod), lua_tostring(L, fld),
               lua_tostring(L, mod), lua_tostring(L, fld));
  lua_replace(L, mod);
  lua_settop(L, mod);
}

static int d_item(decoder *d, int upvalue) {
  lua_State *L = d->L;
  int tag;
  /* A scalar is attached (popped) at once, or is a root value, for which
  ** loom_decode reserved room; the rest may open a frame or use more. */
  tag = d_byte(d);
  if (tag > T_STR && !lua_checkstack(L, 4))   /* the scalars: T_NIL..T_STR */
    d_error(d, "nesting too deep");
  switch (tag) {
    case T_NIL: lua_pushnil(L); return 0;
    case T_FALSE: lua_pushboolean(L, 0); return 0;
    case T_TRUE: lua_pushboolean(L, 1); return 0;
    case T_INT: lua_pushinteger(L, (lua_Integer)d_u64(d)); return 0;
    case T_INT8: lua_pushinteger(L, (signed char)d_byte(d)); return 0;
    case T_FLT: {
      uint64_t u = d_u64(d);
      lua_Number x;
      memcpy(&x, &u, sizeof x);
      lua_pushnumber(L, x);
      return 0;
    }
    case T_STR: {
      uint64_t len = d_varint(d);
      if (len > d_left(d)) d_error(d, "truncated string");
      lua_pushlstring(L, (const char *)d->p, (size_t)len);
      d->p += len;
      return 0;
    }
    case T_TABLE: {
      uint64_t narr = d_u32(d), nhash = d_u32(d);
      dframe *f;
      /* every element takes at least one byte: never trust the counts */
      if (narr > d_left(d) || nhash > d_left(d) / 2)
        d_error(d, "bad table size");
      lua_createtable(L, (int)narr, (int)nhash);
      d_register(d);
      f = d_push(d);
      f->obj = lua_gettop(L);
      f->isfunc = 0;
      f->narr = narr;
      f->nhash = nhash;
      f->i = 0;
      f->phase = narr ? 0 : (nhash ? 1 : 3);
      return 1;
    }
    case T_FUNC: {
      uint64_t len = d_varint(d);
      chunk c;
      dframe *f;
      int nups, k, st;
      if (!d->functions)
        loom_raise(L, "transfer", "refused a function at byte %d: decode "
                   "with {functions = true} to accept bytecode",
                   (int)(d->p - d->start - 1));
      if (len > d_left(d)) d_error(d, "truncated function");
      c.p = (const char *)d->p;
      c.left = (size_t)len;
      if ((st = lua_load(L, d_reader, &c, "=?", "b")) != LUA_OK) {
        if (st == LUA_ERRMEM) lua_error(L);   /* not the message's fault */
        lua_pop(L, 1);
        d_error(d, "bad bytecode");
      }
      d->p += len;
      nups = d_byte(d);
      for (k = 0; lua_getupvalue(L, -1, k + 1) != NULL; k++) lua_pop(L, 1);
      if (k != nups) d_error(d, "upvalue count does not match");
      d_register(d);
      f = d_push(d);
      f->obj = lua_gettop(L);
      f->isfunc = 1;
      f->narr = (uint64_t)nups;
      f->i = 0;
      return 1;
    }
    case T_CFUNC:
      d_cfunc(d);
      return 0;
    case T_REF: {
      uint64_t k = d_varint(d);
      if (k >= (uint64_t)d->nobjs) d_error(d, "bad reference");
      lua_rawgeti(L, d->objs, (lua_Integer)k + 1);
      return 0;
    }
    case T_ENV:
      lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
      return 0;
    case T_ERRMT:
      if (luaL_getmetatable(L, LOOM_ERROR) != LUA_TTABLE)
        d_error(d, "no loom.Error class here");
      return 0;
    case T_CHAN:
      loom_pushchannel(L, (loom_chan *)d_ref(d, LOOM_REF_CHAN,
                                             "bad channel reference"));
      return 0;
    case T_PROTO:
      d_proto(d, (loom_proto *)d_ref(d, LOOM_REF_PROTO,
                                     "bad function reference"));
      return 0;
    case T_PIN:
      pin_push(L, (loom_pin *)d_ref(d, LOOM_REF_PIN, "bad string reference"));
      return 0;
    case T_JOIN: {
      uint64_t fo = d_varint(d), up = d_varint(d);
      dframe *f;
      if (!upvalue || d->nf == 0) d_error(d, "misplaced upvalue join");
      f = &d->f[d->nf - 1];
      if (fo >= (uint64_t)d->nobjs || up < 1 || up > 255)
        d_error(d, "bad upvalue join");
      lua_rawgeti(L, d->objs, (lua_Integer)fo + 1);
      if (lua_type(L, -1) != LUA_TFUNCTION || lua_iscfunction(L, -1)
          || lua_getupvalue(L, -1, (int)up) == NULL)
        d_error(d, "bad upvalue join");
      lua_pop(L, 1);
      lua_upvaluejoin(L, f->obj, (int)f->i + 1, -1, (int)up);
      lua_pop(L, 1);
      return -1;  /* nothing to attach */
    }
    default:
      return d_error(d, "unknown tag");
  }
}

/* Attach the value at the top to frame f (which is at obj below it). */
static void d_attach(decoder *d, dframe *f) {
  lua_State *L = d->L;
  if (f->isfunc) {
    lua_setupvalue(L, f->obj, (int)f->i + 1);
    f->i++;
    return;
  }
  switch (f->phase) {
    case 0:  /* array */
      lua_rawseti(L, f->obj, (lua_Integer)++f->i);
      if (f->i == f->narr) { f->i = 0; f->phase = f->nhash ? 1 : 3; }
      break;
    case 1:  /* key: keep it on the stack */
      if (lua_isnil(L, -1)) d_error(d, "nil table key");
      if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1)) {
        lua_Number k = lua_tonumber(L, -1);
        if (k != k) d_error(d, "NaN table key");
      }
      f->phase = 2;
      break;
    case 2:  /* value */
      lua_rawset(L, f->obj);
      if (++f->i == f->nhash) f->phase = 3;
      else f->phase = 1;
      break;
    case 3:  /* metatable */
      if (!lua_istable(L, -1)) d_error(d, "metatable is not a table");
      lua_setmetatable(L, f->obj);
      f->phase = 4;
      break;
    default:
      d_error(d, "corrupt frame");
  }
}

int loom_decode(lua_State *L, const unsigned char *p, size_t len,
                int functions, const loom_msg *m) {
  decoder d;
  uint64_t nvalues, v;
  uint32_t nobjs;
  int base;
  d.L = L;
  d.p = d.start = p;
  d.end = p + len;
  d.functions = functions;
  d.m = m;
  if (len < HEADER_LEN || memcmp(p, MAGIC, 4) != 0)
    d_error(&d, "bad header");
  if (p[4] != VERSION)
    loom_raise(L, "transfer", "malformed message: format version %d, "
               "expected %d", (int)p[4], VERSION);
  d.p += 5;
  nobjs = d_u32(&d);
  nvalues = d_varint(&d);
  if (nobjs > d_left(&d) || nvalues > d_left(&d))
    d_error(&d, "bad counts");
  luaL_checkstack(L, (int)nvalues + 8, "too many values");
  d.f = d.inl;
  d.nf = 0;
  d.capf = INLINE_FRAMES;
  if (nobjs == 0) {
    /* No table or function (each would be numbered): every value is a
    ** scalar, pushed in place, with no helper slots to remove after.
    ** An object here fails in d_register, before any frame is used. */
    d.objs = d.framebuf = 0;
    d.nobjs = d.maxobjs = 0;
    for (v = 0; v < nvalues; v++)
      if (d_item(&d, 0) != 0) d_error(&d, "misplaced upvalue join");
    if (d.p != d.end) d_error(&d, "trailing bytes");
    return (int)nvalues;
  }
  base = lua_gettop(L);
  lua_createtable(L, (int)nobjs, 0);
  d.objs = lua_gettop(L);
  d.nobjs = 0;
  d.maxobjs = (int)nobjs;
  lua_pushnil(L);
  d.framebuf = lua_gettop(L);
  for (v = 0; v < nvalues; v++) {
    if (d_item(&d, 0) < 0) d_error(&d, "misplaced upvalue join");
    while (d.nf > 0) {   /* fill open frames; the root stays on top */
      dframe *f = &d.f[d.nf - 1];
      int r;
      if (f->isfunc ? f->i >= f->narr : f->phase == 4) {
        d.nf--;   /* finished: attach it to its parent */
        if (d.nf > 0) d_attach(&d, &d.f[d.nf - 1]);
        continue;
      }
      if (!f->isfunc && f->phase == 3) {
        int has = d_byte(&d);
        if (has == 0) { f->phase = 4; continue; }
        if (has != 1) d_error(&d, "bad metatable flag");
      }
      if (!f->isfunc && f->phase == 0) {
        /* numbers of an array part: stay in this loop, writing them in
        ** place when the table's array can be reached */
        unsigned int asize = 0;
        rawtvalue *arr = rawarray(L, f->obj, &asize);
        int isint;
        lua_Integer iv;
        lua_Number xv;
        if (arr != NULL && asize >= f->narr) {
          while (f->i < f->narr && d_num(&d, &isint, &iv, &xv)) {
            rawtvalue *slot = &arr[f->i++];
            if (isint) { slot->v.i = iv; slot->tt = RAW_VNUMINT; }
            else { slot->v.n = xv; slot->tt = RAW_VNUMFLT; }
          }
        }
        while (f->i < f->narr && d_num(&d, &isint, &iv, &xv)) {
          if (isint) lua_pushinteger(L, iv);
          else lua_pushnumber(L, xv);
          lua_rawseti(L, f->obj, (lua_Integer)++f->i);
        }
        if (f->i == f->narr) {
          f->i = 0;
          f->phase = f->nhash ? 1 : 3;
          continue;
        }
      }
      r = d_item(&d, f->isfunc);
      if (r == 0) d_attach(&d, f);
      else if (r < 0) f->i++;   /* an upvalue was joined */
    }
  }
  if (d.p != d.end) d_error(&d, "trailing bytes");
  /* move the values down over the two helper slots */
  lua_remove(L, base + 1);
  lua_remove(L, base + 1);
  return (int)nvalues;
}

/* ------------------------------------------------------- C function map */

/*
** C functions cross by name: one that is a field of a module in
** package.loaded crosses as (module, field), and the receiver takes
** package.loaded[module][field] (see d_cfunc).  Each state keeps, in the
** registry, a map from such functions to their encoded names (weak
** keys), built from package.loaded when first needed (for a worker,
** before any user code runs) and scanned again for a function not in it.
** The first name found wins: the standard libraries come first.  Of _G
** only the base library counts: a global C function set by a host or a
** program is no module's field, and a worker would not have it.
*/
static const char *const std_libs[] = {
  "_G", "string", "table", "math", "io", "os", "coroutine", "utf8",
  "debug", "package", "loom.core", NULL
};

static const char *const base_funcs[] = {
  "assert", "collectgarbage", "dofile", "error", "getmetatable", "ipairs",
  "load", "loadfile", "next", "pairs", "pcall", "print", "rawequal",
  "rawget", "rawlen", "rawset", "require", "select", "setmetatable",
  "tonumber", "tostring", "type", "warn", "xpcall", NULL
};

/* len (a varint of at most 2 bytes) and the bytes of s */
static size_t put_cname(unsigned char *p, const char *s, size_t len) {
  size_t k = 0;
  if (len >= 0x80) {
    p[k++] = (unsigned char)((len & 0x7f) | 0x80);
    p[k++] = (unsigned char)(len >> 7);
  }
  else p[k++] = (unsigned char)len;
  memcpy(p + k, s, len);
  return k + len;
}

/* Map the C function at the top, field 'fld' of module 'mod', unless
** it has a name already.  Leaves the stack as it was. */
static void cfuncs_add(lua_State *L, int map, const char *mod, size_t ml,
                       const char *fld, size_t fl) {
  unsigned char buf[2 * (LOOM_CNAME_MAX + 2)];
  size_t n;
  if (ml == 0 || ml > LOOM_CNAME_MAX || fl == 0 || fl > LOOM_CNAME_MAX)
    return;
  lua_pushvalue(L, -1);
  if (lua_rawget(L, map) != LUA_TNIL) {
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  n = put_cname(buf, mod, ml);
  n += put_cname(buf + n, fld, fl);
  lua_pushvalue(L, -1);
  lua_pushlstring(L, (const char *)buf, n);
  lua_rawset(L, map);
}

/* Map the C functions of the module at the top, named by the string at
** 'name' (every string field, or only those in 'only'). */
static void cfuncs_module(lua_State *L, int map, int name,
                          const char *const *only) {
  int lib = lua_gettop(L);
  size_t ml, fl;
  const char *mod = lua_tolstring(L, name, &ml);
  if (only != NULL) {
    for (; *only != NULL; only++) {
      lua_pushstring(L, *only);
      if (lua_rawget(L, lib) == LUA_TFUNCTION && lua_iscfunction(L, -1))
        cfuncs_add(L, map, mod, ml, *only, strlen(*only));
      lua_pop(L, 1);
    }
    return;
  }
  lua_pushnil(L);
  while (lua_next(L, lib)) {   /* lib, key, value */
    if (lua_type(L, -2) == LUA_TSTRING && lua_iscfunction(L, -1)) {
      const char *fld = lua_tolstring(L, -2, &fl);
      cfuncs_add(L, map, mod, ml, fld, fl);
    }
    lua_pop(L, 1);
  }
}

/* Add every C function of a module in package.loaded to the map. */
static void cfuncs_scan(lua_State *L, int map) {
  int i, loaded, globals, top = lua_gettop(L);
  map = lua_absindex(L, map);
  luaL_checkstack(L, 8, NULL);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  loaded = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  globals = lua_gettop(L);
  for (i = 0; std_libs[i] != NULL; i++) {
    lua_pushstring(L, std_libs[i]);
    if (lua_rawget(L, loaded) == LUA_TTABLE) {
      lua_pushstring(L, std_libs[i]);
      lua_insert(L, -2);
      cfuncs_module(L, map, -2, i == 0 ? base_funcs : NULL);
    }
    lua_settop(L, globals);
  }
  lua_pushnil(L);
  while (lua_next(L, loaded)) {   /* loaded, name, module */
    if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TTABLE
        && !lua_rawequal(L, -1, globals))
      cfuncs_module(L, map, -2, NULL);
    lua_settop(L, globals + 1);
  }
  lua_settop(L, top);
}

void loom_cfuncs_init(lua_State *L) {
  luaL_checkstack(L, 4, NULL);
  lua_newtable(L);                 /* function -> encoded name, weak */
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  cfuncs_scan(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, LOOM_CFUNCS);
}
