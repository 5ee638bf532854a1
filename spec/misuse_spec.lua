-- Hostile input at the API: every public function and method called with
-- wrong types, out-of-range numbers, the wrong self, and on shut-down
-- executors and closed channels. Each must raise a clear Lua error (a
-- string naming the bad argument, or a loom error table with a `kind`),
-- never crash or hang.

local loom = require "loom"
local helpers = require "spec.support.helpers"

local core = require "loom.core"
local Executor, Future = core.Executor, core.Future
local Channel = getmetatable(loom.channel()).__index
local PATIENCE = helpers.PATIENCE

local NAN = 0 / 0
local SHUTDOWN_MESSAGE = "cannot schedule new futures after shutdown"

-- The name Lua's auxiliary library gives a value's type in its messages
-- (the metatable's __name where there is one, as luaL_typeerror does).
local function luaname(v)
  local mt = getmetatable(v)
  if type(mt) == "table" and type(rawget(mt, "__name")) == "string" then
    return mt.__name
  end
  return type(v)
end

-- A loom error value (a table with a metatable), as a hostile argument.
local function loom_error_value()
  local ch = loom.channel()
  ch:close()
  local _, err = pcall(ch.push, ch, 1)
  return err
end

-- Objects that the hostile values refer to: a finished future, an executor
-- and a channel, cleaned up when the test ends.
local function fixture(finally)
  local s = helpers.scope(finally)
  local fx = { s = s }
  fx.ex = s:executor(1)
  fx.fut = fx.ex:submit(function() return "done" end)
  assert.are.equal("done", fx.fut:result())
  fx.ch = s:channel()
  return fx
end

-- Every kind of value a caller might pass by mistake. `is` names the
-- properties the tests use to pick the wrong ones for each argument.
local HOSTILE = {
  { "nil", function() return nil end, is = { none = true } },
  { "true", function() return true end },
  { "false", function() return false end },
  { "an integer", function() return 42 end, is = { number = true } },
  { "a float", function() return 1.5 end, is = { number = true } },
  { "a string", function() return "text" end },
  { "a numeric string", function() return "2" end },
  { "a table", function() return {} end, is = { table = true } },
  { "a table with a metatable", function() return setmetatable({}, {}) end,
    is = { table = true } },
  { "a callable table", function() return setmetatable({}, { __call = function() end }) end,
    is = { table = true } },
  { "a loom error table", loom_error_value, is = { table = true } },
  { "a Lua function", function() return function() end end, is = { ["function"] = true } },
  { "a C function", function() return print end, is = { ["function"] = true } },
  { "a coroutine", function() return coroutine.create(function() end) end },
  { "a file (userdata)", function() return io.stdout end },
  { "a channel", function(fx) return fx.ch end, is = { channel = true } },
  { "a future", function(fx) return fx.fut end, is = { future = true } },
  { "an executor", function(fx) return fx.ex end, is = { executor = true } },
}

-- Calls body(label, make) for every hostile value that has none of the
-- properties listed in `valid` (e.g. { "function" }).
local function each_wrong(valid, body)
  for _, h in ipairs(HOSTILE) do
    local ok = false
    for _, property in ipairs(valid) do
      if h.is and h.is[property] then ok = true end
    end
    if not ok then body(h[1], h[2]) end
  end
end

local assert_contains = helpers.assert_contains

-- A message without the "file:line: " that error() puts in front.
local function without_position(msg)
  return (msg:gsub("^[^:\n]+:%d+: ", ""))
end

-- Asserts a string error that contains every given fragment.
local function string_error_with(fragments, fn, ...)
  local msg = helpers.string_error(fn, ...)
  for _, fragment in ipairs(fragments) do assert_contains(msg, fragment) end
  return msg
end

-- Asserts a "bad argument" string error or a loom error table with a kind.
local function clear_error(fn, ...)
  local err = helpers.error_of(fn, ...)
  if type(err) == "table" then
    assert.is_string(err.kind)
    assert.is_string(err.message)
  else
    assert.is_string(err)
    assert_contains(err, "bad argument")
  end
  return err
end

---------------------------------------------------------------------------
-- loom.executor
---------------------------------------------------------------------------

describe("misuse: loom.executor", function()
  each_wrong({ "none", "number", "table" }, function(label, make)
    it("rejects " .. label .. " as options", function()
      local fx = fixture(finally)
      local v = make(fx)
      string_error_with({ "bad argument #1 to 'executor' (table or number expected, got "
        .. luaname(v) .. ")" }, function() loom.executor(v) end)
    end)
  end)

  local bad_workers = {
    { "0", 0 }, { "-1", -1 }, { "1.5", 1.5 }, { "math.huge", math.huge },
    { "-math.huge", -math.huge }, { "NaN", NAN }, { "1e300", 1e300 },
    { "math.maxinteger", math.maxinteger }, { "math.mininteger", math.mininteger },
    { "4097", 4097 }, { "2^53", 2.0 ^ 53 }, { "'2'", "2" }, { "'two'", "two" },
    { "true", true }, { "{}", {} }, { "a function", print },
    { "a coroutine", coroutine.create(print) }, { "a file", io.stdout },
  }
  for _, case in ipairs(bad_workers) do
    it("rejects workers = " .. case[1], function()
      string_error_with({ "bad argument #1 to 'executor'", "workers" },
        function() loom.executor { workers = case[2] } end)
    end)
    if type(case[2]) == "number" then
      it("rejects " .. case[1] .. " as the workers shorthand", function()
        string_error_with({ "bad argument #1 to 'executor'", "workers" },
          function() loom.executor(case[2]) end)
      end)
    end
  end

  each_wrong({ "none", "function" }, function(label, make)
    it("rejects init = " .. label, function()
      local fx = fixture(finally)
      local v = make(fx)
      string_error_with({ "bad argument #1 to 'executor'", "init must be a function, got "
        .. luaname(v) }, function() loom.executor { workers = 1, init = v } end)
    end)
  end)

  each_wrong({ "none", "table" }, function(label, make)
    it("rejects init_args = " .. label, function()
      local fx = fixture(finally)
      local v = make(fx)
      string_error_with({ "bad argument #1 to 'executor'", "init_args must be a table, got "
        .. luaname(v) }, function()
        loom.executor { workers = 1, init = function() end, init_args = v }
      end)
    end)
  end)

  each_wrong({ "none" }, function(label, make)
    if label == "a string" or label == "a numeric string" then return end
    it("rejects name = " .. label, function()
      local fx = fixture(finally)
      local v = make(fx)
      string_error_with({ "bad argument #1 to 'executor'", "name must be a string, got "
        .. luaname(v) }, function() loom.executor { workers = 1, name = v } end)
    end)
  end)

  it("rejects init_args holding a value that cannot cross", function()
    local err = helpers.loom_error("transfer", loom.executor, {
      workers = 1, init = function() end, init_args = { 1, coroutine.create(print) },
    })
    assert_contains(err.message, "cannot transfer a coroutine")
  end)

  it("rejects init_args whose length is absurd, instead of breaking the executor", function()
    -- #init_args is math.maxinteger: no executor can take that many init
    -- arguments; the call must fail with an argument error.
    local huge = setmetatable({}, { __len = function() return math.maxinteger end })
    local ok, res = pcall(loom.executor, {
      workers = 1, init = function() end, init_args = huge,
    })
    if ok then res:shutdown() end
    assert(not ok, "loom.executor accepted init_args with #init_args == math.maxinteger")
    assert.is_string(res)
    -- like every other option, it is a fault in argument #1 (the options)
    assert_contains(res, "bad argument #1 to 'executor'")
    assert_contains(res, "init_args")
  end)

  it("rejects init_args whose __len does not return an integer", function()
    local odd = setmetatable({}, { __len = function() return "many" end })
    helpers.string_error(loom.executor, { workers = 1, init = function() end, init_args = odd })
  end)
end)

---------------------------------------------------------------------------
-- loom.channel
---------------------------------------------------------------------------

describe("misuse: loom.channel", function()
  each_wrong({ "none", "number" }, function(label, make)
    if label == "a numeric string" then return end
    it("rejects " .. label .. " as the capacity", function()
      local fx = fixture(finally)
      local v = make(fx)
      string_error_with({ "bad argument #1 to 'channel' (number expected, got "
        .. luaname(v) .. ")" }, function() loom.channel(v) end)
    end)
  end)

  for _, case in ipairs { { "-1", -1 }, { "math.mininteger", math.mininteger } } do
    it("rejects capacity " .. case[1], function()
      string_error_with({ "bad argument #1 to 'channel' (capacity must be >= 0)" },
        function() loom.channel(case[2]) end)
    end)
  end

  for _, case in ipairs {
    { "1.5", 1.5 }, { "math.huge", math.huge }, { "-math.huge", -math.huge },
    { "NaN", NAN }, { "1e300", 1e300 },
  } do
    it("rejects capacity " .. case[1], function()
      string_error_with({ "bad argument #1 to 'channel' (number has no integer representation)" },
        function() loom.channel(case[2]) end)
    end)
  end

  it("accepts capacity math.maxinteger as a working channel", function()
    local ch = loom.channel(math.maxinteger)
    for i = 1, 3 do ch:push(i) end
    assert.are.equal(3, #ch)
    for i = 1, 3 do assert.are.equal(i, ch:pop(0)) end
  end)

  it("takes a numeric string as its number, or rejects it clearly", function()
    local ok, res = pcall(loom.channel, "2")
    if ok then
      res:push(1)
      res:push(2)
      assert.are.equal(2, #res)
    else
      assert_contains(res, "bad argument #1 to 'channel'")
    end
  end)
end)

---------------------------------------------------------------------------
-- loom.wait and loom.as_completed
---------------------------------------------------------------------------

local waiters = {
  wait = function(list, arg) return loom.wait(list, arg) end,
  as_completed = function(list, arg)
    local out = {}
    for f in loom.as_completed(list, arg) do out[#out + 1] = f end
    return out
  end,
}

for _, fname in ipairs { "wait", "as_completed" } do
  local call = waiters[fname]
  describe("misuse: loom." .. fname, function()
    each_wrong({ "table" }, function(label, make)
      it("rejects " .. label .. " as the list of futures", function()
        local fx = fixture(finally)
        local v = make(fx)
        string_error_with({ "bad argument #1 to '" .. fname .. "' (table expected, got "
          .. type(v) .. ")" }, function() call(v) end)
      end)
    end)

    each_wrong({ "none", "future" }, function(label, make)
      it("rejects " .. label .. " as an element", function()
        local fx = fixture(finally)
        local v = make(fx)
        string_error_with({ "bad argument #1 to '" .. fname .. "' (element #1 is not a future)" },
          function() call { v, fx.fut } end)
        string_error_with({ "bad argument #1 to '" .. fname .. "' (element #2 is not a future)" },
          function() call { fx.fut, v } end)
      end)
    end)

    it("rejects a table that only looks like a future", function()
      local fx = fixture(finally)
      local fake = setmetatable({}, { __index = {
        done = function() return true end,
        cancelled = function() return false end,
        result = function() return 1 end,
      } })
      string_error_with({ "bad argument #1 to '" .. fname .. "' (element #2 is not a future)" },
        function() call { fx.fut, fake } end)
    end)

    it("accepts an empty list", function()
      if fname == "wait" then
        local done, not_done = loom.wait {}
        assert.are.same({}, done)
        assert.are.same({}, not_done)
      else
        assert.are.same({}, call {})
      end
    end)
  end)
end

describe("misuse: loom.wait options", function()
  each_wrong({ "none", "table" }, function(label, make)
    it("rejects " .. label .. " as the options", function()
      local fx = fixture(finally)
      local v = make(fx)
      string_error_with({ "bad argument #2 to 'wait' (table expected, got " .. luaname(v) .. ")" },
        function() loom.wait({ fx.fut }, v) end)
    end)
  end)

  each_wrong({ "none", "number" }, function(label, make)
    it("rejects timeout = " .. label, function()
      local fx = fixture(finally)
      local v = make(fx)
      string_error_with({ "bad argument #2 to 'wait' (timeout must be a number of seconds, got "
        .. luaname(v) }, function() loom.wait({ fx.fut }, { timeout = v }) end)
    end)
  end)

  it("rejects timeout = NaN", function()
    local fx = fixture(finally)
    string_error_with({ "bad argument #2 to 'wait' (timeout must not be NaN)" },
      function() loom.wait({ fx.fut }, { timeout = NAN }) end)
  end)

  for _, case in ipairs {
    { "'sometimes'", "sometimes" }, { "'FIRST_COMPLETED'", "FIRST_COMPLETED" }, { "''", "" },
    { "42", 42 }, { "true", true }, { "{}", {} }, { "a function", print },
  } do
    it("rejects return_when = " .. case[1], function()
      local fx = fixture(finally)
      string_error_with({ "bad argument #2 to 'wait'", "return_when" },
        function() loom.wait({ fx.fut }, { return_when = case[2] }) end)
    end)
  end

  it("treats a negative timeout as zero", function()
    local fx = fixture(finally)
    local blocked = fx.s:block(fx.ex)
    for _, t in ipairs { -1, -math.huge, math.mininteger } do
      local done, not_done = loom.wait({ fx.fut, blocked }, { timeout = t })
      helpers.assert_same_set({ fx.fut }, done)
      helpers.assert_same_set({ blocked }, not_done)
    end
  end)

  it("waits as long as needed with a huge timeout", function()
    local fx = fixture(finally)
    for _, t in ipairs { math.huge, 1e300, math.maxinteger } do
      local done, not_done = loom.wait({ fx.fut }, { timeout = t })
      helpers.assert_same_set({ fx.fut }, done)
      assert.are.same({}, not_done)
    end
  end)
end)

describe("misuse: loom.as_completed timeout", function()
  each_wrong({ "none", "number" }, function(label, make)
    it("rejects " .. label, function()
      local fx = fixture(finally)
      local v = make(fx)
      string_error_with({ "bad argument #2 to 'as_completed' (number expected, got "
        .. type(v) .. ")" }, function() loom.as_completed({ fx.fut }, v) end)
    end)
  end)

  it("rejects NaN", function()
    local fx = fixture(finally)
    string_error_with({ "bad argument #2 to 'as_completed' (timeout is NaN)" },
      function() loom.as_completed({ fx.fut }, NAN) end)
  end)

  it("treats a negative timeout as zero", function()
    local fx = fixture(finally)
    local blocked = fx.s:block(fx.ex)
    local seen = {}
    local err = helpers.loom_error("timeout", function()
      for f in loom.as_completed({ fx.fut, blocked }, -1) do seen[#seen + 1] = f end
    end)
    assert_contains(err.message, "1 (of 2) futures unfinished")
    helpers.assert_same_set({ fx.fut }, seen)
  end)

  it("accepts a huge timeout", function()
    local fx = fixture(finally)
    for _, t in ipairs { math.huge, 1e300, math.maxinteger } do
      local seen = {}
      for f in loom.as_completed({ fx.fut, fx.fut }, t) do seen[#seen + 1] = f end
      helpers.assert_same_set({ fx.fut }, seen)
    end
  end)
end)

---------------------------------------------------------------------------
-- ex:submit
---------------------------------------------------------------------------

describe("misuse: ex:submit", function()
  each_wrong({ "function" }, function(label, make)
    it("rejects " .. label .. " as the function", function()
      local fx = fixture(finally)
      local v = make(fx)
      local msg = string_error_with({}, function() fx.ex:submit(v) end)
      assert.are.equal("bad argument #1 to 'submit' (function expected, got " .. type(v) .. ")",
        without_position(msg))
    end)
  end)

  it("rejects a missing function with the documented message", function()
    local fx = fixture(finally)
    local msg = helpers.string_error(function() fx.ex:submit() end)
    assert.are.equal("bad argument #1 to 'submit' (function expected, got nil)",
      without_position(msg))
  end)

  each_wrong({ "executor" }, function(label, make)
    it("rejects " .. label .. " as self", function()
      local fx = fixture(finally)
      local v = make(fx)
      string_error_with({ "bad argument #1 to 'submit' (loom.Executor expected, got "
        .. luaname(v) .. ")" }, function() Executor.submit(v, function() end) end)
    end)
  end)

  it("names the type in ex.submit(fut, f)", function()
    local fx = fixture(finally)
    local msg = helpers.string_error(function() fx.ex.submit(fx.fut, print) end)
    assert_contains(msg, "bad argument #1 to 'submit' (loom.Executor expected, got loom.Future)")
  end)

  for _, case in ipairs {
    { "a coroutine", function() return coroutine.create(print) end, "argument #2: cannot transfer a coroutine" },
    { "a file", function() return io.stdout end, "argument #2: cannot transfer a userdata" },
    { "a future", function(fx) return fx.fut end, "argument #2: cannot transfer a userdata" },
    { "an executor", function(fx) return fx.ex end, "argument #2: cannot transfer a userdata" },
    { "a table holding a file", function() return { conn = io.stdout } end,
      "argument #2: field 'conn': cannot transfer a userdata" },
  } do
    it("raises a transfer error for " .. case[1] .. " as an argument, and queues nothing", function()
      local fx = fixture(finally)
      local ran = fx.s:channel()
      local err = helpers.loom_error("transfer", function()
        fx.ex:submit(function(c) c:push("ran") end, ran, case[2](fx))
      end)
      -- the message names the argument after the channel: shift by one
      local expected = case[3]:gsub("argument #2", "argument #3")
      assert_contains(err.message, expected)
      fx.ex:shutdown()
      assert.are.equal(0, #ran)
    end)
  end

  it("raises a transfer error for a C function that is not a library's", function()
    local fx = fixture(finally)
    local err = helpers.loom_error("transfer", function()
      fx.ex:submit(coroutine.wrap(function() end))
    end)
    assert_contains(err.message, "cannot transfer a C function")
  end)

  it("raises a transfer error for an upvalue that cannot cross", function()
    local fx = fixture(finally)
    local co = coroutine.create(print)
    local err = helpers.loom_error("transfer", function()
      fx.ex:submit(function() return co end)
    end)
    assert_contains(err.message, "upvalue 'co': cannot transfer a coroutine")
  end)

  it("raises a shutdown error on a shut-down executor", function()
    local fx = fixture(finally)
    fx.ex:shutdown()
    local err = helpers.loom_error("shutdown", function() fx.ex:submit(print) end)
    assert.are.equal(SHUTDOWN_MESSAGE, err.message)
  end)
end)

---------------------------------------------------------------------------
-- ex:map
---------------------------------------------------------------------------

local function drain_map(...)
  local out = {}
  for i, v in ... do out[i] = v end
  return out
end

describe("misuse: ex:map", function()
  each_wrong({ "function", "table" }, function(label, make)
    it("rejects " .. label .. " as the function", function()
      local fx = fixture(finally)
      local v = make(fx)
      string_error_with({ "bad argument #1 to 'map' (function expected, got " .. type(v) .. ")" },
        function() fx.ex:map(v, { 1 }) end)
    end)
  end)

  it("rejects a callable table as the function", function()
    local fx = fixture(finally)
    string_error_with({ "bad argument #1 to 'map' (function expected, got table)" },
      function() fx.ex:map(setmetatable({}, { __call = print }), { 1 }) end)
  end)

  it("rejects an options table without a function", function()
    local fx = fixture(finally)
    string_error_with({ "bad argument #1 to 'map' (function expected, got nil)" },
      function() fx.ex:map {} end)
    string_error_with({ "bad argument #1 to 'map' (function expected, got number)" },
      function() fx.ex:map { 42, { 1 } } end)
  end)

  each_wrong({ "table" }, function(label, make)
    it("rejects " .. label .. " as a sequence", function()
      local fx = fixture(finally)
      local v = make(fx)
      local f = function(x) return x end
      string_error_with({ "bad argument #2 to 'map' (table expected, got " .. type(v) .. ")" },
        function() fx.ex:map(f, v) end)
      string_error_with({ "bad argument #3 to 'map' (table expected, got " .. type(v) .. ")" },
        function() fx.ex:map(f, { 1 }, v) end)
      if v ~= nil then   -- { f, nil } has no sequence at all: see below
        string_error_with({ "bad argument #2 to 'map' (table expected, got " .. type(v) .. ")" },
          function() fx.ex:map { f, v } end)
      end
    end)
  end)

  it("rejects a call without sequences", function()
    local fx = fixture(finally)
    local f = function(x) return x end
    string_error_with({ "bad argument #2 to 'map' (table expected, got no value)" },
      function() fx.ex:map(f) end)
    string_error_with({ "bad argument #2 to 'map' (table expected, got no value)" },
      function() fx.ex:map { f } end)
  end)

  for _, case in ipairs {
    { "0", 0 }, { "-1", -1 }, { "1.5", 1.5 }, { "'2'", "2" }, { "true", true }, { "{}", {} },
    { "math.huge", math.huge }, { "NaN", NAN }, { "math.mininteger", math.mininteger },
  } do
    it("rejects chunksize = " .. case[1], function()
      local fx = fixture(finally)
      string_error_with({ "bad argument #1 to 'map'", "chunksize" },
        function() fx.ex:map { function(x) return x end, { 1, 2 }, chunksize = case[2] } end)
    end)
  end

  it("accepts chunksize = math.maxinteger as one chunk", function()
    local fx = fixture(finally)
    local out = drain_map(fx.ex:map { function(x) return x * 2 end, { 1, 2, 3 },
      chunksize = math.maxinteger })
    assert.are.same({ 2, 4, 6 }, out)
  end)

  each_wrong({ "none", "number" }, function(label, make)
    it("rejects timeout = " .. label, function()
      local fx = fixture(finally)
      local v = make(fx)
      string_error_with({ "bad argument #1 to 'map' (timeout must be a number of seconds, got "
        .. luaname(v) }, function() fx.ex:map { function(x) return x end, { 1 }, timeout = v } end)
    end)
  end)

  it("rejects timeout = NaN", function()
    local fx = fixture(finally)
    string_error_with({ "bad argument #1 to 'map' (timeout must not be NaN)" },
      function() fx.ex:map { function(x) return x end, { 1 }, timeout = NAN } end)
  end)

  it("raises a timeout error at once with a negative timeout on a busy executor", function()
    local fx = fixture(finally)
    fx.s:block(fx.ex)
    helpers.loom_error("timeout", function()
      drain_map(fx.ex:map { function(x) return x end, { 1, 2, 3 }, timeout = -1 })
    end)
  end)

  it("accepts a huge timeout", function()
    local fx = fixture(finally)
    local out = drain_map(fx.ex:map { function(x) return x + 1 end, { 1, 2 }, timeout = math.huge })
    assert.are.same({ 2, 3 }, out)
  end)

  each_wrong({ "executor" }, function(label, make)
    it("rejects " .. label .. " as self", function()
      local fx = fixture(finally)
      local v = make(fx)
      string_error_with({ "bad argument #1 to 'map'", "loom.Executor expected" },
        function() Executor.map(v, function(x) return x end, { 1 }) end)
    end)
  end)

  it("raises a transfer error naming the element that cannot cross", function()
    local fx = fixture(finally)
    local err = helpers.loom_error("transfer", function()
      fx.ex:map(function(x) return x end, { 1, coroutine.create(print) })
    end)
    assert_contains(err.message, "element 2 of sequence #1: cannot transfer a coroutine")
  end)

  it("raises a transfer error naming the element that cannot cross, in chunks", function()
    local fx = fixture(finally)
    local err = helpers.loom_error("transfer", function()
      fx.ex:map { function(x) return x end, { 1, 2, coroutine.create(print) }, chunksize = 2 }
    end)
    assert_contains(err.message, "element 3 of sequence #1: cannot transfer a coroutine")
    err = helpers.loom_error("transfer", function()
      fx.ex:map { function(x, y) return x, y end, { 1, 2, 3 }, { 4, { coroutine.create(print) }, 6 },
                  chunksize = 2 }
    end)
    assert_contains(err.message, "element 2 of sequence #2: index 1: cannot transfer a coroutine")
    assert.are.equal(3, fx.ex:submit(function() return 3 end):result())
  end)

  it("raises a transfer error naming the mapped function when it cannot cross", function()
    local fx = fixture(finally)
    local co = coroutine.create(print)
    local err = helpers.loom_error("transfer", function()
      fx.ex:map(function() return co end, { 1 })
    end)
    assert_contains(err.message, "the function: upvalue 'co': cannot transfer a coroutine")
  end)

  for _, chunksize in ipairs { 1, 2 } do
    it("propagates an error raised by a sequence's __len or __index (chunksize "
       .. chunksize .. ")", function()
      local fx = fixture(finally)
      local f = function(x) return x end
      local bad_len = setmetatable({}, { __len = function() error("len boom", 0) end })
      local bad_index = setmetatable({}, {
        __len = function() return 4 end,
        __index = function(_, k) if k == 3 then error("index boom", 0) end return k end,
      })
      assert.are.equal("len boom", helpers.error_of(function()
        fx.ex:map { f, bad_len, chunksize = chunksize }
      end))
      assert.are.equal("index boom", helpers.error_of(function()
        fx.ex:map { f, bad_index, chunksize = chunksize }
      end))
      assert.are.equal(5, fx.ex:submit(function() return 5 end):result())
    end)
  end

  it("raises a shutdown error on a shut-down executor", function()
    local fx = fixture(finally)
    fx.ex:shutdown()
    local err = helpers.loom_error("shutdown", function() fx.ex:map(print, { 1 }) end)
    assert.are.equal(SHUTDOWN_MESSAGE, err.message)
    err = helpers.loom_error("shutdown", function() fx.ex:map { print, { 1 }, chunksize = 2 } end)
    assert.are.equal(SHUTDOWN_MESSAGE, err.message)
  end)
end)

---------------------------------------------------------------------------
-- ex:shutdown and ex:close
---------------------------------------------------------------------------

describe("misuse: ex:shutdown and ex:close", function()
  each_wrong({ "none", "table" }, function(label, make)
    it("rejects " .. label .. " as the options", function()
      local fx = fixture(finally)
      local v = make(fx)
      string_error_with({ "bad argument #1 to 'shutdown' (table expected, got "
        .. luaname(v) .. ")" }, function() fx.ex:shutdown(v) end)
    end)
  end)

  for _, field in ipairs { "wait", "cancel_futures" } do
    for _, case in ipairs { { "1", 1 }, { "'yes'", "yes" }, { "{}", {} }, { "a function", print } } do
      it("rejects " .. field .. " = " .. case[1] .. " and leaves the executor working", function()
        local fx = fixture(finally)
        local msg = helpers.string_error(function() fx.ex:shutdown { [field] = case[2] } end)
        assert_contains(msg, "bad argument #1 to 'shutdown' (" .. field .. " must be a boolean, got "
          .. luaname(case[2]))
        assert.are.equal(7, fx.ex:submit(function() return 7 end):result())
      end)
    end
  end

  for _, method in ipairs { "shutdown", "close" } do
    each_wrong({ "executor" }, function(label, make)
      it("rejects " .. label .. " as self of " .. method, function()
        local fx = fixture(finally)
        local v = make(fx)
        string_error_with({ "bad argument #1", "loom.Executor expected, got " .. luaname(v) },
          function() Executor[method](v) end)
      end)
    end)
  end

  it("is harmless on a shut-down executor", function()
    local fx = fixture(finally)
    fx.ex:shutdown()
    fx.ex:shutdown()
    fx.ex:shutdown { wait = false, cancel_futures = true }
    fx.ex:close()
    assert_contains(tostring(fx.ex), "shut down")
    helpers.loom_error("shutdown", function() fx.ex:submit(print) end)
  end)
end)

---------------------------------------------------------------------------
-- Futures
---------------------------------------------------------------------------

describe("misuse: future methods", function()
  for _, method in ipairs { "result", "exception", "cancel", "cancelled", "running", "done",
                            "add_done_callback" } do
    each_wrong({ "future" }, function(label, make)
      it("rejects " .. label .. " as self of " .. method, function()
        local fx = fixture(finally)
        local v = make(fx)
        string_error_with({ "bad argument #1", "loom.Future expected, got " .. luaname(v) },
          function() Future[method](v, function() end) end)
      end)
    end)
  end

  it("names the type in fut.result(ex)", function()
    local fx = fixture(finally)
    local msg = helpers.string_error(function() fx.fut.result(fx.ex) end)
    assert_contains(msg, "bad argument #1 to 'result' (loom.Future expected, got loom.Executor)")
  end)

  for _, method in ipairs { "result", "exception" } do
    each_wrong({ "none", "number" }, function(label, make)
      it("rejects " .. label .. " as the timeout of " .. method, function()
        local fx = fixture(finally)
        local v = make(fx)
        string_error_with({ "bad argument #1 to '" .. method .. "' (number expected, got "
          .. luaname(v) .. ")" }, function()
          if method == "result" then fx.fut:result(v) else fx.fut:exception(v) end
        end)
      end)
    end)

    it("rejects a NaN timeout in " .. method, function()
      local fx = fixture(finally)
      string_error_with({ "bad argument #1 to '" .. method .. "' (timeout is NaN)" },
        function()
          if method == "result" then fx.fut:result(NAN) else fx.fut:exception(NAN) end
        end)
    end)

    it("raises a timeout error at once for a negative timeout in " .. method, function()
      local fx = fixture(finally)
      local blocked = fx.s:block(fx.ex)
      for _, t in ipairs { -1, -0.5, -math.huge, math.mininteger } do
        helpers.loom_error("timeout", function() blocked[method](blocked, t) end)
      end
    end)

    it("accepts a huge timeout in " .. method, function()
      local fx = fixture(finally)
      for _, t in ipairs { math.huge, 1e300, math.maxinteger } do
        local r = fx.fut[method](fx.fut, t)
        if method == "result" then assert.are.equal("done", r) else assert.is_nil(r) end
      end
    end)

  end

  each_wrong({ "function" }, function(label, make)
    it("rejects " .. label .. " as a done callback", function()
      local fx = fixture(finally)
      local v = make(fx)
      string_error_with({ "bad argument #1 to 'add_done_callback' (function expected, got "
        .. luaname(v) .. ")" }, function() fx.fut:add_done_callback(v) end)
    end)
  end)

  it("rejects a missing done callback", function()
    local fx = fixture(finally)
    string_error_with({ "bad argument #1 to 'add_done_callback' (function expected, got no value)" },
      function() fx.fut:add_done_callback() end)
  end)

  it("raises cancelled errors, and harmlessly repeats cancel, on a cancelled future", function()
    local fx = fixture(finally)
    fx.s:block(fx.ex)
    local f = fx.ex:submit(function() return 1 end)
    assert.is_true(f:cancel())
    assert.is_true(f:cancel())
    helpers.loom_error("cancelled", function() f:result() end)
    helpers.loom_error("cancelled", function() f:result(0) end)
    helpers.loom_error("cancelled", function() f:exception(-1) end)
    local called = 0
    f:add_done_callback(function(g) assert.are.equal(f, g) called = called + 1 end)
    assert.are.equal(1, called)
  end)
end)

---------------------------------------------------------------------------
-- Channels
---------------------------------------------------------------------------

describe("misuse: channel methods", function()
  for _, method in ipairs { "push", "pop", "close" } do
    each_wrong({ "channel" }, function(label, make)
      it("rejects " .. label .. " as self of " .. method, function()
        local fx = fixture(finally)
        local v = make(fx)
        string_error_with({ "bad argument #1", "loom.Channel expected, got " .. luaname(v) },
          function() Channel[method](v, 1) end)
      end)
    end)
  end

  it("names the type in ch.push(ex, 1)", function()
    local fx = fixture(finally)
    local msg = helpers.string_error(function() fx.ch.push(fx.ex, 1) end)
    assert_contains(msg, "bad argument #1 to 'push' (loom.Channel expected, got loom.Executor)")
  end)

  it("rejects pushing nil", function()
    local fx = fixture(finally)
    string_error_with({ "bad argument #1 to 'push' (cannot push nil)" },
      function() fx.ch:push(nil) end)
    string_error_with({ "bad argument #1 to 'push' (cannot push nil)" },
      function() fx.ch:push() end)
    assert.are.equal(0, #fx.ch)
  end)

  for _, case in ipairs {
    { "a coroutine", function() return coroutine.create(print) end, "cannot transfer a coroutine" },
    { "a file", function() return io.stdout end, "cannot transfer a userdata" },
    { "a future", function(fx) return fx.fut end, "cannot transfer a userdata" },
    { "an executor", function(fx) return fx.ex end, "cannot transfer a userdata" },
    { "a table holding a coroutine", function() return { 1, { co = coroutine.create(print) } } end,
      "cannot transfer a coroutine" },
  } do
    it("raises a transfer error when pushing " .. case[1] .. ", and pushes nothing", function()
      local fx = fixture(finally)
      local err = helpers.loom_error("transfer", function() fx.ch:push(case[2](fx)) end)
      assert_contains(err.message, case[3])
      assert.are.equal(0, #fx.ch)
    end)
  end

  each_wrong({ "none", "number" }, function(label, make)
    it("rejects " .. label .. " as the pop timeout", function()
      local fx = fixture(finally)
      local v = make(fx)
      string_error_with({ "bad argument #1 to 'pop' (number expected, got " .. luaname(v) .. ")" },
        function() fx.ch:pop(v) end)
    end)
  end)

  it("rejects a NaN pop timeout", function()
    local fx = fixture(finally)
    string_error_with({ "bad argument #1 to 'pop' (timeout is NaN)" },
      function() fx.ch:pop(NAN) end)
  end)

  it("times out at once with a negative pop timeout", function()
    local fx = fixture(finally)
    for _, t in ipairs { -1, -math.huge, math.mininteger } do
      local v, why = fx.ch:pop(t)
      assert.is_nil(v)
      assert.are.equal("timeout", why)
    end
  end)

  it("pops a waiting value with a huge timeout", function()
    local fx = fixture(finally)
    for _, t in ipairs { math.huge, 1e300, math.maxinteger } do
      fx.ch:push(t)
      assert.are.equal(t, fx.ch:pop(t))
    end
  end)

  it("frees a channel pushed into itself (checked by the sanitizer run)", function()
    -- A channel holding a message that refers to it is a reference cycle;
    -- the program's end must still free it. Under `make asan` the child's
    -- leak checker reports it on stderr otherwise.
    local reliability = require "spec.support.reliability"
    local r = reliability.run [[
      local loom = require "loom"
      local a, b = loom.channel(), loom.channel()
      a:push(a)
      a:push { a, a }
      a:push(b)
      b:push(a)          -- a and b refer to each other
      local c = loom.channel()
      c:push(c)
      c:close()          -- closed with itself inside
      print(#a, #b, #c)
    ]]
    reliability.assert_clean_exit(r)
    assert.are.equal("3\t1\t1\n", r.stdout)
  end)

  it("raises a closed error when pushing into a closed channel", function()
    local fx = fixture(finally)
    fx.ch:push("kept")
    fx.ch:close()
    local err = helpers.loom_error("closed", function() fx.ch:push("late") end)
    assert.are.equal("the channel is closed", err.message)
    assert_contains(tostring(err), "closed")
    assert.are.equal(1, #fx.ch)
    assert.are.equal("kept", fx.ch:pop())
    for _, t in ipairs { nil, 0, 1, -1, math.huge } do
      local v, why = fx.ch:pop(t)
      assert.is_nil(v)
      assert.are.equal("closed", why)
    end
    fx.ch:close()   -- closing twice is harmless
    assert.are.equal(0, #fx.ch)
    -- argument checks still come first on a closed channel
    string_error_with({ "cannot push nil" }, function() fx.ch:push(nil) end)
  end)
end)

---------------------------------------------------------------------------
-- loom.encode and loom.decode
---------------------------------------------------------------------------

describe("misuse: loom.encode", function()
  it("rejects a missing value", function()
    string_error_with({ "bad argument #1 to 'encode' (value expected)" },
      function() loom.encode() end)
  end)

  for _, case in ipairs {
    { "a coroutine", function() return coroutine.create(print) end, "cannot transfer a coroutine" },
    { "a file", function() return io.stdout end, "cannot transfer a userdata" },
    { "a future", function(fx) return fx.fut end, "cannot transfer a userdata" },
    { "an executor", function(fx) return fx.ex end, "cannot transfer a userdata" },
    { "a channel", function(fx) return fx.ch end, "channel" },
    { "a table holding a coroutine", function() return { a = { b = coroutine.create(print) } } end,
      "cannot transfer a coroutine" },
    { "a function whose upvalue is a coroutine", function()
      local co = coroutine.create(print)
      return function() return co end
    end, "cannot transfer a coroutine" },
  } do
    it("raises a transfer error for " .. case[1], function()
      local fx = fixture(finally)
      local err = helpers.loom_error("transfer", function() loom.encode(case[2](fx)) end)
      assert_contains(err.message, case[3])
    end)
  end

  it("gives a short message for a structure nested too deeply", function()
    local deep = {}
    local cur = deep
    for _ = 1, 1000000 do
      cur[1] = {}
      cur = cur[1]
    end
    local err = helpers.loom_error("transfer", function() loom.encode(deep) end)
    assert_contains(err.message, "nesting")
    assert(#err.message <= 2000, string.format(
      "the message is %d bytes long; it starts: %s", #err.message, err.message:sub(1, 120)))
  end)
end)

describe("misuse: loom.decode", function()
  each_wrong({ "number" }, function(label, make)
    if label == "a string" or label == "a numeric string" then return end
    it("rejects " .. label, function()
      local fx = fixture(finally)
      local v = make(fx)
      string_error_with({ "bad argument #1 to 'decode' (string expected, got "
        .. (v == nil and "nil" or luaname(v)) .. ")" }, function() loom.decode(v) end)
    end)
  end)

  it("rejects a missing value", function()
    string_error_with({ "bad argument #1 to 'decode' (string expected, got no value)" },
      function() loom.decode() end)
  end)

  it("rejects a number clearly (as a bad argument or a malformed message)", function()
    for _, v in ipairs { 42, 1.5, NAN, math.huge } do
      clear_error(function() loom.decode(v) end)
    end
  end)

  each_wrong({ "none", "table" }, function(label, make)
    it("rejects " .. label .. " as the options", function()
      local fx = fixture(finally)
      local v = make(fx)
      string_error_with({ "bad argument #2 to 'decode' (table expected, got "
        .. luaname(v) .. ")" }, function() loom.decode(loom.encode(1), v) end)
    end)
  end)

  it("rejects malformed strings with a transfer error", function()
    local good = loom.encode { 1, "two", { 3 } }
    for _, s in ipairs { "", "x", "garbage that is not a message", good:sub(1, #good - 1),
                         good .. "extra", string.rep("\255", 64), string.rep("\0", 64) } do
      local err = helpers.loom_error("transfer", function() loom.decode(s) end)
      assert.is_true(#err.message > 0)
    end
  end)
end)

---------------------------------------------------------------------------
-- Metamethods called by hand, and finalized handles
---------------------------------------------------------------------------

describe("misuse: metamethods called by hand", function()
  local cases = {
    { "executor", "__close", function(fx) return fx.ex end, "loom.Executor" },
    { "executor", "__gc", function(fx) return fx.ex end, "loom.Executor" },
    { "executor", "__tostring", function(fx) return fx.ex end, "loom.Executor" },
    { "future", "__gc", function(fx) return fx.fut end, "loom.Future" },
    { "future", "__tostring", function(fx) return fx.fut end, "loom.Future" },
    { "channel", "__gc", function(fx) return fx.ch end, "loom.Channel" },
    { "channel", "__len", function(fx) return fx.ch end, "loom.Channel" },
    { "channel", "__tostring", function(fx) return fx.ch end, "loom.Channel" },
  }
  for _, case in ipairs(cases) do
    it(case[2] .. " of a " .. case[1] .. " rejects the wrong self", function()
      local fx = fixture(finally)
      local mm = getmetatable(case[3](fx))[case[2]]
      for _, v in ipairs { 1, "s", {}, io.stdout, fx.ex, fx.fut, fx.ch } do
        if getmetatable(v) ~= getmetatable(case[3](fx)) then
          string_error_with({ "bad argument #1", case[4] .. " expected" },
            function() mm(v) end)
        end
      end
    end)
  end

  it("leaves a finalized future raising clear errors", function()
    local fx = fixture(finally)
    local f = fx.ex:submit(function() return 1 end)
    f:result()
    getmetatable(f).__gc(f)
    getmetatable(f).__gc(f)   -- twice is harmless
    for _, method in ipairs { "result", "exception", "cancel", "done", "running", "cancelled" } do
      string_error_with({ "future is not initialised" }, function() f[method](f) end)
    end
    string_error_with({ "element #1 is not a future" }, function() loom.wait { f } end)
  end)

  it("leaves a finalized channel raising clear errors", function()
    local fx = fixture(finally)
    local ch = loom.channel()
    ch:push(1)
    getmetatable(ch).__gc(ch)
    getmetatable(ch).__gc(ch)
    string_error_with({ "channel is not initialised" }, function() ch:push(2) end)
    string_error_with({ "channel is not initialised" }, function() ch:pop(0) end)
    string_error_with({ "channel is not initialised" }, function() ch:close() end)
    string_error_with({ "channel is not initialised" }, function() return #ch end)
    -- submitting it fails cleanly
    clear_error(function() fx.ex:submit(print, ch) end)
  end)

  it("leaves a finalized executor shut down, its futures still resolved", function()
    local ex = loom.executor(1)
    local futs = {}
    for i = 1, 10 do futs[i] = ex:submit(function(x) return x * 2 end, i) end
    getmetatable(ex).__gc(ex)   -- waits, like shutdown{wait = true}
    getmetatable(ex).__gc(ex)
    for i = 1, 10 do assert.are.equal(i * 2, futs[i]:result()) end
    -- as after shutdown (CPython: test_submit_after_interpreter_shutdown)
    helpers.loom_error("shutdown", function() ex:submit(print) end)
    helpers.loom_error("shutdown", function() ex:map(print, { 1 }) end)
    ex:shutdown()
    ex:close()
    assert.are.equal(1, ex:workers())
  end)
end)

---------------------------------------------------------------------------
-- Internal methods reachable from Lua
---------------------------------------------------------------------------

describe("misuse: internal methods reachable from Lua", function()
  -- Not part of the API, but any Lua code can call them: hostile calls
  -- must raise clean errors (or return), never crash.
  local function clean(fn, ...)
    local ok, err = pcall(fn, ...)
    if not ok then
      assert(type(err) == "string" or (type(err) == "table" and type(err.kind) == "string"),
        "unclear error: " .. tostring(err))
    end
  end

  it("survive wrong arguments", function()
    local fx = fixture(finally)
    local ex, fut = fx.ex, fx.fut
    for name, fn in pairs(Executor) do
      if type(name) == "string" and name:sub(1, 1) == "_" then
        clean(fn, ex)
        clean(fn, ex, type)
        clean(fn, ex, type, 1, 10)
        clean(fn, ex, type, 5, 1, {})
        clean(fn, ex, type, -5, math.maxinteger, {})
        clean(fn, ex, type, 1, 3, { 1, 2, 3 }, "not a table")
        clean(fn, ex, type, 1, 3, { 1, 2, 3 }, io.stdout)
        clean(fn, fut, type, 1, 1, { 1 })
        clean(fn, nil)
      end
    end
    for name, fn in pairs(Future) do
      if type(name) == "string" and name:sub(1, 1) == "_" then
        clean(fn, fut)
        clean(fn, fut, NAN)
        clean(fn, fut, "x")
        clean(fn, ex)
        clean(fn, nil)
      end
    end
    assert.are.equal(9, ex:submit(function() return 9 end):result())
  end)
end)

---------------------------------------------------------------------------
-- Huge counts
---------------------------------------------------------------------------

describe("misuse: huge counts", function()
  it("passes 200,000 arguments to a task and back", function()
    local fx = fixture(finally)
    local args = {}
    for i = 1, 200000 do args[i] = i end
    local f = fx.ex:submit(function(...)
      return select("#", ...), select(200000, ...), ...
    end, table.unpack(args))
    local r = table.pack(f:result())
    assert.are.equal(200002, r.n)
    assert.are.equal(200000, r[1])
    assert.are.equal(200000, r[2])
    assert.are.equal(200000, r[r.n])
  end)

  it("yields a future listed 100,000 times once", function()
    local fx = fixture(finally)
    local list = {}
    for i = 1, 100000 do list[i] = fx.fut end
    local seen = 0
    for f in loom.as_completed(list) do
      assert.are.equal(fx.fut, f)
      seen = seen + 1
    end
    assert.are.equal(1, seen)
    local done, not_done = loom.wait(list)
    assert.are.same({ fx.fut }, done)
    assert.are.same({}, not_done)
  end)

  it("handles a task that raises a huge error message", function()
    local fx = fixture(finally)
    local f = fx.ex:submit(function() error(string.rep("e", 10000000), 0) end)
    local err = helpers.error_of(f.result, f)
    assert.are.equal(10000000, #err)
  end)

  it("raises a clear error for a task's absurdly large string", function()
    local fx = fixture(finally)
    local f = fx.ex:submit(string.rep, "x", 1 << 40)
    local err = helpers.error_of(f.result, f)
    assert.is_string(err)
    assert_contains(err, "too large")
  end)
end)

---------------------------------------------------------------------------
-- Done callbacks that call back into loom
---------------------------------------------------------------------------

describe("misuse: done callbacks that call back into loom", function()
  -- Two futures finish before any loom call runs their callbacks; each
  -- callback calls loom.wait (which runs pending callbacks) itself.
  local REENTRANT = [[
    local gate, finished = loom.channel(), loom.channel()
    local a = ex:submit(function(g) g:pop(60) return "a" end, gate)
    local b = ex:submit(function() return "b" end)
    ex:submit(function(c) c:push(true) end, finished)   -- runs after a and b
    local calls = { a = 0, b = 0 }
    a:add_done_callback(function() calls.a = calls.a + 1; loom.wait {} end)
    b:add_done_callback(function() calls.b = calls.b + 1; loom.wait {} end)
    gate:close()
    assert(finished:pop(60))   -- a channel pop runs no callbacks
    loom.wait { a, b }
  ]]

  it("run once each when they call a waiting function themselves", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local run = load("local loom, ex = ... " .. REENTRANT .. " return calls")
    local calls = run(loom, ex)
    assert.are.equal(1, calls.a)
    assert.are.equal(1, calls.b)
    -- and a callback added later still runs
    local gate = s:gate()
    local later = ex:submit(function(g) g:pop(PATIENCE) return "later" end, gate)
    local later_calls = 0
    later:add_done_callback(function() later_calls = later_calls + 1 end)
    gate:close()
    assert.are.equal("later", later:result())
    assert.are.equal(1, later_calls, "the later done callback never ran")
  end)

  it("cause no spurious warning when they call a waiting function themselves", function()
    local reliability = require "spec.support.reliability"
    local r = reliability.run([[
      warn("@on")
      local loom = require "loom"
      local ex = loom.executor(1)
    ]] .. REENTRANT .. [[
      print(calls.a, calls.b)
      ex:close()
    ]])
    reliability.assert_clean_exit(r)
    assert.are.equal("1\t1\n", r.stdout)
  end)

  it("may submit, shut down and add callbacks without losing any", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local other = s:executor(1)
    local gate = s:gate()
    local f = ex:submit(function(g) g:pop(PATIENCE) return 1 end, gate)
    local order, inner = {}, nil
    f:add_done_callback(function()
      order[#order + 1] = "first"
      inner = other:submit(function() return "inner" end)
      f:add_done_callback(function() order[#order + 1] = "added by first" end)
      other:shutdown()
    end)
    f:add_done_callback(function() order[#order + 1] = "second" end)
    gate:close()
    assert.are.equal(1, f:result())
    assert.are.equal("inner", inner:result())
    assert.are.same({ "first", "added by first", "second" }, order)
    helpers.loom_error("shutdown", function() other:submit(print) end)
  end)
end)
