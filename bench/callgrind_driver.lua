-- One workload for bench/callgrind.sh, which runs it under callgrind:
--   lua5.4 bench/callgrind_driver.lua W1|W4 N
-- Waiting happens inside uncounted(...), so the caller's count is the work
-- of submit and of result() on a finished future, not a spin whose length
-- depends on timing (see the comment at the top of bench/callgrind.sh).
local loom = require "loom"
local ctl = require "callgrind_ctl"
local uncounted = ctl.uncounted

local workload, n = arg[1], math.tointeger(tonumber(arg[2]))
if not (workload == "W1" or workload == "W4") or not n then
  error("usage: lua5.4 bench/callgrind_driver.lua W1|W4 N")
end
local function inc(x) return x + 1 end

local ex = loom.executor { workers = 2 }
uncounted(function() ex:submit(inc, 0):result() end)

if workload == "W1" then
  -- Park both workers on a gate: the submits then run alone, with no
  -- worker taking the queue's lock and none to wake.
  local gate, parked = loom.channel(), loom.channel()
  for _ = 1, 2 do ex:submit(function() parked:push(1); gate:pop() end) end
  uncounted(function() parked:pop(); parked:pop() end)
  local futs = {}
  for i = 1, n do futs[i] = ex:submit(inc, i) end
  uncounted(function() gate:push(1); gate:push(1); loom.wait(futs) end)
  for i = 1, n do futs[i]:result() end
else   -- W4
  -- Wait until f is done, then until the workers have stopped spinning
  -- and sleep: every submit then finds the pool idle and wakes a worker.
  local function settle(f) f:exception(); ctl.sleep(0.002) end
  for i = 1, n do
    local f = ex:submit(inc, i)
    uncounted(settle, f)
    f:result()
  end
end
-- Start-up and close wait for the workers: not counted. The futures are
-- freed at exit, and that counts.
uncounted(ex.close, ex)
