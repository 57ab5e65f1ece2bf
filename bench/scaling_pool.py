"""Multi-core scaling of StreamPool.step: 1024 active streams, medium config, 1..16 threads.

A prepared one-shot script for a many-core machine; it needs only numpy and fastlstm (no torch,
no ONNX Runtime).  For each thread count it times ticks of ``pool.step`` over all 1024 streams
(I=128, H=256, 2 layers, PyTorch-default-like random weights), in interleaved rounds so drifting
load hits every thread count alike, and prints p50/p99 per tick, per-stream-step cost, the speedup
over the first thread count (1 by default) and the efficiency.  It first checks that every thread count gives
bit-identical outputs (the engine's promise), then writes everything as JSON to ``--out``.

    python bench/scaling_pool.py --out scaling.json                 # 1,2,4,8,16 threads, ~1-2 min
    python bench/scaling_pool.py --threads 1,2,4 --seconds 1 --out /tmp/s.json

Thread counts above the cores this process may use are still run but marked "oversubscribed"
(fastlstm caps its team at the available cores, so they measure the capped team).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import time

import numpy as np

import fastlstm
from fastlstm.harness import configs
from fastlstm.harness.configs import CONFIGS
from fastlstm.harness.timing import OtherLoad, available_cores, cpu_name, tick_latencies

CFG = CONFIGS["medium"]
I, H, L, N = CFG.I, CFG.H, CFG.L, 1024


def timed_block(pool, ids, xs, out, seconds, min_ticks):
    """Ticks for ``seconds`` (at least ``min_ticks``, at most 5 x seconds) after 2 warm-up ticks.

    Returns (seconds per tick list, cores used by other processes meanwhile)."""
    step = pool.step
    with OtherLoad() as load:
        times = tick_latencies(lambda k: step(ids, xs[k % len(xs)], out=out), seconds, min_ticks)
    return times, load.cores


def check_identical(model, thread_counts, xs):
    """Outputs and states of 3 ticks from the same state at every thread count, compared bit for bit."""
    ref = None
    for n in thread_counts:
        fastlstm.set_num_threads(n)
        pool = model.pool(N)
        ids = np.array([pool.open() for _ in range(N)], np.int64)
        ys = [pool.step(ids, xs[k]).copy() for k in range(3)]
        st = [pool.get_state(int(s)).to_bytes() for s in ids[::97]]
        if ref is None:
            ref = (ys, st)
        elif not (all(np.array_equal(a, b) for a, b in zip(ys, ref[0])) and st == ref[1]):
            return False
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2,4,8,16", help="thread counts to run")
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per thread count per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--min-ticks", type=int, default=20, help="per thread count per round, if time allows")
    p.add_argument("--out", required=True, help="JSON file to write")
    args = p.parse_args(argv)
    counts = list(dict.fromkeys(int(t) for t in args.threads.split(",") if t))  # in order, no repeats
    cores = available_cores()
    t_start = time.perf_counter()

    model = configs.random_model(CFG)  # weights like torch.nn.LSTM's default init
    xs = np.random.default_rng(1).standard_normal((8, N, I), dtype=np.float32)
    identical = check_identical(model, counts, xs)

    pool = model.pool(N)
    ids = np.array(np.random.default_rng(2).permutation([pool.open() for _ in range(N)]), np.int64)
    out = np.empty((N, model.output_size), np.float32)
    samples = {n: [] for n in counts}
    loads = {n: [] for n in counts}
    for r in range(args.rounds):
        order = counts[r % len(counts) :] + counts[: r % len(counts)]
        for n in order:
            fastlstm.set_num_threads(n)
            gc.collect()
            gc.disable()
            try:
                times, other = timed_block(pool, ids, xs, out, args.seconds, args.min_ticks)
            finally:
                gc.enable()
            samples[n] += times
            loads[n].append(other)
        print(f"round {r + 1}/{args.rounds} done ({time.perf_counter() - t_start:.0f} s)", flush=True)

    flops = sum(2 * N * 4 * H * ((I if k == 0 else H) + H) for k in range(L))
    rows = []
    base = None
    for n in counts:
        a = np.asarray(samples[n])
        p50, p99 = float(np.percentile(a, 50)), float(np.percentile(a, 99))
        base = base if base is not None else p50
        rows.append(
            {
                "threads": n,
                "effective_threads": min(n, cores),
                "oversubscribed": n > cores,
                "ticks": int(a.size),
                "p50_ms": p50 * 1e3,
                "p99_ms": p99 * 1e3,
                "mean_ms": float(a.mean()) * 1e3,
                "per_stream_us": p50 / N * 1e6,
                "gflops": flops / p50 / 1e9,
                "speedup": base / p50,
                "efficiency": base / p50 * min(counts[0], cores) / min(n, cores),
                "other_load_cores": float(np.nanmax(loads[n])) if loads[n] else math.nan,
            }
        )

    env = {
        "cores_available": cores,
        "cpu": cpu_name(),
        "fastlstm": fastlstm.__version__,
        "openmp": fastlstm.openmp_enabled(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "config": f"I={I} H={H} layers={L}, {N} streams, no head",
        "flops_per_tick": flops,
        "bit_identical_across_thread_counts": identical,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }

    print()
    print(f"StreamPool.step scaling: {env['config']}  ({cores} cores available, {env['cpu']})")
    print(f"outputs bit-identical across thread counts: {identical}")
    print()
    print(
        "| threads | ticks | p50 / tick | p99 / tick | per stream-step | GFLOP/s | speedup | efficiency | other load |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        mark = " (oversubscribed)" if r["oversubscribed"] else ""
        print(
            f"| {r['threads']}{mark} | {r['ticks']} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | "
            f"{r['per_stream_us']:.2f} µs | {r['gflops']:.1f} | {r['speedup']:.2f}x | {r['efficiency']:.0%} | "
            f"{r['other_load_cores']:.2f} |"
        )
    with open(args.out, "w") as f:
        json.dump({"env": env, "rows": rows}, f, indent=1)
    print(f"\nwrote {args.out} ({env['wall_s']} s)")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
