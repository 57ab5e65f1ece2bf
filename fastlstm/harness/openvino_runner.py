"""OpenVINO: the model's exported graphs (:mod:`.onnx_export`) compiled for the CPU plugin.

The precision is always set explicitly (``INFERENCE_PRECISION_HINT``): left alone, the CPU
plugin picks bfloat16 by itself on CPUs with AMX or AVX-512 BF16, so the same call would
compare different arithmetic on different machines.
"""

from __future__ import annotations

import numpy as np

from ._common import SwapStepper, Unsupported
from .onnx_export import OnnxGraphs, export_graphs


class OpenVinoCompiler:
    """Compiles OpenVINO models for the CPU plugin on ``threads`` threads, in ``precision``, with one
    stream and the latency hint (one request at a time, as a live stream makes them), each for the
    input shapes it is called with: static shapes ran a step twice as fast as the dynamic graph."""

    def __init__(self, threads: int = 1, precision: str = "f32"):
        import openvino as ov

        if precision not in ("f32", "bf16"):
            raise ValueError(f"precision: expected 'f32' or 'bf16', got {precision!r}")
        self.core = ov.Core()
        self.config = {
            "INFERENCE_PRECISION_HINT": precision,
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
        }
        self._compiled: dict = {}

    def compiled(self, ir, shapes: dict):
        """``ir`` reshaped to ``{input name: shape}`` and compiled (cached per shape)."""
        key = (id(ir), tuple(sorted((k, tuple(v)) for k, v in shapes.items())))
        if key not in self._compiled:
            m = ir.clone()
            m.reshape({k: list(v) for k, v in shapes.items()})
            self._compiled[key] = self.core.compile_model(m, "CPU", self.config)
        return self._compiled[key]


class OpenVinoRunner(OpenVinoCompiler):
    """OpenVINO CPU on the sequence and step graphs, in f32 or bf16 (see :class:`OpenVinoCompiler`)."""

    def __init__(self, model, threads: int = 1, precision: str = "f32"):
        super().__init__(threads, precision)
        self.name = "openvino" if precision == "f32" else f"openvino-{precision}"
        self.model = model
        graphs = export_graphs(model, "OpenVINO")
        try:  # read into memory; the files are no longer needed
            self.seq_ir = self.core.read_model(graphs.sequence)
            self.step_ir = self.core.read_model(graphs.step) if graphs.step else None
        finally:
            graphs.remove()
        self.graphs: OnnxGraphs = graphs

    def predict(self, x):
        return self.compiled(self.seq_ir, {"x": x.shape}).create_infer_request().infer({"x": x})[0].copy()

    def seq_loop(self, x):
        infer, feeds = self.compiled(self.seq_ir, {"x": x.shape}).create_infer_request().infer, {"x": x}

        def run(n):
            for _ in range(n):
                infer(feeds)

        return run

    def steppers(self, xs):
        if self.step_ir is None:
            raise Unsupported("the model cannot stream")
        B = xs.shape[1]
        shapes = {"x": (1, B, xs.shape[2])}
        shapes.update({name: a.shape for name, a in zip(self.graphs.state_in, self.graphs.zero_state(B))})
        return {"": OpenVinoStepper(self.compiled(self.step_ir, shapes), self.graphs, xs)}


class OpenVinoStepper(SwapStepper):
    """Two infer requests on buffers shared with numpy (no copies), whose state tensors swap
    roles each step like ORT's two IOBindings: a step is one input copy plus ``infer()``."""

    def __init__(self, compiled, graphs: OnnxGraphs, xs):
        import openvino as ov

        T, B, I = xs.shape
        self.batch = B
        self.inputs = [np.ascontiguousarray(xs[t : t + 1]) for t in range(T)]
        self.x_buf = np.zeros((1, B, I), np.float32)
        self.y_buf = np.zeros(tuple(compiled.outputs[0].get_shape()), np.float32)
        self.bufs = [graphs.zero_state(B) for _ in range(2)]
        shared = lambda a: ov.Tensor(a, shared_memory=True)  # noqa: E731
        self.requests = []
        for src, dst in ((0, 1), (1, 0)):
            req = compiled.create_infer_request()
            req.set_tensor("x", shared(self.x_buf))
            req.set_tensor("y", shared(self.y_buf))
            for k, (name_in, name_out) in enumerate(zip(graphs.state_in, graphs.state_out)):
                req.set_tensor(name_in, shared(self.bufs[src][k]))
                req.set_tensor(name_out, shared(self.bufs[dst][k]))
            self.requests.append(req)

    def _infer(self, which):
        self.requests[which].infer()
