"""The one ONNX exporter: a model's two graphs, for every peer that runs ONNX (ORT, OpenVINO, tract).

The model is rebuilt in torch (:func:`.torch_runner.torch_module`) and exported with
``torch.onnx.export``:

* ``sequence.onnx``: ``x (T, B, I) -> y``, from zero state, ``T`` and ``B`` dynamic;
* ``step.onnx``: ``(x (1, B, I), h0, c0, h1, c1, ...) -> (y, h0_out, c0_out, ...)``, one
  ``(h, c)`` pair per ``nn.LSTM`` inside the rebuilt module, ``B`` dynamic, so a caller
  can carry the state from step to step (an ONNX runtime is stateless).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from ._common import Unsupported, require_no_projection
from .torch_runner import last_step, torch_module


def export_onnx(module, args, path, input_names, output_names, dynamic_axes) -> None:
    """``torch.onnx.export``: the TorchScript exporter first, the dynamo one as a fallback.

    The TorchScript exporter takes ~0.3 s instead of ~4 s per model and emits ONNX's own LSTM
    operator, which every ONNX runtime maps to its fused kernel.  The dynamo exporter is asked
    for ``external_data=False``: it otherwise writes the weights to a side ``.onnx.data`` file.
    Exporter chatter is kept off the terminal; a failure of both raises :class:`Unsupported`
    with the exporter's first line.
    """
    import torch

    sink = io.StringIO()
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            names = dict(input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes)
            try:
                torch.onnx.export(module, args, path, dynamo=False, **names)
                return
            except Exception:  # noqa: BLE001 - whatever the reason, the other exporter may manage
                pass
            try:
                torch.onnx.export(module, args, path, dynamo=True, external_data=False, verbose=False, **names)
            except Exception as exc:  # noqa: BLE001
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise Unsupported(f"torch.onnx.export failed: {first[:200]}") from None
    finally:
        quiet.setLevel(level)


@dataclass
class OnnxGraphs:
    """The exported graphs of one model, in ``folder`` until :meth:`remove`."""

    folder: str
    sequence: str  #: path of the whole-sequence graph
    step: str  #: path of the T=1 graph, "" when the model cannot stream
    state_in: List[str]  #: the step graph's state inputs, in order
    state_out: List[str]  #: the matching outputs
    state_shapes: List[Tuple[int, ...]]  #: each state tensor's shape at batch 1, in order

    def zero_state(self, batch: int) -> List[np.ndarray]:
        """Zero state tensors for ``batch`` streams (the batch is axis 1)."""
        return [np.zeros((s[0], batch) + s[2:], np.float32) for s in self.state_shapes]

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def export_graphs(model, framework: str) -> OnnxGraphs:
    """Export ``model``'s sequence and step graphs to a new temporary folder."""
    import torch

    model = require_no_projection(model, framework)
    net = torch_module(model)
    folder = tempfile.mkdtemp(prefix="fastlstm-onnx-")
    graphs = OnnxGraphs(folder, os.path.join(folder, "sequence.onnx"), "", [], [], [])
    I = model.input_size

    class Sequence(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)[0] if model.return_sequences else last_step(model, self.net, x)

    try:
        export_onnx(
            Sequence().eval(),
            (torch.zeros(5, 2, I),),
            graphs.sequence,
            ["x"],
            ["y"],
            {"x": {0: "T", 1: "B"}, "y": {0: "T", 1: "B"} if model.return_sequences else {0: "B"}},
        )
        if model.streamable:
            with torch.no_grad():
                _, st = net(torch.zeros(1, 1, I))
            graphs.state_shapes = [tuple(t.shape) for hc in st for t in hc]
            graphs.state_in = [f"{p}{k}" for k in range(len(st)) for p in ("h", "c")]
            graphs.state_out = [n + "_out" for n in graphs.state_in]

            class Step(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.net = net

                def forward(self, x, *flat):
                    y, new = self.net(x, [(flat[2 * k], flat[2 * k + 1]) for k in range(len(flat) // 2)])
                    return (y,) + tuple(t for hc in new for t in hc)

            flat = [torch.from_numpy(a) for a in graphs.zero_state(2)]
            axes = {n: {1: "B"} for n in ["x", "y"] + graphs.state_in + graphs.state_out}
            graphs.step = os.path.join(folder, "step.onnx")
            export_onnx(
                Step().eval(),
                (torch.zeros(1, 2, I), *flat),
                graphs.step,
                ["x"] + graphs.state_in,
                ["y"] + graphs.state_out,
                axes,
            )
    except BaseException:
        graphs.remove()
        raise
    return graphs
