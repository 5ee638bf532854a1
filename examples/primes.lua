-- Counts the primes below N, first serially and then split over a loom
-- executor, and prints both times and the speedup.
--   lua5.4 examples/primes.lua [N] [workers]
local loom = require "loom"

local N = tonumber(arg and arg[1]) or 3000000
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

local t0 = clock()
local serial = count_primes(1, N)
local t_serial = clock() - t0

t0 = clock()
local ex <close> = loom.executor { workers = workers }
local chunks, step = {}, N // (workers * 32) + 1
for lo = 1, N, step do chunks[#chunks + 1] = lo end
local total = 0
for _, count in ex:map(function(lo) return count_primes(lo, math.min(lo + step, N)) end,
                       chunks) do
  total = total + count
end
local t_parallel = clock() - t0

assert(total == serial, ("mismatch: %d ~= %d"):format(total, serial))
print(("primes below %d: %d"):format(N, serial))
print(("serial:   %.2f s"):format(t_serial))
print(("loom x%d: %.2f s"):format(workers, t_parallel))
print(("speedup:  %.2fx"):format(t_serial / t_parallel))
