/*
** transfer.c -- what the encoder (encode.c) and the decoder (decode.c)
** share: loom's error values, messages and what they refer to (shared
** bytecode, pinned strings), the raw-array check, and the map of C
** functions to the names they cross by; and the message format, below.
**
** A value is copied between two lua_States in two steps: loom_encode
** (encode.c) walks it in the source state and writes a message; and
** loom_decode (decode.c) rebuilds it in the destination state.  Both walk
** with an explicit stack of frames, never with C recursion, so nesting
** depth is bounded only by LOOM_MAX_DEPTH.  Every buffer a Lua error could
** skip over is owned by a userdata (the scratch encoder buffer, the frame
** arrays), so a longjmp cannot leak it.
**
** The format of a message's bytes (the tags are LOOM_T_* in loom.h):
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
**                                    sender's, by reference (loom_pin)
**   upvalue := value | JOIN fobj:varint up:varint  -- shares an upvalue
**
** Tables and functions are numbered in the order they first appear, so
** REF keeps identity and cycles within one message.  Like CHAN and PROTO,
** PIN never appears in a message made without refs (loom.encode), so
** adding it did not change the version.
*/
#include <limits.h>
#include <string.h>
#include <stdarg.h>

#include "loom.h"

static const char PINS_KEY = 'n';   /* registry: this state's loom_pinset */

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

static void pin_decref(loom_pin *p);

void loom_msg_unref(loom_msg *m) {
  loom_ref *r = loom_msg_refs(m);
  int i;
  for (i = 0; i < m->nrefs; i++) {
    if (r[i].kind == LOOM_REF_CHAN) loom_chan_decref((loom_chan *)r[i].p);
    else if (r[i].kind == LOOM_REF_PROTO)
      loom_proto_decref((loom_proto *)r[i].p);
    else pin_decref((loom_pin *)r[i].p);
  }
  m->nrefs = 0;
}

void loom_msg_free(loom_msg *m) {
  if (m == NULL) return;
  loom_msg_unref(m);
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

struct loom_pinset {
  loom_pin **pins;         /* live pins made here, one reference each */
  int n, cap;
  int mark;                /* above PINS_SCAN: sweep when n reaches it */
  int closed;              /* __gc ran (lua_close): no more pins */
};

void loom_pin_incref(loom_pin *p) {
  atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
}

static void pin_decref(loom_pin *p) {
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
  loom_pinset *ps = (loom_pinset *)lua_touserdata(L, psidx);
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
    pin_decref(p);
  }
  ps->n = j;
  ps->mark = 2 * j;
  lua_pop(L, 1);
}

/* At lua_close (or if the registry lost it): no more pins here; the held
** ones get their own copies. */
static int pinset_gc(lua_State *L) {
  loom_pinset *ps = (loom_pinset *)lua_touserdata(L, 1);
  if (ps->closed) return 0;
  ps->closed = 1;
  lua_settop(L, 1);
  pins_sweep(L, 1, 1);
  loom_free(ps->pins);
  ps->pins = NULL;
  ps->cap = 0;
  return 0;
}

loom_pinset *loom_pinset_push(lua_State *L, int make) {
  loom_pinset *ps;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &PINS_KEY) == LUA_TUSERDATA)
    return (loom_pinset *)lua_touserdata(L, -1);
  if (!make) return NULL;
  lua_pop(L, 1);
  ps = (loom_pinset *)lua_newuserdatauv(L, sizeof *ps, 1);
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

int loom_pinset_due(const loom_pinset *ps) {
  return pins_due(ps) && !ps->closed;
}

void loom_pinset_sweep(lua_State *L, int psidx) {
  pins_sweep(L, psidx, 0);
}

loom_pin *loom_pin_new(lua_State *L, int psidx, int stridx) {
  loom_pinset *ps = (loom_pinset *)lua_touserdata(L, psidx);
  loom_pin *p;
  size_t len;
  const char *bytes = lua_tolstring(L, stridx, &len);
  if (ps->closed) return NULL;
  if (ps->n == ps->cap
      && !loom_grow((void **)&ps->pins, &ps->cap, sizeof(loom_pin *)))
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
  ps->pins[ps->n++] = p;   /* the pinset frees it from now on */
  lua_getiuservalue(L, psidx, 1);
  lua_pushlightuserdata(L, p);
  lua_pushvalue(L, stridx);
  lua_rawset(L, -3);       /* anchors[p] = string */
  lua_pop(L, 1);
  return p;
}

void loom_pins_sweep(lua_State *L) {
  loom_pinset *ps;
  if (!lua_checkstack(L, 4)) return;
  ps = loom_pinset_push(L, 0);
  if (ps != NULL && !ps->closed && pins_due(ps))
    pins_sweep(L, lua_gettop(L), 0);
  lua_pop(L, 1);
}

int loom_pins_live(lua_State *L, const char *bytes) {
  loom_pinset *ps;
  int n = 0, i;
  if (!lua_checkstack(L, 4)) return -1;
  ps = loom_pinset_push(L, 0);
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

void loom_pin_push(lua_State *L, loom_pin *p) {
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

static int protobox_gc(lua_State *L) {
  loom_protobox *b = (loom_protobox *)lua_touserdata(L, 1);
  if (b->p) loom_proto_decref(b->p);
  b->p = NULL;
  return 0;
}

loom_protobox *loom_newprotobox(lua_State *L) {
  loom_protobox *b = (loom_protobox *)lua_newuserdatauv(L, sizeof *b, 1);
  b->p = NULL;
  if (luaL_newmetatable(L, "loom.Proto")) {
    lua_pushcfunction(L, protobox_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return b;
}

/* ---------------------------------------------------------------- frames */

void *loom_frames_grow(lua_State *L, void *f, int n, int *cap, size_t size,
                       int slot) {
  int ncap = *cap * 2;
  void *nf = lua_newuserdatauv(L, size * (size_t)ncap, 0);
  memcpy(nf, f, size * (size_t)n);
  lua_replace(L, slot);   /* the old array, if a userdata, is garbage */
  *cap = ncap;
  return nf;
}

/* ------------------------------------------------------------ raw arrays */

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
** (loom_rawtvalue and the number tags are in loom.h.)
*/
typedef struct rawtable {
  void *next;
  unsigned char tt, marked, flags, lsizenode;
  unsigned int alimit;
  loom_rawtvalue *array;
} rawtable;

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
       && t->array[0].tt == LOOM_RAW_VNUMFLT && t->array[0].v.n == 1.5
       && t->array[1].tt == LOOM_RAW_VNUMINT && t->array[1].v.i == -7
       && t->array[2].tt == LOOM_RAW_VNUMFLT && t->array[2].v.n == 2.5;
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

loom_rawtvalue *loom_rawarray(lua_State *L, int idx, unsigned int *n) {
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

void loom_cfuncs_scan(lua_State *L, int map) {
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
  loom_cfuncs_scan(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, LOOM_CFUNCS);
}
