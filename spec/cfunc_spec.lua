-- C functions that are fields of modules cross by name (issue 14, item 2):
-- the receiver takes package.loaded[module][field], requiring the module
-- when it is not loaded. A C function that no module has is refused where
-- it is found (submit, encode), naming its place. A host's C modules in
-- package.preload are offered to the workers.
--
-- lfs (Debian's lua-filesystem, which `make test` installs) is a real C
-- module; spec/support/hostmod.c, compiled here, stands in for a host.

local loom = require "loom"
local helpers = require "spec.support.helpers"

local lfs = require "lfs"

local NOT_A_FIELD = "cannot transfer a C function that is not a field of a module in package.loaded"

local shell_quote, run = helpers.shell_quote, helpers.run

-- Compiles spec/support/hostmod.c once into a temporary directory, adds it
-- to package.cpath, and requires it (what a host does at its start).
local host_dir
local function require_host()
  if not host_dir then
    local out, status = run("mktemp -d")
    assert.are.equal(0, status, out)
    host_dir = out:match("^(%S+)\n$")
    local cflags = run("pkg-config --cflags lua5.4")
    out, status = run(string.format("%s -std=c99 -Wall -shared -fPIC %s -o %s/loomtest_host.so spec/support/hostmod.c",
      os.getenv("CC") or "cc", cflags:gsub("\n", ""), host_dir))
    assert.are.equal(0, status, out)
    package.cpath = host_dir .. "/?.so;" .. package.cpath
  end
  return require "loomtest_host"
end

teardown(function()
  if host_dir then run("rm -rf " .. shell_quote(host_dir)) end
end)

-- The same table, field by field (lfs.attributes returns a fresh table).
local function assert_same_fields(expected, got)
  assert.is_table(got)
  for k, v in pairs(expected) do assert.are.equal(v, got[k], k) end
  for k in pairs(got) do assert.is_not_nil(expected[k], k) end
end

describe("a C function of a module in package.loaded", function()
  it("is a task's function: ex:submit(lfs.attributes, '.') returns what the main state gets", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    assert_same_fields(lfs.attributes("."), ex:submit(lfs.attributes, "."):result(helpers.PATIENCE))
    assert.are.equal(lfs.currentdir(), ex:submit(lfs.currentdir):result(helpers.PATIENCE))
  end)

  it("is loom.cpu_count as a task's function", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    assert.are.equal(loom.cpu_count(), ex:submit(loom.cpu_count):result(helpers.PATIENCE))
  end)

  it("crosses as an argument, an upvalue, inside tables, and as a result", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local attributes = lfs.attributes
    local mode = ex:submit(function(f, t)
      return f(".", "mode"), t.deep.cd(), attributes(".", "mode")
    end, lfs.attributes, { deep = { cd = lfs.currentdir } })
    assert.are.same({ "directory", lfs.currentdir(), "directory" },
      { mode:result(helpers.PATIENCE) })
    local back = ex:submit(function() return require("lfs").attributes, { f = require("lfs").dir } end)
    local f, t = back:result(helpers.PATIENCE)
    assert.are.equal(lfs.attributes, f)
    assert.are.equal(lfs.dir, t.f)
  end)

  it("arrives as the field of the receiver's own module", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    assert.is_true(ex:submit(function(f) return f == require("loom").cpu_count end,
      loom.cpu_count):result(helpers.PATIENCE))
  end)

  it("carries a whole module table as an upvalue", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local fs = lfs
    assert.are.equal("directory", ex:submit(function() return fs.attributes(".", "mode") end)
      :result(helpers.PATIENCE))
  end)

  it("is the function of ex:map", function()
    local s = helpers.scope(finally)
    local ex = s:executor(2)
    local got = {}
    for i, m in ex:map{ lfs.attributes, { ".", "/" }, { "mode", "mode" }, chunksize = 2 } do got[i] = m end
    assert.are.same({ "directory", "directory" }, got)
  end)

  it("is encoded by name and decoded as the same function", function()
    assert.are.equal(lfs.attributes, loom.decode(loom.encode(lfs.attributes)))
    assert.are.equal(string.rep, loom.decode(loom.encode { string.rep })[1])
  end)

  it("is not required by loom.decode unless functions are allowed", function()
    local bytes = loom.encode(lfs.attributes)
    local saved = package.loaded.lfs
    finally(function() package.loaded.lfs = saved end)
    package.loaded.lfs = nil
    local err = helpers.loom_error("transfer", loom.decode, bytes)
    assert.are.equal("C function 'lfs.attributes': module 'lfs' is not loaded"
      .. " (decode with {functions = true} to require it)", err.message)
    local f = loom.decode(bytes, { functions = true })
    assert.is_function(f)
    assert.are.equal("directory", f(".", "mode"))
  end)

  it("that the receiver cannot find fails with a transfer error naming it", function()
    local bytes = loom.encode(lfs.attributes)
    local saved = package.loaded.lfs
    finally(function() package.loaded.lfs = saved end)
    package.loaded.lfs = { }
    local err = helpers.loom_error("transfer", loom.decode, bytes)
    assert.are.equal("C function 'lfs.attributes': module 'lfs' has no function 'attributes'", err.message)
  end)
end)

describe("a C function that is not a field of a module", function()
  local CASES = {
    { "the task's function", function(ex, f) return ex:submit(f) end, "argument #1: " },
    { "an argument", function(ex, f) return ex:submit(type, 1, f) end, "argument #3: " },
    { "a field of an argument", function(ex, f) return ex:submit(type, { cb = f }) end,
      "argument #2: field 'cb': " },
    { "an upvalue", function(ex, f) return ex:submit(function() return f end) end,
      "argument #1: upvalue 'f': " },
    { "an element of map", function(ex, f)
        for _ in ex:map(type, { 1, f }) do end
      end, "element 2 of sequence #1: " },
  }

  local FUNCTIONS = {
    { "a C closure (coroutine.wrap)", function() return coroutine.wrap(print) end },
    { "an iterator (string.gmatch)", function() return string.gmatch("a", "a") end },
    { "a global C function a host registered", function()
        require_host()
        return loomtest_global   -- luacheck: ignore (set by the host module)
      end },
  }

  for _, fn in ipairs(FUNCTIONS) do
    for _, case in ipairs(CASES) do
      it("is refused at submit as " .. case[1] .. ": " .. fn[1], function()
        local s = helpers.scope(finally)
        local ex = s:executor(1)
        local f = fn[2]()
        assert.is_function(f)
        local err = helpers.loom_error("transfer", case[2], ex, f)
        assert.are.equal(case[3] .. NOT_A_FIELD, err.message)
      end)
    end

    it("is refused by loom.encode: " .. fn[1], function()
      local err = helpers.loom_error("transfer", loom.encode, { list = { fn[2]() } })
      assert.are.equal("field 'list': index 1: " .. NOT_A_FIELD, err.message)
    end)
  end

  it("is refused as a result, failing the future with a transfer error", function()
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local err = helpers.loom_error("transfer", function()
      ex:submit(function() return 1, coroutine.wrap(print) end):result(helpers.PATIENCE)
    end)
    assert.are.equal("result #2: " .. NOT_A_FIELD, err.message)
  end)
end)

describe("a host's C modules", function()
  it("in package.preload are offered to the workers, for tasks and init", function()
    require_host()
    local linked = require "loomtest_linked"
    local s = helpers.scope(finally)
    local ex = s:executor { workers = 2, init = function() LINKED = require("loomtest_linked").tag() end } -- luacheck: ignore
    assert.are.equal(15, ex:submit(linked.triple, 5):result(helpers.PATIENCE))
    assert.are.same({ "linked", "linked" }, { ex:submit(function(f) return f(), LINKED end, linked.tag) -- luacheck: ignore
      :result(helpers.PATIENCE) })
  end)

  it("that a worker cannot require fail the task with a transfer error naming the module", function()
    require_host()
    local unlisted = package.loaded.loomtest_unlisted
    assert.are.equal("unlisted", unlisted.fn())
    local s = helpers.scope(finally)
    local ex = s:executor(1)
    local err = helpers.loom_error("transfer", function()
      ex:submit(unlisted.fn):result(helpers.PATIENCE)
    end)
    helpers.assert_contains(err.message,
      "C function 'loomtest_unlisted.fn': cannot load module 'loomtest_unlisted': module 'loomtest_unlisted' not found")
    assert.is_nil(err.message:find("malformed", 1, true))
  end)
end)
