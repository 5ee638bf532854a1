-- Progress for long maps (issue 14, item 6): ex:map{..., progress = fn}
-- calls fn(done, total) in the caller's thread, at the start, at most a few
-- times a second, and at the end; progress = true draws a one-line bar on
-- standard error only when that is a terminal, and clears it at the end.
-- The bar is checked in child processes: one under a pseudo-terminal
-- (`script`), one with standard error in a file.

local core = require "loom.core"
local helpers = require "spec.support.helpers"

local PATIENCE = helpers.PATIENCE

local shell_quote = helpers.shell_quote

local function read_all(name)
  local f = assert(io.open(name, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- Writes `code` into a script that finds this checkout's loom, and runs
-- shell(command, errors) under `timeout`: the shell command made from the
-- command that runs the script and a file for standard error. Returns the
-- shell command's standard output and that file's contents.
local function run_child(code, shell)
  local root = helpers.current_directory()
  local script, errors = os.tmpname(), os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(string.format("package.path = %q\npackage.cpath = %q\n",
    helpers.absolute(package.path, root), helpers.absolute(package.cpath, root)))
  f:write(code)
  f:close()
  local p = assert(io.popen(string.format("timeout %d %s </dev/null", PATIENCE,
    shell(helpers.LUA .. " " .. script, errors))))
  local out = p:read("a")
  local _, how, status = p:close()
  local err = read_all(errors)
  os.remove(script)
  os.remove(errors)
  assert(how == "exit" and status == 0, ("child ended with %s %s:\n%s\n%s"):format(how, status, out, err))
  return out, err
end

local function piped(command, errors) return command .. " 2>" .. errors end

-- The child: a map over 400 calls; `opts` is Lua source for more options.
local function child(opts, body)
  return ([[
local loom = require "loom"
local ex <close> = loom.executor(2)
local seq = {}
for i = 1, 400 do seq[i] = i end
local sum = 0
for i, v in ex:map { function(x) return x * 2 end, seq, chunksize = 7, %s } do
  sum = sum + v
  %s
end
io.stdout:write("sum=", sum, "\n")
]]):format(opts, body or "")
end

-- Under a pseudo-terminal: standard error and standard output are both the
-- terminal, which script copies to its standard output.
local function under_terminal(code)
  return (run_child(code, function(command, errors)
    return ("script -qec %s /dev/null 2>%s"):format(shell_quote(command), errors)
  end))
end

local BAR_START = "  0% [........................] 0/400"
local BAR_END = "100% [########################] 400/400"

describe("ex:map{..., progress = true}", function()
  it("draws a bar on a terminal and clears it before the loop's next output", function()
    local out = under_terminal(child("progress = true"))
    helpers.assert_contains(out, "\r" .. BAR_START)
    local last = select(2, out:find(BAR_END, 1, true))
    assert(last, "no final bar in " .. ("%q"):format(out))
    -- the final bar, then a carriage return, blanks over it, a carriage
    -- return, and only then the program's own line
    local tail = out:sub(last + 1)
    local clear = tail:match("^[^\r]*\r( +)\rsum=160400\r?\n$")
    assert(clear, "the bar is not cleared: " .. ("%q"):format(tail))
    assert(#clear >= #BAR_END, "the blanks do not cover the bar")
  end)

  it("clears the bar when the loop is left early", function()
    local out = under_terminal(child("progress = true", "if i == 100 then break end"))
    helpers.assert_contains(out, "\r" .. BAR_START)
    assert.is_nil(out:find(BAR_END, 1, true))
    assert(out:match("\r +\rsum=%d+\r?\n$"), "the bar is not cleared: " .. ("%q"):format(out))
  end)

  it("draws nothing when standard error is not a terminal", function()
    local out, err = run_child(child("progress = true"), piped)
    assert.are.equal("sum=160400\n", out)
    assert.are.equal("", err)
  end)

  it("draws nothing on a terminal without progress", function()
    assert.is_truthy(under_terminal(child("progress = false")):match("^sum=160400\r?\n$"))
    assert.is_truthy(under_terminal(child("timeout = 60")):match("^sum=160400\r?\n$"))
  end)

  it("sees a terminal through core._isatty", function()
    local out = under_terminal("io.stdout:write(tostring(require('loom.core')._isatty(2)), '\\n')")
    assert.is_truthy(out:match("^true\r?\n$"))
    local out2 = run_child("io.stdout:write(tostring(require('loom.core')._isatty(2)), '\\n')", piped)
    assert.are.equal("false\n", out2)
    assert.is_false(core._isatty(-1))
  end)
end)

describe("ex:map{..., progress = fn}", function()
  for _, chunksize in ipairs { 1, 16 } do
    it("calls fn(done, total) in the caller's thread, first 0 and last total (chunksize "
       .. chunksize .. ")", function()
      local s = helpers.scope(finally)
      local ex = s:executor(2)
      local n = 300
      local seq = {}
      for i = 1, n do seq[i] = i end
      local calls, co = {}, coroutine.running()
      local t0 = core.clock()
      local sum = 0
      for i, v in ex:map { function(x) return x + 1 end, seq, chunksize = chunksize,
                           progress = function(done, total)
                             assert.are.equal(co, coroutine.running())
                             calls[#calls + 1] = { done, total }
                           end } do
        assert.are.equal(i + 1, v)
        sum = sum + v
      end
      local elapsed = core.clock() - t0
      assert.are.equal(n * (n + 1) / 2 + n, sum)
      assert.are.same({ 0, n }, calls[1])
      assert.are.same({ n, n }, calls[#calls])
      for k = 2, #calls do
        assert.are.equal(n, calls[k][2])
        assert(calls[k][1] >= calls[k - 1][1], "done went down")
      end
      -- a few a second: the first, the last, and one per 0.2 s between
      assert(#calls <= 3 + elapsed / 0.2, ("%d calls in %.3f s"):format(#calls, elapsed))
    end)
  end

  it("reports what the loop has received", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local gate = s:gate()
    local seen = {}
    local it = { ex:map { function(x, g) if x == 2 then g:pop(60) end return x end, { 1, 2 }, { gate, gate },
                          progress = function(done, total) seen[#seen + 1] = done .. "/" .. total end } }
    local step = it[1]
    assert.are.equal(1, step())
    assert.are.same({ "0/2" }, seen)
    gate:push(true)
    assert.are.equal(2, step())
    assert.is_nil(step())
    assert.are.same({ "0/2", "2/2" }, seen)
    assert.is_nil(step())
    assert.are.same({ "0/2", "2/2" }, seen)   -- the end is told once
  end)

  it("stops the loop with fn's error and cancels the calls not started", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local fut, gate = s:block(ex)
    local err = helpers.string_error(function()
      for _ in ex:map { function(x) return x end, { 1, 2, 3 }, timeout = PATIENCE,
                        progress = function() error("stop here", 0) end } do end
    end)
    assert.are.equal("stop here", err)
    gate:push(true)
    assert.are.equal("released", fut:result(PATIENCE))
    -- the executor went on with nothing queued
    assert.are.equal(5, ex:submit(function() return 5 end):result(PATIENCE))
  end)

  it("is called once, with 0 and 0, for an empty map", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local seen = {}
    for _ in ex:map { print, {}, progress = function(d, t) seen[#seen + 1] = d .. "/" .. t end } do end
    assert.are.same({ "0/0" }, seen)
  end)
end)
