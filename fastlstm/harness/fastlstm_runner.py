"""fastlstm itself, behind the same runner interface as the frameworks it is compared with."""

from __future__ import annotations

import numpy as np

from ._common import Stepper


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

    def steppers(self, xs):
        return {"": (StreamStepper if xs.shape[1] == 1 else PoolStepper)(self.model, xs)}


class StreamStepper(Stepper):
    """One stream: ``Stream.step(x, out=)``."""

    def __init__(self, model, xs):
        self.batch, self.stream = 1, model.stream()
        self.inputs = [np.ascontiguousarray(x[0]) for x in xs]
        self.out = np.empty(model.output_size, np.float32)

    def reset(self):
        self.stream.reset()

    def step(self, x):
        return self.stream.step(x, out=self.out)


class PoolStepper(Stepper):
    """Several streams: one ``StreamPool.step(ids, x, out=)`` for all of them."""

    def __init__(self, model, xs):
        self.batch = xs.shape[1]
        self.pool = model.pool(self.batch)
        self.ids = np.array([self.pool.open() for _ in range(self.batch)], dtype=np.int64)
        self.inputs = [np.ascontiguousarray(x) for x in xs]
        self.out = np.empty((self.batch, model.output_size), np.float32)

    def reset(self):
        for sid in self.ids.tolist():
            self.pool.reset(sid)

    def step(self, x):
        return self.pool.step(self.ids, x, out=self.out)
