"""tract (Sonos' Rust inference engine): the model's exported graphs (:mod:`.onnx_export`).

tract optimises a graph for concrete input shapes, so a runnable is made per shape (per
sequence length and batch for the sequence graph, per batch for the step graph) and kept.
It runs on one thread.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

from ._common import Stepper, Unsupported
from .onnx_export import export_graphs


class TractRunner:
    """tract on the sequence and step graphs, optimised per input shape."""

    name = "tract"

    def __init__(self, model):
        self.model = model
        graphs = export_graphs(model, "tract")
        # tract loads a graph from a path when it is optimised for a shape, so keep copies.
        self.folder = tempfile.mkdtemp(prefix="fastlstm-tract-")
        self.seq_path = shutil.copy(graphs.sequence, os.path.join(self.folder, "sequence.onnx"))
        self.step_path = shutil.copy(graphs.step, os.path.join(self.folder, "step.onnx")) if graphs.step else ""
        graphs.remove()
        self.graphs = graphs
        self._runnables: dict = {}

    def __del__(self):
        shutil.rmtree(getattr(self, "folder", ""), ignore_errors=True)

    def runnable(self, path: str, shapes):
        """The graph at ``path`` optimised for float32 inputs of ``shapes`` (cached)."""
        key = (path, tuple(map(tuple, shapes)))
        if key not in self._runnables:
            import tract

            m = tract.onnx().load(path)
            for i, shape in enumerate(shapes):
                m.set_input_fact(i, ",".join(map(str, shape)) + ",f32")
            self._runnables[key] = m.into_model().into_runnable()
        return self._runnables[key]

    def predict(self, x):
        return self.runnable(self.seq_path, [x.shape]).run([x])[0].to_numpy()

    def seq_loop(self, x):
        run_ = self.runnable(self.seq_path, [x.shape]).run

        def run(n):
            for _ in range(n):
                run_([x])

        return run

    def steppers(self, xs):
        if not self.step_path:
            raise Unsupported("the model cannot stream")
        return {"": TractStepper(self, xs)}


class TractStepper(Stepper):
    """``run([x, *state])`` with the state outputs fed back as the next inputs."""

    def __init__(self, runner: TractRunner, xs):
        T, B, I = xs.shape
        self.batch, self.graphs = B, runner.graphs
        self.inputs = [np.ascontiguousarray(xs[t : t + 1]) for t in range(T)]
        zero = self.graphs.zero_state(B)
        self.run_ = runner.runnable(runner.step_path, [(1, B, I)] + [a.shape for a in zero]).run
        self.reset()

    def reset(self):
        self.state = self.graphs.zero_state(self.batch)

    def step(self, x):
        y, *self.state = self.run_([x, *self.state])
        return y.to_numpy()
