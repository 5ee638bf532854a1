-- loom-busted (bin/loom-busted, lua/loom/busted.lua) on the fixture suites
-- of spec/fixtures/loom_busted: the same report, counts and exit code as
-- plain busted, through every output handler; .busted tasks and tags;
-- --split, --timeout, crashes, Ctrl-C. Every command runs under `timeout`
-- (a hang fails the test); nothing waits by sleeping.

local helpers = require "spec.support.helpers"
local reliability = require "spec.support.reliability"
local lfs = require "lfs"

local LIMIT = reliability.CHILD_LIMIT
local ROOT = helpers.current_directory()
local FIXTURES = ROOT .. "/spec/fixtures/loom_busted"

local function q(s)
  return "'" .. string.gsub(s, "'", "'\\''") .. "'"
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- Runs a shell command line in dir; returns its stdout, exit code, stderr.
local function sh(dir, line)
  local errfile = os.tmpname()
  local p = assert(io.popen(("cd %s && %s 2>%s"):format(q(dir), line, q(errfile))))
  local out = p:read("a")
  local _, _, code = p:close()
  local err = read_file(errfile)
  os.remove(errfile)
  return out, code, err
end

local function args(list)
  local t = {}
  for i, a in ipairs(list) do t[i] = q(a) end
  return table.concat(t, " ")
end

-- The arguments, and the folder "." when they name no spec file and the
-- folder has no .busted file (which names its own).
local function with_root(dir, list)
  local last = list[#list] or ""
  if dir == "tasks" or last:match("_check%.lua$") then return list end
  local t = { table.unpack(list) }
  t[#t + 1] = "."
  return t
end

-- plain busted and loom-busted, in dir (a folder of the fixtures), with the
-- environment `env` ("NAME=value ..." or "")
local function busted(dir, list, env)
  return sh(FIXTURES .. "/" .. dir, ("env %s timeout %d busted --lua=lua5.4 %s")
    :format(env or "", LIMIT, args(with_root(dir, list))))
end

local LOOM_ENV = ("LUA_PATH_5_4=%s LUA_CPATH_5_4=%s"):format(
  q(ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua;;"), q(ROOT .. "/?.so;;"))

local function loom_busted(dir, list, env)
  return sh(FIXTURES .. "/" .. dir, ("env %s %s timeout %d lua5.4 %s --no-times %s")
    :format(LOOM_ENV, env or "", LIMIT, q(ROOT .. "/bin/loom-busted"),
            args(with_root(dir, list))))
end

-- What differs between two runs of the same suite: times, addresses.
local function normal(s)
  return (s:gsub("%d+%.?%d*e?%-?%d* seconds", "T seconds")
           :gsub("table: 0x%x+", "table: X")
           :gsub("%(%d+%.%d+ ms", "(T ms"))
end

local function counts(out)
  local s, f, e, p = out:match("(%d+) success%a* / (%d+) failures? / (%d+) errors? / (%d+) pending")
  return { tonumber(s), tonumber(f), tonumber(e), tonumber(p) }
end

-- Both on the same suite; `own` are loom-busted's own options (-j ...).
local function same_run(dir, list, env, own)
  local pout, pcode = busted(dir, list, env)
  local all = {}
  for _, a in ipairs(own or {}) do all[#all + 1] = a end
  for _, a in ipairs(list) do all[#all + 1] = a end
  local lout, lcode = loom_busted(dir, all, env)
  assert.are.equal(pcode, lcode, lout)
  assert.are.equal(normal(pout), normal(lout))
  return lout, lcode
end

local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir " .. q(d)))
  return d
end

local function rmdir(d)
  os.execute("rm -rf " .. q(d))
end

local function exists(path)
  local f = io.open(path)
  if f then f:close() end
  return f ~= nil
end

-- The sanitizer runs start child interpreters through $LOOM_LUA, against a
-- core built for them; loom-busted's runs here use lua5.4 and ./loom/core.so.
local sanitized = os.getenv("LOOM_LUA") ~= nil

describe("loom-busted", function()
  if sanitized then
    pending("runs under make test (not under the sanitizer builds)")
    return
  end

  describe("reports as plain busted does", function()
    for _, handler in ipairs({ "utfTerminal", "plainTerminal", "TAP", "gtest" }) do
      it("through " .. handler, function()
        local out, code = same_run("basic", { "-p", "_check", "-o", handler })
        assert.are.equal(1, code)
        assert.is_truthy(out:find("a line from e_print_check", 1, true))
      end)
    end

    it("counts: 9 successes, 2 failures, 3 errors, 2 pending", function()
      local out = same_run("basic", { "-p", "_check", "-o", "plainTerminal" })
      assert.are.same({ 9, 2, 3, 2 }, counts(out))
    end)

    it("through json (the same tests, names and messages)", function()
      local json = require "dkjson"
      -- pending tests make busted's json handler fail (a function in the
      -- element's attributes): the same failure, then, in both
      local pout, pcode = busted("basic", { "-p", "_check", "-o", "json", "--exclude-tags=x" })
      local lout, lcode = loom_busted("basic", { "-p", "_check", "-o", "json", "--exclude-tags=x" })
      assert.are.equal(pcode, lcode)
      assert.are.equal(normal(pout), normal(lout))
      local pl, ll = busted("basic", { "-p", "_check", "-o", "json", "a_pass_check.lua",
                                       "b_fail_check.lua" }),
                     loom_busted("basic", { "-p", "_check", "-o", "json", "a_pass_check.lua",
                                            "b_fail_check.lua" })
      local p, l = json.decode(pl), json.decode(ll)
      assert.is_table(p)
      assert.is_table(l)
      for _, k in ipairs({ "successes", "failures", "errors", "pendings" }) do
        assert.are.equal(#p[k], #l[k], k)
        for i, t in ipairs(p[k]) do
          assert.are.equal(t.name, l[k][i].name)
          assert.are.equal(t.message and normal(t.message), l[k][i].message and normal(l[k][i].message))
          assert.are.equal(t.element.trace.currentline, l[k][i].element.trace.currentline)
        end
      end
      assert.are.equal(5, #l.successes)
      assert.are.equal(2, #l.failures)
    end)

    it("through junit (the same counts and test cases)", function()
      local pout, pcode = busted("basic", { "-p", "_check", "-o", "junit" })
      local lout, lcode = loom_busted("basic", { "-p", "_check", "-o", "junit" })
      assert.are.equal(pcode, lcode)
      local function summary(x)
        local top = x:match("<testsuites[^>]*>")
        local t = {}
        for _, k in ipairs({ "tests", "failures", "errors", "skip" }) do
          t[k] = top:match(" " .. k .. "='(%d+)'")
        end
        for attrs in x:gmatch("<testcase(%s[^>]*)>") do
          t[#t + 1] = attrs:match("%sname='([^']*)'")
        end
        return t
      end
      assert.are.same(summary(pout), summary(lout))
      assert.are.equal("15", summary(lout).tests)
    end)

    it("through a custom handler (every event, in busted's order)", function()
      local out = same_run("basic", { "-p", "_check", "-o", FIXTURES .. "/handler.lua" })
      assert.is_truthy(out:find("counts 9 2 3 2", 1, true))
    end)

    it("with -j 1", function()
      same_run("basic", { "-p", "_check", "-o", "utfTerminal" }, nil, { "-j", "1" })
    end)

    it("with a file that does not compile (an error before the suite starts)", function()
      local out, code = same_run("syntax", { "-p", "_check", "-o", "utfTerminal" })
      assert.are.equal(1, code)
      assert.is_truthy(out:find("'%)' expected"))
    end)

    it("with an exit code of 0 when every test passes", function()
      local _, code = same_run("basic", { "-p", "_check", "a_pass_check.lua" })
      assert.are.equal(0, code)
    end)

    it("with --shuffle and a --seed (files and tests in busted's order)", function()
      same_run("basic", { "-p", "_check", "-o", "TAP", "--shuffle", "--seed=1234" })
      same_run("basic", { "-p", "_check", "-o", "TAP", "--shuffle-tests", "--seed=99" })
    end)

    it("with --sort, --list, --repeat, --no-keep-going, --suppress-pending", function()
      same_run("basic", { "-p", "_check", "-o", "TAP", "--sort" })
      same_run("basic", { "-p", "_check", "--list" })
      same_run("basic", { "-p", "_check", "-o", "TAP", "--repeat=2" })
      same_run("basic", { "-p", "_check", "-o", "TAP", "--no-keep-going" })
      same_run("basic", { "-p", "_check", "-o", "utfTerminal", "--suppress-pending" })
    end)

    it("with --filter and --filter-out", function()
      same_run("basic", { "-p", "_check", "-o", "TAP", "--filter=compares" })
      same_run("basic", { "-p", "_check", "-o", "TAP", "--filter-out=passing" })
    end)

    it("with a file's output in the report, where the file wrote it", function()
      local out, code = loom_busted("child", { "-p", "_check", "-o", "TAP" })
      assert.are.equal(0, code)
      assert.are.equal("from a child process\nok 1 - a child process prints\n",
                       out:sub(1, #"from a child process\nok 1 - a child process prints\n"))
    end)
  end)

  describe("honours .busted", function()
    it("its default task and its tags", function()
      local out, code = same_run("tasks", { "-o", "TAP" })
      assert.are.equal(0, code)
      assert.is_truthy(out:find("1..3", 1, true))
    end)

    it("a named task (--run), with its own tags and exclusions", function()
      local _, code = same_run("tasks", { "-o", "TAP", "--run=slow" })
      assert.are.equal(1, code)
    end)

    it("--tags and --exclude-tags on the command line", function()
      same_run("tasks", { "-o", "TAP", "--tags=slow", "--exclude-tags=broken" })
      same_run("tasks", { "-o", "TAP", "--tags=slow,fast" })
      -- busted's own refusal, in busted's words
      local _, pcode, perr = busted("tasks", { "--exclude-tags=fast" })
      local _, lcode, lerr = loom_busted("tasks", { "--exclude-tags=fast" })
      assert.are.equal(pcode, lcode)
      assert.are.equal(perr:gsub("^busted", ""), lerr:gsub("^loom%-busted", ""))
    end)

    it("a task's lpath, cpath and helper", function()
      local out, code = same_run("tasks", { "-o", "TAP", "--run=paths" })
      assert.are.equal(0, code)
      assert.is_truthy(out:find("ok 3 - paths #paths runs after the helper\n1..3", 1, true), out)
    end)

    it("a helper that fails: the run stops before any test, as in busted", function()
      local pout, pcode, perr = busted("tasks", { "-o", "TAP", "--helper=no_such_helper.lua" })
      local lout, lcode, lerr = loom_busted("tasks", { "-o", "TAP", "--helper=no_such_helper.lua" })
      assert.are.equal(pcode, lcode)
      assert.are.equal(pout, lout)
      assert.is_truthy(perr:find("failed running the specified helper (no_such_helper.lua)", 1, true))
      assert.is_truthy(lerr:find("failed running the specified helper (no_such_helper.lua)", 1, true), lerr)
    end)

    it("--name: the one test of that full name", function()
      local out = loom_busted("tasks", { "-o", "TAP", "--run=slow",
                                         "--name=tags is slow #slow" })
      assert.are.equal("ok 1 - tags is slow #slow\n1..1\n", out)
    end)
  end)

  describe("keeps files apart", function()
    it("a recycled worker sees no global, module or patch of an earlier file", function()
      local out, code = loom_busted("globals", { "-j", "1", "-p", "_check", "-o", "TAP" })
      assert.are.equal(0, code, out)
      assert.is_truthy(out:find("1..4", 1, true))
      -- plain busted insulates globals and modules, not the patch
      local pout = busted("globals", { "-p", "_check", "-o", "TAP" })
      assert.is_truthy(pout:find("not ok 4 - a file that runs later sees no patch", 1, true))
    end)

    it("with --isolate, a process per file", function()
      local _, code = loom_busted("globals", { "-j", "1", "--isolate", "-p", "_check" })
      assert.are.equal(0, code)
    end)
  end)

  describe("--split", function()
    it("runs the top-level blocks of one file in several processes, one report", function()
      local d = tmpdir()
      local env = "LOOM_BUSTED_FIXTURE_DIR=" .. q(d)
      local pout, pcode = busted("split", { "-p", "_check", "-o", "TAP" })
      local lout, lcode = loom_busted("split", { "-j", "3", "--split", "-p", "_check",
                                                  "-o", "TAP" }, env)
      assert.are.equal(pcode, lcode)
      assert.are.equal(pout, lout)
      local pids = 0
      for name in lfs.dir(d) do
        if name:match("^pid%.") then pids = pids + 1 end
      end
      rmdir(d)
      assert.are.equal(3, pids)
    end)

    it("does nothing with as many files as workers", function()
      same_run("basic", { "-p", "_check", "-o", "TAP" }, nil, { "-j", "2", "--split" })
    end)
  end)

  describe("faults", function()
    it("a worker killed by a signal, or os.exit: an error of that test; the rest runs", function()
      local out, code = loom_busted("crash", { "-p", "_check", "-o", "TAP" })
      assert.are.equal(1, code)
      assert.is_truthy(out:find("not ok 2 - segv dies", 1, true), out)
      assert.is_truthy(out:find("was killed by signal 11 (SIGSEGV)", 1, true), out)
      assert.is_truthy(out:find("about to die", 1, true), out)
      assert.is_falsy(out:find("never runs", 1, true), out)
      assert.is_truthy(out:find("not ok 3 - exit calls os.exit", 1, true), out)
      assert.is_truthy(out:find("os.exit is not allowed in a loom worker", 1, true), out)
      assert.is_falsy(out:find("exit never runs", 1, true), out)
      assert.is_truthy(out:find("ok 4 - after the crashes still runs", 1, true), out)
      assert.is_truthy(out:find("1..4", 1, true), out)
    end)

    it("stops after --max-worker-restart crashes, and says so", function()
      local out, code, err = loom_busted("crash", { "-j", "1", "-p", "_check", "-o", "TAP",
                                                   "--max-worker-restart=0" })
      assert.are.equal(1, code)
      assert.is_truthy(err:find("1 worker processes crashed, more than --max-worker-restart 0", 1, true), err)
      assert.is_falsy(out:find("after the crashes", 1, true), out)
    end)

    it("a file past --timeout: an error naming the limit; the rest runs", function()
      local out, code = loom_busted("hang", { "-p", "_check", "-o", "TAP", "--timeout=3" })
      assert.are.equal(1, code)
      assert.is_truthy(out:find("ok 1 - hang passes", 1, true), out)
      assert.is_truthy(out:find("not ok 2 - hang never ends", 1, true), out)
      assert.is_truthy(out:find("ran longer than --timeout 3 s", 1, true), out)
      assert.is_truthy(out:find("ok 3 - after the crashes still runs", 1, true), out)
    end)

    it("Ctrl-C: stops at once, reports what ran, leaves no worker", function()
      local d = tmpdir()
      local p = assert(io.popen(("cd %s && env %s LOOM_BUSTED_FIXTURE_DIR=%s " ..
        "timeout %d sh -c 'echo $$; exec lua5.4 %s -j 2 --no-times -p _check " ..
        "-o utfTerminal .' 2>&1"):format(q(FIXTURES .. "/interrupt"), LOOM_ENV, q(d),
        LIMIT, q(ROOT .. "/bin/loom-busted"))))
      local pid = p:read("l")
      -- both workers run a file that never ends (after the quick one)
      local deadline = os.time() + LIMIT
      local function ready()
        local n, pids = 0, {}
        for name in lfs.dir(d) do
          local w = name:match("^ready%.(%d+)$")
          if w then n = n + 1; pids[#pids + 1] = w end
        end
        return n == 2 and pids
      end
      local workers = ready()
      while not workers and os.time() < deadline do workers = ready() end
      assert.is_truthy(workers, "the hanging files did not start")
      os.execute("kill -INT " .. pid)
      local out = p:read("a")
      local _, _, code = p:close()
      rmdir(d)
      assert.are.equal(130, code, out)
      assert.is_truthy(out:find("1 success / 0 failures / 0 errors / 0 pending", 1, true), out)
      assert.is_truthy(out:find("interrupted: 2 of 3 spec files did not run", 1, true), out)
      for _, w in ipairs(workers) do
        assert.is_false(exists("/proc/" .. w .. "/stat"), "worker " .. w .. " is left")
      end
    end)
  end)

  describe("options", function()
    it("refuses --no-auto-insulate by name", function()
      local _, code, err = loom_busted("basic", { "--no-auto-insulate", "-p", "_check" })
      assert.are.equal(1, code)
      assert.is_truthy(err:find("--no-auto-insulate is not supported", 1, true), err)
    end)

    it("refuses what busted refuses, as busted does", function()
      local _, pcode, perr = busted("basic", { "--no-such-option" })
      local _, lcode, lerr = loom_busted("basic", { "--no-such-option" })
      assert.are.equal(pcode, lcode)
      assert.are.equal(perr:gsub("^busted", ""), lerr:gsub("^loom%-busted", ""))
    end)

    it("workers that cannot start: one clear message", function()
      local _, code, err = loom_busted("tasks", { "--lua=/no/such/lua" })
      assert.are.equal(1, code)
      assert.is_truthy(err:find("workers cannot start", 1, true), err)
      assert.is_truthy(err:find("/no/such/lua", 1, true), err)
    end)

    it("checks its own", function()
      local _, code, err = loom_busted("tasks", { "-j", "0" })
      assert.are.equal(1, code)
      assert.is_truthy(err:find("-j must be an integer >= 1", 1, true), err)
      _, code, err = loom_busted("tasks", { "--timeout" })
      assert.are.equal(1, code)
      assert.is_truthy(err:find("--timeout needs a value", 1, true), err)
    end)

    it("--help lists its options and busted's", function()
      local out, code = loom_busted("basic", { "--help" })
      assert.are.equal(0, code)
      assert.is_truthy(out:find("--max-worker-restart", 1, true))
      assert.is_truthy(out:find("--exclude-tags", 1, true))
    end)

    it("--coverage: every worker's statistics, added up", function()
      local d = tmpdir()
      local env = ("LUA_PATH_5_4=%s LUA_CPATH_5_4=%s"):format(
        q(FIXTURES .. "/fakecov/?.lua;" .. ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua;;"),
        q(ROOT .. "/?.so;;"))
      local _, code = sh(FIXTURES, ("cp -r basic %s/ && cd %s && env %s timeout %d lua5.4 %s " ..
        "-j 2 --no-times --coverage -p _check basic"):format(q(d), q(d), env, LIMIT,
        q(ROOT .. "/bin/loom-busted")))
      assert.are.equal(1, code)
      local stats = read_file(d .. "/luacov.stats.out") or ""
      rmdir(d)
      for _, name in ipairs({ "a_pass", "b_fail", "c_error", "d_pending", "e_print" }) do
        assert.is_truthy(stats:find("basic/" .. name .. "_check.lua\t1\t", 1, true), name)
      end
    end)

    it("--coverage needs LuaCov, as in busted", function()
      if pcall(require, "luacov.runner") then
        pending("LuaCov is installed")
        return
      end
      local _, pcode, perr = busted("basic", { "-p", "_check", "--coverage" })
      local _, lcode, lerr = loom_busted("basic", { "-p", "_check", "--coverage" })
      assert.are.equal(pcode, lcode)
      assert.is_truthy(perr:find("LuaCov not found", 1, true))
      assert.is_truthy(lerr:find("LuaCov not found", 1, true))
    end)
  end)

  describe("the times of earlier runs", function()
    it("are kept, and the longest file runs first; the report keeps busted's order", function()
      local d = tmpdir()
      for _, name in ipairs({ "a", "b", "c" }) do
        local f = assert(io.open(d .. "/" .. name .. "_check.lua", "w"))
        f:write(([[
it("%s", function()
  local f = io.open(os.getenv("LOOM_BUSTED_FIXTURE_DIR") .. "/order", "a")
  f:write("%s")
  f:close()
end)
]]):format(name, name))
        f:close()
      end
      local f = assert(io.open(d .. "/.loom-busted-times", "w"))
      f:write("0.5\t./b_check.lua\n2.5\t./c_check.lua\n")
      f:close()
      local line = ("cd %s && env -u LOOM_BUSTED_TIMES %s LOOM_BUSTED_FIXTURE_DIR=%s timeout %d lua5.4 %s -j 1 " ..
        "-p _check -o TAP ."):format(q(d), LOOM_ENV, q(d), LIMIT, q(ROOT .. "/bin/loom-busted"))
      local p = io.popen(line)
      local out = p:read("a")
      p:close()
      -- a (no time yet) first, then c (2.5 s), then b (0.5 s)
      assert.are.equal("acb", read_file(d .. "/order"))
      assert.are.equal("ok 1 - a\nok 2 - b\nok 3 - c\n1..3\n", out)
      local times = read_file(d .. "/.loom-busted-times")
      for _, name in ipairs({ "a", "b", "c" }) do
        assert.is_truthy(times:find("\t./" .. name .. "_check.lua\n", 1, true), times)
      end
      rmdir(d)
    end)
  end)
end)
