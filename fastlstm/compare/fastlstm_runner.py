"""fastlstm itself, behind the same runner interface as the frameworks it is compared with."""

from __future__ import annotations

import numpy as np

from ._common import cycle_inputs


class FastlstmRunner:
    """fastlstm itself, through the public API, with the cheapest calls a user can make:
    ``step(x, out=)`` for one stream, ``StreamPool.step(ids, x, out=)`` for many."""

    name = "fastlstm"

    def __init__(self, model):
        self.model = model

    def predict(self, x):
        if x.shape[1] == 1:  # a single sequence takes the (T, I) form
            y = self.model.predict(x[:, 0])
            return y[:, None] if self.model.return_sequences else y[None]
        return self.model.predict(x)

    def seq_loop(self, x):
        predict, seq = self.model.predict, (x[:, 0] if x.shape[1] == 1 else x)

        def run(n):
            for _ in range(n):
                predict(seq)
        return run

    def stepper(self, xs):
        return _FastlstmStepper(self.model, xs)


class _FastlstmStepper:
    def __init__(self, model, xs):
        T, B, _ = xs.shape
        self.single = B == 1
        if self.single:
            self.stream = model.stream()
            self.inputs = [np.ascontiguousarray(xs[t, 0]) for t in range(T)]
            self.out = np.empty(model.output_size, np.float32)
            self._step = lambda x: self.stream.step(x, out=self.out)
        else:
            self.pool = model.pool(B)
            self.ids = np.array([self.pool.open() for _ in range(B)], dtype=np.int64)
            self.inputs = [np.ascontiguousarray(xs[t]) for t in range(T)]
            self.out = np.empty((B, model.output_size), np.float32)
            self._step = lambda x: self.pool.step(self.ids, x, out=self.out)

    def outputs(self, steps):
        """Outputs of the first ``steps`` inputs from zero state, ``(steps, B, O)``."""
        if self.single:
            self.stream.reset()
        else:
            for sid in self.ids.tolist():
                self.pool.reset(sid)
        return np.stack([np.array(self._step(x)).reshape(-1, self.out.shape[-1]) for x in self.inputs[:steps]])

    def run(self, n):
        step = self._step
        for x in cycle_inputs(self.inputs, n):
            step(x)
