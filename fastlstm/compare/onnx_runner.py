"""ONNX Runtime: the rebuilt torch module exported with ``torch.onnx.export``, run on CPU."""

from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np

from ._common import Unsupported, cycle_inputs, lstm_stack_view
from .torch_runner import last_step, torch_module


def _export(module, args, path, input_names, output_names, dynamic_axes):
    """``torch.onnx.export``: the TorchScript exporter first (fast, and it emits ONNX's own LSTM op),
    the dynamo one as a fallback.  Exporter chatter is kept off the terminal; a failure of both
    raises :class:`Unsupported` with the exporter's first line."""
    import contextlib
    import io
    import logging

    import torch

    sink = io.StringIO()
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(module, args, path, input_names=input_names, output_names=output_names,
                                  dynamic_axes=dynamic_axes, dynamo=False)
                return
            except Exception:  # noqa: BLE001 - whatever the reason, the other exporter may manage
                pass
            try:
                torch.onnx.export(module, args, path, input_names=input_names, output_names=output_names,
                                  dynamic_axes=dynamic_axes, dynamo=True, external_data=False, verbose=False)
            except Exception as exc:  # noqa: BLE001
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise Unsupported(f"torch.onnx.export failed: {first[:200]}") from None
    finally:
        quiet.setLevel(level)


class OrtRunner:
    """ONNX Runtime CPU sessions on graphs exported from :func:`torch_module`.

    Sessions use ``threads`` intra-op threads, one inter-op thread, sequential execution
    and full graph optimisation: the set-up that gives ORT its lowest latency.
    """

    name = "onnxruntime"

    def __init__(self, model, threads=1, workdir=None):
        import onnxruntime as ort
        import torch

        model = lstm_stack_view(model, "ONNX Runtime")
        for k, layer in enumerate(model.layers):
            if layer.proj_size:
                raise Unsupported(f"ONNX's LSTM operator has no projection (layer {k} has proj_size="
                                  f"{layer.proj_size}), so torch.onnx cannot export it")
        self.ort, self.model, self.threads = ort, model, threads
        net = torch_module(model)
        own = workdir is None
        workdir = workdir or tempfile.mkdtemp(prefix="fastlstm-onnx-")
        seq_path, step_path = os.path.join(workdir, "sequence.onnx"), os.path.join(workdir, "step.onnx")
        I = model.input_size

        class Sequence(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, x):
                return self.net(x)[0] if model.return_sequences else last_step(model, self.net, x)

        _export(Sequence().eval(), (torch.zeros(5, 2, I),), seq_path, ["x"], ["y"],
                {"x": {0: "T", 1: "B"}, "y": {0: "T", 1: "B"} if model.return_sequences else {0: "B"}})
        self.seq = self._session(seq_path)
        self.step_sess = None
        if model.streamable:
            # State tensors: one (h, c) pair per nn.LSTM inside the rebuilt module.
            with torch.no_grad():
                _, st = net(torch.zeros(1, 2, I))
            self.state_shapes = [(tuple(h.shape), tuple(c.shape)) for h, c in st]
            names_in = [f"{p}{k}" for k in range(len(st)) for p in ("h", "c")]
            names_out = [n + "_out" for n in names_in]

            class Step(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.net = net

                def forward(self, x, *flat):
                    y, new = self.net(x, [(flat[2 * k], flat[2 * k + 1]) for k in range(len(flat) // 2)])
                    return (y,) + tuple(t for hc in new for t in hc)

            flat = [torch.zeros(s) for pair in self.state_shapes for s in pair]
            axes = {n: {1: "B"} for n in ["x", "y"] + names_in + names_out}
            _export(Step().eval(), (torch.zeros(1, 2, I), *flat), step_path, ["x"] + names_in,
                    ["y"] + names_out, axes)
            self.step_sess = self._session(step_path)
            self.state_names = (names_in, names_out)
        if own:  # sessions hold the graphs in memory; the files are no longer needed
            for p in (seq_path, step_path):
                if os.path.exists(p):
                    os.remove(p)
            os.rmdir(workdir)

    def _session(self, path):
        so = self.ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        return self.ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    def predict(self, x):
        return self.seq.run(None, {"x": x})[0]

    def seq_loop(self, x):
        run_, feeds = self.seq.run, {"x": x}

        def run(n):
            for _ in range(n):
                run_(None, feeds)
        return run

    def stepper(self, xs):
        if self.step_sess is None:
            raise Unsupported("the model cannot stream")
        return _OrtStepper(self, xs)


class _OrtStepper:
    """Carries the state through the T=1 graph with two IOBindings whose state buffers swap
    roles each step (A -> B, then B -> A): a step is one input copy plus ``run_with_iobinding``."""

    def __init__(self, runner, xs):
        ort, sess = runner.ort, runner.step_sess
        T, B, I = xs.shape
        self.sess = sess
        self.inputs = [np.ascontiguousarray(xs[t:t + 1]) for t in range(T)]
        self.x_buf = np.zeros((1, B, I), np.float32)
        self.y_buf = np.zeros((1, B, runner.model.output_size), np.float32)
        shapes = [(s[0], B) + s[2:] for pair in runner.state_shapes for s in pair]
        self.bufs = [[np.zeros(s, np.float32) for s in shapes] for _ in range(2)]
        val = ort.OrtValue.ortvalue_from_numpy
        x_val, y_val = val(self.x_buf), val(self.y_buf)
        vals = [[val(a) for a in side] for side in self.bufs]
        names_in, names_out = runner.state_names
        self.bindings = []
        for src, dst in ((0, 1), (1, 0)):
            io = sess.io_binding()
            io.bind_ortvalue_input("x", x_val)
            io.bind_ortvalue_output("y", y_val)
            for k in range(len(shapes)):
                io.bind_ortvalue_input(names_in[k], vals[src][k])
                io.bind_ortvalue_output(names_out[k], vals[dst][k])
            self.bindings.append(io)
        self.which = 0

    def outputs(self, steps):
        for side in self.bufs:
            for a in side:
                a[...] = 0
        self.which = 0
        ys = []
        for x in self.inputs[:steps]:
            self._step(x)
            ys.append(self.y_buf[0].copy())
        return np.stack(ys)

    def _step(self, x):
        self.x_buf[...] = x
        self.sess.run_with_iobinding(self.bindings[self.which])
        self.which ^= 1

    def run(self, n):
        step = self._step
        for x in cycle_inputs(self.inputs, n):
            step(x)
