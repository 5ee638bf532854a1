-- Python:
--   with ProcessPoolExecutor() as executor:
--       for number, prime in zip(PRIMES, executor.map(is_prime, PRIMES)):
--           print('%d is prime: %s' % (number, prime))
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

local executor <close> = loom.executor()
for i, prime in executor:map(is_prime, PRIMES) do
  print(("%d is prime: %s"):format(PRIMES[i], prime))
end
