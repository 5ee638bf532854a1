-- loom.executor, ex:submit, the workers' environment, and values crossing
-- between states through submit (spec/transfer_spec.lua covers the transfer
-- format itself in depth).

local loom = require "loom"
local helpers = require "spec.support.helpers"

-- The names of this process's threads, one per line (from Linux /proc),
-- or nil after marking the test pending where there is no /proc.
local function thread_names()
  local stat = io.open("/proc/self/stat")
  if not stat then
    pending("needs Linux /proc to read thread names")
    return nil
  end
  local pid = stat:read("l"):match("^(%d+)")
  stat:close()
  local p = assert(io.popen("cat /proc/" .. pid .. "/task/*/comm 2>/dev/null"))
  local names = p:read("a")
  p:close()
  return names
end

describe("loom.cpu_count", function()
  it("returns the number of online processors", function()
    local n = loom.cpu_count()
    assert.are.equal("integer", math.type(n))
    assert.is_true(n >= 1)
    local p = io.popen("getconf _NPROCESSORS_ONLN 2>/dev/null")
    local expected = p and tonumber(p:read("l") or "")
    if p then p:close() end
    if expected then assert.are.equal(expected, n) end
  end)
end)

describe("loom.executor", function()
  it("runs a submitted function and returns its result", function()
    local s = helpers.scope(finally)
    local ex = s:executor { workers = 2 }
    assert.are.equal(5, ex:submit(function(a, b) return a + b end, 1, 4):result())
  end)

  it("runs the function submitted each time, when functions alternate and die", function()
    -- the caller remembers the last function sent; that must never make a
    -- new function, perhaps at a dead one's address, run the old code
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local function twice(x) return 2 * x end
    local function thrice(x) return 3 * x end
    for round = 1, 50 do
      assert.are.equal(2 * round, ex:submit(twice, round):result())
      assert.are.equal(2 * round, ex:submit(twice, round):result())
      assert.are.equal(3 * round, ex:submit(thrice, round):result())
      local fresh = assert(load("return function(x) return x + " .. round .. " end"))()
      assert.are.equal(round + round, ex:submit(fresh, round):result())
      fresh = nil -- luacheck: ignore 311
      collectgarbage()
      local other = assert(load("return function(x) return x - " .. round .. " end"))()
      assert.are.equal(0, ex:submit(other, round):result())
    end
  end)

  it("accepts a number as shorthand for { workers = n }", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    s:block(ex)
    -- With a single worker busy, the next call stays queued.
    local queued = ex:submit(function() return "queued" end)
    assert.is_false(queued:running())
    assert.is_true(queued:cancel())
  end)

  it("starts as many workers as asked for", function()
    local s = helpers.scope(finally)
    local ex = s:executor { workers = 2 }
    -- Both blocking tasks run at the same time (s:block waits for each to start).
    local first, second = s:block(ex), s:block(ex)
    assert.is_true(first:running())
    assert.is_true(second:running())
    local third = ex:submit(function() return 3 end)
    assert.is_true(third:cancel())
  end)

  it("defaults to loom.cpu_count() workers", function()
    local s = helpers.scope(finally)
    local ex = s:executor()
    for _ = 1, loom.cpu_count() do s:block(ex) end
    -- Every worker is busy now, so one more call stays queued.
    local extra = ex:submit(function() return "extra" end)
    assert.is_true(extra:cancel())
  end)

  it("accepts an empty options table", function()
    local s = helpers.scope(finally)
    local ex = s:executor {}
    assert.are.equal("ok", ex:submit(function() return "ok" end):result())
  end)

  describe("rejects invalid options with an argument error:", function()
    local cases = {
      { "workers = 0", { workers = 0 } },
      { "workers = -1", { workers = -1 } },
      { "workers = 1.5", { workers = 1.5 } },
      { "workers = 'two'", { workers = "two" } },
      { "workers = true", { workers = true } },
      { "0 as shorthand", 0 },
      { "-3 as shorthand", -3 },
      { "2.5 as shorthand", 2.5 },
    }
    for _, case in ipairs(cases) do
      it(case[1], function()
        local msg = helpers.string_error(loom.executor, case[2])
        helpers.assert_contains(msg, "workers")
      end)
    end

    it("a string instead of an options table", function()
      helpers.string_error(loom.executor, "four")
    end)

    it("an init that is not a function", function()
      helpers.string_error(loom.executor, { workers = 1, init = 42 })
    end)
  end)

  it("names its worker threads after the name option", function()
    local s = helpers.scope(finally)
    local ex = s:executor { workers = 1, name = "loomspec" }
    s:block(ex)
    local names = thread_names()
    if not names then return end
    local found = false
    for name in names:gmatch("[^\n]+") do
      if name:sub(1, 8) == "loomspec" then found = true end
    end
    assert(found, "no thread named loomspec* among:\n" .. names)
  end)
end)

describe("executor init", function()
  it("runs before the worker's first task", function()
    local s = helpers.scope(finally)
    local ex = s:executor {
      workers = 1,
      init = function() greeting = "set by init" end, -- luacheck: ignore 111
    }
    assert.are.equal("set by init",
      ex:submit(function() return greeting end):result()) -- luacheck: ignore 113
  end)

  it("receives init_args", function()
    local s = helpers.scope(finally)
    local ex = s:executor {
      workers = 1,
      init = function(a, b, c) joined = a .. b .. tostring(c) end, -- luacheck: ignore 111
      init_args = { "hel", "lo", 42 },
    }
    assert.are.equal("hello42",
      ex:submit(function() return joined end):result()) -- luacheck: ignore 113
  end)

  it("runs once per worker, not once per task", function()
    local s = helpers.scope(finally)
    local ex = s:executor {
      workers = 1,
      init = function() init_count = (init_count or 0) + 1 end, -- luacheck: ignore 111 113
    }
    for _ = 1, 5 do
      assert.are.equal(1, ex:submit(function() return init_count end):result()) -- luacheck: ignore 113
    end
  end)

  it("runs in every worker", function()
    local s = helpers.scope(finally)
    local inits = loom.channel()
    local ex = s:executor {
      workers = 2,
      init = function(ch) ch:push("init") end,
      init_args = { inits },
    }
    -- Once both workers are running a task, both have run init.
    s:block(ex)
    s:block(ex)
    s:cleanup()
    assert.are.equal(2, #inits)
  end)
end)

describe("workers", function()
  it("keep their globals across tasks", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    ex:submit(function() remembered = 42 end):result() -- luacheck: ignore 111
    assert.are.equal(42, ex:submit(function() return remembered end):result()) -- luacheck: ignore 113
  end)

  it("have globals of their own, not the creator's", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    -- `describe` and `it` are globals of this spec's environment, not the worker's.
    local d, i, p = ex:submit(function() return describe, it, print end):result()
    assert.is_nil(d)
    assert.is_nil(i)
    assert.is_function(p)
    ex:submit(function() worker_only_global = true end):result() -- luacheck: ignore 111
    assert.is_nil(rawget(_G, "worker_only_global"))
  end)

  it("have the standard libraries open", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local names = ex:submit(function()
      local found = {}
      for _, lib in ipairs { "string", "table", "math", "io", "os", "coroutine",
                             "utf8", "debug", "package" } do
        if type(_G[lib]) == "table" then found[#found + 1] = lib end
      end
      found[#found + 1] = type(require)
      found[#found + 1] = string.format("%d-%s", math.floor(2.5), ("x"):rep(2))
      return found
    end):result()
    assert.are.same({ "string", "table", "math", "io", "os", "coroutine", "utf8",
                      "debug", "package", "function", "2-xx" }, names)
  end)

  it("have the creator's package.path and package.cpath", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local path, cpath = ex:submit(function() return package.path, package.cpath end):result()
    assert.are.equal(package.path, path)
    assert.are.equal(package.cpath, cpath)
  end)

  it("can require loom inside a task", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local kind, n, popped = ex:submit(function()
      local l = require "loom"
      local ch = l.channel()
      ch:push("inside")
      return type(l.executor), l.cpu_count(), ch:pop()
    end):result()
    assert.are.equal("function", kind)
    assert.are.equal(loom.cpu_count(), n)
    assert.are.equal("inside", popped)
  end)

  it("can run an executor of their own inside a task", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local answer = ex:submit(function()
      local l = require "loom"
      local inner <close> = l.executor(1)
      return inner:submit(function(x) return x * 2 end, 21):result()
    end):result()
    assert.are.equal(42, answer)
  end)

  it("fail the future instead of exiting when a task calls os.exit", function()
    -- In a child process, so that a bug cannot end the test run itself.
    local output = helpers.run_lua_ok [[
      local loom = require "loom"
      local ex = loom.executor(1)
      local f = ex:submit(function() os.exit(3) end)
      local ok = pcall(f.result, f)
      print("result raised:", not ok)
      print("exception:", f:exception() ~= nil)
      local g = ex:submit(os.exit, 4)
      print("C function raised:", not pcall(g.result, g))
      print("worker still works:", ex:submit(function() return 7 end):result())
      ex:shutdown()
      print("still alive")
    ]]
    helpers.assert_contains(output, "result raised:\ttrue")
    helpers.assert_contains(output, "exception:\ttrue")
    helpers.assert_contains(output, "C function raised:\ttrue")
    helpers.assert_contains(output, "worker still works:\t7")
    helpers.assert_contains(output, "still alive")
  end)

  it("print whole lines", function()
    local output = helpers.run_lua_ok [[
      local loom = require "loom"
      local ex = loom.executor(2)
      local function shout(letter)
        for _ = 1, 300 do print(string.rep(letter, 70)) end
      end
      local a, b = ex:submit(shout, "a"), ex:submit(shout, "b")
      a:result(); b:result()
      ex:shutdown()
    ]]
    local counts = { a = 0, b = 0 }
    for _, line in ipairs(helpers.lines(output)) do
      local letter = line:sub(1, 1)
      assert(line == string.rep(letter, 70) and counts[letter],
        "interleaved or broken line: " .. line)
      counts[letter] = counts[letter] + 1
    end
    assert.are.same({ a = 300, b = 300 }, counts)
  end)
end)

describe("ex:submit", function()
  it("returns a future at once, before the task runs", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local _, gate = s:block(ex)
    local f = ex:submit(function() return "later" end)
    assert.is_false(f:done())
    gate:close()
    assert.are.equal("later", f:result())
  end)

  it("passes every argument, nils included", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local n, a, b, c, d = ex:submit(function(...)
      return select("#", ...), ...
    end, nil, 2, nil, "four"):result()
    assert.are.equal(4, n)
    assert.is_nil(a)
    assert.are.equal(2, b)
    assert.is_nil(c)
    assert.are.equal("four", d)
  end)

  it("raises an argument error when fn is not a function", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    helpers.assert_contains(helpers.string_error(ex.submit, ex),
      "bad argument #1 to 'submit' (function expected, got nil)")
    helpers.assert_contains(helpers.string_error(ex.submit, ex, 42),
      "bad argument #1 to 'submit' (function expected, got number)")
    helpers.assert_contains(helpers.string_error(function() return ex:submit(nil) end),
      "bad argument #1 to 'submit' (function expected, got nil)")
  end)

  it("runs C functions of the standard libraries", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    assert.are.equal("ababab", ex:submit(string.rep, "ab", 3):result())
    assert.are.equal(4.0, ex:submit(math.sqrt, 16):result())
    assert.are.equal(9, ex:submit(math.max, 3, 9, 1):result())
    assert.are.equal("a,b", ex:submit(table.concat, { "a", "b" }, ","):result())
  end)

  describe("with an argument that cannot be transferred", function()
    it("raises a transfer error naming the argument", function()
      local s = helpers.scope(finally)
      local ex = s:executor(1)
      local err = helpers.loom_error("transfer", ex.submit, ex, function(x) return x end, io.stdout)
      helpers.assert_contains(err.message, "argument #2")
      helpers.assert_contains(err.message, "userdata")
      helpers.assert_contains(tostring(err), "transfer")
      helpers.assert_contains(tostring(err), err.message)
    end)

    it("counts the position among the task's arguments", function()
      local s = helpers.scope(finally)
      local ex = s:executor(1)
      local err = helpers.loom_error("transfer", ex.submit, ex,
        function() end, 1, "two", coroutine.create(print))
      helpers.assert_contains(err.message, "argument #4")
    end)

    it("names the field that holds it", function()
      local s = helpers.scope(finally)
      local ex = s:executor(1)
      local err = helpers.loom_error("transfer", ex.submit, ex,
        function() end, { conn = io.stdout })
      helpers.assert_contains(err.message, "argument #2")
      helpers.assert_contains(err.message, "conn")
      helpers.assert_contains(err.message, "userdata")
    end)

    it("rejects a function with such an upvalue", function()
      local s = helpers.scope(finally)
      local ex = s:executor(1)
      local file = io.stdout
      local err = helpers.loom_error("transfer", ex.submit, ex, function() return file end)
      helpers.assert_contains(err.message, "userdata")
    end)

    it("queues nothing", function()
      local s = helpers.scope(finally)
      local ex = s:executor(1)
      local ran = loom.channel()
      helpers.loom_error("transfer", ex.submit, ex,
        function(ch) ch:push("ran") end, ran, io.stdout)
      ex:shutdown()
      assert.are.equal(0, #ran)
    end)
  end)

  describe("with a result that cannot be transferred", function()
    it("fails the future with a transfer error", function()
      local s = helpers.scope(finally)
      local ex = s:executor(1)
      local f = ex:submit(function() return io.stdout end)
      helpers.loom_error("transfer", f.result, f)
      local g = ex:submit(function() return 1, { co = coroutine.create(print) } end)
      helpers.loom_error("transfer", g.result, g)
      -- The worker carries on.
      assert.are.equal("fine", ex:submit(function() return "fine" end):result())
    end)
  end)
end)

describe("values crossing between states through submit", function()
  local ex
  setup(function() ex = loom.executor(2) end)
  teardown(function() ex:shutdown() end)

  -- Sends the values to a worker and back.
  local function round_trip(...)
    return ex:submit(function(...) return ... end, ...):result()
  end

  it("keep nil and booleans", function()
    assert.are.same({ n = 4, nil, true, false, nil },
      table.pack(round_trip(nil, true, false, nil)))
  end)

  it("keep integers, all 64 bits, apart from floats", function()
    for _, n in ipairs { 0, 1, -1, math.maxinteger, math.mininteger, 0x123456789abcdef } do
      local back = round_trip(n)
      assert.are.equal("integer", math.type(back))
      assert.are.equal(n, back)
    end
    local t1, t2 = ex:submit(function(a, b) return math.type(a), math.type(b) end, 3, 3.0):result()
    assert.are.equal("integer", t1)
    assert.are.equal("float", t2)
    assert.are.equal("float", math.type(round_trip(3.0)))
  end)

  it("keep every bit of floats", function()
    for _, x in ipairs { 0.1, math.pi, -2.5e-300, 2^-1074, 1.7976931348623157e308,
                         math.huge, -math.huge } do
      assert.are.equal(string.pack("<d", x), string.pack("<d", round_trip(x)))
    end
    local nan = round_trip(0 / 0)
    assert.is_true(nan ~= nan)
    assert.are.equal(-math.huge, 1 / round_trip(-0.0))
  end)

  it("keep binary strings of any size", function()
    local bytes = {}
    for b = 0, 255 do bytes[#bytes + 1] = string.char(b) end
    local binary = table.concat(bytes) .. "\0tail\0"
    assert.are.equal(binary, round_trip(binary))
    assert.are.equal("", round_trip(""))
    local big = string.rep("0123456789abcdef", 1 << 16)
    assert.are.equal(big, round_trip(big))
  end)

  it("keep nested tables", function()
    local t = { 1, 2, { 3, { 4, "five" } }, key = { deep = { deeper = true } }, [1.5] = "float key",
                [true] = "boolean key" }
    assert.are.same(t, round_trip(t))
  end)

  it("keep cycles and shared references", function()
    local shared = { "shared" }
    local t = { a = shared, b = shared }
    t.self = t
    local back = round_trip(t)
    assert.is_true(rawequal(back, back.self))
    assert.is_true(rawequal(back.a, back.b))
    assert.are.same({ "shared" }, back.a)
    -- The same table given as two arguments is one table on the other side.
    assert.is_true(ex:submit(function(x, y) return rawequal(x, y) end, shared, shared):result())
  end)

  it("copy metatables", function()
    local point = setmetatable({ x = 1 }, {
      __index = { y = 2 },
      __tostring = function(p) return "point " .. p.x end,
    })
    local y, str = ex:submit(function(p) return p.y, tostring(p) end, point):result()
    assert.are.equal(2, y)
    assert.are.equal("point 1", str)
    local back = round_trip(point)
    assert.are.equal(2, back.y)
    assert.are.equal("point 1", tostring(back))
  end)

  it("copy Lua functions with their upvalues, recursively", function()
    local function adder(n)
      return function(x) return x + n end
    end
    local add5 = adder(5)
    local function twice(x) return add5(add5(x)) end
    assert.are.equal(20, ex:submit(function(f, x) return f(x) end, twice, 10):result())
    local triple = ex:submit(function()
      local k = 3
      return function(x) return x * k end
    end):result()
    assert.are.equal(21, triple(7))
  end)

  it("bind a function's _ENV to the worker's globals", function()
    local d, t = ex:submit(function() return describe, type(string.format) end):result()
    assert.is_nil(d)
    assert.are.equal("function", t)
  end)

  it("carry C functions of the standard libraries both ways", function()
    assert.are.equal("aaa", ex:submit(function(f) return f("a", 3) end, string.rep):result())
    local floor = round_trip(math.floor)
    assert.are.equal(2, floor(2.7))
  end)

  it("are copies: a task changing a table changes its own copy", function()
    local t = { count = 1, list = { 1 } }
    local back = ex:submit(function(x)
      x.count = x.count + 1
      x.list[2] = 2
      return x
    end, t):result()
    assert.are.same({ count = 1, list = { 1 } }, t)
    assert.are.same({ count = 2, list = { 1, 2 } }, back)
  end)

  it("are copies: a task changing an upvalue changes its own copy", function()
    local count = 0
    local got = ex:submit(function() count = count + 1; return count end):result()
    assert.are.equal(1, got)
    assert.are.equal(0, count)
  end)
end)

describe("worker thread names", function()
  it("keep as much of the prefix as fits beside the worker number", function()
    local s = helpers.scope(finally)
    local ex = s:executor { workers = 1, name = "SpecialPool" }
    s:block(ex)
    local ex2 = s:executor { workers = 1, name = "AVeryLongPoolNameIndeed" }
    s:block(ex2)
    local names = thread_names()
    if not names then return end
    helpers.assert_contains(names, "SpecialPool-1\n")
    helpers.assert_contains(names, "AVeryLongPool-1\n")
  end)
end)
