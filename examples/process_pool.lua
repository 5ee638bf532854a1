-- CPU-bound work on a pool of worker processes, as in Python's
--   with ProcessPoolExecutor() as executor:
--       for number, prime in zip(PRIMES, executor.map(is_prime, PRIMES)):
--           print('%d is prime: %s' % (number, prime))
-- then a task that crashes its worker process while the others finish: only
-- its own future fails (kind "crashed"), and the pool starts a new worker.
--   lua5.4 examples/process_pool.lua
local loom = require "loom"

local PRIMES = {
  112272535095293, 112582705942171, 112272535095293,
  115280095190773, 115797848077099, 1099726899285419,
}

local function is_prime(n)
  if n < 2 then return false end
  if n == 2 then return true end
  if n % 2 == 0 then return false end
  local sqrt_n = math.floor(math.sqrt(n))
  for i = 3, sqrt_n, 2 do
    if n % i == 0 then return false end
  end
  return true
end

local executor <close> = loom.process_executor()
for i, prime in executor:map(is_prime, PRIMES) do
  print(("%d is prime: %s"):format(PRIMES[i], prime))
end

-- A task that ends its own process, as a segfault in a C module or the
-- kernel's OOM killer would: its worker is killed with SIGKILL.
local function crash()
  local stat = assert(io.open("/proc/self/stat"))
  local pid = stat:read("n")
  stat:close()
  os.execute("kill -9 " .. pid)
  while true do end   -- never reached: the signal ends the process first
end

local futures = {}
for i = 1, 4 do futures[i] = executor:submit(is_prime, PRIMES[i]) end
local bad = executor:submit(crash)
for i = 5, 6 do futures[i] = executor:submit(is_prime, PRIMES[i]) end

local err = bad:exception()
print(("the crashing task failed: %s (%s)"):format(err.kind, err.message))
local ok = 0
for i = 1, 6 do
  if futures[i]:result() == (i ~= 6) then ok = ok + 1 end
end
print(("the other tasks finished: %d of 6"):format(ok))
