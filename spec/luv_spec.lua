-- loom in a luv (libuv) loop, driven by the real loop: loom.luv's await and
-- on_done, a completion queue's descriptor under a uv_poll, and the
-- example server (examples/luv_server.lua). Pending without lua-luv.
--
-- Every uv.run() here ends by itself once its work is done; a bug that
-- would leave it running is caught by a timer that stops the loop after
-- PATIENCE seconds (it is unref'd, so it never keeps the loop alive).

local loom = require "loom"
local helpers = require "spec.support.helpers"

local PATIENCE = helpers.PATIENCE
local have_luv, uv = pcall(require, "luv")

-- Runs the luv loop until nothing keeps it alive; fails if it is still
-- running after PATIENCE seconds.
local function run_loop()
  local expired = false
  local guard = uv.new_timer()
  guard:start(PATIENCE * 1000, 0, function()
    expired = true
    uv.stop()
  end)
  guard:unref()
  uv.run()
  guard:close()
  uv.run("nowait")   -- let the guard's close complete
  assert(not expired, "the luv loop was still running after " .. PATIENCE .. " s")
end

-- Starts fn(...) as a coroutine (the way a luv program starts one);
-- an error in it fails the test.
local function spawn(fn, ...)
  local co = coroutine.create(fn)
  local ok, err = coroutine.resume(co, ...)
  assert(ok, err)
  return co
end

if not have_luv then
  describe("loom.luv", function()
    it("needs luv", function()
      pending("luv is not installed (apt-get install lua-luv; make test installs it)")
    end)
  end)
  return
end

local lluv = require "loom.luv"

describe("loom.luv", function()
  it("awaits 1,000 futures from two executors in one loop and gets every result", function()
    local s = helpers.scope(finally)
    local ex1, ex2 = s:executor(2), s:executor(1)
    local got, n = {}, 1000
    for i = 1, n do
      local ex = i % 2 == 0 and ex1 or ex2
      spawn(function()
        local a, b = lluv.await(ex:submit(function(x) return x * 2, "ok" end, i))
        got[i] = { a, b }
      end)
    end
    run_loop()
    for i = 1, n do assert.are.same({ i * 2, "ok" }, got[i]) end
    assert.are.equal(0, lluv.pending())
  end)

  it("returns every value, nils included, and at once for a done future", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local done = ex:submit(function() return 1, nil, 3 end)
    done:result(PATIENCE)
    local out
    spawn(function()
      out = table.pack(lluv.await(done))   -- done: no yield
    end)
    assert.are.same({ n = 3, 1, nil, 3 }, out)
  end)

  it("raises the task's error through await, and the loop goes on", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local results = {}
    spawn(function()
      local ok, err = pcall(lluv.await, ex:submit(error, "boom"))
      results.string = { ok, err }
      ok, err = pcall(lluv.await, ex:submit(function() error({ code = 7 }) end))
      results.table = { ok, type(err) == "table" and err.code }
      ok, err = pcall(lluv.await, ex:submit(function() local t = nil; return t.x end))
      results.runtime = { ok, helpers.contains(err, "attempt to index") }
    end)
    run_loop()
    assert.are.same({ false, "boom" }, results.string)
    assert.are.same({ false, 7 }, results.table)
    assert.are.same({ false, true }, results.runtime)
  end)

  it("raises 'cancelled' in a coroutine whose future is cancelled while it awaits", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local _, gate = s:block(ex)
    local queued = ex:submit(function() return "ran" end)
    local err
    spawn(function()
      local ok, e = pcall(lluv.await, queued)
      assert(not ok)
      err = e
    end)
    assert.is_nil(err)   -- suspended in await
    assert.is_true(queued:cancel())
    run_loop()
    assert.are.equal("cancelled", type(err) == "table" and err.kind)
    gate:close()
  end)

  it("cancels from a loop callback while the coroutine awaits", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local _, gate = s:block(ex)
    local queued = ex:submit(function() return "ran" end)
    local kind
    spawn(function()
      local ok, e = pcall(lluv.await, queued)
      kind = not ok and e.kind
    end)
    local t = uv.new_timer()
    t:start(0, 0, function()
      t:close()
      queued:cancel()
    end)
    run_loop()
    assert.are.equal("cancelled", kind)
    gate:close()
  end)

  it("calls on_done's function from the loop, for a done future too", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local done = ex:submit(function() return "early" end)
    done:result(PATIENCE)
    local calls = {}
    lluv.on_done(done, function(f) calls[#calls + 1] = f:result() end)
    assert.are.same({}, calls)   -- not at once: from the loop
    lluv.on_done(ex:submit(function() return "later" end), function(f)
      calls[#calls + 1] = f:result()
    end)
    run_loop()
    table.sort(calls)
    assert.are.same({ "early", "later" }, calls)
  end)

  it("runs every waiter of a future awaited twice, and loom's done callbacks in the loop", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local f, gate = s:block(ex)
    local seen, callback = {}, false
    f:add_done_callback(function() callback = true end)
    for i = 1, 2 do spawn(function() seen[i] = lluv.await(f) end) end
    lluv.on_done(f, function() seen[3] = callback end)
    gate:close()
    run_loop()
    assert.are.same({ "released", "released", true }, seen)
  end)

  it("keeps the loop alive only while a future is awaited", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local f, gate = s:block(ex)
    local result
    spawn(function() result = lluv.await(f) end)
    assert.are.equal(1, lluv.pending())
    -- the gate opens from the loop; uv.run() returns only after the await
    local t = uv.new_timer()
    t:start(0, 0, function() t:close() gate:close() end)
    run_loop()
    assert.are.equal("released", result)
    assert.are.equal(0, lluv.pending())
    run_loop()   -- nothing awaited: returns at once
  end)

  it("reports an error raised after await as an error of the loop's callback, once every waiter ran", function()
    -- luv ends the process on an error in a callback: in a child process
    local reliability = require "spec.support.reliability"
    local r = reliability.run([[
      local loom = require "loom"
      local uv = require "luv"
      local lluv = require "loom.luv"
      local ex = loom.executor(1)
      local gate = loom.channel()   -- f finishes once both wait for it
      local f = ex:submit(function(g) g:pop(60) return 1 end, gate)
      coroutine.wrap(function()
        lluv.await(f)
        error("failed after await")
      end)()
      lluv.on_done(f, function() print("the other waiter ran") end)
      gate:push(true)
      local ok, err = pcall(uv.run)   -- in case this luv raises instead
      print("uv.run raised: " .. tostring(not ok and err))
      os.exit(3)
    ]])
    assert.is_false(r.how == "exit" and r.status == 0, r.stdout .. r.stderr)
    assert.is_false(r.how == "exit" and r.status == 124, "the child hung")
    helpers.assert_contains(r.stdout, "the other waiter ran")
    helpers.assert_contains(r.stdout .. r.stderr, "failed after await")
  end)

  it("goes on after a program closed every handle (uv.walk) between two runs", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local got = {}
    spawn(function() got[1] = lluv.await(ex:submit(function() return "first" end)) end)
    run_loop()
    uv.walk(function(h) if not h:is_closing() then h:close() end end)
    run_loop()
    spawn(function() got[2] = lluv.await(ex:submit(function() return "second" end)) end)
    run_loop()
    assert.are.same({ "first", "second" }, got)
  end)

  it("refuses what it cannot await", function()
    local err = helpers.string_error(lluv.await, 42)
    helpers.assert_contains(err, "bad argument #1 to 'await' (loom.Future expected, got number)")
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local f, gate = s:block(ex)
    err = helpers.string_error(lluv.await, f)   -- the main coroutine
    helpers.assert_contains(err, "must be called from a coroutine")
    err = helpers.string_error(lluv.on_done, f, "x")
    helpers.assert_contains(err, "bad argument #2 to 'on_done' (function expected, got string)")
    err = helpers.string_error(lluv.using, {})
    helpers.assert_contains(err, "bad argument #1 to 'using' (a luv module expected)")
    err = helpers.string_error(lluv.using, uv)   -- earlier tests used it
    helpers.assert_contains(err, "loom.luv is in use already")
    gate:close()
  end)
end)

describe("a completion queue under a uv_poll", function()
  it("delivers completions from several workers, waking only when one is ready", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local q = loom.completion_queue()
    local n, got, wakeups, idle = 2000, {}, 0, 0
    for i = 1, n do q:add(ex:submit(function(x) return x end, i)) end
    local p = uv.new_poll(q:pollfd())
    p:start("r", function(err)
      assert(not err, err)
      wakeups = wakeups + 1
      local popped = 0
      while true do
        local f = q:pop(0)
        if not f then break end
        popped = popped + 1
        got[#got + 1] = f:result()
      end
      if popped == 0 then idle = idle + 1 end
      if #q == 0 then p:close() end
    end)
    run_loop()
    assert.are.equal(n, #got)
    table.sort(got)
    for i = 1, n do assert.are.equal(i, got[i]) end
    -- readable only while a future waits: no wake-up finds nothing
    assert.are.equal(0, idle)
    assert.is_true(wakeups >= 1)
    q:close()
  end)

  it("lets pop(0) on an empty queue return at once inside the loop", function()
    local q = loom.completion_queue()
    local answers
    local t = uv.new_timer()
    t:start(0, 0, function()
      t:close()
      answers = { q:pop(0) }
    end)
    run_loop()
    assert.are.same({ nil, "empty" }, answers)
  end)

  it("closes with futures pending while the loop polls it", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local f, gate = s:block(ex)
    local q = loom.completion_queue()
    q:add(f)
    local p = uv.new_poll(q:pollfd())
    local fired = 0
    p:start("r", function() fired = fired + 1 end)
    local t = uv.new_timer()
    t:start(0, 0, function()
      t:close()
      p:close()     -- a loop stops polling a descriptor before it closes it
      q:close()
      gate:close()
    end)
    run_loop()
    assert.are.equal(0, fired)
    assert.are.equal("released", f:result(PATIENCE))
    assert.are.same({ nil, "closed" }, { q:pop(0) })
  end)
end)

describe("examples/luv_server.lua", function()
  -- The server and its clients run in one child process, on one loop. A
  -- job named "hold" (added for the test) runs on a worker until the client
  -- sends "release", so its answer cannot come before the "pong" that the
  -- client waits for first: the order is forced, not timed.
  it("answers a cheap request while an expensive one runs", function()
    local reliability = require "spec.support.reliability"
    local root = helpers.current_directory()
    local r = reliability.run(([[
      local loom = require "loom"
      local uv = require "luv"
      local lluv = require "loom.luv"
      local server_mod = dofile(%q)
      local gate, started = loom.channel(), loom.channel()
      server_mod.expensive.hold = function()
        started:push(true)
        local _, why = gate:pop(60)
        return why == "timeout" and "gate never opened" or "released"
      end
      server_mod.cheap.release = function() gate:push(true) return "ok" end
      local ex <close> = loom.executor(2)
      local watcher <close> = loom.executor(1)
      local server, port = server_mod.serve(ex, 0)
      local open = 0
      local function connect(on_connect, on_line)
        local c = uv.new_tcp()
        open = open + 1
        c:connect("127.0.0.1", port, function(err)
          assert(not err, err)
          local buf = ""
          c:read_start(function(e, data)
            assert(not e, e)
            if not data then return end
            buf = buf .. data
            for line in buf:gmatch("([^\n]*)\n") do on_line(c, line) end
            buf = buf:match("[^\n]*$")
          end)
          on_connect(c)
        end)
      end
      local function hang_up(c)
        c:close()
        open = open - 1
        if open == 0 then server:close() end
      end
      connect(function(c) c:write("hold\n") end, function(c, line)
        print("A " .. line)
        hang_up(c)
      end)
      -- the second client starts once the hold job runs on a worker
      lluv.on_done(watcher:submit(function(ch) return ch:pop(60) end, started), function()
        connect(function(c) c:write("ping\n") end, function(c, line)
          print("B " .. line)
          if line == "pong" then c:write("release\n")
          elseif line == "ok" then c:write("primes 10000\n")
          elseif line:match("^primes") then c:write("nonsense\n")
          else hang_up(c) end
        end)
      end)
      uv.run()
    ]]):format(root .. "/examples/luv_server.lua"))
    reliability.assert_clean_exit(r)
    local lines = helpers.lines(r.stdout)
    local at = {}
    for i, line in ipairs(lines) do at[line] = i end
    assert.truthy(at["B pong"], r.stdout)
    assert.truthy(at["A released"], r.stdout)
    assert.is_true(at["B pong"] < at["A released"], r.stdout)
    assert.truthy(at["B ok"], r.stdout)
    assert.truthy(at["B primes below 10000: 1229"], r.stdout)
    assert.truthy(at['B error: unknown request "nonsense"'], r.stdout)
    assert.are.equal(5, #lines, r.stdout)
  end)
end)
