-- The API reference (issue 14, item 5): LDoc builds it from the comments of
-- lua/loom/init.lua (config.ld), and every function the module exports
-- appears in it: the module's fields, and the methods of every class, found
-- by walking what the module exports (so a function added later and left
-- undocumented fails this spec). Names that begin with "_" are internal.

local loom = require "loom"
local core = require "loom.core"
local helpers = require "spec.support.helpers"

local shell_quote, run = helpers.shell_quote, helpers.run

-- Builds the reference into a temporary directory once; returns the set of
-- its anchors ("executor", "Executor:submit", ...).
local anchors
local function reference()
  if anchors then return anchors end
  local out, status = run("mktemp -d")
  assert.are.equal(0, status, out)
  local dir = out:match("^(%S+)\n$")
  out, status = run("ldoc --fatalwarnings -d " .. shell_quote(dir) .. " .")
  local html = io.open(dir .. "/index.html", "rb")
  local text = html and html:read("a")
  if html then html:close() end
  run("rm -rf " .. shell_quote(dir))
  assert.are.equal(0, status, "ldoc failed:\n" .. out)
  assert.is_string(text, "ldoc wrote no index.html:\n" .. out)
  anchors = {}
  for name in text:gmatch('<a name%s*=%s*"([^"]+)"') do anchors[name] = true end
  return anchors
end

-- The public functions (and fields) of the module and of every class it
-- exports: "name" for the module, "Class:method" for methods.
local function exported()
  local names = {}
  local function public(k) return type(k) == "string" and k:sub(1, 1) ~= "_" end
  for k in pairs(loom) do
    if public(k) then names[#names + 1] = k end
  end
  local classes = {}
  -- classes the core exports by name (Executor, Future, ...)
  for k, v in pairs(core) do
    if type(v) == "table" and k:match("^%u") and k ~= "Error" then classes[k] = v end
  end
  -- classes of the objects the module makes, named by their metatables
  local function class_of(obj)
    local mt = getmetatable(obj)
    if type(mt) == "table" and type(mt.__name) == "string" and type(mt.__index) == "table" then
      classes[mt.__name:gsub("^loom%.", "")] = mt.__index
    end
  end
  class_of(loom.channel())
  if loom.completion_queue then class_of(loom.completion_queue()) end
  for class, methods in pairs(classes) do
    for k, v in pairs(methods) do
      if public(k) and type(v) == "function" then names[#names + 1] = class .. ":" .. k end
    end
  end
  table.sort(names)
  return names
end

local function undocumented(names, set)
  local missing = {}
  for _, name in ipairs(names) do
    if not set[name] then missing[#missing + 1] = name end
  end
  return missing
end

describe("the API reference", function()
  it("builds with LDoc, without warnings", function()
    local set = reference()
    assert.is_true(set.executor)
    assert.is_true(set["Executor:submit"])
  end)

  it("documents every function the module and its classes export", function()
    local names = exported()
    -- the walk finds the classes and methods it must
    for _, name in ipairs { "executor", "wait", "Error", "Executor:submit", "Executor:map",
                            "Future:result", "Channel:push" } do
      assert.is_truthy(helpers.contains(" " .. table.concat(names, " ") .. " ", " " .. name .. " "), name)
    end
    local missing = undocumented(names, reference())
    assert.are.same({}, missing, "not in the reference: " .. table.concat(missing, ", "))
  end)

  it("would report a function added without documentation", function()
    local names = exported()
    names[#names + 1] = "Executor:undocumented_method"
    assert.are.same({ "Executor:undocumented_method" }, undocumented(names, reference()))
  end)

  it("is linked from the README, which lists ex:workers() and loom.Error", function()
    local f = assert(io.open("README.md", "rb"))
    local readme = f:read("a")
    f:close()
    helpers.assert_contains(readme, "make doc")
    helpers.assert_contains(readme, "build/doc/index.html")
    helpers.assert_contains(readme, "ex:workers()")
    helpers.assert_contains(readme, "loom.Error")
  end)
end)
