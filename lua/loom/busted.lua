--- loom.busted: runs a busted suite's spec files in parallel on a loom
-- process pool, and prints one report through busted's own output handler.
--
-- How: the parent reads the options as busted does (busted's own option
-- parser, `.busted` file included), finds the spec files with busted's own
-- loader, and hands each file (or, with --split, each part of one) to a
-- worker process. A worker runs busted's machinery on that file with a
-- recorder in place of the output handler: every event the handler would
-- have seen (file, describe and test start and end, failures, errors,
-- pending) is written, as plain data, to an event file of the run's
-- temporary folder, flushed one event at a time, together with what the
-- file wrote to its standard output and error (a worker's descriptors 1
-- and 2 are files of that folder; see `wrapper`). The parent replays the
-- events, file by file in busted's order, into the output handler the user
-- chose, so the report, the counts and the exit code are those of plain
-- busted. A worker that dies, or runs past --timeout, leaves its events up
-- to that point; the parent replays them and reports the rest as an error
-- of the file.
--
-- bin/loom-busted calls `run(arg)` (which, as busted, changes directory for
-- -C; it may be called again in the same state); `_worker` is what a
-- worker process runs.
-- This module is not built into the core (the Makefile leaves it out of
-- src/embed.lua's list): it is a command's logic, it needs busted, and
-- worker processes find it on package.path, which they inherit.

local M = {}

-- (kept here: a spec file may replace the library's functions while it runs)
local unpack, spack, sunpack = table.unpack, string.pack, string.unpack
local stdout, stderr = io.stdout, io.stderr
local APP = "loom-busted"

-- Options of loom-busted itself; everything else goes to busted's parser.
local OWN_HELP = [[
loom-busted options (the others are busted's, below):
  -j, --jobs=N               worker processes (default: loom.cpu_count())
  --split                    with fewer files than workers, split files by
                             their top-level describe blocks
  --isolate                  a fresh worker process for every file
  --timeout=SECONDS          a file (or part) that runs longer is stopped
                             and reported as an error of that file
  --max-worker-restart=N     stop the run after N crashed workers
                             (default: 4 x workers)
  --no-times                 ignore (neither read nor write) the times of
                             earlier runs (.loom-busted-times)
  --name=NAME                only run the test with this full name
]]

-- busted 2.1.1's options that take a value: their value, when given as the
-- next argument, is never taken for one of ours.
local VALUE_OPTS = {}
for o in ([[-p --pattern --exclude-pattern -e -o --output -C --directory
  -f --config-file --coverage-config-file -t --tags --exclude-tags --filter
  --filter-out -m --lpath --cpath -r --run --repeat --seed --lang --loaders
  --helper --lua -Xoutput -Xhelper]]):gmatch("%S+") do
  VALUE_OPTS[o] = true
end

-- Options loom-busted refuses, with why.
local REFUSED = {
  ["--no-auto-insulate"] = "every spec file runs in a worker process of its " ..
    "own, so a file's globals cannot reach the next file as they do without " ..
    "insulation",
}

local function usage_error(msg)
  error({ usage = APP .. ": error: " .. msg }, 0)
end

local function number_arg(name, v, integer, min)
  local n = tonumber(v)
  if not n or (integer and math.type(n) ~= "integer") or n < min then
    usage_error(("%s must be %s >= %s, got %q"):format(name,
      integer and "an integer" or "a number", min, tostring(v)))
  end
  return n
end

-- Plain text as a Lua pattern that matches it exactly.
local function literal(s)
  return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

--- Splits argv into loom-busted's own options and busted's arguments.
-- @return own (table), rest (list for busted's parser)
function M.parse_own(argv)
  local own = { names = {} }
  local rest = {}
  local i = 1
  local function value(name, inline)
    if inline then return inline end
    i = i + 1
    if argv[i] == nil then usage_error(name .. " needs a value") end
    return argv[i]
  end
  while i <= #argv do
    local a = argv[i]
    local name, inline = a:match("^(%-%-[%w%-]+)=(.*)$")
    name = name or a
    if a == "--" then
      for k = i, #argv do rest[#rest + 1] = argv[k] end
      break
    elseif name == "-j" or name == "--jobs" or a:match("^%-j%d+$") then
      local v = a:match("^%-j(%d+)$") or value(name, inline)
      own.jobs = number_arg("-j", v, true, 1)
    elseif a == "--split" then own.split = true
    elseif a == "--no-split" then own.split = false
    elseif a == "--isolate" then own.isolate = true
    elseif a == "--no-isolate" then own.isolate = false
    elseif a == "--no-times" then own.no_times = true
    elseif name == "--timeout" then
      own.timeout = number_arg("--timeout", value(name, inline), false, 0.001)
    elseif name == "--max-worker-restart" then
      own.max_restart = number_arg("--max-worker-restart",
                                   value(name, inline), true, 0)
    elseif name == "--name" then
      own.names[#own.names + 1] = value(name, inline)
    elseif a == "-h" or a == "--help" then own.help = true
    elseif REFUSED[name] then
      usage_error(name .. " is not supported: " .. REFUSED[name])
    else
      if a == "--ignore-lua" then own.ignore_lua = true end
      rest[#rest + 1] = a
      if VALUE_OPTS[a] and argv[i + 1] ~= nil then
        i = i + 1
        rest[#rest + 1] = argv[i]
      end
    end
    i = i + 1
  end
  -- --name NAME: the test whose full name is NAME (busted 2.2's option;
  -- busted 2.1.1 lacks it): a --filter that matches that name alone.
  for _, n in ipairs(own.names) do
    rest[#rest + 1] = "--filter=^" .. literal(n) .. "$"
  end
  return own, rest
end

---------------------------------------------------------------------------
-- Plain data for the event stream (worker side)
---------------------------------------------------------------------------

-- Markers of the encoded stream: an element reference, a function.
local REF, FN = "\0ref", "\0fn"

-- An encoder of values into plain data (no functions, metatables,
-- userdata): elements of busted's context tree become references
-- { [REF] = id }, defined (with their parent's id) the first time they are
-- seen; functions become { [FN] = true } (the parent puts a stub there, so
-- a handler sees a function where busted's has one).
local function new_encoder(busted)
  local parent_of = busted.context.parent
  local root = busted.context.get()
  local ids, nextid = { [root] = 0 }, 0
  local enc = {}
  local defs   -- elements defined in the current event: id -> def

  local copy, element_fields

  local function ref(e)
    local id = ids[e]
    if not id then
      nextid = nextid + 1
      id = nextid
      ids[e] = id
      local p = parent_of(e)
      local pid = p and ref(p)[REF] or nil
      defs[#defs + 1] = { id = id, parent = pid, fields = element_fields(e) }
    end
    return { [REF] = id }
  end

  local function is_element(v)
    return v == root or parent_of(v) ~= nil
  end

  -- seen: table -> its copy, so that shared tables and cycles stay so
  function copy(v, seen)
    local t = type(v)
    if t == "table" then
      if is_element(v) then return ref(v) end
      if seen[v] then return seen[v] end
      local c = {}
      seen[v] = c
      for k, x in next, v do
        local ck = copy(k, seen)
        if ck ~= nil then c[ck] = copy(x, seen) end
      end
      return c
    elseif t == "function" then
      return { [FN] = true }
    elseif t == "userdata" or t == "thread" then
      return tostring(v)
    end
    return v
  end

  -- What was last sent of each element: field -> value (tables by
  -- identity: a table field is sent again only when the element holds
  -- another table there; busted builds them before an element's events).
  local sent = {}

  -- An element's fields, but not its env (busted's handlers never copy it)
  function element_fields(e)
    local c, seen, raw = {}, {}, {}
    for k, v in next, e do
      if k ~= "env" and type(k) == "string" then
        c[k] = copy(v, seen)
        raw[k] = v
      end
    end
    sent[e] = raw
    return c
  end

  -- The fields of e that changed since they were last sent: { set = fields,
  -- del = keys }, or nil.
  local function delta(e)
    local raw = sent[e]
    local set, del, seen
    for k, v in next, e do
      if k ~= "env" and type(k) == "string" and raw[k] ~= v then
        seen = seen or {}
        set = set or {}
        set[k] = copy(v, seen)
        raw[k] = v
      end
    end
    for k in next, raw do
      if e[k] == nil then
        del = del or {}
        del[#del + 1] = k
        raw[k] = nil
      end
    end
    return (set or del) and { set = set or {}, del = del } or nil
  end

  -- One event as a record: c channel, a args (n of them), s what changed
  -- in the elements among the top-level args, d elements defined.
  function enc.event(channel, n, ...)
    defs = {}
    local args, snaps, seen = {}, {}, {}
    for i = 1, n do
      local v = select(i, ...)
      if type(v) == "table" and is_element(v) and v ~= root then
        local known = ids[v] ~= nil
        args[i] = ref(v)
        if known then snaps[ids[v]] = delta(v) end
      else
        args[i] = copy(v, seen)
      end
    end
    return { c = channel, n = n, a = args, s = snaps, d = defs }
  end

  return enc
end

---------------------------------------------------------------------------
-- Worker side
---------------------------------------------------------------------------

local function pid_of_self()
  local f = io.open("/proc/self/stat")
  if not f then return nil end
  local pid = f:read("n")
  f:close()
  return pid
end

-- What a recycled worker puts back after each file, so that nothing a file
-- set, loaded or monkey-patched reaches the next one: the globals,
-- package.loaded (a module a file loaded is loaded again by the next), and
-- the fields and metatables of the standard library's tables and of the
-- string metatable. Taken once per worker, after busted's machinery is
-- loaded. (Module tables loaded before, busted's own and loom's, are not
-- put back field by field: that would cost more than the file's run.)
local STDLIB = { "string", "table", "math", "io", "os", "coroutine", "utf8",
                 "debug", "package" }

local function save_state()
  local tables = {}
  local function keep(t)
    if type(t) == "table" and not tables[t] then
      local c = {}
      for k, v in next, t do c[k] = v end
      tables[t] = { fields = c, mt = debug.getmetatable(t) }
    end
  end
  keep(_G)
  keep(package.loaded)
  for _, name in ipairs(STDLIB) do keep(rawget(_G, name)) end
  keep(debug.getmetatable(""))
  return tables
end

local function restore_fields(t, fields)
  for k in next, t do
    if fields[k] == nil then rawset(t, k, nil) end
  end
  for k, v in next, fields do
    if rawget(t, k) ~= v then rawset(t, k, v) end
  end
end

local function restore_state(tables)
  for t, saved in next, tables do
    restore_fields(t, saved.fields)
    if debug.getmetatable(t) ~= saved.mt then debug.setmetatable(t, saved.mt) end
  end
end

-- What a file wrote on descriptors 1 and 2, which are files of the run's
-- folder (the wrapper opened them), read back as the run goes.
local function new_capture(job)
  if not job.capture then return nil end
  local cap = { fd = {}, pos = {} }
  for fd = 1, 2 do
    local f = io.open("/proc/self/fd/" .. fd, "rb")
    if not f then return nil end
    local size = f:seek("end")
    if size > (1 << 20) then   -- keep the file small: start it again
      local w = io.open("/proc/self/fd/" .. fd, "wb")
      if w then w:close() end
      size = f:seek("end")
    end
    cap.fd[fd], cap.pos[fd] = f, size
  end
  -- line buffered, as on a terminal: a crash loses no whole line
  stdout:setvbuf("line")
  function cap.take(fd)
    if fd == 1 then stdout:flush() else stderr:flush() end
    local f = cap.fd[fd]
    f:seek("set", cap.pos[fd])
    local s = f:read("a")
    if s and #s > 0 then
      cap.pos[fd] = cap.pos[fd] + #s
      return s
    end
  end
  function cap.close()
    for fd = 1, 2 do cap.fd[fd]:close() end
  end
  return cap
end

-- Requires busted's machinery once per worker, before the worker's state
-- is saved, so that a recycled worker does not load it again for each file.
local machinery
local function load_machinery()
  if machinery then return machinery end
  machinery = {
    core = require "busted.core",
    init = require "busted",   -- called once per file: its metatable is put back
    exec = require "busted.execute",
    filters = require "busted.modules.filter_loader",
    helper = require "busted.modules.helper_loader",
    files = require "busted.modules.test_file_loader",
    luajit = require "busted.luajit",
    luassert = require "luassert",
    loom = require "loom",
  }
  require "busted.languages.en"
  machinery.init_mt = getmetatable(machinery.init)
  -- a spec file that starts with require "busted.runner"() (to run alone
  -- as a script) gets what busted's runner gives a second caller: nothing
  package.loaded["busted.runner"] = function() return function() end end
  return machinery
end

-- A run of busted's machinery on no file, so that every module it loads
-- on the way is loaded before the worker's state is saved (else each file
-- would load them again).
local function warm_up(loaders)
  local m = machinery
  local busted = m.core()
  m.init(busted)
  setmetatable(m.init, m.init_mt)
  m.filters()(busted, { tags = {}, excludeTags = {}, filter = {}, filterOut = {} })
  m.files(busted, loaders)
  m.exec(busted)(1, {})
end

-- --coverage: LuaCov started once per worker process (before its state is
-- saved, so that its hooks stay), its statistics in a file of the run's
-- folder named by the worker's pid; saved after each file.
local coverage
local function start_coverage(job, pid)
  if coverage or not job.opts.coverage then return coverage end
  local ok, err = require "busted.modules.luacov"()(job.opts["coverage-config-file"])
  if not ok then error(err, 0) end
  coverage = require "luacov.runner"
  coverage.configuration.statsfile = ("%s/luacov.%d.stats"):format(job.dir, pid)
  return coverage
end

-- The descriptors of hooks: a file's children that are not blocks or tests
-- (busted.execute skips them), and so not units of --split.
local HOOKS = { before_each = true, after_each = true, lazy_setup = true,
  lazy_teardown = true, strict_setup = true, strict_teardown = true }

-- The part of the job a worker runs: busted's runner (busted/runner.lua)
-- for one file, with the recorder as its output handler.
local function run_file(job, out)
  local m = machinery
  local o = job.opts
  local busted = m.core()
  -- busted's init module replaces its own metatable (its __call) when
  -- called: give it back for this file
  setmetatable(m.init, m.init_mt)
  m.init(busted)
  local encoder = new_encoder(busted)

  if not o["auto-insulate"] then busted.register("file", "file", {}) end
  if o.lazy then
    busted.register("setup", "lazy_setup")
    busted.register("teardown", "lazy_teardown")
  end
  -- as the base output handler does
  if o.lang ~= "en" then require("busted.languages." .. o.lang) end
  if job.highlight then
    m.luassert:set_parameter("TableErrorHighlightColor", job.highlight)
  end
  for _, v in ipairs(o.e or {}) do assert(load(v))() end

  -- os.exit in a spec file ends busted's whole run. A loom worker refuses
  -- it (os.exit is loom's C function there, which raises "os.exit is not
  -- allowed in a loom worker"): the test that called it errs so, and
  -- loom-busted ends the file there, running none of its other tests.
  local function exited(message)
    return type(message) == "string" and
           message:find("os.exit is not allowed in a loom worker", 1, true) ~= nil
  end

  local quit_on_error = not o["keep-going"]
  busted.subscribe({ "error" }, function(_, _, message)
    if quit_on_error or exited(message) then busted.skipAll = true end
    return nil, true
  end)
  busted.subscribe({ "failure" }, function()
    if quit_on_error then busted.skipAll = true end
    return nil, true
  end)
  busted.sort = o["sort-tests"]
  busted.randomize = o["shuffle-tests"]
  busted.randomseed = job.seed

  -- The recorder: on the root channel, it sees each event after every
  -- subscriber of the event's own channel, as a handler would (an event
  -- that --list's filter swallows never reaches it); the channel itself
  -- is taken from busted.publish, wrapped.
  local channels, depth = {}, 0
  local publish = busted.publish
  local function pop(d, ...)
    depth = d
    return ...
  end
  -- a subscriber's error leaves depth too high; the top entry is still the
  -- channel being published, which is all the recorder reads
  busted.publish = function(channel, ...)
    local d = depth
    depth = d + 1
    channels[depth] = channel
    return pop(d, publish(channel, ...))
  end
  busted.api.publish = busted.publish

  -- split: the index of each top-level block of the file (after busted
  -- sorted or shuffled them), and the blocks this part runs
  local unit_of = {}
  local file_el
  if job.nparts then
    local execute = busted.execute
    busted.execute = function(current)
      if current and current.descriptor == "file" then
        file_el = current
        local kids = busted.context.children(current)
        local keep, u = {}, 0
        for _, k in ipairs(kids) do
          if HOOKS[k.descriptor] then
            keep[#keep + 1] = k
          else
            u = u + 1
            unit_of[k] = u
            if (u - 1) % job.nparts + 1 == job.part then keep[#keep + 1] = k end
          end
        end
        for i = #kids, 1, -1 do kids[i] = nil end
        for i, k in ipairs(keep) do kids[i] = k end
      end
      return execute(current)
    end
  end
  local function unit(e)
    if not job.nparts or type(e) ~= "table" then return 0 end
    while e do
      if unit_of[e] then return unit_of[e] end
      local p = busted.context.parent(e)
      if p == file_el then return 0 end
      e = p
    end
    return 0
  end

  local function flush_output()
    if not job.capture_state then return end
    local cap = job.capture_state
    for fd = 1, 2 do
      local s = cap.take(fd)
      if s then out({ o = fd, text = s, pos = cap.pos[fd] }) end
    end
  end

  busted.subscribe({}, function(...)
    local channel = channels[depth]
    if channel and channel[1] ~= "register" and channel[1] ~= "suite" then
      flush_output()
      local rec = encoder.event(channel, select("#", ...), ...)
      rec.u = unit((...))
      out(rec)
    end
    return nil, true
  end)

  if o.helper and o.helper ~= "" then
    local ok, err = m.helper()(busted, o.helper, {
      verbose = o.verbose, language = o.lang, arguments = o.Xhelper })
    if not ok then
      flush_output()
      return { helper_error = err }
    end
  end

  m.filters()(busted, {
    tags = o.tags, excludeTags = o["exclude-tags"], filter = o.filter,
    filterOut = o["filter-out"], list = o.list,
    nokeepgoing = not o["keep-going"], suppressPending = o["suppress-pending"],
  })

  local _, load_file = m.files(busted, o.loaders)
  local testFile, getTrace, rewriteMessage = load_file(busted, job.file)
  if testFile then
    local file = setmetatable({ getTrace = getTrace,
                                rewriteMessage = rewriteMessage },
                              { __call = testFile })
    busted.executors.file(job.file, file)
  end
  local t0 = busted.monotime()
  m.exec(busted)(1, { seed = job.seed })
  flush_output()
  return { time = busted.monotime() - t0 }
end

local baseline   -- the worker's state before its first file (save_state)

--- What a worker process runs for one file (or part): busted on that file,
-- its events written to job.events. Returns a summary for the parent.
function M._worker(job)
  local ev = assert(io.open(job.events, "wb"))
  local function out(rec)
    local s = machinery.loom.encode(rec)
    ev:write(spack(">s4", s))
    ev:flush()
  end
  load_machinery()
  local pid = pid_of_self()
  local cov = start_coverage(job, pid)
  local cap = new_capture(job)
  job.capture_state = cap
  out({ pid = pid, pos = cap and { cap.pos[1], cap.pos[2] } })
  if not baseline and not job.isolate then
    warm_up(job.opts.loaders)
    baseline = save_state()
  end
  _G.arg = job.arg
  local ok, res = xpcall(run_file, debug.traceback, job, out)
  if baseline then restore_state(baseline) end
  if cov then cov.save_stats() end
  if cap then cap.close() end
  ev:close()
  if not ok then return { internal = tostring(res) } end
  return res
end

---------------------------------------------------------------------------
-- Parent side
---------------------------------------------------------------------------

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- The running interpreter, as it was started (arg[-n]), or lua5.4.
local function running_interpreter()
  local a = rawget(_G, "arg")
  if type(a) ~= "table" then return "lua5.4" end
  local i = 0
  while a[i - 1] ~= nil do i = i - 1 end
  if i == 0 then return "lua5.4" end
  return a[i]
end

-- The interpreter's arg table (negative indices too), for the workers:
-- spec files see the arg they would see under plain busted.
function M.arg_table()
  local a = rawget(_G, "arg")
  local t = {}
  if type(a) ~= "table" then return t end
  for k, v in pairs(a) do
    if math.type(k) == "integer" and type(v) == "string" then t[k] = v end
  end
  return t
end

-- A file, read from byte `from` (0-based) to its end.
local function read_from(path, from)
  local f = io.open(path, "rb")
  if not f then return nil end
  f:seek("set", from or 0)
  local s = f:read("a")
  f:close()
  return s
end

-- Decodes an event file into a list of records (a record cut short by a
-- crash is dropped).
local function read_events(loom, path)
  local s = read_from(path, 0) or ""
  local recs, pos = {}, 1
  while pos + 4 <= #s + 1 do
    local len = sunpack(">I4", s, pos)
    if pos + 4 + len - 1 > #s then break end
    local ok, rec = pcall(loom.decode, s:sub(pos + 4, pos + 3 + len))
    if not ok then break end
    recs[#recs + 1] = rec
    pos = pos + 4 + len
  end
  return recs
end

local function tmpdir(lfs)
  local base = os.tmpname()
  os.remove(base)
  local dir = base .. ".loom-busted"
  assert(lfs.mkdir(dir))
  return dir
end

-- (the names first: removing entries while reading a folder may skip some)
local function rmtree(lfs, dir)
  local names = {}
  for name in lfs.dir(dir) do
    if name ~= "." and name ~= ".." then names[#names + 1] = name end
  end
  for _, name in ipairs(names) do os.remove(dir .. "/" .. name) end
  assert(lfs.rmdir(dir))
end

-- The times cache: file -> seconds, from earlier runs; in the folder the
-- suite runs from (after -C), or where $LOOM_BUSTED_TIMES says.
local function times_file()
  return os.getenv("LOOM_BUSTED_TIMES") or ".loom-busted-times"
end

local function read_times()
  local t = {}
  local f = io.open(times_file())
  if not f then return t end
  for line in f:lines() do
    local sec, name = line:match("^([%d%.e%-]+)\t(.+)$")
    if sec then t[name] = tonumber(sec) end
  end
  f:close()
  return t
end

local function write_times(t)
  local names = {}
  for k in pairs(t) do names[#names + 1] = k end
  table.sort(names)
  local TIMES = times_file()
  local tmp = TIMES .. ".tmp"
  local f = io.open(tmp, "w")
  if not f then return end
  f:write("# loom-busted: seconds each spec file took in earlier runs\n")
  for _, n in ipairs(names) do f:write(("%.6f\t%s\n"):format(t[n], n)) end
  f:close()
  os.rename(tmp, TIMES)
end

-- The replayer: publishes recorded events into the parent's busted, whose
-- subscribers are the runner's counters and the output handler. Each
-- element of a worker's context tree is a proxy here (one table per
-- element and stream, so that handlers that key on an element, as busted's
-- base handler does with tostring(element), see one element), its fields
-- those of the latest snapshot, its parent as busted.parent returns it.
local function new_replayer(busted)
  local root = busted.context.get()
  local parents, children = {}, {}
  local stub = function() end
  local real_parent, real_children = busted.context.parent, busted.context.children

  -- busted.parent and busted.children, as the handlers call them, see the
  -- replayed tree too
  busted.api.parent = function(e)
    local p = parents[e]
    if p ~= nil then return p or nil end
    return real_parent(e)
  end
  busted.api.children = function(e)
    return children[e] or real_children(e)
  end

  local R = {}

  -- One stream (a file, or a part): its own element ids.
  function R.stream()
    return { proxies = { [0] = root } }
  end

  local decode
  local function proxy(st, id)
    local p = st.proxies[id]
    if not p then
      p = {}
      st.proxies[id] = p
    end
    return p
  end

  R.proxy = proxy

  function decode(st, v)
    if type(v) ~= "table" then return v end
    if v[REF] then return proxy(st, v[REF]) end
    if v[FN] then return stub end
    local c = {}
    for k, x in next, v do c[decode(st, k)] = decode(st, x) end
    return c
  end

  local function fill(st, p, fields)
    for k in next, p do if fields[k] == nil then p[k] = nil end end
    for k, v in next, fields do p[k] = decode(st, v) end
  end

  -- Defines the elements a record names for the first time (under their
  -- parents), and updates the fields of those it carries.
  function R.define(st, rec)
    for _, d in ipairs(rec.d) do
      local p = proxy(st, d.id)
      if d.parent ~= nil then
        local pp = proxy(st, d.parent)
        if parents[p] == nil then
          parents[p] = pp == root and root or pp
          local list = children[pp]
          if not list then list = {}; children[pp] = list end
          list[#list + 1] = p
        end
      else
        parents[p] = false
      end
      if next(p) == nil then fill(st, p, d.fields) end
    end
    for id, ch in pairs(rec.s) do
      local p = proxy(st, id)
      for k, v in next, ch.set do p[k] = decode(st, v) end
      for _, k in ipairs(ch.del or {}) do p[k] = nil end
    end
  end

  -- busted.safe for a replayed publish: an error raised by a subscriber
  -- (a handler) becomes an error event of the element, as in busted.
  -- (busted would call a failure raised there an error too)
  local function safe(element, channel, ...)
    local ok, err = xpcall(busted.publish, debug.traceback, channel, ...)
    if not ok then
      local msg = tostring(err)
      busted.publish({ "error", element.descriptor }, element,
                     busted.api.parent(element), msg:match("^[^\n]*"),
                     { traceback = msg, short_src = "?", currentline = 0 })
    end
    return ok
  end

  function R.publish(st, rec)
    R.define(st, rec)
    local args = {}
    for i = 1, rec.n do args[i] = decode(st, rec.a[i]) end
    local c = rec.c
    if (c[2] == "start" or c[2] == "end") and
       (c[1] == "file" or c[1] == "describe" or c[1] == "test") then
      safe(args[1], c, unpack(args, 1, rec.n))
    else
      busted.publish(c, unpack(args, 1, rec.n))
    end
  end

  return R
end

-- The options a worker needs, as plain data.
local WORKER_OPTS = { "e", "helper", "Xhelper", "lazy", "auto-insulate",
  "keep-going", "sort-tests", "shuffle-tests", "tags", "exclude-tags",
  "filter", "filter-out", "list", "suppress-pending", "loaders", "lang",
  "verbose", "coverage", "coverage-config-file" }

--- Runs loom-busted with the arguments argv (a list, as `arg`). Returns the
-- exit code.
function M.run(argv)
  local ok, code = xpcall(M._run, function(e)
    if type(e) == "table" and e.usage then return e end
    return debug.traceback(e, 2)
  end, argv)
  if ok then return code end
  if type(code) == "table" and code.usage then
    io.stderr:write(code.usage, "\n")
    return code.code or 1
  end
  io.stderr:write(APP, ": ", tostring(code), "\n")
  return 1
end

local init_mt   -- busted's init module's own metatable (see M._run)

function M._run(argv)
  local own, rest = M.parse_own(argv)
  local path = require "pl.path"
  local term = require "term"
  local lfs = require "lfs"
  local utils = require "busted.utils"

  local isatty = io.type(io.stdout) == "file" and term.isatty(io.stdout)
  local default_output = isatty and "utfTerminal" or "plainTerminal"
  local cli = require "busted.modules.cli"({ standalone = false,
                                              output = default_output })
  cli:set_name(APP)

  if own.help then
    local _, help = cli:parse({ "--help" })
    io.stdout:write(OWN_HELP, "\n", help or "", "\n")
    return 0
  end

  -- --ignore-lua: loom-busted never starts itself again under --lua; the
  -- spec files run under it (the workers' interpreter)
  local parse_args = { [0] = APP }
  for i, a in ipairs(rest) do parse_args[i] = a end
  parse_args[#parse_args + 1] = "--ignore-lua"
  local cliArgs, err = cli:parse(parse_args)
  if not cliArgs then
    error({ usage = err }, 0)
  end

  local busted = require "busted.core"()
  if cliArgs.version then
    print(busted.version)
    return 0
  end

  local _, cderr = path.chdir(path.normpath(cliArgs.directory))
  if cderr then
    error({ usage = APP .. ": error: " .. cderr }, 0)
  end

  if cliArgs.coverage then
    local has = pcall(require, "luacov.runner")
    if not has then
      error({ usage = APP .. ": error: LuaCov not found on the system, try " ..
              "running without --coverage option, or install LuaCov first" }, 0)
    end
  end

  if #cliArgs.lpath > 0 then
    package.path = (cliArgs.lpath .. ";" .. package.path):gsub(";;", ";")
  end
  if #cliArgs.cpath > 0 then
    package.cpath = (cliArgs.cpath .. ";" .. package.cpath):gsub(";;", ";")
  end

  local loom = require "loom"
  -- busted's init module replaces its own metatable (its __call) when
  -- called: keep the first one, so that run can be called again
  local init = require "busted"
  init_mt = init_mt or getmetatable(init)
  setmetatable(init, init_mt)
  init(busted)

  local failures, errors = 0, 0
  local quit_on_error = not cliArgs["keep-going"]
  busted.subscribe({ "error", "output" }, function(element, _, message)
    io.stderr:write(APP .. ": error: Cannot load output library: " ..
                    element.name .. "\n" .. message .. "\n")
    return nil, true
  end)
  busted.subscribe({ "error", "helper" }, function(element, _, message)
    io.stderr:write(APP .. ": error: Cannot load helper script: " ..
                    element.name .. "\n" .. message .. "\n")
    return nil, true
  end)
  busted.subscribe({ "error" }, function()
    errors = errors + 1
    busted.skipAll = quit_on_error
    return nil, true
  end)
  busted.subscribe({ "failure" }, function(element)
    if element.descriptor == "it" then failures = failures + 1
    else errors = errors + 1 end
    busted.skipAll = quit_on_error
    return nil, true
  end)

  busted.sort = cliArgs["sort-tests"]
  busted.randomize = cliArgs["shuffle-tests"]
  busted.randomseed = tonumber(cliArgs.seed) or utils.urandom() or os.time()

  local luassert = require "luassert"
  require "busted.modules.output_handler_loader"()(busted, cliArgs.output, {
    defaultOutput = default_output,
    enableSound = cliArgs["enable-sound"],
    verbose = cliArgs.verbose,
    suppressPending = cliArgs["suppress-pending"],
    language = cliArgs.lang,
    deferPrint = cliArgs["defer-print"],
    arguments = cliArgs.Xoutput,
  })
  local highlight = luassert:get_parameter("TableErrorHighlightColor")

  require "busted.modules.filter_loader"()(busted, {
    tags = cliArgs.tags, excludeTags = cliArgs["exclude-tags"],
    filter = cliArgs.filter, filterOut = cliArgs["filter-out"],
    list = cliArgs.list, nokeepgoing = not cliArgs["keep-going"],
    suppressPending = cliArgs["suppress-pending"],
  })

  -- The spec files, as busted finds and loads (compiles) them: a file that
  -- does not compile is an error now, before the suite starts, as in busted.
  local _, loadTestFile, getAllTestFiles =
    require "busted.modules.test_file_loader"(busted, cliArgs.loaders)
  local names = getAllTestFiles(cliArgs.ROOT, cliArgs.pattern, {
    excludes = cliArgs["exclude-pattern"], verbose = cliArgs.verbose,
    recursive = cliArgs.recursive })
  local files = {}
  for _, name in ipairs(names) do
    if loadTestFile(busted, name) then files[#files + 1] = name end
  end
  if #names == 0 then
    local s = require "say"
    local patterns = cliArgs.pattern
    local pattern = patterns[1]
    if #patterns > 1 then pattern = "\n\t" .. table.concat(patterns, "\n\t") end
    busted.publish({ "error" }, {}, nil,
                   s("output.no_test_files_match"):format(pattern), {})
  end

  local opts = {}
  for _, k in ipairs(WORKER_OPTS) do opts[k] = cliArgs[k] end
  opts.lang = opts.lang or "en"

  local jobs = own.jobs or loom.cpu_count()
  local runs = cliArgs["repeat"] or 1

  local code = M._schedule({
    busted = busted, loom = loom, lfs = lfs, files = files, jobs = jobs,
    own = own, opts = opts, cliArgs = cliArgs, runs = runs,
    highlight = highlight,
    counts = function() return failures, errors end,
    arg = M.arg_table(),
  })
  return code
end

-- --coverage: the workers' LuaCov statistics (luacov.<pid>.stats in dir)
-- added up, line by line, into LuaCov's statistics file (which LuaCov
-- itself also adds to, run after run).
local function merge_coverage(lfs, dir, config)
  local runner = require "luacov.runner"
  local stats = require "luacov.stats"
  local conf = runner.load_config(config)
  local total = stats.load(conf.statsfile) or {}
  for name in lfs.dir(dir) do
    if name:match("^luacov%.%d+%.stats$") then
      for file, lines in pairs(stats.load(dir .. "/" .. name) or {}) do
        local t = total[file]
        if not t then
          t = { max = 0, max_hits = 0 }
          total[file] = t
        end
        t.max = math.max(t.max or 0, lines.max or 0)
        for line, hits in pairs(lines) do
          if math.type(line) == "integer" then
            t[line] = (t[line] or 0) + hits
            t.max_hits = math.max(t.max_hits or 0, t[line])
          end
        end
      end
    end
  end
  stats.save(conf.statsfile, total)
end

-- Runs the files on the pool and replays them. Returns the exit code.
function M._schedule(S)
  local lfs, own, cliArgs = S.lfs, S.own, S.cliArgs
  local times = own.no_times and {} or read_times()
  S.times, S.new_times = times, {}

  -- the workers' interpreter: --lua (unless --ignore-lua), else this one;
  -- run through a wrapper that makes descriptors 1 and 2 files of the
  -- run's folder, named by the worker's pid
  local interp = (not own.ignore_lua and cliArgs.lua) or
                 shell_quote(running_interpreter())
  S.interp = (not own.ignore_lua and cliArgs.lua) or running_interpreter()
  local dir = tmpdir(lfs)
  S.dir = dir
  local wrapper = dir .. "/lua"
  S.wrapper = wrapper
  local f = assert(io.open(wrapper, "w"))
  local qdir = shell_quote(dir)
  f:write("#!/bin/sh\n",
          "exec >>", qdir, '/out."$$".1 2>>', qdir, '/out."$$".2\n',
          "exec ", interp, ' "$@"\n')
  f:close()
  os.execute("chmod +x " .. shell_quote(wrapper))

  local px
  local ok, code = xpcall(function()
    px = S.loom.process_executor({
      workers = S.jobs,
      interpreter = wrapper,
      task_timeout = own.timeout,
      max_tasks_per_child = own.isolate and 1 or nil,
    })
    S.px = px
    return M._runs(S)
  end, function(e)
    if type(e) == "table" and e.usage then return e end
    return debug.traceback(tostring(e), 2)
  end)
  if px then
    pcall(px.shutdown, px, { wait = true, cancel_futures = true,
                             cancel_running = true })
  end
  if cliArgs.coverage then
    local merged, merr = pcall(merge_coverage, lfs, dir, cliArgs["coverage-config-file"])
    if not merged then io.stderr:write(APP, ": coverage: ", tostring(merr), "\n") end
  end
  pcall(rmtree, lfs, dir)
  if not own.no_times and next(S.new_times) then
    for k, v in pairs(S.new_times) do times[k] = v end
    write_times(times)
  end
  if ok then return code end
  error(code, 0)
end

-- What happened to a unit that did not finish, as an error message.
local function lost_message(err, file, own)
  if type(err) == "table" and err.kind == "timeout" then
    return ("%s: stopped: it ran longer than --timeout %g s"):format(file, own.timeout)
  elseif type(err) == "table" and err.kind == "crashed" then
    return ("%s: %s"):format(file, err.message)
  end
  return ("%s: %s"):format(file, tostring(err))
end

-- The records of a unit, and if it did not finish, records that close what
-- it left open: an error of the innermost open block or test (what
-- happened), then the end of each open block, as busted would have sent.
local function close_lost(u)
  local recs = u.recs
  if not u.lost then return recs end
  local stack, info = {}, {}
  for _, r in ipairs(recs) do
    for _, d in ipairs(r.d or {}) do
      info[d.id] = { parent = d.parent, descriptor = d.fields.descriptor }
    end
    local c = r.c
    if c and (c[1] == "file" or c[1] == "describe" or c[1] == "test") then
      local id = r.a[1][REF]
      if c[2] == "start" then
        stack[#stack + 1] = { id = id, kind = c[1], u = r.u }
      elseif c[2] == "end" and #stack > 0 and stack[#stack].id == id then
        stack[#stack] = nil
      end
    end
  end
  local out = {}
  for i, r in ipairs(recs) do out[i] = r end
  local file = u.entry.name
  local trace = { short_src = file, source = "@" .. file, what = "main",
                  currentline = 0, traceback = "" }
  local function ref(id) return id and { [REF] = id } or nil end
  local function add(c, u0, ...)
    out[#out + 1] = { c = c, n = select("#", ...), a = { ... }, s = {}, d = {}, u = u0 }
  end
  local top = stack[#stack]
  if not top then
    add({ "error", "file" }, 0, { descriptor = "file", name = file }, nil,
        u.lost, trace)
    return out
  end
  local ti = info[top.id] or {}
  if top.kind == "test" then
    add({ "error", "it" }, top.u, ref(top.id), ref(ti.parent), u.lost, trace)
    add({ "test", "end" }, top.u, ref(top.id), ref(ti.parent), "error")
    stack[#stack] = nil
  else
    add({ "error", ti.descriptor or top.kind }, top.u, ref(top.id),
        ref(ti.parent), u.lost, trace)
  end
  for i = #stack, 1, -1 do
    local e = stack[i]
    local ei = info[e.id] or {}
    if e.kind == "file" then add({ "file", "end" }, e.u, ref(e.id))
    else add({ e.kind, "end" }, e.u, ref(e.id), ref(ei.parent)) end
  end
  return out
end

-- Replays one file: its parts' records merged in the order of its
-- top-level blocks. A record outside every block (unit 0: the file's start
-- and end, its hooks) is taken from the first part only (each part ran the
-- file's own code and hooks); it goes with the next block of that part, or
-- at the end. Output goes with the next record of its part.
local function replay_entry(replay, e)
  local streams = {}
  for p, u in ipairs(e.parts) do
    streams[p] = { st = replay.stream(), recs = close_lost(u) }
  end
  local function emit(st, r)
    if r.o then
      local fh = r.o == 1 and io.stdout or io.stderr
      fh:write(r.text)
      fh:flush()
    elseif r.c then
      replay.publish(st, r)
    end
  end
  if #streams == 1 then
    for _, r in ipairs(streams[1].recs) do emit(streams[1].st, r) end
    return
  end
  -- the file element is one element in every part (the first part's)
  local file_proxy
  for p, s in ipairs(streams) do
    for _, r in ipairs(s.recs) do
      if r.c and r.c[1] == "file" and type(r.a[1]) == "table" and r.a[1][REF] then
        local id = r.a[1][REF]
        s.file_id = id
        if p == 1 then file_proxy = replay.proxy(s.st, id)
        elseif file_proxy then s.st.proxies[id] = file_proxy end
        break
      end
    end
  end
  local units, tail, maxu = {}, {}, 0
  for p, s in ipairs(streams) do
    local held = {}
    for _, r in ipairs(s.recs) do
      local u = r.u or 0
      if r.o or (u == 0 and p == 1) then
        held[#held + 1] = r
      elseif u > 0 then
        if u > maxu then maxu = u end
        local list = units[u] or {}
        units[u] = list
        for _, x in ipairs(held) do list[#list + 1] = { s.st, x } end
        held = {}
        list[#list + 1] = { s.st, r }
      elseif r.d and #r.d > 0 then
        -- a dropped record still defines the elements it names first
        -- (not the file element, which is the first part's)
        local defs = {}
        for _, d in ipairs(r.d) do
          if d.id ~= s.file_id then defs[#defs + 1] = d end
        end
        replay.define(s.st, { d = defs, s = {} })
      end
    end
    for _, x in ipairs(held) do tail[#tail + 1] = { s.st, x } end
  end
  for u = 1, maxu do
    for _, x in ipairs(units[u] or {}) do emit(x[1], x[2]) end
  end
  for _, x in ipairs(tail) do emit(x[1], x[2]) end
end

-- A spec file that says `loom-busted: alone` in its first 2 KiB (in a
-- comment) runs alone, after the others: one that sends signals, counts
-- processes, or must not share the machine.
local function runs_alone(name)
  local f = io.open(name, "rb")
  if not f then return false end
  local head = f:read(2048) or ""
  f:close()
  return head:find("loom-busted: alone", 1, true) ~= nil
end

-- One run of the suite (busted's --repeat makes several): the files in
-- busted's order, scheduled longest first on the pool, replayed in order.
local function run_once(S, run, replay)
  local busted, loom, own = S.busted, S.loom, S.own
  local root = busted.context.get()
  local utils = require "busted.utils"
  local px, dir, times = S.px, S.dir, S.times

  if run > 1 then
    busted.randomseed = tonumber(S.cliArgs.seed) or utils.urandom() or os.time()
    busted.safe_publish("suite", { "suite", "reset" }, root, run, S.runs)
  end

  -- busted's order of the files (execute.lua: sort, or shuffle)
  local order = {}
  for i, f in ipairs(S.files) do order[i] = f end
  if S.cliArgs["sort-files"] then
    table.sort(order)
  elseif S.cliArgs["shuffle-files"] then
    root.randomseed = busted.randomseed
    utils.shuffle(order, busted.randomseed)
  end

  -- the units of work: files, or with --split and fewer files than
  -- workers, parts of files
  local nparts = 1
  if own.split and #order > 0 and #order < S.jobs then
    nparts = math.ceil(S.jobs / #order)
  end
  local entries, queue = {}, {}
  for i, name in ipairs(order) do
    local e = { name = name, parts = {}, ndone = 0, alone = runs_alone(name) }
    entries[i] = e
    for p = 1, e.alone and 1 or nparts do
      local u = { entry = e, part = p, n = #queue + 1 }
      e.parts[p] = u
      queue[#queue + 1] = u
    end
  end
  -- longest first: the files with no recorded time first (they may be
  -- long), then by the times of earlier runs; ties in busted's order
  table.sort(queue, function(a, b)
    if a.entry.alone ~= b.entry.alone then return b.entry.alone end
    local ta, tb = times[a.entry.name], times[b.entry.name]
    if (ta == nil) ~= (tb == nil) then return ta == nil end
    if ta and tb and ta ~= tb then return ta > tb end
    return a.n < b.n
  end)

  local seed = busted.randomseed
  local started = busted.safe_publish("suite", { "suite", "start" }, root,
    run, S.runs, busted.randomize and busted.randomseed or nil)
  if not started then
    busted.safe_publish("suite", { "suite", "end" }, root, run, S.runs)
    return
  end

  local task = function(job) return require("loom.busted")._worker(job) end
  local inflight, unit_of = {}, {}
  local qi = 1
  local function submit_next()
    while #inflight < S.jobs and qi <= #queue do
      local u = queue[qi]
      -- a file marked to run alone waits for the pool to be idle, and
      -- nothing starts beside it
      if u.entry.alone and #inflight > 0 then return end
      qi = qi + 1
      S.seq = S.seq + 1
      u.events = ("%s/t%d.ev"):format(dir, S.seq)
      local f = px:submit(task, {
        file = u.entry.name, part = u.part, nparts = nparts > 1 and nparts or nil,
        events = u.events, seed = seed, opts = S.opts, capture = true,
        isolate = own.isolate, highlight = S.highlight, arg = S.arg, dir = dir,
      })
      inflight[#inflight + 1] = f
      unit_of[f] = u
      if u.entry.alone then return end
    end
  end

  -- a finished unit: its records, and how it ended
  local function collect(f)
    local u = unit_of[f]
    unit_of[f] = nil
    local ok, res = pcall(f.result, f)
    u.recs = read_events(loom, u.events)
    os.remove(u.events)
    if ok and type(res) == "table" and res.helper_error then
      S.abort = ("%s: failed running the specified helper (%s), error: %s")
        :format(APP, S.cliArgs.helper, tostring(res.helper_error))
    elseif ok and type(res) == "table" and res.internal then
      u.lost = ("%s: loom-busted failed in the worker: %s")
        :format(u.entry.name, res.internal)
    elseif ok then
      u.time = type(res) == "table" and res.time or nil
    elseif type(res) == "table" and res.kind == "broken" then
      S.abort = ("%s: the workers cannot start under %s (loom-busted needs a " ..
        "Lua 5.4 interpreter that can load loom): %s"):format(APP, S.interp,
        (tostring(res.message):gsub(literal(S.wrapper), (S.interp:gsub("%%", "%%%%")))))
    else
      u.lost = lost_message(res, u.entry.name, own)
      if type(res) == "table" and res.kind == "timeout" then u.time = own.timeout end
      -- what the file wrote after its last record, from the worker's files
      local head = u.recs[1]
      if head and head.pid and head.pos then
        local pos = { head.pos[1], head.pos[2] }
        for _, r in ipairs(u.recs) do if r.o then pos[r.o] = r.pos end end
        for fd = 1, 2 do
          local s = read_from(("%s/out.%d.%d"):format(dir, head.pid, fd), pos[fd])
          if s and #s > 0 then u.recs[#u.recs + 1] = { o = fd, text = s } end
        end
      end
      if type(res) == "table" and res.kind == "crashed" then
        S.crashes = S.crashes + 1
        if S.crashes > S.max_restart then
          S.stop = ("%s: %d worker processes crashed, more than " ..
            "--max-worker-restart %d: the run stops"):format(APP, S.crashes, S.max_restart)
        end
      end
    end
    local e = u.entry
    e.ndone = e.ndone + 1
    if u.lost then e.lost = true end
    if e.ndone == #e.parts then
      local t = 0
      for _, p in ipairs(e.parts) do t = t + (p.time or 0) end
      if not e.lost or t > 0 then S.new_times[e.name] = t end
    end
  end

  local next_report = 1
  local function replay_ready()
    while next_report <= #entries and not busted.skipAll do
      local e = entries[next_report]
      if e.ndone < #e.parts then return end
      e.replayed = true   -- before: Ctrl-C in the middle must not replay it twice
      replay_entry(replay, e)
      next_report = next_report + 1
    end
  end

  submit_next()
  local ok, err = pcall(function()
    while #inflight > 0 do
      local done = loom.wait(inflight, { return_when = loom.FIRST_COMPLETED })
      local isdone = {}
      for _, f in ipairs(done) do
        isdone[f] = true
        collect(f)
      end
      local still = {}
      for _, f in ipairs(inflight) do
        if not isdone[f] then still[#still + 1] = f end
      end
      inflight = still
      if S.abort then return end
      replay_ready()
      if busted.skipAll or S.stop then return end
      submit_next()
    end
  end)
  if not ok then
    if type(err) == "string" and err:find("interrupted!", 1, true) then
      S.interrupted = true
    else
      error(err, 0)
    end
  end
  if S.abort then return end
  if S.interrupted or S.stop then
    -- stop every worker now; report what ran (the files that finished)
    px:shutdown({ wait = true, cancel_futures = true, cancel_running = true })
    local notrun = 0
    for _, e in ipairs(entries) do
      if not e.replayed then
        if e.ndone == #e.parts and not busted.skipAll then
          replay_entry(replay, e)
        else
          notrun = notrun + 1
        end
      end
    end
    if S.interrupted then
      S.stop = ("%s: interrupted: %d of %d spec files did not run")
        :format(APP, notrun, #entries)
    end
  end
  busted.safe_publish("suite", { "suite", "end" }, root, run, S.runs)
end

function M._runs(S)
  local busted = S.busted
  S.max_restart = S.own.max_restart or 4 * S.jobs
  S.crashes, S.seq = 0, 0
  local replay = new_replayer(busted)
  for run = 1, S.runs do
    run_once(S, run, replay)
    if S.abort or S.stop or busted.skipAll then break end
  end
  if S.abort then
    io.stdout:flush()
    io.stderr:write(S.abort, "\n")
    return 1
  end
  busted.publish({ "exit" })
  io.stdout:flush()
  if S.stop then io.stderr:write(S.stop, "\n") end
  if S.interrupted then return 130 end
  if S.stop then return 1 end
  local failures, errors = S.counts()
  return (failures + errors > 0) and 1 or 0
end

return M
