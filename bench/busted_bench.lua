-- loom-busted against plain busted, side by side in one run (`make bench`,
-- or `lua5.4 bench/busted_bench.lua [rows...]` from a built checkout, with
-- LUA_PATH_5_4/LUA_CPATH_5_4 pointing at it as bench/run.sh sets them).
--
-- Rows (all by default):
--   synthetic  16 spec files of about 0.25 s of CPU each: plain busted,
--              then loom-busted -j 2; the speedup (target: at least 1.8
--              on 2 cores). Median of RUNS runs each, interleaved.
--   empty      200 spec files of one empty test: what loom-busted adds
--              per file (-j 1 and -j 2) over plain busted. Median of RUNS.
--   suite      loom's own suite (spec/): plain busted, loom-busted -j 2
--              with no times, and again with the times of that run (longest
--              file first). One run each: the suite takes a minute or two.
-- Environment: LUA (lua5.4), BUSTED (busted), RUNS (3).

local system = require "system"
local loom = require "loom"

local LUA = os.getenv("LUA") or "lua5.4"
local BUSTED = os.getenv("BUSTED") or "busted"
local RUNS = tonumber(os.getenv("RUNS") or "3")
local root = (arg[0]:match("^(.*)/bench/[^/]*$") or ".")
local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
local absroot = io.popen("cd " .. q(root) .. " && pwd"):read("l")
local LOOM_BUSTED = LUA .. " " .. q(absroot .. "/bin/loom-busted")

-- Seconds of wall time the shell command line takes (its output dropped).
local function time(line)
  local t0 = system.monotime()
  os.execute(line .. " >/dev/null 2>&1")
  return system.monotime() - t0
end

local function median(xs)
  table.sort(xs)
  return xs[(#xs + 1) // 2]
end

local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir -p " .. q(d .. "/spec")))
  return d
end

local function loadavg()
  local f = io.open("/proc/loadavg")
  local s = f and f:read("l") or "?"
  if f then f:close() end
  return s:match("^(%S+ %S+ %S+)") or s
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

-- Loop iterations that take about `seconds` of CPU here.
local function calibrate(seconds)
  local n = 1000000
  while true do
    local t0 = os.clock()
    local x = 0
    for i = 1, n do x = x + i % 7 end
    local dt = os.clock() - t0
    if dt > 0.2 then return math.floor(n * seconds / dt), x end
    n = n * 2
  end
end

local rows = {}
local function row(...) rows[#rows + 1] = string.format(...) print(rows[#rows]) end

local function side_by_side(dir, commands, runs)
  local samples = {}
  for i = 1, #commands do samples[i] = {} end
  for _ = 1, runs do
    for i, c in ipairs(commands) do
      samples[i][#samples[i] + 1] = time("cd " .. q(dir) .. " && " .. c)
    end
  end
  local m = {}
  for i = 1, #commands do m[i] = median(samples[i]) end
  return m
end

local bench = {}

function bench.synthetic()
  local d = tmpdir()
  local n = calibrate(0.25)
  for i = 1, 16 do
    write(("%s/spec/cpu%02d_spec.lua"):format(d, i), ([[
it("spends about 0.25 s of CPU", function()
  local x = 0
  for i = 1, %d do x = x + i %% 7 end
  assert.is_true(x > 0)
end)
]]):format(n))
  end
  local m = side_by_side(d, {
    BUSTED .. " --lua=" .. LUA .. " spec",
    LOOM_BUSTED .. " -j 2 --no-times spec",
  }, RUNS)
  os.execute("rm -rf " .. q(d))
  row("synthetic: 16 files x 0.25 s CPU  plain busted %.2f s  loom-busted -j 2 %.2f s" ..
      "  speedup %.2fx (target >= 1.8: %s)", m[1], m[2], m[1] / m[2],
      m[1] / m[2] >= 1.8 and "pass" or "miss")
end

function bench.empty()
  local d = tmpdir()
  for i = 1, 200 do
    write(("%s/spec/empty%03d_spec.lua"):format(d, i), 'it("does nothing", function() end)\n')
  end
  local m = side_by_side(d, {
    BUSTED .. " --lua=" .. LUA .. " spec",
    LOOM_BUSTED .. " -j 1 --no-times spec",
    LOOM_BUSTED .. " -j 2 --no-times spec",
  }, RUNS)
  os.execute("rm -rf " .. q(d))
  row("empty: 200 files of one empty test  plain busted %.2f s  loom-busted -j 1 %.2f s" ..
      "  -j 2 %.2f s  added per file: %.2f ms (-j 1), %.2f ms (-j 2)",
      m[1], m[2], m[3], (m[2] - m[1]) / 200 * 1e3, (m[3] - m[1]) / 200 * 1e3)
end

function bench.suite()
  local d = tmpdir()   -- the times of this run only, not the checkout's
  local times = d .. "/times"
  local env = ("cd %s && LOOM_BUSTED_TIMES=%s "):format(q(absroot), q(times))
  local plain = time(env .. BUSTED .. " --lua=" .. LUA .. " spec")
  local cold = time(env .. LOOM_BUSTED .. " -j 2 spec")
  local warm = time(env .. LOOM_BUSTED .. " -j 2 spec")
  os.execute("rm -rf " .. q(d))
  row("suite: loom's spec/  plain busted %.1f s  loom-busted -j 2: no times %.1f s (%.2fx)," ..
      " with times %.1f s (%.2fx)", plain, cold, plain / cold, warm, plain / warm)
end

local which = { ... }
if #which == 0 then which = { "synthetic", "empty", "suite" } end
print(("loom-busted bench: %s, %d CPUs, load average before: %s")
      :format(LUA, loom.cpu_count(), loadavg()))
for _, name in ipairs(which) do
  assert(bench[name], "no row " .. name)()
end
print(("load average after: %s"):format(loadavg()))
