-- Ctrl-C in every blocking call: each case runs a child lua5.4 (or the
-- sanitizer host, $LOOM_LUA) that blocks in one loom call on a task that
-- would never finish by itself, sends it SIGINT once the child's main
-- thread sleeps, and checks that the interpreter's usual "interrupted!"
-- error ended the script and the process exited.  The task waits on a
-- channel, which the program's end closes, so the exit does not wait for
-- it.  Every child runs under `timeout`: a hang fails the test.
-- loom-busted: alone (it sends signals, and waits busily for a child to
-- sleep: it runs with nothing beside it under `make test`)

local helpers = require "spec.support.helpers"
local reliability = require "spec.support.reliability"

local LIMIT = reliability.CHILD_LIMIT

local function shell_quote(s)
  return "'" .. string.gsub(s, "'", "'\\''") .. "'"
end

-- The state letter of process pid ("R", "S"...), or nil once it is gone.
local function state_of(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return nil end
  local line = f:read("l")
  f:close()
  return line and line:match("^%d+ %b() (%a)")
end

-- Runs `code` in a child whose stdout and stderr come through one pipe.
-- The child prints "ready" when it is about to block; the test then waits
-- (busily, with a bound) until its main thread sleeps, and sends SIGINT.
-- `interrupts` SIGINTs are sent, each after the previous "interrupted!".
-- Returns the whole output and how the child ended.
local function interrupt(code, interrupts)
  local root = helpers.current_directory()
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(string.format("package.path = %q\npackage.cpath = %q\n",
    helpers.absolute(package.path, root), helpers.absolute(package.cpath, root)))
  f:write([[
local pidfile = io.open("/proc/self/stat")
local pid = pidfile:read("l"):match("^%d+")
pidfile:close()
local function ready() io.stdout:write("ready " .. pid .. "\n") io.stdout:flush() end
]])
  f:write(code)
  f:close()
  local p = assert(io.popen(string.format("timeout %d %s %s 2>&1", LIMIT,
    helpers.LUA, shell_quote(script))))
  local output = {}
  local pid
  for line in p:lines() do
    output[#output + 1] = line
    pid = pid or line:match("^ready (%d+)")
    if pid then break end
  end
  if pid then
    for n = 1, interrupts or 1 do
      local deadline = os.time() + LIMIT
      while state_of(pid) == "R" and os.time() < deadline do end
      os.execute("kill -INT " .. pid .. " 2>/dev/null")
      if n < (interrupts or 1) then
        for line in p:lines() do
          output[#output + 1] = line
          if line:find("interrupted!", 1, true) then break end
        end
      end
    end
  end
  output[#output + 1] = p:read("a")
  local _, how, status = p:close()
  os.remove(script)
  return table.concat(output, "\n"), how, status
end

local function assert_interrupted(output, how, status)
  assert(not (how == "exit" and status == 124), "the child hung:\n" .. output)
  helpers.assert_contains(output, "ready")
  helpers.assert_contains(output, "interrupted!")
  assert.are.equal("exit", how, output)
  assert.are.equal(1, status, output)
  assert.is_nil(output:find("after the wait", 1, true), output)
end

local SETUP = [[
local loom = require "loom"
local ex = loom.executor(2)
local gate = loom.channel()
local function stuck(g) return g:pop() end
local f = ex:submit(stuck, gate)
]]

local CASES = {
  ["f:result"] = "ready() f:result()",
  ["f:exception"] = "ready() f:exception()",
  ["ex:map iteration"] = "ready() for _ in ex:map(stuck, { gate }) do end",
  ["loom.wait"] = "ready() loom.wait { f }",
  ["loom.as_completed"] = "ready() for _ in loom.as_completed { f } do end",
  ["ch:pop"] = "ready() gate:pop()",
  ["ch:push on a full channel"] = "local full = loom.channel(1) full:push(1) ready() full:push(2)",
  ["ex:shutdown{wait = true}"] = "ready() ex:shutdown { wait = true }",
  ["ex:close"] = "ready() ex:close()",
  ["f:result inside a coroutine"] = "ready() coroutine.wrap(function() f:result() end)()",
  ["q:pop of a completion queue"] = "local q = loom.completion_queue() q:add(f) ready() q:pop()",
}

describe("Ctrl-C (SIGINT in lua5.4)", function()
  for name, block in pairs(CASES) do
    it("ends a wait in " .. name .. " with 'interrupted!'", function()
      assert_interrupted(interrupt(SETUP .. block .. "\nprint('after the wait')\n"))
    end)
  end

  it("lets the script catch it and go on, with the wait still usable", function()
    local output, how, status = interrupt(SETUP .. [[
      ready()
      local ok, err = pcall(f.result, f)
      print("caught: " .. tostring(ok) .. " " .. tostring(err))
      gate:push("open")
      print("then: " .. tostring(f:result()))
    ]])
    assert.are.equal("exit", how, output)
    assert.are.equal(0, status, output)
    helpers.assert_contains(output, "caught: false")
    helpers.assert_contains(output, "interrupted!")
    helpers.assert_contains(output, "then: open")
  end)

  it("waits at exit for a task still running; a second Ctrl-C ends the process", function()
    -- a task that ignores the program's end: only the second SIGINT,
    -- which the interpreter no longer handles, ends the process
    local output, how, status = interrupt([[
      local loom = require "loom"
      local ex = loom.executor(1)
      local f = ex:submit(function() while true do end end)
      ready()
      f:result()
    ]], 2)
    helpers.assert_contains(output, "interrupted!")
    -- killed by SIGINT (timeout, its parent, reports that as 128 + 2)
    assert(how == "signal" and status == 2 or how == "exit" and status == 130,
      "expected an end by SIGINT, got " .. tostring(how) .. " " .. tostring(status)
      .. "\n" .. output)
  end)
end)
