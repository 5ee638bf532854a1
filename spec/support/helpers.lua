-- Shared helpers for the loom specs.
--
-- The specs never sleep to wait for a thread and never assert a timing. A task
-- that must stay busy waits on a "gate" channel that the test opens; a test
-- that must know a task has started pops a "started" channel the task pushes
-- to. Every wait that could hang on a broken implementation has a generous
-- safety limit (PATIENCE), so a bug fails the test instead of hanging the run.

local assert = require "luassert"
local loom = require "loom"

local helpers = {}

-- Seconds a test is willing to wait for something that should happen at once.
helpers.PATIENCE = 60

---------------------------------------------------------------------------
-- Errors
---------------------------------------------------------------------------

-- True when `fragment` occurs in `s` as plain text.
function helpers.contains(s, fragment)
  return type(s) == "string" and string.find(s, fragment, 1, true) ~= nil
end

-- Asserts that the string `s` contains the plain text `fragment`.
function helpers.assert_contains(s, fragment)
  assert(helpers.contains(s, fragment),
    string.format("expected %q to contain %q", tostring(s), fragment))
end

-- Calls fn(...), asserts that it raises, and returns the error value.
function helpers.error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error, but the call succeeded")
  return err
end

-- Calls fn(...), asserts that it raises a loom error of the given kind, and
-- returns the error table.
function helpers.loom_error(kind, fn, ...)
  local err = helpers.error_of(fn, ...)
  assert(type(err) == "table",
    string.format("expected a loom '%s' error table, got %s: %s",
      kind, type(err), tostring(err)))
  assert.are.equal(kind, err.kind)
  assert.is_string(err.message)
  return err
end

-- Calls fn(...), asserts that it raises a plain string error (a programming
-- mistake, not a loom condition), and returns the message.
function helpers.string_error(fn, ...)
  local err = helpers.error_of(fn, ...)
  assert(type(err) == "string",
    string.format("expected a string error, got %s: %s", type(err), tostring(err)))
  return err
end

---------------------------------------------------------------------------
-- Channels and gates
---------------------------------------------------------------------------

-- Pops one value from `ch`, failing the test if none arrives in PATIENCE.
function helpers.pop(ch)
  local value, why = ch:pop(helpers.PATIENCE)
  assert(value ~= nil, "expected a value from the channel, got nil, " .. tostring(why))
  return value
end

-- Pops every value currently waiting in `ch` (without waiting) into a list.
function helpers.drain(ch)
  local values = {}
  while true do
    local value = ch:pop(0)
    if value == nil then return values end
    values[#values + 1] = value
  end
end

-- The task that keeps a worker busy: it reports that it started, then waits
-- until the gate is opened (a push or a close). It raises if the gate stays
-- shut for `patience` seconds, so a mistake in a test cannot hang the run.
function helpers.blocked_task(started, gate, patience)
  started:push(true)
  local _, why = gate:pop(patience)
  if why == "timeout" then error("test gate was never opened", 0) end
  return "released"
end

---------------------------------------------------------------------------
-- Scopes: executors and gates cleaned up in busted's `finally`
---------------------------------------------------------------------------

local Scope = {}
Scope.__index = Scope

-- Makes a scope whose executors are shut down (after every gate is opened)
-- when the test ends, pass or fail. Call it with busted's `finally`:
--   local s = helpers.scope(finally)
function helpers.scope(finally)
  local scope = setmetatable({ executors = {}, gates = {} }, Scope)
  finally(function() scope:cleanup() end)
  return scope
end

-- loom.executor(opts), shut down when the test ends.
function Scope:executor(opts)
  local ex
  if opts == nil then ex = loom.executor() else ex = loom.executor(opts) end
  self.executors[#self.executors + 1] = ex
  return ex
end

-- A channel that is closed (so every waiter wakes up) when the test ends.
function Scope:gate()
  local gate = loom.channel()
  self.gates[#self.gates + 1] = gate
  return gate
end

-- A channel closed when the test ends, like a gate: use it for any channel a
-- task may wait on (to pop, or to push into when it is full), so that a test
-- failing half-way cannot leave a task waiting and the shutdown hanging.
function Scope:channel(capacity)
  local ch
  if capacity == nil then ch = loom.channel() else ch = loom.channel(capacity) end
  self.gates[#self.gates + 1] = ch
  return ch
end

-- Occupies one worker of `ex`: submits a task that waits on a fresh gate and
-- returns only once that task is running. Returns the future and the gate;
-- `gate:close()` (or `gate:push(true)`) lets the task finish with "released".
function Scope:block(ex)
  local started, gate = loom.channel(), self:gate()
  local fut = ex:submit(helpers.blocked_task, started, gate, helpers.PATIENCE)
  helpers.pop(started)
  return fut, gate
end

-- Opens every gate, then shuts every executor down (cancelling what is still
-- queued and waiting for what runs). A test may call it early, for instance to
-- be sure all its tasks are over; the second call does nothing.
function Scope:cleanup()
  local gates, executors = self.gates, self.executors
  self.gates, self.executors = {}, {}
  -- A test may have closed a gate already; closing twice is not its concern.
  for _, gate in ipairs(gates) do pcall(gate.close, gate) end
  for _, ex in ipairs(executors) do ex:shutdown { cancel_futures = true } end
end

---------------------------------------------------------------------------
-- Sets of futures
---------------------------------------------------------------------------

-- Asserts that the sequences `actual` and `expected` hold the same values
-- (compared by identity), in any order, each once.
function helpers.assert_same_set(expected, actual)
  assert.is_table(actual)
  assert.are.equal(#expected, #actual, "wrong number of elements")
  for _, want in ipairs(expected) do
    local seen = 0
    for _, got in ipairs(actual) do
      if rawequal(want, got) then seen = seen + 1 end
    end
    assert.are.equal(1, seen, "expected element " .. tostring(want) .. " exactly once")
  end
end

---------------------------------------------------------------------------
-- Child processes
---------------------------------------------------------------------------

function helpers.current_directory()
  local p = assert(io.popen("pwd"))
  local dir = p:read("l")
  p:close()
  return dir
end

-- A search path with every relative entry made absolute.
function helpers.absolute(path, root)
  local entries = {}
  for entry in string.gmatch(path, "[^;]+") do
    if entry:sub(1, 2) == "./" then
      entry = root .. entry:sub(2)
    elseif entry:sub(1, 1) ~= "/" then
      entry = root .. "/" .. entry
    end
    entries[#entries + 1] = entry
  end
  return table.concat(entries, ";")
end

-- The interpreter for child processes: $LOOM_LUA (the sanitizer builds set
-- it to their own Lua host), else lua5.4.
helpers.LUA = os.getenv("LOOM_LUA") or "lua5.4"

-- Runs the Lua source `code` in a fresh `lua5.4` process whose package.path
-- and package.cpath are this process's, made absolute, so `require "loom"`
-- finds the module under test. Returns the combined stdout and stderr, then
-- what `file:close()` returns (true or nil, "exit" or "signal", code).
function helpers.run_lua(code)
  local root = helpers.current_directory()
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(string.format("package.path = %q\npackage.cpath = %q\n",
    helpers.absolute(package.path, root), helpers.absolute(package.cpath, root)))
  f:write(code)
  f:close()
  local p = assert(io.popen(helpers.LUA .. " " .. script .. " 2>&1"))
  local output = p:read("a")
  local ok, how, status = p:close()
  os.remove(script)
  return output, ok, how, status
end

-- Runs `code` in a child process and asserts that it exited with status 0.
-- Returns its output.
function helpers.run_lua_ok(code)
  local output, ok, how, status = helpers.run_lua(code)
  assert(ok and how == "exit" and status == 0,
    string.format("child process ended with %s %s; output:\n%s",
      tostring(how), tostring(status), output))
  return output
end

-- `s` quoted for sh.
function helpers.shell_quote(s)
  return "'" .. string.gsub(s, "'", "'\\''") .. "'"
end

-- Runs the shell command `command` under `timeout` (generous: a hang
-- fails), with no input and stderr in stdout. Returns the output and the
-- exit status (124: it hung; 128 + n: killed by signal n).
function helpers.run(command)
  local p = assert(io.popen(string.format("timeout 120 sh -c %s 2>&1 </dev/null",
    helpers.shell_quote(command))))
  local output = p:read("a")
  local _, how, status = p:close()
  return output, how == "exit" and status or 128 + status
end

-- The lines of `s`, without their newlines.
function helpers.lines(s)
  local lines = {}
  for line in string.gmatch(s, "([^\n]*)\n") do lines[#lines + 1] = line end
  return lines
end

return helpers
