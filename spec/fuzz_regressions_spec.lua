-- Replays, through the public decoder, what the libFuzzer harness
-- (spec/fuzz/fuzz_decode.c, issue 5) feeds it:
--
--  * every input in spec/fuzz/regressions/: each one once crashed or hung
--    the harness (spec/fuzz/run.sh saves them there);
--  * the seed messages of spec/fuzz/make_corpus.lua and the committed seeds
--    in spec/fuzz/seeds/, whole and truncated;
--  * hand-made malformed messages, one per check of the decoder.
--
-- loom.decode must return a value or raise an error table with kind
-- "transfer"; a crash takes the whole busted run down with it.  A value it
-- returns must copy again like the harness copies it: loom.encode, then
-- loom.decode, and core._roundtrip through a new state, giving the same
-- shape (tables, entries, metatables).
--
-- Metamethods of decoded tables are never triggered here (only raw
-- access), and their metatables are removed once checked, so that a
-- finalizer named in a hostile message (__gc = some library function)
-- never runs in this process.  The collector is stopped while a value is
-- checked, so weak tables keep their entries between the copies.

local loom = require "loom"
local core = require "loom.core"
local corpus = require "spec.fuzz.make_corpus"

local T = corpus.TAGS
local message, varint, tbl = corpus.message, corpus.varint, corpus.table_header
local cname = corpus.cname

local REGRESSIONS = "spec/fuzz/regressions"
local SEEDS = "spec/fuzz/seeds"

----------------------------------------------------------------------------
-- Files

-- The regular files of `dir` (not dot files or *.md), sorted; {} when the
-- directory does not exist.
local function list_files(dir)
  local names = {}
  local ok, lfs = pcall(require, "lfs")
  if ok then
    if lfs.attributes(dir, "mode") == "directory" then
      for name in lfs.dir(dir) do
        if lfs.attributes(dir .. "/" .. name, "mode") == "file" then
          names[#names + 1] = name
        end
      end
    end
  else
    local p = assert(io.popen("ls -1 '" .. dir .. "' 2>/dev/null"))
    for name in p:lines() do names[#names + 1] = name end
    p:close()
  end
  local files = {}
  for _, name in ipairs(names) do
    if name:sub(1, 1) ~= "." and not name:match("%.md$") then files[#files + 1] = name end
  end
  table.sort(files)
  return files
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local bytes = f:read("a")
  f:close()
  return bytes
end

----------------------------------------------------------------------------
-- Checking one input

local function hex(s, limit)
  limit = limit or 64
  local shown = s:sub(1, limit):gsub(".", function(c) return string.format("%02x", c:byte()) end)
  if #s > limit then shown = shown .. string.format("... (%d bytes)", #s) end
  return shown
end

local function is_transfer_error(err)
  return type(err) == "table" and rawget(err, "kind") == "transfer"
    and type(rawget(err, "message")) == "string"
end

local function describe_error(err)
  if type(err) == "table" then
    return string.format("table error {kind = %s, message = %s}",
      tostring(rawget(err, "kind")), tostring(rawget(err, "message")))
  end
  return type(err) .. " error " .. tostring(err)
end

-- Calls fn for every table reachable from v (raw access only), except the
-- globals and loom.Error, which a message names rather than copies.
local function each_table(v, fn)
  local seen, todo = {}, {}
  local function visit(x)
    if type(x) == "table" and not rawequal(x, _G) and not rawequal(x, loom.Error)
       and not seen[x] then
      seen[x] = true
      todo[#todo + 1] = x
    end
  end
  visit(v)
  while #todo > 0 do
    local t = table.remove(todo)
    for k, x in next, t do
      visit(k)
      visit(x)
    end
    visit(debug.getmetatable(t))
    fn(t)
  end
end

-- What a copy must keep, whatever the order of its entries.
local function shape(v)
  local tables, entries, metatables = 0, 0, 0
  each_table(v, function(t)
    tables = tables + 1
    for _ in next, t do entries = entries + 1 end
    if debug.getmetatable(t) ~= nil then metatables = metatables + 1 end
  end)
  return string.format("%s with %d tables, %d entries, %d metatables",
    type(v), tables, entries, metatables)
end

-- Removes every metatable reachable from v (after the walk, so that the
-- metatables' own contents are disarmed too).
local function disarm(v)
  local all = {}
  each_table(v, function(t) all[#all + 1] = t end)
  for _, t in ipairs(all) do debug.setmetatable(t, nil) end
end

-- Decodes `bytes` as loom.decode(bytes) and copies what it gives.
-- Returns "decoded" or "refused", and a description of the problem if
-- something went wrong.
local function replay(bytes)
  local running = collectgarbage("isrunning")
  collectgarbage("stop")
  local ok, v = pcall(loom.decode, bytes)
  local outcome, problem = ok and "decoded" or "refused", nil
  if not ok then
    if not is_transfer_error(v) then problem = "decode raised " .. describe_error(v) end
  else
    local want = shape(v)
    local encoded, encoding = pcall(loom.encode, v)
    if not encoded then
      problem = "the decoded value does not encode again: " .. describe_error(encoding)
    else
      local ok2, copy = pcall(loom.decode, encoding)
      local ok3, other = pcall(core._roundtrip, v)
      if not ok2 then
        problem = "its encoding does not decode: " .. describe_error(copy)
      elseif not ok3 then
        problem = "core._roundtrip fails: " .. describe_error(other)
      elseif shape(copy) ~= want then
        problem = string.format("loom.decode(loom.encode(v)) gives a %s, not a %s", shape(copy), want)
      elseif shape(other) ~= want then
        problem = string.format("core._roundtrip(v) gives a %s, not a %s", shape(other), want)
      end
      if ok2 then disarm(copy) end
      if ok3 then disarm(other) end
    end
    disarm(v)
  end
  if running then collectgarbage("restart") end
  return outcome, problem
end

local function assert_replays(bytes, expected)
  local outcome, problem = replay(bytes)
  assert.is_nil(problem, problem and (problem .. " (input " .. hex(bytes) .. ")"))
  if expected then
    assert.are.equal(expected, outcome, "input " .. hex(bytes))
  end
end

----------------------------------------------------------------------------
-- Hand-made malformed messages: { label, bytes }; each must be refused.

local function u32(n) return string.pack("<I4", n) end
local LOOM_V = loom.encode(nil):sub(1, 5)   -- magic and current version
local NAN = string.pack("<d", 0 / 0)

local MALFORMED = {
  { "the empty string", "" },
  { "the magic alone", "LOOM" },
  { "a header without a value count", message(0, 1, ""):sub(1, 9) },
  { "version 0", "LOOM\0" .. u32(0) .. "\1\0" },
  { "version 255", "LOOM\255" .. u32(0) .. "\1\0" },
  { "2^32 - 1 objects", message(0xffffffff, 1, "\0") },
  { "2^62 values", message(0, 1 << 62, "\0") },
  { "a value count of 11 varint bytes", LOOM_V .. u32(0) .. ("\x80"):rep(10) .. "\1\0" },
  { "a varint overflowing 64 bits", LOOM_V .. u32(0) .. ("\xff"):rep(9) .. "\2\0" },
  { "no values", message(0, 0, "") },
  { "two values", message(0, 2, string.char(T.NIL, T.TRUE)) },
  { "trailing bytes", loom.encode(1) .. "x" },
  { "a truncated integer", message(0, 1, string.char(T.INT, 1, 2, 3)) },
  { "a truncated float", message(0, 1, string.char(T.FLT) .. NAN:sub(1, 7)) },
  { "a truncated small integer", message(0, 1, string.char(T.INT8)) },
  { "a string longer than the message", message(0, 1, string.char(T.STR) .. varint(100) .. "abc") },
  { "a string of 2^63 bytes", message(0, 1, string.char(T.STR) .. varint(1 << 63) .. "abc") },
  { "an array of 2^32 - 1 elements", message(1, 1, tbl(0xffffffff, 0) .. "\0\0") },
  { "an array longer than its bytes", message(1, 1, tbl(3, 0) .. string.char(T.INT8, 1, T.INT8, 2)) },
  { "an array of numbers cut short", message(1, 1, tbl(3, 0) .. string.char(T.INT8, 1, T.FLT, 0, 0, 0, 0)) },
  { "a hash of 2^32 - 1 entries", message(1, 1, tbl(0, 0xffffffff) .. "\0\0") },
  { "a hash larger than its bytes", message(1, 1, tbl(0, 3) .. "\0\0\0\0") },
  { "more tables than counted", message(1, 1, tbl(1, 0) .. tbl(0, 0) .. "\0\0") },
  { "a nil key", message(1, 1, tbl(0, 1) .. string.char(T.NIL, T.TRUE, 0)) },
  { "a NaN key", message(1, 1, tbl(0, 1) .. string.char(T.FLT) .. NAN .. string.char(T.TRUE, 0)) },
  { "a metatable that is a number", message(1, 1, tbl(0, 0) .. "\1" .. string.char(T.INT8, 1)) },
  { "a metatable that is a C function", message(1, 1, tbl(0, 0) .. "\1"
      .. string.char(T.CFUNC) .. cname("string") .. cname("rep")) },
  { "a metatable flag of 2", message(1, 1, tbl(0, 0) .. "\2") },
  { "a reference at the top", message(1, 1, string.char(T.REF, 0)) },
  { "a reference past the objects", message(1, 1, tbl(1, 0) .. string.char(T.REF, 1, 0)) },
  { "a reference of 2^64 - 1", message(1, 1, tbl(1, 0) .. string.char(T.REF) .. ("\xff"):rep(9) .. "\1\0") },
  { "a join at the top", message(0, 1, string.char(T.JOIN, 0, 1)) },
  { "a join in a table", message(1, 1, tbl(1, 0) .. string.char(T.JOIN, 0, 1, 0)) },
  { "a channel without a message", message(0, 1, string.char(T.CHAN, 0)) },
  { "shared bytecode without a message", message(0, 1, string.char(T.PROTO, 0)) },
  { "a function", loom.encode(function() return 1 end) },
  { "bytecode of 2^60 bytes", message(1, 1, string.char(T.FUNC) .. varint(1 << 60) .. "\0") },
  { "a C function of a module not loaded", message(0, 1, string.char(T.CFUNC) .. cname("nowhere") .. cname("f")) },
  { "a C function a module does not have", message(0, 1, string.char(T.CFUNC) .. cname("string") .. cname("nowhere")) },
  { "a C function that is a library", message(0, 1, string.char(T.CFUNC) .. cname("_G") .. cname("string")) },
  { "a C function that is a string",
    message(0, 1, string.char(T.CFUNC) .. cname("_G") .. cname("_VERSION")) },
  { "a C function name of 256 bytes", message(0, 1, string.char(T.CFUNC) .. cname(("s"):rep(256)) .. cname("f")) },
  { "an empty C function name", message(0, 1, string.char(T.CFUNC) .. cname("") .. cname("rep")) },
  { "a C function name past the end", message(0, 1, string.char(T.CFUNC, 20) .. "string") },
  { "a C function without its field", message(0, 1, string.char(T.CFUNC) .. cname("string")) },
  { "tag 16", message(0, 1, "\16") },
  { "tag 255", message(0, 1, "\255") },
}

-- Nested tables t = {t}, `depth` levels, as one message.
local function nested(depth)
  return message(depth + 1, 1, tbl(1, 0):rep(depth) .. tbl(0, 0) .. ("\0"):rep(depth + 1))
end

----------------------------------------------------------------------------

describe("fuzz regressions", function()
  it("make their messages by hand in the format loom.encode writes", function()
    local empty = loom.encode {}
    assert.are.equal(message(1, 1, tbl(0, 0) .. "\0"), empty,
      "TABLE is no longer narr:u32 nhash:u32: update spec/fuzz/make_corpus.lua")
    assert.are.equal(message(1, 1, tbl(1, 1) .. string.char(T.TRUE, T.STR, 1) .. "k"
      .. string.char(T.FALSE, 0)), loom.encode { true, k = false })
    assert.are.equal(message(0, 1, string.char(T.CFUNC) .. cname("string") .. cname("rep")),
      loom.encode(string.rep), "CFUNC is no longer len module len field: update spec/fuzz/make_corpus.lua")
  end)

  describe("inputs the fuzzer found (" .. REGRESSIONS .. ")", function()
    it("are in a directory that exists", function()
      local ok, lfs = pcall(require, "lfs")
      if ok then assert.are.equal("directory", lfs.attributes(REGRESSIONS, "mode")) end
      assert.is_truthy(io.open(REGRESSIONS .. "/README.md", "rb"), "missing " .. REGRESSIONS .. "/README.md")
    end)

    for _, name in ipairs(list_files(REGRESSIONS)) do
      it(name .. " decodes or is refused, and copies again", function()
        assert_replays(read(REGRESSIONS .. "/" .. name))
        collectgarbage()
      end)
    end
  end)

  describe("seed messages", function()
    local seeds = corpus.messages()

    it("decode when they hold no function, and copy again", function()
      assert.is_true(#seeds > 50)
      for _, seed in ipairs(seeds) do
        local outcome, problem = replay(seed.bytes)
        assert.is_nil(problem, seed.name .. ": " .. tostring(problem))
        assert.are.equal(seed.decodes and "decoded" or "refused", outcome, seed.name)
      end
      collectgarbage()
    end)

    it("are refused when truncated #exhaustive", function()
      for _, seed in ipairs(seeds) do
        local bytes = seed.bytes
        local step = #bytes < 600 and 1 or 13
        for n = 0, #bytes - 1, step do
          local outcome, problem = replay(bytes:sub(1, n))
          assert.is_nil(problem, seed.name .. " cut to " .. n .. " bytes: " .. tostring(problem))
          assert.are.equal("refused", outcome, seed.name .. " cut to " .. n .. " bytes")
        end
      end
      collectgarbage()
    end)

    it("committed in " .. SEEDS .. " decode or are refused", function()
      for _, name in ipairs(list_files(SEEDS)) do
        assert_replays(read(SEEDS .. "/" .. name))
      end
      collectgarbage()
    end)
  end)

  describe("malformed messages", function()
    for _, row in ipairs(MALFORMED) do
      it("refuses " .. row[1], function()
        assert_replays(row[2], "refused")
      end)
    end

    it("decodes 1000 nested tables", function()
      assert_replays(nested(1000), "decoded")
    end)

    it("refuses 300,000 nested tables #exhaustive", function()
      assert_replays(nested(300000), "refused")
      collectgarbage()
    end)
  end)
end)
