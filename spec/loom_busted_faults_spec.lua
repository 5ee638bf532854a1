-- loom-busted on the fixture suites of spec/fixtures/loom_busted: files
-- kept apart, --split, crashes, --timeout, Ctrl-C, the times of earlier
-- runs. Every command runs under `timeout` (a hang fails the test); nothing
-- waits by sleeping (the Ctrl-C test polls a folder, with a bound).
local lb = require "spec.support.loom_busted"
local LIMIT, ROOT, FIXTURES, LOOM_ENV = lb.LIMIT, lb.ROOT, lb.FIXTURES, lb.LOOM_ENV
local q, read_file, busted, loom_busted = lb.q, lb.read_file, lb.busted, lb.loom_busted
local same_run, tmpdir, rmdir, exists = lb.same_run, lb.tmpdir, lb.rmdir, lb.exists
local lfs = lb.lfs

describe("loom-busted", function()
  if lb.sanitized then
    pending("runs under make test (not under the sanitizer builds)")
    return
  end

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
      local out, code = loom_busted("hang", { "-p", "_check", "-o", "TAP", "--timeout=5" })
      assert.are.equal(1, code)
      assert.is_truthy(out:find("ok 1 - hang passes", 1, true), out)
      assert.is_truthy(out:find("not ok 2 - hang never ends", 1, true), out)
      assert.is_truthy(out:find("ran longer than --timeout 5 s", 1, true), out)
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
