-- The build and the packaging: the Lua version guard in src/loom.h, the
-- rockspecs (luarocks lint, and the release version agrees with the
-- Makefile's), and the built core. Every child process (the C compiler,
-- luarocks, readelf) runs under `timeout`, so a hang fails the test.

local helpers = require "spec.support.helpers"

-- Seconds a child process may run.
local LIMIT = 120

local function shell_quote(s)
  return "'" .. string.gsub(s, "'", "'\\''") .. "'"
end

-- Runs the shell command `command` under `timeout LIMIT`, with stderr in
-- stdout. Returns the output and the exit status (124: it hung).
local function run(command)
  local p = assert(io.popen(string.format("timeout %d sh -c %s 2>&1 </dev/null",
    LIMIT, shell_quote(command))))
  local output = p:read("a")
  local _, how, status = p:close()
  return output, how == "exit" and status or 128 + status
end

local function file_exists(name)
  local f = io.open(name, "rb")
  if f then f:close() end
  return f ~= nil
end

local function read_file(name)
  local f = assert(io.open(name, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function have(program)
  return select(2, run("command -v " .. program)) == 0
end

-- The file names that the shell pattern `pattern` matches, sorted.
local function glob(pattern)
  local output, status = run("ls -1d " .. pattern)
  assert.are.equal(0, status, output)
  return helpers.lines(output)
end

-- A fresh temporary directory; `finally` removes it.
local function temporary_directory()
  local output, status = run("mktemp -d")
  assert.are.equal(0, status, output)
  local dir = output:match("^(%S+)\n$")
  finally(function() run("rm -rf " .. shell_quote(dir)) end)
  return dir
end

local CC = os.getenv("CC") or "cc"

-- Compiles (syntax only) the C file `source` with the given include
-- directories first; returns the compiler's output lines and its status.
local function compile(source, incdirs)
  local flags = {}
  for i, dir in ipairs(incdirs) do flags[i] = "-I" .. shell_quote(dir) end
  local output, status = run(string.format(
    "%s -std=c99 -Wall -Wextra -pedantic -D_POSIX_C_SOURCE=200809L %s -fsyntax-only %s",
    CC, table.concat(flags, " "), shell_quote(source)))
  return helpers.lines(output), status, output
end

-- The compiler's diagnostic lines ("file:line:col: error: ..."), each with
-- its position in `lines`, and the ones that report loom's version guard.
local function diagnostics(lines)
  local all, guard = {}, {}
  for i, line in ipairs(lines) do
    local kind = line:match("^[^%s:]+:%d+:%d+: (%a[%a ]*):")
    if kind then
      all[#all + 1] = { index = i, kind = kind, line = line }
      if kind == "error" and line:find("loom needs Lua 5.4 headers", 1, true) then
        guard[#guard + 1] = all[#all]
      end
    end
  end
  return all, guard
end

-- Asserts that the output `lines` hold exactly one guard error, that it
-- names `found`, and that no diagnostic comes before it.
local function assert_one_guard_error(lines, status, output, found)
  assert.are_not.equal(0, status, "the compile succeeded:\n" .. output)
  assert.are_not.equal(124, status, "the compiler hung")
  local all, guard = diagnostics(lines)
  assert.are.equal(1, #guard, "expected one version error:\n" .. output)
  local line = guard[1].line
  assert.truthy(line:find("lua.h says " .. found, 1, true), line)
  assert.are.equal(guard[1], all[1], "a diagnostic comes before the version error:\n" .. output)
  for i = 1, guard[1].index - 1 do
    assert.is_nil(lines[i]:find("implicit", 1, true), "before the version error:\n" .. output)
  end
end

describe("the Lua version guard", function()
  local LUA53 = os.getenv("LUA53_INCDIR") or "/usr/include/lua5.3"

  it("stops each C file built against the Lua 5.3 headers with one #error naming 5.3 and 5.4", function()
    if not file_exists(LUA53 .. "/lua.h") then
      pending("no Lua 5.3 headers in " .. LUA53 .. " (apt-get install liblua5.3-dev)")
      return
    end
    if not have(CC) then pending("no C compiler (" .. CC .. ")") return end
    local sources = glob("src/*.c")
    assert.is_true(#sources > 0)
    for _, source in ipairs(sources) do
      local lines, status, output = compile(source, { LUA53 })
      assert_one_guard_error(lines, status, source .. ":\n" .. output, "5.3")
      assert.truthy(output:find("Lua 5.4", 1, true), output)
    end
  end)

  it("stops the whole build against the Lua 5.3 headers with one #error line", function()
    if not file_exists(LUA53 .. "/lua.h") then
      pending("no Lua 5.3 headers in " .. LUA53 .. " (apt-get install liblua5.3-dev)")
      return
    end
    if not have("make") then pending("no make") return end
    local dir = os.tmpname()
    os.remove(dir)
    local output, status = run(string.format(
      "make -s OBJDIR=%s SO=%s LUA_INCDIR=%s %s",
      shell_quote(dir .. "/obj"), shell_quote(dir .. "/core.so"), shell_quote(LUA53),
      shell_quote(dir .. "/core.so")))
    run("rm -rf " .. shell_quote(dir))
    assert.are_not.equal(0, status, "the build succeeded:\n" .. output)
    local errors, warnings = 0, 0
    for _, line in ipairs(helpers.lines(output)) do
      if line:find(": error:", 1, true) then errors = errors + 1 end
      if line:find("warning:", 1, true) then warnings = warnings + 1 end
    end
    assert.are.equal(1, errors, output)
    assert.are.equal(0, warnings, output)
    assert.truthy(output:find("lua.h says 5.3", 1, true), output)
  end)

  it("names the version found for every other LUA_VERSION_NUM", function()
    if not have(CC) then pending("no C compiler (" .. CC .. ")") return end
    local dir = temporary_directory()
    local main = dir .. "/main.c"
    local f = assert(io.open(main, "w"))
    f:write('#include "loom.h"\n')
    f:close()
    assert(io.open(dir .. "/lauxlib.h", "w")):close()
    local cases = { [501] = "5.1", [502] = "5.2", [503] = "5.3", [505] = "5.5",
                    [600] = "another version" }
    for num, found in pairs(cases) do
      f = assert(io.open(dir .. "/lua.h", "w"))
      f:write(("#define LUA_VERSION_NUM %d\n"):format(num))
      f:close()
      local lines, status, output = compile(main, { dir, "src" })
      assert_one_guard_error(lines, status, num .. ":\n" .. output, found)
    end
    -- 5.4 passes the guard (the stub lua.h then fails the rest of the header)
    f = assert(io.open(dir .. "/lua.h", "w"))
    f:write("#define LUA_VERSION_NUM 504\n")
    f:close()
    local lines, _, output = compile(main, { dir, "src" })
    local _, guard = diagnostics(lines)
    assert.are.equal(0, #guard, output)
  end)
end)

describe("the rockspecs", function()
  -- Loads a rockspec as LuaRocks does: a chunk that sets globals.
  local function load_rockspec(name)
    local fields = {}
    assert(load(read_file(name), "@" .. name, "t", fields))()
    return fields
  end

  local function makefile_version()
    local version = read_file("Makefile"):match("\nVERSION%s*=%s*(%S+)")
    assert.is_string(version, "no VERSION in the Makefile")
    return version
  end

  it("pass luarocks lint, every one of them", function()
    if not have("luarocks") then pending("luarocks is not installed") return end
    local rockspecs = glob("rockspec/*.rockspec")
    assert.is_true(#rockspecs >= 2, table.concat(rockspecs, " "))
    for _, name in ipairs(rockspecs) do
      local output, status = run("luarocks --lua-version=5.4 lint " .. shell_quote(name))
      assert.are.equal(0, status, name .. ":\n" .. output)
    end
  end)

  it("include a release whose version and source archive are the Makefile's VERSION", function()
    local version = makefile_version()
    local name = "rockspec/loom-" .. version .. "-1.rockspec"
    assert.is_true(file_exists(name), name .. " is missing")
    local rs = load_rockspec(name)
    assert.are.equal("loom", rs.package)
    assert.are.equal(version .. "-1", rs.version)
    assert.are.equal("file://loom-" .. version .. ".tar.gz", rs.source.url)
    assert.are.equal("loom-" .. version, rs.source.dir)
  end)

  it("build through the Makefile, the scm one as the release", function()
    local release = load_rockspec("rockspec/loom-" .. makefile_version() .. "-1.rockspec")
    local scm = load_rockspec("rockspec/loom-scm-1.rockspec")
    assert.are.equal("scm-1", scm.version)
    assert.are.same({ url = "file://loom-scm.tar.gz", dir = "loom-scm" }, scm.source)
    assert.are.equal("make", release.build.type)
    assert.are.same({ "lua >= 5.4, < 5.5" }, release.dependencies)
    assert.are.same({ "busted" }, release.test_dependencies)
    -- make and make install get the same compiler settings
    for _, key in ipairs { "CFLAGS", "LIBFLAG", "LUA_INCDIR", "LUA" } do
      assert.are.equal("$(" .. key .. ")", release.build.build_variables[key])
      assert.are.equal("$(" .. key .. ")", release.build.install_variables[key])
    end
    for _, key in ipairs { "description", "dependencies", "build", "test_dependencies", "test" } do
      assert.are.same(release[key], scm[key], key)
    end
  end)
end)

describe("the built core", function()
  it("does not link liblua (the interpreter provides the API)", function()
    if not have("readelf") then pending("readelf is not installed") return end
    local core = assert(package.searchpath("loom.core", package.cpath))
    local output, status = run("readelf -d " .. shell_quote(core))
    assert.are.equal(0, status, output)
    assert.truthy(output:find("(NEEDED)", 1, true), output)
    assert.is_nil(output:lower():find("liblua", 1, true), output)
  end)
end)
