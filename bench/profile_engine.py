#!/usr/bin/env python
"""Where fastlstm's time goes: the engine next to the raw BLAS work it cannot avoid.

    python bench/profile_engine.py                       # all configs, 1 thread
    python bench/profile_engine.py --configs large-batch --threads 2

perf is not available on the bench machine, so instead of sampling the engine
this times it side by side (interleaved, medians) with the pieces it is built
from, on the same shapes:

* the matmuls, through numpy's (default) or scipy's OpenBLAS, the ones the engine calls:
  - "stacked": one product per layer over ``[x, h]`` against ``(I+H, 4H)``, the
    whole batch in one call - the least weight traffic possible;
  - "per engine chunk": the same product once per batch-row chunk (the chunk
    count is read from the engine when it exposes it); a big weight matrix is
    then read (and re-packed by OpenBLAS) once per chunk;
* the Python wrapper's own per-call cost, measured and subtracted, so the BLAS
  figures are what C code calling BLAS directly would pay.

The gap between the engine and the matmuls is everything else: the gate pass,
the Python entry and argument checks, copies, thread wake-ups.  (The engine's
``_activate`` test hook was tried as a yardstick for the gate pass and
dropped: it ran ~9 ns per element, far slower than the fused kernel, so it
would have overstated the activations.)
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from fastlstm.harness import configs
from fastlstm.harness.configs import CONFIGS, Config
from fastlstm.harness.timing import Case, measure, thread_policy
from fastlstm.harness.yardsticks import blas_floor_case, call_overhead_case, product


def time_interleaved(fns, sample_s, repeats, settle_s=0.0):
    """Median seconds per call of each zero-argument callable in ``fns``, timed interleaved
    (the harness's calibrated samples): ``{key: seconds}``.

    With ``settle_s`` > 0 (at more than one thread) each sample is preceded by that pause and
    one untimed call: an OpenBLAS pool keeps spinning ~0.1 s after a call and would otherwise
    take the core fastlstm's second thread needs (and vice versa), and the previous callable
    has evicted this one's weights from the caches.
    """

    def loop(fn):
        def run(n):
            for _ in range(n):
                fn()

        return run

    cases = [Case(k, k, loop(fn)) for k, fn in fns.items()]  # each its own engine: every sample is a switch
    measure(cases, repeats, sample_s, pause_s=0.0, settle_s=settle_s)
    return {c.workload: c.median for c in cases}


def engine_chunks(model, B):
    """How many batch-row chunks the engine cuts B rows into (1 if it does not say)."""
    net = getattr(model, "_net", None)
    try:
        return int(net.chunks(B))
    except Exception:  # noqa: BLE001 - private hook, may change
        return 1


def profile(cfg: Config, threads: int, sample_s: float, repeats: int, lib: str, overhead: float):
    import fastlstm

    rng = np.random.default_rng(2)
    model = configs.random_model(cfg)  # no torch in this process
    B, H, T = cfg.B, cfg.H, cfg.T
    chunks = engine_chunks(model, B)
    rows = -(-B // chunks)

    # --- one step
    stream = model.stream() if B == 1 else model.stream(batch_size=B)
    x1 = rng.standard_normal((cfg.I,) if B == 1 else (B, cfg.I), dtype=np.float32)
    out = np.empty((H,) if B == 1 else (B, H), np.float32)
    stacked, split = [], []
    for i in cfg.layer_inputs():
        w = rng.standard_normal((i + H, 4 * H), dtype=np.float32) * 0.05
        a = rng.standard_normal((B, i + H), dtype=np.float32)
        stacked.append(product(a, w, np.empty((B, 4 * H), np.float32), lib))
        a = rng.standard_normal((rows, i + H), dtype=np.float32)
        split.append(product(a, w, np.empty((rows, 4 * H), np.float32), lib))

    def run_stacked():
        for f in stacked:
            f()

    def run_split():
        for _ in range(chunks):
            for f in split:
                f()

    fns = {"fl.step_out": lambda: stream.step(x1, out=out), "blas.stacked": run_stacked, "blas.engine": run_split}
    settle = 0.25 if threads > 1 else 0.0
    step = time_interleaved(fns, sample_s, repeats, settle)
    step["blas.stacked"] -= len(stacked) * overhead
    step["blas.engine"] -= chunks * len(split) * overhead

    # --- one whole sequence
    seq = np.ascontiguousarray(configs.make_inputs(cfg)[:, 0, :]) if B == 1 else configs.make_inputs(cfg)
    tc = T
    net = getattr(model, "_net", None)
    try:
        tc = int(net.time_block(T, rows))
    except Exception:  # noqa: BLE001
        pass
    run_floor, n_calls = blas_floor_case(cfg, lib, rows=rows, time_block=tc, chunks=chunks)

    seq_fns = {"fl.predict": lambda: model.predict(seq), "blas.engine": run_floor}
    pred = time_interleaved(seq_fns, sample_s * 3, max(3, repeats // 2), settle)
    pred["blas.engine"] -= n_calls * overhead
    return {
        "step": step,
        "predict": pred,
        "chunks": chunks,
        "rows": rows,
        "tc": tc,
        "weights_mb": sum(4 * 4 * H * (i + H) for i in cfg.layer_inputs()) / 1e6,
        "openmp": fastlstm.openmp_enabled(),
        "threads": threads,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sample-ms", type=float, default=30.0)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument(
        "--blas",
        choices=("numpy", "scipy"),
        default="numpy",
        help="whose OpenBLAS the yardsticks call (default numpy's, which fastlstm prefers when newer)",
    )
    args = p.parse_args(argv)
    rows_out = []
    with thread_policy(args.threads):
        overhead = time_interleaved({"overhead": call_overhead_case(args.blas)}, 0.02, 7)["overhead"]
        for name in args.configs.split(","):
            cfg = CONFIGS[name]
            r = profile(cfg, args.threads, args.sample_ms / 1e3, args.repeats, args.blas, overhead)
            rows_out.append((cfg, r))
            print(f"# {name} done", file=sys.stderr, flush=True)

    print(
        f"## Where the time goes ({args.threads} thread(s); {args.blas}'s OpenBLAS; Python wrapper cost "
        f"{overhead * 1e6:.2f} us/call measured and subtracted)\n"
    )
    print("One streaming step (microseconds):\n")
    print(
        "| config | fastlstm step(out=) | BLAS [x,h] product, whole batch, 1 call/layer | same, once per engine "
        "chunk (chunks x rows) | fl / whole-batch BLAS | fl / per-chunk BLAS | weights MB | fl GB/s of weights |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for cfg, r in rows_out:
        s = r["step"]
        fl = s["fl.step_out"]
        print(
            f"| {cfg.name} | {fl * 1e6:.3g} | {s['blas.stacked'] * 1e6:.3g} | {s['blas.engine'] * 1e6:.3g} "
            f"({r['chunks']} x {r['rows']}) | {fl / s['blas.stacked']:.2f}x | {fl / s['blas.engine']:.2f}x | "
            f"{r['weights_mb']:.2f} | {r['weights_mb'] / 1e3 / fl:.1f} |"
        )
    print("\nOne predict (milliseconds):\n")
    print(
        "| config | fastlstm predict | BLAS as engine (input sgemm per time block + T recurrent products) | "
        "fl / BLAS | time block | GFLOP/s fl | GFLOP/s BLAS part |"
    )
    print("|---|---|---|---|---|---|---|")
    for cfg, r in rows_out:
        s = r["predict"]
        fl = s["fl.predict"]
        flops = cfg.flops_per_sequence()
        print(
            f"| {cfg.name} | {fl * 1e3:.3g} | {s['blas.engine'] * 1e3:.3g} | {fl / s['blas.engine']:.2f}x | "
            f"{r['tc']} | {flops / fl / 1e9:.1f} | {flops / s['blas.engine'] / 1e9:.1f} |"
        )


if __name__ == "__main__":
    main()
