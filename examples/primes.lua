-- Counts the primes below N, first serially and then split over a loom
-- executor, and prints both times and the speedup.
--   lua5.4 examples/primes.lua [N] [workers]
local loom = require "loom"

local N = tonumber(arg and arg[1]) or 2000000
local workers = tonumber(arg and arg[2]) or loom.cpu_count()

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

local clock = require("loom.core").clock

local ex <close> = loom.executor { workers = workers }

local function parallel()
  local chunks, step = {}, N // (workers * 32) + 1
  for lo = 1, N, step do chunks[#chunks + 1] = lo end
  local total = 0
  for _, count in ex:map(function(lo) return count_primes(lo, math.min(lo + step, N)) end,
                         chunks) do
    total = total + count
  end
  return total
end

-- Best of three, serial and parallel taken in turn: a shared machine's
-- speed drifts, and the best time is the least disturbed one.
local t_serial, t_parallel, serial, total = math.huge, math.huge, nil, nil
for _ = 1, 3 do
  local t0 = clock()
  serial = count_primes(1, N)
  t_serial = math.min(t_serial, clock() - t0)
  t0 = clock()
  total = parallel()
  t_parallel = math.min(t_parallel, clock() - t0)
end

assert(total == serial, ("mismatch: %d ~= %d"):format(total, serial))
print(("primes below %d: %d"):format(N, serial))
print(("serial:   %.2f s (best of 3)"):format(t_serial))
print(("loom x%d: %.2f s (best of 3)"):format(workers, t_parallel))
print(("speedup:  %.2fx"):format(t_serial / t_parallel))
