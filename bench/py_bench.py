"""The Python side of loom's benchmark suite: the same workloads as
bench/loom_bench.lua, through concurrent.futures, for comparison.

Prints raw timings (every sample, not medians) as JSON on stdout;
bench/run.py turns them into the table. Progress goes to stderr.

    python3 bench/py_bench.py all [runs] [w2_runs]
    python3 bench/py_bench.py mem        # one W5 memory probe (fresh process)
"""

import gc
import json
import pickle
import random
import statistics
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

clock = time.perf_counter


def progress(msg):
    print("  python: " + msg, file=sys.stderr, flush=True)


def timed(fn):
    """Times fn() once, in seconds, after a full collection (as the Lua side
    does), so garbage from the previous sample is not paid for here."""
    gc.collect()
    t0 = clock()
    fn()
    return clock() - t0


def rounds(runs, measures):
    """One unrecorded warm-up of every measure, then `runs` interleaved rounds
    of all of them (interleaved so machine noise spreads over every figure)."""
    for fn in measures.values():
        timed(fn)
    samples = {name: [] for name in measures}
    for _ in range(runs):
        for name, fn in measures.items():
            samples[name].append(timed(fn))
    return samples


# Module-level functions: ProcessPoolExecutor pickles functions by name.
def inc(x):
    return x + 1


def identity(v):
    return v


def length(b):
    return len(b)


def noop():
    return None


def warm(ex, workers):
    """Makes sure the pool's workers exist before the timing starts (process
    pools spawn their children lazily)."""
    list(ex.map(inc, range(workers * 4)))


# --------------------------------------------------------------------------
# W1: 20,000 trivial calls.
def w1(runs):
    n = 20000
    progress(f"W1 {n} trivial calls x {runs} runs")
    f = lambda x: x + 1  # noqa: E731  -- the issue's lambda, for ThreadPool
    sink = [0]

    def serial():
        s = 0
        for i in range(n):
            s += f(i)
        sink[0] += s

    with ThreadPoolExecutor(2) as tp, ProcessPoolExecutor(2) as pp:
        warm(tp, 2)
        warm(pp, 2)

        def submit():
            futs = [tp.submit(f, i) for i in range(n)]
            sink[0] += sum(fu.result() for fu in futs)

        def thread_map():
            sink[0] += sum(tp.map(f, range(n)))

        def process_map256():
            sink[0] += sum(pp.map(inc, range(n), chunksize=256))

        def process_submit():
            futs = [pp.submit(inc, i) for i in range(n)]
            sink[0] += sum(fu.result() for fu in futs)

        samples = rounds(runs, {
            "serial": serial,
            "thread_submit": submit,
            "thread_map": thread_map,
            "process_map256": process_map256,
            "process_submit": process_submit,
        })
    samples["n"] = n
    return samples


# --------------------------------------------------------------------------
# W2: 8 CPU-bound calls, serially and in pools.
def spin(n):
    x = 0
    for i in range(n):
        x += i % 7
    return x


def calibrate(target):
    """The loop count that makes spin() take about `target` seconds here."""
    n, dt = 50000, 0.0
    while dt < 0.05:
        n *= 2
        t0 = clock()
        spin(n)
        dt = clock() - t0
    n = int(n * target / dt)
    # then the median of three runs at full size: a short run on a busy
    # machine can be off by a third
    times = []
    for _ in range(3):
        t0 = clock()
        spin(n)
        times.append(clock() - t0)
    return int(n * target / statistics.median(times))


W2_PROCESS_WORKERS = (1, 2, 4, 8)
W2_THREAD_WORKERS = (2,)  # enough to show the GIL: no speedup at all


def w2(runs):
    calls, target = 8, 0.25
    n = calibrate(target)
    progress(f"W2 {calls} calls of spin({n}) (~{target} s each) x {runs} runs")

    def batch(ex, count):
        futs = [ex.submit(spin, count) for _ in range(calls)]
        for fu in futs:
            fu.result()

    samples = {"serial": [], "calls": calls, "loop_count": n,
               "per_call_target": target}
    configs = [("process", ProcessPoolExecutor, w) for w in W2_PROCESS_WORKERS]
    configs += [("thread", ThreadPoolExecutor, w) for w in W2_THREAD_WORKERS]
    for kind, _, w in configs:
        samples[f"{kind}{w}"] = []
    for r in range(runs + 1):  # round 0 is the warm-up, not recorded
        dt = timed(lambda: [spin(n) for _ in range(calls)])
        if r:
            samples["serial"].append(dt)
        for kind, pool, w in configs:
            # a fresh pool per sample, started and warmed outside the timing
            with pool(w) as ex:
                warm(ex, w)
                batch(ex, n // 50)
                dt = timed(lambda: batch(ex, n))
            if r:
                samples[f"{kind}{w}"].append(dt)
        progress(f"W2 round {r}/{runs} done")
    return samples


# --------------------------------------------------------------------------
# W3: big values through a process pool (pickled both ways).
def w3(runs):
    nfloat, strlen = 1000000, 16 * 1024 * 1024
    progress(f"W3 {nfloat} floats, {strlen}-byte bytes x {runs} runs")
    t = [random.random() for _ in range(nfloat)]
    b = b"x" * strlen
    with ProcessPoolExecutor(2) as pp:
        warm(pp, 2)
        samples = rounds(runs, {
            # in-process references, as table.move and string.rep are for Lua
            "copy": lambda: t.copy(),
            "rep": lambda: b"x" * strlen,
            "sum": lambda: pp.submit(sum, t).result(),
            "roundtrip": lambda: pp.submit(identity, t).result(),
            "string": lambda: pp.submit(length, b).result(),
            # diagnostics: the sum alone, and pickling without a process
            "sumloop": lambda: sum(t),
            "codec": lambda: pickle.loads(pickle.dumps(t)),
        })
    samples["floats"], samples["string_bytes"] = nfloat, strlen
    return samples


# --------------------------------------------------------------------------
# W4: one submit-then-result() round trip at a time.
def w4(runs):
    n = 2000
    progress(f"W4 {n} sequential round trips x {runs} runs")
    f = lambda x: x + 1  # noqa: E731
    with ThreadPoolExecutor(2) as tp, ProcessPoolExecutor(2) as pp:
        warm(tp, 2)
        warm(pp, 2)

        def thread_rt():
            for i in range(n):
                tp.submit(f, i).result()

        def process_rt():
            for i in range(n):
                pp.submit(inc, i).result()

        samples = rounds(runs, {"thread": thread_rt, "process": process_rt})
    samples["n"] = n
    return samples


# --------------------------------------------------------------------------
# W5: startup of a 2-worker pool plus its first result; closing not timed.
def startup_samples(pool, count, warmup):
    out = []
    for i in range(warmup + count):
        t0 = clock()
        ex = pool(2)
        ex.submit(noop).result()
        dt = clock() - t0
        ex.shutdown(wait=True)
        if i >= warmup:
            out.append(dt)
    return out


def w5_startup():
    progress("W5 startup: ThreadPool x 200, ProcessPool x 20")
    return {
        "thread_startup": startup_samples(ThreadPoolExecutor, 200, 10),
        # a process pool forks its workers: far slower, so fewer samples
        "process_startup": startup_samples(ProcessPoolExecutor, 20, 2),
    }


def status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def w5_mem():
    """RSS held by 100,000 tasks queued behind a ThreadPool's only worker,
    which is parked on an Event; the futures are kept, as a caller would."""
    n = 100000
    gate, started = threading.Event(), threading.Event()
    ex = ThreadPoolExecutor(1)
    for i in range(100):
        ex.submit(inc, i).result()
    ex.submit(lambda: (started.set(), gate.wait()))
    started.wait()

    gc.collect()
    rss0, hwm0 = status_bytes("VmRSS"), status_bytes("VmHWM")
    futs = [ex.submit(inc, i) for i in range(n)]
    rss1, hwm1 = status_bytes("VmRSS"), status_bytes("VmHWM")
    peak = hwm1 if hwm1 > hwm0 else rss1

    ex.shutdown(wait=False, cancel_futures=True)
    gate.set()
    ex.shutdown(wait=True)
    return {"n": n, "rss_before": rss0, "hwm_before": hwm0, "rss_after": rss1,
            "hwm_after": hwm1, "bytes_per_task": (peak - rss0) / n,
            "queued": len(futs)}


def main(argv):
    mode = argv[1] if len(argv) > 1 else "all"
    runs = int(argv[2]) if len(argv) > 2 else 5
    w2_runs = int(argv[3]) if len(argv) > 3 else 3
    if mode == "mem":
        out = w5_mem()
    elif mode == "all":
        out = {"w1": w1(runs), "w3": w3(runs), "w4": w4(runs),
               "w5": w5_startup(), "w2": w2(w2_runs)}
    else:
        sys.exit("usage: py_bench.py all|mem [runs] [w2_runs]")
    out["python_version"] = sys.version.split()[0]
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main(sys.argv)
