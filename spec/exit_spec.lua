-- Program end and teardown: what happens to tasks, executors, futures and
-- channels when the main script ends, exits or fails. Every case runs a
-- child interpreter under `timeout`, so a hang fails the test (status 124)
-- instead of hanging the run, and checks its exit status and its whole
-- output.

local reliability = require "spec.support.reliability"

local run = reliability.run
local assert_clean_exit = reliability.assert_clean_exit
local assert_lines = reliability.assert_lines

-- The value every busy task computes, so the output shows it ran to its end.
local BUSY_ITERATIONS = 3000000
local BUSY_SUM = 0
for k = 1, BUSY_ITERATIONS do BUSY_SUM = BUSY_SUM + k % 7 end

-- Source for a child's prelude: loom and a busy task.
local PRELUDE = string.format([[
local loom = require "loom"
local function busy(n, started)
  if started then started:push(n) end
  local x = 0
  for k = 1, %d do x = x + k %% 7 end
  print("task " .. n .. " finished " .. x)
end
]], BUSY_ITERATIONS)

local function busy_line(n)
  return "task " .. n .. " finished " .. BUSY_SUM
end

describe("program end", function()
  it("lets tasks that are running finish, and shows their output", function()
    local r = run(PRELUDE .. [[
      local ex = loom.executor(2)
      local started = loom.channel()
      ex:submit(busy, 1, started)
      ex:submit(busy, 2, started)
      started:pop(); started:pop()        -- both are running now
      print("main done")
    ]])
    assert_clean_exit(r)
    assert_lines({ "main done", busy_line(1), busy_line(2) }, r.stdout)
  end)

  it("runs every task still queued", function()
    local r = run(PRELUDE .. [[
      local ex = loom.executor(1)
      local started, gate = loom.channel(), loom.channel()
      -- The only worker waits on a gate nobody opens: the program's end
      -- closes it, so all 30 tasks below are certainly still queued then.
      ex:submit(function(s, g)
        s:push(true)
        local _, why = g:pop()
        print("first woke " .. tostring(why))
      end, started, gate)
      started:pop()
      for i = 1, 30 do ex:submit(function(n) print("queued " .. n) end, i) end
      print("main done")
    ]])
    assert_clean_exit(r)
    local expected = { "main done", "first woke closed" }
    for i = 1, 30 do expected[#expected + 1] = "queued " .. i end
    assert_lines(expected, r.stdout)
    -- The single worker runs them in order.
    local order = {}
    for n in r.stdout:gmatch("queued (%d+)") do order[#order + 1] = tonumber(n) end
    for i = 1, 30 do assert.are.equal(i, order[i]) end
  end)

  it("still runs the queued work after shutdown{wait = false}", function()
    local r = run(PRELUDE .. [[
      local ex = loom.executor(1)
      local started = loom.channel()
      ex:submit(busy, 0, started)
      started:pop()
      for i = 1, 20 do ex:submit(function(n) print("queued " .. n) end, i) end
      ex:shutdown { wait = false }
      local ok, err = pcall(ex.submit, ex, print)
      print("submit after shutdown: " .. tostring(ok) .. " " .. tostring(err.kind))
      print("main done")
    ]])
    assert_clean_exit(r)
    local expected = { "main done", "submit after shutdown: false shutdown", busy_line(0) }
    for i = 1, 20 do expected[#expected + 1] = "queued " .. i end
    assert_lines(expected, r.stdout)
  end)

  it("is clean with futures and channels still referenced from globals", function()
    local r = run(PRELUDE .. [[
      EX = loom.executor(2)
      STARTED, GATE = loom.channel(), loom.channel()
      DONE = EX:submit(function() return "done value" end)
      print(DONE:result())
      FAILED = EX:submit(function() error("task failed", 0) end)
      print((FAILED:exception()))
      RUNNING = EX:submit(function(s, g)
        s:push(true)
        local _, why = g:pop()
        print("running woke " .. tostring(why))
        return "never read"
      end, STARTED, GATE)
      STARTED:pop()
      PENDING = {}
      for i = 1, 10 do
        PENDING[i] = EX:submit(function(n) print("pending " .. n) return n end, i)
      end
      CH = loom.channel()
      for i = 1, 5 do CH:push({ i, "left in the channel" }) end
      FULL = loom.channel(1)
      FULL:push("x")
      CLOSED = loom.channel()
      CLOSED:push("kept")
      CLOSED:close()
      print("main done")
    ]])
    assert_clean_exit(r)
    local expected = { "done value", "task failed", "running woke closed", "main done" }
    for i = 1, 10 do expected[#expected + 1] = "pending " .. i end
    assert_lines(expected, r.stdout)
  end)

  it("runs every task of an executor collected by the GC", function()
    local r = run(PRELUDE .. [[
      local ran = loom.channel()
      local function submit_and_forget()
        ex = loom.executor(2)
        for i = 1, 20 do
          ex:submit(function(n, c)
            local x = 0
            for k = 1, 100000 do x = x + k end
            print("collected executor task " .. n)
            c:push(n)
          end, i, ran)
        end
        ex = nil
      end
      submit_and_forget()
      collectgarbage()
      collectgarbage()
      print("after collection " .. #ran)
    ]])
    assert_clean_exit(r)
    local expected = { "after collection 20" }
    for i = 1, 20 do expected[#expected + 1] = "collected executor task " .. i end
    assert_lines(expected, r.stdout)
  end)

  it("wakes a task blocked popping a channel nobody will push to", function()
    local r = run(PRELUDE .. [[
      local ex = loom.executor(2)
      local started = loom.channel()
      local silent = loom.channel()
      NEVER = loom.channel()     -- one in a global, one in a local
      for _, ch in ipairs { silent, NEVER } do
        ex:submit(function(c, s)
          s:push(true)
          local v, why = c:pop()
          print("woke with " .. tostring(v) .. ", " .. tostring(why))
        end, ch, started)
      end
      started:pop(); started:pop()
      print("main done")
    ]])
    assert_clean_exit(r)
    assert_lines({ "main done", "woke with nil, closed", "woke with nil, closed" }, r.stdout)
  end)

  it("wakes a task blocked pushing into a full channel", function()
    local r = run(PRELUDE .. [[
      local ex = loom.executor(1)
      local started = loom.channel()
      local full = loom.channel(1)
      full:push("first")
      ex:submit(function(c, s)
        s:push(true)
        local ok, err = pcall(c.push, c, "second")
        print("push woke: " .. tostring(ok) .. " " .. tostring(err.kind))
      end, full, started)
      started:pop()
      print("main done")
    ]])
    assert_clean_exit(r)
    assert_lines({ "main done", "push woke: false closed" }, r.stdout)
  end)

  it("waits for the tasks on os.exit(0, true)", function()
    local r = run(PRELUDE .. [[
      local ex = loom.executor(2)
      local started, gate = loom.channel(), loom.channel()
      ex:submit(busy, 1, started)
      ex:submit(function(s, g)
        s:push(true)
        local _, why = g:pop()
        print("blocked woke " .. tostring(why))
      end, started, gate)
      started:pop(); started:pop()
      for i = 2, 4 do ex:submit(busy, i) end
      print("exiting")
      os.exit(0, true)
      print("not reached")
    ]])
    assert_clean_exit(r)
    assert_lines({ "exiting", "blocked woke closed",
      busy_line(1), busy_line(2), busy_line(3), busy_line(4) }, r.stdout)
  end)

  for _, case in ipairs {
    { "os.exit(3)", "os.exit(3)", 3 },
    { "os.exit(false)", "os.exit(false)", 1 },
    { "os.exit(5, false)", "os.exit(5, false)", 5 },
  } do
    it("ends at once with the status given on " .. case[1] .. " while tasks run", function()
      local r = run(PRELUDE .. [[
        local ex = loom.executor(2)
        local started, gate = loom.channel(), loom.channel()
        ex:submit(busy, 1, started)
        -- this one would never end by itself: the exit must not wait for it
        ex:submit(function(s, g) s:push(true) g:pop() print("not reached") end,
          started, gate)
        started:pop(); started:pop()
        for i = 2, 10 do ex:submit(busy, i) end
        print("before exit")
        ]] .. case[2] .. [[

        print("after exit")
      ]])
      assert_clean_exit(r, case[3])
      local lines = reliability.lines(r.stdout)
      local seen_before = false
      for _, line in ipairs(lines) do
        if line == "before exit" then
          seen_before = true
        else
          -- tasks may or may not have printed: only whole busy lines allowed
          local n = line:match("^task (%d+) finished " .. BUSY_SUM .. "$")
          assert(n, "unexpected output line: " .. line)
        end
      end
      assert.is_true(seen_before)
    end)
  end

  it("reports an error raised by the main script while tasks run, and still ends", function()
    local r = run(PRELUDE .. [[
      local ex = loom.executor(2)
      local started = loom.channel()
      ex:submit(busy, 1, started)
      started:pop()
      for i = 2, 5 do ex:submit(busy, i) end
      local closing <close> = loom.executor(1)
      closing:submit(busy, 6)
      error("main script failed on purpose")
    ]])
    reliability.assert_status(r, 1)
    assert.is_truthy(r.stderr:find("main script failed on purpose", 1, true),
      "the error message is missing from stderr: " .. r.stderr)
    local expected = {}
    for i = 1, 6 do expected[i] = busy_line(i) end
    assert_lines(expected, r.stdout)
  end)

  it("ends cleanly with nested executors never shut down", function()
    local r = run(PRELUDE .. [[
      local ex = loom.executor(2)
      for i = 1, 3 do
        ex:submit(function(n)
          local inner_loom = require "loom"
          local inner = inner_loom.executor(2)
          for j = 1, 4 do
            inner:submit(function(a, b) print("inner " .. a .. "." .. b) end, n, j)
          end
          print("outer " .. n .. " done")
        end, i)
      end
      -- a nested task blocked on a channel of its worker's state
      ex:submit(function()
        local inner_loom = require "loom"
        local inner = inner_loom.executor(1)
        local started, never = inner_loom.channel(), inner_loom.channel()
        inner:submit(function(s, c)
          s:push(true)
          local _, why = c:pop()
          print("inner blocked woke " .. tostring(why))
        end, started, never)
        started:pop()
        print("outer with blocked inner done")
      end)
      local f = ex:submit(function()
        local inner = require("loom").executor(1)
        return inner:submit(function() return 42 end):result()
      end)
      print("nested result " .. f:result())
    ]])
    assert_clean_exit(r)
    local expected = { "nested result 42", "outer with blocked inner done",
      "inner blocked woke closed" }
    for i = 1, 3 do
      expected[#expected + 1] = "outer " .. i .. " done"
      for j = 1, 4 do expected[#expected + 1] = "inner " .. i .. "." .. j end
    end
    assert_lines(expected, r.stdout)
  end)

  it("ends cleanly with 50 executors left unclosed", function()
    local r = run(PRELUDE .. [[
      local gate = loom.channel()
      KEPT = {}
      for i = 1, 50 do
        -- Kept: collecting it mid-program would wait for the blocked task.
        local ex = loom.executor(1)
        KEPT[i] = ex
        ex:submit(function(n, g)
          local _, why = g:pop()
          print("executor " .. n .. " woke " .. tostring(why))
        end, i, gate)
        ex:submit(function(n) print("executor " .. n .. " ran") end, i)
        -- Dropped at once: collected whenever the GC gets to it.
        local dropped = loom.executor(1)
        dropped:submit(function(n) print("dropped executor " .. n .. " ran") end, i)
      end
      print("main done")
    ]])
    assert_clean_exit(r)
    local expected = { "main done" }
    for i = 1, 50 do
      expected[#expected + 1] = "executor " .. i .. " woke closed"
      expected[#expected + 1] = "executor " .. i .. " ran"
      expected[#expected + 1] = "dropped executor " .. i .. " ran"
    end
    assert_lines(expected, r.stdout)
  end)

  it("ends cleanly with an executor held only by a suspended coroutine", function()
    local r = run(PRELUDE .. [[
      local co = coroutine.create(function()
        local ex <close> = loom.executor(1)
        for i = 1, 5 do ex:submit(function(n) print("coroutine task " .. n) end, i) end
        coroutine.yield()
        print("not reached")
      end)
      assert(coroutine.resume(co))
      print("main done")
    ]])
    assert_clean_exit(r)
    local expected = { "main done" }
    for i = 1, 5 do expected[#expected + 1] = "coroutine task " .. i end
    assert_lines(expected, r.stdout)
  end)
end)

describe("program end, finalizers", function()
  it("treats an executor whose finalizer already ran as shut down", function()
    -- An object whose __gc shuts its executor down, made before the
    -- executor: at lua_close the executor is finalized first.
    local r = run([[
      local loom = require "loom"
      local owner = setmetatable({}, { __gc = function(self)
        self.ex:shutdown()
        self.ex:close()
        local ok, err = pcall(self.ex.submit, self.ex, print)
        print("submit after finalization: " .. tostring(ok) .. " " .. tostring(err.kind))
        ok, err = pcall(function() for _ in self.ex:map(print, { 1 }) do end end)
        print("map after finalization: " .. tostring(ok) .. " " .. tostring(err.kind))
      end })
      owner.ex = loom.executor(1)
      owner.ex:submit(function() return 1 end):result()
      print("main done")
    ]])
    assert_clean_exit(r)
    assert_lines({ "main done", "submit after finalization: false shutdown",
                   "map after finalization: false shutdown" }, r.stdout)
  end)
end)
