#!/usr/bin/env python
"""Side-by-side speed of fastlstm, PyTorch and ONNX Runtime on the six configs of issue 2.

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
* Thread counts are set for every engine at once (frameworks.thread_policy): the
  same n for fastlstm, BLAS, torch and ORT's intra-op pool.
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
  has a switch to the same instruction set (ISA_HOLDS: oneDNN under PyTorch and
  OpenVINO, OpenBLAS); ONNX Runtime has none.  These are read when the libraries
  load, so the script sets them and starts itself again.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import frameworks as fw  # noqa: E402


# --------------------------------------------------------------------------- cases

@dataclass
class Case:
    """A timed operation: ``run(n)`` performs ``n`` units (``unit`` is 'step' or 'seq')."""

    key: str
    engine: str
    unit: str
    run: Optional[Callable[[int], object]]
    n: int = 1
    samples: List[float] = field(default_factory=list)  # seconds per unit
    #: ``timer(n)`` -> seconds for n units, timed where the work runs (a case
    #: living in the fastlstm worker process is timed there, so the pipe's
    #: round trip is never part of a figure); None: timed here around ``run``.
    timer: Optional[Callable[[int], float]] = None
    unit_s: float = 0.0  # one unit's time, from calibration

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else math.nan

    def timed(self, n: int) -> float:
        if self.timer is not None:
            return self.timer(n)
        t0 = time.perf_counter()
        self.run(n)
        return time.perf_counter() - t0


def _cycle(items, n):
    return itertools.islice(itertools.cycle(items), n)


def fastlstm_available():
    try:
        import fastlstm

        fastlstm.Model  # noqa: B018 - the engine may be half-built while it is being written
        return fastlstm
    except Exception as exc:  # noqa: BLE001
        print(f"# fastlstm not importable ({type(exc).__name__}: {exc}); its cases are skipped", file=sys.stderr)
        return None


def fl_cases(cfg: fw.Config, fl_model, x: np.ndarray) -> List[Case]:
    """fastlstm's cases: Stream.step with and without ``out=``, and Model.predict."""
    T, B = cfg.T, cfg.B
    if B == 1:
        stream = fl_model.stream()  # batch_size=None: x (I,) -> (O,), the single-stream API
        step_inputs = [x[t, 0] for t in range(T)]
        out = np.empty((fl_model.output_size,), np.float32)
        seq = np.ascontiguousarray(x[:, 0, :])  # (T, I)
    else:
        stream = fl_model.stream(batch_size=B)
        step_inputs = [x[t] for t in range(T)]
        out = np.empty((B, fl_model.output_size), np.float32)
        seq = x
    step = stream.step

    def fl_step(n):
        for xt in _cycle(step_inputs, n):
            step(xt)

    def fl_step_out(n):
        for xt in _cycle(step_inputs, n):
            step(xt, out=out)

    predict = fl_model.predict

    def fl_predict(n):
        for _ in range(n):
            predict(seq)

    return [Case("fl.step_out", "fastlstm", "step", fl_step_out),
            Case("fl.step", "fastlstm", "step", fl_step),
            Case("fl.predict", "fastlstm", "seq", fl_predict)]


def fl_outputs(cfg: fw.Config, fl_model, x: np.ndarray, steps: int):
    """fastlstm's predict output and its first ``steps`` streamed outputs, shaped like torch's (T, B, O)."""
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

    fl = fastlstm_available()
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
            if fl is None:
                raise RuntimeError("fastlstm is not importable in the worker")
            if cmd == "info":
                import threadpoolctl

                gomp = [i["filepath"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "openmp"]
                res = {"version": getattr(fl, "__version__", "?"), "openmp": fl.openmp_enabled(),
                       "isa": fl._isa.levels()[0],
                       "libgomp": gomp, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "unset"),
                       "torch_loaded": "torch" in sys.modules}
            elif cmd == "setup":
                _, name, sd, num_layers, head_w, head_b, x = msg
                cfg = fw.CONFIGS[name]
                model = fw.fastlstm_from_arrays(sd, num_layers, head_w, head_b)
                res = None
            elif cmd == "outputs":
                res = fl_outputs(cfg, model, x, msg[1])
            elif cmd == "threads":
                policy.close()
                policy = contextlib.ExitStack()
                policy.enter_context(fw.thread_policy(msg[1]))
                cases = {c.key: c for c in fl_cases(cfg, model, x)}  # fresh streams per block
                res = [(c.key, c.engine, c.unit) for c in cases.values()]
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
        out = []
        for key, engine, unit in self.call("threads", threads):
            out.append(Case(key, engine, unit, None, timer=lambda n, key=key: self.call("run", key, n)))
        return out

    def close(self):
        try:
            self.call("quit")
        except (OSError, EOFError, RuntimeError):
            pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.terminate()


def make_cases(cfg: fw.Config, threads: int, torch_parts, onnx_paths, fl_model, x: np.ndarray,
               want=("fl", "torch", "ort", "ov", "blas"), blas_libs=("scipy", "numpy")) -> List[Case]:
    """Build every case for one config at one thread count (ORT sessions are built here, with ``threads``)."""
    cases: List[Case] = []
    T, B = cfg.T, cfg.B

    # A bare loop over the same iterator every step case uses: its cost is in
    # every per-step figure, so it is printed to show it is negligible.
    xs_np = [x[t] for t in range(T)]

    def loop_only(n):
        for _ in _cycle(xs_np, n):
            pass

    cases.append(Case("loop", "python", "step", loop_only))

    if fl_model is not None and "fl" in want:
        cases += fl_cases(cfg, fl_model, x)

    if torch_parts is not None and "torch" in want:
        import torch

        lstm, head, cells = torch_parts
        xt_all = torch.from_numpy(x)
        x1 = [xt_all[t:t + 1] for t in range(T)]  # (1, B, I) views
        xb = [xt_all[t] for t in range(T)]  # (B, I) views
        st = {"h": torch.zeros(cfg.L, B, cfg.H), "c": torch.zeros(cfg.L, B, cfg.H)}
        hs = [torch.zeros(B, cfg.H) for _ in range(cfg.L)]
        cs = [torch.zeros(B, cfg.H) for _ in range(cfg.L)]

        # inference_mode is entered once per sample, not per step: a streaming
        # user would hold it around the loop too, so it is not charged per step.
        def torch_lstm_step(n):
            h, c = st["h"], st["c"]
            with torch.inference_mode():
                for xt in _cycle(x1, n):
                    y, (h, c) = lstm(xt, (h, c))
                    if head is not None:
                        y = head(y)
            st["h"], st["c"] = h, c

        def torch_cell_step(n):
            with torch.inference_mode():
                for xt in _cycle(xb, n):
                    inp = xt
                    for k, cell in enumerate(cells):
                        hs[k], cs[k] = cell(inp, (hs[k], cs[k]))
                        inp = hs[k]
                    if head is not None:
                        inp = head(inp)

        def torch_seq(n):
            with torch.inference_mode():
                for _ in range(n):
                    y, _ = lstm(xt_all)
                    if head is not None:
                        y = head(y)

        cases += [Case("torch.lstm_step", "torch", "step", torch_lstm_step),
                  Case("torch.cell_step", "torch", "step", torch_cell_step),
                  Case("torch.seq", "torch", "seq", torch_seq)]

    if onnx_paths is not None and "ort" in want:
        seq_sess = fw.ort_session(onnx_paths["seq"], threads)
        stepper = fw.OrtStepper(fw.ort_session(onnx_paths["step"], threads), cfg)
        x1_np = [np.ascontiguousarray(x[t:t + 1]) for t in range(T)]
        feeds = {"x": x}

        def ort_step(n):
            for xt in _cycle(x1_np, n):
                stepper.step(xt)

        def ort_step_bound(n):
            for xt in _cycle(x1_np, n):
                stepper.step_bound(xt)

        def ort_seq(n):
            for _ in range(n):
                seq_sess.run(None, feeds)

        cases += [Case("ort.step", "ort", "step", ort_step),
                  Case("ort.step_iobind", "ort", "step", ort_step_bound),
                  Case("ort.seq", "ort", "seq", ort_seq)]

    if onnx_paths is not None and "ov" in want:
        ov_seq = fw.ov_model(onnx_paths["seq"], threads).create_infer_request()
        ov_stepper = fw.OvStepper(fw.ov_model(onnx_paths["step"], threads), cfg)
        x1_ov = [np.ascontiguousarray(x[t:t + 1]) for t in range(T)]

        def ov_step(n):
            for xt in _cycle(x1_ov, n):
                ov_stepper.step(xt)

        def ov_predict(n):
            for _ in range(n):
                ov_seq.infer({"x": x})

        cases += [Case("ov.step", "ov", "step", ov_step), Case("ov.seq", "ov", "seq", ov_predict)]

    if "blas" in want:
        # Both OpenBLAS builds in the process (scipy's, numpy's) are measured and the
        # better kept, since fastlstm picks the faster of the two (fastlstm/_blas.py);
        # --quick measures numpy's only (the newer one, which fastlstm prefers here).
        # Peak flops summed over layers equal cfg.flops_per_sequence(), so one
        # count serves both the engine's GFLOP/s and the peak's.
        for lib in blas_libs:
            peaks = [fw.sgemm_peak_case(cfg, i, lib)[0] for i in cfg.layer_inputs()]
            floor = fw.blas_floor_case(cfg, lib)

            def blas_peak(n, peaks=peaks):
                for _ in range(n):
                    for fn in peaks:
                        fn()

            def blas_floor(n, floor=floor):
                for _ in range(n):
                    floor()

            cases += [Case(f"blas.peak.{lib}", "blas", "seq", blas_peak),
                      Case(f"blas.floor.{lib}", "blas", "seq", blas_floor)]
    return cases


# --------------------------------------------------------------------------- timing

class ForeignLoad:
    """How many cores *other* processes kept busy while a block ran.

    On a shared 2-core machine a second process eating one core wrecks any
    2-thread figure (an OpenMP barrier waits on a descheduled thread), so each
    block's figures are printed next to this number and can be judged by it.
    Busy time comes from /proc/stat, our own from os.times(); Linux only
    (elsewhere it reports NaN).
    """

    @staticmethod
    def _busy_s():
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def __init__(self, helper_pids=()):
        self.helper_pids = [p for p in helper_pids if p]

    def _own_s(self):
        """CPU seconds of this process and its helper processes (the fastlstm worker)."""
        t = os.times()
        total = t.user + t.system
        for pid in self.helper_pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, ValueError, IndexError):
                pass
        return total

    def __enter__(self):
        try:
            self._b0 = self._busy_s()
        except (OSError, ValueError):
            self._b0 = None
        self._own0, self._t0 = self._own_s(), time.perf_counter()
        self.cores = math.nan
        return self

    def __exit__(self, *exc):
        if self._b0 is None:
            return False
        own = self._own_s() - self._own0
        wall = time.perf_counter() - self._t0
        self.cores = max(0.0, (self._busy_s() - self._b0 - own) / wall) if wall > 0 else math.nan
        return False


def wait_for_quiet(max_load: float, timeout_s: float) -> float:
    """Sleep in 1 s windows until other processes use at most ``max_load`` cores, or ``timeout_s`` passes.

    Returns the last window's foreign load.  On a shared 2-core box a
    neighbour's test run comes and goes; waiting a little is cheaper than
    publishing figures measured against it.
    """
    deadline = time.perf_counter() + timeout_s
    while True:
        with ForeignLoad() as load:
            time.sleep(1.0)
        if not (load.cores > max_load) or time.perf_counter() >= deadline:
            return load.cores


def calibrate(case: Case, sample_s: float, max_n: int = 1_000_000) -> None:
    """Pick ``case.n`` so one sample takes about ``sample_s`` (at least one unit); warms the case up."""
    n = 1
    while True:
        dt = case.timed(n)
        if dt >= sample_s * 0.5 or n >= max_n:
            break
        n = min(max_n, n * 2 if dt <= 0 else max(n * 2, int(n * sample_s / dt)))
    case.unit_s = dt / n
    if dt < sample_s:
        n = max(1, min(max_n, int(math.ceil(n * sample_s / max(dt, 1e-9)))))
    case.n = n
    case.timed(n)  # one more untimed sample at the final size


def measure(cases: List[Case], repeats: int, sample_s: float, settle_s: float = 0.0) -> None:
    """Calibrate each case, then time them interleaved: repeat x (every case once, rotated order).

    Two phases: the engines first, then the reference cases (the bare loop and
    the BLAS yardsticks), so an OpenBLAS pool woken by a yardstick never sits
    in front of an engine.

    Whenever the next sample belongs to another runtime than the last one:
    * with ``settle_s`` > 0 (used at more than one thread) the run first pauses
      that long: a thread pool keeps spinning after its last job (measured here:
      numpy's OpenBLAS ~0.1 s, ORT ~30 ms, torch ~10 ms), and on 2 cores a pool
      left spinning by the previous case takes the core the next case's second
      thread needs;
    * one untimed sample of the case is run first: the previous runtime has
      just streamed its own copy of the weights (up to 25 MB here) through the
      caches, so without it whichever case comes first after a switch pays for
      refilling them.  Seen before this warm-up: fastlstm's 2-thread step at
      "large" measured 1.3 ms in first position and 0.66 ms in second.
    """
    engines = [c for c in cases if c.engine not in ("blas", "python")]
    reference = [c for c in cases if c.engine in ("blas", "python")]
    for group in (engines, reference):
        if not group:
            continue
        last = [None]

        def switch_to(c, warm: bool):
            if last[0] is not None and last[0] != c.engine:
                if settle_s > 0:
                    time.sleep(settle_s)
                # A unit that long re-reads its weights many times over itself,
                # so the refill is already amortised; skip the (costly) warm-up.
                if warm and c.unit_s < 0.02:
                    c.timed(c.n)
            last[0] = c.engine

        for c in group:
            switch_to(c, warm=False)  # calibration warms the case up itself
            calibrate(c, sample_s)
        order = list(range(len(group)))
        for r in range(repeats):
            rot = order[r % len(order):] + order[:r % len(order)]
            for i in rot:
                c = group[i]
                switch_to(c, warm=True)
                c.samples.append(c.timed(c.n) / c.n)
        if settle_s > 0:
            time.sleep(settle_s)


# --------------------------------------------------------------------------- parity

def check_parity(cfg, lstm, head, fl_out, onnx_paths, x, steps, want=("ort", "ov")) -> Dict[str, float]:
    """Max |difference| from torch of every engine's output, before any timing.

    ``fl_out`` is fastlstm's ``(predict output, first streamed outputs)`` (from
    :func:`fl_outputs`, possibly computed in the worker) or None.
    """
    ref = fw.torch_forward(lstm, head, x)
    errs = {}
    if fl_out is not None:
        y, ys = fl_out
        errs["fl.predict"] = float(np.abs(y.reshape(ref.shape) - ref).max())
        errs["fl.step"] = float(np.abs(ys.reshape(ref[:steps].shape) - ref[:steps]).max())
    if onnx_paths is not None and "ort" in want:
        y = fw.ort_session(onnx_paths["seq"], 1).run(None, {"x": x})[0]
        errs["ort.seq"] = float(np.abs(y - ref).max())
        st = fw.OrtStepper(fw.ort_session(onnx_paths["step"], 1), cfg)
        ys = np.concatenate([st.step_bound(x[t:t + 1]).copy() for t in range(steps)])
        errs["ort.step"] = float(np.abs(ys - ref[:steps]).max())
    if onnx_paths is not None and "ov" in want:
        compiled = fw.ov_model(onnx_paths["seq"], 1)
        errs["ov.seq"] = float(np.abs(compiled({"x": x})[compiled.output("y")] - ref).max())
        st = fw.OvStepper(fw.ov_model(onnx_paths["step"], 1), cfg)
        ys = np.concatenate([st.step(x[t:t + 1]).copy() for t in range(steps)])
        errs["ov.step"] = float(np.abs(ys - ref[:steps]).max())
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
    out(f"- mode: {'quick' if args.quick else 'full'}; {args.repeats} interleaved repeats, "
        f"samples of ~{args.sample_ms:g} ms; figures are medians")
    out("- 'other load': cores kept busy by other processes while that row was measured (0 = quiet "
        "machine); on 2 cores, 1-thread rows above ~1.0 and 2-thread rows above ~0.3 are not trustworthy\n")
    targets = []  # (description, ratio, target)

    for n in thread_list:
        out(f"### Streaming step, {n} thread{'s' if n > 1 else ''}: microseconds per step (median)\n")
        out("| config | fastlstm step(out=) | fastlstm step | ORT run | ORT iobinding | torch LSTM T=1 | "
            "torch LSTMCell | fl vs ORT best | fl vs torch best | target | met | other load |")
        out("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for c in cfgs:
            g = lambda k: _get(results, c.name, n, k)  # noqa: E731
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
            out(f"| {c.name} | {_fmt_t(fl, 'us')} | {_fmt_t(g('fl.step'), 'us')} | {_fmt_t(g('ort.step'), 'us')} | "
                f"{_fmt_t(g('ort.step_iobind'), 'us')} | {_fmt_t(g('torch.lstm_step'), 'us')} | "
                f"{_fmt_t(g('torch.cell_step'), 'us')} | {_fmt_r(r_ort)} | {_fmt_r(r_torch)} | {tgt} | {met} | "
                f"{g('foreign_load'):.2f} |")
        loops = [_get(results, c.name, n, "loop") for c in cfgs]
        out(f"\nPython loop overhead included in every step figure: {_fmt_t(statistics.median(loops), 'us')} us/step.\n")

    for n in thread_list:
        out(f"### predict (whole sequence), {n} thread{'s' if n > 1 else ''}: milliseconds per sequence (median)\n")
        out("| config | fastlstm | torch nn.LSTM | ORT | fl vs best other | target | met | fl GFLOP/s | "
            "sgemm peak GFLOP/s | fl % of peak | BLAS floor ms | fl / floor | other load |")
        out("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for c in cfgs:
            g = lambda k: _get(results, c.name, n, k)  # noqa: E731
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
            out(f"| {c.name} | {_fmt_t(fl, 'ms')} | {_fmt_t(tt, 'ms')} | {_fmt_t(oo, 'ms')} | {_fmt_r(r)} | "
                f">={tgt_v:g}x | {_ok(r, tgt_v)} | {gf:.1f} | {peak_gf:.1f} | "
                f"{100 * gf / peak_gf:.0f}% | {_fmt_t(floor, 'ms')} | {_fmt_r(fl / floor if fl == fl else None)} | "
                f"{g('foreign_load'):.2f} |")
        out("\nsgemm peak: the better of scipy's and numpy's OpenBLAS sgemm (the engine calls the faster) on "
            "(T*B, I+H) x (I+H, 4H) per layer, the whole "
            "sequence fused into one matmul (an upper bound the recurrence forbids). BLAS floor: only the "
            "matmuls the design needs (one input-projection sgemm + T recurrent sgemm/sgemv per layer), "
            "called from Python (~1 us wrapper cost per call inflates it at small H).\n")

    if len(thread_list) > 1:
        lo, hi = min(thread_list), max(thread_list)
        out(f"### Threads: {hi} vs {lo} (speed-up = time at {lo} / time at {hi})\n")
        out(f"| config | case | {lo} thread | {hi} threads | speed-up | target |")
        out("|---|---|---|---|---|---|")
        for c in cfgs:
            keys = [("fl.predict", "ms"), ("fl.step_out", "us"), ("torch.seq", "ms"), ("ort.seq", "ms"),
                    ("ort.step_iobind", "us"), ("torch.lstm_step", "us")]
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

    if args.isa:
        isa_table(out, results, cfgs, thread_list, args.isa)

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


#: Per --isa path, the switches that hold peers to the same instruction set (read at library load).
ISA_HOLDS = {
    "avx512": {},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "OPENBLAS_CORETYPE": "Haswell"},
    "generic": {"ONEDNN_MAX_CPU_ISA": "SSE41", "OPENBLAS_CORETYPE": "Nehalem"},
}
#: Peers whose kernels ISA_HOLDS holds (ONNX Runtime has no switch).
HELD_PEERS = {"torch": ("torch.lstm_step", "torch.cell_step", "torch.seq"),
              "OpenVINO": ("ov.step", "ov.step", "ov.seq")}


def isa_table(out, results, cfgs, thread_list, isa):
    """fastlstm on one kernel path against the best peer held to the same instruction set, and
    against ONNX Runtime (not held): ratios > 1 mean fastlstm is faster."""
    held = ", ".join(f"{k}={v}" for k, v in ISA_HOLDS[isa].items()) or "nothing (every engine at its best)"
    for n in thread_list:
        out(f"### fastlstm path {isa} vs peers held to it ({held}), {n} thread{'s' if n > 1 else ''}\n")
        out("| config | step: fastlstm µs | best held peer | ratio | ORT | ratio vs ORT | "
            "predict: fastlstm ms | best held peer | ratio | ORT | ratio vs ORT |")
        out("|---|---|---|---|---|---|---|---|---|---|---|")
        for c in cfgs:
            g = lambda k: _get(results, c.name, n, k)  # noqa: E731
            row = [c.name]
            for kind, fl_key, ort_key, unit, pick in (
                    ("step", "fl.step_out", None, "us", lambda keys: min(g(keys[0]), g(keys[1]))),
                    ("seq", "fl.predict", "ort.seq", "ms", lambda keys: g(keys[2]))):
                fl = g(fl_key)
                peers = {name: pick(keys) for name, keys in HELD_PEERS.items()}
                peers = {k: v for k, v in peers.items() if v == v}
                best = min(peers, key=peers.get) if peers else None
                ort = min(g("ort.step"), g("ort.step_iobind")) if kind == "step" else g(ort_key)
                row += [_fmt_t(fl, unit),
                        f"{_fmt_t(peers[best], unit)} ({best})" if best else "-",
                        _fmt_r(peers[best] / fl if best and fl == fl else None),
                        _fmt_t(ort, unit), _fmt_r(ort / fl if fl == fl else None)]
            out("| " + " | ".join(row) + " |")
        out("")


def environment(thread_list, fl_info) -> Dict[str, str]:
    env = {}
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    env["CPU"] = f"{cpu}, {fw.available_cores()} cores available"
    env["threads compared"] = ", ".join(map(str, thread_list)) + \
        " (the same n for fastlstm.set_num_threads, BLAS via threadpoolctl, torch.set_num_threads, ORT intra_op_num_threads)"
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
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"commit {head or '?'}" + (" + uncommitted changes" if dirty else "")


# --------------------------------------------------------------------------- main

_policy_before = os.environ.get("OMP_WAIT_POLICY", "unset (libgomp default)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter samples (~1.5 min on a quiet machine)")
    p.add_argument("--configs", default=",".join(fw.CONFIGS), help="comma-separated subset of " + ",".join(fw.CONFIGS))
    p.add_argument("--threads", default=None,
                   help="comma-separated thread counts (default: 1 and the cores available, e.g. '1,2')")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats per case (default 15; quick 5)")
    p.add_argument("--sample-ms", type=float, default=None, help="target length of one sample (default 60; quick 15)")
    p.add_argument("--head", type=int, default=0, help="add a dense head with this many outputs (default: none)")
    p.add_argument("--json", default=None, help="also write raw medians and samples to this JSON file")
    p.add_argument("--engines", default="fl,torch,ort,ov,blas", help="subset of fl,torch,ort,ov (OpenVINO),blas")
    p.add_argument("--isa", choices=sorted(ISA_HOLDS), default=None,
                   help="fastlstm's kernel path (FASTLSTM_ISA), with oneDNN (torch, OpenVINO) and OpenBLAS held to "
                        "the same instruction set; adds a table against the best held peer")
    p.add_argument("--max-load", type=float, default=0.3,
                   help="cores other processes may keep busy, beyond the cores a block leaves idle, before "
                        "the block counts as noisy (default 0.3)")
    p.add_argument("--retry-noisy", type=int, default=None,
                   help="re-measure a noisy (config, threads) block up to this many times, keeping the "
                        "quietest (default 2; quick 0)")
    p.add_argument("--wait-quiet", type=float, default=None,
                   help="before each block wait up to this many seconds for the machine to go quiet "
                        "(default 30; quick 0)")
    p.add_argument("--settle-ms", type=float, default=250.0,
                   help="at more than one thread, pause this long between samples of different runtimes so "
                        "no spinning pool of the previous one is left running (default 250)")
    p.add_argument("--same-process", action="store_true",
                   help="run fastlstm in this process too (default: its own worker process, so fastlstm and "
                        "torch each keep their own OpenMP wait policy; see FlWorker)")
    p.add_argument("--import-order", choices=("fastlstm-first", "torch-first"), default="fastlstm-first",
                   help="with --same-process: which engine loads libgomp, and so whose OMP_WAIT_POLICY applies "
                        "to both")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds after which no more waiting or re-measuring is done (default 480; quick 90)")
    args = p.parse_args(argv)
    if args.isa:
        wanted = {"FASTLSTM_ISA": args.isa, **ISA_HOLDS[args.isa]}
        if any(os.environ.get(k) != v for k, v in wanted.items()):
            # numpy's OpenBLAS is already loaded: set the switches and start again.
            if argv is not None:
                raise SystemExit("--isa: set " + " ".join(f"{k}={v}" for k, v in wanted.items())
                                 + " in the environment before calling main(argv)")
            os.environ.update(wanted)
            os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]])
    args.repeats = args.repeats or (5 if args.quick else 15)
    args.sample_ms = args.sample_ms or (15.0 if args.quick else 60.0)
    if args.time_budget is None:
        args.time_budget = 90.0 if args.quick else 480.0
    if args.retry_noisy is None:
        args.retry_noisy = 0 if args.quick else 2
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.quick else 30.0
    want = tuple(args.engines.split(","))
    if "ov" in want and importlib.util.find_spec("openvino") is None:
        print("# openvino is not installed; its cases are skipped", file=sys.stderr)
        want = tuple(w for w in want if w != "ov")
    cfgs = [fw.CONFIGS[n] for n in args.configs.split(",")]
    if args.threads:
        thread_list = sorted({int(t) for t in args.threads.split(",")})
    else:
        thread_list = sorted({1, fw.available_cores()})

    # One libgomp per process serves fastlstm and torch; whichever loads it first
    # decides its OMP_WAIT_POLICY for both (read once, at load): fastlstm sets
    # PASSIVE on import (if unset), torch keeps libgomp's spinning default.  By
    # default fastlstm therefore runs in its own worker process (FlWorker), and
    # this one imports torch and ORT only: every engine runs with its own
    # defaults.  --same-process puts all in one process, in --import-order.
    worker = None
    fl_info = None
    if args.same_process:
        first = ("fastlstm", "torch", "onnxruntime") if args.import_order == "fastlstm-first" \
            else ("torch", "onnxruntime", "fastlstm")
        for mod in first:
            if mod == "fastlstm" and "fl" not in want:
                continue
            try:
                __import__(mod)
            except ImportError:
                pass
        fl = fastlstm_available() if "fl" in want else None
        if fl is not None:
            fl_info = {"version": getattr(fl, "__version__", "?"), "openmp": fl.openmp_enabled(),
                       "isa": fl._isa.levels()[0]}
        layout = (f"one process, {args.import_order}: libgomp's OMP_WAIT_POLICY is "
                  f"{os.environ.get('OMP_WAIT_POLICY', 'unset') if args.import_order == 'fastlstm-first' else _policy_before}"
                  " for fastlstm and torch alike")
    else:
        for mod in ("torch", "onnxruntime", "openvino"):
            try:
                __import__(mod)
            except ImportError:
                pass
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
            layout += (f"; fastlstm in its own process (OMP_WAIT_POLICY={fl_info['OMP_WAIT_POLICY']}, "
                       f"torch loaded there: {fl_info['torch_loaded']}); samples interleave across the two")
    env = environment(thread_list, fl_info)
    env["processes"] = layout
    held = ", ".join(f"{k}={v}" for k, v in ISA_HOLDS[args.isa].items()) if args.isa else ""
    env["instruction sets"] = (f"fastlstm kernel path {fl_info['isa'] if fl_info else '-'}; peers held: "
                               f"{held or 'none (each at its best)'}; ONNX Runtime never held")
    results: Dict[tuple, Dict[str, float]] = {}
    raw: Dict[str, Dict] = {}
    errs: Dict[str, Dict[str, float]] = {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fastlstm-bench-") as tmp:
        for cfg in cfgs:
            t_cfg = time.perf_counter()
            x = fw.make_inputs(cfg)
            lstm, head = fw.build_torch(cfg, args.head or None)
            torch_parts = (lstm, head, fw.torch_cells(lstm))
            onnx_paths = None
            if "ort" in want or "ov" in want:
                onnx_paths = {
                    "seq": fw.export_onnx_sequence(lstm, head, cfg, os.path.join(tmp, f"{cfg.name}-seq.onnx")),
                    "step": fw.export_onnx_step(lstm, head, cfg, os.path.join(tmp, f"{cfg.name}-step.onnx")),
                }
            steps = min(cfg.T, 64)
            fl_model = fl_out = None
            if worker is not None:
                sd, hw, hb = fw.torch_arrays(lstm, head)
                worker.call("setup", cfg.name, sd, cfg.L, hw, hb, x)
                fl_out = worker.call("outputs", steps)
            elif fl_info is not None:
                fl_model = fw.to_fastlstm(lstm, head)
                fl_out = fl_outputs(cfg, fl_model, x, steps)
            errs[cfg.name] = check_parity(cfg, lstm, head, fl_out, onnx_paths, x, steps, want)
            for n in thread_list:
                # Other processes may use the cores this block leaves idle (less a margin),
                # plus --max-load: at 1 thread on 2 cores a neighbour on the other core is tolerable.
                allowed = args.max_load + max(0.0, fw.available_cores() - n - 0.3)
                best = None
                for attempt in range(1 + args.retry_noisy):
                    # waits and retries only while the run is inside its time budget
                    spare = args.time_budget - (time.perf_counter() - t_start)
                    if attempt and spare <= 0:
                        break
                    if args.wait_quiet > 0 and spare > 0:
                        wait_for_quiet(allowed, min(args.wait_quiet, spare))
                    with fw.thread_policy(n):
                        cases = make_cases(cfg, n, torch_parts, onnx_paths, fl_model, x, want,
                                           ("numpy",) if args.quick else ("scipy", "numpy"))
                        if worker is not None:
                            cases[1:1] = worker.cases(n)  # after the bare loop, where fl_cases would sit
                        with ForeignLoad([worker.pid] if worker is not None else []) as load:
                            measure(cases, args.repeats, args.sample_ms / 1e3,
                                    args.settle_ms / 1e3 if n > 1 else 0.0)
                    if best is None or load.cores < best[1].cores:
                        best = (cases, load)
                    if not (load.cores > allowed):
                        break
                    print(f"# {cfg.name} {n}T: other processes busy {load.cores:.2f} cores, "
                          f"{'measuring again' if attempt < args.retry_noisy else 'keeping the quietest try'}",
                          file=sys.stderr, flush=True)
                cases, load = best
                results[(cfg.name, n)] = {c.key: c.median for c in cases}
                results[(cfg.name, n)]["foreign_load"] = load.cores
                raw[f"{cfg.name}/{n}"] = {c.key: {"median_s": c.median, "n": c.n, "samples_s": c.samples}
                                          for c in cases}
                raw[f"{cfg.name}/{n}"]["foreign_load_cores"] = load.cores
                summary = ", ".join(f"{c.key}={c.median * (1e6 if c.unit == 'step' else 1e3):.3g}"
                                    f"{'us' if c.unit == 'step' else 'ms'}" for c in cases)
                print(f"# {cfg.name} {n}T (other processes busy {load.cores:.2f} cores): {summary}",
                      file=sys.stderr, flush=True)
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
