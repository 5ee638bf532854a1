/*
** encode.c -- the encoder: a Lua value -> a message (the format is at
** the top of transfer.c), in a scratch buffer per state that is reused
** from one message to the next; and message recycling, and the C function
** names that the encoder writes.
**
** A function with no upvalue but _ENV, and a long string, go by reference
** (PROTO, PIN) where the message may refer to things (LOOM_REFS_THREADS).
**
** ex:map (above: task.c's run_chunk): LOOM_AT_MAP, and a chunk's list.
*/
#include <limits.h>
#include <string.h>

#include "loom.h"

/* Registry keys (their addresses): the caller's closure -> bytecode
** cache, and the scratch encoder. */
static const char FCACHE_KEY = 'f';
static const char SCRATCH_KEY = 's';
#define SCRATCH_KEEP 4096   /* messages up to this size are copied out */
/* A scratch buffer larger than this (one given back by loom_msg_recycle)
** is kept only while large messages keep coming: the next small message
** lets it go. */
#define SCRATCH_BIG (64 * 1024)

#define STRING_(x) #x
#define STRING(x) STRING_(x)   /* a number's macro as a string literal */

/*
** The scratch encoder: one per state, in the registry.  It owns the
** message being written, so a Lua error in the middle frees nothing by
** hand: the next encode (or the GC) reuses or frees it.  'busy' guards
** against a finalizer that encodes while an encode is under way; such a
** nested encode puts a fresh scratch in the registry (see
** loom_encode_with).
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
  loom_pinset *pins;
} scratch;

static void scratch_reset(scratch *s) {
  if (s->m == NULL) return;
  loom_msg_unref(s->m);
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
  s->pins = loom_pinset_push(L, 0);
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

#define LOOM_INLINE_FRAMES 32

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
  eframe inl[LOOM_INLINE_FRAMES];
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
      p[0] = LOOM_T_INT8;
      p[1] = (unsigned char)(signed char)i;
      m->len += 2;
      return;
    }
    p[0] = LOOM_T_INT;
    u = (uint64_t)i;
  }
  else {
    p[0] = LOOM_T_FLT;
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
    e_error(e, "nesting deeper than " STRING(LOOM_MAX_DEPTH) " levels");
  if (e->nf == e->capf)
    e->f = (eframe *)loom_frames_grow(e->L, e->f, e->nf, &e->capf,
                                      sizeof(eframe), e->base + S_FRAMES);
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

/* The encoded name (len module len field) of the C function at the top,
** pushed above it, or NULL (nothing pushed).  A function not in the map
** may belong to a module loaded since it was built: scan again. */
static const char *cfunc_name(encoder *e, size_t *len) {
  lua_State *L = e->L;
  int cfuncs = e_slot(e, S_CFUNCS);
  lua_pushvalue(L, -1);
  if (lua_rawget(L, cfuncs) != LUA_TSTRING) {
    lua_pop(L, 1);
    loom_cfuncs_scan(L, cfuncs);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, cfuncs) != LUA_TSTRING) {
      lua_pop(L, 1);
      return NULL;
    }
  }
  return lua_tolstring(L, -1, len);
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
  e_byte(e, LOOM_T_TABLE);
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
    const loom_rawtvalue *arr = loom_rawarray(L, f->obj, &n);
    if (arr == NULL) return;
    /* a large array: room for its numbers in one step, not by doubling
    ** (a realloc each time, and those below malloc's mmap threshold copy) */
    if (n > 1024) e_grow(e, (size_t)n * 9);
    for (k = 0; k < n; k++) {
      if (arr[k].tt == LOOM_RAW_VNUMFLT) e_num(e, 0, 0, arr[k].v.n);
      else if (arr[k].tt == LOOM_RAW_VNUMINT) e_num(e, 1, arr[k].v.i, 0);
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
  else loom_pin_incref((loom_pin *)p);
  r = loom_msg_refs(m);
  r[m->nrefs].kind = kind;
  r[m->nrefs].p = p;
  return m->nrefs++;
}

/*
** Write the string at the top (of LOOM_PIN_MIN bytes or more)
** as a reference to it, anchoring it in this state's pinset; returns 0,
** writing nothing, where pins are not used: a state under a memory limit
** (a pinned string outlives its task and would count against the limit)
** or one whose pinset was closed (an encode inside lua_close).  Each step
** that can fail comes before the one that would leak: the pin is in the
** pinset (which frees it) before it is anchored, and the message takes
** its reference last.
*/
static int e_pin(encoder *e) {
  lua_State *L = e->L;
  scratch *s = e->s;
  loom_pin *p;
  if (lua_getallocf(L, NULL) == loom_lua_alloc_limited) return 0;
  if (!lua_checkstack(L, 4)) e_error(e, "value nested too deeply");
  if (s->pins == NULL) {   /* the scratch keeps the pinset it uses */
    s->pins = loom_pinset_push(L, 1);
    lua_setiuservalue(L, e->base + S_SCRATCH, 2);
  }
  lua_getiuservalue(L, e->base + S_SCRATCH, 2);   /* string, pinset */
  p = loom_pin_new(L, lua_gettop(L), lua_gettop(L) - 1);
  lua_pop(L, 1);
  if (p == NULL) return 0;
  e_byte(e, LOOM_T_PIN);
  e_varint(e, (uint64_t)e_addref(e, LOOM_REF_PIN, p));
  return 1;
}

/*
** The bytecode of the Lua function at the top, from this state's cache
** (closure -> proto, weak keys), dumping it on a miss.  The dump goes to
** the end of the message being written and is then moved into the proto.
*/
static loom_proto *e_proto(encoder *e, int nups) {
  lua_State *L = e->L;
  int cache = e_slot(e, S_FCACHE);
  loom_protobox *b;
  loom_msg *m;
  size_t start, len;
  lua_pushvalue(L, -1);
  if (lua_rawget(L, cache) == LUA_TUSERDATA) {
    loom_proto *p = ((loom_protobox *)lua_touserdata(L, -1))->p;
    lua_pop(L, 1);
    return p;
  }
  lua_pop(L, 1);
  b = loom_newprotobox(L);
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
    e_byte(e, LOOM_T_PROTO);
    e_varint(e, (uint64_t)index);
    lua_pop(L, 1);
    return;
  }
  index = e_register(e);
  e_byte(e, LOOM_T_FUNC);
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

/*
** Encode the value at the stack top.  A scalar is written and popped; a
** new table or function gets a frame and stays on the stack until its
** frame ends.
*/
static void e_item(encoder *e) {
  lua_State *L = e->L;
  switch (lua_type(L, -1)) {
    case LUA_TNIL: e_byte(e, LOOM_T_NIL); break;
    case LUA_TBOOLEAN:
      e_byte(e, lua_toboolean(L, -1) ? LOOM_T_TRUE : LOOM_T_FALSE);
      break;
    case LUA_TNUMBER:
      e_number(e, -1);
      break;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, -1, &len);
      if (len >= LOOM_PIN_MIN && e->refs_ok && e_pin(e)) break;
      e_byte(e, LOOM_T_STR);
      e_varint(e, len);
      e_bytes(e, s, len);
      break;
    }
    case LUA_TTABLE: case LUA_TFUNCTION: {
      int idx;
      if (lua_type(L, -1) == LUA_TTABLE) {
        if (lua_rawequal(L, -1, e_slot(e, S_GLOBALS))) {
          e_byte(e, LOOM_T_ENV);
          break;
        }
        if (lua_rawequal(L, -1, e_slot(e, S_ERRMT))) {  /* loom's errors */
          e_byte(e, LOOM_T_ERRMT);
          break;
        }
      }
      idx = e_seen(e);
      if (idx >= 0) {
        e_byte(e, LOOM_T_REF);
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
        e_byte(e, LOOM_T_CFUNC);
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
      e_byte(e, LOOM_T_CHAN);
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
        e_byte(e, LOOM_T_ENV);
        continue;
      }
      lua_pushlightuserdata(L, id);
      if (lua_rawget(L, e_slot(e, S_UPSEEN)) == LUA_TNUMBER) {  /* shared */
        lua_Integer v = lua_tointeger(L, -1);
        lua_pop(L, 2);
        e_byte(e, LOOM_T_JOIN);
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

loom_msg *loom_encode_with(lua_State *L, int first, int n,
                           const loom_encode_opts *o) {
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
  if (s->pins != NULL && loom_pinset_due(s->pins)) {
    lua_getiuservalue(L, -1, 2);   /* un-anchor what was read meanwhile */
    loom_pinset_sweep(L, lua_gettop(L));
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
  e.refs_ok = o->refs == LOOM_REFS_THREADS;
  e.xproc = o->refs == LOOM_REFS_PROCESS;
  e.place = o->place;
  e.argbase = o->argbase;
  e.i0 = o->i0;
  e.nseq = o->nseq > 0 ? o->nseq : 1;
  e.root = 0;
  e.f = e.inl;
  e.nf = 0;
  e.capf = LOOM_INLINE_FRAMES;
  e_bytes(&e, LOOM_MAGIC, 4);
  e_byte(&e, LOOM_VERSION);
  e_bytes(&e, "\0\0\0\0", 4);      /* nobjs, patched below */
  if (o->list) {   /* one value: an array table that was never built */
    e_varint(&e, 1);
    unsigned char sizes[8] = { 0 };   /* narr = n, nhash = 0 */
    put_u32(sizes, (uint32_t)n);
    e_byte(&e, LOOM_T_TABLE);
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
  if (o->list) e_byte(&e, 0);   /* no metatable */
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
      loom_msg_unref(m);
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
                      int argbase, int refs) {
  loom_encode_opts o;
  memset(&o, 0, sizeof o);
  o.place = place;
  o.argbase = argbase;
  o.refs = refs;
  return loom_encode_with(L, first, n, &o);
}
