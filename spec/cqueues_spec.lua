-- loom in a cqueues controller, driven by the real loop: loom.cqueues'
-- await, and the polling protocol of futures and completion queues
-- (cqueues.poll). Pending without lua-cqueues.
--
-- Every cq:loop() runs under a timeout of PATIENCE seconds, so a bug that
-- would leave it waiting fails the test instead of hanging it.

local loom = require "loom"
local helpers = require "spec.support.helpers"

local PATIENCE = helpers.PATIENCE
local have_cqueues, cqueues = pcall(require, "cqueues")

if not have_cqueues then
  describe("loom.cqueues", function()
    it("needs cqueues", function()
      pending("cqueues is not installed (apt-get install lua-cqueues; make test installs it)")
    end)
  end)
  return
end

local lcq = require "loom.cqueues"
local condition = require "cqueues.condition"

-- Runs cq until it has no coroutine left; fails on an error in one of
-- them, or if it still runs after PATIENCE seconds.
local function run_loop(cq)
  local deadline = cqueues.monotime() + PATIENCE
  while not cq:empty() do
    assert(cqueues.monotime() < deadline, "the controller still runs after " .. PATIENCE .. " s")
    local ok, err = cq:step(1)
    assert(ok, err)
  end
end

describe("loom.cqueues", function()
  it("awaits 1,000 futures from two executors in one controller and gets every result", function()
    local s = helpers.scope(finally)
    local ex1, ex2 = s:executor(2), s:executor(1)
    local cq = cqueues.new()
    local got, n = {}, 1000
    for i = 1, n do
      local ex = i % 2 == 0 and ex1 or ex2
      cq:wrap(function()
        local a, b = lcq.await(ex:submit(function(x) return x * 2, "ok" end, i))
        got[i] = { a, b }
      end)
    end
    run_loop(cq)
    for i = 1, n do assert.are.same({ i * 2, "ok" }, got[i]) end
  end)

  it("raises the task's error through await", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local cq = cqueues.new()
    local results = {}
    cq:wrap(function()
      results.string = { pcall(lcq.await, ex:submit(error, "boom")) }
      local ok, err = pcall(lcq.await, ex:submit(function() error({ code = 7 }) end))
      results.table = { ok, type(err) == "table" and err.code }
    end)
    run_loop(cq)
    assert.are.same({ false, "boom" }, results.string)
    assert.are.same({ false, 7 }, results.table)
  end)

  it("raises 'cancelled' in a coroutine whose future is cancelled while it awaits", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local _, gate = s:block(ex)
    local queued = ex:submit(function() return "ran" end)
    local cq = cqueues.new()
    -- the controller picks the order; the second waits for the first
    local entered, waiting, kind = condition.new(), false, nil
    cq:wrap(function()
      waiting = true
      entered:signal()
      local ok, e = pcall(lcq.await, queued)
      kind = not ok and e.kind
    end)
    cq:wrap(function()
      if not waiting then entered:wait() end
      assert(queued:cancel())   -- the first is suspended in await now
    end)
    run_loop(cq)
    assert.are.equal("cancelled", kind)
    gate:close()
  end)

  it("lets the loop run other coroutines while it awaits", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local f, gate = s:block(ex)
    local cq = cqueues.new()
    local entered, order = condition.new(), {}
    cq:wrap(function()
      order[#order + 1] = "await"
      entered:signal()
      local v = lcq.await(f)
      order[#order + 1] = v
    end)
    cq:wrap(function()
      if #order == 0 then entered:wait() end
      order[#order + 1] = "other"
      gate:close()   -- only now can f finish
    end)
    run_loop(cq)
    assert.are.same({ "await", "other", "released" }, order)
  end)

  it("awaits outside a controller by blocking in cqueues.poll", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    assert.are.equal(42, lcq.await(ex:submit(function() return 42 end)))
  end)

  it("refuses what it cannot await", function()
    local err = helpers.string_error(lcq.await, "f")
    helpers.assert_contains(err, "bad argument #1 to 'await' (loom.Future expected, got string)")
  end)
end)

describe("the polling protocol under cqueues", function()
  it("cqueues.poll(f) returns once f is done", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local f, gate = s:block(ex)
    local cq = cqueues.new()
    local polled
    cq:wrap(function()
      assert.are_not.equal(f, cqueues.poll(f, 0))   -- not ready yet
      gate:close()
      polled = cqueues.poll(f, PATIENCE)
    end)
    run_loop(cq)
    assert.is_true(rawequal(f, polled))
    assert.is_true(f:done())
  end)

  it("cqueues.poll(q) returns while a completed future waits in the queue", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local q = loom.completion_queue()
    local n, got = 300, 0
    for i = 1, n do q:add(ex:submit(function(x) return x end, i)) end
    local cq = cqueues.new()
    cq:wrap(function()
      while #q > 0 do
        assert(rawequal(q, cqueues.poll(q, PATIENCE)), "the queue never became ready")
        local f = q:pop(0)
        assert(f, "polled ready, but nothing to pop")
        got = got + f:result()
      end
      assert(cqueues.poll(q, 0) ~= q, "ready with nothing to pop")
    end)
    run_loop(cq)
    assert.are.equal(n * (n + 1) // 2, got)
  end)

  it("q:pop(0) on an empty queue returns at once in a coroutine", function()
    local cq = cqueues.new()
    local answers
    cq:wrap(function() answers = { loom.completion_queue():pop(0) } end)
    run_loop(cq)
    assert.are.same({ nil, "empty" }, answers)
  end)
end)
