-- ex:map, positional and named forms.

local loom = require "loom"
local helpers = require "spec.support.helpers"

local PATIENCE = helpers.PATIENCE

-- Runs the loop over `ex:map(...)` and collects every iteration's values.
local function collect(iterator, state, control, closing)
  local rows = {}
  for i, a, b, c in iterator, state, control, closing do -- luacheck: ignore 512
    rows[#rows + 1] = { i, a, b, c }
  end
  return rows
end

describe("ex:map", function()
  it("yields the index and the result of each call, in input order", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local rows = {}
    for i, r in ex:map(function(x) return x * x end, { 1, 2, 3, 4, 5 }) do
      rows[#rows + 1] = { i, r }
    end
    assert.are.same({ { 1, 1 }, { 2, 4 }, { 3, 9 }, { 4, 16 }, { 5, 25 } }, rows)
  end)

  it("keeps input order when calls finish in another order", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local link = s:gate()
    -- Call 1 cannot finish before call 3 has run, so it finishes after call 2.
    local function step(x)
      if x == 1 then
        local _, why = link:pop(PATIENCE)
        if why then error("call 3 never ran", 0) end
      elseif x == 3 then
        link:push(true)
      end
      return x * 10
    end
    local order = {}
    for i, r in ex:map(step, { 1, 2, 3 }) do order[#order + 1] = { i, r } end
    assert.are.same({ { 1, 10 }, { 2, 20 }, { 3, 30 } }, order)
  end)

  it("yields every value a call returns, nils included", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local rows = collect(ex:map(function(x) return x, nil, -x end, { 1, 2 }))
    assert.are.same({ { 1, 1, nil, -1 }, { 2, 2, nil, -2 } }, rows)
  end)

  it("takes one argument from each sequence", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local rows = {}
    for i, v in ex:map(function(x, y) return x + y end, { 1, 2, 3 }, { 4, 5, 6 }) do
      rows[i] = v
    end
    assert.are.same({ 5, 7, 9 }, rows)
  end)

  it("stops at the shortest sequence and makes no other call", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local calls = loom.channel()
    local rows = {}
    for i, v in ex:map(function(x, y, z)
      calls:push(x)
      return x .. y .. z
    end, { "a", "b", "c", "d" }, { 1, 2 }, { "x", "y", "z" }) do
      rows[i] = v
    end
    assert.are.same({ "a1x", "b2y" }, rows)
    ex:shutdown()
    assert.are.equal(2, #calls)
  end)

  it("yields nothing for an empty sequence", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local count = 0
    for _ in ex:map(function(x) return x end, {}) do count = count + 1 end
    assert.are.equal(0, count)
  end)

  it("runs C functions of the standard libraries", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local rows = {}
    for i, v in ex:map(string.rep, { "a", "b" }, { 2, 3 }) do rows[i] = v end
    assert.are.same({ "aa", "bbb" }, rows)
  end)

  it("raises a call's error at its index, after the earlier results", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local seen = {}
    local ok, err = pcall(function()
      for i, v in ex:map(function(x)
        if x == 3 then error("three is bad") end
        return x * 10
      end, { 1, 2, 3, 4, 5 }) do
        seen[#seen + 1] = { i, v }
      end
    end)
    assert.is_false(ok)
    helpers.assert_contains(err, "three is bad")
    assert.are.same({ { 1, 10 }, { 2, 20 } }, seen)
  end)

  it("raises a copy of a table error value", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local err = helpers.error_of(function()
      for _ in ex:map(function() error({ code = 5 }) end, { 1 }) do end
    end)
    assert.are.same({ code = 5 }, err)
  end)

  it("queues every call before the first iteration", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local calls = loom.channel()
    -- Keep all four values, the closing value included, without looping.
    local iterator, state, control, closing = ex:map(function(x)
      calls:push(x)
      return x
    end, { 1, 2, 3, 4, 5 })
    local got = {}
    for _ = 1, 5 do got[#got + 1] = helpers.pop(calls) end
    table.sort(got)
    assert.are.same({ 1, 2, 3, 4, 5 }, got)
    -- The iteration still works afterwards.
    local rows = collect(iterator, state, control, closing)
    assert.are.equal(5, #rows)
  end)

  it("cancels the calls not started when the loop breaks", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local started = loom.channel()
    local gate = s:gate()
    for i in ex:map(function(x) -- luacheck: ignore 512 (the loop breaks at once)
      started:push(x)
      if x == 2 then gate:pop(PATIENCE) end
      return x
    end, { 1, 2, 3, 4, 5, 6 }) do
      assert.are.equal(1, i)
      -- Call 1 is done and call 2 runs (and waits): calls 3 to 6 are queued.
      assert.are.equal(1, helpers.pop(started))
      assert.are.equal(2, helpers.pop(started))
      break
    end
    gate:close()
    ex:shutdown() -- waits for what is left, and cancels nothing itself
    assert.are.same({}, helpers.drain(started))
  end)

  it("cancels the calls not started when a call raises", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local started = loom.channel()
    local gate = s:gate()
    local err = helpers.error_of(function()
      for _ in ex:map(function(x)
        started:push(x)
        if x == 1 then error("first call fails", 0) end
        if x == 2 then gate:pop(PATIENCE) end
        return x
      end, { 1, 2, 3, 4, 5, 6 }) do end
    end)
    assert.are.equal("first call fails", err)
    gate:close()
    ex:shutdown()
    -- Call 2 may have started before the loop ended; no later call ever did.
    local ran = helpers.drain(started)
    assert.are.equal(1, ran[1])
    assert.is_true(#ran <= 2)
    if ran[2] then assert.are.equal(2, ran[2]) end
  end)

  it("raises an argument error when fn is not a function", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    helpers.string_error(ex.map, ex, nil, { 1, 2 })
    helpers.string_error(ex.map, ex, 42, { 1, 2 })
  end)

  it("raises a transfer error for an element that cannot be transferred", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local err = helpers.loom_error("transfer", function()
      for _ in ex:map(function(x) return x end, { 1, io.stdout, 3 }) do end
    end)
    helpers.assert_contains(err.message, "userdata")
  end)
end)

describe("ex:map with named options", function()
  it("works like the positional form", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local rows = {}
    for i, v in ex:map { function(x, y) return x * y end, { 1, 2, 3 }, { 10, 20, 30 } } do
      rows[i] = v
    end
    assert.are.same({ 10, 40, 90 }, rows)
  end)

  it("gives the same results for every chunksize", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local xs, ys = {}, {}
    for n = 1, 100 do xs[n], ys[n] = n, -n end
    local function f(x, y) return x * 2, y, nil end
    local expected = collect(ex:map(f, xs, ys))
    assert.are.equal(100, #expected)
    for _, chunksize in ipairs { 1, 3, 7, 99, 100, 256 } do
      local rows = collect(ex:map { f, xs, ys, chunksize = chunksize })
      assert.are.same(expected, rows, "chunksize " .. chunksize)
    end
  end)

  -- Steps the iterator by hand, so that every result count is seen.
  local function packed_rows(iterator, state, control, closing)
    local rows = {}
    while true do
      local r = table.pack(iterator(state, control))
      if r[1] == nil then break end
      control = r[1]
      rows[#rows + 1] = r
    end
    if closing then getmetatable(closing).__close(closing) end
    return rows
  end

  it("keeps every call's result count in a chunk: none, one nil, one, several", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local function f(x)
      if x % 4 == 0 then return end
      if x % 4 == 1 then return nil end
      if x % 4 == 2 then return x end
      return x, nil, { x }, "s" .. x
    end
    local xs = {}
    for n = 1, 50 do xs[n] = n end
    local expected = packed_rows(ex:map(f, xs))
    assert.are.equal(50, #expected)
    assert.are.equal(1, expected[4].n)       -- i only
    assert.are.equal(2, expected[5].n)       -- i, nil
    assert.are.equal(5, expected[7].n)       -- i, x, nil, {x}, "s"..x
    for _, chunksize in ipairs { 2, 3, 8, 50, 64 } do
      assert.are.same(expected, packed_rows(ex:map { f, xs, chunksize = chunksize }),
                      "chunksize " .. chunksize)
    end
  end)

  it("raises a table error value and error(nil) at their index with chunks", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    for _, case in ipairs { { 1, { code = 7 } }, { 4, nil }, { 6, { code = 8 } } } do
      local at, value = case[1], case[2]
      local seen = {}
      local ok, err = pcall(function()
        for _, v in ex:map { function(x)
          if x == at then error(value, 0) end
          return x * 10
        end, { 1, 2, 3, 4, 5, 6 }, chunksize = 3 } do
          seen[#seen + 1] = v
        end
      end)
      assert.is_false(ok)
      assert.are.same(value, err)
      assert.are.equal(at - 1, #seen)
      for i = 1, at - 1 do assert.are.equal(i * 10, seen[i]) end
    end
  end)

  it("raises a call's error at its index with chunks, after the earlier results", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local seen = {}
    local err = helpers.error_of(function()
      for i in ex:map { function(x)
        if x == 5 then error("five", 0) end
        return x
      end, { 1, 2, 3, 4, 5, 6, 7, 8, 9 }, chunksize = 3 } do
        seen[#seen + 1] = i
      end
    end)
    assert.are.equal("five", err)
    assert.are.same({ 1, 2, 3, 4 }, seen)
  end)

  it("accepts a timeout that is not reached", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local rows = {}
    for i, v in ex:map { function(x) return x + 1 end, { 1, 2, 3 }, timeout = PATIENCE } do
      rows[i] = v
    end
    assert.are.same({ 2, 3, 4 }, rows)
  end)

  it("raises a timeout error, and the calls not started never run", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local _, gate = s:block(ex)
    local ran = loom.channel()
    local err = helpers.loom_error("timeout", function()
      for _ in ex:map { function(x) ran:push(x) end, { 1, 2, 3 }, timeout = 0 } do end
    end)
    helpers.assert_contains(tostring(err), "timeout")
    gate:close()
    ex:shutdown()
    assert.are.equal(0, #ran)
  end)
end)

-- What the loop yields, as rows {i, values...} and the error it raised
-- (nil when it ended normally), for ex:map{fn, seqs..., chunksize = k}.
local function outcome(ex, fn, seqs, chunksize)
  local opts = { fn, chunksize = chunksize }
  for s = 1, #seqs do opts[s + 1] = seqs[s] end
  local rows = {}
  local ok, err = pcall(function()
    for i, a, b in ex:map(opts) do rows[#rows + 1] = { i, a, b } end
  end)
  return rows, (not ok) and err or nil
end

describe("ex:map limits", function()
  it("takes any number of sequences (300 here)", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local seqs = {}
    for k = 1, 300 do seqs[k] = { k, 2 * k } end
    local function sum(...)
      local t = 0
      for k = 1, select("#", ...) do t = t + select(k, ...) end
      return t
    end
    for _, chunksize in ipairs { 1, 2 } do
      local opts = { sum, chunksize = chunksize, table.unpack(seqs) }
      local got = {}
      for i, v in ex:map(opts) do got[i] = v end
      assert.are.same({ 300 * 301 / 2, 300 * 301 }, got)
    end
  end)

  it("takes any chunksize: 120,000 calls in one chunk", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local seq = {}
    for k = 1, 150000 do seq[k] = k end
    local n = 0
    for i, v in ex:map { function(x) return x + 1 end, seq, chunksize = 120000 } do
      assert.are.equal(i + 1, v)
      n = n + 1
    end
    assert.are.equal(150000, n)
  end)

  it("takes a chunk whose calls pass over a million values", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local opts = { function(...) return select("#", ...) end, chunksize = 60000 }
    for k = 1, 20 do
      local seq = {}
      for i = 1, 60000 do seq[i] = i end
      opts[k + 1] = seq
    end
    local n = 0
    for i, v in ex:map(opts) do
      assert.are.equal(20, v, "call " .. i)
      n = n + 1
    end
    assert.are.equal(60000, n)
  end)

end)

describe("ex:map yields what chunksize = 1 yields, for every chunksize", function()
  local CHUNKSIZES = { 1, 2, 3, 4, 10 }

  it("when a call's result cannot be copied: the earlier results, then its error", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local function f(x)
      if x == 3 then return io.stdout end
      return x * 10
    end
    local seq = { 1, 2, 3, 4, 5 }
    local rows1, err1 = outcome(ex, f, { seq }, 1)
    assert.are.same({ { 1, 10 }, { 2, 20 } }, rows1)
    assert.are.equal("transfer", err1.kind)
    helpers.assert_contains(err1.message, "result #1")
    for _, k in ipairs(CHUNKSIZES) do
      local rows, err = outcome(ex, f, { seq }, k)
      assert.are.same(rows1, rows, "chunksize " .. k)
      assert.are.same({ kind = err1.kind, message = err1.message },
                      { kind = err.kind, message = err.message }, "chunksize " .. k)
      assert.are.equal(getmetatable(err1), getmetatable(err), "chunksize " .. k)
    end
  end)

  it("when a later value of a call with several results cannot be copied", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local function f(x)
      if x == 2 then return 1, io.stdout end
      return x, -x
    end
    local rows1, err1 = outcome(ex, f, { { 1, 2, 3 } }, 1)
    for _, k in ipairs(CHUNKSIZES) do
      local rows, err = outcome(ex, f, { { 1, 2, 3 } }, k)
      assert.are.same(rows1, rows, "chunksize " .. k)
      assert.are.equal(err1.message, err.message, "chunksize " .. k)
      helpers.assert_contains(err.message, "result #2")
    end
  end)

  it("when a call raises a function: the same function value crosses", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local function f(x)
      if x == 2 then error(function() return "from the error function" end) end
      return x
    end
    for _, k in ipairs(CHUNKSIZES) do
      local rows, err = outcome(ex, f, { { 1, 2, 3 } }, k)
      assert.are.same({ { 1, 1 } }, rows, "chunksize " .. k)
      assert.is_function(err, "chunksize " .. k)
      assert.are.equal("from the error function", err())
    end
  end)

  it("when a call raises a value that cannot be copied: its text", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local function f(x)
      if x == 2 then error(coroutine.create(print)) end
      return x
    end
    local _, err1 = outcome(ex, f, { { 1, 2 } }, 1)
    assert.is_string(err1)
    helpers.assert_contains(err1, "thread")
    for _, k in ipairs(CHUNKSIZES) do
      local _, err = outcome(ex, f, { { 1, 2 } }, k)
      assert.is_string(err, "chunksize " .. k)
      helpers.assert_contains(err, "thread")
    end
  end)

  it("when a call raises a table whose __tostring fails: a copy of the table", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local function f(x)
      if x == 2 then
        error(setmetatable({ code = 7 }, { __tostring = function(e) return e.msg end }))
      end
      return x
    end
    for _, k in ipairs(CHUNKSIZES) do
      local rows, err = outcome(ex, f, { { 1, 2, 3 } }, k)
      assert.are.same({ { 1, 1 } }, rows, "chunksize " .. k)
      assert.is_table(err, "chunksize " .. k)
      assert.are.equal(7, err.code)
    end
  end)
end)

describe("ex:map memory", function()
  it("does not keep the futures whose results the loop has taken", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    for _, chunksize in ipairs { 1, 3 } do
      local seen = setmetatable({}, { __mode = "k" })
      local count = 0
      local step, state, control, closer = ex:map { function(x) return x end, { 1, 2, 3, 4, 5, 6 },
                                                    chunksize = chunksize }
      -- the futures the iterator holds: its second upvalue
      local _, futures = debug.getupvalue(step, 2)
      for _, f in pairs(futures) do seen[f] = true; count = count + 1 end
      assert.is_true(count > 0)
      for _ in step, state, control, closer do end
      futures = nil   -- luacheck: ignore 311
      collectgarbage()
      collectgarbage()
      assert.is_nil(next(seen), "chunksize " .. chunksize .. ": a yielded future was kept")
    end
  end)
end)
