-- Completion queues (loom.completion_queue), the futures' polling protocol
-- (f:pollfd, f:events, f:timeout) and loom.poll, without an event loop:
-- the loops themselves drive spec/luv_spec.lua and spec/cqueues_spec.lua.
--
-- Whether a descriptor is readable is read from /proc/self/fdinfo, which
-- shows an eventfd's counter (Linux); elsewhere those tests are pending.

local loom = require "loom"
local helpers = require "spec.support.helpers"

local PATIENCE = helpers.PATIENCE

-- The task that waits for its own gate (a push or a close), after saying
-- that it started; returns its tag.
local function gated(tag, started, gate)
  started:push(tag)
  local _, why = gate:pop(60)
  if why == "timeout" then error("test gate was never opened", 0) end
  return tag
end

-- Whether descriptor fd is readable: true/false from an eventfd's counter,
-- or nil when this system does not show it.
local function readable(fd)
  local f = io.open("/proc/self/fdinfo/" .. fd)
  if not f then return nil end
  local info = f:read("a")
  f:close()
  local count = info:match("eventfd%-count:%s*(%x+)")
  if not count then return nil end
  return tonumber(count, 16) > 0
end

local function fd_exists(fd)
  local f = io.open("/proc/self/fdinfo/" .. fd)
  if f then f:close() end
  return f ~= nil
end

-- Whether /proc shows this process's descriptors (the probe is closed
-- again, so that it cannot take the number of one under test).
local function have_fdinfo()
  local f = io.open("/proc/self/fdinfo/0")
  if f then f:close() end
  return f ~= nil
end

-- Waits until f is done and its completion has fully happened: result()
-- can return as soon as the future's state says done, while the worker
-- still holds the lock under which it signals descriptors and queues;
-- cancel() takes that lock, so once it returns (false: finished) the
-- completion is over.
local function settled(f)
  f:result(PATIENCE)
  assert.is_false(f:cancel())
end

local function need_eventfd(fd)
  if readable(fd) == nil then
    pending("no eventfd counter in /proc/self/fdinfo on this system")
    return false
  end
  return true
end

describe("loom.completion_queue", function()
  it("hands futures back in the order they completed, as the same objects", function()
    local s = helpers.scope(finally)
    local ex = s:executor(3)
    local started = s:channel()
    local gates, futs = {}, {}
    for i = 1, 3 do
      gates[i] = s:gate()
      futs[i] = ex:submit(gated, i, started, gates[i])
    end
    for _ = 1, 3 do helpers.pop(started) end
    local q = loom.completion_queue()
    q:add(futs[1], futs[2], futs[3])
    assert.are.equal(3, #q)
    for _, i in ipairs { 2, 3, 1 } do   -- finish them in this order
      gates[i]:push(true)
      assert.are.equal(i, futs[i]:result(PATIENCE))
    end
    for _, i in ipairs { 2, 3, 1 } do
      local f = q:pop(PATIENCE)
      assert.is_true(rawequal(futs[i], f))
    end
    assert.are.equal(0, #q)
  end)

  it("queues a done future at once; #q counts futures added and not popped; one added twice is queued once", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local done = ex:submit(function() return "done" end)
    assert.are.equal("done", done:result(PATIENCE))
    local blocked, gate = s:block(ex)
    local q = loom.completion_queue()
    q:add(blocked, done, done)
    q:add(done)
    assert.are.equal(2, #q)
    assert.is_true(rawequal(done, q:pop(0)))
    assert.are.equal(1, #q)
    assert.are.same({ nil, "timeout" }, { q:pop(0) })
    gate:close()
    assert.is_true(rawequal(blocked, q:pop(PATIENCE)))
    assert.are.equal(0, #q)
    -- popped, it may be added again, and comes back at once
    q:add(done)
    assert.is_true(rawequal(done, q:pop(0)))
  end)

  it("pop(0) never blocks: nil, 'timeout' while none is done, nil, 'empty' when it holds none", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local q = loom.completion_queue()
    assert.are.same({ nil, "empty" }, { q:pop(0) })
    assert.are.same({ nil, "empty" }, { q:pop() })   -- nothing could come: no wait
    local f = s:block(ex)
    q:add(f)
    assert.are.same({ nil, "timeout" }, { q:pop(0) })
    assert.are.same({ nil, "timeout" }, { q:pop(0.01) })
    assert.are.equal(1, #q)
  end)

  it("loses no completion: 20,000 tasks from two workers, each popped once", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local q = loom.completion_queue()
    local n, seen, sum = 20000, {}, 0
    for i = 1, n do q:add(ex:submit(function(x) return x end, i)) end
    for _ = 1, n do
      local f, why = q:pop(PATIENCE)
      assert(f, why)
      assert.is_nil(seen[f])
      seen[f] = true
      sum = sum + f:result()
    end
    assert.are.equal(n * (n + 1) // 2, sum)
    assert.are.same({ nil, "empty" }, { q:pop(0) })
  end)

  it("pops futures that complete while it waits (no lost wake-up), in order", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local q = loom.completion_queue()
    for round = 1, 200 do
      local f = ex:submit(function(x) return x end, round)
      q:add(f)
      assert.are.equal(round, assert(q:pop(PATIENCE)):result())
    end
  end)

  it("holds a future as soon as the future says it is done", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local q = loom.completion_queue()
    for i = 1, 2000 do
      local f = ex:submit(function(x) return x end, i)
      q:add(f)
      assert.are.equal(i, f:result(PATIENCE))
      assert.is_true(rawequal(f, q:pop(0)))   -- no wait: it is there
    end
  end)

  it("checks every argument of add before adding any", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local q = loom.completion_queue()
    local f = ex:submit(function() end)
    local err = helpers.string_error(function() q:add(f, 42) end)
    helpers.assert_contains(err, "bad argument #2 to 'add' (loom.Future expected, got number)")
    assert.are.equal(0, #q)
    err = helpers.string_error(q.add, {}, f)
    helpers.assert_contains(err, "loom.CompletionQueue expected")
    err = helpers.string_error(function() q:pop("1") end)
    helpers.assert_contains(err, "number expected")
  end)

  it("runs the done callbacks that are due before it hands back a future", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local q = loom.completion_queue()
    local f, gate = s:block(ex)
    local ran = {}
    f:add_done_callback(function(g) ran[#ran + 1] = g end)
    q:add(f)
    gate:close()
    local got = q:pop(PATIENCE)
    assert.is_true(rawequal(f, got))
    assert.are.equal(1, #ran)
    assert.is_true(rawequal(f, ran[1]))
  end)

  describe("closed with futures pending", function()
    it("forgets them; the futures still finish; pop says 'closed', add raises", function()
      local s = helpers.scope(finally)
      local ex = s:executor(2)
      local f1, gate1 = s:block(ex)
      local f2, gate2 = s:block(ex)
      local q = loom.completion_queue()
      q:add(f1, f2)
      local fd = q:pollfd()
      q:close()
      assert.are.equal(0, #q)
      assert.truthy(tostring(q):find("closed", 1, true))
      assert.are.same({ nil, "closed" }, { q:pop(0) })
      assert.are.same({ nil, "closed" }, { q:pop() })
      helpers.loom_error("closed", q.add, q, f1)
      helpers.loom_error("closed", q.pollfd, q)
      q:close()   -- twice: nothing more
      if have_fdinfo() then assert.is_false(fd_exists(fd)) end
      gate1:close()
      gate2:close()
      assert.are.equal("released", f1:result(PATIENCE))
      assert.are.equal("released", f2:result(PATIENCE))
    end)

    it("is closed at the end of a <close> scope, and when collected", function()
      local s = helpers.scope(finally)
      local ex = s:executor(2)
      local f1, gate1 = s:block(ex)
      local f2, gate2 = s:block(ex)
      local kept
      do
        local q <close> = loom.completion_queue()
        q:add(f1)
        kept = q
      end
      assert.are.same({ nil, "closed" }, { kept:pop(0) })
      do
        local q = loom.completion_queue()
        q:add(f1, f2)
        q:pollfd()
      end
      collectgarbage()
      collectgarbage()
      -- the collected queue no longer watches them: completing is safe
      gate1:close()
      gate2:close()
      assert.are.equal("released", f1:result(PATIENCE))
      assert.are.equal("released", f2:result(PATIENCE))
    end)

    it("lets the futures go when it is collected before they finish", function()
      local s = helpers.scope(finally)
      local ex = s:executor(1)
      local f, gate = s:block(ex)
      local q = loom.completion_queue()
      q:add(f)
      local weak = setmetatable({ f }, { __mode = "v" })
      f, q = nil, nil   -- luacheck: ignore
      collectgarbage()
      collectgarbage()
      gate:close()
      s:cleanup()
      collectgarbage()
      assert.is_nil(weak[1])
    end)
  end)

  describe("descriptor", function()
    it("is readable exactly while a completed future waits to be popped", function()
      local s = helpers.scope(finally)
      local ex = s:executor(2)
      local q = loom.completion_queue()
      local fd = q:pollfd()
      if not need_eventfd(fd) then return end
      assert.are.equal(fd, q:pollfd())
      assert.are.equal("r", q:events())
      assert.is_nil(q:timeout())
      assert.is_false(readable(fd))
      local f1, gate1 = s:block(ex)
      local f2, gate2 = s:block(ex)
      q:add(f1, f2)
      assert.is_false(readable(fd))
      gate1:close()
      settled(f1)
      assert.is_true(readable(fd))
      gate2:close()
      settled(f2)
      assert.is_true(readable(fd))
      assert.is_true(rawequal(f1, q:pop(0)))
      assert.is_true(readable(fd))   -- f2 still waits
      assert.is_true(rawequal(f2, q:pop(0)))
      assert.is_false(readable(fd))
    end)

    it("made after futures completed is readable at once", function()
      local s = helpers.scope(finally)
      local ex = s:executor(1)
      local q = loom.completion_queue()
      local f = ex:submit(function() end)
      q:add(f)
      settled(f)
      local fd = q:pollfd()
      if not need_eventfd(fd) then return end
      assert.is_true(readable(fd))
      q:pop(0)
      assert.is_false(readable(fd))
    end)
  end)
end)

describe("a future's polling protocol", function()
  it("pollfd is one descriptor, made on first request, readable once the future is done", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local f, gate = s:block(ex)
    local fd = f:pollfd()
    assert.is_true(math.type(fd) == "integer" and fd >= 0)
    assert.are.equal(fd, f:pollfd())
    assert.are.equal("r", f:events())
    assert.is_nil(f:timeout())
    if not need_eventfd(fd) then return end
    assert.is_false(readable(fd))
    gate:close()
    settled(f)
    assert.is_true(readable(fd))
    assert.is_true(readable(fd))   -- stays readable: done is for good
  end)

  it("asked for after the future is done, is readable at once; a cancelled one counts as done", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local done = ex:submit(function() end)
    done:result(PATIENCE)
    local _, gate = s:block(ex)
    local queued = ex:submit(function() end)
    local fd_q = queued:pollfd()
    local fd = done:pollfd()
    if not need_eventfd(fd) then return end
    assert.is_true(readable(fd))
    assert.is_false(readable(fd_q))
    assert.is_true(queued:cancel())
    assert.is_true(readable(fd_q))
    gate:close()
  end)

  it("is closed when the future is collected", function()
    if not have_fdinfo() then
      pending("no /proc/self/fdinfo on this system")
      return
    end
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local f = ex:submit(function() end)
    local fd = f:pollfd()
    f:result(PATIENCE)
    s:cleanup()   -- the pool has let go of it too
    assert.is_true(fd_exists(fd))
    f = nil   -- luacheck: ignore
    collectgarbage()
    collectgarbage()
    assert.is_false(fd_exists(fd))
  end)

  it("checks its argument", function()
    local Future = require("loom.core").Future
    for _, name in ipairs { "pollfd", "events", "timeout" } do
      local err = helpers.string_error(Future[name], {})
      helpers.assert_contains(err, "loom.Future expected")
    end
  end)
end)

describe("loom.poll", function()
  -- One worker runs f1 (held by a gate), then f2, then a task that says it
  -- started: once it has, f1 and f2 are done, and no loom call that runs
  -- callbacks has been made (a channel's pop runs none).
  it("runs the due done callbacks without blocking, and says how many ran", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local f1, gate = s:block(ex)
    local f2 = ex:submit(function() end)
    local started = s:channel()
    local f3 = ex:submit(function(ch) ch:push(true) end, started)
    local ran = {}
    f1:add_done_callback(function() ran[#ran + 1] = "f1 a" end)
    f1:add_done_callback(function() ran[#ran + 1] = "f1 b" end)
    f2:add_done_callback(function() ran[#ran + 1] = "f2" end)
    assert.are.equal(0, loom.poll())   -- none due: returns at once
    assert.are.same({}, ran)
    gate:close()
    helpers.pop(started)
    assert.is_true(f1:done() and f2:done())
    assert.are.same({}, ran)
    assert.are.equal(3, loom.poll())
    table.sort(ran)
    assert.are.same({ "f1 a", "f1 b", "f2" }, ran)
    assert.are.equal(0, loom.poll())   -- each runs once
    f3:result(PATIENCE)
  end)

  it("counts a callback that fails (its error goes to warn) and runs the next", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local f, gate = s:block(ex)
    local started = s:channel()
    ex:submit(function(ch) ch:push(true) end, started)
    local n = 0
    f:add_done_callback(function() error("callback failed") end)
    f:add_done_callback(function() n = n + 1 end)
    gate:close()
    helpers.pop(started)
    assert.are.equal(2, loom.poll())
    assert.are.equal(1, n)
  end)
end)
