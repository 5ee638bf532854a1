-- loom-busted (bin/loom-busted, lua/loom/busted.lua) on the fixture suites
-- of spec/fixtures/loom_busted: the same report, counts and exit code as
-- plain busted, through every output handler; .busted tasks and tags; its
-- options. Every command runs under `timeout` (a hang fails the test);
-- nothing waits by sleeping. (Faults, --split and the times cache:
-- loom_busted_faults_spec.)
local lb = require "spec.support.loom_busted"
local LIMIT, ROOT, FIXTURES = lb.LIMIT, lb.ROOT, lb.FIXTURES
local q, read_file, sh, busted, loom_busted = lb.q, lb.read_file, lb.sh, lb.busted, lb.loom_busted
local normal, counts, same_run, tmpdir, rmdir = lb.normal, lb.counts, lb.same_run, lb.tmpdir, lb.rmdir

describe("loom-busted", function()
  if lb.sanitized then
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
end)
