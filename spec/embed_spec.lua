-- Embedding: the core carries loom's Lua modules (package.preload), so a
-- host that links loom in, and every worker state, need no Lua files; and
-- the C host in examples/embed/ builds and runs (`make embed`).

local helpers = require "spec.support.helpers"
local reliability = require "spec.support.reliability"

local core = require "loom.core"

local function shell_quote(s)
  return "'" .. string.gsub(s, "'", "'\\''") .. "'"
end

-- Runs a shell command under `timeout`; returns its output and status.
local function run(command, limit)
  local p = assert(io.popen(string.format("timeout %d sh -c %s 2>&1 </dev/null",
    limit or 300, shell_quote(command))))
  local output = p:read("a")
  local _, how, status = p:close()
  return output, how == "exit" and status or 128 + status
end

local function read_file(name)
  local f = assert(io.open(name, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

describe("loom's Lua modules built into the core", function()
  it("are the files of this checkout, every one", function()
    local output, status = run("ls lua/loom/*.lua")
    assert.are.equal(0, status, output)
    local files = helpers.lines(output)
    assert.is_true(#files >= 3, output)
    for _, file in ipairs(files) do
      local name = file:match("^lua/(.*)%.lua$"):gsub("/init$", ""):gsub("/", ".")
      if name ~= "loom.busted" then
        assert.are.equal(read_file(file), core._builtin(name), name)
        assert.are.equal("function", type(package.preload[name]), name)
      end
    end
    assert.is_nil(core._builtin("loom.nonexistent"))
    -- loom-busted's logic needs busted, and the command and its workers
    -- find it on package.path: it stays out of the core
    assert.is_nil(core._builtin("loom.busted"))
  end)

  it("serve require 'loom' with no Lua files on the path, in the state and in tasks", function()
    local r = reliability.run([[
      package.path = "/nonexistent/?.lua"
      assert(not pcall(require, "loom"), "loom found before loom.core")
      require "loom.core"   -- as a host registers it
      local loom = require "loom"
      local ex <close> = loom.executor(2)
      local f = ex:submit(function()
        local inner = require "loom"
        return type(inner.executor), package.path, type(package.preload["loom.luv"])
      end)
      print(f:result())
      print(type(require("loom.luv").await), type(package.preload["loom.cqueues"]))
    ]])
    reliability.assert_clean_exit(r)
    assert.are.same({ "function\t/nonexistent/?.lua\tfunction", "function\tfunction" },
      helpers.lines(r.stdout))
  end)

  it("leave a package.preload entry that the host set first", function()
    local r = reliability.run([[
      package.preload["loom.luv"] = function() return "the host's own" end
      require "loom.core"
      print((require "loom.luv"))
    ]])
    reliability.assert_clean_exit(r)
    assert.are.same({ "the host's own" }, helpers.lines(r.stdout))
  end)
end)

describe("examples/embed, a C host with loom linked in", function()
  it("builds with make and runs: tasks require loom, two states on two threads, lua_close with tasks running",
  function()
    local have_make = select(2, run("command -v make")) == 0
    if not have_make then pending("no make") return end
    local output, status = run("make -s build/embed/host")
    assert.are.equal(0, status, output)
    output, status = run("build/embed/host", 120)
    assert.are.equal(0, status, output)
    local lines = helpers.lines(output)
    local at = {}
    for i, line in ipairs(lines) do at[line] = i end
    for _, id in ipairs { 0, 1, 2 } do
      assert.truthy(at[("state %d: 7 * 7 = 49; in a task, loom.executor is a function"):format(id)], output)
      assert.truthy(at[("state %d: map sum of squares 1..4 = 30"):format(id)], output)
      assert.truthy(at[("state %d: completion queue total = 55"):format(id)], output)
    end
    -- lua_close waited for the running task and woke the blocked one
    local closed = at["host: lua_close returned"]
    assert.truthy(closed, output)
    assert.are.equal(#lines, closed, output)
    assert.truthy(at["task: finished its loop before lua_close returned"], output)
    assert.truthy(at["task: channel pop returned closed"], output)
    assert.is_true(at["state 3: closing with two tasks running"] < at["task: channel pop returned closed"], output)
  end)
end)
