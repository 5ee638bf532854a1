-- Helpers for spec/transfer_spec.lua: comparing a value graph with its copy,
-- building and measuring deep chains, and generating damaged or random
-- messages for the decoder.

local M = {}

----------------------------------------------------------------------------
-- Describing values

--- Hex dump of (at most `limit` bytes of) a byte string, for failure messages.
function M.hex(s, limit)
  limit = limit or 48
  local shown = s:sub(1, limit):gsub(".", function(c)
    return string.format("%02x", c:byte())
  end)
  if #s > limit then
    shown = shown .. string.format("... (%d bytes)", #s)
  end
  return shown
end

--- The 8 bytes of a float as hex: two floats give the same text exactly when
--- they are bit-identical (which tells NaNs and the two zeros apart).
function M.float_bits(x)
  return M.hex(string.pack(">d", x))
end

--- Every byte value, 0 to 255, once and in order.
M.ALL_BYTES = (function()
  local bytes = {}
  for b = 0, 255 do bytes[#bytes + 1] = string.char(b) end
  return table.concat(bytes)
end)()

--- True when `err` is an error that loom raised for a refused or malformed
--- transfer: a table with kind "transfer" and a string message.
function M.is_transfer_error(err)
  return type(err) == "table" and err.kind == "transfer" and type(err.message) == "string"
end

--- A one-line description of any error value.
function M.describe_error(err)
  if type(err) == "table" then
    return string.format("table error {kind = %s, message = %s}", tostring(err.kind), tostring(err.message))
  end
  return string.format("%s error %s", type(err), tostring(err))
end

local function key_label(k)
  local kind = math.type(k) or type(k)
  if kind == "float" then return string.format("float %a", k) end
  if kind == "string" then return string.format("string %q", k) end
  if kind == "table" or kind == "function" then return kind end
  return kind .. " " .. tostring(k)
end

--- The sorted labels of a table's raw keys, with number subtypes ("integer 1",
--- "float 0x1.8p+0", "string \"a\"", "boolean true"; table and function keys
--- are just "table" and "function").
function M.key_signature(t)
  local labels = {}
  for k in next, t do labels[#labels + 1] = key_label(k) end
  table.sort(labels)
  return labels
end

----------------------------------------------------------------------------
-- Comparing an original with its copy

local function same_scalar(x, y)
  if math.type(x) ~= math.type(y) then return false end
  if math.type(x) == "float" then
    return string.pack(">d", x) == string.pack(">d", y)
  end
  return x == y
end

--- Checks that `copy` is a faithful copy of `original`: the same shape, the
--- same raw keys and values (numbers keep their subtype, floats every bit),
--- the same metatables, and the same sharing (something reached twice in the
--- original is one thing reached twice in the copy). Every table of the copy
--- must be a new table. Lua functions are matched by identity only (their
--- behaviour is tested separately); table and function keys only by number.
--- Returns true, or false and where the two differ.
function M.same_graph(original, copy)
  local to_copy, to_original = {}, {}

  local function walk(x, y, path)
    if type(x) ~= type(y) then
      return false, string.format("%s: a %s became a %s", path, type(x), type(y))
    end
    if type(x) == "number" then
      if same_scalar(x, y) then return true end
      return false, string.format("%s: %s (%s) became %s (%s)", path,
        tostring(x), math.type(x), tostring(y), math.type(y))
    end
    if type(x) ~= "table" and type(x) ~= "function" then
      if x == y then return true end
      return false, string.format("%s: %q became %q", path, tostring(x), tostring(y))
    end

    if to_copy[x] ~= nil or to_original[y] ~= nil then
      if to_copy[x] == y then return true end
      return false, path .. ": the sharing between values differs"
    end
    to_copy[x], to_original[y] = y, x
    if type(x) == "function" then return true end

    if rawequal(x, y) then
      return false, path .. ": the copy is the original table itself"
    end
    local object_keys = 0
    for k, v in next, x do
      if type(k) == "table" or type(k) == "function" then
        object_keys = object_keys + 1
      else
        local w = rawget(y, k)
        local where = string.format("%s[%s]", path, key_label(k))
        if w == nil then return false, where .. ": missing in the copy" end
        local ok, why = walk(v, w, where)
        if not ok then return false, why end
      end
    end
    for k in next, y do
      if type(k) == "table" or type(k) == "function" then
        object_keys = object_keys - 1
      elseif rawget(x, k) == nil then
        return false, string.format("%s[%s]: extra in the copy", path, key_label(k))
      end
    end
    if object_keys ~= 0 then
      return false, path .. ": a different number of table or function keys"
    end

    local mx, my = debug.getmetatable(x), debug.getmetatable(y)
    if mx ~= nil or my ~= nil then
      return walk(mx, my, path .. ":metatable")
    end
    return true
  end

  return walk(original, copy, "value")
end

----------------------------------------------------------------------------
-- Deep chains

--- A chain of `depth` tables, each outer table linked to the next inner one
--- by `link(outer, inner)`; returns the outermost.
function M.chain(depth, link)
  local t = {}
  for _ = 2, depth do
    local outer = {}
    link(outer, t)
    t = outer
  end
  return t
end

--- How many tables a chain holds, following `step(t)` from table to table.
--- Self-contained (it may be sent to another state).
function M.chain_length(t, step)
  local n = 0
  while type(t) == "table" do
    n = n + 1
    t = step(t)
  end
  return n
end

----------------------------------------------------------------------------
-- Inputs for the decoder. Each generator is an iterator of (label, bytes).

--- Every proper prefix of `message`, from the empty string up.
function M.truncations(message)
  local n = -1
  return function()
    n = n + 1
    if n < #message then
      return string.format("first %d of %d bytes", n, #message), message:sub(1, n)
    end
  end
end

--- `message` with one byte changed, for every position and every other value.
function M.byte_changes(message)
  return coroutine.wrap(function()
    for pos = 1, #message do
      local old = message:byte(pos)
      local before, after = message:sub(1, pos - 1), message:sub(pos + 1)
      for new = 0, 255 do
        if new ~= old then
          coroutine.yield(string.format("byte %d changed from 0x%02x to 0x%02x", pos, old, new),
            before .. string.char(new) .. after)
        end
      end
    end
  end)
end

local function random_bytes(n)
  local bytes = {}
  for i = 1, n do bytes[i] = math.random(0, 255) end
  return string.char(table.unpack(bytes))
end

--- `count` strings of random bytes, each `prefix` followed by 0 to
--- `max_length` random bytes. Seed math.random first for reproducibility.
function M.random_inputs(count, prefix, max_length)
  local i = 0
  return function()
    i = i + 1
    if i <= count then
      return string.format("random input %d", i), prefix .. random_bytes(math.random(0, max_length))
    end
  end
end

--- `count` copies of `message`, each with 1 to `max_changes` random bytes set
--- to random values.
function M.random_mutations(message, count, max_changes)
  local i = 0
  return function()
    i = i + 1
    if i > count then return nil end
    local bytes = { message:byte(1, -1) }
    for _ = 1, math.random(1, max_changes) do
      bytes[math.random(1, #bytes)] = math.random(0, 255)
    end
    return string.format("random mutation %d", i), string.char(table.unpack(bytes))
  end
end

--- Runs `check(bytes)` on every input; `check` returns nil when the input was
--- handled well, or a description of the problem. Returns the first problem
--- found (nil when none) and how many inputs were tried.
function M.first_problem(inputs, check)
  local tried = 0
  for label, bytes in inputs do
    tried = tried + 1
    local problem = check(bytes)
    if problem then
      return string.format("%s: %s (input %s)", label, problem, M.hex(bytes)), tried
    end
  end
  return nil, tried
end

return M
