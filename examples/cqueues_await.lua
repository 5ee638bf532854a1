-- loom futures awaited in a cqueues controller: four coroutines each hand
-- a range of numbers to loom and await the count of primes in it, while a
-- fifth keeps ticking in the same loop.
--
--   lua5.4 examples/cqueues_await.lua [N]         (default 2000000)
local loom = require "loom"
local cqueues = require "cqueues"
local await = require("loom.cqueues").await

local N = math.tointeger(tonumber(arg and arg[1])) or 2000000

-- Counts the primes in [lo, hi): runs on a worker.
local function count_primes(lo, hi)
  local count = 0
  for k = math.max(lo, 2), hi - 1 do
    local prime = true
    for d = 2, math.floor(math.sqrt(k)) do
      if k % d == 0 then prime = false break end
    end
    if prime then count = count + 1 end
  end
  return count
end

local ex <close> = loom.executor(2)
local cq = cqueues.new()
local parts, counts, left = 4, {}, 4
local ticks = 0

for i = 1, parts do
  local lo, hi = (i - 1) * N // parts, i * N // parts
  cq:wrap(function()
    counts[i] = await(ex:submit(count_primes, lo, hi))   -- the loop runs on
    print(("primes in [%d, %d): %d"):format(lo, hi, counts[i]))
    left = left - 1
  end)
end

cq:wrap(function()   -- the loop stays responsive meanwhile
  while left > 0 do
    ticks = ticks + 1
    cqueues.sleep(0.01)
  end
end)

cq:wrap(function()   -- a task's error comes back through await
  local ok, err = pcall(await, ex:submit(error, "no such thing"))
  print("an error through await:", ok, err)
end)

assert(cq:loop())
local total = 0
for i = 1, parts do total = total + counts[i] end
print(("primes below %d: %d (the loop ticked %d times meanwhile)"):format(N, total, ticks))
