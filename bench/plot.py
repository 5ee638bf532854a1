"""Draws the W2 scaling curve into bench/scaling.png (`make bench-plot`).

Uses the W2 figures of bench/results.json when present (written by
`make bench`); otherwise, or with --rerun, runs W2 alone for loom (about
half a minute) and plots that. The drawing itself is bench/scaling.gp.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results.json")
PNG = os.path.join(HERE, "scaling.png")


def from_results():
    try:
        with open(RESULTS) as f:
            res = json.load(f)
    except (OSError, ValueError):
        return None
    sc = res.get("w2_scaling")
    if not sc:
        return None
    meta = res.get("meta", {})
    return sc, f"{meta.get('date', '?')[:10]}, commit {meta.get('commit', '?')}"


def rerun():
    lua = os.environ.get("LUA", "lua5.4")
    runs = os.environ.get("W2_RUNS", "3")
    print("bench-plot: running W2 for loom", file=sys.stderr, flush=True)
    out = subprocess.run([lua, "bench/loom_bench.lua", "w2", runs], cwd=ROOT,
                         stdout=subprocess.PIPE, text=True, check=True)
    w2 = json.loads(out.stdout)["w2"]
    serial = statistics.median(w2["serial"])
    workers = [1, 2, 4, 8]
    sc = {"workers": workers, "cpus": os.cpu_count(),
          "loom": [serial / statistics.median(w2[f"w{w}"]) for w in workers],
          "loom_cpus_busy": [statistics.median(w2[f"cores_w{w}"])
                             for w in workers]}
    return sc, "fresh W2 run"


def main():
    got = None if "--rerun" in sys.argv[1:] else from_results()
    if got is None:
        got = rerun()
    sc, source = got
    py = sc.get("python_process") or [None] * len(sc["workers"])
    # A curve measured while other processes held the CPUs says little about
    # loom: say so on the picture itself, since the picture travels alone.
    busy = sc.get("loom_cpus_busy")
    note = ""
    if busy:
        best = max(busy)
        if best < 0.9 * min(2, sc["cpus"]):
            note = (f"machine busy: loom got at most {best:.2f} CPUs; "
                    "rerun on a quiet machine")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "w2.dat")
        with open(data, "w") as f:
            f.write("# workers loom_speedup python_process_speedup\n")
            for w, s, p in zip(sc["workers"], sc["loom"], py):
                f.write(f"{w} {s:.4f} {'NaN' if p is None else f'{p:.4f}'}\n")
        # draw to a temporary name and rename: a failed run keeps the old png
        tmp_png = PNG + ".tmp"
        subprocess.run(["gnuplot", "-e",
                        f"datafile='{data}'; outfile='{tmp_png}'; "
                        f"cpus={sc['cpus']}; source='{source}'; note='{note}'; "
                        f"has_python={0 if py[0] is None else 1}",
                        os.path.join(HERE, "scaling.gp")], check=True)
        os.replace(tmp_png, PNG)
    for w, s in zip(sc["workers"], sc["loom"]):
        print(f"  {w} worker{'s' if w > 1 else ' '}: speedup {s:.2f}x")
    print(f"wrote {os.path.relpath(PNG, ROOT)} ({source})")


if __name__ == "__main__":
    main()
