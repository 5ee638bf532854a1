-- Errors a newcomer understands (issue 14, item 4): option values named
-- with their type and value, one message per rule however the value was
-- written, unknown option keys named with the closest valid one, every
-- argument error at the caller's line, and a note on a task's error about
-- a global that only the submitting state has.

local loom = require "loom"
local core = require "loom.core"
local helpers = require "spec.support.helpers"

local PATIENCE = helpers.PATIENCE

-- Calls fn, which sets `line` to the line of the call that raises; asserts
-- a string error raised at that line of this file, and returns the message
-- without the position.
local THIS = debug.getinfo(1, "S").short_src
local function error_at(fn)
  local line
  local ok, err = pcall(fn, function() line = debug.getinfo(2, "l").currentline end)
  assert.is_false(ok, "expected an error")
  assert.is_string(err)
  local prefix = THIS .. ":" .. tostring(line) .. ": "
  assert.are.equal(prefix, err:sub(1, #prefix), "not raised at the caller's line: " .. err)
  return err:sub(#prefix + 1)
end

-- The message of the string error fn(...) raises, without its position.
local function message(fn, ...)
  local err = helpers.string_error(fn, ...)
  return (err:gsub("^[^\n]-:%d+: ", "", 1))
end

describe("option values", function()
  it("name the type and the value: workers = '4'", function()
    assert.are.equal([[bad argument #1 to 'executor' (workers must be an integer >= 1, got string "4")]],
      message(loom.executor, { workers = "4" }))
  end)

  it("give one message per rule however the value was written", function()
    local cases = {
      { 5000, 5000.0, "workers must be at most 4096, got number 5000" },
      { 0, 0.0, "workers must be an integer >= 1, got number 0" },
      { -3, -3.0, "workers must be an integer >= 1, got number -3" },
    }
    for _, case in ipairs(cases) do
      local expected = "bad argument #1 to 'executor' (" .. case[3] .. ")"
      assert.are.equal(expected, message(loom.executor, case[1]))
      assert.are.equal(expected, message(loom.executor, case[2]))
      assert.are.equal(expected, message(loom.executor, { workers = case[1] }))
      assert.are.equal(expected, message(loom.executor, { workers = case[2] }))
    end
    assert.are.equal("bad argument #1 to 'executor' (workers must be an integer >= 1, got number 2.5)",
      message(loom.executor, 2.5))
  end)

  it("take a float with an integer value as that integer", function()
    local s = helpers.scope(finally)
    assert.are.equal(2, s:executor(2.0):workers())
    assert.are.equal(3, s:executor { workers = 3.0 }:workers())
  end)

  local EXECUTOR_CASES = {
    { { init = 42 }, "init must be a function, got number 42" },
    { { init_args = "a" }, 'init_args must be a table, got string "a"' },
    { { name = true }, "name must be a string, got boolean true" },
    { { task_timeout = 0 }, "task_timeout must be a number > 0, got number 0" },
    { { task_timeout = -1.5 }, "task_timeout must be a number > 0, got number -1.5" },
    { { task_timeout = "1" }, 'task_timeout must be a number > 0, got string "1"' },
    { { memory_limit = 0 }, "memory_limit must be an integer >= 1, got number 0" },
    { { memory_limit = 1.5 }, "memory_limit must be an integer >= 1, got number 1.5" },
    { { memory_limit = "1MB" }, 'memory_limit must be an integer >= 1, got string "1MB"' },
    { { memory_limit = {} }, "memory_limit must be an integer >= 1, got table" },
  }
  -- One checker for every kind of executor, in the same words (issue 19;
  -- issue 17, defect 6: the process pool refused task_timeout = 2e9 with a
  -- message of its own).
  for _, kind in ipairs { "executor", "process_executor" } do
    for _, case in ipairs(EXECUTOR_CASES) do
      it("of " .. kind .. ": " .. case[2], function()
        assert.are.equal("bad argument #1 to '" .. kind .. "' (" .. case[2] .. ")",
          message(loom[kind], case[1]))
      end)
    end
  end

  it("of process_executor: workers past the most are refused as the executor's are", function()
    assert.are.equal("bad argument #1 to 'process_executor' (workers must be at most 4096, got number 5000)",
      message(loom.process_executor, 5000))
    assert.are.equal("bad argument #1 to 'executor' (workers must be at most 4096, got number 5000)",
      message(loom.executor, 5000))
  end)

  it("task_timeout = 2e9 (or more) is taken by both pools, and their tasks run", function()
    for _, make in ipairs { loom.executor, loom.process_executor } do
      for _, t in ipairs { 2e9, 1e12 } do
        local ex <close> = make { workers = 1, task_timeout = t }
        assert.are.equal(42, ex:submit(function() return 42 end):result(PATIENCE))
      end
    end
  end)

  it("of executor: task_timeout = NaN is refused", function()
    helpers.assert_contains(message(loom.executor, { task_timeout = 0 / 0 }),
      "task_timeout must be a number > 0, got number ")
  end)

  it("show a long string cut short and control characters escaped", function()
    local msg = message(loom.executor, { name = 1, init = ("x"):rep(100) .. "\n" })
    assert.are.equal("bad argument #1 to 'executor' (init must be a function, got string \""
      .. ("x"):rep(37) .. "...\")", msg)
    assert.are.equal([[bad argument #1 to 'executor' (init must be a function, got string "a\10b")]],
      message(loom.executor, { init = "a\nb" }))
  end)

  it("of map, wait, shutdown, cancel and decode", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local f = ex:submit(function() return 1 end)
    assert.are.equal("bad argument #1 to 'map' (chunksize must be an integer >= 1, got number 0)",
      message(ex.map, ex, { print, { 1 }, chunksize = 0.0 }))
    assert.are.equal("bad argument #1 to 'map' (progress must be a boolean or a function(done, total), got number 1)",
      message(ex.map, ex, { print, { 1 }, progress = 1 }))
    assert.are.equal([[bad argument #1 to 'map' (timeout must be a number of seconds, got string "1")]],
      message(ex.map, ex, { print, { 1 }, timeout = "1" }))
    assert.are.equal("bad argument #2 to 'wait' (return_when must be loom.FIRST_COMPLETED, "
      .. [[loom.FIRST_EXCEPTION or loom.ALL_COMPLETED, got string "first")]],
      message(loom.wait, { f }, { return_when = "first" }))
    assert.are.equal("bad argument #2 to 'wait' (timeout must not be NaN)",
      message(loom.wait, { f }, { timeout = 0 / 0 }))
    assert.are.equal("bad argument #1 to 'shutdown' (cancel_running must be a boolean, got number 1)",
      message(ex.shutdown, ex, { cancel_running = 1 }))
    assert.are.equal("bad argument #1 to 'cancel' (running must be a boolean, got number 1)",
      message(f.cancel, f, { running = 1 }))
    assert.are.equal("bad argument #2 to 'decode' (functions must be a boolean, got number 1)",
      message(loom.decode, loom.encode(1), { functions = 1 }))
    assert.are.equal(1, f:result(PATIENCE))
  end)
end)

describe("an unknown option", function()
  local function with(finally)
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local f = ex:submit(function() return 1 end)
    assert.are.equal(1, f:result(PATIENCE))
    return ex, f
  end

  local CASES = {
    { "executor", function(_, _, o) return loom.executor(o) end, 1,
      { wrokers = 2 }, "wrokers", "workers" },
    { "executor", function(_, _, o) return loom.executor(o) end, 1,
      { Workers = 2 }, "Workers", "workers" },
    { "executor", function(_, _, o) return loom.executor(o) end, 1,
      { timeout = 2 }, "timeout", "task_timeout" },
    { "executor", function(_, _, o) return loom.executor(o) end, 1,
      { init_arg = {} }, "init_arg", "init_args" },
    { "executor", function(_, _, o) return loom.executor(o) end, 1,
      { memorylimit = 2 }, "memorylimit", "memory_limit" },
    { "map", function(ex, _, o) return ex:map(o) end, 1,
      { print, { 1 }, chunk_size = 2 }, "chunk_size", "chunksize" },
    { "map", function(ex, _, o) return ex:map(o) end, 1,
      { print, { 1 }, progres = true }, "progres", "progress" },
    { "map", function(ex, _, o) return ex:map(o) end, 1,
      { print, { 1 }, timout = 1 }, "timout", "timeout" },
    { "wait", function(_, f, o) return loom.wait({ f }, o) end, 2,
      { return_When = loom.ALL_COMPLETED }, "return_When", "return_when" },
    { "wait", function(_, f, o) return loom.wait({ f }, o) end, 2,
      { timeot = 1 }, "timeot", "timeout" },
    { "shutdown", function(ex, _, o) return ex:shutdown(o) end, 1,
      { cancel_future = true }, "cancel_future", "cancel_futures" },
    { "shutdown", function(ex, _, o) return ex:shutdown(o) end, 1,
      { cancel_runing = true }, "cancel_runing", "cancel_running" },
    { "shutdown", function(ex, _, o) return ex:shutdown(o) end, 1,
      { wiat = false }, "wiat", "wait" },
    { "cancel", function(_, f, o) return f:cancel(o) end, 1,
      { runing = true }, "runing", "running" },
    { "decode", function(_, _, o) return loom.decode(loom.encode(1), o) end, 2,
      { ["function"] = true }, "function", "functions" },
  }
  for _, case in ipairs(CASES) do
    it("of " .. case[1] .. " names '" .. case[5] .. "' and suggests '" .. case[6] .. "'", function()
      local ex, f = with(finally)
      local msg = message(case[2], ex, f, case[4])
      assert.are.equal(("bad argument #%d to '%s' (unknown option '%s' (did you mean '%s'?))")
        :format(case[3], case[1], case[5], case[6]), msg)
      if case[1] == "shutdown" then   -- refused before anything happened
        assert.are.equal(2, ex:submit(function() return 2 end):result(PATIENCE))
      end
    end)
  end

  it("far from every valid one lists them", function()
    assert.are.equal("bad argument #1 to 'executor' (unknown option 'colour' "
      .. "(options: init, init_args, memory_limit, name, task_timeout, workers))",
      message(loom.executor, { colour = "red" }))
    assert.are.equal("bad argument #2 to 'wait' (unknown option [true] (options: return_when, timeout))",
      message(loom.wait, {}, { [true] = 1 }))
  end)

  it("that is a number where workers were meant says so", function()
    assert.are.equal("bad argument #1 to 'executor' (unknown option [1] (did you mean {workers = 4}?))",
      message(loom.executor, { 4 }))
  end)

  it("of map is not one of its positional values", function()
    local ex = with(finally)
    assert.are.equal("bad argument #1 to 'map' (unknown option [5] (options: chunksize, progress, timeout))",
      message(ex.map, ex, { print, { 1 }, [5] = { 2 } }))
  end)
end)

describe("task_timeout and memory_limit", function()
  it("reach the core's executor as checked numbers", function()
    local real = core.executor
    local seen
    finally(function() core.executor = real end)
    core.executor = function(o) seen = o return real(o) end
    local s = helpers.scope(finally)
    s:executor { workers = 1, task_timeout = 30, memory_limit = 2.0 ^ 30 }
    assert.are.equal(30, seen.task_timeout)
    assert.are.equal(1 << 30, seen.memory_limit)
    assert.are.equal("integer", math.type(seen.memory_limit))
    s:executor { workers = 1, task_timeout = math.huge }
    assert.is_nil(seen.task_timeout)   -- no limit
  end)
end)

describe("an argument error", function()
  it("points at the caller's line, whichever function raised it", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local f = ex:submit(function() return 1 end)
    assert.are.equal(1, f:result(PATIENCE))
    local ch = s:channel()
    local calls = {
      function(at) at() loom.executor { wrokers = 1 } end,
      function(at) at() loom.executor("4") end,
      function(at) at() loom.wait({ f, 3 }) end,
      function(at) at() loom.wait({ f }, { timeout = "1" }) end,
      function(at) at() loom.wait(42) end,
      function(at) at() for _ in loom.as_completed({ f }, "1") do end end,
      function(at) at() loom.as_completed(42) end,
      function(at) at() ex:map { print, { 1 }, chunksize = 0 } end,
      function(at) at() ex:map(print, 3) end,
      function(at) at() ex.map(42, print, { 1 }) end,
      function(at) at() ex:shutdown { bogus = true } end,
      function(at) at() ex.shutdown(42) end,
      function(at) at() f:cancel { bogus = true } end,
      function(at) at() f.cancel(42) end,
      function(at) at() loom.decode(42) end,
      function(at) at() loom.decode("x", 42) end,
      function(at) at() ex:submit(42) end,
      function(at) at() f:result("1") end,
      function(at) at() ch:pop("1") end,
      function(at) at() loom.channel(-1) end,
      function(at) at() loom.encode() end,
    }
    for i, call in ipairs(calls) do
      local msg = error_at(call)
      assert(msg:find("^bad argument #%d to '[%w_]+' %("), "call #" .. i .. ": " .. msg)
    end
  end)
end)

describe("a task's error about a global", function()
  before_each(function() _G.LOOM_SPEC_CONFIG, _G.loom_spec_helper = nil, nil end)
  after_each(function() _G.LOOM_SPEC_CONFIG, _G.loom_spec_helper = nil, nil end)

  local NOTE = "(loom: each worker has its own globals; '%s' is set only in the state that "
    .. "submitted the task: pass it as an argument or an upvalue, or set it in the executor's init)"

  it("that is set in the submitting state gets a note, the traceback unchanged", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    _G.LOOM_SPEC_CONFIG = { depth = 3 }
    _G.loom_spec_helper = function() return 1 end
    local f = ex:submit(function() return LOOM_SPEC_CONFIG.depth end) -- luacheck: ignore
    local g = ex:submit(function() return loom_spec_helper() end) -- luacheck: ignore
    local err = helpers.string_error(f.result, f, PATIENCE)
    assert.are.equal("attempt to index a nil value (global 'LOOM_SPEC_CONFIG')\n"
      .. NOTE:format("LOOM_SPEC_CONFIG"), err:gsub("^[^\n]-:%d+: ", "", 1))
    err = helpers.string_error(g.result, g, PATIENCE)
    helpers.assert_contains(err, "attempt to call a nil value (global 'loom_spec_helper')\n"
      .. NOTE:format("loom_spec_helper"))
    local value, traceback = f:exception(PATIENCE)
    helpers.assert_contains(value, NOTE:format("LOOM_SPEC_CONFIG"))
    helpers.assert_contains(traceback, "attempt to index a nil value (global 'LOOM_SPEC_CONFIG')\nstack traceback:")
    assert.is_nil(traceback:find("(loom:", 1, true))
  end)

  it("gets the note from a chunked map too", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    _G.LOOM_SPEC_CONFIG = { depth = 3 }
    local err = helpers.string_error(function()
      for _ in ex:map { function() return LOOM_SPEC_CONFIG.depth end, { 1, 2, 3 }, chunksize = 2 } do end -- luacheck: ignore
    end)
    helpers.assert_contains(err, NOTE:format("LOOM_SPEC_CONFIG"))
  end)

  it("that is nil in the submitting state too gets no note", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local f = ex:submit(function() return LOOM_SPEC_CONFIG.depth end) -- luacheck: ignore
    local err = helpers.string_error(f.result, f, PATIENCE)
    helpers.assert_contains(err, "attempt to index a nil value (global 'LOOM_SPEC_CONFIG')")
    assert.is_nil(err:find("(loom:", 1, true))
  end)

  it("that is not a string is left as it is", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    _G.LOOM_SPEC_CONFIG = true
    local f = ex:submit(function()
      error({ text = "attempt to index a nil value (global 'LOOM_SPEC_CONFIG')" })
    end)
    local err = helpers.error_of(f.result, f, PATIENCE)
    assert.are.same({ text = "attempt to index a nil value (global 'LOOM_SPEC_CONFIG')" }, err)
  end)
end)
