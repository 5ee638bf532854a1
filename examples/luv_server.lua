-- A TCP server on a luv (libuv) loop that stays responsive while loom
-- does the heavy work: a cheap request is answered at once, in the loop;
-- an expensive one runs on a loom worker, and the coroutine that serves
-- it waits with loom.luv's await, which lets the loop run meanwhile.
--
--   lua5.4 examples/luv_server.lua [port]        (default 7300; 0: any)
--
-- One request per line:
--   ping        -> pong                         (at once)
--   primes N    -> primes below N: K            (on a loom worker)
--
-- Try, in another terminal (nc from netcat-openbsd):
--   printf 'primes 20000000\n' | nc -q 30 127.0.0.1 7300 &
--   printf 'ping\n' | nc -q 1 127.0.0.1 7300    # pong, at once
--
-- Loaded with dofile (not run as a script), it only returns its parts, so
-- that a spec can serve with them (spec/luv_spec.lua).
local loom = require "loom"
local uv = require "luv"
local await = require("loom.luv").await

local M = {}

-- Counts the primes below n: plain Lua, copied to a worker and run there.
local function count_primes(n)
  local count = 0
  for k = 2, n - 1 do
    local prime = true
    for d = 2, math.floor(math.sqrt(k)) do
      if k % d == 0 then prime = false break end
    end
    if prime then count = count + 1 end
  end
  return count
end
M.count_primes = count_primes

-- Answered in the loop: name -> function(argument) -> answer.
M.cheap = {
  ping = function() return "pong" end,
}

-- Run on loom: name -> function(argument) -> answer, copied to a worker.
M.expensive = {
  primes = function(n)
    n = math.tointeger(tonumber(n))
    if not n or n < 0 then error("primes needs a whole number", 0) end
    return ("primes below %d: %d"):format(n, count_primes(n))
  end,
}

local function answer(client, text)
  if not client:is_closing() then client:write(text .. "\n") end
end

local function serve_line(ex, client, line)
  local name, argument = line:match("^(%S+)%s*(.-)%s*$")
  if M.cheap[name] then
    answer(client, M.cheap[name](argument))
  elseif M.expensive[name] then
    coroutine.wrap(function()
      local ok, result = pcall(await, ex:submit(M.expensive[name], argument))
      answer(client, ok and tostring(result) or "error: " .. tostring(result))
    end)()
  else
    answer(client, "error: unknown request " .. ("%q"):format(line))
  end
end

-- Serves on host:port (port 0: any free one) with executor ex; returns the
-- listening handle and its port.
function M.serve(ex, port, host)
  local server = uv.new_tcp()
  assert(server:bind(host or "127.0.0.1", port or 0))
  assert(server:listen(64, function(err)
    assert(not err, err)
    local client = uv.new_tcp()
    server:accept(client)
    local pending = ""
    client:read_start(function(rerr, data)
      if rerr or not data then   -- an error or the end: hang up
        client:close()
        return
      end
      pending = pending .. data
      for line in pending:gmatch("([^\n]*)\n") do
        serve_line(ex, client, (line:gsub("\r$", "")))
      end
      pending = pending:match("[^\n]*$")
    end)
  end))
  return server, server:getsockname().port
end

local function main(port)
  local ex <close> = loom.executor()
  local _, bound = M.serve(ex, tonumber(port) or 7300)
  print(("listening on 127.0.0.1:%d (%d workers)"):format(bound, ex:workers()))
  uv.run()
end

if arg and arg[0] and arg[0]:match("luv_server%.lua$") then main(arg[1]) end
return M
