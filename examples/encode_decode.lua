-- loom.encode / loom.decode: the transfer format as a serializer.
local loom = require "loom"

local config = { name = "loom", sizes = { 1, 2.5, -0.0, math.maxinteger } }
config.self = config                      -- cycles are kept
local bytes = loom.encode(config)
local copy = loom.decode(bytes)
print(#bytes .. " bytes", copy.name, copy.sizes[4], copy.self == copy)

-- Functions travel as bytecode; decode refuses them unless asked.
local double = loom.encode(function(x) return 2 * x end)
print(pcall(loom.decode, double))
print(loom.decode(double, { functions = true })(21))

-- Malformed input is an error, never a crash.
print(pcall(loom.decode, bytes:sub(1, 10)))
