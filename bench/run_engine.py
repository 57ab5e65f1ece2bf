#!/usr/bin/env python
"""Side-by-side speed of fastlstm, PyTorch and ONNX Runtime on the six engine configs
(fastlstm/harness/configs.py), plus every other peer of the harness's registry that is installed.

    python bench/run_engine.py            # full run, ~6-9 min on a quiet 2-core machine
    python bench/run_engine.py --quick    # smoke run, ~1.5 min on a quiet machine
    python bench/run_engine.py --configs tiny,small --threads 1 --json out.json
    python bench/run_engine.py --isa avx2 --threads 1   # fastlstm's AVX2 path vs peers held to AVX2

Prints Markdown tables (medians and ratios) ready to paste into a README.

Method (why it looks like this):
* The machine is shared and noisy, so every case of one (config, threads) pair is
  measured *interleaved*: each repeat runs every case once, in a rotated order,
  and the reported figure is the median over repeats.  A burst of load then hits
  all engines alike instead of one of them.
* Each case is a callable doing ``n`` units (steps or whole sequences); ``n`` is
  calibrated so one sample lasts ``--sample-ms``, which keeps perf_counter
  resolution and loop overhead out of the figure.  The calibration doubles as
  the warm-up, and one more untimed sample follows it.
* Streaming state carries across samples (a stream is never reset inside the
  timing), like a real stream; the inputs cycle through a fixed random sequence.
* Thread counts are set for every engine at once (fastlstm.harness.timing.thread_policy):
  the same n for fastlstm, BLAS, torch and ORT's/OpenVINO's intra-op pools.
* fastlstm runs in a worker process of its own (FlWorker), torch and ORT in this
  one, so each keeps its own OpenMP wait policy (one libgomp per process would
  otherwise impose fastlstm's on torch or torch's on fastlstm); the worker
  times its own samples, so the pipe is never in a figure.
* At more than one thread the run pauses between samples of different
  runtimes (--settle-ms), so no thread pool left spinning by the previous case
  steals the core the next one needs.
* Parity with torch is checked before timing, so every engine is known to compute
  the same function.
* ``--isa P`` runs fastlstm's kernel path P (FASTLSTM_ISA) and holds every peer that
  has a switch to the same instruction set (fastlstm.harness.isa: oneDNN under PyTorch
  and OpenVINO, OpenBLAS); ONNX Runtime and tract have none.  These are read when the
  libraries load, so the script sets them and starts itself again.

The runners, the timing loop and the load meter are the harness's (fastlstm/harness); this
script holds the fastlstm worker process, the case table and the report.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from functools import partial
from typing import Dict, List, Optional

import numpy as np

# One libgomp per process serves fastlstm and torch; whichever loads it first decides its
# OMP_WAIT_POLICY for both (read once, at load): fastlstm sets PASSIVE on import (if unset),
# torch keeps libgomp's spinning default.  fastlstm therefore runs in its own worker process
# (FlWorker) and this one loads torch and ORT first, before the harness imports fastlstm;
# only --same-process with the default --import-order loads fastlstm first.  Decided here, at
# import, because importing the harness loads fastlstm; not in the worker (which imports this
# file as "__mp_main__"), which must never load torch.
_policy_before = os.environ.get("OMP_WAIT_POLICY", "unset (libgomp default)")
_FASTLSTM_FIRST = "--same-process" in sys.argv and not any("torch-first" in a for a in sys.argv)
if __name__ == "__main__":
    for _mod in (("fastlstm",) if _FASTLSTM_FIRST else ()) + ("torch", "onnxruntime"):
        try:
            __import__(_mod)
        except ImportError:
            pass

from fastlstm import harness  # noqa: E402
from fastlstm.harness import configs, isa, yardsticks  # noqa: E402
from fastlstm.harness._common import cycle_inputs  # noqa: E402
from fastlstm.harness.configs import CONFIGS, Config  # noqa: E402
from fastlstm.harness.timing import (  # noqa: E402
    Case,
    OtherLoad,
    available_cores,
    cpu_name,
    measure,
    thread_policy,
    wait_for_quiet,
)

#: Registry peers with their own columns in the tables below; every other installed peer gets
#: a row in the "other peers" table ("--engines peers").
OWN_COLUMNS = ("torch", "onnxruntime")


# --------------------------------------------------------------------------- fastlstm's cases


def fl_cases(cfg: Config, fl_model, x: np.ndarray) -> List[Case]:
    """fastlstm's cases: Stream.step with and without ``out=``, and Model.predict."""
    T, B = cfg.T, cfg.B
    stream = fl_model.stream() if B == 1 else fl_model.stream(batch_size=B)  # B=1: x (I,) -> (O,)
    step_inputs = [x[t, 0] if B == 1 else x[t] for t in range(T)]
    out = np.empty((fl_model.output_size,) if B == 1 else (B, fl_model.output_size), np.float32)
    seq = np.ascontiguousarray(x[:, 0, :]) if B == 1 else x
    step, predict = stream.step, fl_model.predict

    def fl_step(n):
        for xt in cycle_inputs(step_inputs, n):
            step(xt)

    def fl_step_out(n):
        for xt in cycle_inputs(step_inputs, n):
            step(xt, out=out)

    def fl_predict(n):
        for _ in range(n):
            predict(seq)

    return [
        Case("fl.step_out", "fastlstm", fl_step_out, "step"),
        Case("fl.step", "fastlstm", fl_step, "step"),
        Case("fl.predict", "fastlstm", fl_predict, "seq"),
    ]


def fl_outputs(cfg: Config, fl_model, x: np.ndarray, steps: int):
    """fastlstm's predict output and its first ``steps`` streamed outputs, shaped (T, B, O)."""
    seq = x[:, 0, :] if cfg.B == 1 else x
    y = np.asarray(fl_model.predict(seq)).reshape(cfg.T, cfg.B, -1)
    stream = fl_model.stream() if cfg.B == 1 else fl_model.stream(batch_size=cfg.B)
    ys = [np.asarray(stream.step(x[t, 0] if cfg.B == 1 else x[t])).reshape(cfg.B, -1) for t in range(steps)]
    return y, np.stack(ys)


# --------------------------------------------------------------------------- the fastlstm worker


def _fl_worker_main(conn):
    """The fastlstm process: builds the model it is sent and runs its cases on command.

    It never imports torch, so fastlstm's libgomp is loaded by fastlstm, with the
    wait policy fastlstm chooses, exactly as in a deployment without torch.
    """
    import contextlib

    import fastlstm

    model = cfg = x = None
    cases: Dict[str, Case] = {}
    policy = contextlib.ExitStack()
    while True:
        msg = conn.recv()
        cmd = msg[0]
        try:
            if cmd == "quit":
                policy.close()
                conn.send(("ok", None))
                return
            if cmd == "info":
                import threadpoolctl

                gomp = [i["filepath"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "openmp"]
                res = {
                    "version": fastlstm.__version__,
                    "openmp": fastlstm.openmp_enabled(),
                    "isa": fastlstm._isa.levels()[0],
                    "libgomp": gomp,
                    "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "unset"),
                    "torch_loaded": "torch" in sys.modules,
                }
            elif cmd == "setup":
                _, name, arrays, x = msg
                cfg = CONFIGS[name]
                model = configs.model_from_arrays(arrays, cfg.L)
                res = None
            elif cmd == "outputs":
                res = fl_outputs(cfg, model, x, msg[1])
            elif cmd == "threads":
                policy.close()
                policy = contextlib.ExitStack()
                policy.enter_context(thread_policy(msg[1]))
                cases = {c.workload: c for c in fl_cases(cfg, model, x)}  # fresh streams per block
                res = [(c.workload, c.engine, c.variant) for c in cases.values()]
            elif cmd == "run":
                res = cases[msg[1]].timed(msg[2])
            else:
                raise ValueError(f"unknown command {cmd!r}")
            conn.send(("ok", res))
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises
            conn.send(("err", f"{type(exc).__name__}: {exc}"))


class FlWorker:
    """fastlstm in a child process, driven sample by sample from this one.

    Why: the process holds a single libgomp, shared by fastlstm and torch, and
    whichever of them loads first decides its OMP_WAIT_POLICY for both
    (fastlstm sets PASSIVE; torch keeps libgomp's spinning default).  In one
    process one of the two always runs under the other's policy, and on a
    loaded 2-core machine that changed 2-thread figures by up to 70x.  Here each
    engine runs with its own defaults, and the samples still interleave.
    """

    def __init__(self):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # a fresh interpreter: nothing of this process's runtimes
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_fl_worker_main, args=(child,), daemon=True)
        self.proc.start()
        child.close()

    def call(self, *msg):
        self.conn.send(msg)
        status, res = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"fastlstm worker: {res}")
        return res

    @property
    def pid(self):
        return self.proc.pid

    def cases(self, threads: int) -> List[Case]:
        """Proxies of the worker's cases at ``threads`` threads, timed in the worker."""
        return [
            Case(key, engine, None, unit, timer=lambda n, key=key: self.call("run", key, n))
            for key, engine, unit in self.call("threads", threads)
        ]

    def close(self):
        try:
            self.call("quit")
        except (OSError, EOFError, RuntimeError):
            pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.terminate()


# --------------------------------------------------------------------------- the other engines' cases


def peer_cases(runners: Dict[str, object], x: np.ndarray) -> List[Case]:
    """Cases of every peer runner: ``<peer>.seq`` and one step case per route, under the keys
    the report's own columns use for torch and ORT."""
    cases: List[Case] = []
    step_keys = {
        ("torch", "nn.LSTM"): "torch.lstm_step",
        ("torch", "nn.LSTMCell"): "torch.cell_step",
        ("onnxruntime", ""): "ort.step_iobind",
    }
    prefix = {"onnxruntime": "ort"}
    for name, runner in runners.items():
        p = prefix.get(name, name)
        cases.append(Case(f"{p}.seq", p, runner.seq_loop(x), "seq"))
        if name == "onnxruntime":
            cases.append(Case("ort.step", p, runner.run_stepper(x).run, "step"))
        for route, stepper in runner.steppers(x).items():
            cases.append(Case(step_keys.get((name, route), f"{p}.step"), p, stepper.run, "step"))
    return cases


def blas_cases(cfg: Config, libs) -> List[Case]:
    """The BLAS yardsticks (both OpenBLAS builds in the process, the better kept by the report)
    and a bare loop over the iterator every step case uses (its cost is in every per-step figure)."""
    xs = list(range(cfg.T))

    def loop_only(n):
        for _ in cycle_inputs(xs, n):
            pass

    cases = [Case("loop", "python", loop_only, "step")]
    for lib in libs:
        peaks = [yardsticks.sgemm_peak_case(cfg, i, lib)[0] for i in cfg.layer_inputs()]
        floor, _ = yardsticks.blas_floor_case(cfg, lib)

        def blas_peak(n, peaks=peaks):
            for _ in range(n):
                for fn in peaks:
                    fn()

        def blas_floor(n, floor=floor):
            for _ in range(n):
                floor()

        cases += [
            Case(f"blas.peak.{lib}", "blas", blas_peak, "seq"),
            Case(f"blas.floor.{lib}", "blas", blas_floor, "seq"),
        ]
    return cases


def build_runners(model, threads: int, want, path: Optional[str] = None) -> Dict[str, object]:
    """The peers' runners at ``threads`` threads (ORT and OpenVINO fix it per session); ``path``:
    the --isa run's kernel path, whose holds some peers cannot run under."""
    names = [
        n
        for n in harness.PEERS
        if harness.PEERS[n].auto  # not Keras, nor the reduced-precision peers (bench/precision.py)
        and n not in isa.left_out(path)
        and not harness.missing_modules(n)
        and (
            ("torch" in want and n == "torch")
            or ("ort" in want and n == "onnxruntime")
            or ("peers" in want and n not in OWN_COLUMNS)
        )
    ]
    runners, _ = harness.build_runners(model, {n: "" for n in harness.PEERS if n not in names}, threads)
    runners.pop("fastlstm")
    return runners


def check_parity(ref, fl_out, runners, x, steps) -> Dict[str, float]:
    """Max |difference| from torch of every engine's output, before any timing.

    ``fl_out`` is fastlstm's ``(predict output, first streamed outputs)`` (from
    :func:`fl_outputs`, possibly computed in the worker) or None.
    """
    errs = {}
    if fl_out is not None:
        y, ys = fl_out
        errs["fl.predict"] = float(np.abs(y.reshape(ref.shape) - ref).max())
        errs["fl.step"] = float(np.abs(ys.reshape(ref[:steps].shape) - ref[:steps]).max())
    for name, runner in runners.items():
        if name == "torch":
            continue
        p = {"onnxruntime": "ort"}.get(name, name)
        errs[f"{p}.seq"] = float(np.abs(runner.predict(x) - ref).max())
        for stepper in runner.steppers(x).values():
            errs[f"{p}.step"] = float(np.abs(stepper.outputs(steps) - ref[:steps]).max())
    return errs


# --------------------------------------------------------------------------- reporting

STEP_TARGETS = {"tiny": (5.0, 10.0), "small": (5.0, 10.0)}  # (vs ORT, vs torch)
STEP_TARGET_ORT_LARGE = 1.5
PREDICT_TARGET_B1 = 1.2
PREDICT_TARGET_BATCHED = 1.0
THREAD_TARGET = 1.7


def _fmt_t(sec: float, unit: str) -> str:
    if sec != sec:  # NaN
        return "-"
    v = sec * (1e6 if unit == "us" else 1e3)
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _fmt_r(r: Optional[float]) -> str:
    return "-" if r is None or r != r else f"{r:.2f}x"


def _ok(r, target) -> str:
    if r is None or r != r:
        return "n/a"
    return "yes" if r >= target else "**NO**"


def _get(res, cfg, threads, key):
    r = res.get((cfg, threads), {})
    if key in ("blas.peak", "blas.floor"):  # the better of the two OpenBLAS builds
        vals = [v for k, v in r.items() if k.startswith(key + ".") and v == v]
        return min(vals) if vals else r.get(key, math.nan)
    return r.get(key, math.nan)


def report(results, errs, cfgs, thread_list, args, env) -> str:
    """Build the Markdown report: environment, step table, predict table, threads table, targets."""
    lines = []
    out = lines.append
    out("## fastlstm benchmark (bench/run_engine.py)\n")
    for k, v in env.items():
        out(f"- {k}: {v}")
    out(
        f"- mode: {'quick' if args.quick else 'full'}; {args.repeats} interleaved repeats, "
        f"samples of ~{args.sample_ms:g} ms; figures are medians"
    )
    out(
        "- 'other load': cores kept busy by other processes while that row was measured (0 = quiet "
        "machine); on 2 cores, 1-thread rows above ~1.0 and 2-thread rows above ~0.3 are not trustworthy\n"
    )
    targets = []  # (description, ratio, target)

    for n in thread_list:
        out(f"### Streaming step, {n} thread{'s' if n > 1 else ''}: microseconds per step (median)\n")
        out(
            "| config | fastlstm step(out=) | fastlstm step | ORT run | ORT iobinding | torch LSTM T=1 | "
            "torch LSTMCell | fl vs ORT best | fl vs torch best | target | met | other load |"
        )
        out("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for c in cfgs:
            g = partial(_get, results, c.name, n)
            fl = g("fl.step_out")
            ort_best = min(g("ort.step"), g("ort.step_iobind"))
            torch_best = min(g("torch.lstm_step"), g("torch.cell_step"))
            r_ort = ort_best / fl if fl == fl else None
            r_torch = torch_best / fl if fl == fl else None
            if c.name in STEP_TARGETS:
                t_o, t_t = STEP_TARGETS[c.name]
                tgt = f">={t_o:g}x ORT, >={t_t:g}x torch"
                met = f"{_ok(r_ort, t_o)} / {_ok(r_torch, t_t)}"
                targets.append((f"step {c.name} {n}T vs ORT", r_ort, t_o))
                targets.append((f"step {c.name} {n}T vs torch", r_torch, t_t))
            else:
                tgt = f">={STEP_TARGET_ORT_LARGE:g}x ORT"
                met = _ok(r_ort, STEP_TARGET_ORT_LARGE)
                targets.append((f"step {c.name} {n}T vs ORT", r_ort, STEP_TARGET_ORT_LARGE))
            out(
                f"| {c.name} | {_fmt_t(fl, 'us')} | {_fmt_t(g('fl.step'), 'us')} | {_fmt_t(g('ort.step'), 'us')} | "
                f"{_fmt_t(g('ort.step_iobind'), 'us')} | {_fmt_t(g('torch.lstm_step'), 'us')} | "
                f"{_fmt_t(g('torch.cell_step'), 'us')} | {_fmt_r(r_ort)} | {_fmt_r(r_torch)} | {tgt} | {met} | "
                f"{g('foreign_load'):.2f} |"
            )
        loops = [_get(results, c.name, n, "loop") for c in cfgs]
        overhead = _fmt_t(statistics.median(loops), "us")
        out(f"\nPython loop overhead included in every step figure: {overhead} us/step.\n")

    for n in thread_list:
        out(f"### predict (whole sequence), {n} thread{'s' if n > 1 else ''}: milliseconds per sequence (median)\n")
        out(
            "| config | fastlstm | torch nn.LSTM | ORT | fl vs best other | target | met | fl GFLOP/s | "
            "sgemm peak GFLOP/s | fl % of peak | BLAS floor ms | fl / floor | other load |"
        )
        out("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for c in cfgs:
            g = partial(_get, results, c.name, n)
            fl, tt, oo = g("fl.predict"), g("torch.seq"), g("ort.seq")
            best = min(tt, oo)
            r = best / fl if fl == fl else None
            tgt_v = PREDICT_TARGET_BATCHED if c.batched else PREDICT_TARGET_B1
            targets.append((f"predict {c.name} {n}T vs best of torch/ORT", r, tgt_v))
            flops = c.flops_per_sequence()
            gf = flops / fl / 1e9 if fl == fl else math.nan
            peak = _get(results, c.name, n, "blas.peak")
            peak_gf = flops / peak / 1e9 if peak == peak else math.nan
            floor = g("blas.floor")
            out(
                f"| {c.name} | {_fmt_t(fl, 'ms')} | {_fmt_t(tt, 'ms')} | {_fmt_t(oo, 'ms')} | {_fmt_r(r)} | "
                f">={tgt_v:g}x | {_ok(r, tgt_v)} | {gf:.1f} | {peak_gf:.1f} | "
                f"{100 * gf / peak_gf:.0f}% | {_fmt_t(floor, 'ms')} | {_fmt_r(fl / floor if fl == fl else None)} | "
                f"{g('foreign_load'):.2f} |"
            )
        out(
            "\nsgemm peak: the better of scipy's and numpy's OpenBLAS sgemm (the engine calls the faster) on "
            "(T*B, I+H) x (I+H, 4H) per layer, the whole "
            "sequence fused into one matmul (an upper bound the recurrence forbids). BLAS floor: only the "
            "matmuls the design needs (one input-projection sgemm + T recurrent sgemm/sgemv per layer), "
            "called from Python (~1 us wrapper cost per call inflates it at small H).\n"
        )

    if args.isa:
        isa_table(out, results, cfgs, thread_list, args.isa)

    if len(thread_list) > 1:
        lo, hi = min(thread_list), max(thread_list)
        out(f"### Threads: {hi} vs {lo} (speed-up = time at {lo} / time at {hi})\n")
        out(f"| config | case | {lo} thread | {hi} threads | speed-up | target |")
        out("|---|---|---|---|---|---|")
        for c in cfgs:
            keys = [
                ("fl.predict", "ms"),
                ("fl.step_out", "us"),
                ("torch.seq", "ms"),
                ("ort.seq", "ms"),
                ("ort.step_iobind", "us"),
                ("torch.lstm_step", "us"),
            ]
            if not c.batched:
                keys = keys[:2]
            for k, unit in keys:
                a, b = _get(results, c.name, lo, k), _get(results, c.name, hi, k)
                s = a / b if b == b and a == a else None
                tgt = ""
                if c.name == "large-batch" and k in ("fl.predict", "fl.step_out"):
                    tgt = f">={THREAD_TARGET:g}x ({_ok(s, THREAD_TARGET)})"
                    targets.append((f"threads {c.name} {k} {hi}T/{lo}T", s, THREAD_TARGET))
                out(f"| {c.name} | {k} ({unit}) | {_fmt_t(a, unit)} | {_fmt_t(b, unit)} | {_fmt_r(s)} | {tgt} |")
        out("")

    others = sorted(
        {
            k.rsplit(".", 1)[0]
            for r in results.values()
            for k in r
            if k.endswith((".seq", ".step")) and not k.startswith(("fl.", "torch.", "ort."))
        }
    )
    for n in thread_list if others else ():
        out(
            f"### Other peers, {n} thread{'s' if n > 1 else ''}: step (us) and predict (ms), median, and their "
            "time / fastlstm's\n"
        )
        out("| config | " + " | ".join(f"{p} step | {p} predict" for p in others) + " |")
        out("|---|" + "---|---|" * len(others))
        for c in cfgs:
            g = partial(_get, results, c.name, n)
            cells = []
            for p in others:
                st, sq = g(f"{p}.step"), g(f"{p}.seq")
                cells += [
                    f"{_fmt_t(st, 'us')} ({_fmt_r(st / g('fl.step_out'))})",
                    f"{_fmt_t(sq, 'ms')} ({_fmt_r(sq / g('fl.predict'))})",
                ]
            out(f"| {c.name} | " + " | ".join(cells) + " |")
        out("")

    out("### Parity with torch before timing (max |diff|)\n")
    out("| config | " + " | ".join(sorted({k for e in errs.values() for k in e})) + " |")
    keys = sorted({k for e in errs.values() for k in e})
    out("|---|" + "---|" * len(keys))
    for c in cfgs:
        e = errs.get(c.name, {})
        out(f"| {c.name} | " + " | ".join(f"{e[k]:.1e}" if k in e else "-" for k in keys) + " |")
    out("")

    out("### Targets\n")
    missed = [(d, r, t) for d, r, t in targets if r is not None and r == r and r < t]
    unknown = [(d, r, t) for d, r, t in targets if r is None or r != r]
    met = len(targets) - len(missed) - len(unknown)
    out(f"{met} of {len(targets)} met" + (f", {len(unknown)} not measured" if unknown else "") + ".")
    for d, r, t in missed:
        out(f"- MISSED: {d}: {r:.2f}x (target >= {t:g}x)")
    return "\n".join(lines)


#: The case keys of each peer isa.HELD_PEERS names: (step cases, predict case).
HELD_CASES = {
    "torch": (("torch.lstm_step", "torch.cell_step"), "torch.seq"),
    "openvino": (("openvino.step",), "openvino.seq"),
}


def isa_table(out, results, cfgs, thread_list, path):
    """fastlstm on one kernel path against the best peer held to the same instruction set, and
    against ONNX Runtime (not held): ratios > 1 mean fastlstm is faster."""
    for n in thread_list:
        out(f"### fastlstm path {path} vs peers held to it ({isa.describe(path)}), {n} thread{'s' if n > 1 else ''}\n")
        out(
            "| config | step: fastlstm µs | best held peer | ratio | ORT | ratio vs ORT | "
            "predict: fastlstm ms | best held peer | ratio | ORT | ratio vs ORT |"
        )
        out("|---|---|---|---|---|---|---|---|---|---|---|")
        for c in cfgs:
            g = partial(_get, results, c.name, n)
            row = [c.name]
            for kind, fl_key, unit in (("step", "fl.step_out", "us"), ("seq", "fl.predict", "ms")):
                fl = g(fl_key)
                peers = {
                    name: min(g(k) for k in HELD_CASES[name][0]) if kind == "step" else g(HELD_CASES[name][1])
                    for name in isa.HELD_PEERS
                }
                peers = {k: v for k, v in peers.items() if v == v}
                best = min(peers, key=peers.__getitem__) if peers else None
                ort = min(g("ort.step"), g("ort.step_iobind")) if kind == "step" else g("ort.seq")
                row += [
                    _fmt_t(fl, unit),
                    f"{_fmt_t(peers[best], unit)} ({best})" if best else "-",
                    _fmt_r(peers[best] / fl if best and fl == fl else None),
                    _fmt_t(ort, unit),
                    _fmt_r(ort / fl if fl == fl else None),
                ]
            out("| " + " | ".join(row) + " |")
        out("")


def environment(thread_list, fl_info) -> Dict[str, str]:
    env = {"CPU": f"{cpu_name()}, {available_cores()} cores available"}
    env["threads compared"] = ", ".join(map(str, thread_list)) + (
        " (the same n for fastlstm.set_num_threads, BLAS via threadpoolctl, torch.set_num_threads, ORT "
        "intra_op_num_threads, OpenVINO INFERENCE_NUM_THREADS)"
    )
    vers = [f"python {platform.python_version()}", f"numpy {np.__version__}"]
    from importlib import metadata

    for mod in ("scipy", "torch", "onnxruntime", "openvino"):
        try:
            vers.append(f"{mod} {metadata.version(mod)}")
        except metadata.PackageNotFoundError:
            vers.append(f"{mod} missing")
    if fl_info is not None:
        vers.append(f"fastlstm {fl_info['version']} (openmp={fl_info['openmp']}, kernel path {fl_info['isa']})")
    env["versions"] = ", ".join(vers)
    env["source"] = _git_state()
    return env


def _git_state() -> str:
    """The checkout's commit (and whether the tree differs from it): the engine changes fast."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"commit {head or '?'}" + (" + uncommitted changes" if dirty else "")


# --------------------------------------------------------------------------- main

_policy_before = os.environ.get("OMP_WAIT_POLICY", "unset (libgomp default)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter samples (~1.5 min on a quiet machine)")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    p.add_argument(
        "--threads", default=None, help="comma-separated thread counts (default: 1 and the cores available, e.g. '1,2')"
    )
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats per case (default 15; quick 5)")
    p.add_argument("--sample-ms", type=float, default=None, help="target length of one sample (default 60; quick 15)")
    p.add_argument("--head", type=int, default=0, help="add a dense head with this many outputs (default: none)")
    p.add_argument("--json", default=None, help="also write raw medians and samples to this JSON file")
    p.add_argument(
        "--engines",
        default="fl,torch,ort,peers,blas",
        help="subset of fl,torch,ort,peers,blas ('peers': every other installed peer of the "
        "harness's registry, e.g. OpenVINO, tract)",
    )
    p.add_argument(
        "--isa",
        choices=sorted(isa.HOLDS),
        default=None,
        help="fastlstm's kernel path (FASTLSTM_ISA), with oneDNN (torch, OpenVINO) and OpenBLAS held to "
        "the same instruction set; adds a table against the best held peer",
    )
    p.add_argument(
        "--max-load",
        type=float,
        default=0.3,
        help="cores other processes may keep busy, beyond the cores a block leaves idle, before "
        "the block counts as noisy (default 0.3)",
    )
    p.add_argument(
        "--retry-noisy",
        type=int,
        default=None,
        help="re-measure a noisy (config, threads) block up to this many times, keeping the "
        "quietest (default 2; quick 0)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        help="before each block wait up to this many seconds for the machine to go quiet (default 30; quick 0)",
    )
    p.add_argument(
        "--settle-ms",
        type=float,
        default=250.0,
        help="at more than one thread, pause this long between samples of different runtimes so "
        "no spinning pool of the previous one is left running (default 250)",
    )
    p.add_argument(
        "--same-process",
        action="store_true",
        help="run fastlstm in this process too (default: its own worker process, so fastlstm and "
        "torch each keep their own OpenMP wait policy; see FlWorker)",
    )
    p.add_argument(
        "--import-order",
        choices=("fastlstm-first", "torch-first"),
        default="fastlstm-first",
        help="with --same-process: which engine loads libgomp, and so whose OMP_WAIT_POLICY applies to both",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds after which no more waiting or re-measuring is done (default 480; quick 90)",
    )
    args = p.parse_args(argv)
    if args.isa:
        isa.restart_held(args.isa, __file__, argv)  # returns once the environment is in place
    args.repeats = args.repeats or (5 if args.quick else 15)
    args.sample_ms = args.sample_ms or (15.0 if args.quick else 60.0)
    if args.time_budget is None:
        args.time_budget = 90.0 if args.quick else 480.0
    if args.retry_noisy is None:
        args.retry_noisy = 0 if args.quick else 2
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.quick else 30.0
    want = tuple(args.engines.split(","))
    cfgs = [CONFIGS[n] for n in args.configs.split(",")]
    if args.threads:
        thread_list = sorted({int(t) for t in args.threads.split(",")})
    else:
        thread_list = sorted({1, available_cores()})

    worker = None
    fl_info = None
    if args.same_process:
        import fastlstm

        if "fl" in want:
            fl_info = {
                "version": fastlstm.__version__,
                "openmp": fastlstm.openmp_enabled(),
                "isa": fastlstm._isa.levels()[0],
            }
        layout = (
            f"one process, {args.import_order}: libgomp's OMP_WAIT_POLICY is "
            f"{os.environ.get('OMP_WAIT_POLICY', 'unset') if _FASTLSTM_FIRST else _policy_before}"
            " for fastlstm and torch alike"
        )
    else:
        if "fl" in want:
            worker = FlWorker()
            try:
                fl_info = worker.call("info")
            except RuntimeError as exc:
                print(f"# {exc}; fastlstm's cases are skipped", file=sys.stderr)
                worker.close()
                worker = None
        layout = "torch and ORT in this process (libgomp default wait policy)"
        if fl_info is not None:
            layout += (
                f"; fastlstm in its own process (OMP_WAIT_POLICY={fl_info['OMP_WAIT_POLICY']}, "
                f"torch loaded there: {fl_info['torch_loaded']}); samples interleave across the two"
            )
    env = environment(thread_list, fl_info)
    env["processes"] = layout
    env["instruction sets"] = (
        f"fastlstm kernel path {fl_info['isa'] if fl_info else '-'}; peers held: "
        f"{isa.describe(args.isa)}; ONNX Runtime and tract never held"
        + "".join(f"; {k} left out: {v}" for k, v in isa.left_out(args.isa).items())
    )
    results: Dict[tuple, Dict[str, float]] = {}
    raw: Dict[str, Dict] = {}
    errs: Dict[str, Dict[str, float]] = {}
    t_start = time.perf_counter()
    for cfg in cfgs:
        t_cfg = time.perf_counter()
        x = configs.make_inputs(cfg)
        arrays = configs.random_arrays(cfg, args.head or None)
        model = configs.model_from_arrays(arrays, cfg.L)  # what the peers rebuild
        steps = min(cfg.T, 64)
        fl_model = fl_out = None
        if worker is not None:
            worker.call("setup", cfg.name, arrays, x)
            fl_out = worker.call("outputs", steps)
        elif fl_info is not None:
            fl_model = model
            fl_out = fl_outputs(cfg, fl_model, x, steps)
        reference = build_runners(model, 1, ("torch",))
        ref = reference["torch"].predict(x) if reference else fl_out[0]
        errs[cfg.name] = check_parity(ref, fl_out, build_runners(model, 1, want, args.isa), x, steps)
        for n in thread_list:
            # Other processes may use the cores this block leaves idle (less a margin),
            # plus --max-load: at 1 thread on 2 cores a neighbour on the other core is tolerable.
            allowed = args.max_load + max(0.0, available_cores() - n - 0.3)
            best = None
            for attempt in range(1 + args.retry_noisy):
                # waits and retries only while the run is inside its time budget
                spare = args.time_budget - (time.perf_counter() - t_start)
                if attempt and spare <= 0:
                    break
                if args.wait_quiet > 0 and spare > 0:
                    wait_for_quiet(allowed, min(args.wait_quiet, spare))
                with thread_policy(n):
                    cases = fl_cases(cfg, fl_model, x) if fl_model is not None else []
                    if worker is not None:
                        cases = worker.cases(n)
                    cases += peer_cases(build_runners(model, n, want, args.isa), x)  # sessions built with n threads
                    if "blas" in want:
                        cases += blas_cases(cfg, ("numpy",) if args.quick else ("scipy", "numpy"))
                    with OtherLoad([worker.pid] if worker is not None else []) as load:
                        measure(
                            cases,
                            args.repeats,
                            args.sample_ms / 1e3,
                            pause_s=0.0,
                            settle_s=args.settle_ms / 1e3 if n > 1 else 0.0,
                        )
                if best is None or load.cores < best[1].cores:
                    best = (cases, load)
                if not (load.cores > allowed):
                    break
                print(
                    f"# {cfg.name} {n}T: other processes busy {load.cores:.2f} cores, "
                    f"{'measuring again' if attempt < args.retry_noisy else 'keeping the quietest try'}",
                    file=sys.stderr,
                    flush=True,
                )
            cases, load = best
            results[(cfg.name, n)] = {c.workload: c.median for c in cases}
            results[(cfg.name, n)]["foreign_load"] = load.cores
            raw[f"{cfg.name}/{n}"] = {
                c.workload: {"median_s": c.median, "n": c.n, "samples_s": c.samples} for c in cases
            }
            raw[f"{cfg.name}/{n}"]["foreign_load_cores"] = load.cores
            summary = ", ".join(
                f"{c.workload}={c.median * (1e6 if c.variant == 'step' else 1e3):.3g}"
                f"{'us' if c.variant == 'step' else 'ms'}"
                for c in cases
            )
            print(
                f"# {cfg.name} {n}T (other processes busy {load.cores:.2f} cores): {summary}",
                file=sys.stderr,
                flush=True,
            )
        print(f"# {cfg.name} done in {time.perf_counter() - t_cfg:.1f} s", file=sys.stderr, flush=True)
    if worker is not None:
        worker.close()
    env["wall time of this run"] = f"{time.perf_counter() - t_start:.0f} s"
    text = report(results, errs, cfgs, thread_list, args, env)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "args": vars(args), "parity": errs, "results": raw}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
