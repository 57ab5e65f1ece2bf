"""OpenVINO: the model's exported graphs (:mod:`.onnx_export`) compiled for the CPU plugin.

The precision is always set explicitly (``INFERENCE_PRECISION_HINT``): left alone, the CPU
plugin picks bfloat16 by itself on CPUs with AMX or AVX-512 BF16, so the same call would
compare different arithmetic on different machines.
"""

from __future__ import annotations

import numpy as np

from ._common import Stepper, Unsupported
from .onnx_export import OnnxGraphs, export_graphs


def ov_compiled(path: str, threads: int, precision: str):
    """The graph at ``path`` compiled for CPU: ``precision`` ("f32" or "bf16"), ``threads``
    threads, one stream and the latency hint (one request at a time, as a live stream has)."""
    import openvino as ov

    core = ov.Core()
    return core.compile_model(core.read_model(path), "CPU", {
        "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})


class OpenVinoRunner:
    """OpenVINO CPU on the sequence and step graphs, in f32 or bf16."""

    def __init__(self, model, threads: int = 1, precision: str = "f32"):
        if precision not in ("f32", "bf16"):
            raise ValueError(f"precision: expected 'f32' or 'bf16', got {precision!r}")
        self.name = "openvino" if precision == "f32" else f"openvino-{precision}"
        self.model = model
        graphs = export_graphs(model, "OpenVINO")
        try:  # a compiled model holds its graph; the files are no longer needed
            self.seq = ov_compiled(graphs.sequence, threads, precision)
            self.step_model = ov_compiled(graphs.step, threads, precision) if graphs.step else None
        finally:
            graphs.remove()
        self.graphs: OnnxGraphs = graphs
        self.seq_request = self.seq.create_infer_request()

    def predict(self, x):
        return self.seq_request.infer({"x": x})[0].copy()

    def seq_loop(self, x):
        infer, feeds = self.seq_request.infer, {"x": x}

        def run(n):
            for _ in range(n):
                infer(feeds)
        return run

    def steppers(self, xs):
        if self.step_model is None:
            raise Unsupported("the model cannot stream")
        return {"": OpenVinoStepper(self.step_model, self.graphs, xs)}


class OpenVinoStepper(Stepper):
    """Two infer requests on buffers shared with numpy (no copies), whose state tensors swap
    roles each step like ORT's two IOBindings: a step is one input copy plus ``infer()``."""

    def __init__(self, compiled, graphs: OnnxGraphs, xs):
        import openvino as ov

        T, B, I = xs.shape
        self.batch = B
        self.inputs = [np.ascontiguousarray(xs[t:t + 1]) for t in range(T)]
        self.x_buf = np.zeros((1, B, I), np.float32)
        self.y_buf = np.zeros((1, B, compiled.outputs[0].get_partial_shape()[-1].get_length()), np.float32)
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
        self.which = 0

    def reset(self):
        for side in self.bufs:
            for a in side:
                a[...] = 0
        self.which = 0

    def step(self, x):
        self.x_buf[...] = x
        self.requests[self.which].infer()
        self.which ^= 1
        return self.y_buf
