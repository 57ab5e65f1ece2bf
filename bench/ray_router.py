"""fastlstm.ray on one machine: online router throughput and p99 per replica count, failover time, and
offline rows/s per actor count next to plain ``model.predict`` on the same batches.

Online: N streams of the medium model (I=128, H=256, 2 layers), driven open loop from this process
at ``--rate`` Hz each through ``StreamRouter.step_async``.  For each replica count, the stream count
is swept and the largest N with p99 <= --p99-ms is reported (the issue's target: 2 replicas on 2
cores serve >= 1.7x the streams of 1 replica).  Failover: with N streams running, one replica is
``ray.kill``-ed, and the time from the kill until every one of its streams has answered a step again
is measured.  Offline: windows of the bundled CO2 record (lengths 26..104 weeks), scored by
``predict_dataset`` with 1 and 2 one-thread actors, against one thread running ``model.predict`` on
the same batches grouped the same way (the issue's target: within 10% per core).  The marginal
rate (the full dataset against half of it) leaves out Ray's fixed start-up cost.

One prepared script for any machine: ``--replicas 1,2,4,8 --actors 1,2,4,8`` on a bigger box.

    python bench/ray_router.py --quick          # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import numpy as np
import ray

import fastlstm
import fastlstm.data
from fastlstm.harness.configs import CONFIGS, random_model
from fastlstm.ray import StreamRouter, predict_dataset


async def drive(router, sids, rate, seconds, x, kill_at=None, victim=None):
    """Open-loop steps of every stream at ``rate`` Hz; latencies from the scheduled times.  With
    ``kill_at`` the replica ``victim`` is killed then, and the failover time is returned too."""
    loop = asyncio.get_running_loop()
    period = 1.0 / rate
    t0 = loop.time() + 0.1
    lat, recovered = [], {}
    moved = [s for s, r in router.placement().items() if r == victim] if victim is not None else []
    killed = [None]

    async def one(k, sid):
        t = t0 + period * k / len(sids)
        inflight = None
        while t < t0 + seconds:
            await asyncio.sleep(max(0.0, t - loop.time()))
            if inflight is not None:  # a stream's steps are sequential: skip a late slot
                await inflight
            sched = t

            async def step(sched=sched):
                await router.step_async(sid, x)
                now = loop.time()
                lat.append(now - sched)
                if killed[0] is not None and sid in moved and sid not in recovered and sched >= killed[0]:
                    recovered[sid] = now - killed[0]

            inflight = asyncio.ensure_future(step())
            t += period
        if inflight is not None:
            await inflight

    async def killer():
        await asyncio.sleep(max(0.0, t0 + kill_at - loop.time()))
        killed[0] = loop.time()
        ray.kill(router.replica(victim), no_restart=True)

    jobs = [one(k, s) for k, s in enumerate(sids)]
    if kill_at is not None:
        jobs.append(killer())
    await asyncio.gather(*jobs)
    failover = max(recovered.values()) if len(recovered) == len(moved) and moved else float("nan")
    return np.array(lat), failover


def online(model, replicas, counts, args):
    x = np.random.default_rng(0).standard_normal(model.input_size).astype(np.float32)
    rows = []
    for n_rep in replicas:
        router = StreamRouter(
            model, num_replicas=n_rep, checkpoint_every=args.checkpoint_every, max_delay=args.max_delay_ms / 1000
        )
        try:
            for n in counts:
                sids = [router.open() for _ in range(n - len(router))]
                sids = sorted(router.placement())
                lat, _ = asyncio.run(drive(router, sids, args.rate, args.seconds, x))
                p99 = float(np.percentile(lat, 99)) * 1e3
                steps_s = len(lat) / args.seconds
                rows.append((n_rep, n, steps_s, float(np.percentile(lat, 50)) * 1e3, p99))
                print(
                    f"replicas {n_rep}  streams {n:>5}  steps/s {steps_s:>8.0f}  p50 {rows[-1][3]:7.2f} ms  "
                    f"p99 {p99:7.2f} ms",
                    flush=True,
                )
                if p99 > 10 * args.p99_ms or steps_s < 0.9 * n * args.rate:
                    break
            if n_rep >= 2:
                n = args.failover_streams
                while len(router) < n:
                    router.open()
                sids = sorted(router.placement())[:n]
                _, fo = asyncio.run(drive(router, sids, args.rate, 3.0, x, kill_at=1.0, victim=0))
                print(
                    f"replicas {n_rep}  failover with {n} streams: {fo * 1e3:.0f} ms from the kill until every "
                    f"moved stream stepped again ({router.failovers[-1][1]} streams restored)",
                    flush=True,
                )
        finally:
            router.shutdown()
    for bound in (args.p99_ms, 5 * args.p99_ms):
        best = {}
        for n_rep in replicas:
            ok = [n for r, n, s, p50, p99 in rows if r == n_rep and p99 <= bound]
            best[n_rep] = max(ok, default=0)
        ratio = (
            ""
            if len(replicas) < 2 or not best[replicas[0]]
            else f"  ({replicas[-1]} replicas / {replicas[0]}: {best[replicas[-1]] / best[replicas[0]]:.2f}x)"
        )
        print(f"streams at p99 <= {bound:g} ms: " + ", ".join(f"{r} replicas {n}" for r, n in best.items()) + ratio)
    return rows


def checkpoint_cost(model, args):
    """What failover costs: the router's memory per stream and p99 with checkpoints every K steps
    against (practically) never, same streams, same load."""
    x = np.random.default_rng(0).standard_normal(model.input_size).astype(np.float32)
    n = args.cost_streams
    for every in (args.checkpoint_every, 10**9):
        router = StreamRouter(model, num_replicas=1, checkpoint_every=every, max_delay=args.max_delay_ms / 1000)
        try:
            sids = [router.open() for _ in range(n)]
            lat, _ = asyncio.run(drive(router, sids, args.rate, args.seconds, x))
            state_bytes = len(router.get_state(sids[0]).to_bytes())
        finally:
            router.shutdown()
        label = f"checkpoint every {every} steps" if every < 10**9 else "no checkpoints"
        print(
            f"cost: {n} streams, {label}: p50 {np.percentile(lat, 50) * 1e3:.2f} ms, "
            f"p99 {np.percentile(lat, 99) * 1e3:.2f} ms",
            flush=True,
        )
    per_stream = state_bytes + args.checkpoint_every * model.input_size * 4
    print(
        f"cost: router memory per stream at most {per_stream:,} bytes (state {state_bytes:,} B + "
        f"{args.checkpoint_every} inputs of {model.input_size * 4} B)",
        flush=True,
    )


def offline(model, actors, args):
    series = fastlstm.data.load_series()
    feats = fastlstm.data.features(series).astype(np.float32)
    rng = np.random.default_rng(0)
    lengths = rng.integers(26, 105, size=args.windows)
    starts = rng.integers(0, len(feats) - 105, size=args.windows)
    seqs = [feats[s : s + n] for s, n in zip(starts, lengths)]
    ds = ray.data.from_items([{"x": s} for s in seqs], override_num_blocks=4 * max(actors)).materialize()
    # The same batches as the actors see: blocks of the dataset, grouped by length inside each.
    fastlstm.set_num_threads(1)
    batches = [
        [np.asarray(r, np.float32) for r in b["x"]]
        for b in ds.iter_batches(batch_size=args.batch_size, batch_format="numpy")
    ]
    t = time.perf_counter()
    for batch in batches:
        groups = {}
        for a in batch:
            groups.setdefault(len(a), []).append(a)
        for g in groups.values():
            model.predict(np.stack(g), batch_first=True)
    plain = len(seqs) / (time.perf_counter() - t)
    print(
        f"offline: {len(seqs)} CO2 windows (26..104 weeks); plain model.predict on the same batches, "
        f"1 thread: {plain:,.0f} rows/s",
        flush=True,
    )
    half = ds.limit(len(seqs) // 2).materialize()
    for n in actors:
        # Marginal rate: the extra rows of the full dataset over the extra time it takes against half
        # of it, which cancels the fixed costs (starting the actors, shipping them the model).
        times = []
        for part in (half, ds):
            t = time.perf_counter()
            count = predict_dataset(model, part, num_actors=n, batch_size=args.batch_size).materialize().count()
            times.append(time.perf_counter() - t)
            assert count == part.count()
        marginal = (len(seqs) - half.count()) / max(times[1] - times[0], 1e-9)
        print(
            f"offline: predict_dataset, {n} actor(s) x 1 thread: {len(seqs) / times[1]:,.0f} rows/s end to end, "
            f"{marginal:,.0f} rows/s marginal ({marginal / n / plain:.2f} of plain per core; fixed cost "
            f"{times[0] - half.count() / marginal:.1f} s)",
            flush=True,
        )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", default="1,2")
    p.add_argument("--actors", default="1,2")
    p.add_argument("--streams", default="8,16,32,64,128,256,512")
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--p99-ms", type=float, default=10.0)
    p.add_argument("--max-delay-ms", type=float, default=0.0, help="the replicas' Batcher max_delay")
    p.add_argument("--checkpoint-every", type=int, default=16)
    p.add_argument("--failover-streams", type=int, default=64)
    p.add_argument("--cost-streams", type=int, default=32, help="streams for the checkpoint cost rows")
    p.add_argument("--windows", type=int, default=200000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--quick", action="store_true", help="2 s points, 100000 windows")
    p.add_argument("--skip-online", action="store_true")
    p.add_argument("--skip-offline", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.windows = 2.0, 100000
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        if not args.skip_online:
            model = random_model(CONFIGS["medium"])
            online(model, [int(r) for r in args.replicas.split(",")], [int(n) for n in args.streams.split(",")], args)
            checkpoint_cost(model, args)
        if not args.skip_offline:
            offline(fastlstm.load(fastlstm.data.MODEL_PATH), [int(a) for a in args.actors.split(",")], args)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
