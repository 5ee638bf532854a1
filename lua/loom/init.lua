-- loom: a parallel executor for Lua 5.4.
-- The blocking primitives (submit, waiting on futures, channels, the
-- value copier) are in C (`loom.core`); the conveniences that read better
-- in Lua (option parsing, `map`, `as_completed`, `wait`) are here.  The
-- API reference (`make doc`) is the LDoc block at the end of this file: it
-- documents every public function, Lua or C, in one place.
local core = require "loom.core"

local type, error, ipairs = type, error, ipairs
local math_type, huge = math.type, math.huge
local table_pack = table.pack
local clock = core.clock

local loom = {
  FIRST_COMPLETED = "first_completed",
  FIRST_EXCEPTION = "first_exception",
  ALL_COMPLETED = "all_completed",
  channel = core.channel,
  cpu_count = core.cpu_count,
  encode = core.encode,
  Error = core.Error,
  -- event loops: a queue of completed futures, and the due callbacks
  completion_queue = core.completion_queue,
  poll = core.poll,
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
local spec_names = setmetatable({}, { __mode = "k" })   -- spec -> sorted

local function check_options(opts, n, fname, spec, positional)
  local names = spec_names[spec]
  if not names then
    names = {}
    for k in pairs(spec) do names[#names + 1] = k end
    table.sort(names)
    spec_names[spec] = names
  end
  local npos = positional and #opts or 0
  for k in next, opts do
    if spec[k] == nil then
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
    local v = opts[k]
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

-- The options of executors are checked here, and only here: once for
-- every kind of executor, one rule and one message per mistake (the C
-- side trusts them; see src/loom.h). EXECUTOR_OPTIONS are the ones every
-- kind takes; a kind adds its own (executor_kind). The most workers is
-- the core's constant.
local EXECUTOR_OPTIONS = {
  workers = rules.integer(1, core._WORKERS_MAX),
  init = rules.type("function"),
  init_args = rules.sequence,
  name = rules.type("string"),
  task_timeout = rules.positive,
  memory_limit = rules.integer(1),
}

-- The options of a kind of executor: EXECUTOR_OPTIONS and its own (a
-- table name -> rule). A kind to come (loom.cluster_executor) makes its
-- spec so and checks with executor_options, as the two below do.
local function executor_kind(own)
  local spec = {}
  for k, rule in pairs(EXECUTOR_OPTIONS) do spec[k] = rule end
  for k, rule in pairs(own) do spec[k] = rule end
  return spec
end

local THREAD_OPTIONS = executor_kind {}
local PROCESS_OPTIONS = executor_kind {
  max_tasks_per_child = rules.integer(1),
  interpreter = rules.type("string"),
}

-- The options of an executor of kind spec, checked (opts: nil, a number
-- or a table).
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

-- loom.executor([opts]) -> executor
-- opts: a number (= workers) or a table {workers, init, init_args, name,
-- task_timeout, memory_limit}.
function loom.executor(opts)
  return construct(core.executor, executor_options(opts, "executor",
                                                   THREAD_OPTIONS))
end

-- loom.process_executor([opts]) -> executor on worker processes
-- opts: as loom.executor's (name is accepted and not used), and
-- max_tasks_per_child and interpreter.
function loom.process_executor(opts)
  return construct(core.process_executor,
                   executor_options(opts, "process_executor", PROCESS_OPTIONS))
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

-- loom.as_completed(futures [, timeout]) -> iterator over futures
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

-- loom.wait(futures [, opts]) -> done, not_done
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

-- ex:map(fn, seq1, ...) or ex:map{fn, seq1, ..., timeout =, chunksize =,
-- progress =}  (below: _map_task and _map_iter in src/lua_executor.c)
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
  local futures, nfut = {}
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

--[==[ The API reference: `make doc` builds it with LDoc into build/doc/.
Every public function is documented here, whether Lua (above) or C
(src/lua_*.c); spec/doc_spec.lua checks that nothing the module exports
is missing. --]==]

---
-- A parallel executor for Lua 5.4: Python's `concurrent.futures` for Lua.
--
-- A pool of workers, each with its own `lua_State`, runs Lua functions in
-- parallel: native threads (`loom.executor`) or worker processes
-- (`loom.process_executor`). `submit` and `map` queue calls and return
-- futures; `as_completed`, `wait`, completion queues and the event loop
-- adapters hand the results back. Arguments and results are copied
-- between states.
--
--     local loom = require "loom"
--     local ex <close> = loom.executor { workers = 4 }
--     print(ex:submit(function(a, b) return a + b end, 1, 4):result())  --> 5
--     for i, v in ex:map(function(x) return x * x end, {1, 2, 3}) do
--       print(i, v)                                    --> 1 1 / 2 4 / 3 9
--     end
--
-- **What crosses between states.** Copied exactly: nil, booleans, integers
-- and floats (every bit), strings of any size, tables (cycles, shared
-- subtables and metatables kept), Lua functions with their upvalues (a
-- function's `_ENV` becomes the worker's globals). A C function crosses by
-- name when it is a field of a module in `package.loaded` (`string.rep`,
-- `lfs.attributes`, `loom.cpu_count`): the receiver `require`s the module
-- and takes the field. A channel crosses by reference (threads only).
-- Anything else (coroutines, userdata, a C function that is no module's
-- field, such as a global a host registered) is refused with a `transfer`
-- error that names its place, at `submit` (or `encode`) for an argument.
-- Thread workers also get the creator's `package.preload` entries that are
-- C functions, so a module a host links in can be required there.
--
-- **Workers** have the standard libraries, the creator's `package.path`
-- and `package.cpath`, and globals of their own, which persist across the
-- tasks a worker runs: a task that uses a global of the main script fails,
-- and its error message says so. `os.exit` in a task fails the task;
-- `print` writes whole lines.
--
-- **Argument errors** are Lua string errors at the caller's line. For a
-- positional argument they read as Lua's own:
--
--     bad argument #1 to 'submit' (function expected, got nil)
--
-- For an options table they name the option, its type and its value, and
-- an unknown option is named with the closest valid one:
--
--     bad argument #1 to 'executor' (workers must be an integer >= 1, got string "4")
--     bad argument #1 to 'executor' (unknown option 'wrokers' (did you mean 'workers'?))
--
-- Conditions that loom raises are @{Error} values.
-- @module loom

--- Module functions
-- @section module

--- Make a thread pool: `workers` native threads, each with its own
-- `lua_State`. When it is closed, collected or its state ends, it behaves
-- as `shutdown{wait = true}`: no task is dropped and no worker outlives it.
-- @tparam[opt] table|int opts the options, or a number: `{workers = n}`.
-- An unknown option is an error.
-- @tparam[opt=loom.cpu_count()] int opts.workers the number of workers,
-- 1 to 4096 (a float with an integer value counts as that integer)
-- @tparam[opt] function opts.init run once in every worker's state before
-- its first task, with `init_args`; if it raises in any worker, the
-- executor is `broken`
-- @tparam[opt] table opts.init_args a sequence of arguments for `init`
-- @tparam[opt="loom"] string opts.name the prefix of the worker threads'
-- names
-- @tparam[opt] number opts.task_timeout seconds a task may run (> 0;
-- `math.huge`: no limit); an overdue task is stopped and its future fails
-- with a `timeout` error
-- @tparam[opt] int opts.memory_limit bytes each worker state may hold
-- (> 0); past it, allocations fail, so a task fails with "not enough
-- memory" and the worker goes on. `init` runs under it too
-- @treturn Executor
-- @raise a string error for a bad option; a `transfer` error when an
-- `init_args` value cannot cross
-- @usage local ex <close> = loom.executor { workers = 2, init = function(base) BASE = base end,
--                                      init_args = { 100 } }
-- print(ex:submit(function(x) return BASE + x end, 1):result())   --> 101
-- @function executor

--- Make a process pool: the same surface as @{executor}, on worker
-- processes (started with `posix_spawn`, ended with their parent). A worker
-- that dies fails its task with a `crashed` error and is replaced; a
-- running task can be stopped however deep in C it is. Values cross in
-- the same encoding; channels cannot cross into another process.
-- @tparam[opt] table|int opts the options of @{executor}, and:
-- @tparam[opt] int opts.max_tasks_per_child a worker exits after that many
-- tasks and a fresh one replaces it
-- @tparam[opt] string opts.interpreter the Lua 5.4 interpreter that runs
-- the workers: by default the running `lua5.4`, else `lua5.4` from `PATH`
-- @tparam[opt] int opts.memory_limit as for @{executor}, with an
-- address-space limit as a backstop for memory that C code allocates
-- @treturn Executor
-- @function process_executor

--- Iterate over futures as they complete (finished or cancelled): those
-- already done first, each distinct future once.
-- @tparam {Future,...} futures a sequence of futures (thread or process)
-- @tparam[opt] number timeout seconds, counted from the call
-- @treturn function an iterator for a generic `for`, yielding futures
-- @raise a `timeout` error when `timeout` passes first, saying how many
-- futures were unfinished ("2 (of 4) futures unfinished")
-- @usage for f in loom.as_completed(futures, 10) do print(f:result()) end
-- @function as_completed

--- Wait until some or all of the futures complete.
-- @tparam {Future,...} futures a sequence of futures
-- @tparam[opt] table opts
-- @tparam[opt] number opts.timeout seconds (a negative one is 0)
-- @tparam[opt=ALL_COMPLETED] string opts.return_when @{FIRST_COMPLETED},
-- @{FIRST_EXCEPTION} or @{ALL_COMPLETED}
-- @treturn {Future,...} done: the futures that completed
-- @treturn {Future,...} not_done: the others
-- @usage local done, pending = loom.wait(futs, { return_when = loom.FIRST_COMPLETED })
-- @function wait

--- Make a channel: a thread-safe FIFO queue, the one value that crosses
-- between thread workers by reference.
-- @tparam[opt=0] int capacity the most values it holds (0: no limit)
-- @treturn Channel
-- @function channel

--- Make a completion queue: it hands back the futures added to it in the
-- order they complete, and can be waited on by an event loop (the cqueues
-- polling protocol), like Java's `ExecutorCompletionService`.
-- @treturn CompletionQueue
-- @function completion_queue

--- Run the done callbacks that are due in this state, without blocking.
-- An event loop calls it when a completion queue's descriptor fires.
-- @treturn int how many ran
-- @function poll

--- The number of online processors.
-- @treturn int
-- @function cpu_count

--- The transfer format as a serializer: encode one value into a string.
-- Channels cannot be encoded (a string cannot hold a reference).
-- @param value any value that can cross
-- @treturn string
-- @raise a `transfer` error naming the place of a value that cannot
-- @function encode

--- Decode a string made by @{encode}. Malformed input gives a `transfer`
-- error, never a crash. A C function of a module that is not loaded is
-- required only with `functions = true`.
-- @tparam string bytes
-- @tparam[opt] table opts
-- @tparam[opt=false] boolean opts.functions accept Lua functions
-- (bytecode, which Lua does not verify: only for trusted input)
-- @return the value
-- @function decode

--- `wait` returns when any future completes: `"first_completed"`.
-- @field FIRST_COMPLETED

--- `wait` returns when any future fails, or all complete:
-- `"first_exception"`.
-- @field FIRST_EXCEPTION

--- `wait` returns when all futures complete (the default):
-- `"all_completed"`.
-- @field ALL_COMPLETED

--- Errors
-- @section errors

--- The metatable of the errors loom raises for conditions (programming
-- mistakes are string errors instead). Such an error is a table with two
-- string fields, `kind` and `message`; `tostring(err)` shows both, as in
-- `loom.timeout: the future did not finish in time`. Test for one with
-- `getmetatable(err) == loom.Error`, then look at `err.kind`:
--
-- - `cancelled`: the future was cancelled (`result`, `exception`), or its
--   task was stopped by `cancel{running = true}`.
-- - `timeout`: a wait ran out of time (`result`, `exception`,
--   `as_completed`, `map`), or a task ran past `task_timeout`.
-- - `shutdown`: `submit` or `map` after `shutdown` ("cannot schedule new
--   futures after shutdown").
-- - `broken`: `init` failed, or a worker could not start; every future of
--   the executor fails with it, carrying the reason.
-- - `transfer`: a value cannot cross, and the message names its place, as
--   in `argument #2: field 'conn': cannot transfer a userdata`; or a
--   message to decode is malformed.
-- - `closed`: `push` on a closed channel.
-- - `crashed`: a process worker died while it ran the task; the message
--   names its pid and its signal or exit status.
-- @table Error
-- @field kind the kind, one of the above
-- @field message what happened

--- An executor: a pool of workers (@{executor}, @{process_executor}).
-- `local ex <close> = ...` closes it at the end of the scope.
-- @type Executor

--- Queue `fn(...)` and return its future at once.
-- @tparam function fn a Lua function (copied with its upvalues) or a C
-- function of a module (`string.rep`, `lfs.attributes`)
-- @param ... its arguments, copied
-- @treturn Future
-- @raise a `transfer` error naming the argument that cannot cross
-- (nothing is queued); a `shutdown` error after @{Executor:shutdown}
-- @usage local f = ex:submit(string.rep, "ab", 3)
-- print(f:result())   --> ababab
-- @function Executor:submit

--- Call `fn` on the elements of the sequences in parallel, and iterate
-- over the results in input order.
-- `for i, r1, r2 in ex:map(fn, a, b)` yields the index and every value
-- that `fn(a[i], b[i])` returned. It stops at the shortest sequence. Every
-- call is queued before the first iteration; leaving the loop early
-- (`break`, an error, a timeout) cancels the calls not yet started. If
-- call `i` raised, the loop raises that error when it reaches `i`.
--
-- The named form takes options after the function and the sequences:
--
--     ex:map{fn, seq1, ..., timeout = s, chunksize = n, progress = p}
--
--
-- - `timeout` (number): seconds from the call to `map`; a result not ready
--   in time raises a `timeout` error.
-- - `chunksize` (integer, default 1): calls sent to a worker as one task
--   (much faster for small calls).
-- - `progress` (`true` or a function): `true` draws a one-line bar on
--   standard error (done/total, rate, time left) while the loop runs, only
--   when standard error is a terminal, and clears it at the end. A
--   function is called as `progress(done, total)` in the caller's thread:
--   at the first step, at most five times a second, and at the end, with
--   `done` the number of results the loop has received. Without
--   `progress`, `map` costs nothing more.
-- @tparam function fn
-- @tparam table ... the sequences (at least one)
-- @return an iterator for a generic `for`, and its to-be-closed value
-- @raise argument errors; a `transfer` error naming the element that
-- cannot cross; a `shutdown` error
-- @usage for i, v in ex:map{is_prime, numbers, chunksize = 64, progress = true} do
--   print(numbers[i], v)
-- end
-- @function Executor:map

--- Stop accepting tasks; optionally cancel queued ones, stop running ones,
-- and wait. Calling it twice is harmless.
-- @tparam[opt] table opts
-- @tparam[opt=true] boolean opts.wait wait until every task has ended
-- @tparam[opt=false] boolean opts.cancel_futures cancel the tasks still
-- queued
-- @tparam[opt=false] boolean opts.cancel_running stop the running tasks
-- too (as @{Future:cancel}`{running = true}`)
-- @function Executor:shutdown

--- `shutdown{wait = true}`; also the `__close` metamethod.
-- @function Executor:close

--- The number of workers.
-- @treturn int
-- @function Executor:workers

--- The result of a task. Futures of thread and process pools are of this
-- one type. `tostring(f)` names its state: `pending`, `running`,
-- `cancelled` or `finished`.
-- @type Future

--- Wait for the task and return every value it returned (nils included).
-- @tparam[opt] number timeout seconds
-- @return the task's results
-- @raise a copy of the task's error value (a string error about a global
-- that only the submitting state has gets a note); a `cancelled` error;
-- a `timeout` error when `timeout` passes first
-- @function Future:result

--- Wait for the task; return `nil` if it succeeded, else its error value
-- and the worker's traceback.
-- @tparam[opt] number timeout seconds
-- @return nil, or the error value
-- @treturn[opt] string the traceback
-- @raise `cancelled`, `timeout` as @{Future:result}
-- @function Future:exception

--- Cancel the task if it has not started. With `{running = true}`, a
-- running task is stopped too: it raises a `cancelled` error at its next
-- Lua instruction (threads; a long call inside C ends first) or its worker
-- process ends (processes).
-- @tparam[opt] table opts
-- @tparam[opt=false] boolean opts.running stop it even if it runs
-- @treturn boolean true if the future is now cancelled
-- @function Future:cancel

--- Whether the future was cancelled.
-- @treturn boolean
-- @function Future:cancelled

--- Whether the task is running now.
-- @treturn boolean
-- @function Future:running

--- Whether the future is done: finished or cancelled.
-- @treturn boolean
-- @function Future:done

--- Call `fn(f)` once the future is done, in the state and OS thread that
-- made it: at once if it is done, else at that thread's next loom call
-- that waits or polls (`result`, `exception`, `wait`, `as_completed`,
-- `shutdown`, @{poll}). Errors in `fn` go to `warn`.
-- @tparam function fn
-- @function Future:add_done_callback

--- The cqueues polling protocol: a descriptor that becomes readable once
-- the future is done (made when first asked for), so `cqueues.poll(f)`
-- returns then.
-- @treturn int
-- @function Future:pollfd

--- The polling protocol: the events to wait for, `"r"`.
-- @treturn string
-- @function Future:events

--- The polling protocol: no timeout.
-- @return nil
-- @function Future:timeout

--- A thread-safe FIFO queue (@{channel}). Passed to a task (as an
-- argument, an upvalue, inside a table, or as a result) it is the same
-- channel on both sides. `#ch` is the number of values waiting. When the
-- state that made it closes, the channel is closed.
-- @type Channel

--- Append a copy of `value`, waiting while the channel is full.
-- @param value not nil
-- @raise a `closed` error if the channel is closed
-- @function Channel:push

--- Remove and return the oldest value, waiting for one.
-- @tparam[opt] number timeout seconds (forever when absent)
-- @return the value, or nil and `"timeout"`, or nil and `"closed"` once the
-- channel is closed and empty
-- @function Channel:pop

--- Accept no more values; those in it can still be popped; waiters wake.
-- @function Channel:close

--- Futures in the order they complete (@{completion_queue}). `#q` counts
-- the futures added and not yet popped.
-- @type CompletionQueue

--- Add futures; those already done are queued at once.
-- @tparam Future ... futures
-- @function CompletionQueue:add

--- The next completed future, waiting for one.
-- @tparam[opt] number timeout seconds (`0`: never blocks)
-- @return a future; or nil and `"timeout"`; or nil and `"empty"` at once
-- when the queue holds no future (none could come); or nil and `"closed"`
-- @function CompletionQueue:pop

--- Forget every future in the queue (they go on) and close its
-- descriptor; later `add` and `pollfd` raise a `closed` error, `pop`
-- returns nil and `"closed"`. Also `__close` and collection. Idempotent.
-- @function CompletionQueue:close

--- The polling protocol: one descriptor, readable while a completed future
-- waits to be popped, whatever the number of futures.
-- @treturn int
-- @function CompletionQueue:pollfd

--- The polling protocol: `"r"`.
-- @treturn string
-- @function CompletionQueue:events

--- The polling protocol: no timeout.
-- @return nil
-- @function CompletionQueue:timeout

--- Event loops
-- @section loops

--- In module `loom.luv` (`require "loom.luv"`, with luv): suspend the
-- calling coroutine, which runs under the luv loop, until `f` is done.
-- One `uv_poll` on one completion queue serves the loop; it keeps the loop
-- alive only while a future is awaited.
-- @tparam Future f
-- @return its results
-- @raise its error
-- @function luv.await

--- In module `loom.luv`: call `fn(f)` from the luv loop once `f` is done.
-- @tparam Future f
-- @tparam function fn
-- @function luv.on_done

--- In module `loom.cqueues` (`require "loom.cqueues"`, with cqueues):
-- suspend the calling coroutine of a cqueues controller until `f` is done.
-- @tparam Future f
-- @return its results
-- @raise its error
-- @function cqueues.await
