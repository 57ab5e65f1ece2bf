"""The Batcher's own cost per tick, next to the ``pool.step`` it wraps (issue 13: <= 20% at 256 streams).

Each round submits one step for each of N streams from one asyncio event loop and waits for all of
them; with ``max_batch=N`` and a long ``max_delay`` every round is exactly one tick.  Rounds of the
batcher alternate with bare ``pool.step(ids, x, out=out)`` calls on an identical pool (same model,
same N), so both see the same machine load; medians are reported.

  overhead   the worker's time per tick outside pool.step: claiming the requests, gathering ids and
             inputs into the preallocated tick buffers, copying the outputs, handing them to the loop
  round      wall time of a round as the caller sees it (submit N steps, await them all), which adds
             asyncio's own cost of N coroutines and futures

    python bench/serve_overhead.py                  # medium model, 256 streams, ~30 s on 2 cores
    python bench/serve_overhead.py --streams 16,256,1024 --rounds 100
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import numpy as np

from fastlstm.harness.configs import CONFIGS, random_model
from fastlstm.serving import Batcher


def measure(model, n, rounds, rng):
    pool = model.pool(n)
    ids = np.array([pool.open() for _ in range(n)], np.int64)
    xs = rng.standard_normal((n, model.input_size)).astype(np.float32)
    out = np.empty((n, model.output_size), np.float32)
    batcher = Batcher(model.pool(n), max_batch=n, max_delay=1.0, max_queue=n)
    sids = [batcher.open() for _ in range(n)]
    rows = list(xs)
    m = batcher.metrics
    ticks0 = m.ticks

    async def rounds_():
        bare, over, comp, wall = [], [], [], []
        step = batcher.step
        for r in range(rounds + 3):
            t0 = time.perf_counter()
            pool.step(ids, xs, out=out)
            t1 = time.perf_counter()
            o0, c0 = m.overhead.sum, m.compute.sum
            t2 = time.perf_counter()
            await asyncio.gather(*[step(s, x) for s, x in zip(sids, rows)])
            t3 = time.perf_counter()
            while m.overhead.count < ticks0 + r + 1:  # recorded just after the tick's hand-off
                time.sleep(1e-5)
            if r >= 3:  # warm-up rounds left out
                bare.append(t1 - t0)
                over.append(m.overhead.sum - o0)
                comp.append(m.compute.sum - c0)
                wall.append(t3 - t2)
        return bare, over, comp, wall

    bare, over, comp, wall = asyncio.run(rounds_())
    ticks = m.ticks - ticks0
    assert ticks == rounds + 3, "a round took more than one tick"
    batcher.shutdown()
    med = statistics.median
    return {
        "streams": n,
        "pool_step_ms": med(bare) * 1e3,
        "tick_compute_ms": med(comp) * 1e3,
        "overhead_ms": med(over) * 1e3,
        "overhead_pct": 100 * med(over) / med(bare),
        "round_ms": med(wall) * 1e3,
        "round_extra_pct": 100 * (med(wall) - med(bare)) / med(bare),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="medium", choices=list(CONFIGS))
    p.add_argument("--streams", default="256", help="comma-separated stream counts (default 256)")
    p.add_argument("--rounds", type=int, default=60)
    args = p.parse_args(argv)
    cfg = CONFIGS[args.config]
    model = random_model(cfg)
    rng = np.random.default_rng(0)
    print(
        f"{cfg.name}: I={cfg.I} H={cfg.H} layers={cfg.L}; threads={__import__('fastlstm').get_num_threads()}; "
        f"medians of {args.rounds} rounds"
    )
    print(
        f"{'streams':>8} {'pool.step ms':>13} {'tick compute ms':>16} {'overhead ms':>12} {'overhead %':>11} "
        f"{'round ms':>9} {'round extra %':>14}"
    )
    for n in (int(s) for s in args.streams.split(",")):
        r = measure(model, n, args.rounds, rng)
        print(
            f"{r['streams']:>8} {r['pool_step_ms']:>13.3f} {r['tick_compute_ms']:>16.3f} {r['overhead_ms']:>12.3f} "
            f"{r['overhead_pct']:>10.1f}% {r['round_ms']:>9.3f} {r['round_extra_pct']:>13.1f}%"
        )


if __name__ == "__main__":
    main()
