--- loom.luv: loom futures in a luv (libuv) event loop.
--
--     local await = require("loom.luv").await
--     coroutine.wrap(function()
--       print(await(ex:submit(count_primes, 1e6)))   -- the loop keeps running
--     end)()
--     uv.run()
--
-- One completion queue and one `uv_poll` on its descriptor serve every
-- future in flight. The poll handle is active (and keeps `uv.run()` going)
-- only while some future is awaited or has an `on_done` pending. When its
-- descriptor fires, the due done callbacks run (`loom.poll()`), then every
-- completed future's waiters, in completion order.
--
-- luv comes from `package.loaded.luv`, else Neovim's `vim.uv` (`vim.loop`),
-- else `require "luv"`; `loom.luv.using(uv)` picks another.
local loom = require "loom"
local core = require "loom.core"

local type, error, pcall = type, error, pcall
local co_running, co_yield, co_resume, co_status =
  coroutine.running, coroutine.yield, coroutine.resume, coroutine.status
local traceback = debug.traceback

local M = {}

local uv            -- the luv module in use
local queue, poll   -- made on first use
local active = false
-- future -> what its completion calls: a function (on_done), a coroutine
-- (await), or a list of them when there are several
local waiting = {}

local function find_luv()
  if package.loaded.luv then return package.loaded.luv end
  local vim = rawget(_G, "vim")
  if type(vim) == "table" and (vim.uv or vim.loop) then return vim.uv or vim.loop end
  return require "luv"
end

--- loom.luv.using(uv): use this luv module (before the first await).
function M.using(mod)
  if type(mod) ~= "table" or type(mod.new_poll) ~= "function" then
    error("bad argument #1 to 'using' (a luv module expected)", 2)
  end
  if queue then error("loom.luv is in use already: call using() first", 2) end
  uv = mod
  return M
end

local dispatch

-- Registers h (a function to call with f, or a coroutine to resume) for
-- when f is done, from the loop.
local function watch(f, h)
  if not queue then
    uv = uv or find_luv()
    queue = loom.completion_queue()
  end
  if not poll or poll:is_closing() then   -- first use, or closed by uv.walk
    poll = uv.new_poll(queue:pollfd())
    active = false
  end
  local hs = waiting[f]
  if hs == nil then
    queue:add(f)
    waiting[f] = h
  elseif type(hs) == "table" then
    hs[#hs + 1] = h
  else
    waiting[f] = { hs, h }
  end
  if not active then
    poll:start("r", dispatch)
    active = true
  end
end

-- Calls or resumes h for the done future f; returns an error or nil.
local function fire(h, f)
  if type(h) == "thread" then
    if co_status(h) ~= "suspended" then return nil end
    local ok, e = co_resume(h)
    if not ok then return traceback(h, e) end
  else
    local ok, e = pcall(h, f)
    if not ok then return e == nil and "nil" or e end
  end
  return nil
end

-- The poll callback: the queue's descriptor is readable.
function dispatch(err)
  if err then error("loom.luv: polling the completion queue failed: " .. tostring(err)) end
  local failure
  loom.poll()
  while true do
    local f = queue:pop(0)
    if not f then break end
    local hs = waiting[f]
    waiting[f] = nil
    -- each runs even when one before it fails; the first error is raised
    -- once all have run (luv reports the errors of its callbacks)
    if type(hs) == "table" then
      for i = 1, #hs do
        local e = fire(hs[i], f)
        if failure == nil then failure = e end
      end
    else
      local e = fire(hs, f)
      if failure == nil then failure = e end
    end
  end
  if #queue == 0 and active then
    poll:stop()   -- nothing awaited: let uv.run() return
    active = false
  end
  if failure ~= nil then error(failure, 0) end
end

local function check_future(f, fname)
  if not core.is_future(f) then
    error(("bad argument #1 to '%s' (loom.Future expected, got %s)")
          :format(fname, type(f)), 3)
  end
end

--- loom.luv.await(f): suspend the calling coroutine until f is done; return
-- its results, or raise its error (a `cancelled` error if it was
-- cancelled). Call it from a coroutine that the luv loop resumes.
function M.await(f)
  check_future(f, "await")
  if not f:done() then
    local co, main = co_running()
    if main then
      error("loom.luv.await must be called from a coroutine (not the main one)", 2)
    end
    watch(f, co)
    -- a resume for anything else finds f not done and waits again
    repeat co_yield() until f:done()
  end
  return f:result(0)
end

--- loom.luv.on_done(f, fn): call fn(f) from the loop once f is done (on
-- the next loop iteration if it is done already).
function M.on_done(f, fn)
  check_future(f, "on_done")
  if type(fn) ~= "function" then
    error("bad argument #2 to 'on_done' (function expected, got " .. type(fn) .. ")", 2)
  end
  watch(f, fn)
end

--- loom.luv.pending() -> how many futures are awaited or watched.
function M.pending()
  return queue and #queue or 0
end

return M
