/*
** lua_channel.c -- the binding of channels: push, pop, close, #.
**
** A channel handle holds one reference to a loom_chan; a channel crossing
** to another state becomes a new handle there on the same channel.  The
** module record keeps a reference to every channel this state made, so
** that when the state ends it can close them (waking tasks blocked on
** them) and drop what is left in them.
*/
#include <string.h>

#include "loom.h"

static loom_chan *checkchannel(lua_State *L, int idx) {
  loom_chandle *h = (loom_chandle *)loom_checkud(L, idx, LOOM_UV_CHANNEL,
                                                 LOOM_CHANNEL);
  if (h->c == NULL) luaL_argerror(L, idx, "channel is not initialised");
  return h->c;
}

/* Drop this state's references to channels nobody else holds. */
static void prune_chans(loom_mstate *ms) {
  int i, j = 0;
  for (i = 0; i < ms->nchans; i++) {
    loom_chan *c = ms->chans[i];
    if (atomic_load(&c->refs) == 1) loom_chan_decref(c);  /* only ours */
    else ms->chans[j++] = c;
  }
  ms->nchans = j;
  ms->prunechans = j * 2 + 16;
}

void loom_close_channels(loom_mstate *ms) {
  int i;
  for (i = 0; i < ms->nchans; i++) loom_chan_close(ms->chans[i]);
}

static int channel_new(lua_State *L) {
  loom_mstate *ms = loom_getmstate(L);
  lua_Integer cap = luaL_optinteger(L, 1, 0);
  loom_chandle *h;
  luaL_argcheck(L, cap >= 0, 1, "capacity must be >= 0");
  h = (loom_chandle *)lua_newuserdatauv(L, sizeof *h, 0);
  h->c = NULL;
  luaL_setmetatable(L, LOOM_CHANNEL);
  if (ms->nchans >= ms->prunechans) prune_chans(ms);
  if (ms->nchans == ms->capchans)
    if (!loom_grow((void **)&ms->chans, &ms->capchans, sizeof(loom_chan *)))
      return luaL_error(L, "not enough memory");
  h->c = loom_chan_new((size_t)cap);
  if (h->c == NULL) return luaL_error(L, "not enough memory");
  loom_chan_incref(h->c);          /* the module record's reference */
  ms->chans[ms->nchans++] = h->c;
  if (ms->closed) loom_chan_close(h->c);
  return 1;
}

static int channel_gc(lua_State *L) {
  loom_chandle *h = (loom_chandle *)luaL_checkudata(L, 1, LOOM_CHANNEL);
  if (h->c) loom_chan_decref(h->c);
  h->c = NULL;
  return 0;
}

static const struct timespec past = { 0, 0 };   /* do not wait */

static int channel_push(lua_State *L) {
  loom_chan *c = checkchannel(L, 1);
  loom_msg *m, **box;
  loom_push_result r;
  luaL_argcheck(L, !lua_isnoneornil(L, 2), 2, "cannot push nil");
  lua_settop(L, 2);
  box = loom_msgbox(L);   /* owns the message while Lua may run */
  *box = m = loom_encode(L, 2, 1, LOOM_AT_VALUE, 0, LOOM_REFS_THREADS);
  r = loom_chan_push(c, m, &past, NULL);
  if (r == LOOM_PUSH_FULL) {   /* wait in slices, as every blocking call */
    loom_block b;
    struct timespec ts;
    loom_block_begin(L, &b, -1);
    for (;;) {
      loom_block_slice(&b, &ts);
      if ((r = loom_chan_push(c, m, &ts, b.in)) != LOOM_PUSH_FULL) break;
      if (loom_block_interrupted(&b)) loom_block_poke(&b);
    }
  }
  if (r == LOOM_PUSH_OK) {
    *box = NULL;   /* the channel has it */
    return 0;
  }
  if (r == LOOM_PUSH_NOMEM) return luaL_error(L, "not enough memory");
  return loom_raise(L, "closed", "the channel is closed");
}

static int channel_pop(lua_State *L) {
  loom_chan *c = checkchannel(L, 1);
  double t = loom_opttimeout(L, 2);
  loom_msg *m = NULL, **box;
  loom_pop_result r;
  /* decode can raise: the message is owned by a userdata meanwhile,
  ** made before the message leaves the channel */
  box = loom_msgbox(L);
  r = loom_chan_pop(c, &past, NULL, &m);
  if (r == LOOM_POP_EMPTY && t != 0) {   /* wait in slices */
    loom_block b;
    struct timespec ts;
    loom_block_begin(L, &b, t);
    for (;;) {
      int more = loom_block_slice(&b, &ts);
      r = loom_chan_pop(c, &ts, b.in, &m);
      if (r != LOOM_POP_EMPTY || !more) break;
      if (loom_block_interrupted(&b)) loom_block_poke(&b);
    }
  }
  if (r != LOOM_POP_OK) {
    lua_pushnil(L);
    lua_pushstring(L, r == LOOM_POP_CLOSED ? "closed" : "timeout");
    return 2;
  }
  *box = m;
  loom_decode(L, m->data, m->len, 1, m);
  loom_msg_free(m);
  *box = NULL;
  return 1;
}

static int channel_close(lua_State *L) {
  loom_chan_close(checkchannel(L, 1));
  return 0;
}

static int channel_len(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)loom_chan_count(checkchannel(L, 1)));
  return 1;
}

static int channel_tostring(lua_State *L) {
  loom_chandle *h = (loom_chandle *)luaL_checkudata(L, 1, LOOM_CHANNEL);
  loom_chan *c = h->c;
  if (c == NULL) {
    lua_pushliteral(L, "loom.Channel (closed)");
    return 1;
  }
  lua_pushfstring(L, "loom.Channel (%d waiting): %p",
                  (int)loom_chan_count(c), (void *)c);
  return 1;
}

/* ------------------------------------------------------------- opening */

static const luaL_Reg channel_methods[] = {
  {"push", channel_push},
  {"pop", channel_pop},
  {"close", channel_close},
  {NULL, NULL}
};

void loom_open_channel(lua_State *L, int ms, int lib) {
  loom_newclass(L, LOOM_CHANNEL, channel_methods, channel_gc,
                channel_tostring, ms);
  luaL_getmetatable(L, LOOM_CHANNEL);
  lua_pushvalue(L, ms);
  lua_pushcclosure(L, channel_len, 1);
  lua_setfield(L, -2, "__len");
  lua_setiuservalue(L, ms, LOOM_UV_CHANNEL);
  lua_pushvalue(L, ms);
  lua_pushcclosure(L, channel_new, 1);
  lua_setfield(L, lib, "channel");
}
