-- The examples in examples/ run and print what they should. Each runs in a
-- child interpreter (under `timeout`, like the exit specs), with small
-- arguments where it takes any. No timing is checked, only the output.

local helpers = require "spec.support.helpers"
local reliability = require "spec.support.reliability"

local root = helpers.current_directory()

-- Runs examples/<name>.lua with the given arguments, as lua5.4 would.
local function run_example(name, ...)
  local path = root .. "/examples/" .. name .. ".lua"
  local args = { ... }
  -- arg[-1] is what primes.lua starts its reference processes with; they
  -- do not load loom, so the stock interpreter does, under any build
  local parts = { ("[0] = %q, [-1] = %q"):format(path, "lua5.4") }
  for i, a in ipairs(args) do parts[#parts + 1] = ("[%d] = %q"):format(i, a) end
  local r = reliability.run(("arg = { %s }\ndofile(%q)\n"):format(
    table.concat(parts, ", "), path))
  reliability.assert_clean_exit(r)
  return r.stdout
end

local function lines(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do out[#out + 1] = line end
  return out
end

describe("examples", function()
  it("primes.lua counts the same primes serially, on loom and in processes", function()
    local out = lines(run_example("primes", "20000", "2"))
    assert.are.equal("primes below 20000: 2262", out[1])
    assert.truthy(out[2]:match("^serial: +%d+%.%d+ s"), out[2])
    assert.truthy(out[3]:match("^loom x2: %d+%.%d+ s"), out[3])
    assert.truthy(out[4]:match("^speedup: +%d+%.%d+x$"), out[4])
    assert.truthy(out[5]:match("^for reference, 2 plain lua5.4 processes"), out[5])
  end)

  it("seed_submit.lua prints 323 ^ 1235 modulo 1000000007, and a repeated string", function()
    local expected = 1
    for _ = 1, 1235 do expected = expected * 323 % 1000000007 end
    local out = lines(run_example("seed_submit"))
    assert.are.same({ tostring(expected), "ababab" }, out)
  end)

  it("seed_map.lua tells the primes from the composite", function()
    local out = lines(run_example("seed_map"))
    assert.are.equal(6, #out)
    assert.are.equal("1099726899285419 is prime: false", out[6])
    for i = 1, 5 do assert.truthy(out[i]:match(" is prime: true$"), out[i]) end
  end)

  it("seed_as_completed.lua reports every URL once, one of them failed", function()
    local out = lines(run_example("seed_as_completed"))
    assert.are.equal(5, #out)
    local failed = 0
    for _, line in ipairs(out) do
      if line:match("generated an exception") then failed = failed + 1
      else assert.truthy(line:match('^".*" page is %d+ bytes$'), line) end
    end
    assert.are.equal(1, failed)
  end)

  it("cqueues_await.lua awaits four counts in a controller and an error through await", function()
    if not pcall(require, "cqueues") then
      pending("cqueues is not installed (apt-get install lua-cqueues; make test installs it)")
      return
    end
    local out = lines(run_example("cqueues_await", "20000"))
    assert.are.equal(6, #out, table.concat(out, "\n"))
    local ranges, total = 0, 0
    for _, line in ipairs(out) do
      local n = line:match("^primes in %[%d+, %d+%): (%d+)$")
      if n then ranges, total = ranges + 1, total + tonumber(n) end
    end
    assert.are.equal(4, ranges)
    assert.are.equal(2262, total)
    assert.truthy(out[6]:match("^primes below 20000: 2262 %(the loop ticked %d+ times meanwhile%)$"), out[6])
    local errors = 0
    for _, line in ipairs(out) do
      if line == "an error through await:\tfalse\tno such thing" then errors = errors + 1 end
    end
    assert.are.equal(1, errors)
  end)

  it("process_pool.lua maps on processes, and a crash fails only its task", function()
    local out = lines(run_example("process_pool"))
    assert.are.equal(8, #out)
    assert.are.equal("1099726899285419 is prime: false", out[6])
    for i = 1, 5 do assert.truthy(out[i]:match(" is prime: true$"), out[i]) end
    assert.truthy(out[7]:match("^the crashing task failed: crashed %(worker process %d+ "
                               .. "was killed by signal 9 %(SIGKILL%)%)$"), out[7])
    assert.are.equal("the other tasks finished: 6 of 6", out[8])
  end)

  it("encode_decode.lua round-trips and refuses as it says", function()
    local out = run_example("encode_decode")
    assert.truthy(out:find("refused a function", 1, true))
    assert.truthy(out:find("malformed message", 1, true))
  end)
end)
