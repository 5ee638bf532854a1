--- loom: a parallel executor for Lua 5.4.
-- The blocking primitives (submit, waiting on futures, channels, the
-- value copier) are in C (`loom.core`); the conveniences that read better
-- in Lua (option parsing, `map`, `as_completed`, `wait`) are here.
local core = require "loom.core"

local type, error, ipairs = type, error, ipairs
local math_type, huge = math.type, math.huge
local table_pack, table_unpack = table.pack, table.unpack
local clock = core.clock

local loom = {
  FIRST_COMPLETED = "first_completed",
  FIRST_EXCEPTION = "first_exception",
  ALL_COMPLETED = "all_completed",
  channel = core.channel,
  cpu_count = core.cpu_count,
  encode = core.encode,
  Error = core.Error,
}

local function raise(kind, message)
  error(core.error(kind, message), 2)
end

-- Argument errors point at the caller's line: the first function on the
-- stack that is not in this file (whichever helper here raised it).
local getinfo = debug and debug.getinfo
local SOURCE = getinfo and getinfo(1, "S").source

local function raise_outside(msg)
  local level = 2
  if not getinfo then error(msg, 4) end
  while true do
    local info = getinfo(level, "S")
    if info == nil then error(msg, 0) end
    if info.source ~= SOURCE then error(msg, level) end
    level = level + 1
  end
end

local function argerror(n, fname, msg)
  raise_outside(("bad argument #%d to '%s' (%s)"):format(n, fname, msg))
end

local function check_timeout(t, n, fname)
  if t == nil then return nil end
  if type(t) ~= "number" then
    argerror(n, fname, "number expected, got " .. type(t))
  end
  if t ~= t then argerror(n, fname, "timeout is NaN") end
  return t
end

-- A value's type as Lua's own messages name it (a metatable's __name).
local function typename(v)
  local mt = getmetatable(v)
  if type(mt) == "table" and type(rawget(mt, "__name")) == "string" then
    return mt.__name
  end
  return type(v)
end

-- A value as an error message shows it: its type, and its value when
-- that is short (numbers with an integer value read alike, 5000 and
-- 5000.0, as the options take them alike).
local function describe(v)
  local t = type(v)
  if t == "number" then
    return "number " .. tostring(math.tointeger(v) or v)
  elseif t == "string" then
    if #v > 40 then v = v:sub(1, 37) .. "..." end
    return ('string "%s"'):format(v:gsub('[%c"\\]', function(c)
      return ("\\%d"):format(c:byte())
    end))
  elseif t == "boolean" then
    return "boolean " .. tostring(v)
  end
  return typename(v)
end

-- The typical mistakes are a typo, a transposition, another case, or a
-- part of the name: the valid name closest in edits (Damerau-Levenshtein,
-- optimal string alignment), or one that contains the key.
local function distance(a, b)
  local prev2, prev = {}, {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      local d = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
      if i > 1 and j > 1 and a:byte(i) == b:byte(j - 1)
         and a:byte(i - 1) == b:byte(j) then
        d = math.min(d, prev2[j - 2] + 1)
      end
      cur[j] = d
    end
    prev2, prev = prev, cur
  end
  return prev[#b]
end

local function closest(key, names)
  local best, bestd
  local lkey = key:lower()
  for _, name in ipairs(names) do
    local d = distance(lkey, name)
    local near = d <= (#name >= 6 and 2 or 1)
       or (#lkey >= 4 and name:find(lkey, 1, true))
       or (#name >= 4 and lkey:find(name, 1, true))
    if near and (not bestd or d < bestd) then best, bestd = name, d end
  end
  return best
end

-- Rules for option values: each returns the value to use, or nil and
-- what the value must be ("KEY must be WHAT, got VALUE"), and maybe the
-- whole message instead, when the value does not matter.
local rules = {}

function rules.integer(min, max)
  return function(v)
    local i = math_type(v) and math.tointeger(v)
    if not i or i < min then return nil, "an integer >= " .. min end
    if max and i > max then return nil, "at most " .. max end
    return i
  end
end

function rules.type(t)
  local what = (t == "integer" and "an " or "a ") .. t
  return function(v)
    if type(v) ~= t then return nil, what end
    return v
  end
end

function rules.positive(v)
  if type(v) ~= "number" or v ~= v or v <= 0 then
    return nil, "a number > 0"
  end
  return v
end

-- seconds to wait: any number but NaN (a negative one is 0)
function rules.timeout(v)
  if type(v) ~= "number" then return nil, "a number of seconds" end
  if v ~= v then return nil, nil, "must not be NaN" end
  return v
end

function rules.one_of(values, what)
  local ok = {}
  for _, v in ipairs(values) do ok[v] = true end
  return function(v)
    if ok[v] then return v end
    return nil, what
  end
end

function rules.either(a, b, what)
  return function(v)
    local r = a(v)
    if r ~= nil then return r end
    r = b(v)
    if r ~= nil then return r end
    return nil, what
  end
end

local MAX_INIT_ARGS = 100000

function rules.sequence(v)
  if type(v) ~= "table" then return nil, "a table" end
  local n = #v
  if math_type(n) ~= "integer" or n < 0 or n > MAX_INIT_ARGS then
    return nil, nil, ("has an unreasonable length (%s): at most %d values")
                     :format(tostring(math.tointeger(n) or n), MAX_INIT_ARGS)
  end
  return v
end

--[[
Check the options table opts of argument #n of fname against spec, a
table name -> rule; returns a table of the values the rules returned
(absent options stay absent).  An unknown key is an error that names it
and the closest valid one.  With positional = true, the integer keys
1..#opts are allowed too (map's function and sequences).
--]]
local function check_options(opts, n, fname, spec, positional)
  local names = spec.names
  if not names then   -- sorted once, for messages
    names = {}
    for k in pairs(spec) do names[#names + 1] = k end
    table.sort(names)
    spec.names = names
  end
  local npos = positional and #opts or 0
  for k in next, opts do
    if spec[k] == nil or k == "names" then
      if not (math_type(k) == "integer" and k >= 1 and k <= npos) then
        local hint = type(k) == "string" and closest(k, names)
        argerror(n, fname, hint
          and ("unknown option '%s' (did you mean '%s'?)"):format(k, hint)
          or ("unknown option %s (options: %s)"):format(
               type(k) == "string" and "'" .. k .. "'"
               or "[" .. ((math_type(k) or type(k) == "boolean")
                          and tostring(k) or typename(k)) .. "]",
               table.concat(names, ", ")))
      end
    end
  end
  local out = {}
  for _, k in ipairs(names) do
    local v = rawget(opts, k)
    if v ~= nil then
      local r, what, msg = spec[k](v)
      if r == nil then
        argerror(n, fname, msg and k .. " " .. msg
                 or ("%s must be %s, got %s"):format(k, what, describe(v)))
      end
      out[k] = r
    end
  end
  return out
end

-- An options argument: nil (none) or a table.
local function options(opts, n, fname, spec, positional)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    argerror(n, fname, "table expected, got " .. typename(opts))
  end
  return check_options(opts, n, fname, spec, positional)
end

local WORKERS_MAX = 4096

-- The options of loom.executor; loom.process_executor adds its own.
local EXECUTOR_OPTIONS = {
  workers = rules.integer(1, WORKERS_MAX),
  init = rules.type("function"),
  init_args = rules.sequence,
  name = rules.type("string"),
  task_timeout = rules.positive,
  memory_limit = rules.integer(1),
}

-- The options of an executor, checked (opts: nil, a number or a table).
local function executor_options(opts, fname, spec)
  if type(opts) == "number" then opts = { workers = opts }
  elseif opts ~= nil and type(opts) ~= "table" then
    argerror(1, fname, "table or number expected, got " .. typename(opts))
  end
  if type(opts) == "table" and rawget(opts, 1) ~= nil and opts.workers == nil
     and math_type(rawget(opts, 1)) then   -- loom.executor{4}
    argerror(1, fname, ("unknown option [1] (did you mean {workers = %s}?)")
             :format(tostring(rawget(opts, 1))))
  end
  local o = options(opts, 1, fname, spec)
  if o.workers == nil then o.workers = core.cpu_count() end
  if o.task_timeout == huge then o.task_timeout = nil end   -- no limit
  return o
end

-- Call a core constructor from a function of this file: a string error
-- it raises (a failure of the system, such as no thread) is raised again
-- at the caller's line, not at ours.
local function construct(fn, ...)
  local ok, r = pcall(fn, ...)
  if ok then return r end
  if type(r) == "string" then
    raise_outside((r:gsub("^[^\n]-:%d+: ", "", 1)))
  end
  error(r, 0)
end

--- loom.executor([opts]) -> executor
-- opts: a number (= workers) or a table {workers, init, init_args, name,
-- task_timeout, memory_limit}.
function loom.executor(opts)
  return construct(core.executor, executor_options(opts, "executor",
                                                   EXECUTOR_OPTIONS))
end

-- Unique futures of a sequence, in their first order.
local function distinct(futures, fname)
  if type(futures) ~= "table" then
    argerror(1, fname, "table expected, got " .. type(futures))
  end
  local list, seen = {}, {}
  for i = 1, #futures do
    local f = futures[i]
    if not core.is_future(f) then
      argerror(1, fname, ("element #%d is not a future"):format(i))
    end
    if not seen[f] then
      seen[f] = true
      list[#list + 1] = f
    end
  end
  return list
end

--- loom.as_completed(futures [, timeout]) -> iterator over futures
function loom.as_completed(futures, timeout)
  local list = distinct(futures, "as_completed")
  timeout = check_timeout(timeout, 2, "as_completed")
  local deadline = timeout and clock() + timeout
  local watch = core.watch(list)
  local n, yielded = #list, 0
  return function()
    if yielded == n then
      watch:close()
      return nil
    end
    local left = deadline and deadline - clock()
    if left and left < 0 then left = 0 end
    local i = watch:next(left)
    if not i then
      watch:close()
      raise("timeout", ("%d (of %d) futures unfinished")
            :format(n - yielded, n))
    end
    yielded = yielded + 1
    -- a yielded future is the loop body's to keep or drop
    local f = list[i]
    list[i] = nil
    return f
  end
end

--- loom.wait(futures [, opts]) -> done, not_done
local WAIT_OPTIONS = {
  timeout = rules.timeout,
  return_when = rules.one_of({ loom.FIRST_COMPLETED, loom.FIRST_EXCEPTION,
                               loom.ALL_COMPLETED },
    "loom.FIRST_COMPLETED, loom.FIRST_EXCEPTION or loom.ALL_COMPLETED"),
}

function loom.wait(futures, opts)
  local list = distinct(futures, "wait")
  opts = options(opts, 2, "wait", WAIT_OPTIONS)
  local timeout = opts.timeout
  local when = opts.return_when or loom.ALL_COMPLETED
  local deadline = timeout and clock() + timeout
  local watch = core.watch(list)
  local isdone, ndone, failed = {}, 0, false
  while ndone < #list do
    -- take everything already done, then decide whether to block
    local i = watch:next(0)
    if i then
      isdone[i] = true
      ndone = ndone + 1
      if list[i]:_failed() then failed = true end
    else
      if when == loom.FIRST_COMPLETED and ndone > 0 then break end
      if when == loom.FIRST_EXCEPTION and failed then break end
      local left = deadline and deadline - clock()
      if left and left <= 0 then break end
      i = watch:next(left)
      if not i then break end
      isdone[i] = true
      ndone = ndone + 1
      if list[i]:_failed() then failed = true end
    end
  end
  watch:close()
  core.run_callbacks()
  local done, not_done = {}, {}
  for i, f in ipairs(list) do
    if isdone[i] then done[#done + 1] = f else not_done[#not_done + 1] = f end
  end
  return done, not_done
end

local Executor, Future = core.Executor, core.Future
local c_shutdown, c_cancel, c_decode = Executor.shutdown, Future.cancel,
                                      core.decode

-- self of a method: an executor (or a future), or an argument error.
local function check_self(self, fname, is, tname)
  local ok, alive = is(self)
  if ok and alive ~= false then return end
  if typename(self) == tname then   -- a finalized or unfinished one
    argerror(1, fname, (tname == "loom.Executor" and "executor" or "future")
             .. " is not initialised")
  end
  argerror(1, fname, tname .. " expected, got " .. typename(self))
end

local SHUTDOWN_OPTIONS = {
  wait = rules.type("boolean"),
  cancel_futures = rules.type("boolean"),
  cancel_running = rules.type("boolean"),
}

function Executor:shutdown(opts)
  check_self(self, "shutdown", core.is_executor, "loom.Executor")
  options(opts, 1, "shutdown", SHUTDOWN_OPTIONS)
  return c_shutdown(self, opts)
end

local CANCEL_OPTIONS = { running = rules.type("boolean") }

function Future:cancel(opts)
  check_self(self, "cancel", core.is_future, "loom.Future")
  if opts == nil then return c_cancel(self) end
  options(opts, 1, "cancel", CANCEL_OPTIONS)
  return c_cancel(self, opts)
end

local DECODE_OPTIONS = { functions = rules.type("boolean") }

function loom.decode(...)
  local bytes, opts = ...
  if type(bytes) ~= "string" then
    argerror(1, "decode", "string expected, got "
             .. (select("#", ...) == 0 and "no value" or typename(bytes)))
  end
  if opts == nil then return c_decode(bytes) end
  options(opts, 2, "decode", DECODE_OPTIONS)
  return c_decode(bytes, opts)
end

-- The most values (calls times sequences) that one map task carries: the
-- caller and the worker hold them on a Lua stack. A larger chunksize is
-- split into tasks of this size; what the loop yields is the same.
local MAP_VALUES = 100000

local MAP_OPTIONS = {
  timeout = rules.timeout,
  chunksize = rules.integer(1),
  progress = rules.either(rules.type("boolean"), rules.type("function"),
                          "a boolean or a function(done, total)"),
}

-- h:mm:ss, or m:ss
local function hms(t)
  t = math.floor(t + 0.5)
  if t >= 3600 then
    return ("%d:%02d:%02d"):format(t // 3600, t % 3600 // 60, t % 60)
  end
  return ("%d:%02d"):format(t // 60, t % 60)
end

-- A one-line bar on standard error: report(done, total) draws it, and
-- report() clears it.
local function progress_bar()
  local start, width = clock(), 0
  local stderr = io.stderr
  return function(done, total)
    if done == nil then
      if width > 0 then stderr:write("\r", (" "):rep(width), "\r") end
      width = 0
      return
    end
    local elapsed = clock() - start
    local frac = total > 0 and done / total or 1
    local filled = math.floor(frac * 24 + 0.5)
    local rate, left = "", ""
    if done > 0 and elapsed > 0 then
      local r = done / elapsed
      rate = r >= 100 and ("  %.0f/s"):format(r) or ("  %.2f/s"):format(r)
      left = "  ETA " .. hms((total - done) / r)
    end
    local line = ("%3d%% [%s%s] %d/%d%s%s"):format(math.floor(frac * 100),
      ("#"):rep(filled), ("."):rep(24 - filled), done, total, rate, left)
    stderr:write("\r", line, (" "):rep(width - #line))
    stderr:flush()
    width = #line
  end
end

--- ex:map(fn, seq1, ...) or ex:map{fn, seq1, ..., timeout =, chunksize =,
-- progress =}
-- Submits every call at once; iterates i, results... in input order.
function Executor:map(fn, ...)
  local _, _, shut = core.is_executor(self)
  check_self(self, "map", core.is_executor, "loom.Executor")
  local seqs, timeout, chunksize, progress
  if type(fn) == "table" and getmetatable(fn) == nil then
    local o = fn
    local opts = check_options(o, 1, "map", MAP_OPTIONS, true)
    fn = o[1]
    seqs = { n = #o - 1 }
    for s = 2, #o do seqs[s - 1] = o[s] end
    timeout, chunksize, progress = opts.timeout, opts.chunksize, opts.progress
  else
    seqs = table_pack(...)
  end
  chunksize = chunksize or 1
  if type(fn) ~= "function" then
    argerror(1, "map", "function expected, got " .. type(fn))
  end
  if shut then raise("shutdown", "cannot schedule new futures after shutdown") end
  local nseq = seqs.n
  if nseq == 0 then argerror(2, "map", "table expected, got no value") end
  local n = huge
  for s = 1, nseq do
    if type(seqs[s]) ~= "table" then
      argerror(s + 1, "map", "table expected, got " .. type(seqs[s]))
    end
    local len = #seqs[s]
    if len < n then n = len end
  end
  local deadline = timeout and clock() + timeout
  -- calls per task: the chunksize, within MAP_VALUES values
  local per = chunksize
  if per > 1 and per * nseq > MAP_VALUES then
    per = math.max(1, MAP_VALUES // nseq)
  end
  local futures, nfut = {}, 0
  if per == 1 then   -- a plain task per call
    for i = 1, n do futures[i] = self:_map_task(fn, i, i, seqs, nseq, false) end
    nfut = n
  else
    -- one task per chunk of calls; its results come back as one list
    -- (see run_chunk in src/task.c)
    nfut = (n + per - 1) // per
    for c = 1, nfut do
      futures[c] = self:_map_task(fn, (c - 1) * per + 1, math.min(c * per, n),
                                  seqs, nseq, true)
    end
  end
  -- progress = true: a bar, only on a terminal; the iterator reports
  local bar = progress == true and core._isatty(2) and progress_bar()
  if progress == true then progress = bar or nil end
  -- the iterator drops each future once its results are taken; the
  -- closer runs however the loop ends
  local closer = setmetatable({}, { __close = function()
    if bar then bar() end
    for c = 1, nfut do
      local f = futures[c]
      if f then c_cancel(f) end
    end
  end })
  return core._map_iter(futures, n, per, deadline, progress or nil), nil, nil,
         closer
end

return loom
