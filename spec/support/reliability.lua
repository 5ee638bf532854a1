-- Helpers for the reliability specs (exit, misuse, soak): child processes
-- watched by a time limit, line sets, a seeded random source, and RSS.

local assert = require "luassert"
local helpers = require "spec.support.helpers"

local reliability = {}

-- Seconds a child process may run before `timeout` kills it (a hang).
reliability.CHILD_LIMIT = 60

---------------------------------------------------------------------------
-- Child processes
---------------------------------------------------------------------------

local function shell_quote(s)
  return "'" .. string.gsub(s, "'", "'\\''") .. "'"
end

local function read_all(name)
  local f = io.open(name, "rb")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

-- Runs the Lua source `code` in a child interpreter ($LOOM_LUA or lua5.4,
-- as helpers.LUA) under `timeout CHILD_LIMIT`, with this process's package
-- paths made absolute. Returns a table: stdout, stderr (kept apart), how
-- ("exit" or "signal") and status, as `file:close()` gives them.
-- The stock print writes a line in pieces (the text, then "\n"), so a
-- task's line can land in the middle of the main thread's.  Tasks' print
-- writes whole lines; the children's main thread gets the same here, on
-- one line so that reported line numbers stay right.
local WHOLE_LINE_PRINT = "function print(...) local t = {} "
  .. "for i = 1, select('#', ...) do t[i] = tostring((select(i, ...))) end "
  .. "io.stdout:write(table.concat(t, '\\t') .. '\\n') io.stdout:flush() end "

function reliability.run(code)
  local root = helpers.current_directory()
  local script, errors = os.tmpname(), os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(string.format("package.path = %q\npackage.cpath = %q\n",
    helpers.absolute(package.path, root), helpers.absolute(package.cpath, root)))
  f:write(WHOLE_LINE_PRINT)
  f:write(code)
  f:close()
  local command = string.format("timeout %d %s %s 2>%s",
    reliability.CHILD_LIMIT, helpers.LUA, shell_quote(script), shell_quote(errors))
  local p = assert(io.popen(command))
  local stdout = p:read("a")
  local _, how, status = p:close()
  local stderr = read_all(errors)
  os.remove(script)
  os.remove(errors)
  return { stdout = stdout, stderr = stderr, how = how, status = status }
end

local function describe_run(r)
  return string.format("child ended with %s %s\n--- stdout:\n%s\n--- stderr:\n%s",
    tostring(r.how), tostring(r.status), r.stdout, r.stderr)
end

-- Asserts that the child did not hang (killed by `timeout`), was not killed
-- by a signal, and exited with `status`.
function reliability.assert_status(r, status)
  assert(not (r.how == "exit" and r.status == 124),
    "the child process hung (killed after " .. reliability.CHILD_LIMIT .. " s)\n"
    .. describe_run(r))
  assert(r.how == "exit" and r.status == status,
    "expected exit status " .. status .. "\n" .. describe_run(r))
end

-- Asserts status and that stderr is empty.
function reliability.assert_clean_exit(r, status)
  reliability.assert_status(r, status or 0)
  assert(r.stderr == "", "unexpected output on stderr\n" .. describe_run(r))
end

-- The lines of `s` (every line must end with a newline).
function reliability.lines(s)
  assert(s == "" or s:sub(-1) == "\n", "output does not end with a newline: " .. s)
  return helpers.lines(s)
end

-- Asserts that the lines of `output` are exactly `expected`, in any order
-- (as a multiset): nothing missing, nothing extra.
function reliability.assert_lines(expected, output)
  local want, got = {}, reliability.lines(output)
  for i, line in ipairs(expected) do want[i] = line end
  table.sort(want)
  table.sort(got)
  assert.are.same(want, got)
end

---------------------------------------------------------------------------
-- A seeded random source (independent of math.random, which busted may seed)
---------------------------------------------------------------------------

-- Returns random(n): an integer in 1..n, from a xorshift64* generator.
function reliability.random(seed)
  local x = seed ~ 0x2545F4914F6CDD1D
  if x == 0 then x = 1 end
  return function(n)
    x = x ~ (x >> 12)
    x = x ~ (x << 25)
    x = x ~ (x >> 27)
    local r = (x * 0x2545F4914F6CDD1D) >> 11   -- 53 nonnegative bits
    return r % n + 1
  end
end

---------------------------------------------------------------------------
-- Memory
---------------------------------------------------------------------------

-- This process's resident set size in kB (VmRSS), after two full
-- collections; nil where /proc is not available.
function reliability.rss_kb()
  collectgarbage()
  collectgarbage()
  local f = io.open("/proc/self/status", "r")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)%s*kB"))
end

return reliability
