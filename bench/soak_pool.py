"""The long versions of tests/test_pool_soak.py: 10^6 steps each.

1. tracemalloc over 10^6 ``Stream.step(x, out=out)`` calls (unbatched), 10^6 ``StreamPool.step(ids,
   x, out=out)`` calls, and 10^6 batched ``Stream.step`` calls: traced-memory growth and the peak
   above the start, each next to an empty loop measured the same way (the control).  Zero extra
   bytes means no Python object is allocated per step, not even a temporary.
2. A soak of 10^6 pool steps with streams opening and closing (about one close + open every 8
   ticks, batch sizes 1..160 rows): RSS sampled every 10^5 steps; growth after the warm-up must
   stay under --rss-limit-mb.  A sentinel stream stepped every tick is compared with a lone Stream
   at the end, so the soak also shows the pool still computes the right thing.

    python bench/soak_pool.py                 # ~5 min on 2 cores
    python bench/soak_pool.py --steps 200000  # shorter

Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import sys
import time
import tracemalloc

import numpy as np

import fastlstm
from fastlstm.harness import configs
from fastlstm.harness.timing import traced_memory as traced

I, H, L, O = 16, 64, 2, 4


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def alloc_check(name, loop, n):
    def control(k):
        for _ in itertools.repeat(None, k):
            pass

    loop(2000)
    gc.disable()
    tracemalloc.start()
    try:
        traced(control, 10)
        c = traced(control, n)
        t0 = time.perf_counter()
        m = traced(loop, n)
        dt = time.perf_counter() - t0
    finally:
        tracemalloc.stop()
        gc.enable()
    ok = m[0] <= c[0] and m[1] <= c[1]
    print(
        f"| {name} | {n:,} | {m[0] - c[0]:+d} B | {m[1] - c[1]:+d} B | {dt / n * 1e6:.2f} µs | "
        f"{'ok' if ok else 'ALLOCATES'} |",
        flush=True,
    )
    return ok


def soak(model, steps, rss_limit):
    rng = np.random.default_rng(3)
    pool = model.pool(256)
    sentinel = pool.open()
    live = [pool.open() for _ in range(200)]
    ref = model.stream()
    xs = rng.standard_normal((64, 201, I)).astype(np.float32)
    out = np.empty((201, O), np.float32)
    ids = np.empty(201, np.int64)
    sizes = rng.integers(1, 160, size=997)
    churn = rng.integers(0, len(live), size=991)
    ref_out = np.empty(O, np.float32)
    samples = []
    warm = min(steps // 10, 100_000)
    t_start = time.perf_counter()
    opened = closed = 0
    for t in range(steps):
        if t == warm:
            gc.collect()
            rss0 = rss_bytes()
            samples.append((t, rss0))
        elif t > warm and t % 100_000 == 0:
            samples.append((t, rss_bytes()))
        n = int(sizes[t % 997])
        ids[0] = sentinel
        off = t % 40
        ids[1 : n + 1] = live[off : off + n]
        x = xs[t % 64, : n + 1]
        pool.step(ids[: n + 1], x, out=out[: n + 1])
        ref.step(x[0], out=ref_out)
        if t % 8 == 0:
            k = int(churn[t % 991])
            pool.close(live[k])
            live[k] = pool.open()
            opened += 1
            closed += 1
    gc.collect()
    samples.append((steps, rss_bytes()))
    wall = time.perf_counter() - t_start
    grown = samples[-1][1] - rss0
    got, want = pool.get_state(sentinel), ref.state
    diff = max(float(np.abs(a - b).max()) for a, b in zip(got.h + got.c, want.h + want.c))
    print(
        f"\nsoak: {steps:,} pool steps, {opened:,} opens + {closed:,} closes, {wall:.0f} s "
        f"({wall / steps * 1e6:.1f} µs per tick incl. the sentinel's lone Stream step)"
    )
    print("| step | RSS (MB) | vs warm-up |")
    print("|---:|---:|---:|")
    for t, r in samples:
        print(f"| {t:,} | {r / 2**20:.1f} | {(r - rss0) / 2**20:+.2f} MB |")
    ok_rss = grown < rss_limit * 2**20
    ok_state = diff <= 1e-4
    print(f"RSS growth after warm-up: {grown / 2**20:+.2f} MB (limit {rss_limit} MB): {'ok' if ok_rss else 'TOO MUCH'}")
    print(f"sentinel vs lone Stream after {steps:,} steps: max |diff| {diff:.2e}: {'ok' if ok_state else 'WRONG'}")
    return ok_rss and ok_state


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1_000_000)
    p.add_argument("--rss-limit-mb", type=float, default=8.0)
    p.add_argument("--threads", type=int, default=None, help="fastlstm threads (default: cores)")
    args = p.parse_args(argv)
    if args.threads:
        fastlstm.set_num_threads(args.threads)
    model = configs.random_model(configs.Config("soak", I, H, L, 1, 1), head_size=O)
    n = args.steps
    print(
        f"fastlstm {fastlstm.__version__}, threads {fastlstm.get_num_threads()}, model I={I} H={H} layers={L} head={O}"
    )
    print("\n| call (with out=) | steps | traced growth vs control | peak vs control | time/step | verdict |")
    print("|---|---:|---:|---:|---:|---|")

    s = model.stream()
    x1, o1 = np.ones(I, np.float32), np.empty(O, np.float32)
    step1 = s.step

    def loop_stream(k):
        for _ in itertools.repeat(None, k):
            step1(x1, out=o1)

    pool = model.pool(128)
    pids = np.array(np.random.default_rng(0).permutation([pool.open() for _ in range(100)])[:24], np.int64)
    xp, op = np.ones((24, I), np.float32), np.empty((24, O), np.float32)
    pstep = pool.step

    def loop_pool(k):
        for _ in itertools.repeat(None, k):
            pstep(pids, xp, out=op)

    sb = model.stream(40)
    xb, ob = np.ones((40, I), np.float32), np.empty((40, O), np.float32)
    bstep = sb.step

    def loop_batched(k):
        for _ in itertools.repeat(None, k):
            bstep(xb, out=ob)

    ok = alloc_check("Stream.step, unbatched", loop_stream, n)
    ok &= alloc_check("StreamPool.step, 24 of 100 open ids", loop_pool, n)
    ok &= alloc_check("Stream.step, batch 40", loop_batched, n)
    ok &= soak(model, n, args.rss_limit_mb)
    print("\nall checks passed" if ok else "\nSOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
