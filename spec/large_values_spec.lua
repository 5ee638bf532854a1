-- Large values (issue 11): a string of core._pins() bytes or more crosses
-- by reference. The message points at the sender's own string, which the
-- sender keeps anchored until every receiver has made its copy; when the
-- sender's state ends first, the bytes are copied out for the readers still
-- to come. These specs check that the bytes arrive exactly around the
-- threshold, in every direction, and whatever the sender does meanwhile.
--
-- No test sleeps or asserts a timing: tasks that must wait pop a gate
-- channel, and every wait has a generous bound (helpers.PATIENCE).

local loom = require "loom"
local core = require "loom.core"
local helpers = require "spec.support.helpers"

local PATIENCE = helpers.PATIENCE
local _, MIN = core._pins()

-- n bytes that depend on seed and on their position: every byte value
-- occurs (zeros included), and the 251-byte period is prime, so a copy
-- that lost, doubled or shifted a stretch compares unequal. A task gets
-- this function as an upvalue, so both sides build the same string.
local function build(n, seed)
  local bytes = {}
  for i = 1, 251 do bytes[i] = string.char((i * 37 + seed * 11) % 256) end
  local head = ("<%d:%d>"):format(seed, n)
  local body = table.concat(bytes)
  return (head .. body:rep(n // 251 + 1)):sub(1, n)
end

-- How many messages hold s by reference now (after a full sweep of this
-- state's pins).  Asked about one string, not about all: other specs may
-- hold pins of their own for as long as they keep a message (an executor's
-- init_args, a channel that nobody popped).
local function pinned(s)
  return (core._pins(s))
end

-- A one-worker executor whose worker is held by a task: what is submitted
-- next stays queued, unread, until release() lets the worker go on.
local function held_executor()
  local ex = loom.executor { workers = 1 }
  local started, gate = loom.channel(), loom.channel()
  local hold = ex:submit(function(s, g)
    s:push(true)
    return g:pop(60)
  end, started, gate)
  helpers.pop(started)
  return ex, function()
    gate:push(true)
    hold:result(PATIENCE)
  end
end

local SIZES = { MIN - 1, MIN, MIN + 1, 4 * MIN + 3 }

describe("large values", function()
  it("have a threshold that the specs can see", function()
    assert.is_true(math.type(MIN) == "integer" and MIN > 1000)
    assert.are.equal(0, pinned(("x"):rep(MIN)))
  end)

  it("arrive exactly as arguments, just below, at and above the threshold", function()
    local ex <close> = loom.executor { workers = 2 }
    for seed, n in ipairs(SIZES) do
      local s = build(n, seed)
      local ok, len = ex:submit(function(got, m, sd)
        return got == build(m, sd), #got
      end, s, n, seed):result(PATIENCE)
      assert.is_true(ok, "argument of " .. n .. " bytes")
      assert.are.equal(n, len)
    end
  end)

  it("arrive exactly as results, just below, at and above the threshold", function()
    local ex <close> = loom.executor { workers = 2 }
    for seed, n in ipairs(SIZES) do
      local got = ex:submit(function(m, sd) return build(m, sd) end, n, seed)
        :result(PATIENCE)
      assert.are.equal(n, #got)
      assert.is_true(got == build(n, seed), "result of " .. n .. " bytes")
    end
  end)

  it("cross by reference from the threshold on, and by value below it", function()
    local ex <close>, release = held_executor()
    local one, two, three = build(MIN - 1, 1), build(MIN, 2), build(MIN + 1, 3)
    local below = ex:submit(function(s) return #s end, one)
    assert.are.equal(0, pinned(one))
    local at = ex:submit(function(s) return #s end, two)
    assert.are.equal(1, pinned(two))
    local both = ex:submit(function(a, b) return #a + #b[1] end, three, { three })
    assert.are.equal(2, pinned(three))
    release()
    assert.are.equal(MIN - 1, below:result(PATIENCE))
    assert.are.equal(MIN, at:result(PATIENCE))
    assert.are.equal(2 * (MIN + 1), both:result(PATIENCE))
    -- each task freed its message once its arguments were copied
    assert.are.equal(0, pinned(two))
    assert.are.equal(0, pinned(three))
  end)

  it("arrive exactly through channels, both ways", function()
    local ex <close> = loom.executor { workers = 1 }
    local to, from = loom.channel(), loom.channel()
    local sent = {}
    for seed, n in ipairs(SIZES) do
      sent[seed] = build(n, seed)
      to:push(sent[seed])
      assert.are.equal(n >= MIN and 1 or 0, pinned(sent[seed]))
    end
    to:close()
    local f = ex:submit(function(input, output, sizes)
      local same = {}
      for seed, n in ipairs(sizes) do
        local s = input:pop(60)
        same[seed] = s == build(n, seed)
        output:push(build(n, seed + 100))
      end
      return same
    end, to, from, SIZES)
    local same = f:result(PATIENCE)
    for seed, n in ipairs(SIZES) do
      assert.is_true(same[seed], "pushed " .. n .. " bytes")
      local got = helpers.pop(from)
      assert.is_true(got == build(n, seed + 100), "popped " .. n .. " bytes")
      assert.are.equal(0, pinned(sent[seed]))
    end
  end)

  it("survive the sender dropping and collecting them before the task reads them", function()
    local ex <close>, release = held_executor()
    local n = 8 * MIN + 5
    local s = build(n, 7)
    local f = ex:submit(function(got, m) return got == build(m, 7) end, s, n)
    local ch = loom.channel()
    ch:push({ big = build(n, 8) })
    s = nil   -- luacheck: ignore (dropped on purpose)
    core._pins()   -- a sweep: what is still to be read must stay anchored
    collectgarbage()
    collectgarbage()
    -- make garbage of the same size, so that freed memory would be reused
    for i = 1, 8 do local _ = build(n, 50 + i) end
    collectgarbage()
    local g = ex:submit(function(c, m)
      return c:pop(60).big == build(m, 8)
    end, ch, n)
    release()
    assert.is_true(f:result(PATIENCE))
    assert.is_true(g:result(PATIENCE))
  end)

  it("survive the sender dropping and collecting them while the task that "
     .. "will read them runs", function()
    local ex <close> = loom.executor { workers = 1 }
    local started, gate, ch = loom.channel(), loom.channel(), loom.channel()
    local n = 8 * MIN + 9
    local f = ex:submit(function(st, g, c, m)
      st:push(true)
      g:pop(60)
      return c:pop(60) == build(m, 25)
    end, started, gate, ch, n)
    helpers.pop(started)   -- running, and reading nothing until the gate opens
    local s = build(n, 25)
    ch:push(s)
    s = nil   -- luacheck: ignore (dropped on purpose)
    core._pins()   -- a sweep: what is still to be read must stay anchored
    collectgarbage()
    collectgarbage()
    for i = 1, 8 do local _ = build(n, 60 + i) end
    collectgarbage()
    gate:push(true)
    assert.is_true(f:result(PATIENCE))
  end)

  it("arrive exactly when one string goes to many tasks at once", function()
    local ex <close> = loom.executor { workers = 4 }
    local n = 2 * MIN + 17
    local s = build(n, 9)
    local futs = {}
    for i = 1, 64 do
      futs[i] = ex:submit(function(got, again, m)
        return got == build(m, 9) and again[1] == got and again[2] == got
      end, s, { s, s }, n)
    end
    for i = 1, 64 do assert.is_true(futs[i]:result(PATIENCE), "task " .. i) end
    -- and through map, one call per element
    local list = {}
    for i = 1, 16 do list[i] = s end
    local count = 0
    for _, ok in ex:map { function(got) return got == s end, list, timeout = PATIENCE } do
      assert.is_true(ok)
      count = count + 1
    end
    assert.are.equal(16, count)
    assert.are.equal(0, pinned(s))
  end)

  it("arrive exactly nested in tables, as keys and values, both ways", function()
    local ex <close> = loom.executor { workers = 2 }
    local a, b, c = build(MIN, 11), build(3 * MIN, 12), build(MIN + 1, 13)
    local t = {
      deep = { { { { a } } } },
      [b] = "a big key",
      list = { a, "small", c, 42, b },
      meta = setmetatable({ x = c }, { __index = { y = a } }),
    }
    t.self = t
    local back = ex:submit(function(v)
      assert(v.self == v and rawget(v.meta, "y") == nil)
      return v, getmetatable(v.meta).__index.y == v.list[1]
    end, t):result(PATIENCE)
    assert.are.equal(back, back.self)
    assert.is_true(back.deep[1][1][1][1] == a)
    assert.are.equal("a big key", back[b])
    assert.are.same({ a, "small", c, 42, b }, back.list)
    assert.is_true(back.meta.x == c and back.meta.y == a)
    -- built in the worker, sent back in a table
    local made = ex:submit(function(m)
      return { [build(m, 14)] = build(m, 15), inner = { build(m + 1, 16) } }
    end, MIN):result(PATIENCE)
    assert.is_true(made[build(MIN, 14)] == build(MIN, 15))
    assert.is_true(made.inner[1] == build(MIN + 1, 16))
  end)

  it("arrive exactly as an error value, with the traceback", function()
    local ex <close> = loom.executor { workers = 1 }
    local f = ex:submit(function(m) error(build(m, 17), 0) end, MIN + 3)
    local ok, err = pcall(f.result, f, PATIENCE)
    assert.is_false(ok)
    assert.is_true(err == build(MIN + 3, 17))
  end)

  it("arrive exactly as map results and as init arguments", function()
    local big = build(2 * MIN, 18)
    local ex <close> = loom.executor {
      workers = 2,
      init = function(s) _G.loom_large_init = s end,   -- luacheck: ignore
      init_args = { big },
    }
    local got = ex:submit(function(m)
      return _G.loom_large_init == build(m, 18)   -- luacheck: ignore
    end, 2 * MIN):result(PATIENCE)
    assert.is_true(got)
    for _, chunksize in ipairs { 1, 3 } do
      local out = {}
      for i, s in ex:map { function(k) return build(MIN + k, k) end, { 1, 2, 3, 4, 5 },
                           chunksize = chunksize, timeout = PATIENCE } do
        out[i] = s
      end
      for k = 1, 5 do assert.is_true(out[k] == build(MIN + k, k)) end
    end
  end)

  it("can be read after the executor was shut down (the worker's state closed)", function()
    local ex = loom.executor { workers = 1 }
    local n = 4 * MIN + 1
    local f = ex:submit(function(m) return build(m, 19), { build(m, 20) } end, n)
    local g = ex:submit(function(m) return build(m, 21) end, n)
    ex:shutdown { wait = true }   -- joins the worker: its state is closed
    local s, t = f:result(PATIENCE)
    assert.is_true(s == build(n, 19))
    assert.is_true(t[1] == build(n, 20))
    assert.is_true(g:result(PATIENCE) == build(n, 21))
    -- a result can be read again
    assert.is_true((f:result(PATIENCE)) == build(n, 19))
  end)

  it("can be read while the worker's state is closing", function()
    for round = 1, 20 do
      local ex = loom.executor { workers = 1 }
      local f = ex:submit(function(m, r) return build(m, r) end, 2 * MIN, round)
      ex:shutdown { wait = false }   -- the worker closes its state when done
      assert.is_true(f:result(PATIENCE) == build(2 * MIN, round), "round " .. round)
      ex:close()
    end
  end)

  it("cross into a state that ends before its results are read", function()
    local s = build(3 * MIN, 22)
    -- core._roundtrip copies into a new state and back; that state is
    -- closed before the caller decodes what it sent back
    local back, nested = core._roundtrip(s, { s })
    assert.is_true(back == s and nested[1] == s)
    local made = core._call_in_new_state(function(m) return build(m, 23) end, 3 * MIN)
    assert.is_true(made == build(3 * MIN, 23))
    assert.are.equal(0, pinned(s))
  end)

  it("are let go once read, however many were held at once", function()
    local ex <close> = loom.executor { workers = 2 }
    local ch = loom.channel()
    local held = {}
    for i = 1, 40 do
      held[i] = build(MIN + i, i)
      ch:push(held[i])
    end
    for i = 1, 40 do assert.are.equal(1, pinned(held[i])) end
    local ok = ex:submit(function(c)
      for i = 1, 40 do
        if c:pop(60) ~= build(MIN + i, i) then return false end
      end
      return true
    end, ch):result(PATIENCE)
    assert.is_true(ok)
    for i = 1, 40 do assert.are.equal(0, pinned(held[i])) end
    -- and sent one after another, each read before the next goes
    for i = 1, 50 do
      local s = held[i % 40 + 1]
      assert.are.equal(#s, ex:submit(function(v) return #v end, s):result(PATIENCE))
    end
    for i = 1, 40 do assert.are.equal(0, pinned(held[i])) end
  end)

  it("large messages reuse the receiver's buffer: tables of numbers both ways, "
     .. "then smaller results from the same worker", function()
    local ex <close> = loom.executor { workers = 1 }
    local t = {}
    for i = 1, 200000 do t[i] = i % 3 == 0 and i * 0.5 or i end
    for round = 1, 3 do
      local back = ex:submit(function(v) return v end, t):result(PATIENCE)
      assert.are.equal(#t, #back)
      for i = 1, #t, 997 do assert.are.equal(t[i], back[i]) end
      assert.are.equal(math.type(t[#t]), math.type(back[#back]))
      -- a medium result and a small one, after the large message
      local medium = ex:submit(function(v, r)
        local out = {}
        for i = 1, 2000 do out[i] = v[i] + r end
        return out
      end, t, round):result(PATIENCE)
      assert.are.equal(2000, #medium)
      assert.are.equal(t[2000] + round, medium[2000])
      assert.are.equal(round, ex:submit(function(_, r) return r end, t, round)
        :result(PATIENCE))
    end
  end)

  it("go into loom.encode by value: the string stands alone", function()
    local s = build(2 * MIN, 24)
    local e = loom.encode({ s, s })
    assert.are.equal(0, pinned(s))
    assert.is_true(#e > 4 * MIN)
    local v = loom.decode(e)
    assert.is_true(v[1] == s and v[2] == s)
    -- decoded in a state that never saw the original
    local again = core._call_in_new_state(function(bytes)
      return require("loom.core").decode(bytes)[1]
    end, e)
    assert.is_true(again == s)
  end)

  it("cannot be forged: a reference in bytes given to loom.decode is refused", function()
    -- header (this format's version), nobjs = 0, one value: tag 16 (a
    -- string by reference), index 0
    local forged = "LOOM" .. loom.encode(nil):sub(5, 5) .. "\0\0\0\0\1\16\0"
    local ok, err = pcall(loom.decode, forged)
    assert.is_false(ok)
    assert.are.equal("transfer", err.kind)
    helpers.assert_contains(err.message, "bad string reference")
  end)
end)
