-- Python:
--   with ThreadPoolExecutor(max_workers=1) as executor:
--       future = executor.submit(pow, 323, 1235)
--       print(future.result())
--
-- Lua has no big integers, so this computes 323^1235 modulo a prime.
local loom = require "loom"

local function powmod(base, exp, mod)
  local result = 1
  base = base % mod
  while exp > 0 do
    if exp % 2 == 1 then result = result * base % mod end
    base = base * base % mod
    exp = exp // 2
  end
  return result
end

local executor <close> = loom.executor { workers = 1 }
local future = executor:submit(powmod, 323, 1235, 1000000007)
print(future:result())
-- C functions of the standard library can be submitted as well:
print(executor:submit(string.rep, "ab", 3):result())
