-- loom.wait and loom.as_completed.

local loom = require "loom"
local helpers = require "spec.support.helpers"

local PATIENCE = helpers.PATIENCE

-- A future that has already finished with `value`.
local function finished(ex, value)
  local f = ex:submit(function(v) return v end, value)
  f:result()
  return f
end

describe("loom.wait", function()
  it("has return_when constants that are plain strings", function()
    assert.are.equal("first_completed", loom.FIRST_COMPLETED)
    assert.are.equal("first_exception", loom.FIRST_EXCEPTION)
    assert.are.equal("all_completed", loom.ALL_COMPLETED)
  end)

  it("returns done and not_done", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local a = finished(ex, "a")
    local blocked = s:block(ex)
    local done, not_done = loom.wait({ a, blocked }, { timeout = 0 })
    helpers.assert_same_set({ a }, done)
    helpers.assert_same_set({ blocked }, not_done)
  end)

  it("waits for all futures by default", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local futs = {}
    for i = 1, 10 do futs[i] = ex:submit(function(x) return x end, i) end
    local done, not_done = loom.wait(futs)
    helpers.assert_same_set(futs, done)
    assert.are.same({}, not_done)
    for _, f in ipairs(futs) do assert.is_true(f:done()) end
  end)

  it("waits for all futures with ALL_COMPLETED", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local a, b = ex:submit(function() return 1 end), ex:submit(function() error("x") end)
    local done, not_done = loom.wait({ a, b }, { return_when = loom.ALL_COMPLETED })
    helpers.assert_same_set({ a, b }, done)
    assert.are.same({}, not_done)
  end)

  it("removes duplicates", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local a, b = finished(ex, 1), finished(ex, 2)
    local blocked = s:block(ex)
    local done, not_done = loom.wait({ a, b, a, blocked, a, blocked }, { timeout = 0 })
    helpers.assert_same_set({ a, b }, done)
    helpers.assert_same_set({ blocked }, not_done)
  end)

  it("returns what is done when the timeout passes", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local blocked = s:block(ex)
    local done, not_done = loom.wait({ blocked }, { timeout = 0.01 })
    assert.are.same({}, done)
    helpers.assert_same_set({ blocked }, not_done)
  end)

  it("returns at the first completion with FIRST_COMPLETED", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local blocked = s:block(ex)
    local quick = ex:submit(function() return "quick" end)
    local done, not_done = loom.wait({ blocked, quick },
      { return_when = loom.FIRST_COMPLETED, timeout = PATIENCE })
    helpers.assert_same_set({ quick }, done)
    helpers.assert_same_set({ blocked }, not_done)
  end)

  it("returns at once with FIRST_COMPLETED when one is already done", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local a = finished(ex, 1)
    local blocked = s:block(ex)
    local done, not_done = loom.wait({ blocked, a }, { return_when = loom.FIRST_COMPLETED })
    helpers.assert_same_set({ a }, done)
    helpers.assert_same_set({ blocked }, not_done)
  end)

  it("waits for all with FIRST_EXCEPTION when none fails", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local link = s:gate()
    -- `first` finishes before `second` can; neither raises.
    local first = ex:submit(function() link:push(true) return 1 end)
    local second = ex:submit(function()
      local _, why = link:pop(PATIENCE)
      if why then error("never linked", 0) end
      return 2
    end)
    local done, not_done = loom.wait({ first, second },
      { return_when = loom.FIRST_EXCEPTION, timeout = PATIENCE })
    helpers.assert_same_set({ first, second }, done)
    assert.are.same({}, not_done)
    assert.are.equal(2, second:result())
  end)

  it("returns at the first failure with FIRST_EXCEPTION", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local blocked = s:block(ex)
    local failing = ex:submit(function() error("failed") end)
    local done, not_done = loom.wait({ blocked, failing },
      { return_when = loom.FIRST_EXCEPTION, timeout = PATIENCE })
    helpers.assert_same_set({ failing }, done)
    helpers.assert_same_set({ blocked }, not_done)
  end)

  it("returns at once with FIRST_EXCEPTION when one has already failed", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local failed = ex:submit(function() error("failed") end)
    failed:exception()
    local blocked = s:block(ex)
    local done, not_done = loom.wait({ failed, blocked }, { return_when = loom.FIRST_EXCEPTION })
    helpers.assert_same_set({ failed }, done)
    helpers.assert_same_set({ blocked }, not_done)
  end)

  it("counts a cancelled future as done at once", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local blocked = s:block(ex)
    local queued = ex:submit(function() end)
    assert.is_true(queued:cancel())
    local done, not_done = loom.wait({ queued }, { timeout = PATIENCE })
    helpers.assert_same_set({ queued }, done)
    assert.are.same({}, not_done)
    done, not_done = loom.wait({ queued, blocked },
      { return_when = loom.FIRST_COMPLETED, timeout = PATIENCE })
    helpers.assert_same_set({ queued }, done)
    helpers.assert_same_set({ blocked }, not_done)
  end)

  it("returns two empty sequences for no futures", function()
    local done, not_done = loom.wait({})
    assert.are.same({}, done)
    assert.are.same({}, not_done)
  end)
end)

describe("loom.as_completed", function()
  it("yields each future once", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local futs = {}
    for i = 1, 20 do futs[i] = ex:submit(function(x) return x end, i) end
    local seen, sum = {}, 0
    for f in loom.as_completed(futs) do
      assert.is_true(f:done())
      seen[#seen + 1] = f
      sum = sum + f:result()
    end
    helpers.assert_same_set(futs, seen)
    assert.are.equal(210, sum)
  end)

  it("yields a future given twice only once", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local a = ex:submit(function() return "a" end)
    local b = ex:submit(function() return "b" end)
    local seen = {}
    for f in loom.as_completed({ a, b, a, a, b }) do seen[#seen + 1] = f end
    helpers.assert_same_set({ a, b }, seen)
  end)

  it("yields the futures that are already done first", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local blocked, gate = s:block(ex)
    local a = finished(ex, "a")
    local seen = {}
    for f in loom.as_completed({ blocked, a }, PATIENCE) do
      seen[#seen + 1] = f
      if #seen == 1 then gate:close() end
    end
    assert.is_true(rawequal(a, seen[1]))
    assert.is_true(rawequal(blocked, seen[2]))
    assert.are.equal(2, #seen)
  end)

  it("yields futures in the order they complete", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local first, first_gate = s:block(ex)
    local second, second_gate = s:block(ex)
    -- Let `second` finish first, and `first` only once `second` was yielded.
    second_gate:close()
    local seen = {}
    for f in loom.as_completed({ first, second }, PATIENCE) do
      seen[#seen + 1] = f
      if #seen == 1 then first_gate:close() end
    end
    assert.is_true(rawequal(second, seen[1]))
    assert.is_true(rawequal(first, seen[2]))
  end)

  it("yields cancelled futures", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local blocked, gate = s:block(ex)
    local queued = ex:submit(function() end)
    assert.is_true(queued:cancel())
    local seen = {}
    for f in loom.as_completed({ blocked, queued }, PATIENCE) do
      seen[#seen + 1] = f
      if #seen == 1 then gate:close() end
    end
    assert.is_true(rawequal(queued, seen[1]))
    assert.is_true(seen[1]:cancelled())
    assert.is_true(rawequal(blocked, seen[2]))
  end)

  it("yields the done futures, then raises a timeout error naming how many are left", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local a, b = finished(ex, "a"), finished(ex, "b")
    local blocked1, blocked2 = s:block(ex), s:block(ex)
    local seen = {}
    local err = helpers.loom_error("timeout", function()
      for f in loom.as_completed({ blocked1, a, blocked2, b }, 0) do seen[#seen + 1] = f end
    end)
    helpers.assert_same_set({ a, b }, seen)
    helpers.assert_contains(err.message, "2 (of 4) futures unfinished")
    helpers.assert_contains(tostring(err), "2 (of 4) futures unfinished")
  end)

  it("counts duplicates once in the timeout message", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local a = finished(ex, "a")
    local blocked1, blocked2 = s:block(ex), s:block(ex)
    local err = helpers.loom_error("timeout", function()
      for _ in loom.as_completed({ blocked1, a, blocked1, blocked2, a, blocked2 }, 0.01) do end
    end)
    helpers.assert_contains(err.message, "2 (of 3) futures unfinished")
  end)

  it("yields nothing for no futures", function()
    local count = 0
    for _ in loom.as_completed({}) do count = count + 1 end
    assert.are.equal(0, count)
  end)
end)

describe("as_completed memory", function()
  -- CPython issue 14406 (test_free_reference_yielded_future)
  it("lets a future the loop body dropped be collected once yielded", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local seen = setmetatable({}, { __mode = "k" })
    local futs = {}
    for i = 1, 6 do
      futs[i] = ex:submit(function(x) return string.rep("x", 1000) .. x end, i)
      seen[futs[i]] = true
    end
    local input = futs
    futs = nil   -- luacheck: ignore 311
    local n = 0
    for f in loom.as_completed(input) do
      input = nil   -- luacheck: ignore 311 (only the iterator and the loop hold them now)
      assert.are.equal(1001, #f:result())
      n = n + 1
      f = nil   -- luacheck: ignore 311
      collectgarbage()
      collectgarbage()
      local left = 0
      for _ in pairs(seen) do left = left + 1 end
      -- the generic for itself holds the one just yielded (its control
      -- variable) until the next step; every earlier one must be gone
      assert.are.equal(6 - n + 1, left, "futures already yielded are still kept")
    end
    assert.are.equal(6, n)
    collectgarbage()
    collectgarbage()
    assert.is_nil(next(seen))
  end)
end)
