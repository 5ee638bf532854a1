-- loom.process_executor: the executor's surface on worker processes, crash
-- isolation, cancelling and limits, and no process left behind.
--
-- Channels cannot cross into another process, so these specs gate on
-- futures and on FIFOs: a task that must be running writes its pid into a
-- FIFO and keeps it open; `timeout 60 cat fifo` gives the test that line,
-- and ends (with status 0) only when every writer is gone: when the worker
-- process has died. Every wait is bounded; nothing sleeps.

local loom = require "loom"
local helpers = require "spec.support.helpers"
local reliability = require "spec.support.reliability"

local PATIENCE = helpers.PATIENCE

-- The pid of the process that runs this (a task: its worker).
local function pid()
  local f = assert(io.open("/proc/self/stat"))
  local n = f:read("n")
  f:close()
  return n
end

-- Ends the worker that runs it, as a crash would.
local function die()
  local f = assert(io.open("/proc/self/stat"))
  local n = f:read("n")
  f:close()
  os.execute("kill -9 " .. n)
  while true do end
end

-- A task that writes its worker's pid into the FIFO `name`, keeps it open
-- and never returns.
local function hold(name)
  local f = assert(io.open(name, "w"))
  local s = assert(io.open("/proc/self/stat"))
  f:write(s:read("n"), "\n")
  s:close()
  f:flush()
  while true do end
end

-- A new FIFO, and a bounded reader of it (see above).
local function fifo()
  local name = os.tmpname()
  os.remove(name)
  assert(os.execute("mkfifo " .. name))
  local reader = assert(io.popen("timeout " .. PATIENCE .. " cat " .. name))
  return name, reader
end

-- The reader's next line: a pid.
local function next_pid(reader)
  local line = reader:read("l")
  assert(line, "no line from the FIFO: the task never started")
  return assert(math.tointeger(tonumber(line)))
end

-- Waits until every writer of the FIFO is gone (its workers died).
local function await_end(name, reader)
  local ok, how, status = reader:close()
  os.remove(name)
  assert(ok and how == "exit" and status == 0,
    "the worker process did not end (cat: " .. tostring(how) .. " "
    .. tostring(status) .. ")")
end

local executors = {}
local function pool(opts)
  local ex = loom.process_executor(opts)
  executors[#executors + 1] = ex
  return ex
end

describe("process_executor", function()
  after_each(function()
    for _, ex in ipairs(executors) do
      ex:shutdown { cancel_futures = true, cancel_running = true }
    end
    executors = {}
  end)

  describe("the executor's surface", function()
    it("runs a task in another process and returns every value", function()
      local ex = pool { workers = 2 }
      local f = ex:submit(function(a, b) return a + b, nil, "x", nil end, 1, 4)
      assert.are.same({ n = 4, 5, nil, "x", nil }, table.pack(f:result(PATIENCE)))
      assert.is_true(f:done())
      assert.are.equal("finished", tostring(f):match("finished"))
      assert.are_not.equal(pid(), ex:submit(pid):result(PATIENCE))
      assert.truthy(tostring(ex):find("2 worker processes", 1, true))
      assert.are.equal(2, ex:workers())
    end)

    it("copies values exactly, both ways", function()
      local ex = pool { workers = 1 }
      local cyc = { name = "root", list = { 1, 2.5, -0.0, 1 / 0, math.mininteger } }
      cyc.self = cyc
      setmetatable(cyc.list, { __index = function() return "meta" end })
      local big = string.rep("ab\0", 200000)   -- through shared memory
      local k = 10
      local function add(x) return x + k end   -- an upvalue
      local back, s, fn, n = ex:submit(function(t, str, f)
        return t, str, f, f(1)
      end, cyc, big, add):result(PATIENCE)
      assert.are.equal(back, back.self)
      assert.are.equal("root", back.name)
      assert.are.equal(math.mininteger, back.list[5])
      assert.are.equal(math.type(back.list[5]), "integer")
      assert.are.equal("-0.0", string.format("%.1f", back.list[3]))
      assert.are.equal("meta", back.list[99])
      assert.are.equal(big, s)
      assert.are.equal(11, n)
      assert.are.equal(15, fn(5))
    end)

    it("moves large tables and strings both ways, one after another", function()
      local ex = pool { workers = 2 }
      local t = {}
      for i = 1, 100000 do t[i] = i * 0.5 end
      local futs = {}
      for i = 1, 6 do
        futs[i] = ex:submit(function(v, s) return v, #s, s:sub(-1) end, t,
                            string.rep("x", 300000) .. i)
      end
      for i = 1, 6 do
        local v, n, last = futs[i]:result(PATIENCE)
        assert.are.equal(100000, #v)
        assert.are.equal(50000.0, v[100000])
        assert.are.equal(300001, n)
        assert.are.equal(tostring(i), last)
      end
    end)

    it("moves payloads larger than 64 MiB both ways, and smaller ones after", function()
      local ex = pool { workers = 1 }
      local big = string.rep("b", 65 * 1024 * 1024)
      local n, back = ex:submit(function(s) return #s, s .. "!" end, big):result(PATIENCE)
      assert.are.equal(#big, n)
      assert.are.equal(#big + 1, #back)
      assert.are.equal("bb!", back:sub(-3))
      back = nil -- luacheck: ignore 311
      -- the regions were given back; they grow again when needed
      assert.are.equal(100000, #ex:submit(string.rep, "c", 100000):result(PATIENCE))
      assert.are.equal(#big, ex:submit(string.len, big):result(PATIENCE))
    end)

    it("returns a task's error with the worker's traceback", function()
      local ex = pool { workers = 1 }
      local f = ex:submit(function() error({ code = 7 }) end)
      local err, tb = f:exception(PATIENCE)
      assert.are.same({ code = 7 }, err)
      assert.truthy(tb:find("stack traceback", 1, true))
      local e = helpers.error_of(f.result, f)
      assert.are.equal(7, e.code)
      local g = ex:submit(function() error("plain", 0) end)
      assert.are.equal("plain", helpers.error_of(g.result, g))
    end)

    it("runs 10,000 tasks with their results right", function()
      local ex = pool { workers = 2 }
      local futs = {}
      for i = 1, 10000 do futs[i] = ex:submit(function(x) return x * 3, -x end, i) end
      for i = 1, 10000 do
        local a, b = futs[i]:result(PATIENCE)
        assert(a == 3 * i and b == -i, "wrong result for task " .. i)
      end
    end)

    it("maps, positional and named, in input order", function()
      local ex = pool { workers = 2 }
      local out = {}
      for i, v in ex:map(function(x, y) return x + y end, { 1, 2, 3 }, { 4, 5, 6 }) do
        out[i] = v
      end
      assert.are.same({ 5, 7, 9 }, out)
      local seq = {}
      for i = 1, 1000 do seq[i] = i end
      for _, chunk in ipairs { 1, 7, 256 } do
        local n = 0
        for i, v, w in ex:map { function(x) return x * x, -x end, seq, chunksize = chunk,
                                timeout = PATIENCE } do
          n = n + 1
          assert(i == n and v == i * i and w == -i)
        end
        assert.are.equal(1000, n)
      end
    end)

    it("cancels what map has not started when the loop ends early", function()
      local ex = pool { workers = 1 }
      local name, reader = fifo()
      local first = ex:submit(hold, name)
      next_pid(reader)   -- the only worker is busy for good
      local seq = {}
      for i = 1, 20 do seq[i] = i end
      local ok = pcall(function()
        for _ in ex:map { function(x) return x end, seq, timeout = 0 } do end
      end)
      assert.is_false(ok)
      assert.is_true(first:cancel { running = true })
      await_end(name, reader)
      assert.are.equal(5, ex:submit(function() return 5 end):result(PATIENCE))
    end)

    it("works with wait, as_completed and callbacks, mixed with thread futures", function()
      local ex, tx = pool { workers = 2 }, loom.executor { workers = 2 }
      local futs = {}
      for i = 1, 10 do
        futs[#futs + 1] = ex:submit(function(x) return x end, i)
        futs[#futs + 1] = tx:submit(function(x) return x end, -i)
      end
      local seen = 0
      futs[1]:add_done_callback(function() seen = seen + 1 end)
      local done, not_done = loom.wait(futs, { timeout = PATIENCE })
      assert.are.equal(20, #done)
      assert.are.equal(0, #not_done)
      local sum = 0
      for f in loom.as_completed(futs, PATIENCE) do sum = sum + f:result() end
      assert.are.equal(0, sum)
      assert.are.equal(1, seen)
      tx:close()
    end)

    it("runs init with init_args in every worker, and keeps globals between tasks", function()
      local ex = pool { workers = 2, init = function(a, b) base = a + b end, -- luacheck: ignore 111
                        init_args = { 40, 2 } }
      local futs = {}
      for i = 1, 20 do
        futs[i] = ex:submit(function()
          counter = (counter or 0) + 1 -- luacheck: ignore 111 113
          return base -- luacheck: ignore 113
        end)
      end
      for i = 1, 20 do assert.are.equal(42, futs[i]:result(PATIENCE)) end
      local n = ex:submit(function() return counter end):result(PATIENCE) -- luacheck: ignore 113
      assert.is_true(n >= 1 and n <= 21)
    end)

    it("gives workers the creator's package.path and package.cpath", function()
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir " .. dir))
      local f = assert(io.open(dir .. "/loom_spec_mod.lua", "w"))
      f:write("return { answer = 42 }\n")
      f:close()
      local old = package.path
      package.path = dir .. "/?.lua;" .. package.path
      local ok, ex = pcall(pool, { workers = 1 })
      package.path = old
      assert(ok, ex)
      local v, cpath = ex:submit(function()
        return require("loom_spec_mod").answer, package.cpath
      end):result(PATIENCE)
      os.remove(dir .. "/loom_spec_mod.lua")
      os.remove(dir)
      assert.are.equal(42, v)
      assert.are.equal(package.cpath, cpath)
    end)

    it("refuses os.exit in a task, as thread workers do", function()
      local ex = pool { workers = 1 }
      local f = ex:submit(function() os.exit(3) end)
      assert.truthy(tostring(helpers.error_of(f.result, f)):find("os.exit", 1, true))
      assert.are.equal(1, ex:submit(function() return 1 end):result(PATIENCE))
    end)

    it("refuses submit after shutdown, and shutdown twice is harmless", function()
      local ex = pool { workers = 1 }
      local f = ex:submit(function() return 1 end)
      ex:shutdown()
      ex:shutdown()
      assert.are.equal(1, f:result(0))
      helpers.loom_error("shutdown", ex.submit, ex, pid)
      helpers.loom_error("shutdown", function() return ex:map(pid, { 1 }) end)
    end)

    it("cancels queued futures on shutdown{cancel_futures = true}", function()
      local ex = pool { workers = 1 }
      local name, reader = fifo()
      local busy = ex:submit(hold, name)
      next_pid(reader)
      local queued = {}
      for i = 1, 30 do queued[i] = ex:submit(function(x) return x end, i) end
      ex:shutdown { wait = false, cancel_futures = true }
      for i = 1, 30 do assert.is_true(queued[i]:cancelled()) end
      assert.is_true(busy:cancel { running = true })
      await_end(name, reader)
      ex:shutdown()
    end)

    it("closes as a to-be-closed value, waiting for its tasks", function()
      local f
      do
        local ex <close> = loom.process_executor { workers = 1 }
        f = ex:submit(function() local x = 0 for i = 1, 1e6 do x = x + i end return x end)
      end
      assert.is_true(f:done())
      assert.are.equal(500000500000, f:result(0))
    end)

    it("waits for its tasks when collected, and reaps its workers", function()
      local log = os.tmpname()
      local ex = loom.process_executor { workers = 2 }
      local pids, futs = {}, {}
      for i = 1, 20 do futs[i] = ex:submit(pid) end
      for i = 1, 20 do pids[futs[i]:result(PATIENCE)] = true end
      for i = 1, 10 do
        ex:submit(function(name, n)
          local x = 0
          for k = 1, 100000 do x = x + k end
          local f = io.open(name, "a")
          f:write(n, "\n")
          f:close()
        end, log, i)
      end
      ex, futs = nil, nil -- luacheck: ignore 311 (a future keeps its executor)
      collectgarbage()
      collectgarbage()
      local f = assert(io.open(log))
      local n = 0
      for _ in f:lines() do n = n + 1 end
      f:close()
      os.remove(log)
      assert.are.equal(10, n)
      -- reaped: not even zombies are left
      for p in pairs(pids) do
        assert.is_nil(io.open("/proc/" .. p .. "/stat"), "worker " .. p .. " is left")
      end
    end)
  end)

  describe("crash isolation", function()
    it("fails only the task whose worker was killed; 100 others succeed", function()
      local ex = pool { workers = 2 }
      local futs = {}
      for i = 1, 50 do futs[i] = ex:submit(function(x) return x end, i) end
      local bad = ex:submit(die)
      for i = 51, 100 do futs[i] = ex:submit(function(x) return x end, i) end
      for i = 1, 100 do assert.are.equal(i, futs[i]:result(PATIENCE)) end
      local err = helpers.loom_error("crashed", bad.result, bad, PATIENCE)
      assert.truthy(err.message:match("^worker process %d+ was killed by signal 9"),
                    err.message)
      assert.are.equal("crashed", (bad:exception(0)).kind)
      -- and it goes on serving, with a replacement
      local after = {}
      for i = 1, 20 do after[i] = ex:submit(pid) end
      for i = 1, 20 do assert.is_number(after[i]:result(PATIENCE)) end
    end)

    it("names the signal that ended a worker", function()
      local ex = pool { workers = 1 }
      local f = ex:submit(function()
        local s = assert(io.open("/proc/self/stat"))
        os.execute("kill -TERM " .. s:read("n"))
        while true do end
      end)
      local err = helpers.loom_error("crashed", f.result, f, PATIENCE)
      assert.truthy(err.message:find("killed by signal 15 (SIGTERM)", 1, true),
                    err.message)
      assert.are.equal(2, ex:submit(function() return 2 end):result(PATIENCE))
    end)

    it("fails the crashed call's index under map, and goes on serving", function()
      local ex = pool { workers = 2 }
      local seq = {}
      for i = 1, 200 do seq[i] = i end
      for _, chunk in ipairs { 1, 8 } do
        local got, at = 0, nil
        local ok, err = pcall(function()
          for i, v in ex:map { function(x)
            if x == 77 then
              local s = assert(io.open("/proc/self/stat"))
              os.execute("kill -9 " .. s:read("n"))
              while true do end
            end
            return x * 2
          end, seq, chunksize = chunk } do
            assert.are.equal(2 * i, v)
            got, at = got + 1, i
          end
        end)
        assert.is_false(ok)
        assert.are.equal("crashed", err.kind)
        -- the calls before the crashed one's task all came back
        assert.are.equal(chunk == 1 and 76 or 72, got)
        assert.are.equal(got, at)
      end
      assert.are.equal(9, ex:submit(function() return 9 end):result(PATIENCE))
    end)

    it("starts a fresh worker after max_tasks_per_child tasks", function()
      local ex = pool { workers = 1, max_tasks_per_child = 1 }
      local futs, seen = {}, {}
      for i = 1, 6 do futs[i] = ex:submit(pid) end
      for i = 1, 6 do
        local n = futs[i]:result(PATIENCE)
        assert.is_nil(seen[n], "pid " .. n .. " ran two tasks")
        seen[n] = true
      end
      local ex3 = pool { workers = 2, max_tasks_per_child = 3 }
      local count = {}
      futs = {}
      for i = 1, 30 do futs[i] = ex3:submit(pid) end
      for i = 1, 30 do
        local n = futs[i]:result(PATIENCE)
        count[n] = (count[n] or 0) + 1
        assert.is_true(count[n] <= 3)
      end
    end)
  end)

  describe("cancelling and limits", function()
    it("cancel{running = true} ends the worker of a running task", function()
      local ex = pool { workers = 1 }
      local name, reader = fifo()
      local f = ex:submit(hold, name)
      local n = next_pid(reader)
      assert.is_true(f:running())
      assert.is_false(f:cancel())   -- running: not without running = true
      assert.is_true(f:cancel { running = true })
      assert.is_true(f:cancelled())
      helpers.loom_error("cancelled", f.result, f)
      await_end(name, reader)
      assert.are_not.equal(n, ex:submit(pid):result(PATIENCE))
    end)

    it("cancel{running = true} of a task waiting behind another skips it", function()
      local ex = pool { workers = 1 }
      -- short tasks first, so that the worker takes several at a time
      local short = {}
      for i = 1, 50 do short[i] = ex:submit(function() return i end) end
      for i = 1, 50 do short[i]:result(PATIENCE) end
      local name, reader = fifo()
      local first = ex:submit(hold, name)
      local second = ex:submit(function() return "ran" end)
      next_pid(reader)
      assert.is_true(second:cancel { running = true })
      assert.is_true(second:cancelled())
      assert.is_true(first:cancel { running = true })
      await_end(name, reader)
      assert.are.equal("ok", ex:submit(function() return "ok" end):result(PATIENCE))
    end)

    it("shutdown{cancel_running = true} ends the running tasks", function()
      local ex = loom.process_executor { workers = 2 }
      local name, reader = fifo()
      local a, b = ex:submit(hold, name), ex:submit(hold, name)
      next_pid(reader)
      next_pid(reader)
      ex:shutdown { cancel_running = true }
      assert.is_true(a:cancelled() and b:cancelled())
      await_end(name, reader)
    end)

    it("task_timeout ends an overdue task's worker with a timeout error", function()
      local ex = pool { workers = 1, task_timeout = 0.2 }
      local name, reader = fifo()
      local f = ex:submit(hold, name)
      next_pid(reader)
      local err = helpers.loom_error("timeout", f.result, f, PATIENCE)
      assert.are.equal("the task ran longer than its time limit (task_timeout = 0.2 s)",
                       err.message)
      await_end(name, reader)
      -- a short task is not touched
      assert.are.equal(3, ex:submit(function() return 3 end):result(PATIENCE))
    end)

    it("memory_limit: an endless table fails with not enough memory, the worker goes on", function()
      local ex = pool { workers = 1, memory_limit = 32 * 1024 * 1024 }
      local before = ex:submit(pid):result(PATIENCE)
      local f = ex:submit(function()
        local t = {}
        for i = 1, math.huge do t[i] = { i } end
        return #t
      end)
      local err = helpers.error_of(f.result, f)
      assert.truthy(tostring(err):find("not enough memory", 1, true), tostring(err))
      assert.are.equal(before, ex:submit(pid):result(PATIENCE))
      local s = ex:submit(function() return #string.rep("y", 1000000) end)
      assert.are.equal(1000000, s:result(PATIENCE))
    end)
  end)

  describe("transfer errors", function()
    it("refuses a channel at submit, naming its place", function()
      local ex = pool { workers = 1 }
      local err = helpers.loom_error("transfer", ex.submit, ex, pid, 1, loom.channel())
      assert.are.equal("argument #3: a channel cannot cross into another process",
                       err.message)
      err = helpers.loom_error("transfer", ex.submit, ex, pid, { ch = loom.channel() })
      assert.truthy(err.message:find("field 'ch'", 1, true), err.message)
      local ch = loom.channel()
      err = helpers.loom_error("transfer", ex.submit, ex, function() return ch end)
      assert.truthy(err.message:find("cannot cross into another process", 1, true))
      err = helpers.loom_error("transfer", function()
        return ex:map(function(x) return x end, { 1, ch })
      end)
      assert.truthy(err.message:find("element 2 of sequence #1", 1, true), err.message)
    end)

    it("refuses userdata and coroutines at submit", function()
      local ex = pool { workers = 1 }
      local err = helpers.loom_error("transfer", ex.submit, ex, pid, io.stdout)
      assert.are.equal("argument #2: cannot transfer a userdata", err.message)
      err = helpers.loom_error("transfer", ex.submit, ex, pid, coroutine.create(pid))
      assert.truthy(err.message:find("coroutine", 1, true))
    end)

    it("fails a future whose results cannot cross", function()
      local ex = pool { workers = 1 }
      local f = ex:submit(function() return require("loom").channel() end)
      local err = helpers.loom_error("transfer", f.result, f, PATIENCE)
      assert.are.equal("result #1: a channel cannot cross into another process",
                       err.message)
      local g = ex:submit(function() return io.stdout end)
      helpers.loom_error("transfer", g.result, g, PATIENCE)
    end)
  end)

  describe("broken", function()
    it("says so when the interpreter is missing", function()
      local ex = pool { workers = 2, interpreter = "/nonexistent/lua5.4" }
      local f = ex:submit(pid)
      local err = helpers.loom_error("broken", f.result, f, PATIENCE)
      -- (found by posix_spawn; under valgrind, by the exit status 127)
      assert.truthy(err.message:find("cannot start a worker process: interpreter "
                                     .. "'/nonexistent/lua5.4' not found", 1, true),
                    err.message)
      local g = ex:submit(pid)
      helpers.loom_error("broken", g.result, g, PATIENCE)
    end)

    it("carries the message of an init that fails", function()
      local ex = pool { workers = 2, init = function() error("no database", 0) end }
      local f = ex:submit(pid)
      local err = helpers.loom_error("broken", f.result, f, PATIENCE)
      assert.are.equal("no database", err.message)
    end)

    it("says so when the interpreter is not one", function()
      local ex = pool { workers = 1, interpreter = "true" }
      local f = ex:submit(pid)
      local err = helpers.loom_error("broken", f.result, f, PATIENCE)
      assert.truthy(err.message:find("exited with status 0 before it was ready (interpreter 'true')", 1, true),
                    err.message)
    end)
  end)

  describe("options", function()
    it("refuses bad ones clearly", function()
      local e = helpers.string_error(loom.process_executor, { max_tasks_per_child = 0 })
      helpers.assert_contains(e, "max_tasks_per_child must be an integer >= 1")
      e = helpers.string_error(loom.process_executor, { interpreter = 5 })
      helpers.assert_contains(e, "interpreter must be a string")
      e = helpers.string_error(loom.process_executor, { task_timeout = -1 })
      helpers.assert_contains(e, "task_timeout")
      e = helpers.string_error(loom.process_executor, { workers = 0 })
      helpers.assert_contains(e, "workers")
      e = helpers.string_error(loom.process_executor, "x")
      helpers.assert_contains(e, "table or number expected")
    end)
  end)

  describe("soak #soak", function()
    it("keeps every future right through crashes, timeouts, cancels and recycling #soak", function()
      local ex = pool { workers = 3, task_timeout = 1, max_tasks_per_child = 50 }
      local random = reliability.random(12)
      local futs, kinds = {}, {}
      for i = 1, 3000 do
        local r = random(100)
        if r <= 2 then kinds[i], futs[i] = "die", ex:submit(die)
        elseif r <= 4 then kinds[i], futs[i] = "spin", ex:submit(function() while true do end end)
        elseif r <= 6 then
          kinds[i], futs[i] = "big", ex:submit(string.len, string.rep("x", 100000 + i))
        else kinds[i], futs[i] = "ok", ex:submit(function(x) return x * 2 end, i) end
        if i > 5 and random(100) <= 3 then futs[i - random(5)]:cancel { running = true } end
      end
      local allowed = { die = { crashed = true }, spin = { timeout = true }, big = {}, ok = {} }
      for i = 1, #futs do
        local ok, v = pcall(futs[i].result, futs[i], PATIENCE)
        if ok then
          local want = kinds[i] == "ok" and 2 * i or kinds[i] == "big" and 100000 + i
          assert(want and v == want, "task " .. i .. " (" .. kinds[i] .. "): " .. tostring(v))
        else
          assert(type(v) == "table" and (v.kind == "cancelled" or allowed[kinds[i]][v.kind]),
                 "task " .. i .. " (" .. kinds[i] .. "): " .. tostring(v))
        end
      end
    end)
  end)

  describe("no orphans", function()
    it("leaves no worker behind when its parent is killed with SIGKILL", function()
      local name, reader = fifo()
      local script = os.tmpname()
      local f = assert(io.open(script, "w"))
      local root = helpers.current_directory()
      f:write(string.format("package.path = %q\npackage.cpath = %q\n",
        helpers.absolute(package.path, root), helpers.absolute(package.cpath, root)))
      f:write(string.format([[
        local loom = require "loom"
        local s = assert(io.open("/proc/self/stat"))
        print(s:read("n"))
        io.stdout:flush()
        local ex = loom.process_executor { workers = 2 }
        local hold = load(%q)
        ex:submit(hold, %q)
        ex:submit(hold, %q)
        local x = 0
        while true do x = x + 1 end   -- until killed
      ]], string.dump(hold), name, name))
      f:close()
      local parent = assert(io.popen("exec " .. helpers.LUA .. " " .. script))
      local ppid = assert(math.tointeger(tonumber(parent:read("l"))))
      local a, b = next_pid(reader), next_pid(reader)
      assert(os.execute("kill -9 " .. ppid))
      await_end(name, reader)   -- both workers are gone
      parent:close()
      os.remove(script)
      assert.are_not.equal(a, b)
    end)

    it("lets tasks finish at program end, output included", function()
      local r = reliability.run([[
        local loom = require "loom"
        local ex = loom.process_executor(2)
        for i = 1, 5 do
          ex:submit(function(n)
            local x = 0
            for k = 1, 100000 do x = x + k end
            print("task " .. n .. " " .. x)
          end, i)
        end
        print("main done")
      ]])
      reliability.assert_clean_exit(r)
      local want = { "main done" }
      for i = 1, 5 do want[#want + 1] = "task " .. i .. " 5000050000" end
      reliability.assert_lines(want, r.stdout)
    end)
  end)
end)
