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
  decode = core.decode,
  Error = core.Error,
}

local function raise(kind, message)
  error(core.error(kind, message), 2)
end

local function argerror(n, fname, msg)
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), 3)
end

local function check_timeout(t, n, fname)
  if t == nil then return nil end
  if type(t) ~= "number" then
    argerror(n, fname, "number expected, got " .. type(t))
  end
  if t ~= t then argerror(n, fname, "timeout is NaN") end
  return t
end

--- loom.executor([opts]) -> executor
-- opts: a number (= workers) or a table {workers, init, init_args, name}.
function loom.executor(opts)
  if opts == nil then opts = {}
  elseif type(opts) == "number" then opts = { workers = opts }
  elseif type(opts) ~= "table" then
    argerror(1, "executor", "table or number expected, got " .. type(opts))
  end
  local workers = opts.workers
  if workers == nil then workers = core.cpu_count() end
  if math_type(workers) ~= "integer" then
    if type(workers) == "number" and workers == math.floor(workers)
       and workers >= 1 and workers < 4097 then
      workers = math.tointeger(workers)
    else
      argerror(1, "executor", "workers must be an integer >= 1, got "
               .. tostring(workers))
    end
  end
  if workers < 1 then
    argerror(1, "executor", "workers must be an integer >= 1, got "
             .. tostring(workers))
  end
  if opts.init ~= nil and type(opts.init) ~= "function" then
    argerror(1, "executor", "init must be a function, got " .. type(opts.init))
  end
  if opts.init_args ~= nil then
    if type(opts.init_args) ~= "table" then
      argerror(1, "executor", "init_args must be a table, got "
               .. type(opts.init_args))
    end
    local n = #opts.init_args
    if math_type(n) ~= "integer" or n < 0 or n > 100000 then
      argerror(1, "executor", "init_args has an unreasonable length ("
               .. tostring(n) .. ")")
    end
  end
  if opts.name ~= nil and type(opts.name) ~= "string" then
    argerror(1, "executor", "name must be a string, got " .. type(opts.name))
  end
  return core.executor { workers = workers, name = opts.name, init = opts.init,
                        init_args = opts.init_args }
end

--- loom.process_executor([opts]) -> executor on worker processes
-- opts: a number (= workers) or a table: loom.executor's options (name is
-- not used), task_timeout, memory_limit, and the process pool's own:
-- max_tasks_per_child and interpreter. The rest is checked in C.
function loom.process_executor(opts)
  if opts == nil then opts = {}
  elseif type(opts) == "number" then opts = { workers = opts }
  elseif type(opts) ~= "table" then
    argerror(1, "process_executor", "table or number expected, got " .. type(opts))
  end
  local m = opts.max_tasks_per_child
  if m ~= nil and (math_type(m) ~= "integer" or m < 1) then
    argerror(1, "process_executor", "max_tasks_per_child must be an integer >= 1, got "
             .. tostring(m))
  end
  if opts.interpreter ~= nil and type(opts.interpreter) ~= "string" then
    argerror(1, "process_executor", "interpreter must be a string, got "
             .. type(opts.interpreter))
  end
  return core.process_executor {
    workers = opts.workers or core.cpu_count(), init = opts.init,
    init_args = opts.init_args, task_timeout = opts.task_timeout,
    memory_limit = opts.memory_limit, max_tasks_per_child = m,
    interpreter = opts.interpreter,
  }
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
function loom.wait(futures, opts)
  local list = distinct(futures, "wait")
  if opts ~= nil and type(opts) ~= "table" then
    argerror(2, "wait", "table expected, got " .. type(opts))
  end
  opts = opts or {}
  local timeout = check_timeout(opts.timeout, 2, "wait")
  local when = opts.return_when or loom.ALL_COMPLETED
  if when ~= loom.ALL_COMPLETED and when ~= loom.FIRST_COMPLETED
     and when ~= loom.FIRST_EXCEPTION then
    argerror(2, "wait", "bad return_when '" .. tostring(when) .. "'")
  end
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

local Executor = core.Executor

-- The most values (calls times sequences) that one map task carries: the
-- caller and the worker hold them on a Lua stack. A larger chunksize is
-- split into tasks of this size; what the loop yields is the same.
local MAP_VALUES = 100000

--- ex:map(fn, seq1, ...) or ex:map{fn, seq1, ..., timeout =, chunksize =}
-- Submits every call at once; iterates i, results... in input order.
function Executor:map(fn, ...)
  local is, alive, shut = core.is_executor(self)
  if not is then
    local mt = getmetatable(self)
    local name = type(mt) == "table" and type(mt.__name) == "string"
                 and mt.__name or type(self)
    argerror(1, "map", "loom.Executor expected, got " .. name)
  elseif not alive then
    argerror(1, "map", "executor is not initialised")
  end
  local seqs, timeout, chunksize
  if type(fn) == "table" and getmetatable(fn) == nil then
    local o = fn
    fn = o[1]
    seqs = { n = #o - 1 }
    for s = 2, #o do seqs[s - 1] = o[s] end
    timeout = check_timeout(o.timeout, 1, "map")
    chunksize = o.chunksize
    if chunksize ~= nil then
      local k = math_type(chunksize) and math.tointeger(chunksize)
      if not k or k < 1 then
        argerror(1, "map", "chunksize must be an integer >= 1")
      end
      chunksize = k
    end
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
    -- (see run_chunk in src/pool.c)
    nfut = (n + per - 1) // per
    for c = 1, nfut do
      futures[c] = self:_map_task(fn, (c - 1) * per + 1, math.min(c * per, n),
                                  seqs, nseq, true)
    end
  end
  -- the iterator drops each future once its results are taken
  local closer = setmetatable({}, { __close = function()
    for c = 1, nfut do
      local f = futures[c]
      if f then f:cancel() end
    end
  end })
  return core._map_iter(futures, n, per, deadline), nil, nil, closer
end

return loom
