#!/usr/bin/env python
"""Two builds of fastlstm side by side: the same cases, interleaved, medians and ratios.

    python bench/compare_builds.py OLD_ROOT NEW_ROOT [--repeats 15] [--sample-ms 40]

OLD_ROOT and NEW_ROOT are source trees with compiled kernels (``python setup.py build_ext
--inplace``), e.g. a ``git archive`` of the previous commit next to this checkout.  Each build
runs in a worker process of its own (two builds cannot share one interpreter); every repeat
times every case on both, in alternating order, so a burst of load from other processes hits
both alike.  A figure is the median over repeats of the time per call; the ratio is
old / new (above 1: the new build is faster).  The CPU time per call (all of the process's
threads, spinning included) is printed too: on a machine shared with other load, where a
process gets a varying share of the cores, it is the steadier of the two.

Written for issue 9, where fastlstm's own thread pool replaced OpenMP: it shows what the
pool, the per-step copy of x and the state check cost on the per-step path.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

WORKER = r"""
import json, sys, time
import numpy as np
import fastlstm
from fastlstm import LSTMLayer, LSTMWeights, Model, Dense

def model(I, H, L):
    rng = np.random.default_rng(0)
    u = lambda *s: rng.uniform(-H ** -0.5, H ** -0.5, s).astype(np.float32)
    layers = [LSTMLayer([LSTMWeights(u(4 * H, I if k == 0 else H), u(4 * H, H), u(4 * H), u(4 * H))])
              for k in range(L)]
    return Model(layers, Dense(u(1, H), u(1)))

CASES = {}
def case(name, threads, I, H, L, kind, B=1):
    m = model(I, H, L)
    rng = np.random.default_rng(1)
    if kind == "step":
        s, x, out = m.stream(), rng.standard_normal(I).astype(np.float32), np.empty(1, np.float32)
        run = lambda: s.step(x, out=out)
    elif kind == "pool":
        p = m.pool(B)
        ids = np.array([p.open() for _ in range(B)], np.int64)
        x, out = rng.standard_normal((B, I)).astype(np.float32), np.empty((B, 1), np.float32)
        run = lambda: p.step(ids, x, out=out)
    else:
        x = rng.standard_normal((20, B, I)).astype(np.float32)
        run = lambda: m.predict(x)
    CASES[name] = (threads, run)

for spec in json.loads(sys.argv[1]):
    case(*spec)
for line in sys.stdin:
    name, n = line.split()
    threads, run = CASES[name]
    fastlstm.set_num_threads(threads)
    run()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(int(n)):
        run()
    print((time.perf_counter() - t0) / int(n), (time.process_time() - c0) / int(n), flush=True)
"""

CASES = [
    # name, threads, I, H, L, kind, B
    ("step tiny (H=32), 1 thread", 1, 16, 32, 1, "step"),
    ("step tiny (H=32), 2 threads", 2, 16, 32, 1, "step"),
    ("step small (H=128), 1 thread", 1, 64, 128, 1, "step"),
    ("step small (H=128), 2 threads", 2, 64, 128, 1, "step"),
    ("step medium (H=256, 2 layers), 1 thread", 1, 128, 256, 2, "step"),
    ("step medium (H=256, 2 layers), 2 threads", 2, 128, 256, 2, "step"),
    ("step large (H=1024), 1 thread", 1, 512, 1024, 1, "step"),
    ("step large (H=1024), 2 threads", 2, 512, 1024, 1, "step"),
    ("predict T=20 B=1 (H=256, 2 layers), 1 thread", 1, 128, 256, 2, "predict", 1),
    ("predict T=20 B=1 (H=256, 2 layers), 2 threads", 2, 128, 256, 2, "predict", 1),
    ("pool 256 streams (H=128), 1 thread", 1, 64, 128, 1, "pool", 256),
    ("pool 256 streams (H=128), 2 threads", 2, 64, 128, 1, "pool", 256),
    ("pool 32 streams (H=256), 2 threads", 2, 128, 256, 1, "pool", 32),
    ("predict T=20 B=64 (H=256), 2 threads", 2, 128, 256, 1, "predict", 64),
]


class Worker:
    def __init__(self, root):
        env = dict(os.environ, PYTHONPATH=root)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps(CASES)],
            env=env,
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def time(self, name, n):
        self.proc.stdin.write(f"{name.replace(' ', '_')} {n}\n")
        self.proc.stdin.flush()
        return [float(v) for v in self.proc.stdout.readline().split()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--sample-ms", type=float, default=40.0)
    ap.add_argument("--only", default="", help="run only the cases whose name contains this")
    args = ap.parse_args()
    global CASES
    CASES = [(c[0].replace(" ", "_"),) + c[1:] for c in CASES]
    workers = {"old": Worker(os.path.abspath(args.old)), "new": Worker(os.path.abspath(args.new))}
    print(f"{'case':44s} {'old':>10s} {'new':>10s}  old/new   CPU time: {'old':>10s} {'new':>10s}  old/new")
    for name, *_ in CASES:
        if args.only.replace(" ", "_") not in name:
            continue
        per = workers["new"].time(name, 3)[0]
        n = max(1, int(args.sample_ms / 1e3 / max(per, 1e-7)))
        samples = {"old": [], "new": []}
        for r in range(args.repeats):
            for which in ("old", "new") if r % 2 == 0 else ("new", "old"):
                samples[which].append(workers[which].time(name, n))
        old, new = (statistics.median(s[0] for s in samples[k]) for k in ("old", "new"))
        cold, cnew = (statistics.median(s[1] for s in samples[k]) for k in ("old", "new"))
        print(
            f"{name.replace('_', ' '):44s} {old * 1e6:8.2f}us {new * 1e6:8.2f}us  {old / new:5.2f}x"
            f"             {cold * 1e6:8.2f}us {cnew * 1e6:8.2f}us  {cold / cnew:5.2f}x"
        )


if __name__ == "__main__":
    main()
