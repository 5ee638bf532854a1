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
