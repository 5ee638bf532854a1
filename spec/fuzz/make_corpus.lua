--- Seed messages for the decoder fuzzer (spec/fuzz/fuzz_decode.c).
--
-- As a script, writes one file per message into a directory (made if
-- missing), and prints the number of messages and how many decode:
--   LUA_PATH_5_4='lua/?.lua;lua/?/init.lua;;' LUA_CPATH_5_4='./?.so;;' \
--     lua5.4 spec/fuzz/make_corpus.lua DIR
-- As a module (require "spec.fuzz.make_corpus"), returns M.messages()
-- (a list of {name =, bytes =, decodes =}), which
-- spec/fuzz_regressions_spec.lua also replays, and the helpers for
-- messages made by hand (M.TAGS, M.varint, M.table_header, M.message).
--
-- Most messages are loom.encode of a value: scalars, strings, nested
-- tables, cycles, shared subtables, metatables, standard C functions, the
-- globals and loom.Error.  A few hold Lua functions (refused unless
-- {functions = true}); a few are made by hand to reach parts of the
-- format loom.encode never writes (several values, channels, a JOIN out of
-- place).  Every message fits in the fuzzer's -max_len of 4096 bytes.

local loom = require "loom"

local M = {}

-- Tags of the format (LOOM_T_* in src/loom.h).
local T = {
  NIL = 0, FALSE = 1, TRUE = 2, INT = 3, INT8 = 4, FLT = 5, STR = 6,
  TABLE = 7, FUNC = 8, CFUNC = 9, REF = 10, ENV = 11, CHAN = 12, JOIN = 13,
  ERRMT = 14, PROTO = 15,
}
M.TAGS = T

local function varint(n)
  local bytes = {}
  repeat
    local b = n & 0x7f
    n = n >> 7
    if n ~= 0 then b = b | 0x80 end
    bytes[#bytes + 1] = string.char(b)
  until n == 0
  return table.concat(bytes)
end
M.varint = varint

-- A module or field name of a C function: its length, then its bytes.
function M.cname(s) return varint(#s) .. s end

--- The start of a table item in a hand-made message: its tag and counts.
--- (spec/fuzz_regressions_spec.lua checks this against loom.encode.)
function M.table_header(narr, nhash)
  return string.char(T.TABLE) .. string.pack("<I4I4", narr, nhash)
end

--- A message by hand: the header, then `nvalues` and the body as given.
function M.message(nobjs, nvalues, body)
  local version = loom.encode(nil):sub(5, 5)
  return "LOOM" .. version .. string.pack("<I4", nobjs) .. varint(nvalues) .. body
end

--- The body of a message made by loom.encode (after the header and the
--- value count), and its object count.
function M.body(message)
  local nobjs = string.unpack("<I4", message, 6)
  assert(message:byte(10) == 1, "a message of one value")
  return message:sub(11), nobjs
end

local function class(name)
  local c = { name = name }
  c.__index = c
  return c
end

-- The values to encode, in a fixed order: { label, value [, false when
-- loom.decode refuses it] }.
local function values()
  local v = {}
  local function add(label, value) v[#v + 1] = { label, value } end

  -- scalars
  add("nil", nil)
  add("true", true)
  add("false", false)
  for _, i in ipairs { 0, 1, -1, 127, -128, 128, -129, 255, 256, 65535, 1 << 31,
                       -(1 << 31) - 1, 1 << 53, math.maxinteger, math.mininteger } do
    add("integer " .. i, i)
  end
  for _, x in ipairs { 0.0, -0.0, 0.5, 1 / 3, math.pi, math.huge, -math.huge, 5e-324,
                       2.2250738585072014e-308, 1.7976931348623157e308, 2.0 ^ 63, 1e300 } do
    add(string.format("float %a", x), x)
  end
  add("float nan", 0 / 0)
  add("float nan with payload", (string.unpack(">d", "\x7f\xf8\x06\x05\x04\x03\x02\x01")))

  -- strings
  add("string empty", "")
  add("string a", "a")
  add("string with zeros", "a\0b\0\0c")
  local all = {}
  for b = 0, 255 do all[#all + 1] = string.char(b) end
  add("string all bytes", table.concat(all))
  add("string 127", string.rep("x", 127))
  add("string 128", string.rep("y", 128))
  add("string 300", string.rep("z", 300))
  add("string utf8", "héllo wörld ✓")

  -- tables
  add("table empty", {})
  add("table sequence", { 1, 2, 3, "four", 5.5, true })
  add("table with holes", { 1, nil, 3, nil, nil, 6 })
  add("table sparse", { [1] = "a", [100] = "b", [-5] = "c", [0] = "d" })
  add("table record", { name = "loom", n = 42, ok = true, ratio = 0.25 })
  add("table mixed", { 10, 20, 30, x = 1, y = { 2, 3 }, [2.5] = "half", [false] = 0 })
  add("table keys of every type", {
    [1] = "int", [2.5] = "float", ["s"] = "string", [true] = "true", [false] = "false",
    [{}] = "table key", [math.mininteger] = "minint", [math.huge] = "inf", [-0.5] = "neg",
  })
  add("table nested", { a = { b = { c = { d = { e = "deep" } } } } })
  add("table of tables", { {}, { {} }, { { {} } }, { 1, { 2, { 3 } } } })

  local self = {}
  self.self = self
  add("cycle self", self)
  local a, b = {}, {}
  a.other, b.other = b, a
  add("cycle of two", a)
  local x, y, z = { name = "x" }, { name = "y" }, { name = "z" }
  x.next, y.next, z.next = y, z, x
  add("cycle of three", { x, y, z })
  local shared = { "shared" }
  add("shared subtable", { shared, shared, k = shared, [shared] = shared })
  local key = { "key" }
  add("table as key and value", { [key] = key, list = { key } })

  -- metatables
  local point = class("point")
  add("metatable shared", { setmetatable({ x = 1 }, point), setmetatable({ x = 2 }, point) })
  add("metatable class", setmetatable({ 1, 2 }, point))
  add("metatable of itself", (function() local t = {}; return setmetatable(t, t) end)())
  add("metatable chain", setmetatable({}, setmetatable({}, setmetatable({}, { last = true }))))
  add("metatable weak keys", setmetatable({ [{}] = 1, [{}] = 2, k = {} }, { __mode = "k" }))
  add("metatable weak values", setmetatable({ {}, {}, v = {} }, { __mode = "v" }))
  add("metatable protected", setmetatable({}, { __metatable = "locked", __index = { z = 0 } }))
  add("metatable with metamethods", setmetatable({}, {
    __index = string.upper, __tostring = tostring, __len = rawlen, __call = select,
  }))

  -- standard C functions and library tables
  add("cfunc string.rep", string.rep)
  add("cfunc print", print)
  add("cfuncs in a table", { string.rep, math.floor, table.concat, pairs, tostring,
                             utf8.char, os.time, io.write, coroutine.wrap })
  add("library string", string)
  add("library math", math)
  add("library table", table)
  add("library utf8", utf8)
  add("library coroutine", coroutine)
  add("library os", os)
  add("loom module functions", { loom.encode, require("loom.core").decode, loom.channel, loom.cpu_count })

  -- the receiver's own: globals and the error class
  add("globals", _G)
  add("globals in a table", { env = _G, _G, [_G] = true })
  add("loom.Error", loom.Error)
  add("an error value", setmetatable({ kind = "transfer", message = "m" }, loom.Error))

  -- big ones, as big as fits in the fuzzer's 4096 bytes
  local function fit(label, make)
    local n = 1024
    while #loom.encode(make(n)) > 4000 do n = n * 3 // 4 end
    add(string.format("%s %d", label, n), make(n))
  end
  fit("nested", function(n)
    local t = {}
    for _ = 1, n do t = { t } end
    return t
  end)
  fit("metatables nested", function(n)
    local t = {}
    for _ = 1, n do t = setmetatable({}, t) end
    return t
  end)
  fit("array of integers", function(n)
    local t = {}
    for i = 1, n do t[i] = i * 3 end
    return t
  end)
  fit("array of floats", function(n)
    local t = {}
    for i = 1, n do t[i] = i / 7 end
    return t
  end)
  fit("array of strings", function(n)
    local t = {}
    for i = 1, n do t[i] = tostring(i) end
    return t
  end)
  fit("hash", function(n)
    local t = {}
    for i = 1, n do t["k" .. i] = i end
    return t
  end)

  -- Lua functions (refused by loom.decode without {functions = true})
  local function add_fn(label, value) v[#v + 1] = { label, value, false } end
  local up = { n = 1 }
  add_fn("function plain", function() return 1 end)
  add_fn("function closure", function() return up.n end)
  local count = 0
  local function inc() count = count + 1 return count end
  local function get() return count end
  add_fn("functions sharing an upvalue", { inc = inc, get = get })
  add_fn("function using globals", function() return print end)
  add_fn("function in a metatable", setmetatable({}, { __index = function() return 0 end }))

  return v
end

local function label_name(i, label)
  return string.format("seed-%03d-%s", i, (label:gsub("[^%w]+", "-")))
end

--- Every seed message: a list of { name = ..., bytes = ..., decodes = ... },
--- where `decodes` says whether loom.decode(bytes) returns a value (else it
--- raises a transfer error).
function M.messages()
  local list = {}
  for i, row in ipairs(values()) do
    list[#list + 1] = { name = label_name(i, row[1]), bytes = loom.encode(row[2]),
                        decodes = row[3] ~= false }
  end
  local function add(label, bytes, decodes)
    list[#list + 1] = { name = label_name(#list + 1, "hand " .. label), bytes = bytes,
                        decodes = decodes or false }
  end
  local body_t, nobjs_t = M.body(loom.encode { 1, { 2 }, "three" })
  local body_s = M.body(loom.encode "second")
  add("two values", M.message(nobjs_t, 2, body_t .. body_s))
  add("no values", M.message(0, 0, ""))
  add("channel reference", M.message(0, 1, string.char(T.CHAN, 0)))
  add("shared bytecode reference", M.message(0, 1, string.char(T.PROTO, 0)))
  add("join at the top", M.message(0, 1, string.char(T.JOIN, 0, 1)))
  add("join in a table", M.message(1, 1,
    M.table_header(1, 0) .. string.char(T.JOIN, 0, 1, 0)))
  add("reference before its object", M.message(1, 1, string.char(T.REF, 0)))
  add("table inside its own metatable", M.message(1, 1,
    M.table_header(0, 0) .. string.char(1, T.REF, 0)), true)
  add("unknown C function", M.message(0, 1, string.char(T.CFUNC) .. M.cname("nowhere") .. M.cname("f")))
  add("env and errmt", M.message(1, 1,
    M.table_header(2, 0) .. string.char(T.ENV, T.ERRMT, 1, T.ERRMT)), true)
  add("array of mixed numbers", M.message(1, 1, M.table_header(5, 0)
    .. string.char(T.INT8, 0xff, T.FLT) .. string.pack("<d", 0.5)
    .. string.char(T.INT) .. string.pack("<i8", 1 << 40)
    .. string.char(T.INT8, 7, T.STR, 1) .. "s" .. "\0"), true)
  return list
end

local function main(dir)
  if not dir then
    io.stderr:write("usage: lua5.4 spec/fuzz/make_corpus.lua DIR\n")
    os.exit(2)
  end
  os.execute("mkdir -p '" .. dir:gsub("'", "'\\''") .. "'")
  local n, decodes = 0, 0
  for _, m in ipairs(M.messages()) do
    assert(#m.bytes <= 4096, m.name .. " is longer than -max_len")
    local f = assert(io.open(dir .. "/" .. m.name, "wb"))
    f:write(m.bytes)
    f:close()
    n = n + 1
    if m.decodes then decodes = decodes + 1 end
  end
  io.stderr:write(string.format("make_corpus: %d seed messages in %s, %d of them decode\n",
    n, dir, decodes))
  print(n, decodes)   -- for spec/fuzz/run.sh
end

if arg and arg[0] and arg[0]:match("make_corpus%.lua$") then
  main(arg[1])
end

return M
