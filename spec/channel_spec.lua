-- loom.channel: a FIFO queue shared between states.

local loom = require "loom"
local helpers = require "spec.support.helpers"

local PATIENCE = helpers.PATIENCE

describe("loom.channel", function()
  it("is first in, first out", function()
    local ch = loom.channel()
    for i = 1, 5 do ch:push(i) end
    for i = 1, 5 do assert.are.equal(i, ch:pop()) end
  end)

  it("counts the values waiting with #", function()
    local ch = loom.channel()
    assert.are.equal(0, #ch)
    ch:push("a")
    ch:push("b")
    assert.are.equal(2, #ch)
    ch:pop()
    assert.are.equal(1, #ch)
  end)

  it("pushes a copy of the value", function()
    local ch = loom.channel()
    local t = { n = 1, inner = { "x" } }
    ch:push(t)
    t.n = 2
    t.inner[1] = "changed"
    local back = ch:pop()
    assert.are.same({ n = 1, inner = { "x" } }, back)
    assert.is_false(rawequal(t, back))
  end)

  it("carries any transferable value", function()
    local ch = loom.channel()
    local values = { false, 0, -0.5, "", "a\0b", { 1, { 2 } } }
    for _, v in ipairs(values) do ch:push(v) end
    for _, v in ipairs(values) do assert.are.same(v, ch:pop()) end
    local k = 3
    ch:push(function(x) return x * k end)
    assert.are.equal(12, ch:pop()(4))
  end)

  it("refuses to push nil", function()
    local ch = loom.channel()
    helpers.error_of(ch.push, ch, nil)
    helpers.error_of(ch.push, ch)
    assert.are.equal(0, #ch)
  end)

  it("refuses a value that cannot be transferred", function()
    local ch = loom.channel()
    local err = helpers.loom_error("transfer", ch.push, ch, { file = io.stdout })
    helpers.assert_contains(err.message, "userdata")
    assert.are.equal(0, #ch)
  end)

  describe("ch:pop with a timeout", function()
    it("returns nil, 'timeout' when nothing arrives", function()
      local ch = loom.channel()
      assert.are.same({ n = 2, nil, "timeout" }, table.pack(ch:pop(0.01)))
      assert.are.same({ n = 2, nil, "timeout" }, table.pack(ch:pop(0)))
      assert.are.same({ n = 2, nil, "timeout" }, table.pack(ch:pop(-1)))
    end)

    it("returns a waiting value at once", function()
      local ch = loom.channel()
      ch:push("here")
      assert.are.equal("here", ch:pop(0))
    end)
  end)

  describe("ch:close", function()
    it("lets the values already in it be popped, then pop gives nil, 'closed'", function()
      local ch = loom.channel()
      ch:push(1)
      ch:push(2)
      ch:close()
      assert.are.equal(2, #ch)
      assert.are.equal(1, ch:pop())
      assert.are.equal(2, ch:pop())
      assert.are.same({ n = 2, nil, "closed" }, table.pack(ch:pop()))
      assert.are.same({ n = 2, nil, "closed" }, table.pack(ch:pop(0)))
      assert.are.same({ n = 2, nil, "closed" }, table.pack(ch:pop(PATIENCE)))
    end)

    it("makes push raise a closed error", function()
      local ch = loom.channel()
      ch:close()
      local err = helpers.loom_error("closed", ch.push, ch, "late")
      helpers.assert_contains(tostring(err), "closed")
      assert.are.equal(0, #ch)
    end)

    it("wakes every task waiting to pop", function()
      local s = helpers.scope(finally)
      local ex = s:executor(2)
      local ch, started = s:channel(), loom.channel()
      local function waiter()
        started:push(true)
        return ch:pop(PATIENCE)
      end
      local a, b = ex:submit(waiter), ex:submit(waiter)
      helpers.pop(started)
      helpers.pop(started)
      ch:close()
      assert.are.same({ n = 2, nil, "closed" }, table.pack(a:result()))
      assert.are.same({ n = 2, nil, "closed" }, table.pack(b:result()))
    end)

    it("fails a task that pushes afterwards with a closed error", function()
      local s = helpers.scope(finally)
      local ex = s:executor(1)
      local ch = loom.channel()
      ch:close()
      local f = ex:submit(function() ch:push("late") end)
      helpers.loom_error("closed", f.result, f)
    end)
  end)

  describe("with a capacity", function()
    it("accepts pushes up to its capacity without waiting", function()
      local ch = loom.channel(2)
      ch:push("a")
      ch:push("b")
      assert.are.equal(2, #ch)
      assert.are.same({ n = 2, nil, "timeout" }, table.pack(loom.channel(1):pop(0)))
    end)

    it("makes push wait while the channel is full", function()
      local s = helpers.scope(finally)
      local ex = s:executor(1)
      local ch, progress = s:channel(1), loom.channel()
      local producer = ex:submit(function()
        for i = 1, 3 do
          ch:push(i)
          progress:push(i)
        end
        return "all pushed"
      end)
      -- The first push went through; the second waits for room.
      assert.are.equal(1, helpers.pop(progress))
      helpers.loom_error("timeout", producer.result, producer, 0.01)
      assert.are.equal(1, #ch)
      assert.are.same({ n = 2, nil, "timeout" }, table.pack(progress:pop(0)))

      assert.are.equal(1, ch:pop())
      assert.are.equal(2, helpers.pop(progress))
      assert.are.equal(2, ch:pop())
      assert.are.equal(3, helpers.pop(progress))
      assert.are.equal(3, ch:pop())
      assert.are.equal("all pushed", producer:result())
    end)

    it("wakes a waiting push with a closed error when closed", function()
      local s = helpers.scope(finally)
      local ex = s:executor(1)
      local ch, progress = s:channel(1), loom.channel()
      local producer = ex:submit(function()
        ch:push("fits")
        progress:push(true)
        ch:push("waits")
      end)
      helpers.pop(progress)
      ch:close()
      helpers.loom_error("closed", producer.result, producer)
      assert.are.equal("fits", ch:pop())
    end)
  end)

  describe("crossing between states", function()
    it("is the same channel when passed as an argument", function()
      local s = helpers.scope(finally)
      local ex = s:executor(1)
      local ch = loom.channel()
      ch:push("from the test")
      local f = ex:submit(function(c)
        local got = c:pop()
        c:push("from the task")
        return got
      end, ch)
      assert.are.equal("from the test", f:result())
      assert.are.equal("from the task", ch:pop())
    end)

    it("is the same channel when captured as an upvalue", function()
      local s = helpers.scope(finally)
      local ex = s:executor(1)
      local ch = loom.channel()
      ex:submit(function() ch:push("upvalue") end):result()
      assert.are.equal("upvalue", ch:pop())
    end)

    it("is the same channel inside a table", function()
      local s = helpers.scope(finally)
      local ex = s:executor(1)
      local ch = loom.channel()
      ex:submit(function(t) t.deep.ch:push(t.deep.word) end,
        { deep = { ch = ch, word = "nested" } }):result()
      assert.are.equal("nested", ch:pop())
    end)

    it("is the same channel when returned as a result", function()
      local s = helpers.scope(finally)
      local ex = s:executor(1)
      local made = ex:submit(function()
        local ch = require("loom").channel()
        ch:push("made in a task")
        return ch
      end):result()
      assert.are.equal("made in a task", made:pop(PATIENCE))
      -- The task's own reference is gone; the channel lives on.
      collectgarbage()
      ex:submit(function() collectgarbage() end):result()
      ex:submit(function(c) c:push("sent back") end, made):result()
      assert.are.equal("sent back", made:pop(PATIENCE))
    end)

    it("keeps its queue when pushed through another channel", function()
      local outer, inner = loom.channel(), loom.channel()
      inner:push("inside")
      outer:push(inner)
      local back = outer:pop()
      assert.are.equal("inside", back:pop(0))
      back:push("again")
      assert.are.equal("again", inner:pop(0))
    end)

    it("streams results from a task while it runs", function()
      local s = helpers.scope(finally)
      local ex = s:executor(1)
      local ch = loom.channel()
      local f = ex:submit(function()
        for i = 1, 100 do ch:push(i) end
        ch:close()
        return "streamed"
      end)
      local got = {}
      while true do
        local v = ch:pop(PATIENCE)
        if v == nil then break end
        got[#got + 1] = v
      end
      assert.are.equal(100, #got)
      for i = 1, 100 do assert.are.equal(i, got[i]) end
      assert.are.equal("streamed", f:result())
    end)

    it("serves 100 tasks waiting on it", function()
      local s = helpers.scope(finally)
      local ex = s:executor(2)
      local ch = s:channel()
      local futs = {}
      for i = 1, 100 do
        futs[i] = ex:submit(function()
          local v, why = ch:pop(PATIENCE)
          if v == nil then error("no value: " .. tostring(why), 0) end
          return v
        end)
      end
      for i = 1, 100 do ch:push(i) end
      local seen = {}
      for i = 1, 100 do
        local v = futs[i]:result()
        assert.is_nil(seen[v])
        seen[v] = true
      end
      for i = 1, 100 do assert.is_true(seen[i]) end
      assert.are.equal(0, #ch)
    end)
  end)
end)
