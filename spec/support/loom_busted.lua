-- Helpers of the loom-busted specs (loom_busted_spec, loom_busted_faults_spec):
-- run plain busted and loom-busted on the fixture suites of
-- spec/fixtures/loom_busted, each under `timeout`, and compare what they say.

local helpers = require "spec.support.helpers"
local reliability = require "spec.support.reliability"
local lfs = require "lfs"
local assert = require "luassert"

local M = {}
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


M.LIMIT, M.ROOT, M.FIXTURES, M.LOOM_ENV = LIMIT, ROOT, FIXTURES, LOOM_ENV
M.q, M.read_file, M.sh, M.busted, M.loom_busted = q, read_file, sh, busted, loom_busted
M.normal, M.counts, M.same_run, M.tmpdir, M.rmdir, M.exists = normal, counts, same_run, tmpdir, rmdir, exists
M.sanitized, M.lfs = sanitized, lfs
return M
