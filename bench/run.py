"""Runs loom's benchmark suite and prints one table (see bench/README.md).

Started by bench/run.sh (`make bench`). It runs bench/loom_bench.lua and
bench/py_bench.py as child processes, the W5 memory probes each in a fresh
process, then takes the median of every measurement, works out the ratios
and targets, prints the table and writes every raw sample to
bench/results.json.

Environment: LUA (default lua5.4), RUNS (default 5, at least 3) and W2_RUNS
(default 3, at least 3): the number of recorded runs after the warm-up.
`python3 bench/run.py --report` re-prints the table of bench/results.json
without running anything.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LUA = os.environ.get("LUA", "lua5.4")
RUNS = max(3, int(os.environ.get("RUNS", "5")))
W2_RUNS = max(3, int(os.environ.get("W2_RUNS", "3")))


def run_json(cmd):
    """Runs a benchmark child; its stdout is one JSON document, its stderr
    (progress) goes straight to ours."""
    out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, check=True,
                         text=True)
    return json.loads(out.stdout)


def loadavg():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                              cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


# --------------------------------------------------------------------------
# Formatting. Every figure is kept in a base unit (per second, seconds,
# bytes) for the ratios, and shown in the unit that reads best.

def num(v):
    """Three significant digits, without switching to exponent notation."""
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def si(v):
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= factor:
            return f"{num(v / factor)} {prefix} "
    return f"{num(v)} "


def show(value, unit):
    if unit.endswith("/s"):
        return si(value) + unit
    scale = {"s": 1, "ms": 1e3, "µs": 1e6, "B/task": 1}[unit]
    return f"{num(value * scale)} {unit}"


def ratio(a, b):
    return f"{num(a / b)}x" if a is not None and b else "—"


# --------------------------------------------------------------------------
def collect():
    """Runs every child and returns (lua, python, lua_mem, python_mem)."""
    print(f"loom bench: {RUNS} runs ({W2_RUNS} for W2) after a warm-up; "
          "this takes a few minutes", file=sys.stderr, flush=True)
    lua = run_json([LUA, "bench/loom_bench.lua", "all", str(RUNS), str(W2_RUNS)])
    # W6 runs in a luv loop of its own (skipped, and said so, without luv)
    lua["w6"] = run_json([LUA, "bench/loom_bench.lua", "w6", str(RUNS)])["w6"]
    # W5 memory: one fresh process per sample (VmHWM is per process); the
    # first is the warm-up (page cache, dynamic loader) and is dropped.
    lua_mem = [run_json([LUA, "bench/loom_bench.lua", "mem"])
               for _ in range(RUNS + 1)][1:]
    py = run_json([sys.executable, "bench/py_bench.py", "all", str(RUNS),
                   str(W2_RUNS)])
    py_mem = [run_json([sys.executable, "bench/py_bench.py", "mem"])
              for _ in range(RUNS + 1)][1:]
    return lua, py, lua_mem, py_mem


def figures(lua, py, lua_mem, py_mem):
    """Every figure of the table: key -> {value, unit, samples}."""
    fig = {}
    med = statistics.median

    def rate(key, samples, n, unit):
        fig[key] = {"value": n / med(samples), "unit": unit, "samples": samples}

    def secs(key, samples, unit, per=1):
        fig[key] = {"value": med(samples) / per, "unit": unit,
                    "samples": samples}

    n = lua["w1"]["n"]
    rate("w1.lua.serial", lua["w1"]["serial"], n, "calls/s")
    rate("w1.loom.submit", lua["w1"]["submit"], n, "tasks/s")
    rate("w1.loom.map256", lua["w1"]["map256"], n, "calls/s")
    rate("w1.loom.map256p", lua["w1"]["map256p"], n, "calls/s")
    rate("w1.lua.ipairs", lua["w1"]["ipairs"], n, "values/s")
    rate("w1.py.serial", py["w1"]["serial"], n, "calls/s")
    rate("w1.pyT.submit", py["w1"]["thread_submit"], n, "tasks/s")
    rate("w1.pyT.map", py["w1"]["thread_map"], n, "calls/s")
    rate("w1.pyP.map256", py["w1"]["process_map256"], n, "calls/s")
    rate("w1.loomP.submit", lua["w1"]["psubmit"], n, "tasks/s")
    rate("w1.loomP.map256", lua["w1"]["pmap256"], n, "calls/s")
    rate("w1.pyP.submit", py["w1"]["process_submit"], n, "tasks/s")

    secs("w2.lua.serial", lua["w2"]["serial"], "s")
    for w in (1, 2, 4, 8):
        secs(f"w2.loom.{w}", lua["w2"][f"w{w}"], "s")
        secs(f"w2.pyP.{w}", py["w2"][f"process{w}"], "s")
    secs("w2.lua.procs2", lua["w2"]["procs2"], "s")
    secs("w2.loomP.2", lua["w2"]["process2"], "s")
    secs("w2.py.serial", py["w2"]["serial"], "s")
    secs("w2.pyT.2", py["w2"]["thread2"], "s")

    for side, src in (("lua", lua), ("py", py)):
        pool = "loom" if side == "lua" else "pyP"
        secs(f"w3.{side}.copy", src["w3"]["copy"], "ms")
        secs(f"w3.{side}.rep", src["w3"]["rep"], "ms")
        secs(f"w3.{side}.sumloop", src["w3"]["sumloop"], "ms")
        secs(f"w3.{side}.codec", src["w3"]["codec"], "ms")
        for m in ("sum", "roundtrip", "string"):
            secs(f"w3.{pool}.{m}", src["w3"][m], "ms")
    secs("w3.lua.sub", lua["w3"]["sub"], "ms")
    for m in ("sum", "roundtrip", "string"):
        secs(f"w3.loomP.{m}", lua["w3"]["p" + m], "ms")

    n = lua["w4"]["n"]
    secs("w4.loom", lua["w4"]["roundtrip"], "µs", n)
    secs("w4.pyT", py["w4"]["thread"], "µs", n)
    secs("w4.pyP", py["w4"]["process"], "µs", n)
    secs("w4.loomP", lua["w4"]["process"], "µs", n)

    def mem(key, probes):
        per = [p["bytes_per_task"] for p in probes]
        fig[key] = {"value": med(per), "unit": "B/task", "samples": per,
                    "probes": probes}

    mem("w5.loom.mem", lua_mem)
    mem("w5.pyT.mem", py_mem)
    secs("w5.loom.startup", lua["w5"]["startup"], "ms")
    secs("w5.pyT.startup", py["w5"]["thread_startup"], "ms")
    secs("w5.pyP.startup", py["w5"]["process_startup"], "ms")

    w6 = lua.get("w6")
    if w6 and "skipped" not in w6:
        n = w6["n"]
        rate("w6.result", w6["result"], n, "tasks/s")
        rate("w6.on_done", w6["on_done"], n, "tasks/s")
        rate("w6.await", w6["await"], n, "tasks/s")
        secs("w6.timer.idle", w6["timer_idle"], "ms")
        secs("w6.timer.busy", w6["timer_busy"], "ms")
    secs("w5.loomP.startup", lua["w5"]["process_startup"], "ms")
    return fig


# --------------------------------------------------------------------------
# The table. A row names its figure and the references its ratios use:
# S = the serial Lua figure, T = Python ThreadPool, P = Python ProcessPool.
# A target is target(text, measured, op, threshold [, unit]); a note is a
# target with only a text.


def target(text, measured=None, op=None, threshold=None, unit="x"):
    return {"text": text, "measured": measured, "op": op,
            "threshold": threshold, "unit": unit}


def beside(r, what="rate"):
    """A note: a process-pool figure beside the thread pool's, in the row above."""
    return target(f"({num(r)}x the thread pool's {what})")


def speedup(fig, serial_key, key):
    return fig[serial_key]["value"] / fig[key]["value"]


def table_rows(fig, lua, py):
    v = lambda k: fig[k]["value"]  # noqa: E731
    w1n = lua["w1"]["n"]
    w3 = lua["w3"]
    rows = [
        ("W1", f"{w1n:,} calls of function(x) return x + 1 end, 2 workers"),
        ("serial Lua loop", "w1.lua.serial", "w1.lua.serial", None, None, []),
        ("loom submit+result", "w1.loom.submit", "w1.lua.serial",
         "w1.pyT.submit", None,
         [target(">= 15x Py thread", v("w1.loom.submit") / v("w1.pyT.submit"), ">=", 15),
          target(">= 0.25x serial", v("w1.loom.submit") / v("w1.lua.serial"), ">=", 0.25)]),
        ("loom map chunksize=256", "w1.loom.map256", "w1.lua.serial",
         "w1.pyT.map", "w1.pyP.map256",
         [target(">= 0.5x serial", v("w1.loom.map256") / v("w1.lua.serial"), ">=", 0.5)]),
        ("loom map chunksize=256, progress=fn", "w1.loom.map256p", "w1.lua.serial",
         None, None,
         [target(f"{v('w1.loom.map256p') / v('w1.loom.map256'):.2f}x the rate "
                 "without progress")]),
        ("loom process pool submit+result", "w1.loomP.submit", "w1.lua.serial",
         None, "w1.pyP.submit",
         [target(">= 10x Py process", v("w1.loomP.submit") / v("w1.pyP.submit"), ">=", 10),
          beside(v("w1.loomP.submit") / v("w1.loom.submit"))]),
        ("loom process pool map chunksize=256", "w1.loomP.map256", "w1.lua.serial",
         None, "w1.pyP.map256",
         [target(">= 5x Py process", v("w1.loomP.map256") / v("w1.pyP.map256"), ">=", 5),
          beside(v("w1.loomP.map256") / v("w1.loom.map256"))]),
        ("(diag.) ipairs over a ready table", "w1.lua.ipairs", "w1.lua.serial",
         None, None, [target("a floor for any map loop")]),
        ("Python serial loop", "w1.py.serial", "w1.lua.serial", None, None, []),
        ("Py ThreadPool submit+result", "w1.pyT.submit", "w1.lua.serial", None, None, []),
        ("Py ThreadPool map", "w1.pyT.map", "w1.lua.serial", None, None, []),
        ("Py ProcessPool submit+result", "w1.pyP.submit", "w1.lua.serial",
         None, None, []),
        ("Py ProcessPool map chunksize=256", "w1.pyP.map256", "w1.lua.serial",
         None, None, []),
        ("W2", f"{lua['w2']['calls']} calls of a CPU loop calibrated to "
               f"{lua['w2']['per_call_target']} s; wall time"),
        ("serial Lua", "w2.lua.serial", "w2.lua.serial", None, None,
         [target(f"{statistics.median(lua['w2']['cores_serial']):.2f} CPUs busy")]),
    ]
    for w in (1, 2, 4, 8):
        sp = speedup(fig, "w2.lua.serial", f"w2.loom.{w}")
        cores = statistics.median(lua["w2"][f"cores_w{w}"])
        # CPU time over wall time: below the worker count (and core count)
        # means the machine's other work, not loom, held the speedup down
        busy = f"{cores:.2f} CPUs busy"
        targets = ([target("speedup >= 1.9", sp, ">=", 1.9), target(f"({busy})")]
                   if w == 2 else [target(f"speedup {sp:.2f}x; {busy}")])
        rows.append((f"loom {w} worker{'s' if w > 1 else ''}", f"w2.loom.{w}",
                     "w2.lua.serial", "w2.pyT.2" if w == 2 else None,
                     f"w2.pyP.{w}", targets))
    ceiling = speedup(fig, "w2.lua.serial", "w2.lua.procs2")
    sp = speedup(fig, "w2.lua.serial", "w2.loomP.2")
    rows.append(("loom process pool 2 workers", "w2.loomP.2", "w2.lua.serial", None,
                 "w2.pyP.2",
                 [target("speedup >= 0.95x the ceiling", sp / ceiling, ">=", 0.95),
                  target(f"(speedup {sp:.2f}x)")]))
    sp = ceiling
    rows.append(("2 lua5.4 processes, no loom", "w2.lua.procs2", "w2.lua.serial",
                 None, None, [target(f"speedup {sp:.2f}x: the machine's ceiling")]))
    rows.append(("Python serial", "w2.py.serial", "w2.lua.serial", None, None, []))
    for w in (1, 2, 4, 8):
        sp = speedup(fig, "w2.py.serial", f"w2.pyP.{w}")
        rows.append((f"Py ProcessPool {w} worker{'s' if w > 1 else ''}",
                     f"w2.pyP.{w}", "w2.lua.serial", None, None,
                     [target(f"speedup {sp:.2f}x")]))
    sp = speedup(fig, "w2.py.serial", "w2.pyT.2")
    rows.append(("Py ThreadPool 2 workers (GIL)", "w2.pyT.2", "w2.lua.serial",
                 None, None, [target(f"speedup {sp:.2f}x")]))

    mib = w3["string_bytes"] / 2**20
    rows += [
        ("W3", f"{w3['floats']:,} floats and a {mib:g} MiB string sent to a "
               "task, 2 workers; time per call"),
        ("table.move copy (serial Lua)", "w3.lua.copy", "w3.lua.copy", None, None, []),
        ("loom send table, return sum", "w3.loom.sum", "w3.lua.copy", None,
         "w3.pyP.sum",
         [target("<= 0.5x copy", v("w3.loom.sum") / v("w3.lua.copy"), "<=", 0.5)]),
        ("loom table round trip", "w3.loom.roundtrip", "w3.lua.copy", None,
         "w3.pyP.roundtrip",
         [target("<= 1.2x copy", v("w3.loom.roundtrip") / v("w3.lua.copy"), "<=", 1.2)]),
        ("one copy s:sub(2) (serial Lua)", "w3.lua.sub", "w3.lua.sub", None, None, []),
        ("loom send string, return #s", "w3.loom.string", "w3.lua.sub", None,
         "w3.pyP.string",
         [target("<= 1.2x one copy", v("w3.loom.string") / v("w3.lua.sub"), "<=", 1.2)]),
        ("string.rep (serial Lua)", "w3.lua.rep", "w3.lua.sub", None, None, []),
        ("loom process pool: send table, return sum", "w3.loomP.sum", "w3.lua.copy",
         None, "w3.pyP.sum",
         [target("<= 1/5 Py process", v("w3.loomP.sum") / v("w3.pyP.sum"), "<=", 0.2),
          beside(v("w3.loomP.sum") / v("w3.loom.sum"), "time")]),
        ("loom process pool: table round trip", "w3.loomP.roundtrip", "w3.lua.copy",
         None, "w3.pyP.roundtrip",
         [target("<= 1/5 Py process", v("w3.loomP.roundtrip") / v("w3.pyP.roundtrip"),
                 "<=", 0.2),
          beside(v("w3.loomP.roundtrip") / v("w3.loom.roundtrip"), "time")]),
        ("loom process pool: send string, return #s", "w3.loomP.string", "w3.lua.sub",
         None, "w3.pyP.string",
         [target("<= 1/5 Py process", v("w3.loomP.string") / v("w3.pyP.string"), "<=", 0.2),
          beside(v("w3.loomP.string") / v("w3.loom.string"), "time")]),
        ("(diag.) sum loop alone", "w3.lua.sumloop", "w3.lua.copy", None,
         None, []),
        ("(diag.) loom.decode(loom.encode(t))", "w3.lua.codec", "w3.lua.copy",
         None, None, []),
        ("Python list copy t.copy()", "w3.py.copy", "w3.lua.copy", None, None, []),
        ("Py ProcessPool sum(list)", "w3.pyP.sum", "w3.lua.copy", None, None, []),
        ("Py ProcessPool list round trip", "w3.pyP.roundtrip", "w3.lua.copy",
         None, None, []),
        ("(diag.) Python sum(t) alone", "w3.py.sumloop", "w3.lua.copy",
         None, None, []),
        ("(diag.) pickle.loads(pickle.dumps(t))", "w3.py.codec",
         "w3.lua.copy", None, None, []),
        ('Python b"x" * 16 MiB', "w3.py.rep", "w3.lua.sub", None, None, []),
        ("Py ProcessPool len(bytes)", "w3.pyP.string", "w3.lua.sub", None, None, []),
        ("W4", f"{lua['w4']['n']:,} sequential submit-then-result() round trips; "
               "time per round trip"),
        ("loom", "w4.loom", None, "w4.pyT", "w4.pyP",
         [target("<= 1/7 Py thread", v("w4.loom") / v("w4.pyT"), "<=", 1 / 7)]),
        ("loom process pool", "w4.loomP", None, "w4.pyT", "w4.pyP",
         [target("<= 1/5 Py process", v("w4.loomP") / v("w4.pyP"), "<=", 0.2),
          beside(v("w4.loomP") / v("w4.loom"), "time")]),
        ("Py ThreadPool", "w4.pyT", None, None, None, []),
        ("Py ProcessPool", "w4.pyP", None, None, None, []),
        ("W5", "memory per queued task (100,000 queued, futures kept); "
               "startup of a 2-worker pool + first result"),
        ("loom peak RSS per queued task", "w5.loom.mem", None, "w5.pyT.mem", None,
         [target("<= 400 B/task", v("w5.loom.mem"), "<=", 400, " B")]),
        ("Py ThreadPool peak RSS per task", "w5.pyT.mem", None, None, None, []),
        ("loom executor{workers=2} + 1st result", "w5.loom.startup", None,
         "w5.pyT.startup", "w5.pyP.startup",
         [target("< 2 ms", v("w5.loom.startup") * 1e3, "<", 2, " ms")]),
        ("loom process_executor{workers=2} + 1st", "w5.loomP.startup", None,
         "w5.pyT.startup", "w5.pyP.startup", []),
        ("Py ThreadPoolExecutor(2) + 1st result", "w5.pyT.startup", None, None,
         None, []),
        ("Py ProcessPoolExecutor(2) + 1st result", "w5.pyP.startup", None, None,
         None, []),
    ]
    rows += w6_rows(fig, lua)
    return rows


def w6_rows(fig, lua):
    """W6, event loops: completions through loom.luv against f:result(), and
    what a 1 ms luv timer feels while both workers compute."""
    w6 = lua.get("w6")
    if not w6:
        return []
    if "skipped" in w6:
        return [("W6", f"event loops: skipped, {w6['skipped']}")]
    v = lambda k: fig[k]["value"]  # noqa: E731
    of_result = lambda k: target(f"{num(v(k) / v('w6.result'))}x f:result()")  # noqa: E731
    busy, idle = v("w6.timer.busy"), v("w6.timer.idle")
    return [
        ("W6", f"event loops (luv): {w6['n']:,} trivial tasks, 2 workers; a 1 ms "
               f"timer for {w6['timer_seconds']:g} s, largest gap between ticks"),
        ("loom f:result() on each future", "w6.result", None, None, None, []),
        ("loom.luv on_done, from the loop", "w6.on_done", None, None, None,
         [of_result("w6.on_done")]),
        ("loom.luv await, a coroutine per task", "w6.await", None, None, None,
         [of_result("w6.await")]),
        ("1 ms timer, no loom work", "w6.timer.idle", None, None, None, []),
        ("1 ms timer, both workers computing", "w6.timer.busy", None, None, None,
         [target(f"{num(busy * 1e3)} ms against {num(idle * 1e3)} ms idle "
                 f"({w6['task_seconds'] * 1e3:g} ms tasks)")]),
    ]


def judge(measured, op, threshold):
    ok = {">=": measured >= threshold, "<=": measured <= threshold,
          "<": measured < threshold}[op]
    return "PASS" if ok else "FAIL"


def render(fig, rows, header):
    cols = ("workload / measure", "median", "÷serial Lua", "÷Py thread",
            "÷Py process", "target")
    widths = [42, 17, 11, 10, 11]
    lines = list(header)

    def line(cells):
        parts = [cells[0].ljust(widths[0]), cells[1].rjust(widths[1])]
        parts += [c.rjust(w) for c, w in zip(cells[2:5], widths[2:])]
        parts.append(cells[5])
        return "  ".join(parts).rstrip()

    lines.append(line(cols))
    lines.append(line(["-" * w for w in widths] + ["-" * 30]))
    verdicts = []
    for row in rows:
        if len(row) == 2:
            lines.append(f"{row[0]}: {row[1]}")
            continue
        label, key, s_ref, t_ref, p_ref, targets = row
        f = fig[key]
        val = f["value"]
        cells = ["  " + label, show(val, f["unit"]),
                 ratio(val, fig[s_ref]["value"]) if s_ref else "—",
                 ratio(val, fig[t_ref]["value"]) if t_ref else "",
                 ratio(val, fig[p_ref]["value"]) if p_ref else ""]
        texts = []
        for t in targets:
            if t["op"] is None:
                texts.append(t["text"])   # a note, not a target
                continue
            mark = judge(t["measured"], t["op"], t["threshold"])
            texts.append(f"{t['text']}: {num(t['measured'])}{t['unit']}  {mark}")
            verdicts.append(dict(t, row=label, result=mark))
        lines.append(line(cells + [texts[0] if texts else ""]))
        for extra in texts[1:]:
            lines.append(line([""] * 5 + [extra]))
    return lines, verdicts


def main():
    if "--report" in sys.argv[1:]:
        # re-print the table of the last run from its raw samples
        with open(os.path.join(HERE, "results.json")) as f:
            old = json.load(f)
        raw, meta = old["raw"], old["meta"]
        lua, py, lua_mem, py_mem = (raw["lua"], raw["python"], raw["lua_mem"],
                                    raw["python_mem"])
        load_before, load_after = meta["loadavg_before"], meta["loadavg_after"]
        started = time.time() - meta["seconds"]
    else:
        load_before = loadavg()
        started = time.time()
        lua, py, lua_mem, py_mem = collect()
        load_after = loadavg()
    fig = figures(lua, py, lua_mem, py_mem)
    rows = table_rows(fig, lua, py)
    cpus = os.cpu_count()
    header = [
        "",
        f"loom benchmarks, {time.strftime('%Y-%m-%d %H:%M')}, commit "
        f"{git_commit() or '?'}: {cpus} CPUs, {lua['lua_version']}, "
        f"Python {py['python_version']}",
        f"median of {RUNS} runs ({W2_RUNS} for W2) after a warm-up; "
        f"load average {load_before:.2f} before, {load_after:.2f} after",
        "ratios are this figure ÷ the reference figure, in the same unit: "
        "for /s higher is better, for s, ms, µs, B lower is better",
        "",
    ]
    if load_before is not None and load_before > 0.5:
        header.insert(-1, "note: other processes were using the CPUs; "
                          "parallel figures (W2) suffer most")
    lines, verdicts = render(fig, rows, header)
    npass = sum(v["result"] == "PASS" for v in verdicts)
    lines += ["", f"targets: {npass} of {len(verdicts)} pass "
                  "(a missed target is reported, never a build failure)"]
    print("\n".join(lines))

    scaling = {
        "workers": [1, 2, 4, 8],
        "loom": [speedup(fig, "w2.lua.serial", f"w2.loom.{w}") for w in (1, 2, 4, 8)],
        "python_process": [speedup(fig, "w2.py.serial", f"w2.pyP.{w}")
                           for w in (1, 2, 4, 8)],
        # CPUs the loom process really got in each W2 sample (median)
        "loom_cpus_busy": [statistics.median(lua["w2"][f"cores_w{w}"])
                           for w in (1, 2, 4, 8)],
        "cpus": cpus,
        # two plain lua5.4 processes sharing the calls: the machine's ceiling
        "lua_processes_2": speedup(fig, "w2.lua.serial", "w2.lua.procs2"),
    }
    results = {
        "meta": {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "commit": git_commit(), "cpus": cpus,
                 "machine": platform.platform(), "lua": lua["lua_version"],
                 "lua_interpreter": LUA, "python": py["python_version"],
                 "runs": RUNS, "w2_runs": W2_RUNS,
                 "loadavg_before": load_before, "loadavg_after": load_after,
                 "seconds": time.time() - started},
        "figures": fig,
        "targets": verdicts,
        "w2_scaling": scaling,
        "raw": {"lua": lua, "python": py, "lua_mem": lua_mem,
                "python_mem": py_mem},
        "table": lines,
    }
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump(results, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("raw results: bench/results.json", file=sys.stderr)


if __name__ == "__main__":
    main()
