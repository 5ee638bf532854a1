-- Counts the primes below N, first serially and then split over a loom
-- executor, and prints both times and the speedup. For reference it also
-- times the same split over separate plain Lua processes (no loom): that
-- is what the machine gives independent interpreters at the moment, and a
-- pool of threads cannot do better.
--   lua5.4 examples/primes.lua [N] [workers]
-- (Run as `primes.lua --range lo hi`, it prints the count for [lo, hi):
-- that is how the reference processes are started.)

-- Trial division: deliberately CPU-bound pure Lua.
local function count_primes(lo, hi)
  local count = 0
  for n = math.max(lo, 2), hi - 1 do
    local prime = true
    if n % 2 == 0 then prime = n == 2
    else
      for d = 3, math.floor(math.sqrt(n)), 2 do
        if n % d == 0 then prime = false; break end
      end
    end
    if prime then count = count + 1 end
  end
  return count
end

if arg and arg[1] == "--range" then   -- a reference process
  local total = 0
  for k = 2, #arg, 2 do
    total = total + count_primes(math.tointeger(arg[k]), math.tointeger(arg[k + 1]))
  end
  print(total)
  return
end

local loom = require "loom"
local clock = require("loom.core").clock

local N = tonumber(arg and arg[1]) or 2000000
local workers = tonumber(arg and arg[2]) or loom.cpu_count()

local ex <close> = loom.executor { workers = workers }

-- Many more chunks than workers: higher numbers cost more to test, and
-- small chunks keep every worker busy to the end.
local chunks, step = {}, N // (workers * 32) + 1
for lo = 1, N, step do chunks[#chunks + 1] = { lo, math.min(lo + step, N) } end

local function parallel()
  local total = 0
  for _, count in ex:map(function(c) return count_primes(c[1], c[2]) end, chunks) do
    total = total + count
  end
  return total
end

-- The same chunks dealt round-robin to `workers` plain lua5.4 processes,
-- all started before any is waited for.
local function quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
local interp, script = quote(arg and arg[-1] or "lua5.4"), quote(arg and arg[0])
local function processes()
  local pipes = {}
  for w = 1, workers do
    local ranges = {}
    for k = w, #chunks, workers do
      ranges[#ranges + 1] = chunks[k][1] .. " " .. chunks[k][2]
    end
    pipes[w] = assert(io.popen(("%s %s --range %s"):format(interp, script,
                                                          table.concat(ranges, " "))))
  end
  local total = 0
  for w = 1, workers do
    total = total + assert(math.tointeger(tonumber(pipes[w]:read("l"))))
    pipes[w]:close()
  end
  return total
end

-- Best of three, the three ways taken in turn: a shared machine's speed
-- drifts, and the best time is the least disturbed one.
local best = { serial = math.huge, loom = math.huge, procs = math.huge }
local serial, total, ptotal
for _ = 1, 3 do
  local t0 = clock()
  serial = count_primes(1, N)
  best.serial = math.min(best.serial, clock() - t0)
  t0 = clock()
  total = parallel()
  best.loom = math.min(best.loom, clock() - t0)
  t0 = clock()
  ptotal = processes()
  best.procs = math.min(best.procs, clock() - t0)
end

assert(total == serial, ("mismatch: %d ~= %d"):format(total, serial))
assert(ptotal == serial, ("mismatch: %d ~= %d"):format(ptotal, serial))
print(("primes below %d: %d"):format(N, serial))
print(("serial:   %.2f s (best of 3)"):format(best.serial))
print(("loom x%d: %.2f s (best of 3)"):format(workers, best.loom))
print(("speedup:  %.2fx"):format(best.serial / best.loom))
print(("for reference, %d plain lua5.4 processes: %.2f s, %.2fx: what this machine"
       .. " gives separate interpreters right now"):format(workers, best.procs,
                                                             best.serial / best.procs))
