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
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import frameworks as fw  # noqa: E402


def _calibrate(fn, sample_s):
    """Calls of ``fn`` per sample so one sample lasts about ``sample_s`` (the loop warms it up)."""
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= sample_s / 2:
            break
        n *= 2
    return max(1, int(n * sample_s / max(dt, 1e-9)))


def timeit(fn, sample_s=0.03, repeats=9):
    """Median seconds per call of ``fn`` (calibrated loops; the calibration warms it up)."""
    n = _calibrate(fn, sample_s)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t0) / n)
    return statistics.median(out)


def time_interleaved(fns, sample_s, repeats, settle_s=0.0):
    """Like :func:`timeit` for several callables, interleaved so machine noise hits them alike.

    With ``settle_s`` > 0 (at more than one thread) each sample is preceded by
    that pause and one untimed call: an OpenBLAS pool keeps spinning ~0.1 s
    after a call and would otherwise take the core fastlstm's second thread
    needs (and vice versa), and the previous callable has evicted this one's
    weights from the caches.
    """
    ns = {k: _calibrate(fn, sample_s) for k, fn in fns.items()}
    res = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            if settle_s > 0:
                time.sleep(settle_s)
            fn()  # warm the caches with this callable's data
            n = ns[k]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            res[k].append((time.perf_counter() - t0) / n)
    return {k: statistics.median(v) for k, v in res.items()}, ns


class Blas:
    """Row-major BLAS products on preallocated buffers, through numpy's or scipy's OpenBLAS.

    fastlstm prefers numpy's OpenBLAS when it is the newer one (fastlstm/_blas.py),
    so numpy is the default yardstick; ``--blas scipy`` measures scipy's instead.
    """

    def __init__(self, lib="numpy"):
        from scipy.linalg.blas import sgemm, sgemv

        self.lib = lib
        self.sgemm, self.sgemv = sgemm, sgemv

    def product(self, a, w, c):
        """Return a zero-argument callable doing ``c = a @ w`` (a (m, k), w (k, n), all C-contiguous)."""
        if self.lib == "numpy":
            matmul = np.matmul
            if a.shape[0] == 1:
                v, y = a[0], c[0]  # a 1-d left operand makes numpy call sgemv
                return lambda: matmul(v, w, out=y)
            return lambda: matmul(a, w, out=c)
        sgemm, sgemv = self.sgemm, self.sgemv
        if a.shape[0] == 1:
            wt, v, y = w.T, a[0], c[0]  # w.T is (n, k) Fortran-ordered: y = w.T @ v, no copy
            return lambda: sgemv(1.0, wt, v, beta=0.0, y=y, overwrite_y=1)
        at, wt, ct = a.T, w.T, c.T
        return lambda: sgemm(1.0, wt, at, beta=0.0, c=ct, overwrite_c=1)

    def call_overhead(self):
        """Seconds the Python wrapper adds to one call: a 1x1 product is nothing but wrapper."""
        a = np.ones((1, 1), np.float32)
        f = self.product(a, a.copy(), np.zeros((1, 1), np.float32))
        return timeit(f, 0.02, 7)


def engine_chunks(model, B):
    """How many batch-row chunks the engine cuts B rows into (1 if it does not say)."""
    net = getattr(model, "_net", None)
    try:
        return int(net.chunks(B))
    except Exception:  # noqa: BLE001 - private hook, may change
        return 1


def profile(cfg: fw.Config, threads: int, sample_s: float, repeats: int, blas: Blas, overhead: float):
    import fastlstm

    rng = np.random.default_rng(2)
    model = fw.fastlstm_from_arrays(fw.random_arrays(cfg), cfg.L)  # no torch in this process
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
        stacked.append(blas.product(a, w, np.empty((B, 4 * H), np.float32)))
        a = rng.standard_normal((rows, i + H), dtype=np.float32)
        split.append(blas.product(a, w, np.empty((rows, 4 * H), np.float32)))

    def run_stacked():
        for f in stacked:
            f()

    def run_split():
        for _ in range(chunks):
            for f in split:
                f()

    fns = {"fl.step_out": lambda: stream.step(x1, out=out), "blas.stacked": run_stacked, "blas.engine": run_split}
    settle = 0.25 if threads > 1 else 0.0
    step, _ = time_interleaved(fns, sample_s, repeats, settle)
    step["blas.stacked"] -= len(stacked) * overhead
    step["blas.engine"] -= chunks * len(split) * overhead

    # --- one whole sequence
    seq = np.ascontiguousarray(fw.make_inputs(cfg)[:, 0, :]) if B == 1 else fw.make_inputs(cfg)
    tc = T
    net = getattr(model, "_net", None)
    try:
        tc = int(net.time_block(T, rows))
    except Exception:  # noqa: BLE001
        pass
    blocks = -(-T // tc)
    parts = []
    for i in cfg.layer_inputs():
        xin = rng.standard_normal((tc * rows, i), dtype=np.float32)
        wx = rng.standard_normal((i, 4 * H), dtype=np.float32) * 0.05
        wh = rng.standard_normal((H, 4 * H), dtype=np.float32) * 0.05
        h = rng.standard_normal((rows, H), dtype=np.float32)
        parts.append((blas.product(xin, wx, np.empty((tc * rows, 4 * H), np.float32)),
                      blas.product(h, wh, np.empty((rows, 4 * H), np.float32))))
    n_calls = chunks * blocks * len(parts) * (1 + tc)

    def run_floor():
        for _ in range(chunks):
            for _ in range(blocks):
                for proj, rec in parts:
                    proj()
                    for _ in range(tc):
                        rec()

    seq_fns = {"fl.predict": lambda: model.predict(seq), "blas.engine": run_floor}
    pred, _ = time_interleaved(seq_fns, sample_s * 3, max(3, repeats // 2), settle)
    pred["blas.engine"] -= n_calls * overhead
    return {"step": step, "predict": pred, "chunks": chunks, "rows": rows, "tc": tc,
            "weights_mb": sum(4 * 4 * H * (i + H) for i in cfg.layer_inputs()) / 1e6,
            "openmp": fastlstm.openmp_enabled(), "threads": threads}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=",".join(fw.CONFIGS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sample-ms", type=float, default=30.0)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--blas", choices=("numpy", "scipy"), default="numpy",
                   help="whose OpenBLAS the yardsticks call (default numpy's, which fastlstm prefers when newer)")
    args = p.parse_args(argv)
    blas = Blas(args.blas)
    import fastlstm  # noqa: F401 - before thread_policy, which only sets engines already loaded

    rows_out = []
    with fw.thread_policy(args.threads):
        overhead = blas.call_overhead()
        for name in args.configs.split(","):
            cfg = fw.CONFIGS[name]
            r = profile(cfg, args.threads, args.sample_ms / 1e3, args.repeats, blas, overhead)
            rows_out.append((cfg, r))
            print(f"# {name} done", file=sys.stderr, flush=True)

    print(f"## Where the time goes ({args.threads} thread(s); {args.blas}'s OpenBLAS; Python wrapper cost "
          f"{overhead * 1e6:.2f} us/call measured and subtracted)\n")
    print("One streaming step (microseconds):\n")
    print("| config | fastlstm step(out=) | BLAS [x,h] product, whole batch, 1 call/layer | same, once per engine "
          "chunk (chunks x rows) | fl / whole-batch BLAS | fl / per-chunk BLAS | weights MB | fl GB/s of weights |")
    print("|---|---|---|---|---|---|---|---|")
    for cfg, r in rows_out:
        s = r["step"]
        fl = s["fl.step_out"]
        print(f"| {cfg.name} | {fl * 1e6:.3g} | {s['blas.stacked'] * 1e6:.3g} | {s['blas.engine'] * 1e6:.3g} "
              f"({r['chunks']} x {r['rows']}) | {fl / s['blas.stacked']:.2f}x | {fl / s['blas.engine']:.2f}x | "
              f"{r['weights_mb']:.2f} | {r['weights_mb'] / 1e3 / fl:.1f} |")
    print("\nOne predict (milliseconds):\n")
    print("| config | fastlstm predict | BLAS as engine (input sgemm per time block + T recurrent products) | "
          "fl / BLAS | time block | GFLOP/s fl | GFLOP/s BLAS part |")
    print("|---|---|---|---|---|---|---|")
    for cfg, r in rows_out:
        s = r["predict"]
        fl = s["fl.predict"]
        flops = cfg.flops_per_sequence()
        print(f"| {cfg.name} | {fl * 1e3:.3g} | {s['blas.engine'] * 1e3:.3g} | {fl / s['blas.engine']:.2f}x | "
              f"{r['tc']} | {flops / fl / 1e9:.1f} | {flops / s['blas.engine'] / 1e9:.1f} |")


if __name__ == "__main__":
    main()
