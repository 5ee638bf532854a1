-- A long soak run, excluded from the default run by its #soak tag:
--   busted --lua=lua5.4 --run=soak spec     (or: make soak)
--
-- At least 1,000,000 tasks mixed at random (fixed seed): successes,
-- errors, cancels of queued tasks, timeouts on gate-blocked tasks, wait and
-- as_completed over random subsets, channel traffic between tasks, and
-- executors created and shut down mid-stream. Every future is accounted
-- for. The resident set size after the first 100,000 tasks and at the end
-- must stay within 10%.

local loom = require "loom"
local helpers = require "spec.support.helpers"
local reliability = require "spec.support.reliability"

local PATIENCE = helpers.PATIENCE
local clock = require("loom.core").clock

local SEED = 20240611
local MIXED_TASKS = 1000000      -- at least this many mixed tasks
local BATCH = 2000               -- futures in flight at a time
local WORKERS = 2
local GENERATION = 25            -- batches per executor
local TEMP_EVERY = 10            -- a short-lived executor every so many batches
local RSS_MARK = 100000          -- tasks before the first RSS figure

---------------------------------------------------------------------------
-- Task bodies (no upvalues: they cross to the workers)
---------------------------------------------------------------------------

local function compute(x)
  return x * x + 1, "v" .. x
end

local function fail(x)
  error("boom " .. x, 0)
end

local function pusher(ch, n, base)
  for k = 1, n do ch:push(base + k) end
  return "pushed"
end

local function popper(ch, n, patience)
  local sum = 0
  for _ = 1, n do
    local v, why = ch:pop(patience)
    if v == nil then error("popper: " .. tostring(why), 0) end
    sum = sum + v
  end
  return sum
end

local function blocker(started, gate, patience)
  started:push(true)
  local v, why = gate:pop(patience)
  if v == nil then error("blocker: " .. tostring(why), 0) end
  return "released"
end

---------------------------------------------------------------------------
-- Checks
---------------------------------------------------------------------------

-- A failed check raises with a readable message (assert.* is slow for a
-- million checks, so it is only called on a mismatch).
local function check(ok, fmt, ...)
  if not ok then error(string.format(fmt, ...), 2) end
end

local stats = {
  tasks = 0,            -- every future submitted (mixed, blockers, extras)
  mixed = 0,            -- mixed tasks of the batches
  ok = 0, errors = 0, cancelled = 0, channel = 0,
  timeouts = 0, waits = 0, as_completed = 0, executors = 1,
}

-- Verifies one record { f, kind, x, expect, cancelled }.
local function verify(rec)
  local f, kind = rec.f, rec.kind
  if rec.cancelled then
    check(f:cancelled(), "future %s: cancel() returned true but it is not cancelled", kind)
    check(f:done(), "a cancelled future is not done")
    local ok, err = pcall(f.result, f)
    check(not ok and type(err) == "table" and err.kind == "cancelled",
      "a cancelled future's result gave %s", tostring(err))
    stats.cancelled = stats.cancelled + 1
    return
  end
  if kind == "ok" then
    local a, b = f:result(PATIENCE)
    check(a == rec.x * rec.x + 1 and b == "v" .. rec.x,
      "task %d returned %s, %s", rec.x, tostring(a), tostring(b))
    stats.ok = stats.ok + 1
  elseif kind == "err" then
    local e, tb = f:exception(PATIENCE)
    check(e == "boom " .. rec.x, "task %d failed with %s", rec.x, tostring(e))
    check(type(tb) == "string", "no traceback for task %d", rec.x)
    if rec.x % 7 == 0 then
      local ok, err = pcall(f.result, f)
      check(not ok and err == "boom " .. rec.x, "result of task %d raised %s", rec.x, tostring(err))
    end
    stats.errors = stats.errors + 1
  elseif kind == "push" then
    local r = f:result(PATIENCE)
    check(r == "pushed", "pusher returned %s", tostring(r))
    stats.channel = stats.channel + 1
  elseif kind == "pop" then
    local r = f:result(PATIENCE)
    check(r == rec.expect, "popper returned %s, expected %s", tostring(r), tostring(rec.expect))
    stats.channel = stats.channel + 1
  end
end

-- A random subset of the futures (with some listed twice), and the set of
-- distinct futures in it.
local function subset(random, recs, size)
  local list, set, n = {}, {}, 0
  for k = 1, size do
    local rec = recs[random(#recs)]
    list[k] = rec.f
    if not set[rec.f] then set[rec.f] = rec; n = n + 1 end
  end
  return list, set, n
end

-- wait and as_completed over random subsets of a batch where every task
-- is allowed to finish.
local function check_waiting(random, recs)
  if #recs == 0 then return end
  -- as_completed: each distinct future once, each done
  local list, set, n = subset(random, recs, 1 + random(40))
  local seen, count = {}, 0
  for f in loom.as_completed(list, PATIENCE) do
    check(set[f] ~= nil, "as_completed yielded a future not in its input")
    check(not seen[f], "as_completed yielded a future twice")
    check(f:done(), "as_completed yielded a future that is not done")
    seen[f] = true
    count = count + 1
  end
  check(count == n, "as_completed yielded %d of %d futures", count, n)
  stats.as_completed = stats.as_completed + 1
  -- wait for all
  list, set, n = subset(random, recs, 1 + random(40))
  local done, not_done = loom.wait(list, { timeout = PATIENCE })
  check(#done == n and #not_done == 0, "wait: %d done, %d not done, of %d", #done, #not_done, n)
  for _, f in ipairs(done) do check(set[f] and f:done(), "wait returned a wrong future") end
  -- wait for the first
  list, set, n = subset(random, recs, 1 + random(40))
  local when = random(2) == 1 and loom.FIRST_COMPLETED or loom.FIRST_EXCEPTION
  done, not_done = loom.wait(list, { timeout = PATIENCE, return_when = when })
  check(#done >= 1 and #done + #not_done == n, "wait(%s): %d + %d of %d", when, #done, #not_done, n)
  for _, f in ipairs(done) do check(set[f] and f:done(), "wait returned a wrong future") end
  stats.waits = stats.waits + 2
end

---------------------------------------------------------------------------
-- A batch
---------------------------------------------------------------------------

-- Submits `size` mixed tasks to `ex`. In a blocked batch every worker first
-- runs a gate-blocked task, so the batch is certainly queued: cancels must
-- succeed, timeouts must fire, and a zero-timeout wait sees only the
-- cancelled futures done. Then the gate opens and everything is verified.
-- `channels` collects the batch's channels, so that a failing run can close
-- them and wake a task blocked on one (see the test's `finally`).
local function run_batch(random, ex, size, blocked, started, gate, channels)
  local blockers = {}
  if blocked then
    for w = 1, WORKERS do blockers[w] = ex:submit(blocker, started, gate, PATIENCE) end
    for _ = 1, WORKERS do helpers.pop(started) end
    stats.tasks = stats.tasks + WORKERS
  end
  local recs, plain = {}, {}
  local i = 0
  while i < size do
    local r = random(100)
    local x = random(1000000)
    if r <= 6 and i + 2 <= size then
      -- a pair talking through a channel: the pusher is queued first, so
      -- when the popper starts its pusher has started too (no deadlock)
      local ch = loom.channel(random(3) == 1 and random(4) or nil)
      channels[#channels + 1] = ch
      local n, base = random(5), random(1000)
      recs[#recs + 1] = { f = ex:submit(pusher, ch, n, base), kind = "push" }
      recs[#recs + 1] = { f = ex:submit(popper, ch, n, PATIENCE), kind = "pop",
                          expect = n * base + n * (n + 1) // 2 }
      i = i + 2
    else
      local rec
      if r <= 80 then
        rec = { f = ex:submit(compute, x), kind = "ok", x = x }
      else
        rec = { f = ex:submit(fail, x), kind = "err", x = x }
      end
      recs[#recs + 1] = rec
      plain[#plain + 1] = rec
      i = i + 1
    end
  end
  stats.tasks = stats.tasks + size
  stats.mixed = stats.mixed + size

  -- cancels of random plain tasks (never of a channel pair: its partner
  -- would wait in vain)
  local ncancel = random(#plain // 20 + 1)
  for _ = 1, ncancel do
    local rec = plain[random(#plain)]
    if not rec.cancelled then
      local ok = rec.f:cancel()
      if blocked then check(ok, "cancel of a queued task returned %s", tostring(ok)) end
      rec.cancelled = ok
    end
  end

  if blocked then
    -- timeouts: the blocked tasks and queued ones are certainly not done
    for w = 1, WORKERS do
      local ok, err = pcall(blockers[w].result, blockers[w], 0)
      check(not ok and type(err) == "table" and err.kind == "timeout",
        "result(0) of a blocked task gave %s", tostring(err))
      stats.timeouts = stats.timeouts + 1
    end
    for _ = 1, 3 do
      local rec = recs[random(#recs)]
      if not rec.cancelled then
        local method = random(2) == 1 and "result" or "exception"
        local ok, err = pcall(rec.f[method], rec.f, 0)
        check(not ok and type(err) == "table" and err.kind == "timeout",
          "%s(0) of a queued task gave %s", method, tostring(err))
        check(not rec.f:done() and not rec.f:running(), "a queued task is done or running")
        stats.timeouts = stats.timeouts + 1
      end
    end
    -- a zero-timeout wait sees exactly the cancelled futures done
    local list, set = subset(random, recs, 1 + random(60))
    local done, not_done = loom.wait(list, { timeout = 0 })
    for _, f in ipairs(done) do
      check(set[f].cancelled, "wait(timeout = 0) found a queued task done")
    end
    for _, f in ipairs(not_done) do
      check(not set[f].cancelled, "wait(timeout = 0) missed a cancelled future")
    end
    stats.waits = stats.waits + 1
    -- as_completed with a zero timeout raises once the cancelled ones are out
    local list2 = subset(random, recs, 1 + random(60))
    local ok, err = pcall(function()
      for f in loom.as_completed(list2, 0) do
        check(f:cancelled(), "as_completed(timeout = 0) yielded a queued task")
      end
    end)
    if not ok then
      check(type(err) == "table" and err.kind == "timeout",
        "as_completed(timeout = 0) raised %s", tostring(err))
    end
    stats.as_completed = stats.as_completed + 1
    -- open the gate
    for _ = 1, WORKERS do gate:push(true) end
    for w = 1, WORKERS do
      local v = blockers[w]:result(PATIENCE)
      check(v == "released", "a blocked task returned %s", tostring(v))
    end
  end

  check_waiting(random, recs)
  for k = 1, #recs do verify(recs[k]) end
end

---------------------------------------------------------------------------
-- Executors created and shut down mid-stream
---------------------------------------------------------------------------

-- Retires `old` in one of three ways, with work still in flight.
local function retire(random, old, started, gate)
  local mode = random(3)
  if mode == 1 then
    old:shutdown()
  elseif mode == 2 then
    -- shutdown{wait = false}: the queued work still runs
    local extras = {}
    for k = 1, 100 do extras[k] = { f = old:submit(compute, k), kind = "ok", x = k } end
    stats.tasks = stats.tasks + 100
    old:shutdown { wait = false }
    local ok, err = pcall(old.submit, old, compute, 1)
    check(not ok and err.kind == "shutdown", "submit after shutdown gave %s", tostring(err))
    for k = 1, 100 do verify(extras[k]) end
    old:shutdown()
  else
    -- shutdown{cancel_futures = true}: the queued work is cancelled
    local blockers = {}
    for w = 1, WORKERS do blockers[w] = old:submit(blocker, started, gate, PATIENCE) end
    for _ = 1, WORKERS do helpers.pop(started) end
    local extras = {}
    for k = 1, 100 do extras[k] = old:submit(compute, k) end
    stats.tasks = stats.tasks + 100 + WORKERS
    old:shutdown { wait = false, cancel_futures = true }
    for k = 1, 100 do
      check(extras[k]:cancelled(), "shutdown{cancel_futures} left a queued task")
      check(extras[k]:cancel(), "cancel() of a cancelled future returned false")
      stats.cancelled = stats.cancelled + 1
    end
    for _ = 1, WORKERS do gate:push(true) end
    for w = 1, WORKERS do
      check(blockers[w]:result(PATIENCE) == "released", "a blocked task did not finish")
    end
    old:shutdown()
  end
end

-- A short-lived executor, never shut down: left to the garbage collector.
local function temporary_executor()
  local t = loom.executor(1)
  local recs = {}
  for k = 1, 50 do recs[k] = { f = t:submit(compute, k), kind = "ok", x = k } end
  stats.tasks = stats.tasks + 50
  stats.executors = stats.executors + 1
  for k = 1, 50 do verify(recs[k]) end
end

---------------------------------------------------------------------------
-- The run
---------------------------------------------------------------------------

describe("soak #soak", function()
  it("runs 1,000,000 mixed tasks with every future accounted for and RSS stable #soak", function()
    local s = helpers.scope(finally)
    -- If the test fails half-way, close the current batch's channels (a
    -- pusher may wait on a full one) before the scope shuts the executors
    -- down. busted keeps one `finally` per test: this one replaces the
    -- scope's and calls its cleanup itself.
    local batch_channels = {}
    finally(function()
      for _, ch in ipairs(batch_channels) do ch:close() end
      s:cleanup()
    end)
    local random = reliability.random(SEED)
    local started, gate = loom.channel(), s:gate()
    local ex = s:executor(WORKERS)
    local t0 = clock()
    local rss_first, rss_first_tasks
    local batch = 0
    while stats.mixed < MIXED_TASKS do
      batch = batch + 1
      local size = math.min(BATCH, MIXED_TASKS - stats.mixed)
      run_batch(random, ex, size, random(2) == 1, started, gate, batch_channels)
      for k = #batch_channels, 1, -1 do batch_channels[k] = nil end
      if batch % TEMP_EVERY == 0 then temporary_executor() end
      if batch % GENERATION == 0 then
        retire(random, ex, started, gate)
        ex = s:executor(WORKERS)
        stats.executors = stats.executors + 1
      end
      if not rss_first and stats.tasks >= RSS_MARK then
        rss_first, rss_first_tasks = reliability.rss_kb(), stats.tasks
      end
    end
    ex:shutdown()
    local elapsed = clock() - t0
    local rss_end = reliability.rss_kb()

    -- every mixed task is accounted for
    assert.are.equal(MIXED_TASKS, stats.mixed)
    assert.is_true(stats.tasks >= MIXED_TASKS)
    assert.is_true(stats.ok > 0 and stats.errors > 0 and stats.cancelled > 0
                   and stats.channel > 0 and stats.timeouts > 0)

    print(string.format(
      "\nsoak: %d tasks (%d mixed: %d ok, %d errors, %d cancelled, %d channel) "
      .. "on %d executors in %.1f s (%.0f tasks/s); %d timeouts, %d waits, "
      .. "%d as_completed checked",
      stats.tasks, stats.mixed, stats.ok, stats.errors, stats.cancelled, stats.channel,
      stats.executors, elapsed, stats.tasks / elapsed, stats.timeouts, stats.waits,
      stats.as_completed))
    if rss_first and rss_end then
      print(string.format("soak: VmRSS %d kB after %d tasks, %d kB at the end (%+.1f%%)",
        rss_first, rss_first_tasks, rss_end, (rss_end - rss_first) * 100 / rss_first))
      assert(rss_end <= rss_first * 1.10, string.format(
        "RSS grew from %d kB to %d kB (more than 10%%)", rss_first, rss_end))
    else
      print("soak: VmRSS not available on this system")
    end
  end)
end)
