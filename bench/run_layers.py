#!/usr/bin/env python
"""Side-by-side speed of the layer chain: GRU versions of the six engine configs, and a
guitar-amp-style Conv1D -> LSTM -> Dense x2 model stepped one audio sample at a time.

    python bench/run_layers.py                 # both parts, 1 thread (~6 min on a quiet 2-core machine)
    python bench/run_layers.py --quick         # a smoke run
    python bench/run_layers.py --part amp --json out.json

Prints Markdown tables of medians and ratios.

* GRU: fastlstm ``Stream.step(out=)`` and ``Model.predict`` against ``nn.GRU`` (one step
  per call, and the whole sequence), ``nn.GRUCell`` per layer, and ONNX Runtime's GRU
  operator (``torch.onnx`` export of the same ``nn.GRU``: a T=1 graph stepped through
  IOBindings, and the whole-sequence graph).  Targets (issue 10, as for the LSTM):
  step >= 5x ORT and >= 10x PyTorch at tiny/small, >= 1.5x ORT at medium/large;
  predict >= 1.2x the faster peer at batch 1, >= 1.0x batched.
* Amp: a causal ``Conv1d(1, 16, 12)`` -> tanh -> ``LSTM(16, 32)`` -> ``Linear(32, 16)`` ->
  ReLU -> ``Linear(16, 1)``, one 48 kHz sample per step.  PyTorch and ORT keep the conv's
  last 12 inputs in a window the caller shifts each step (what a user of either does);
  fastlstm's Conv1D streams with that history as its state.  Per-step latency and the
  real-time factor (processing time / audio time at 48 kHz; < 1 keeps up).

Method: the harness' (fastlstm.harness.timing: cases timed interleaved, rotated, medians over
repeats; each sample calibrated to --sample-ms).  Everything runs in this one process, every engine
at ``--threads`` threads (default 1).  Parity with torch is checked before any timing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np
import torch

import fastlstm
from fastlstm.harness._common import cycle_inputs
from fastlstm.harness.configs import CONFIGS, make_inputs
from fastlstm.harness.onnx_export import OnnxGraphs, export_onnx
from fastlstm.harness.ort_runner import OrtBoundStepper, ort_session
from fastlstm.harness.timing import Case, measure, thread_policy

SAMPLE_RATE = 48_000


# --------------------------------------------------------------------------- models


def gru_models(cfg, seed=0):
    """(nn.GRU, [nn.GRUCell per layer], fastlstm.Model) with the same weights."""

    torch.manual_seed(seed)
    gru = torch.nn.GRU(cfg.I, cfg.H, num_layers=cfg.L).eval()
    cells = []
    layers = []
    for k in range(cfg.L):
        cell = torch.nn.GRUCell(cfg.I if k == 0 else cfg.H, cfg.H).eval()
        arrays = {}
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, name).copy_(getattr(gru, f"{name}_l{k}"))
                arrays[name] = getattr(gru, f"{name}_l{k}").numpy().copy()
        cells.append(cell)
        layers.append(fastlstm.GRULayer([fastlstm.GRUWeights(**arrays)]))
    for p in list(gru.parameters()) + [p for c in cells for p in c.parameters()]:
        p.requires_grad_(False)
    return gru, cells, fastlstm.Model(layers)


class _GRUStep:
    @staticmethod
    def module(gru):

        class Step(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.gru = gru

            def forward(self, x, h0):
                y, h = self.gru(x, h0)
                return y, h

        class Seq(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.gru = gru

            def forward(self, x):
                return self.gru(x)[0]

        return Step().eval(), Seq().eval()


def amp_models(seed=0, K=12, C=16, H=32):
    """(torch parts (conv, lstm, fc1, fc2), step-module for ONNX, fastlstm.Model)."""
    from torch import nn

    torch.manual_seed(seed)
    conv, lstm, fc1, fc2 = nn.Conv1d(1, C, K), nn.LSTM(C, H), nn.Linear(H, 16), nn.Linear(16, 1)
    parts = [m.eval().requires_grad_(False) for m in (conv, lstm, fc1, fc2)]
    np_ = lambda t: t.detach().numpy().copy()  # noqa: E731
    model = fastlstm.Model(
        [
            fastlstm.Conv1D(np_(conv.weight), np_(conv.bias), padding="causal", activation="tanh"),
            fastlstm.LSTMLayer(
                [
                    fastlstm.LSTMWeights(
                        np_(lstm.weight_ih_l0), np_(lstm.weight_hh_l0), np_(lstm.bias_ih_l0), np_(lstm.bias_hh_l0)
                    )
                ]
            ),
            fastlstm.Dense(np_(fc1.weight), np_(fc1.bias), activation="relu"),
            fastlstm.Dense(np_(fc2.weight), np_(fc2.bias)),
        ]
    )

    class Step(nn.Module):
        """(window (1, 1, K) of the last K samples, h0, c0) -> (y (1, 1, 1), hn, cn)."""

        def __init__(self):
            super().__init__()
            self.conv, self.lstm, self.fc1, self.fc2 = parts

        def forward(self, x, h0, c0):
            z = torch.tanh(self.conv(x)).permute(2, 0, 1)  # (1, 1, C)
            y, (h, c) = self.lstm(z, (h0, c0))
            return self.fc2(torch.relu(self.fc1(y))), h, c

    class Seq(nn.Module):
        """x (T, 1, 1) -> y (T, 1, 1), from zero state and zero history."""

        def __init__(self):
            super().__init__()
            self.conv, self.lstm, self.fc1, self.fc2 = parts

        def forward(self, x):
            z = nn.functional.pad(x.permute(1, 2, 0), (K - 1, 0))
            z = torch.tanh(self.conv(z)).permute(2, 0, 1)
            return self.fc2(torch.relu(self.fc1(self.lstm(z)[0])))

    return Step().eval(), Seq().eval(), model


# --------------------------------------------------------------------------- cases


def fl_cases(model, x):
    """fastlstm's step (with out=) and predict on x (T, B, I)."""
    T, B = x.shape[:2]
    stream = model.stream() if B == 1 else model.stream(B)
    steps = [x[t, 0] if B == 1 else x[t] for t in range(T)]
    out = np.empty(model.output_size if B == 1 else (B, model.output_size), np.float32)
    seq = np.ascontiguousarray(x[:, 0]) if B == 1 else x
    step = stream.step

    def fl_step(n):
        for xt in cycle_inputs(steps, n):
            step(xt, out=out)

    def fl_predict(n):
        for _ in range(n):
            model.predict(seq)

    return [Case("fl.step", "fastlstm", fl_step), Case("fl.predict", "fastlstm", fl_predict)]


def ort_cases(step_path, seq_path, x, states, state_shape, xs=None, threads=1):
    """ORT's step (IOBindings) and whole-sequence cases, the stepper and the sequence session.

    ``states`` names the step graph's state tensors (input ``{name}0``, output ``{name}n``),
    each ``state_shape`` at batch 1; ``xs``: the step inputs when they are not x's steps."""
    sess = ort_session(seq_path, threads)
    graphs = OnnxGraphs(
        os.path.dirname(step_path),
        seq_path,
        step_path,
        [f"{n}0" for n in states],
        [f"{n}n" for n in states],
        [state_shape] * len(states),
    )
    stepper = OrtBoundStepper(ort_session(step_path, threads), graphs, x if xs is None else xs)

    def ort_step(n):
        for xt in cycle_inputs(stepper.inputs, n):
            stepper.step(xt)

    def ort_seq(n):
        for _ in range(n):
            sess.run(None, {"x": x})

    return [Case("ort.step", "ort", ort_step), Case("ort.seq", "ort", ort_seq)], stepper, sess


def _export(module, args, path, input_names, output_names):
    """A fixed-shape ONNX graph of ``module`` at ``path`` (the harness' exporter); returns the path."""
    export_onnx(module, args, path, input_names, output_names, None)
    return path


def gru_config(cfg, tmp, repeats, sample_s, threads=1):

    gru, cells, model = gru_models(cfg)
    x = make_inputs(cfg)
    step_mod, seq_mod = _GRUStep.module(gru)
    h0 = torch.zeros(cfg.L, cfg.B, cfg.H)
    step_path = _export(
        step_mod,
        (torch.zeros(1, cfg.B, cfg.I), h0),
        os.path.join(tmp, f"{cfg.name}.step.onnx"),
        ["x", "h0"],
        ["y", "hn"],
    )
    seq_path = _export(seq_mod, (torch.from_numpy(x),), os.path.join(tmp, f"{cfg.name}.seq.onnx"), ["x"], ["y"])
    cases = fl_cases(model, x)
    ocases, stepper, sess = ort_cases(step_path, seq_path, x, ("h",), (cfg.L, 1, cfg.H), threads=threads)
    cases += ocases

    # parity before timing
    with torch.inference_mode():
        ref = gru(torch.from_numpy(x))[0].numpy()
    fl_y = model.predict(x if cfg.B > 1 else x[:, 0]).reshape(ref.shape)
    st = model.stream() if cfg.B == 1 else model.stream(cfg.B)
    fl_s = np.stack([st.step(x[t, 0] if cfg.B == 1 else x[t]).reshape(cfg.B, -1) for t in range(20)])
    ort_s = np.concatenate([stepper.step(x[t : t + 1]).copy() for t in range(20)])
    stepper.reset()
    errs = {
        "fl.predict": float(np.abs(fl_y - ref).max()),
        "fl.step": float(np.abs(fl_s - ref[:20]).max()),
        "ort.seq": float(np.abs(sess.run(None, {"x": x})[0] - ref).max()),
        "ort.step": float(np.abs(ort_s - ref[:20]).max()),
    }

    xt_all = torch.from_numpy(x)
    x1 = [xt_all[t : t + 1] for t in range(cfg.T)]
    xb = [xt_all[t] for t in range(cfg.T)]
    state = {"h": torch.zeros(cfg.L, cfg.B, cfg.H)}
    hs = [torch.zeros(cfg.B, cfg.H) for _ in range(cfg.L)]

    def torch_gru_step(n):
        h = state["h"]
        with torch.inference_mode():
            for xt in cycle_inputs(x1, n):
                _, h = gru(xt, h)
        state["h"] = h

    def torch_cell_step(n):
        with torch.inference_mode():
            for xt in cycle_inputs(xb, n):
                inp = xt
                for k, cell in enumerate(cells):
                    hs[k] = cell(inp, hs[k])
                    inp = hs[k]

    def torch_seq(n):
        with torch.inference_mode():
            for _ in range(n):
                gru(xt_all)

    cases += [
        Case("torch.gru_step", "torch", torch_gru_step),
        Case("torch.cell_step", "torch", torch_cell_step),
        Case("torch.seq", "torch", torch_seq),
    ]
    measure(cases, repeats, sample_s)
    return {c.workload: c.median for c in cases}, errs


def amp_bench(tmp, repeats, sample_s, T=4800):

    K, H = 12, 32
    step_mod, seq_mod, model = amp_models(K=K, H=H)
    rng = np.random.default_rng(3)
    x = (0.3 * rng.standard_normal((T, 1, 1))).astype(np.float32)
    win0 = torch.zeros(1, 1, K)
    step_path = _export(
        step_mod,
        (win0, torch.zeros(1, 1, H), torch.zeros(1, 1, H)),
        os.path.join(tmp, "amp.step.onnx"),
        ["x", "h0", "c0"],
        ["y", "hn", "cn"],
    )
    seq_path = _export(seq_mod, (torch.from_numpy(x),), os.path.join(tmp, "amp.seq.onnx"), ["x"], ["y"])
    window = np.zeros((1, 1, K), np.float32)

    def shifted(t):
        """The ORT/torch caller's window: the last K samples (shifted by one each step)."""
        window[0, 0, :-1] = window[0, 0, 1:]
        window[0, 0, -1] = x[t, 0, 0]
        return window

    cases = fl_cases(model, x)
    ocases, stepper, sess = ort_cases(step_path, seq_path, x, ("h", "c"), (1, 1, H), np.zeros((1, 1, K), np.float32))
    samples = x[:, 0, 0]
    win = stepper.x_buf[0, 0]

    def ort_step(n):
        for v in cycle_inputs(samples, n):
            win[:-1] = win[1:]
            win[-1] = v
            stepper.run_bound()

    ocases[0] = Case("ort.step", "ort", ort_step)
    cases += ocases

    with torch.inference_mode():
        ref = seq_mod(torch.from_numpy(x)).numpy()
    st = model.stream()
    fl_s = np.stack([st.step(x[t, 0]) for t in range(200)])
    th = (torch.zeros(1, 1, H), torch.zeros(1, 1, H))
    tor = []
    with torch.inference_mode():
        for t in range(200):
            tw = torch.from_numpy(shifted(t).copy())
            y, *th2 = step_mod(tw, *th)
            th = tuple(th2)
            tor.append(y.numpy().reshape(1))
    errs = {
        "fl.predict": float(np.abs(model.predict(x[:, 0]) - ref[:, 0]).max()),
        "fl.step": float(np.abs(fl_s - ref[:200, 0]).max()),
        "torch.step": float(np.abs(np.stack(tor) - ref[:200, 0]).max()),
        "ort.seq": float(np.abs(sess.run(None, {"x": x})[0] - ref).max()),
    }

    tstate = {"h": (torch.zeros(1, 1, H), torch.zeros(1, 1, H)), "w": torch.zeros(1, 1, K)}
    tsamples = [torch.tensor(float(v)) for v in samples]

    def torch_step(n):
        w, hc = tstate["w"], tstate["h"]
        with torch.inference_mode():
            for v in cycle_inputs(tsamples, n):
                w = torch.roll(w, -1, dims=2)
                w[0, 0, -1] = v
                y, h, c = step_mod(w, *hc)
                hc = (h, c)
        tstate["w"], tstate["h"] = w, hc

    xt_all = torch.from_numpy(x)

    def torch_seq(n):
        with torch.inference_mode():
            for _ in range(n):
                seq_mod(xt_all)

    cases += [Case("torch.step", "torch", torch_step), Case("torch.seq", "torch", torch_seq)]
    measure(cases, repeats, sample_s)
    return {c.workload: c.median for c in cases}, errs, T


# --------------------------------------------------------------------------- report


def _us(s):
    return f"{s * 1e6:,.1f} us" if s < 1e-3 else f"{s * 1e3:,.2f} ms"


def gru_table(results):
    lines = [
        "| config | fl step | ORT step | torch nn.GRU step | torch GRUCell step | step vs ORT | "
        "step vs torch (faster) | fl predict | ORT seq | torch seq | predict vs faster peer |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, (r, _) in results.items():
        t_best = min(r["torch.gru_step"], r["torch.cell_step"])
        peer = min(r["ort.seq"], r["torch.seq"])
        lines.append(
            f"| {name} | {_us(r['fl.step'])} | {_us(r['ort.step'])} | {_us(r['torch.gru_step'])} | "
            f"{_us(r['torch.cell_step'])} | {r['ort.step'] / r['fl.step']:.1f}x | "
            f"{t_best / r['fl.step']:.1f}x | "
            f"{_us(r['fl.predict'])} | {_us(r['ort.seq'])} | {_us(r['torch.seq'])} | "
            f"{peer / r['fl.predict']:.2f}x |"
        )
    return "\n".join(lines)


def amp_table(r, T):
    lines = [
        "| engine | per-step latency | real-time factor (48 kHz) | vs fastlstm | "
        f"whole {T}-sample buffer | buffer RTF |",
        "|---|---|---|---|---|---|",
    ]
    audio = T / SAMPLE_RATE
    for eng, step, seq in (
        ("fastlstm", "fl.step", "fl.predict"),
        ("ONNX Runtime", "ort.step", "ort.seq"),
        ("PyTorch", "torch.step", "torch.seq"),
    ):
        lines.append(
            f"| {eng} | {_us(r[step])} | {r[step] * SAMPLE_RATE:.3f} | {r[step] / r['fl.step']:.1f}x | "
            f"{_us(r[seq])} | {r[seq] / audio:.3f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["gru", "amp", "all"], default="all")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--quick", action="store_true", help="3 repeats of 50 ms samples, tiny/small/medium-batch")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--sample-ms", type=float, default=150.0)
    ap.add_argument("--threads", type=int, default=1, help="threads for every engine (GRU part)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.sample_ms = 3, 50.0
        if args.configs == ",".join(CONFIGS):
            args.configs = "tiny,small,medium-batch"
    out = {}
    with thread_policy(args.threads), tempfile.TemporaryDirectory() as tmp:
        if args.part in ("gru", "all"):
            results = {}
            for name in args.configs.split(","):
                cfg = CONFIGS[name]
                print(f"# GRU {name} ({cfg.label()})", file=sys.stderr)
                results[name] = gru_config(cfg, tmp, args.repeats, args.sample_ms / 1000, args.threads)
            print(f"\n### GRU, {args.threads} thread(s) (medians)\n")
            print(gru_table(results))
            print(
                "\nmax |difference| from torch: "
                + "; ".join(f"{n}: " + ", ".join(f"{k} {v:.1e}" for k, v in e.items()) for n, (_, e) in results.items())
            )
            out["gru"] = {n: {"median_s": r, "parity": e} for n, (r, e) in results.items()}
        if args.part in ("amp", "all"):
            print("# amp", file=sys.stderr)
            r, errs, T = amp_bench(tmp, args.repeats, args.sample_ms / 1000)
            print("\n### Conv1D -> LSTM -> Dense x2 at 48 kHz, one sample per step, 1 thread (medians)\n")
            print(amp_table(r, T))
            print("\nmax |difference| from torch: " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
            out["amp"] = {"median_s": r, "parity": errs, "T": T}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
