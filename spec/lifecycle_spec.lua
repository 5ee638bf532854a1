-- Shutdown, close, garbage collection, broken executors, program exit, and
-- stress runs.

local loom = require "loom"
local helpers = require "spec.support.helpers"

local PATIENCE = helpers.PATIENCE
local SHUTDOWN_MESSAGE = "cannot schedule new futures after shutdown"

describe("ex:shutdown", function()
  it("makes submit and map raise a shutdown error", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    ex:shutdown()
    local err = helpers.loom_error("shutdown", ex.submit, ex, function() end)
    helpers.assert_contains(err.message, SHUTDOWN_MESSAGE)
    helpers.assert_contains(tostring(err), "shutdown")
    helpers.assert_contains(tostring(err), SHUTDOWN_MESSAGE)
    err = helpers.loom_error("shutdown", ex.map, ex, function(x) return x end, { 1, 2 })
    helpers.assert_contains(err.message, SHUTDOWN_MESSAGE)
    err = helpers.loom_error("shutdown", ex.map, ex, { function(x) return x end, { 1, 2 } })
    helpers.assert_contains(err.message, SHUTDOWN_MESSAGE)
  end)

  it("is harmless when called twice, and after close", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local f = ex:submit(function() return 1 end)
    ex:shutdown()
    ex:shutdown()
    ex:shutdown { wait = false }
    ex:close()
    ex:shutdown { cancel_futures = true }
    assert.are.equal(1, f:result())
  end)

  it("waits for every queued and running task by default", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local ran = loom.channel()
    local futs = {}
    for i = 1, 10 do futs[i] = ex:submit(function(x) ran:push(x) return x end, i) end
    ex:shutdown()
    for _, f in ipairs(futs) do assert.is_true(f:done()) end
    assert.are.equal(10, #ran)
  end)

  it("cancels queued futures, but not the running one, with cancel_futures", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local running, gate = s:block(ex)
    local ran = loom.channel()
    local queued = {}
    for i = 1, 3 do queued[i] = ex:submit(function(x) ran:push(x) end, i) end
    ex:shutdown { wait = false, cancel_futures = true }
    for _, f in ipairs(queued) do
      assert.is_true(f:cancelled())
      helpers.loom_error("cancelled", f.result, f)
    end
    assert.is_false(running:cancelled())
    gate:close()
    assert.are.equal("released", running:result())
    ex:shutdown()
    assert.are.equal(0, #ran)
  end)

  it("returns at once with wait = false, and the queued work still runs", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local running, gate = s:block(ex)
    local later = {}
    for i = 1, 3 do later[i] = ex:submit(function(x) return x * 10 end, i) end
    ex:shutdown { wait = false }
    -- It did not wait: the first task is still blocked, the others queued.
    assert.is_false(running:done())
    assert.is_false(later[3]:done())
    helpers.loom_error("shutdown", ex.submit, ex, function() end)
    gate:close()
    assert.are.equal("released", running:result())
    for i = 1, 3 do assert.are.equal(i * 10, later[i]:result()) end
  end)
end)

describe("ex:close", function()
  it("shuts down and waits for the tasks", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local futs = {}
    for i = 1, 5 do futs[i] = ex:submit(function(x) return x end, i) end
    ex:close()
    for _, f in ipairs(futs) do assert.is_true(f:done()) end
    helpers.loom_error("shutdown", ex.submit, ex, function() end)
  end)

  it("runs when a <close> variable goes out of scope", function()
    local futs, closed_ex = {}
    do
      local ex <close> = loom.executor(1)
      closed_ex = ex
      for i = 1, 5 do futs[i] = ex:submit(function(x) return x end, i) end
    end
    for _, f in ipairs(futs) do assert.is_true(f:done()) end
    local err = helpers.loom_error("shutdown", closed_ex.submit, closed_ex, function() end)
    helpers.assert_contains(err.message, SHUTDOWN_MESSAGE)
  end)

  it("runs when a <close> scope is left by an error", function()
    local futs, closed_ex = {}
    local ok = pcall(function()
      local ex <close> = loom.executor(1)
      closed_ex = ex
      for i = 1, 5 do futs[i] = ex:submit(function(x) return x end, i) end
      error("leaving early")
    end)
    assert.is_false(ok)
    for _, f in ipairs(futs) do assert.is_true(f:done()) end
    helpers.loom_error("shutdown", closed_ex.submit, closed_ex, function() end)
  end)
end)

describe("garbage collection", function()
  it("of an executor waits for its submitted tasks", function()
    local ran = loom.channel()
    local function submit_and_forget()
      local ex = loom.executor(1)
      for i = 1, 20 do
        ex:submit(function(x)
          local sum = 0
          for k = 1, 200000 do sum = sum + k end -- some work, so not all is over at once
          ran:push(x + sum - sum)
        end, i)
      end
    end
    submit_and_forget()
    collectgarbage()
    collectgarbage()
    assert.are.equal(20, #ran)
  end)

  it("of a future does not disturb its executor", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    for i = 1, 100 do ex:submit(function(x) return x end, i) end
    collectgarbage()
    collectgarbage()
    assert.are.equal("still fine", ex:submit(function() return "still fine" end):result())
  end)
end)

describe("a broken executor", function()
  it("fails futures with a broken error carrying the init error", function()
    local s = helpers.scope(finally)
    local ex = s:executor {
      workers = 1,
      init = function() error("init exploded", 0) end,
    }
    local f = ex:submit(function() return 1 end)
    local err = helpers.loom_error("broken", f.result, f)
    helpers.assert_contains(err.message, "init exploded")
    helpers.assert_contains(tostring(err), "broken")
    local failure = f:exception()
    assert.is_table(failure)
    assert.are.equal("broken", failure.kind)
  end)

  it("fails the futures queued while init ran", function()
    local s = helpers.scope(finally)
    local gate = s:gate()
    local ex = s:executor {
      workers = 1,
      init = function(g)
        g:pop(PATIENCE)
        error("init failed late", 0)
      end,
      init_args = { gate },
    }
    local ran = loom.channel()
    local futs = {}
    for i = 1, 3 do futs[i] = ex:submit(function(x) ran:push(x) end, i) end
    gate:close()
    for _, f in ipairs(futs) do
      local err = helpers.loom_error("broken", f.result, f)
      helpers.assert_contains(err.message, "init failed late")
    end
    assert.are.equal(0, #ran)
  end)

  it("fails later submissions too", function()
    local s = helpers.scope(finally)
    local ex = s:executor {
      workers = 2,
      init = function() error("no database", 0) end,
    }
    local first = ex:submit(function() end)
    helpers.loom_error("broken", first.result, first)
    -- A later submit may raise at once, or return a future that fails.
    local ok, later = pcall(ex.submit, ex, function() return "never" end)
    local err
    if ok then
      err = helpers.loom_error("broken", later.result, later)
    else
      assert.is_table(later)
      assert.are.equal("broken", later.kind)
      err = later
    end
    helpers.assert_contains(err.message, "no database")
  end)

  it("shuts down without hanging", function()
    local ex = loom.executor { workers = 2, init = function() error("bad init") end }
    local f = ex:submit(function() return 1 end)
    ex:shutdown()
    assert.is_true(f:done())
    local err = helpers.loom_error("broken", f.result, f)
    helpers.assert_contains(err.message, "bad init")
  end)
end)

describe("program exit", function()
  it("runs the submitted work of an executor never shut down", function()
    local output = helpers.run_lua_ok [[
      local loom = require "loom"
      local ex = loom.executor(1)
      for i = 1, 20 do
        ex:submit(function(n) print("task line " .. n) end, i)
      end
      print("main chunk done")
    ]]
    helpers.assert_contains(output, "main chunk done")
    for i = 1, 20 do
      assert.is_truthy(output:find("task line " .. i .. "\n", 1, true),
        "missing output of task " .. i .. " in:\n" .. output)
    end
  end)

  it("is clean with executors in globals, locals and busy workers", function()
    local output = helpers.run_lua_ok [[
      local loom = require "loom"
      pool = loom.executor(2)
      local other = loom.executor(1)
      local ch = loom.channel()
      for i = 1, 50 do pool:submit(function(c, n) c:push(n) end, ch, i) end
      other:submit(function() print("other ran") end)
      local f = pool:submit(function() return "result" end)
      print(f:result())
    ]]
    helpers.assert_contains(output, "result")
    helpers.assert_contains(output, "other ran")
  end)
end)

describe("stress", function()
  it("runs 20,000 small tasks with correct results", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local futs = {}
    for i = 1, 20000 do futs[i] = ex:submit(function(x) return x * 2 end, i) end
    for i = 1, 20000 do
      local v = futs[i]:result()
      if v ~= i * 2 then assert.are.equal(i * 2, v) end
    end
  end)

  it("maps 20,000 calls in chunks", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local xs = {}
    for i = 1, 20000 do xs[i] = i end
    local count, sum = 0, 0
    for i, v in ex:map { function(x) return x + 1 end, xs, chunksize = 256 } do
      count = count + 1
      if v ~= i + 1 then assert.are.equal(i + 1, v) end
      sum = sum + v
    end
    assert.are.equal(20000, count)
    assert.are.equal(20000 * 20001 // 2 + 20000, sum)
  end)

  it("creates and closes 100 executors in a row", function()
    for i = 1, 100 do
      local ex <close> = loom.executor(i % 2 + 1)
      assert.are.equal(i, ex:submit(function(x) return x end, i):result())
    end
    for _ = 1, 100 do
      loom.executor(2):close()
    end
  end)
end)

describe("soak #soak", function()
  it("runs 500,000 tasks", function()
    local s = helpers.scope(finally)
    local ex = s:executor()
    local futs = {}
    for i = 1, 500000 do futs[i] = ex:submit(function(x) return x end, i) end
    for i = 1, 500000 do
      local v = futs[i]:result()
      if v ~= i then assert.are.equal(i, v) end
    end
  end)

  it("creates and collects 2,000 executors", function()
    local ran = loom.channel()
    for i = 1, 2000 do
      local ex = loom.executor(2)
      ex:submit(function(x) ran:push(x) end, i)
      if i % 100 == 0 then collectgarbage() end
    end
    collectgarbage()
    collectgarbage()
    assert.are.equal(2000, #ran)
  end)
end)
