"""ONNX Runtime: the model's exported graphs (:mod:`.onnx_export`) in CPU sessions."""

from __future__ import annotations

from typing import List, Protocol

import numpy as np

from ._common import Stepper, SwapStepper, Unsupported
from .onnx_export import OnnxGraphs, export_graphs


class StateGraph(Protocol):
    """What :class:`OrtBoundStepper` needs to know of a step graph's state: an :class:`OnnxGraphs`,
    or the state mapping of a user's ONNX file."""

    state_in: List[str]
    state_out: List[str]

    def zero_state(self, batch: int) -> List[np.ndarray]: ...


def ort_session(path: str, threads: int):
    """An ORT CPU session set up for low-latency inference on ``threads`` threads.

    * ``intra_op_num_threads = threads``: the count every other engine gets.  With 1, ORT
      runs the op on the calling thread (no pool at all).
    * ``inter_op_num_threads = 1`` and sequential execution: the graphs are a chain of LSTM
      nodes, so parallel node execution could only add overhead.
    * ``ORT_ENABLE_ALL``: constant-folds the exporter's Slice/Concat of the weights at load,
      leaving one LSTM node per layer.
    * Spinning stays at ORT's default (on), which gives ORT its lowest per-call latency.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only; keeps the bench output readable
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


class OrtRunner:
    """ONNX Runtime CPU sessions on a model's sequence and step graphs (see :func:`ort_session`)."""

    name = "onnxruntime"

    def __init__(self, model, threads: int = 1):
        self.model = model
        graphs = export_graphs(model, "ONNX Runtime")
        try:  # sessions hold the graphs in memory; the files are no longer needed
            self.seq = ort_session(self.convert(graphs.sequence), threads)
            self.step_sess = ort_session(self.convert(graphs.step), threads) if graphs.step else None
        finally:
            graphs.remove()
        self.graphs: OnnxGraphs = graphs

    def convert(self, path: str) -> str:
        """The graph file this runner runs for the exported one at ``path`` (a reduced-precision
        variant writes a converted copy beside it, removed with the folder): here ``path`` itself."""
        return path

    def predict(self, x):
        return self.seq.run(None, {"x": x})[0]

    def seq_loop(self, x):
        run_, feeds = self.seq.run, {"x": x}

        def run(n):
            for _ in range(n):
                run_(None, feeds)

        return run

    def _step_session(self):
        if self.step_sess is None:
            raise Unsupported("the model cannot stream")
        return self.step_sess

    def steppers(self, xs):
        """ORT's fastest Python route: :class:`OrtBoundStepper`."""
        return {"": OrtBoundStepper(self._step_session(), self.graphs, xs)}

    def run_stepper(self, xs):
        """The plain route most ORT code takes: :class:`OrtRunStepper`."""
        return OrtRunStepper(self._step_session(), self.graphs, xs)


class OrtRunStepper(Stepper):
    """``session.run(None, feeds)`` with the state fed back: every call converts the inputs and
    allocates fresh outputs."""

    def __init__(self, session, graphs: OnnxGraphs, xs):
        self.sess, self.graphs, self.batch = session, graphs, xs.shape[1]
        self.inputs = [np.ascontiguousarray(xs[t : t + 1]) for t in range(xs.shape[0])]  # (1, B, I)
        self.reset()

    def reset(self):
        self.state = self.graphs.zero_state(self.batch)

    def step(self, x):
        feeds = dict(zip(self.graphs.state_in, self.state))
        feeds["x"] = x
        y, *self.state = self.sess.run(None, feeds)
        return y


class OrtBoundStepper(SwapStepper):
    """Carries the state through the step graph with two IOBindings prepared once, whose state
    buffers swap roles each step (A -> B, then B -> A): a step is one input copy plus
    ``run_with_iobinding``, with no allocation, no dict and no output conversion."""

    def __init__(self, session, graphs: StateGraph, xs, x_name: str = "x", y_name: str = "y", feed=None):
        """``graphs`` gives the state names and zero state (anything with ``state_in``, ``state_out``
        and ``zero_state``).  For a graph that is not the harness's own export (a user's ONNX file),
        ``x_name``/``y_name`` name its step input and output and ``feed`` turns a ``(1, B, I)`` step
        into its input layout."""
        import onnxruntime as ort

        T, B = xs.shape[:2]
        self.sess, self.batch = session, B
        self.inputs = [np.ascontiguousarray((feed or np.asarray)(xs[t : t + 1])) for t in range(T)]
        self.x_buf = np.zeros_like(self.inputs[0], np.float32)
        self.bufs = [graphs.zero_state(B) for _ in range(2)]
        # one plain run gives the output's shape, whatever layout the graph has
        feeds = dict(zip(graphs.state_in, self.bufs[0]), **{x_name: self.x_buf})
        self.y_buf = np.zeros_like(session.run([y_name], feeds)[0])
        val = ort.OrtValue.ortvalue_from_numpy  # wraps the numpy buffer, no copy
        x_val, y_val = val(self.x_buf), val(self.y_buf)
        vals = [[val(a) for a in side] for side in self.bufs]
        self.bindings = []
        for src, dst in ((0, 1), (1, 0)):
            io = session.io_binding()
            io.bind_ortvalue_input(x_name, x_val)
            io.bind_ortvalue_output(y_name, y_val)
            for k, (name_in, name_out) in enumerate(zip(graphs.state_in, graphs.state_out)):
                io.bind_ortvalue_input(name_in, vals[src][k])
                io.bind_ortvalue_output(name_out, vals[dst][k])
            self.bindings.append(io)

    def _infer(self, which):
        self.sess.run_with_iobinding(self.bindings[which])
