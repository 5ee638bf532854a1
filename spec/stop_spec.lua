-- Stopping running work: f:cancel{running = true},
-- shutdown{cancel_running = true}, task_timeout and memory_limit.
-- Every task that must be running when it is stopped first pushes to a
-- "started" channel, which the test pops.

local loom = require "loom"
local helpers = require "spec.support.helpers"

local PATIENCE = helpers.PATIENCE

-- Submits fn(started, ...) and returns its future once it has started.
local function running(ex, fn, ...)
  local started = loom.channel()
  local f = ex:submit(fn, started, ...)
  helpers.pop(started)
  return f
end

-- A task that says it started, then never ends by itself.
local function endless(started)
  started:push(true)
  while true do end
end

-- Asserts that f is cancelled and done, and that result and exception
-- raise a cancelled error.
local function assert_cancelled(f)
  assert.is_true(f:cancelled())
  assert.is_true(f:done())
  assert.is_false(f:running())
  helpers.loom_error("cancelled", f.result, f, PATIENCE)
  helpers.loom_error("cancelled", f.exception, f, PATIENCE)
end

-- Asserts that the executor's only worker still serves tasks, with no
-- hook left on its state.
local function assert_serves(ex)
  local f = ex:submit(function(x) return x + 1, debug.gethook() end, 41)
  local value, hook = f:result(PATIENCE)
  assert.are.equal(42, value)
  assert.is_nil(hook)
end

describe("f:cancel{running = true}", function()
  it("stops a task in an endless loop", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local f = running(ex, endless)
    assert.is_true(f:cancel { running = true })
    assert_cancelled(f)
    assert_serves(ex)
  end)

  it("stops a task that catches errors with pcall and goes on", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local f = running(ex, function(started)
      started:push(true)
      while true do
        pcall(function() while true do end end)
        xpcall(function() while true do end end, function(e) return e end)
      end
    end)
    assert.is_true(f:cancel { running = true })
    assert_cancelled(f)
    assert_serves(ex)
  end)

  it("stops a task running inside coroutines", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local f = running(ex, function(started)
      local inner = coroutine.wrap(function()
        started:push(true)
        while true do end
      end)
      local outer = coroutine.create(function() inner() end)
      coroutine.resume(outer)
      while true do end   -- if the resume returned, this one is stopped
    end)
    assert.is_true(f:cancel { running = true })
    assert_cancelled(f)
    assert_serves(ex)
  end)

  it("wakes a task blocked in ch:pop at once", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local never = s:channel()
    local f = running(ex, function(started, ch)
      started:push(true)
      return ch:pop()
    end, never)
    assert.is_true(f:cancel { running = true })
    assert_cancelled(f)
    assert_serves(ex)   -- the worker is free again, the channel still open
  end)

  it("wakes a task blocked in ch:push on a full channel", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local full = s:channel(1)
    full:push("x")
    local f = running(ex, function(started, ch)
      started:push(true)
      ch:push("y")
    end, full)
    assert.is_true(f:cancel { running = true })
    assert_cancelled(f)
    assert_serves(ex)
    assert.are.equal(1, #full)
  end)

  it("wakes a task waiting on another future (result, wait, as_completed)", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    for _, how in ipairs { "result", "wait", "as_completed" } do
      local gate = s:gate()
      local f = running(ex, function(started, g, w)
        -- futures stay in their state: the task makes its own
        local inner = require("loom").executor(1)
        local h = inner:submit(function(ch) return ch:pop() end, g)
        started:push(true)
        if w == "result" then return h:result()
        elseif w == "wait" then return require("loom").wait { h }
        else for _ in require("loom").as_completed { h } do end end
      end, gate, how)
      assert.is_true(f:cancel { running = true })
      assert_cancelled(f)
      gate:close()   -- the inner task ends, and its executor with it
      assert_serves(ex)
    end
  end)

  it("runs the task's __close handlers as it unwinds", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local report = s:channel()
    local f = running(ex, function(started, rep)
      local guard <close> = setmetatable({}, { __close = function(_, err) -- luacheck: ignore 211
        local sum = 0
        for k = 1, 10000 do sum = sum + k end   -- Lua code, not cut short
        rep:push(("closed %d %s"):format(sum, type(err) == "table" and err.kind or tostring(err)))
      end })
      started:push(true)
      while true do end
    end, report)
    assert.is_true(f:cancel { running = true })
    assert.are.equal("closed 50005000 cancelled", helpers.pop(report))
    assert_cancelled(f)
    assert_serves(ex)
  end)

  it("is seen as done by callbacks, wait and as_completed", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local f = running(ex, endless)
    local seen
    f:add_done_callback(function(g) seen = g:cancelled() end)
    assert.is_true(f:cancel { running = true })
    local done, not_done = loom.wait({ f }, { timeout = PATIENCE })
    assert.are.equal(1, #done)
    assert.are.equal(0, #not_done)
    assert.is_true(seen)
    for g in loom.as_completed({ f }, PATIENCE) do assert.are.equal(f, g) end
  end)

  it("leaves the worker serving 1,000 further tasks", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local f = running(ex, endless)
    assert.is_true(f:cancel { running = true })
    local futs = {}
    for i = 1, 1000 do futs[i] = ex:submit(function(x) return x * 2 end, i) end
    for i = 1, 1000 do assert.are.equal(i * 2, futs[i]:result(PATIENCE)) end
  end)

  it("does not disturb a later task through a coroutine the stopped one left", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    -- a coroutine made while the task unwinds copies the stop's hook
    local f = running(ex, function(started)
      local guard <close> = setmetatable({}, { __close = function() -- luacheck: ignore 211
        CO = coroutine.create(function() -- luacheck: ignore 111
          local n = 0
          for k = 1, 100 do n = n + k end
          coroutine.yield(n)
          return "end"
        end)
      end })
      started:push(true)
      while true do end
    end)
    assert.is_true(f:cancel { running = true })
    assert_cancelled(f)
    local g = ex:submit(function()
      local ok1, n = coroutine.resume(CO) -- luacheck: ignore 113
      local ok2, last = coroutine.resume(CO) -- luacheck: ignore 113
      return ok1, n, ok2, last
    end)
    assert.are.same({ true, 5050, true, "end" }, { g:result(PATIENCE) })
  end)

  it("keeps Python's meaning without running = true", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local f, gate = s:block(ex)
    assert.is_false(f:cancel())
    assert.is_false(f:cancel { running = false })
    assert.is_true(f:running())
    gate:close()
    assert.are.equal("released", f:result(PATIENCE))
    assert.is_false(f:cancel { running = true })   -- finished
    local _, gate2 = s:block(ex)
    local queued = ex:submit(function() return 1 end)
    assert.is_true(queued:cancel { running = true })   -- pending
    gate2:close()
  end)

  it("refuses options that are not a table", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local f = ex:submit(function() return 1 end)
    helpers.string_error(f.cancel, f, "running")
  end)
end)

describe("ex:shutdown{cancel_running = true}", function()
  it("stops running tasks, cancels queued ones with cancel_futures, and joins", function()
    local ex = loom.executor(2)
    local a = running(ex, endless)
    local b = running(ex, function(started)
      started:push(true)
      while true do pcall(function() while true do end end) end
    end)
    local queued = ex:submit(function() return "never" end)
    ex:shutdown { cancel_futures = true, cancel_running = true }
    assert_cancelled(a)
    assert_cancelled(b)
    assert_cancelled(queued)
    helpers.loom_error("shutdown", ex.submit, ex, print)
  end)
end)

describe("task_timeout", function()
  it("fails an endless task with a timeout naming the limit; short tasks succeed", function()
    local s = helpers.scope(finally)
    local ex = s:executor { workers = 2, task_timeout = 0.2 }
    local forever = ex:submit(function() while true do end end)
    local short = {}
    for i = 1, 20 do short[i] = ex:submit(function(x) return x end, i) end
    local err = helpers.loom_error("timeout", forever.result, forever, PATIENCE)
    helpers.assert_contains(err.message, "task_timeout = 0.2 s")
    assert.is_false(forever:cancelled())
    for i = 1, 20 do assert.are.equal(i, short[i]:result(PATIENCE)) end
    -- the worker that ran the endless task serves again
    local after = {}
    for i = 1, 10 do after[i] = ex:submit(function(x) return -x end, i) end
    for i = 1, 10 do assert.are.equal(-i, after[i]:result(PATIENCE)) end
  end)

  it("stops a task that catches errors with pcall", function()
    local s = helpers.scope(finally)
    local ex = s:executor { workers = 1, task_timeout = 0.2 }
    local f = ex:submit(function()
      while true do pcall(function() while true do end end) end
    end)
    helpers.loom_error("timeout", f.result, f, PATIENCE)
    assert_serves(ex)
  end)

  it("must be a positive number", function()
    helpers.string_error(loom.executor, { workers = 1, task_timeout = 0 })
    helpers.string_error(loom.executor, { workers = 1, task_timeout = "1" })
  end)
end)

describe("memory_limit", function()
  it("fails a task that builds an endless table, then the worker goes on", function()
    local s = helpers.scope(finally)
    local ex = s:executor { workers = 1, memory_limit = 32 * 1024 * 1024 }
    local f = ex:submit(function()
      local t = {}
      for i = 1, math.huge do t[i] = { i } end
      return #t
    end)
    local err = helpers.error_of(f.result, f, PATIENCE)
    helpers.assert_contains(tostring(err), "not enough memory")
    assert.are.equal(42, ex:submit(function() return 42 end):result(PATIENCE))
    -- and again: the garbage of the first one was collected
    local g = ex:submit(function()
      local t = {}
      for i = 1, 100000 do t[i] = { i } end
      return #t
    end)
    assert.are.equal(100000, g:result(PATIENCE))
  end)

  it("holds for init too", function()
    local ex = loom.executor {
      workers = 1, memory_limit = 8 * 1024 * 1024,
      init = function() local t = {} for i = 1, math.huge do t[i] = { i } end return t end,
    }
    local f = ex:submit(function() return 1 end)
    local err = helpers.loom_error("broken", f.result, f, PATIENCE)
    helpers.assert_contains(err.message, "not enough memory")
    ex:shutdown()
  end)

  it("too small to start a worker makes the executor broken, saying so", function()
    local ex = loom.executor { workers = 1, memory_limit = 1000 }
    local f = ex:submit(function() return 1 end)
    local err = helpers.loom_error("broken", f.result, f, PATIENCE)
    helpers.assert_contains(err.message, "memory_limit (1000 bytes) is too small")
    ex:shutdown()
  end)

  it("must be a positive integer", function()
    helpers.string_error(loom.executor, { workers = 1, memory_limit = 0 })
    helpers.string_error(loom.executor, { workers = 1, memory_limit = 1.5 })
  end)
end)
