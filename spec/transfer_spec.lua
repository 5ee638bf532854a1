-- The transfer contract (API.md, "What crosses between states" and "Errors"):
-- which values loom copies between Lua states and how exactly, what it
-- refuses and how it says so, and how its decoder copes with damaged input.
--
-- Most rows are checked twice: through the public serializer
-- (loom.decode(loom.encode(v))) and through core._roundtrip, which copies its
-- arguments into a brand-new lua_State and back. core._call_in_new_state runs
-- a function in a fresh state, to see how copies behave over there.
--
-- The decoder tests feed damaged and random messages to loom.decode. Each
-- input must either decode or raise a loom "transfer" error; a crash takes
-- the whole busted run down with it.

-- luacheck: globals loom_transfer_marker loom_transfer_bonus

local loom = require "loom"
local core = require "loom.core"
local h = require "spec.support.transfer_helpers"

local TRANSPORTS = {
  {
    name = "loom.decode(loom.encode(v))",
    copy = function(v) return loom.decode(loom.encode(v), { functions = true }) end,
  },
  {
    name = "core._roundtrip(v)",
    copy = function(v) return (core._roundtrip(v)) end,
  },
}

local DEEP = 100000        -- levels of nesting for tables and metatables
local DEEP_CLOSURES = 10000 -- levels of closures nested through upvalues

----------------------------------------------------------------------------
-- Assertions

local function assert_same_graph(original, copy)
  local ok, why = h.same_graph(original, copy)
  assert.is_true(ok, why)
end

local function assert_float_copy(original, copy)
  assert.are.equal("float", math.type(copy))
  assert.are.equal(h.float_bits(original), h.float_bits(copy))
end

local function assert_contains(text, part)
  assert.is_truthy(string.find(text, part, 1, true),
    string.format("expected %q to contain %q", text, part))
end

-- Calls fn(...) expecting a loom transfer error; returns the error.
local function transfer_error(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected a transfer error, but the call succeeded")
  assert.is_true(h.is_transfer_error(err), "expected a transfer error, got " .. h.describe_error(err))
  return err
end

local function assert_no_problem(inputs, check, expected_count)
  local problem, tried = h.first_problem(inputs, check)
  assert.is_nil(problem)
  if expected_count then assert.are.equal(expected_count, tried) end
  collectgarbage() -- a damaged heap tends to show up here
end

----------------------------------------------------------------------------
-- Sample values

local INTEGERS = {
  { "0", 0 }, { "1", 1 }, { "-1", -1 },
  { "127", 127 }, { "128", 128 }, { "255", 255 }, { "256", 256 }, { "-129", -129 },
  { "2^31", 1 << 31 }, { "-2^31 - 1", -(1 << 31) - 1 }, { "2^32 + 1", (1 << 32) + 1 },
  { "2^53 + 1", (1 << 53) + 1 },
  { "math.maxinteger", math.maxinteger }, { "math.mininteger", math.mininteger },
}

local FLOATS = {
  { "0.0", 0.0 }, { "-0.0", -0.0 }, { "1.0", 1.0 }, { "-1.5", -1.5 },
  { "0.1", 0.1 }, { "1/3", 1 / 3 }, { "math.pi", math.pi },
  { "the smallest subnormal 5e-324", 5e-324 },
  { "the smallest normal", 2.2250738585072014e-308 },
  { "the largest finite", 1.7976931348623157e308 },
  { "inf", math.huge }, { "-inf", -math.huge },
  { "2^53", 2.0 ^ 53 }, { "2^63", 2.0 ^ 63 }, { "-2^63", -(2.0 ^ 63) },
  { "NaN from 0/0", 0 / 0 },
  { "a positive NaN with a payload", (string.unpack(">d", "\x7f\xf8\x06\x05\x04\x03\x02\x01")) },
  { "a negative NaN with a payload", (string.unpack(">d", "\xff\xf8\x00\x00\x00\x00\xbe\xef")) },
}

local STDLIB_C_FUNCTIONS = {
  { "string.rep", string.rep }, { "string.format", string.format },
  { "math.sqrt", math.sqrt }, { "math.floor", math.floor },
  { "table.concat", table.concat }, { "table.insert", table.insert },
  { "print", print }, { "pairs", pairs }, { "tostring", tostring },
  { "utf8.char", utf8.char }, { "os.time", os.time }, { "io.write", io.write },
}

-- A table with strings, numbers, booleans, a cycle, shared subtables and a
-- shared metatable, and no functions.
local function sample_data()
  local point = { kind = "point" }
  point.__index = point
  local t = {
    name = "loom", bytes = "a\0b\255", empty = "", long = string.rep("xy", 80),
    n = 42, neg = -7, big = math.maxinteger, small = math.mininteger,
    pi = math.pi, neg_zero = -0.0, inf = math.huge, tenth = 0.1, whole = 3.0,
    yes = true, no = false,
    list = { 1, 2.5, "three", { 4 } },
    [1.5] = "float key", [true] = "boolean key", [-3] = "negative key",
    origin = setmetatable({ x = 0, y = 0 }, point),
    unit = setmetatable({ x = 1, y = 0 }, point),
  }
  t.self = t
  t.list[5] = t.list
  t.again = t.list[4]
  return t
end

-- A closure over a table and a number: sample_function()(2) == 16.
local function sample_function()
  local config = { scale = 3, label = "scaled" }
  local offset = 10
  return function(x) return x * config.scale + offset end
end

local function list_chain(depth)
  return h.chain(depth, function(outer, inner) outer[1] = inner end)
end

local function list_step(t) return rawget(t, 1) end

local function closure_chain(depth)
  local f = function() return 0 end
  for _ = 2, depth do
    local inner = f
    f = function() return inner() + 1 end
  end
  return f
end

local function closure_chain_length(f)
  local n = 1
  while true do
    local _, inner = debug.getupvalue(f, 1)
    if inner == nil then return n end
    n, f = n + 1, inner
  end
end

----------------------------------------------------------------------------

describe("transfer", function()

  describe("message format", function()
    it("starts with LOOM and the same version byte for every value", function()
      local header = loom.encode(nil):sub(1, 5)
      assert.are.equal("LOOM", header:sub(1, 4))
      assert.are.equal(5, #header)
      for _, v in ipairs { true, 1, 0.5, "text", { 1, 2 }, sample_data(), sample_function() } do
        assert.are.equal(header, loom.encode(v):sub(1, 5))
      end
    end)

    it("is what decode reads back without options", function()
      local original = sample_data()
      assert_same_graph(original, loom.decode(loom.encode(original)))
    end)
  end)

  describe("arrays of numbers", function()
    -- On Lua 5.4 the copier reads and writes the numbers of an array part
    -- in place (encode.c, decode.c); core._inplace_arrays(false) turns
    -- that off.
    -- Both ways must write the same bytes and read back the same tables.
    local function shapes()
      local out = {}
      local function add(name, t) out[#out + 1] = { name = name, t = t } end
      add("constructor", { 1, 2.5, -0.0, 1 / 0, -1 / 0, 0 / 0, math.maxinteger,
                           math.mininteger, 127, -128, 128, -129, 2 ^ 53 })
      local grown = {}
      for i = 1, 1000 do grown[#grown + 1] = (i % 3 == 0) and i + 0.5 or i end
      add("grown one by one", grown)
      local holes = { 1, 2, 3, 4, 5, 6, 7, 8 }
      holes[8], holes[7] = nil, nil
      local _ = #holes          -- lets Lua lower its size hint below the array size
      holes[7] = 7              -- then a number beyond that hint, inside the array
      add("size hint below the array", holes)
      add("a hole in the middle", { 1, 2, nil, 4, 5 })
      add("a string among numbers", { 1.5, 2, "x", 3, 4 })
      add("a table among numbers", { 1, { 2 }, 3 })
      add("numbers then other keys", { 1, 2, 3, x = 4, [10] = 10, [2.5] = 1 })
      add("empty", {})
      local big = {}
      for i = 1, 100000 do big[i] = i * 0.25 end
      add("100,000 floats", big)
      return out
    end

    it("is on for this interpreter", function()
      assert.is_true(core._inplace_arrays())
    end)

    for _, shape in ipairs(shapes()) do
      it("writes the same bytes both ways: " .. shape.name, function()
        local inplace = loom.encode(shape.t)
        core._inplace_arrays(false)
        local ok, api = pcall(loom.encode, shape.t)
        core._inplace_arrays(true)
        assert.is_true(ok, api)
        assert.are.equal(api, inplace)
      end)

      it("reads back the same table both ways: " .. shape.name, function()
        local bytes = loom.encode(shape.t)
        local inplace = loom.decode(bytes)
        core._inplace_arrays(false)
        local ok, api = pcall(loom.decode, bytes)
        core._inplace_arrays(true)
        assert.is_true(ok, api)
        assert_same_graph(shape.t, inplace)
        assert_same_graph(shape.t, api)
      end)
    end

    it("copies a million floats to a worker and back exactly", function()
      local t = {}
      for i = 1, 1000000 do t[i] = math.random() * 2 ^ (i % 64) end
      local ex <close> = loom.executor { workers = 1 }
      local back = ex:submit(function(v) return v end, t):result()
      assert.are.equal(#t, #back)
      for i = 1, #t do
        if back[i] ~= t[i] then error(("differs at %d: %s ~= %s"):format(i, back[i], t[i])) end
      end
    end)
  end)

  for _, via in ipairs(TRANSPORTS) do
    local copy = via.copy

    describe("through " .. via.name, function()

      describe("nil and booleans", function()
        it("copies nil", function()
          assert.is_nil(copy(nil))
        end)

        it("copies true and false", function()
          assert.are.equal(true, copy(true))
          assert.are.equal(false, copy(false))
        end)
      end)

      describe("integers", function()
        for _, row in ipairs(INTEGERS) do
          it("keeps " .. row[1] .. " an integer with the same value", function()
            local got = copy(row[2])
            assert.are.equal("integer", math.type(got))
            assert.are.equal(row[2], got)
          end)
        end
      end)

      describe("floats", function()
        for _, row in ipairs(FLOATS) do
          it("keeps " .. row[1] .. " bit for bit", function()
            assert_float_copy(row[2], copy(row[2]))
          end)
        end

        it("keeps NaN a NaN", function()
          local got = copy(0 / 0)
          assert.is_true(got ~= got)
        end)

        it("keeps the sign of -0.0", function()
          local got = copy(-0.0)
          assert.are.equal(-math.huge, 1 / got)
          assert.are.equal(math.huge, 1 / copy(0.0))
        end)

        it("keeps integral floats floats", function()
          assert.are.equal("float", math.type(copy(3.0)))
          assert.are.equal("float", math.type(copy(2.0 ^ 63)))
        end)
      end)

      describe("strings", function()
        it("copies the empty string", function()
          assert.are.equal("", copy(""))
        end)

        it("copies embedded zeros", function()
          assert.are.equal("\0", copy("\0"))
          assert.are.equal("a\0b\0\0c", copy("a\0b\0\0c"))
        end)

        it("copies all 256 byte values", function()
          local got = copy(h.ALL_BYTES)
          assert.are.equal(256, #got)
          assert.are.equal(h.ALL_BYTES, got)
        end)

        for _, n in ipairs { 127, 128, 255, 256, 65535, 65536, 65537 } do
          it("copies a string of " .. n .. " bytes", function()
            local s = string.rep("z", n - 1) .. "!"
            assert.are.equal(s, copy(s))
          end)
        end

        it("copies a 16 MiB string", function()
          local big = string.rep(h.ALL_BYTES, 65536)
          local got = copy(big)
          assert.are.equal(16 * 1024 * 1024, #got)
          assert.is_true(got == big, "the 16 MiB copy differs from the original")
        end)
      end)

      describe("tables", function()
        it("copies an empty table as a new table", function()
          local t = {}
          local got = copy(t)
          assert.is_table(got)
          assert.are_not.equal(t, got)
          assert.is_nil(next(got))
        end)

        it("copies a sequence with its length", function()
          local got = copy { 10, 20, 30, "forty" }
          assert.are.equal(4, #got)
          assert.are.same({ 10, 20, 30, "forty" }, got)
        end)

        it("copies holes and sparse integer keys", function()
          local got = copy { 1, nil, 3, [10] = 10, [1000000] = "far" }
          assert.are.equal(1, got[1])
          assert.is_nil(got[2])
          assert.are.equal(3, got[3])
          assert.are.equal(10, got[10])
          assert.are.equal("far", got[1000000])
        end)

        it("copies nested tables", function()
          local original = {
            name = "outer",
            inner = { list = { 1, 2, { 3, { 4, "five" } } }, flag = false, ratio = 0.25 },
            { "array", "part" },
          }
          assert_same_graph(original, copy(original))
        end)

        it("copies keys of every type, keeping number subtypes", function()
          local original = {
            [true] = "true", [false] = "false",
            [0] = "zero", [-1] = "minus one",
            [math.maxinteger] = "max", [math.mininteger] = "min",
            [1.5] = "one and a half", [-0.25] = "minus a quarter",
            [math.huge] = "inf", [-math.huge] = "-inf", [2.0 ^ 63] = "2^63",
            [""] = "empty", ["a\0b"] = "zero inside", key = "plain",
          }
          local got = copy(original)
          assert.are.same(h.key_signature(original), h.key_signature(got))
          for k, v in pairs(original) do
            assert.are.equal(v, rawget(got, k))
          end
        end)

        it("copies a table used as a key", function()
          local key = { name = "the key" }
          local got = copy { [key] = "by table", plain = 1 }
          local found_key, found_value
          for k, v in pairs(got) do
            if type(k) == "table" then found_key, found_value = k, v end
          end
          assert.is_table(found_key)
          assert.are_not.equal(key, found_key)
          assert.are.equal("the key", found_key.name)
          assert.are.equal("by table", found_value)
        end)

        it("keeps a table used as both key and value one table", function()
          local both = { "both" }
          local got = copy { [both] = both }
          local k, v = next(got)
          assert.are.equal("both", k[1])
          assert.are.equal(k, v)
        end)

        it("copies a table that contains itself", function()
          local t = { name = "loop" }
          t.self = t
          local got = copy(t)
          assert.are_not.equal(t, got)
          assert.are.equal(got, got.self)
          assert.are.equal("loop", got.self.self.name)
        end)

        it("copies a cycle through two tables", function()
          local a, b = { name = "a" }, { name = "b" }
          a.next, b.next = b, a
          local got = copy(a)
          assert.are.equal("b", got.next.name)
          assert.are.equal(got, got.next.next)
        end)

        it("delivers a table reached twice as one table reached twice", function()
          local shared = { "shared" }
          local got = copy { shared, shared, nested = { shared }, [shared] = true }
          assert.are_not.equal(shared, got[1])
          assert.are.equal(got[1], got[2])
          assert.are.equal(got[1], got.nested[1])
          assert.is_true(got[got[1]])
        end)

        it("copies a mixed graph faithfully", function()
          local original = sample_data()
          assert_same_graph(original, copy(original))
        end)
      end)

      describe("metatables", function()
        it("copies a metatable with its metamethods", function()
          local Point = {}
          Point.__index = Point
          Point.__tostring = function(p) return "point(" .. p.x .. ", " .. p.y .. ")" end
          Point.__add = function(p, q) return setmetatable({ x = p.x + q.x, y = p.y + q.y }, getmetatable(p)) end
          function Point.norm1(p) return math.abs(p.x) + math.abs(p.y) end
          local p = setmetatable({ x = 1, y = -2 }, Point)

          local got = copy(p)
          assert.is_table(getmetatable(got))
          assert.are_not.equal(Point, getmetatable(got))
          assert.are.equal("point(1, -2)", tostring(got))
          assert.are.equal(3, got:norm1())
          assert.are.equal("point(2, -4)", tostring(got + got))
        end)

        it("keeps a metatable shared by several tables shared", function()
          local mt = { __index = { kind = "shared" } }
          local got = copy { setmetatable({}, mt), setmetatable({}, mt), mt }
          assert.are.equal(getmetatable(got[1]), getmetatable(got[2]))
          assert.are.equal(got[3], getmetatable(got[1]))
          assert.are.equal("shared", got[2].kind)
        end)

        it("copies a class whose metatable is its own __index", function()
          local Class = { greeting = "hello" }
          Class.__index = Class
          local got = copy(setmetatable({}, Class))
          local mt = getmetatable(got)
          assert.are.equal(mt, mt.__index)
          assert.are.equal("hello", got.greeting)
        end)

        it("copies a protected metatable (one with a __metatable field)", function()
          local t = setmetatable({}, { __metatable = "locked", __index = { answer = 42 } })
          local got = copy(t)
          assert.are.equal("locked", getmetatable(got))
          assert.are.equal(42, got.answer)
        end)

        it("copies raw contents without calling metamethods", function()
          local function refuse() error("a metamethod was called during the copy") end
          local proxy = setmetatable({ a = 1, 2 }, {
            __index = refuse, __newindex = refuse, __pairs = refuse, __len = refuse, __eq = refuse,
          })
          local got = copy(proxy)
          assert.are.equal(1, rawget(got, "a"))
          assert.are.equal(2, rawget(got, 1))
          assert.are.equal(1, rawlen(got))
        end)
      end)

      describe("Lua functions", function()
        it("copies a closure over a table and a number", function()
          local f = sample_function()
          local got = copy(f)
          assert.is_function(got)
          assert.are_not.equal(f, got)
          assert.are.equal(16, got(2))
        end)

        it("copies an upvalue that is nil", function()
          local missing = nil
          local got = copy(function() return missing == nil, missing end)
          local was_nil, value = got()
          assert.is_true(was_nil)
          assert.is_nil(value)
        end)

        it("copies a recursive local function", function()
          local function fact(n) if n <= 1 then return 1 end return n * fact(n - 1) end
          local got = copy(fact)
          assert.are.equal(3628800, got(10))
          local _, self_ref = debug.getupvalue(got, 1)
          assert.are.equal(got, self_ref)
        end)

        it("keeps two closures sharing an upvalue sharing it", function()
          local function counter()
            local n = 0
            return function() n = n + 1 return n end, function() return n end
          end
          local inc, get = counter()
          local got = copy { inc = inc, get = get }
          assert.are.equal(debug.upvalueid(got.inc, 1), debug.upvalueid(got.get, 1))
          got.inc()
          got.inc()
          assert.are.equal(2, got.get())
          assert.are.equal(0, get())
        end)

        it("delivers a function reached twice as one function", function()
          local f = sample_function()
          local got = copy { f, f, named = f }
          assert.are.equal(got[1], got[2])
          assert.are.equal(got[1], got.named)
        end)

        it("keeps a table reached directly and through an upvalue one table", function()
          local state = { hits = 0 }
          local function hit() state.hits = state.hits + 1 return state end
          local got = copy { hit = hit, state = state }
          assert.are.equal(got.state, got.hit())
          assert.are.equal(1, got.state.hits)
          assert.are.equal(0, state.hits)
        end)

        it("copies an object whose methods refer to the object", function()
          local account = { balance = 10 }
          function account.deposit(n) account.balance = account.balance + n return account end
          local got = copy(account)
          assert.are.equal(got, got.deposit(5))
          assert.are.equal(15, got.balance)
          assert.are.equal(10, account.balance)
        end)

        it("copies functions used as table keys", function()
          local f = sample_function()
          local got = copy { [f] = "f's value", f = f }
          assert.are.equal("f's value", got[got.f])
        end)

        it("copies a vararg function with several results", function()
          local got = copy(function(...) return select("#", ...), ... end)
          assert.are.same({ 3, 1, nil, 3, n = 4 }, table.pack(got(1, nil, 3)))
        end)

        it("copies a closure over a standard-library C function", function()
          local rep = string.rep
          local got = copy(function(n) return rep("x", n) end)
          assert.are.equal("xxx", got(3))
        end)

        it("lets a copied function read the receiving state's globals", function()
          _G.loom_transfer_marker = "here"
          finally(function() _G.loom_transfer_marker = nil end)
          local got = copy(function() return loom_transfer_marker, string.rep("a", 3) end)
          assert.are.same({ "here", "aaa" }, { got() })
        end)

        it("copies functions nested deeply in closures", function()
          local got = copy(closure_chain(DEEP_CLOSURES))
          assert.are.equal(DEEP_CLOSURES, closure_chain_length(got))
          assert.are.equal(DEEP_CLOSURES - 1, got())
        end)
      end)

      describe("standard-library C functions", function()
        for _, row in ipairs(STDLIB_C_FUNCTIONS) do
          it("copies " .. row[1] .. " as itself", function()
            assert.is_true(rawequal(row[2], copy(row[2])))
          end)
        end

        it("copies C functions inside tables, still working", function()
          local got = copy { rep = string.rep, sqrt = math.sqrt, concat = table.concat }
          assert.are.equal("ababab", got.rep("ab", 3))
          assert.are.equal(4.0, got.sqrt(16))
          assert.are.equal("a,b", got.concat({ "a", "b" }, ","))
        end)
      end)

      describe("deep nesting", function()
        it("copies a table nested " .. DEEP .. " levels deep (t = {t})", function()
          local got = copy(list_chain(DEEP))
          assert.are.equal(DEEP, h.chain_length(got, list_step))
        end)

        it("copies a chain of " .. DEEP .. " tables linked by a string key", function()
          local chain = h.chain(DEEP, function(outer, inner) outer.next = inner end)
          local got = copy(chain)
          assert.are.equal(DEEP, h.chain_length(got, function(t) return rawget(t, "next") end))
        end)

        it("copies a chain of " .. DEEP .. " metatables", function()
          local chain = h.chain(DEEP, function(outer, inner) setmetatable(outer, inner) end)
          local got = copy(chain)
          assert.are.equal(DEEP, h.chain_length(got, getmetatable))
        end)
      end)

      describe("large tables", function()
        it("copies a 100,000-element array", function()
          local n = 100000
          local array = {}
          for i = 1, n do array[i] = (i % 3 == 0) and i + 0.5 or i * 7 end
          local got = copy(array)
          assert.are.equal(n, #got)
          local first_difference
          for i = 1, n do
            if not (got[i] == array[i] and math.type(got[i]) == math.type(array[i])) then
              first_difference = i
              break
            end
          end
          assert.is_nil(first_difference)
        end)

        it("copies a 50,000-key hash", function()
          local n = 50000
          local hash = {}
          for i = 1, n do hash["key" .. i] = i end
          local got = copy(hash)
          local count, first_difference = 0, nil
          for k, v in pairs(got) do
            count = count + 1
            if hash[k] ~= v then first_difference = first_difference or k end
          end
          assert.are.equal(n, count)
          assert.is_nil(first_difference)
        end)
      end)
    end)
  end

  describe("core._roundtrip with several arguments", function()
    it("returns as many values as it was given, nils included", function()
      local got = table.pack(core._roundtrip(nil, 1, nil, "x", nil))
      assert.are.same({ nil, 1, nil, "x", nil, n = 5 }, got)
    end)

    it("returns nothing for nothing", function()
      assert.are.equal(0, select("#", core._roundtrip()))
    end)
  end)

  describe("in a fresh state (core._call_in_new_state)", function()
    local call = core._call_in_new_state

    it("binds a function's _ENV to the fresh state's globals", function()
      _G.loom_transfer_marker = "set in the test state"
      finally(function() _G.loom_transfer_marker = nil end)
      local function read_marker() return loom_transfer_marker end
      assert.are.equal("set in the test state", read_marker())
      assert.is_nil(call(read_marker))
    end)

    it("rebinds _ENV when it is not the function's first upvalue", function()
      _G.loom_transfer_bonus = 100
      finally(function() _G.loom_transfer_bonus = nil end)
      local base = 5
      local function total() return base + (loom_transfer_bonus or 0) end
      assert.are.equal(105, total())
      assert.are.equal(5, call(total))
    end)

    it("lets a function use the fresh state's standard libraries", function()
      assert.are.equal("aaa", call(function() return string.rep("a", 3) end))
    end)

    it("runs standard-library C functions there", function()
      assert.are.equal("ababab", call(string.rep, "ab", 3))
      assert.are.equal(4.0, call(math.sqrt, 16))
      assert.are.equal("a-b-c", call(table.concat, { "a", "b", "c" }, "-"))
    end)

    it("delivers print as that state's print", function()
      assert.is_true(call(function(p) return p == print end, print))
    end)

    it("runs a closure with its upvalues there", function()
      assert.are.equal(16, call(sample_function(), 2))
    end)

    it("runs a recursive local function there", function()
      local function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end
      assert.are.equal(55, call(fib, 10))
    end)

    it("keeps closures sharing an upvalue sharing it there", function()
      local n = 0
      local function inc() n = n + 1 end
      local function get() return n end
      local function run(pair) pair.inc() pair.inc() pair.inc() return pair.get() end
      assert.are.equal(3, call(run, { inc = inc, get = get }))
      assert.are.equal(0, n)
    end)

    it("keeps sharing and cycles in arguments", function()
      local shared = {}
      local t = { a = shared, b = shared }
      t.self = t
      local function inspect(x) return x.a == x.b, x.self == x, x.a ~= nil end
      assert.are.same({ true, true, true }, { call(inspect, t) })
    end)

    it("receives a table nested " .. DEEP .. " levels deep", function()
      assert.are.equal(DEEP, call(h.chain_length, list_chain(DEEP), list_step))
    end)

    it("passes nil arguments and results, counted", function()
      local function count(...) return select("#", ...), nil, nil end
      assert.are.same({ 2, nil, nil, n = 3 }, table.pack(call(count, nil, nil)))
    end)

    it("raises a copy of a table error value", function()
      local ok, err = pcall(call, function() error({ code = 42, detail = { "nested" } }) end)
      assert.is_false(ok)
      assert.is_table(err)
      assert.are.equal(42, err.code)
      assert.are.equal("nested", err.detail[1])
    end)

    it("raises a copy of a string error value", function()
      local ok, err = pcall(call, function() error("boom") end)
      assert.is_false(ok)
      assert_contains(tostring(err), "boom")
    end)
  end)

  describe("copies are copies", function()
    for _, via in ipairs(TRANSPORTS) do
      it("changing a copy through " .. via.name .. " leaves the original alone", function()
        local original = { n = 1, inner = { list = { 1, 2 } } }
        local mt = { __index = { kind = "original" } }
        setmetatable(original.inner, mt)

        local got = via.copy(original)
        got.n = 2
        got.inner.list[1] = "changed"
        got.inner.extra = true
        getmetatable(got.inner).__index.kind = "changed"

        assert.are.same({ n = 1, inner = { list = { 1, 2 } } }, original)
        assert.are.equal(mt, getmetatable(original.inner))
        assert.are.equal("original", original.inner.kind)
      end)

      it("a copied closure has its own upvalues through " .. via.name, function()
        local n = 0
        local function inc() n = n + 1 return n end
        local got = via.copy(inc)
        assert.are.equal(1, got())
        assert.are.equal(2, got())
        assert.are.equal(0, n)
        assert.are.equal(1, inc())
        assert.are.equal(3, got())
      end)
    end

    it("decoding one message twice gives two independent values", function()
      local message = loom.encode { list = { 1, 2 } }
      local a, b = loom.decode(message), loom.decode(message)
      assert.are_not.equal(a, b)
      a.list[1] = "changed"
      assert.are.equal(1, b.list[1])
    end)

    it("a function in another state changes only its own copies", function()
      local config = { level = 1 }
      local arg = { items = { "a" } }
      local function mutate(t)
        t.items[1] = "changed"
        t.items[2] = "added"
        config.level = 99
        return t, config.level
      end
      local got, level = core._call_in_new_state(mutate, arg)
      assert.are.equal(99, level)
      assert.are.same({ items = { "changed", "added" } }, got)
      assert.are.same({ items = { "a" } }, arg)
      assert.are.equal(1, config.level)
    end)
  end)

  describe("refusals", function()
    local UNTRANSFERABLE = {
      { "a coroutine", function() return coroutine.create(function() end) end },
      { "a full userdata (io.stdout)", function() return io.stdout end },
      { "a C closure (from string.gmatch)", function() return string.gmatch("a", "a") end },
      { "a C closure (from coroutine.wrap)", function() return coroutine.wrap(function() end) end },
    }

    for _, row in ipairs(UNTRANSFERABLE) do
      it("refuses " .. row[1] .. " in loom.encode", function()
        transfer_error(loom.encode, row[2]())
      end)

      it("refuses " .. row[1] .. " in core._roundtrip", function()
        transfer_error(core._roundtrip, row[2]())
      end)

      it("refuses " .. row[1] .. " inside a table, naming the field", function()
        local err = transfer_error(loom.encode, { holder = { bad = row[2]() } })
        assert_contains(err.message, "field 'holder': field 'bad': ")
      end)
    end

    it("names a userdata field", function()
      local err = transfer_error(loom.encode, { conn = io.stdout })
      assert_contains(err.message, "field 'conn': cannot transfer a userdata")
    end)

    it("names an integer index", function()
      local err = transfer_error(loom.encode, { 1, 2, io.stdout })
      assert_contains(err.message, "index 3: cannot transfer a userdata")
    end)

    it("joins nested places with ': '", function()
      local err = transfer_error(loom.encode, { a = { b = { io.stdout } } })
      assert_contains(err.message, "field 'a': field 'b': index 1: cannot transfer a userdata")
    end)

    it("says what a coroutine is", function()
      local err = transfer_error(loom.encode, { co = coroutine.create(print) })
      assert_contains(err.message, "field 'co': cannot transfer a ")
      assert.is_truthy(err.message:find("thread", 1, true) or err.message:find("coroutine", 1, true),
        "the message should call it a thread or a coroutine: " .. err.message)
    end)

    it("names an upvalue", function()
      local conn = io.stdout
      local function send(s) return conn:write(s) end
      local err = transfer_error(loom.encode, send)
      assert_contains(err.message, "upvalue 'conn': cannot transfer a userdata")
    end)

    it("names the path through a table, an upvalue and a table", function()
      local sinks = { out = io.stdout }
      local function send(s) return sinks.out:write(s) end
      local err = transfer_error(loom.encode, { handler = send })
      assert_contains(err.message, "field 'handler': upvalue 'sinks': field 'out': cannot transfer a userdata")
    end)

    it("names a metatable", function()
      local err = transfer_error(loom.encode, { obj = setmetatable({}, { __index = io.stdout }) })
      assert_contains(err.message, "field 'obj': metatable: field '__index': cannot transfer a userdata")
    end)

    it("refuses an untransferable table key", function()
      transfer_error(loom.encode, { [io.stdout] = true })
      transfer_error(loom.encode, { [coroutine.create(print)] = true })
    end)

    it("refuses inside a cyclic table without looping", function()
      local t = { name = "cycle" }
      t.self = t
      t.conn = io.stdout
      local err = transfer_error(loom.encode, t)
      assert_contains(err.message, "cannot transfer a userdata")
    end)

    it("has a tostring that shows kind and message", function()
      local err = transfer_error(loom.encode, { conn = io.stdout })
      local text = tostring(err)
      assert_contains(text, "transfer")
      assert_contains(text, err.message)
    end)

    it("leaves the encoder working normally after a refusal", function()
      local shared = { "shared" }
      transfer_error(loom.encode, { shared, io.stdout })
      local got = loom.decode(loom.encode { shared, shared })
      assert.are.equal(got[1], got[2])
      assert.are_not.equal(shared, got[1])
    end)

    it("refuses an untransferable argument of core._call_in_new_state", function()
      transfer_error(core._call_in_new_state, function(x) return x end, { conn = io.stdout })
    end)

    it("refuses an untransferable result of core._call_in_new_state", function()
      transfer_error(core._call_in_new_state, function() return io.stdout end)
    end)
  end)

  describe("decode", function()
    local function decodes_or_refuses(opts)
      return function(bytes)
        local ok, err = pcall(loom.decode, bytes, opts)
        if not ok and not h.is_transfer_error(err) then
          return "raised " .. h.describe_error(err)
        end
      end
    end

    local function refuses(opts, malformed)
      return function(bytes)
        local ok, err = pcall(loom.decode, bytes, opts)
        if ok then return "decoded without an error" end
        if not h.is_transfer_error(err) then return "raised " .. h.describe_error(err) end
        if malformed and err.message:sub(1, #"malformed") ~= "malformed" then
          return "the message does not start with 'malformed': " .. err.message
        end
      end
    end

    describe("the function gate", function()
      it("refuses a function without {functions = true}", function()
        local message = loom.encode(sample_function())
        transfer_error(loom.decode, message)
        transfer_error(loom.decode, message, {})
        transfer_error(loom.decode, message, { functions = false })
      end)

      it("refuses a function nested in a table", function()
        transfer_error(loom.decode, loom.encode { handlers = { on_done = sample_function() } })
      end)

      it("refuses a function inside a metatable", function()
        local t = setmetatable({}, { __index = function() return 1 end })
        transfer_error(loom.decode, loom.encode(t))
      end)

      it("decodes functions with {functions = true}", function()
        local got = loom.decode(loom.encode(sample_function()), { functions = true })
        assert.are.equal(16, got(2))
      end)
    end)

    describe("argument checking", function()
      it("raises a Lua argument error for input that is not a string", function()
        for _, value in ipairs { {}, true, print } do
          local ok, err = pcall(loom.decode, value)
          assert.is_false(ok)
          assert.is_string(err)
          assert_contains(err, "bad argument #1")
        end
      end)

      it("raises a Lua argument error for nil input", function()
        local ok, err = pcall(loom.decode, nil)
        assert.is_false(ok)
        assert.is_string(err)
        assert_contains(err, "bad argument #1")
      end)

      it("raises a Lua argument error for options that are not a table", function()
        local ok, err = pcall(loom.decode, loom.encode(1), 5)
        assert.is_false(ok)
        assert.is_string(err)
        assert_contains(err, "bad argument #2")
      end)
    end)

    describe("malformed input", function()
      it("refuses the empty string", function()
        local err = transfer_error(loom.decode, "")
        assert.are.equal("malformed", err.message:sub(1, 9))
      end)

      it("refuses text that is not a loom message", function()
        local err = transfer_error(loom.decode, "hello, world")
        assert.are.equal("malformed", err.message:sub(1, 9))
      end)

      it("refuses a header with nothing after it", function()
        local err = transfer_error(loom.decode, loom.encode(nil):sub(1, 5))
        assert.are.equal("malformed", err.message:sub(1, 9))
      end)

      it("refuses another version of the format", function()
        local message = loom.encode { 1, 2, 3 }
        local version = message:byte(5)
        for _, other in ipairs { (version + 1) % 256, (version + 255) % 256, 0, 255 } do
          if other ~= version then
            transfer_error(loom.decode, message:sub(1, 4) .. string.char(other) .. message:sub(6))
          end
        end
      end)

      it("survives bytes after a complete message", function()
        math.randomseed(20240600)
        local message = loom.encode { 1, 2, 3 }
        assert_no_problem(h.random_inputs(200, message, 16), decodes_or_refuses(), 200)
      end)
    end)

    describe("every truncation", function()
      local SCALARS = table.pack(nil, true, false, 0, -1, math.maxinteger, math.mininteger,
        0.1, -0.0, "", "text", string.rep("s", 300))

      it("of scalar messages is refused as malformed", function()
        for i = 1, SCALARS.n do
          local message = loom.encode(SCALARS[i])
          assert_no_problem(h.truncations(message), refuses(nil, true), #message)
        end
      end)

      it("of a message with nested tables, a cycle and shared metatables is refused as malformed", function()
        local message = loom.encode(sample_data())
        assert_no_problem(h.truncations(message), refuses(nil, true), #message)
      end)

      it("of a function message is refused without {functions = true}", function()
        local message = loom.encode(sample_function())
        assert_no_problem(h.truncations(message), refuses(nil), #message)
        assert_no_problem(h.truncations(message), refuses { functions = false }, #message)
      end)

      it("of a function message is refused cleanly with {functions = true}", function()
        local message = loom.encode(sample_function())
        assert_no_problem(h.truncations(message), refuses { functions = true }, #message)
      end)
    end)

    describe("every single-byte change #exhaustive", function()
      it("of a message with nested tables, a cycle and shared metatables decodes or is refused", function()
        local message = loom.encode(sample_data())
        assert_no_problem(h.byte_changes(message), decodes_or_refuses(), #message * 255)
      end)

      it("of scalar messages decodes or is refused", function()
        for _, v in ipairs { 1, -1.5, math.mininteger, "text", string.rep("s", 300) } do
          local message = loom.encode(v)
          assert_no_problem(h.byte_changes(message), decodes_or_refuses(), #message * 255)
        end
      end)

      it("of a function message decodes or is refused without {functions = true}", function()
        local message = loom.encode { f = sample_function(), data = { 1, 2 } }
        assert_no_problem(h.byte_changes(message), decodes_or_refuses(), #message * 255)
      end)
    end)

    describe("random input #exhaustive", function()
      local header = loom.encode(nil):sub(1, 5)

      it("of 50,000 random byte strings decodes or is refused", function()
        math.randomseed(20240601)
        assert_no_problem(h.random_inputs(50000, "", 64), decodes_or_refuses(), 50000)
      end)

      it("of 50,000 random byte strings after a valid header decodes or is refused", function()
        math.randomseed(20240602)
        assert_no_problem(h.random_inputs(50000, header, 64), decodes_or_refuses(), 50000)
      end)

      it("of 20,000 random mutations of valid messages decodes or is refused", function()
        math.randomseed(20240603)
        local data = loom.encode(sample_data())
        local with_function = loom.encode { f = sample_function(), data = { 1, 2 } }
        assert_no_problem(h.random_mutations(data, 10000, 8), decodes_or_refuses(), 10000)
        assert_no_problem(h.random_mutations(with_function, 10000, 8), decodes_or_refuses(), 10000)
      end)
    end)
  end)
end)
