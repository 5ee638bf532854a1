-- Allocation failures: every allocation on the path of a task can fail.
--
-- Needs the failure-injection build (`make failpoints`, which runs this
-- spec under AddressSanitizer, so that "nothing leaks" is checked too).
-- In a normal build core._failpoint is inert and these tests are skipped.
--
-- For each k, the k-th allocation from then on fails: an allocation of a
-- worker's lua_State ("lua") or a malloc of the C core ("core").  The
-- caller must get a value or an error, never a crash; and the executor
-- must still run the next task correctly.

local loom = require "loom"
local core = require "loom.core"

local injecting = core._failpoint(0, "both") ~= -1

-- Runs fn() with the k-th allocation of kind `which` failing (and the
-- retry right after it, or Lua's emergency collection would hide it);
-- returns pcall's results, and whether the failure happened at all.
local function with_failure(k, which, fn)
  core._failpoint(k, which)
  local r = table.pack(pcall(fn))
  local _, fired = core._failpoint(0, which)
  return r, fired
end

-- A clean error: a string, or a loom error table with kind and message.
local function assert_clean_error(err)
  if type(err) == "table" then
    assert.is_string(err.kind)
    assert.is_string(err.message)
  else
    assert.is_string(err)
  end
end

local function sweep(which, path, check, make)
  local ex <close> = (make or loom.executor)(1)
  -- the worker's state is made on its own thread: let that finish first
  assert.are.equal("ready", ex:submit(function() return "ready" end):result())
  local k, failures = 1, 0
  while true do
    local r, fired = with_failure(k, which, function() return path(ex) end)
    if r[1] then check(table.unpack(r, 2, r.n)) else
      failures = failures + 1
      assert_clean_error(r[2])
    end
    -- the executor still works after every failure
    assert.are.equal(42, ex:submit(function(x) return x * 2 end, 21):result())
    if not fired then break end   -- k passed the end of the path
    k = k + 1
    assert(k < 100000, "the sweep did not end")
  end
  return k, failures
end

local function task_path(ex)
  local ch = loom.channel()
  local called = false
  local f = ex:submit(function(t, c)
    c:push({ t[1], t.s .. "!" })
    return c:pop(), #t.s
  end, { 7, s = "abc" }, ch)
  f:add_done_callback(function() called = true end)
  local v, n = f:result()
  assert(called, "the callback did not run")
  return v, n
end

local function check_task(v, n)
  assert.are.same({ 7, "abc!" }, v)
  assert.are.equal(3, n)
end

local maybe = injecting and describe or pending

maybe("allocation failures", function()
  for _, which in ipairs { "lua", "core" } do
    it("on the whole path of a task (" .. which .. "): an error or the value, "
       .. "and the executor goes on", function()
      local steps, failures = sweep(which, task_path, check_task)
      assert.is_true(steps > 1)
      assert.is_true(failures >= 1, "no allocation failure was ever reported")
    end)
  end

  it("in map chunks: an error or the values, and the executor goes on", function()
    local steps = sweep("both", function(ex)
      local out = {}
      for i, v in ex:map { function(x) return x + 1 end, { 1, 2, 3, 4, 5 },
                           chunksize = 2 } do
        out[i] = v
      end
      return out
    end, function(out) assert.are.same({ 2, 3, 4, 5, 6 }, out) end)
    assert.is_true(steps > 1)
  end)

  it("with large strings: by reference both ways, and out of a state that "
     .. "ended, whose copy of them can fail too", function()
    local _, min = core._pins()
    local big = ("b"):rep(min)
    local ended = 0   -- failures of the copy made when the sender ended
    local steps = sweep("both", function(ex)
      local r = ex:submit(function(s) return s .. "!" end, big):result()
      -- the new state is closed before its result is read: the string is
      -- copied out then
      local ok, made = pcall(core._call_in_new_state,
                             function(n) return ("m"):rep(n) end, min)
      if not ok and tostring(made):find("whose sender ended", 1, true) then
        ended = ended + 1
      end
      if not ok then error(made, 0) end
      return r, made
    end, function(r, made)
      assert.is_true(r == big .. "!")
      assert.is_true(made == ("m"):rep(min))
    end)
    assert.is_true(steps > 1)
    assert.is_true(ended >= 1, "the copy at the sender's end never failed")
  end)

  it("on the path of a process pool's task: an error or the value, and it goes on", function()
    -- the parent's side: submit, the manager reading results, completion
    local steps, failures = sweep("core", function(ex)
      local f = ex:submit(function(t) return { t[1], t.s .. "!" }, #t.s end,
                          { 7, s = ("abc"):rep(30000) })
      return f:result()
    end, function(v, n)
      assert.are.same({ 7, ("abc"):rep(30000) .. "!" }, v)
      assert.are.equal(90000, n)
    end, loom.process_executor)
    assert.is_true(steps > 1)
    assert.is_true(failures >= 1, "no allocation failure was ever reported")
  end)

  it("in a new executor: creation fails cleanly or works", function()
    local k = 1
    while true do
      local r, fired = with_failure(k, "both", function()
        local ex <close> = loom.executor(2)
        return ex:submit(function() return "up" end):result()
      end)
      if r[1] then assert.are.equal("up", r[2]) else assert_clean_error(r[2]) end
      if not fired then break end
      k = k + 1
      assert(k < 100000, "the sweep did not end")
    end
  end)
end)
