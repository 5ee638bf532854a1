/*
** decode.c -- the decoder: a message (its format: transfer.c) -> Lua
** values in the receiving state.  It trusts nothing in the message: every
** count and length is checked against the bytes left, and a malformed
** message raises a transfer error, never reading outside it.
*/
#include <string.h>

#include "loom.h"

/* Registry key (its address): a worker's bytecode -> loaded function
** cache. */
static const char PCACHE_KEY = 'p';
#define PCACHE_MAX 4096

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
  dframe inl[LOOM_INLINE_FRAMES];
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
    case LOOM_T_INT8:
      *isint = 1;
      *i = (signed char)d->p[1];
      d->p += 2;
      return 1;
    case LOOM_T_INT: case LOOM_T_FLT: {
      uint64_t u;
      if (left < 9) return 0;
      u = get_u64(d->p + 1);
      if ((*isint = *d->p == LOOM_T_INT)) *i = (lua_Integer)u;
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
  if (d->nf == d->capf)
    d->f = (dframe *)loom_frames_grow(d->L, d->f, d->nf, &d->capf,
                                      sizeof(dframe), d->framebuf);
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
  loom_protobox *b;
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
  b = loom_newprotobox(L);
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
  if (tag > LOOM_T_STR && !lua_checkstack(L, 4))   /* not a scalar */
    d_error(d, "nesting too deep");
  switch (tag) {
    case LOOM_T_NIL: lua_pushnil(L); return 0;
    case LOOM_T_FALSE: lua_pushboolean(L, 0); return 0;
    case LOOM_T_TRUE: lua_pushboolean(L, 1); return 0;
    case LOOM_T_INT: lua_pushinteger(L, (lua_Integer)d_u64(d)); return 0;
    case LOOM_T_INT8: lua_pushinteger(L, (signed char)d_byte(d)); return 0;
    case LOOM_T_FLT: {
      uint64_t u = d_u64(d);
      lua_Number x;
      memcpy(&x, &u, sizeof x);
      lua_pushnumber(L, x);
      return 0;
    }
    case LOOM_T_STR: {
      uint64_t len = d_varint(d);
      if (len > d_left(d)) d_error(d, "truncated string");
      lua_pushlstring(L, (const char *)d->p, (size_t)len);
      d->p += len;
      return 0;
    }
    case LOOM_T_TABLE: {
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
    case LOOM_T_FUNC: {
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
    case LOOM_T_CFUNC:
      d_cfunc(d);
      return 0;
    case LOOM_T_REF: {
      uint64_t k = d_varint(d);
      if (k >= (uint64_t)d->nobjs) d_error(d, "bad reference");
      lua_rawgeti(L, d->objs, (lua_Integer)k + 1);
      return 0;
    }
    case LOOM_T_ENV:
      lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
      return 0;
    case LOOM_T_ERRMT:
      if (luaL_getmetatable(L, LOOM_ERROR) != LUA_TTABLE)
        d_error(d, "no loom.Error class here");
      return 0;
    case LOOM_T_CHAN:
      loom_pushchannel(L, (loom_chan *)d_ref(d, LOOM_REF_CHAN,
                                             "bad channel reference"));
      return 0;
    case LOOM_T_PROTO:
      d_proto(d, (loom_proto *)d_ref(d, LOOM_REF_PROTO,
                                     "bad function reference"));
      return 0;
    case LOOM_T_PIN:
      loom_pin_push(L, (loom_pin *)d_ref(d, LOOM_REF_PIN,
                                         "bad string reference"));
      return 0;
    case LOOM_T_JOIN: {
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
  if (len < LOOM_HEADER_LEN || memcmp(p, LOOM_MAGIC, 4) != 0)
    d_error(&d, "bad header");
  if (p[4] != LOOM_VERSION)
    loom_raise(L, "transfer", "malformed message: format version %d, "
               "expected %d", (int)p[4], LOOM_VERSION);
  d.p += 5;
  nobjs = d_u32(&d);
  nvalues = d_varint(&d);
  if (nobjs > d_left(&d) || nvalues > d_left(&d))
    d_error(&d, "bad counts");
  luaL_checkstack(L, (int)nvalues + 8, "too many values");
  d.f = d.inl;
  d.nf = 0;
  d.capf = LOOM_INLINE_FRAMES;
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
        loom_rawtvalue *arr = loom_rawarray(L, f->obj, &asize);
        int isint;
        lua_Integer iv;
        lua_Number xv;
        if (arr != NULL && asize >= f->narr) {
          while (f->i < f->narr && d_num(&d, &isint, &iv, &xv)) {
            loom_rawtvalue *slot = &arr[f->i++];
            if (isint) { slot->v.i = iv; slot->tt = LOOM_RAW_VNUMINT; }
            else { slot->v.n = xv; slot->tt = LOOM_RAW_VNUMFLT; }
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

