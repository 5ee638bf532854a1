--- loom.cqueues: loom futures in a cqueues controller.
--
--     local await = require("loom.cqueues").await
--     local cq = cqueues.new()
--     cq:wrap(function() print(await(ex:submit(count_primes, 1e6))) end)
--     assert(cq:loop())
--
-- Futures follow cqueues' polling protocol themselves (`cqueues.poll(f)`
-- works), but each one then holds a descriptor of its own. `await` shares
-- one instead: per controller, one completion queue and one pump coroutine
-- that polls it and wakes the coroutines whose futures completed. The pump
-- runs only while some future is awaited, so `cq:loop()` returns once the
-- awaited work is done. Outside a controller, `await` blocks in
-- `cqueues.poll` like any cqueues call.
local loom = require "loom"
local core = require "loom.core"
local cqueues = require "cqueues"
local condition = require "cqueues.condition"

local type, error, setmetatable = type, error, setmetatable

local M = {}

-- controller -> { queue, waiting = {future -> condition}, pumping }
local loops = setmetatable({}, { __mode = "k" })

local function pump(st)
  local queue, waiting = st.queue, st.waiting
  while #queue > 0 do
    cqueues.poll(queue)   -- readable once a completed future waits
    loom.poll()           -- the done callbacks that are due, in the loop
    while true do
      local f = queue:pop(0)
      if not f then break end
      local cv = waiting[f]
      waiting[f] = nil
      cv:signal()
    end
  end
  st.pumping = false
end

--- loom.cqueues.await(f): suspend the calling coroutine until f is done;
-- return its results, or raise its error (a `cancelled` error if it was
-- cancelled).
function M.await(f)
  if not core.is_future(f) then
    error("bad argument #1 to 'await' (loom.Future expected, got " .. type(f) .. ")", 2)
  end
  if not f:done() then
    local cq = cqueues.running()
    if not cq then
      -- not in a controller: cqueues.poll blocks on the future itself
      repeat cqueues.poll(f) until f:done()
    else
      local st = loops[cq]
      if not st then
        st = { queue = loom.completion_queue(), waiting = {}, pumping = false }
        loops[cq] = st
      end
      local cv = st.waiting[f]
      if not cv then
        cv = condition.new()
        st.waiting[f] = cv
        st.queue:add(f)
      end
      if not st.pumping then
        st.pumping = true
        cq:wrap(pump, st)
      end
      -- only the pump signals, and it runs only while this one is
      -- suspended: no signal falls between the test and the wait
      repeat cv:wait() until f:done()
    end
  end
  return f:result(0)
end

return M
