"""Many live streams per tick: fastlstm StreamPool against per-stream and hand-batched alternatives.

A service holds N users' streams, each with its own LSTM state; every tick each of them gets one
new input.  For N = 1, 16, 256 and 1024 active streams, on the small and medium engine configs,
this script times one tick (all N streams advanced by one step) with:

  pool          fastlstm ``pool.step(ids, x, out=out)``: one batched call for the N streams
  stream/each   fastlstm, one unbatched ``Stream.step(x_k, out=out_k)`` per stream
  ort/batched   ONNX Runtime, streams batched by hand: each stream's h/c kept as its own array,
                ``np.concatenate`` into (L, N, H), one T=1 ``session.run`` for the whole batch
                (a model exported for batch N), ``np.split`` of hn/cn back into per-stream arrays
  ort/each      ONNX Runtime called once per stream (T=1, batch 1, h/c in and out), plain
                ``session.run`` ...
  ort/each-io   ... and through two IOBindings per stream prepared once (ORT's fastest Python route)
  torch/batched PyTorch batched by hand the same way: ``torch.cat`` of per-stream h/c, one
                ``nn.LSTM`` call on (1, N, I) under ``torch.inference_mode()``, ``torch.split`` back

and prints per-tick latency (p50, p99), per-stream-step cost (p50 tick / N) and the ratios.

    python bench/run_pool.py --quick      # < 2 min on 2 cores
    python bench/run_pool.py              # full, < 10 min on 2 cores
    python bench/run_pool.py --configs small --streams 256 --json /tmp/pool.json

Every engine runs the same weights (drawn like PyTorch's default init, fastlstm/harness/configs.py)
and its outputs are checked against PyTorch before anything is timed.  One thread count for every
engine (default: the cores this process may use): fastlstm, torch and the BLAS pools through the
harness's ``thread_policy``, ORT's ``intra_op_num_threads``.  The ORT and torch rebuilds, the load
meter and the thread policy are the harness's (fastlstm/harness); the per-stream engines, the tick
loop and the report are this script's.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import time
from typing import Callable, Dict, List

import numpy as np

from fastlstm.harness import configs
from fastlstm.harness.configs import CONFIGS
from fastlstm.harness.ort_runner import OrtBoundStepper, OrtRunner, OrtRunStepper
from fastlstm.harness.timing import (
    OtherLoad,
    available_cores,
    cpu_name,
    rotations,
    thread_policy,
    tick_latencies,
    wait_for_quiet,
)
from fastlstm.harness.torch_runner import TorchRunner

STREAM_COUNTS = (1, 16, 256, 1024)
CONFIG_NAMES = ("small", "medium")
ENGINES = ("pool", "stream/each", "ort/batched", "ort/each", "ort/each-io", "torch/batched")
N_INPUTS = 8  # distinct input ticks, cycled


# --------------------------------------------------------------------------- engines


class Engine:
    """One way to advance N streams by one step.  ``tick(k)`` uses input tick k (of N_INPUTS)."""

    name = ""

    def tick(self, k):
        raise NotImplementedError

    def outputs(self, k) -> np.ndarray:
        """Run tick k and return the (N, O) outputs (for the parity check; not timed)."""
        raise NotImplementedError


class PoolEngine(Engine):
    name = "pool"

    def __init__(self, model, xs):
        N = xs.shape[1]
        self.pool = model.pool(N)
        ids = [self.pool.open() for _ in range(N)]
        self.ids = np.array(np.random.default_rng(7).permutation(ids), dtype=np.int64)  # any order
        self.xs = [np.ascontiguousarray(x) for x in xs]
        self.out = np.empty((N, model.output_size), np.float32)

    def tick(self, k):
        self.pool.step(self.ids, self.xs[k], out=self.out)

    def outputs(self, k):
        self.tick(k)
        return self.out.copy()


class StreamEachEngine(Engine):
    name = "stream/each"

    def __init__(self, model, xs):
        N = xs.shape[1]
        self.streams = [model.stream() for _ in range(N)]
        self.out = np.empty((N, model.output_size), np.float32)
        outs = list(self.out)
        # row views made once, so a tick is only the N calls
        self.work = [list(zip([s.step for s in self.streams], list(x), outs)) for x in xs]

    def tick(self, k):
        for step, x, out in self.work[k]:
            step(x, out=out)

    def outputs(self, k):
        self.tick(k)
        return self.out.copy()


class OrtBatchedEngine(Engine):
    name = "ort/batched"

    def __init__(self, runner: OrtRunner, xs):
        N = xs.shape[1]
        self.sess, self.names, self.N = runner.step_sess, runner.graphs.state_in, N
        self.states = [runner.graphs.zero_state(1) for _ in range(N)]  # each stream's own arrays
        self.xs = [np.ascontiguousarray(x[None]) for x in xs]  # (1, N, I)
        self.y = None

    def tick(self, k):
        feeds = {name: np.concatenate([st[j] for st in self.states], axis=1) for j, name in enumerate(self.names)}
        feeds["x"] = self.xs[k]
        self.y, *new = self.sess.run(None, feeds)
        split = [np.split(a, self.N, axis=1) for a in new]
        self.states = [[part[i] for part in split] for i in range(self.N)]

    def outputs(self, k):
        self.tick(k)
        return self.y[0].copy()


class OrtEachEngine(Engine):
    name = "ort/each"

    def __init__(self, runner: OrtRunner, xs, bound):
        kind = OrtBoundStepper if bound else OrtRunStepper
        self.steppers = [
            kind(runner.step_sess, runner.graphs, np.ascontiguousarray(xs[:, j : j + 1])) for j in range(xs.shape[1])
        ]
        if bound:
            self.name = "ort/each-io"

    def tick(self, k):
        for st in self.steppers:
            st.step(st.inputs[k])

    def outputs(self, k):
        return np.stack([np.array(st.step(st.inputs[k]))[0, 0] for st in self.steppers])


class TorchBatchedEngine(Engine):
    name = "torch/batched"

    def __init__(self, runner: TorchRunner, xs):
        import torch

        self.torch, self.net = torch, runner.net
        N = xs.shape[1]
        _, zero = self.net(torch.zeros(1, 1, xs.shape[2]))  # the state layout at batch 1
        self.states = [[(torch.zeros_like(h), torch.zeros_like(c)) for h, c in zero] for _ in range(N)]
        self.xs = [torch.from_numpy(np.ascontiguousarray(x[None])) for x in xs]  # converted up front
        self.y = None

    def tick(self, k):
        torch, states = self.torch, self.states
        batched = [
            (torch.cat([st[j][0] for st in states], dim=1), torch.cat([st[j][1] for st in states], dim=1))
            for j in range(len(states[0]))
        ]
        self.y, new = self.net(self.xs[k], batched)
        parts = [(torch.split(h, 1, dim=1), torch.split(c, 1, dim=1)) for h, c in new]
        self.states = [[(h[i], c[i]) for h, c in parts] for i in range(len(states))]

    def outputs(self, k):
        with self.torch.inference_mode():
            self.tick(k)
        return self.y[0].numpy().copy()


# --------------------------------------------------------------------------- measuring


def run_block(
    engine: Engine, seconds: float, min_ticks: int, max_ticks: int, start: int, inference_mode
) -> List[float]:
    """Tick for ``seconds`` after 3 untimed warm-up ticks; returns the seconds each timed tick took
    (the harness's tick_latencies, inside torch's inference mode)."""
    with inference_mode():
        return tick_latencies(lambda k: engine.tick(k % N_INPUTS), seconds, min_ticks, max_ticks, warmup=3, start=start)


def measure_case(engines: Dict[str, Engine], budget_s, min_ticks, max_ticks, rounds, inference_mode):
    """Interleaved rounds: every engine runs one block per round, in a rotated order, so load from
    other processes hits every engine alike.  Each block lasts budget_s / rounds."""
    samples = {name: [] for name in engines}
    loads = []
    for r, order in enumerate(rotations(list(engines), rounds)):
        for name in order:
            gc.collect()
            gc.disable()
            try:
                with OtherLoad() as ol:
                    samples[name] += run_block(
                        engines[name],
                        budget_s / rounds,
                        -(-min_ticks // rounds),
                        max(1, max_ticks // rounds),
                        r * 7,
                        inference_mode,
                    )
            finally:
                gc.enable()
            loads.append(ol.cores)
    return samples, float(np.nanmax(loads)) if loads else math.nan


def summarize(samples: List[float], N: int) -> Dict[str, float]:
    a = np.asarray(samples)
    p50, p99 = np.percentile(a, 50), np.percentile(a, 99)
    return {
        "ticks": int(a.size),
        "p50_s": float(p50),
        "p99_s": float(p99),
        "mean_s": float(a.mean()),
        "per_stream_s": float(p50 / N),
        "p99_over_p50": float(p99 / p50),
    }


# --------------------------------------------------------------------------- building


def build_engines(model, ort: OrtRunner, torch_runner: TorchRunner, which, xs):
    """Fresh engines for N streams (a fresh call gives zero states again)."""
    makers: Dict[str, Callable[[], Engine]] = {
        "pool": lambda: PoolEngine(model, xs),
        "stream/each": lambda: StreamEachEngine(model, xs),
        "ort/batched": lambda: OrtBatchedEngine(ort, xs),
        "ort/each": lambda: OrtEachEngine(ort, xs, bound=False),
        "ort/each-io": lambda: OrtEachEngine(ort, xs, bound=True),
        "torch/batched": lambda: TorchBatchedEngine(torch_runner, xs),
    }
    return {name: make for name, make in makers.items() if name in which}


def check_parity(factories, torch_runner: TorchRunner, xs) -> Dict[str, float]:
    """Each engine, fresh, runs 3 ticks; max |difference| from nn.LSTM run over the same 3 steps."""
    ref = torch_runner.predict(np.ascontiguousarray(xs[:3]))  # (3, N, O)
    errs = {}
    for name, make in factories.items():
        e = make()
        got = np.stack([e.outputs(k) for k in range(3)])
        errs[name] = float(np.abs(got - ref).max())
    return errs


# --------------------------------------------------------------------------- report


def _fmt(sec):
    if not math.isfinite(sec):
        return "-"
    if sec >= 1e-3:
        return f"{sec * 1e3:.2f} ms"
    return f"{sec * 1e6:.1f} µs"


def _ratio(a, b):
    return f"{a / b:.1f}x" if a and b and math.isfinite(a) and math.isfinite(b) else "-"


def report(results, args, env) -> str:
    lines = ["# fastlstm StreamPool benchmark", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    lines += [
        "",
        "Per tick = all N active streams advanced by one step. Per stream = p50 tick / N.",
        "Ratios: the other engine's per-stream cost over pool.step's (higher = pool faster).",
        "",
    ]
    for cfg_name in args.configs:
        cfg = CONFIGS[cfg_name]
        lines += [
            f"## {cfg_name}: I={cfg.I} H={cfg.H} layers={cfg.L}",
            "",
            "| N | engine | ticks | p50 / tick | p99 / tick | p99/p50 | per stream-step | vs pool | other load |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for N in args.streams:
            res = results.get(f"{cfg_name}/{N}")
            if not res:
                continue
            pool = res["engines"].get("pool")
            for name in ENGINES:
                r = res["engines"].get(name)
                if r is None:
                    continue
                vs = "1.0x" if name == "pool" else (_ratio(r["per_stream_s"], pool["per_stream_s"]) if pool else "-")
                lines.append(
                    f"| {N} | {name} | {r['ticks']} | {_fmt(r['p50_s'])} | {_fmt(r['p99_s'])} | "
                    f"{r['p99_over_p50']:.2f} | {_fmt(r['per_stream_s'])} | {vs} | {res['other_load']:.2f} |"
                )
        lines.append("")
    # parity
    lines += [
        "## Parity (max |engine - nn.LSTM| over 3 ticks from zero state)",
        "",
        "| config | N | " + " | ".join(ENGINES) + " |",
        "|---|---:|" + "---:|" * len(ENGINES),
    ]
    for key, res in results.items():
        cfg_name, N = key.split("/")
        lines.append(
            f"| {cfg_name} | {N} | "
            + " | ".join(f"{res['parity'][e]:.1e}" if e in res["parity"] else "-" for e in ENGINES)
            + " |"
        )
    lines.append("")
    # targets
    lines += ["## Targets (at 256 streams)", "", "| config | target | measured | met |", "|---|---|---:|---|"]
    met = total = 0
    for cfg_name in args.configs:
        res = results.get(f"{cfg_name}/256")
        if not res:
            continue
        e = res["engines"]
        pool = e.get("pool")
        checks = []
        each = [e[n]["per_stream_s"] for n in ("ort/each", "ort/each-io") if n in e]
        if pool and each:
            checks.append(
                (
                    "pool >= 20x cheaper per stream than ORT once per stream (its faster route)",
                    min(each) / pool["per_stream_s"],
                    20.0,
                )
            )
        if pool and "ort/batched" in e:
            checks.append(
                (
                    "pool >= 1.2x cheaper per stream than ORT batched by hand",
                    e["ort/batched"]["per_stream_s"] / pool["per_stream_s"],
                    1.2,
                )
            )
        if pool:
            checks.append(("pool p99 per tick within 2x of p50", pool["p99_over_p50"], -2.0))
        for label, value, target in checks:
            ok = value <= -target if target < 0 else value >= target
            met += ok
            total += 1
            lines.append(f"| {cfg_name} | {label} | {value:.2f}{'' if target < 0 else 'x'} | {'yes' if ok else 'NO'} |")
    lines += ["", f"{met} of {total} targets met.", ""]
    return "\n".join(lines)


def environment(threads) -> Dict[str, str]:
    import fastlstm

    env = {
        "threads (every engine)": f"{threads} (fastlstm.set_num_threads, torch.set_num_threads, "
        f"BLAS via threadpoolctl, ORT intra_op_num_threads)",
        "cores available": str(available_cores()),
        "fastlstm": f"{fastlstm.__version__}, threads {'on' if fastlstm.openmp_enabled() else 'off'}",
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    for mod in ("torch", "onnxruntime"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = "missing"
    env["cpu"] = cpu_name()
    return env


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="shorter samples: under 2 min on 2 cores")
    p.add_argument("--configs", default=",".join(CONFIG_NAMES), help="subset of small,medium")
    p.add_argument("--streams", default=",".join(map(str, STREAM_COUNTS)), help="active stream counts")
    p.add_argument("--engines", default=",".join(ENGINES), help="subset of " + ",".join(ENGINES))
    p.add_argument("--threads", type=int, default=None, help="threads for every engine (default: cores)")
    p.add_argument("--head", type=int, default=0, help="add a dense head with this many outputs")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds of timed ticks per engine and case (default 2.5; quick 0.35)",
    )
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; quick 3)")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        help="before each case wait up to this many s for other processes to go quiet (default 20; quick 3)",
    )
    p.add_argument("--max-load", type=float, default=0.3, help="'quiet' = other processes use at most this many cores")
    p.add_argument("--json", default=None, help="also write the raw results here")
    args = p.parse_args(argv)
    args.configs = [c for c in args.configs.split(",") if c]
    args.streams = [int(n) for n in args.streams.split(",") if n]
    which = [e for e in args.engines.split(",") if e]
    unknown = set(which) - set(ENGINES)
    if unknown:
        p.error(f"unknown engines {sorted(unknown)}")
    threads = args.threads or available_cores()
    budget = args.budget if args.budget is not None else (0.35 if args.quick else 2.5)
    rounds = args.rounds or (3 if args.quick else 5)
    min_ticks, max_ticks = (30, 5000) if args.quick else (200, 50000)
    wait_s = args.wait_quiet if args.wait_quiet is not None else (3.0 if args.quick else 20.0)

    import torch

    t_start = time.perf_counter()
    env = environment(threads)
    print(f"threads for every engine: {threads} (cores available: {available_cores()})", flush=True)
    results = {}
    with thread_policy(threads):
        for cfg_name in args.configs:
            cfg = CONFIGS[cfg_name]
            fl_model = configs.random_model(cfg, args.head or None)
            ort, torch_runner = OrtRunner(fl_model, threads), TorchRunner(fl_model)  # batch is dynamic in ORT's
            for N in args.streams:
                xs = np.random.default_rng(N).standard_normal((N_INPUTS, N, cfg.I), dtype=np.float32)
                factories = build_engines(fl_model, ort, torch_runner, which, xs)
                parity = check_parity(factories, torch_runner, xs)
                bad = {k: v for k, v in parity.items() if not v <= 1e-4}
                if bad:
                    print(f"PARITY FAILURE {cfg_name} N={N}: {bad}", file=sys.stderr)
                    return 2
                if wait_s > 0:
                    wait_for_quiet(args.max_load, wait_s)
                engines = {name: make() for name, make in factories.items()}
                samples, load = measure_case(engines, budget, min_ticks, max_ticks, rounds, torch.inference_mode)
                res = {
                    "engines": {n: summarize(s, N) for n, s in samples.items()},
                    "parity": parity,
                    "other_load": load,
                    "N": N,
                    "config": cfg_name,
                }
                results[f"{cfg_name}/{N}"] = res
                pool = res["engines"].get("pool")
                print(
                    f"  {cfg_name:6s} N={N:5d}  "
                    + "  ".join(f"{n}={_fmt(r['per_stream_s'])}" for n, r in res["engines"].items())
                    + f"  (other load {load:.2f})"
                    + (f"  pool p99/p50={pool['p99_over_p50']:.2f}" if pool else ""),
                    flush=True,
                )
                del engines
    env["wall time"] = f"{time.perf_counter() - t_start:.0f} s"
    text = report(results, args, env)
    print()
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
