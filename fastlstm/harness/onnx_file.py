"""ONNX Runtime and OpenVINO running the user's own ``.onnx`` file, for ``fastlstm bench model.onnx``.

The file is run as it is: its input and output layouts come from fastlstm's own reading of the graph
(:class:`~fastlstm.loaders.onnx_graph.GraphMatch`), never from its declared shapes.  A graph with the
recurrent state as inputs and outputs (a T=1 streaming graph) is stepped by feeding each step's state
outputs back in, as ONNX Runtime users do; a sequence graph without state inputs cannot carry state
between calls, so it only runs the whole-sequence rows.
"""

from __future__ import annotations

import numpy as np

from ..layers import RECURRENT
from ._common import Unsupported, cycle_inputs

ENGINES = ("onnxruntime", "openvino")


def is_onnx_file(path) -> bool:
    from ..loaders.onnx_files import looks_like_onnx

    try:
        with open(path, "rb") as f:
            return looks_like_onnx(f.read())
    except OSError:
        return False


class OnnxFileRunner:
    """One engine (``"onnxruntime"`` or ``"openvino"``) on the file at ``path``; the runner interface of
    :mod:`fastlstm.harness` (``predict``, ``seq_loop``, ``steppers``)."""

    def __init__(self, engine, path, model, threads=1):
        from ..loaders.onnx_files import read_onnx_file

        self.match = read_onnx_file(path).match
        self.name, self.model = engine, model
        m = self.match
        if "?" in m.input_axes:
            raise Unsupported(f"the graph's input axes {m.input_axes} are not all time, batch or features")
        self.recurrent = [layer for layer in model.layers if isinstance(layer, RECURRENT)]
        self.stepping = bool(m.state_inputs)
        self.note = (
            "steps: MODEL's own state inputs and outputs fed back each step (ONNX Runtime through "
            "IOBinding), so its whole-sequence row steps MODEL T times"
            if self.stepping
            else "MODEL has no state inputs, so it runs the whole-sequence row only"
        )
        self.engine = _OrtFile(path, threads) if engine == "onnxruntime" else _OpenVinoFile(path, threads)
        self._declared = self.engine.declared
        for role, dim in zip(m.input_axes, self._declared):
            if isinstance(dim, int) and ((role == "B" and dim != 1) or (role == "T" and not self.stepping)):
                raise Unsupported(
                    f"the graph's input shape is fixed at {self._declared} ({m.input_axes}); "
                    "the benchmark needs an open batch axis (and time axis, for a sequence "
                    "graph): export with dynamic axes"
                )

    # -- layouts --

    def _fits(self, T, B):
        for role, dim in zip(self.match.input_axes, self._declared):
            if isinstance(dim, int) and dim != {"T": T, "B": B}.get(role, dim):
                return False
        return True

    def feed(self, x):
        """(T, B, I) -> the graph's input layout."""
        order = [{"T": 0, "B": 1, "F": 2}[r] for r in self.match.input_axes]
        return np.ascontiguousarray(np.transpose(x, order) if len(order) == 3 else x[:, 0])

    def result(self, y):
        """The graph's output -> fastlstm's (T, B, O), or (B, O) when the graph keeps one step."""
        roles = list(self.match.output_axes)
        y = y.reshape([s for s, r in zip(y.shape, roles) if r != "1"])
        roles = [r for r in roles if r != "1"]
        want = [r for r in ("T", "B", "F") if r in roles]
        return np.transpose(y, [roles.index(r) for r in want])

    def zero_states(self, B):
        out = {}
        for name, rows in self.match.state_inputs.items():
            widths = {self.recurrent[k].hidden_size for k, _, _ in rows}
            out[name] = np.zeros((len(rows), B, widths.pop()), np.float32)
        return out

    # -- the runner interface --

    def predict(self, x):
        T, B, _ = x.shape
        if self.stepping:
            stepper = self._stepper(x)
            return stepper.outputs(T) if self.model.return_sequences else stepper.outputs(T)[-1]
        if not self._fits(T, B):
            raise Unsupported(f"the graph's input shape is fixed at {self._declared}")
        return self.result(self.engine({self.match.input_name: self.feed(x)}, [self.match.output_name])[0])

    def seq_loop(self, x):
        if self.stepping:
            stepper = self._stepper(x)
            return lambda n: [stepper.outputs(len(x)) for _ in range(n)]
        feeds, run, names = {self.match.input_name: self.feed(x)}, self.engine, [self.match.output_name]

        def loop(n):
            for _ in range(n):
                run(feeds, names)

        return loop

    def steppers(self, xs):
        if not self.stepping or not self._fits(1, xs.shape[1]):
            return {}
        return {"": self._stepper(xs)}

    def _stepper(self, xs):
        return _FileStepper(self, xs)


class _FileStepper:
    """Steps the file's T=1 graph, its state outputs fed back as the next step's state inputs: through
    the harness's :class:`~fastlstm.harness.ort_runner.OrtBoundStepper` on ONNX Runtime, through plain
    calls on OpenVINO."""

    def __init__(self, runner, xs):
        self.runner = runner
        m = runner.match
        self.inputs = [runner.feed(xs[t : t + 1]) for t in range(xs.shape[0])]
        self.B = xs.shape[1]
        self.state_in = list(m.state_inputs)
        # each state output feeds the state input holding the same (layer, direction, kind) rows
        rows_out = {tuple(v): k for k, v in m.state_outputs.items()}
        if any(tuple(m.state_inputs[name]) not in rows_out for name in self.state_in):
            raise Unsupported("the graph's state outputs do not mirror its state inputs")
        self.state_out = [rows_out[tuple(m.state_inputs[name])] for name in self.state_in]
        self.names = [m.output_name] + self.state_out
        self.bound = None
        session = getattr(runner.engine, "session", None)
        if session is not None:
            from .ort_runner import OrtBoundStepper

            self.bound = OrtBoundStepper(session, self, xs, m.input_name, m.output_name, runner.feed)
        self.reset()

    def zero_state(self, B):
        """Zero state inputs for ``B`` streams, in :attr:`state_in` order."""
        states = self.runner.zero_states(B)
        return [states[name] for name in self.state_in]

    def reset(self):
        self.feeds = dict(zip(self.state_in, self.zero_state(self.B)))
        if self.bound is not None:
            self.bound.reset()

    def _step(self, x):
        if self.bound is not None:
            return self.bound.step(x)
        feeds = self.feeds
        feeds[self.runner.match.input_name] = x
        outs = self.runner.engine(feeds, self.names)
        feeds.update(zip(self.state_in, outs[1:]))
        return outs[0]

    def outputs(self, steps):
        self.reset()
        # copies: a bound step returns the same output buffer every time
        return np.stack([np.array(self.runner.result(self._step(x)).reshape(self.B, -1)) for x in self.inputs[:steps]])

    def run(self, n):
        step = self._step
        for x in cycle_inputs(self.inputs, n):
            step(x)


class _OrtFile:
    """``run(feeds, names)`` on an ONNX Runtime session of the file (the harness's session settings)."""

    def __init__(self, path, threads):
        from .ort_runner import ort_session

        self.session = ort_session(str(path), threads)
        self.declared = tuple(self.session.get_inputs()[0].shape)

    def __call__(self, feeds, names):
        return self.session.run(names, feeds)


class _OpenVinoFile:
    """``run(feeds, names)`` on OpenVINO, the file compiled for each set of input shapes it is called with."""

    def __init__(self, path, threads):
        from .openvino_runner import OpenVinoCompiler

        # f32: on CPUs with bf16 units OpenVINO otherwise computes in bf16 (errors near 1e-3 here)
        self.engine = OpenVinoCompiler(threads, "f32")
        self.source = self.engine.core.read_model(str(path))
        self.declared = tuple(
            d.get_length() if d.is_static else None for d in self.source.inputs[0].get_partial_shape()
        )
        self.requests: dict = {}

    def __call__(self, feeds, names):
        key = tuple((k, v.shape) for k, v in sorted(feeds.items()))
        if key not in self.requests:
            compiled = self.engine.compiled(self.source, {k: v.shape for k, v in feeds.items()})
            self.requests[key] = (compiled.create_infer_request(), {o.get_any_name(): o for o in compiled.outputs})
        request, outputs = self.requests[key]
        result = request.infer(feeds)
        return [np.asarray(result[outputs[n]]) for n in names]
