-- The Lua side of loom's benchmark suite: every workload of bench/README.md
-- run through loom and, where one exists, through plain serial Lua.
--
-- It prints raw timings (every sample, not medians) as JSON on stdout;
-- bench/run.py turns them into the table and bench/results.json.
-- Progress goes to stderr so a slow run shows where it is.
--
--   lua5.4 bench/loom_bench.lua all [runs] [w2_runs]   every in-process workload
--   lua5.4 bench/loom_bench.lua w2 [w2_runs]           only W2 (for bench/plot.sh)
--   lua5.4 bench/loom_bench.lua w3 [runs]              only W3 (large values)
--   lua5.4 bench/loom_bench.lua mem                    one W5 memory probe
--   lua5.4 bench/loom_bench.lua w6 [runs]              W6, in a luv loop (needs luv)
--
-- The memory probe must run in a fresh process: VmHWM is a high-water mark
-- over the life of the process, and W3 alone pushes it up by tens of MiB.
local loom = require "loom"
local clock = require("loom.core").clock

local MODE = arg[1] or "all"
local RUNS = math.tointeger(tonumber(arg[2])) or 5
local W2_RUNS = math.tointeger(tonumber(arg[3] or (MODE == "w2" and arg[2]))) or 3

local function progress(fmt, ...)
  io.stderr:write(("  loom: " .. fmt .. "\n"):format(...))
end

-- Minimal JSON writer: enough for nested tables of numbers and strings.
-- A table with a [1] is written as an array, anything else as an object.
local function to_json(v)
  local t = type(v)
  if t == "table" then
    local parts = {}
    if v[1] ~= nil then
      for i = 1, #v do parts[i] = to_json(v[i]) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    for i, k in ipairs(keys) do
      parts[i] = to_json(k) .. ":" .. to_json(v[k])
    end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif t == "number" then
    if math.type(v) == "integer" then return tostring(v) end
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    return ("%.17g"):format(v)
  elseif t == "string" then
    return '"' .. v:gsub('[%c"\\]', function(c)
      return ("\\u%04x"):format(c:byte())
    end) .. '"'
  elseif t == "boolean" then
    return tostring(v)
  end
  return "null"
end

-- Times fn() once: wall time in seconds, and the CPUs busy meanwhile.
-- A full collection first, so that garbage left by the previous sample is
-- not paid for inside this one. os.clock() is the CPU time of the whole
-- process, all threads: CPU over wall time says how many cores we really
-- got, which tells a slow loom from a machine busy with other work.
local function timed(fn)
  collectgarbage("collect")
  local cpu0, t0 = os.clock(), clock()
  fn()
  local dt = clock() - t0
  return dt, (os.clock() - cpu0) / dt
end

-- Runs each named measurement once unrecorded (the warm-up), then `runs`
-- rounds of all of them. Interleaving the rounds, rather than running one
-- measurement `runs` times in a row, spreads the noise of a shared machine
-- over every figure instead of loading it onto one.
local function rounds(runs, measures, order)
  local samples = {}
  for _, name in ipairs(order) do
    timed(measures[name])
    samples[name] = {}
  end
  for r = 1, runs do
    for _, name in ipairs(order) do
      samples[name][r] = (timed(measures[name]))
    end
  end
  return samples
end

-- The trivial task of W1, W4 and W5.
local function inc(x) return x + 1 end

---------------------------------------------------------------------------
-- W1: 20,000 trivial calls, per task, through map, and directly.
local function w1(runs)
  local N = 20000
  progress("W1 %d trivial calls x %d runs", N, runs)
  local seq = {}
  for i = 1, N do seq[i] = i end
  local ex <close> = loom.executor { workers = 2 }
  local px <close> = loom.process_executor { workers = 2 }
  for i = 1, 100 do px:submit(inc, i):result() end   -- the workers are up
  local sink = 0   -- results are used, so no call is pointless
  local samples = rounds(runs, {
    serial = function()
      local s = 0
      for i = 1, N do s = s + inc(i) end
      sink = sink + s
    end,
    submit = function()
      local futs = {}
      for i = 1, N do futs[i] = ex:submit(inc, i) end
      for i = 1, N do sink = sink + futs[i]:result() end
    end,
    map256 = function()
      for _, r in ex:map { inc, seq, chunksize = 256 } do sink = sink + r end
    end,
    -- the same with a progress callback: what reporting costs the loop
    map256p = function()
      local calls = 0
      for _, r in ex:map { inc, seq, chunksize = 256,
                           progress = function() calls = calls + 1 end } do
        sink = sink + r
      end
      sink = sink + calls
    end,
    -- the same two on the process pool
    psubmit = function()
      local futs = {}
      for i = 1, N do futs[i] = px:submit(inc, i) end
      for i = 1, N do sink = sink + futs[i]:result() end
    end,
    pmap256 = function()
      for _, r in px:map { inc, seq, chunksize = 256 } do sink = sink + r end
    end,
    -- diagnostic: the cheapest loop over N results that an iterator can
    -- give (ipairs, in C, over a ready table), a floor for map's own loop
    ipairs = function()
      local s = 0
      for _, r in ipairs(seq) do s = s + r end
      sink = sink + s
    end,
  }, { "serial", "submit", "map256", "map256p", "psubmit", "pmap256", "ipairs" })
  samples.n = N
  return samples
end

---------------------------------------------------------------------------
-- W2: 8 CPU-bound calls, serially and with 1, 2, 4 and 8 workers.

-- Pure-Lua integer arithmetic: no allocation, so no GC, and nothing shared.
local function spin(n)
  local x = 0
  for i = 1, n do x = x + i % 7 end
  return x
end

-- The loop count that makes spin() take about `target` seconds here.
local function calibrate(target)
  local n, dt = 100000, 0
  while dt < 0.05 do
    n = n * 2
    local t0 = clock()
    spin(n)
    dt = clock() - t0
  end
  n = math.floor(n * target / dt)
  -- then the median of three runs at full size: a short run on a busy
  -- machine can be off by a third
  local times = {}
  for k = 1, 3 do
    local t0 = clock()
    spin(n)
    times[k] = clock() - t0
  end
  table.sort(times)
  return math.floor(n * target / times[2])
end

local W2_WORKERS = { 1, 2, 4, 8 }

local function w2(runs)
  local CALLS, TARGET = 8, 0.25
  local n = calibrate(TARGET)
  progress("W2 %d calls of spin(%d) (~%.2f s each) x %d runs", CALLS, n, TARGET, runs)

  local function batch(ex, count)
    local futs = {}
    for c = 1, CALLS do futs[c] = ex:submit(spin, count) end
    for c = 1, CALLS do futs[c]:result() end
  end

  -- The machine's own ceiling: the same calls split over two separate
  -- lua5.4 processes started together (no loom, nothing shared). On a
  -- shared VM this is often well below 2x; loom cannot beat it.
  local interp = arg and arg[-1] or "lua5.4"
  local child = ("%s -e 'local x = 0; for _ = 1, %d do for i = 1, %d do "
                 .. "x = x + i %% 7 end end'"):format(interp, CALLS // 2, n)
  local function two_processes()
    assert(os.execute(child .. " & " .. child .. "; wait"))
  end

  local samples = { serial = {}, cores_serial = {}, calls = CALLS, loop_count = n,
                    per_call_target = TARGET, procs2 = {}, process2 = {} }
  for _, w in ipairs(W2_WORKERS) do
    samples["w" .. w], samples["cores_w" .. w] = {}, {}
  end
  for r = 0, runs do   -- round 0 is the warm-up, not recorded
    local dt, cores = timed(function() for _ = 1, CALLS do spin(n) end end)
    if r > 0 then samples.serial[r], samples.cores_serial[r] = dt, cores end
    dt = timed(two_processes)
    if r > 0 then samples.procs2[r] = dt end
    for _, w in ipairs(W2_WORKERS) do
      -- A fresh executor per sample, started and warmed outside the timing:
      -- W2 measures running work in parallel, W5 measures startup.
      local ex <close> = loom.executor { workers = w }
      batch(ex, n // 50)
      dt, cores = timed(function() batch(ex, n) end)
      if r > 0 then samples["w" .. w][r], samples["cores_w" .. w][r] = dt, cores end
    end
    do   -- a process pool of 2, started and warmed outside the timing
      local px <close> = loom.process_executor { workers = 2 }
      batch(px, n // 50)
      dt = timed(function() batch(px, n) end)
      if r > 0 then samples.process2[r] = dt end
    end
    progress("W2 round %d/%d done", r, runs)
  end
  return samples
end

---------------------------------------------------------------------------
-- W3: moving big values between states, against in-process copies.
local function w3(runs)
  local NFLOAT, STRLEN = 1000000, 16 * 1024 * 1024
  progress("W3 %d floats, %d-byte string x %d runs", NFLOAT, STRLEN, runs)
  local t = {}
  for i = 1, NFLOAT do t[i] = math.random() end
  local s = string.rep("x", STRLEN)
  local ex <close> = loom.executor { workers = 2 }
  local px <close> = loom.process_executor { workers = 2 }

  local function sum(a)
    local acc = 0.0
    for i = 1, #a do acc = acc + a[i] end
    return acc
  end
  local function length(str) return #str end
  local function identity(v) return v end

  local samples = rounds(runs, {
    -- the references: one copy of the same data inside this state
    copy = function() table.move(t, 1, #t, 1, {}) end,
    rep = function() string.rep("x", STRLEN) end,
    -- exactly one copy of the string's bytes, the reference for "string"
    sub = function() assert(#s:sub(2) == STRLEN - 1) end,
    sum = function() ex:submit(sum, t):result() end,
    -- diagnostics, to split the figures above into their parts: the sum
    -- loop alone, and loom's copier (encode + decode) without any thread
    sumloop = function() sum(t) end,
    codec = function() loom.decode(loom.encode(t)) end,
    roundtrip = function()
      local back = ex:submit(identity, t):result()
      assert(#back == NFLOAT)
    end,
    string = function() assert(ex:submit(length, s):result() == STRLEN) end,
    -- the same three on the process pool
    psum = function() px:submit(sum, t):result() end,
    proundtrip = function()
      local back = px:submit(identity, t):result()
      assert(#back == NFLOAT)
    end,
    pstring = function() assert(px:submit(length, s):result() == STRLEN) end,
  }, { "copy", "sum", "roundtrip", "rep", "sub", "string", "psum", "proundtrip",
       "pstring", "sumloop", "codec" })
  samples.floats, samples.string_bytes = NFLOAT, STRLEN
  return samples
end

---------------------------------------------------------------------------
-- W4: latency of one submit-then-result() round trip, nothing in flight.
local function w4(runs)
  local N = 2000
  progress("W4 %d sequential round trips x %d runs", N, runs)
  local ex <close> = loom.executor { workers = 2 }
  local px <close> = loom.process_executor { workers = 2 }
  local samples = rounds(runs, {
    roundtrip = function()
      for i = 1, N do ex:submit(inc, i):result() end
    end,
    process = function()
      for i = 1, N do px:submit(inc, i):result() end
    end,
  }, { "roundtrip", "process" })
  samples.n = N
  return samples
end

---------------------------------------------------------------------------
-- W5 (startup): a new 2-worker executor and its first result. Closing is
-- left outside the timing; it is paid once per executor, at the end.
local function w5_startup()
  local N, WARM = 200, 10
  progress("W5 startup x %d", N)
  local samples = {}
  for i = 1, WARM + N do
    local t0 = clock()
    local ex = loom.executor { workers = 2 }
    ex:submit(inc, 1):result()
    local dt = clock() - t0
    ex:close()
    if i > WARM then samples[#samples + 1] = dt end
  end
  -- the process pool: fewer samples, as Python's
  local psamples = {}
  for i = 1, 2 + 20 do
    local t0 = clock()
    local px = loom.process_executor { workers = 2 }
    px:submit(inc, 1):result()
    local dt = clock() - t0
    px:close()
    if i > 2 then psamples[#psamples + 1] = dt end
  end
  return { startup = samples, process_startup = psamples }
end

-- W5 (memory): RSS held by 100,000 queued tasks. The executor's only
-- worker is parked on a channel, so every task stays in the queue.
local function status_bytes(field)
  local f = assert(io.open("/proc/self/status"))
  local text = f:read("a")
  f:close()
  return tonumber(text:match(field .. ":%s*(%d+) kB")) * 1024
end

local function w5_mem()
  local N = 100000
  local ex = loom.executor { workers = 1 }
  -- warm-up: the same path once, so lazy one-off allocations (the worker's
  -- state, the function's first copy) land before the baseline
  for i = 1, 100 do ex:submit(inc, i):result() end
  local gate, started = loom.channel(), loom.channel()
  ex:submit(function(st, g) st:push(true); g:pop() end, started, gate)
  started:pop()   -- the worker is now blocked, and stays so until the end

  collectgarbage("collect")
  local rss0, hwm0 = status_bytes("VmRSS"), status_bytes("VmHWM")
  local futs = {}   -- kept, as a caller who wants the results would
  for i = 1, N do futs[i] = ex:submit(inc, i) end
  local rss1, hwm1 = status_bytes("VmRSS"), status_bytes("VmHWM")
  -- Peak growth: if the old high-water mark was never passed, the current
  -- RSS is the best figure we have.
  local peak = hwm1 > hwm0 and hwm1 or rss1

  ex:shutdown { wait = false, cancel_futures = true }
  gate:push(true)
  ex:close()
  return {
    n = N, rss_before = rss0, hwm_before = hwm0, rss_after = rss1, hwm_after = hwm1,
    bytes_per_task = (peak - rss0) / N, queued = #futs,
  }
end

---------------------------------------------------------------------------
-- W6: event loops. Completions delivered through loom.luv, against the
-- same tasks collected with f:result(); and the largest delay a 1 ms luv
-- timer sees while both workers run CPU-bound tasks, against the same
-- timer with no loom work.
local function w6(runs)
  local have, uv = pcall(require, "luv")
  if not have then return { skipped = "luv is not installed (apt-get install lua-luv)" } end
  local lluv = require "loom.luv"
  local N = 20000
  progress("W6 %d trivial tasks through loom.luv x %d runs", N, runs)
  local ex <close> = loom.executor { workers = 2 }
  local sink = 0
  local function got(f) sink = sink + f:result() end
  local samples = rounds(runs, {
    result = function()
      local futs = {}
      for i = 1, N do futs[i] = ex:submit(inc, i) end
      for i = 1, N do sink = sink + futs[i]:result() end
    end,
    on_done = function()
      for i = 1, N do lluv.on_done(ex:submit(inc, i), got) end
      uv.run()
    end,
    await = function()   -- a coroutine per task, as a server would have
      for i = 1, N do
        local f = ex:submit(inc, i)
        coroutine.wrap(function() sink = sink + lluv.await(f) end)()
      end
      uv.run()
    end,
  }, { "result", "on_done", "await" })
  samples.n = N

  -- The 1 ms timer: the largest gap between two ticks, over SECONDS.
  local SECONDS, TASK = 1, 0.02
  local n = calibrate(TASK)
  local function largest_gap(busy)
    local timer = uv.new_timer()
    local stop_at = uv.hrtime() + SECONDS * 1e9
    local last, worst, ticks, stopping = nil, 0, 0, false
    timer:start(1, 1, function()
      local now = uv.hrtime()
      if last and now - last > worst then worst = now - last end
      last, ticks = now, ticks + 1
      if now >= stop_at then
        stopping = true
        timer:close()
      end
    end)
    if busy then   -- keep both workers busy: 4 tasks of ~20 ms in flight
      local function feed()
        if not stopping then lluv.on_done(ex:submit(spin, n), feed) end
      end
      for _ = 1, 4 do feed() end
    end
    uv.run()
    return worst / 1e9, ticks
  end
  samples.timer_idle, samples.timer_busy = {}, {}
  samples.ticks_idle, samples.ticks_busy = {}, {}
  samples.timer_seconds, samples.task_seconds = SECONDS, TASK
  for r = 0, runs do   -- round 0 is the warm-up
    collectgarbage("collect")
    local idle, ti = largest_gap(false)
    collectgarbage("collect")
    local busy, tb = largest_gap(true)
    if r > 0 then
      samples.timer_idle[r], samples.ticks_idle[r] = idle, ti
      samples.timer_busy[r], samples.ticks_busy[r] = busy, tb
    end
  end
  return samples
end

---------------------------------------------------------------------------
local out
if MODE == "w6" then
  out = { w6 = w6(RUNS) }
elseif MODE == "mem" then
  out = w5_mem()
elseif MODE == "w2" then
  out = { w2 = w2(W2_RUNS) }
elseif MODE == "w3" then
  out = { w3 = w3(RUNS) }
elseif MODE == "all" then
  out = {
    w1 = w1(RUNS),
    w3 = w3(RUNS),
    w4 = w4(RUNS),
    w5 = w5_startup(),
    w2 = w2(W2_RUNS),   -- last: the longest, and it calibrates on a quiet heap
  }
else
  error("usage: loom_bench.lua all|w2|w3|w6|mem [runs] [w2_runs]")
end
out.lua_version = _VERSION
io.write(to_json(out), "\n")
