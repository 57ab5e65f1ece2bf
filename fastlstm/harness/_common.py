"""What every runner shares: the refusal exception, install checks, the input cycler."""

from __future__ import annotations

import importlib.util
import itertools
import os
from typing import Iterable, Iterator, TypeVar

import numpy as np

T = TypeVar("T")


class Unsupported(Exception):
    """The framework is installed but cannot run this model as it is (the message says why)."""


def installed(module_name: str) -> bool:
    """Whether ``module_name`` can be found, without importing it."""
    try:
        return importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):  # a broken package, or an import hook refusing it
        return False


def choose_keras_backend() -> None:
    """Keras 3 defaults to TensorFlow; without it (and with no choice made) use an installed one."""
    if "KERAS_BACKEND" in os.environ or installed("tensorflow"):
        return
    for backend in ("torch", "jax"):
        if installed(backend):
            os.environ["KERAS_BACKEND"] = backend
            return


class _StackView:
    """A model seen as its LSTM stack + head (Model.lstm_stack): what the runners rebuild."""

    def __init__(self, model, framework: str):
        self._model = model
        try:
            self.layers, self.head, self.return_sequences = model.lstm_stack()
        except ValueError as exc:
            raise Unsupported(f"the {framework} comparison rebuilds LSTM stacks with one Dense head: {exc}") from None

    def __getattr__(self, name):
        return getattr(self._model, name)


def lstm_stack_view(model, framework: str):
    """``model`` as an LSTM stack + head for a framework runner, or :class:`Unsupported`."""
    return model if isinstance(model, _StackView) else _StackView(model, framework)


def require_standard_cells(model, framework: str):
    """Refuse a model whose cells use other activations than the fixed ones of torch's/ONNX's LSTM;
    return its LSTM-stack view."""
    model = lstm_stack_view(model, framework)
    for k, layer in enumerate(model.layers):
        if (layer.activation, layer.recurrent_activation) != ("tanh", "sigmoid"):
            raise Unsupported(
                f"{framework}'s LSTM has fixed sigmoid/tanh activations; layer {k} uses "
                f"activation={layer.activation!r}, recurrent_activation={layer.recurrent_activation!r}"
            )
    return model


def require_no_projection(model, framework: str):
    """Refuse a model with projections (``proj_size``), which ONNX's LSTM operator does not have;
    return its LSTM-stack view."""
    model = lstm_stack_view(model, framework)
    for k, layer in enumerate(model.layers):
        if layer.proj_size:
            raise Unsupported(
                f"{framework} runs ONNX's LSTM operator, which has no projection (layer {k} has "
                f"proj_size={layer.proj_size})"
            )
    return model


def cycle_inputs(items: Iterable[T], n: int) -> Iterator[T]:
    """The first ``n`` items of ``items`` repeated: the inputs a timed loop steps through."""
    return itertools.islice(itertools.cycle(items), n)


class Stepper:
    """Steps ``batch`` streams one step per call through fixed inputs, ``inputs[t]`` for step ``t``.

    A framework's stepper sets ``inputs`` and ``batch`` and implements :meth:`reset` (zero
    state) and :meth:`step` (one step on one input, returning the outputs in any array-like
    form); timing and parity then treat every framework alike.
    """

    inputs: list
    batch: int

    def reset(self) -> None:
        raise NotImplementedError

    def step(self, x):
        raise NotImplementedError

    def outputs(self, steps: int) -> np.ndarray:
        """Outputs of the first ``steps`` inputs from zero state, ``(steps, batch, O)``."""
        self.reset()
        return np.stack([np.array(self.step(x), np.float32).reshape(self.batch, -1) for x in self.inputs[:steps]])

    def run(self, n: int) -> None:
        """``n`` steps through the inputs, cycled, the state carried on (what a timed sample does)."""
        step = self.step
        for x in cycle_inputs(self.inputs, n):
            step(x)


class SwapStepper(Stepper):
    """A stepper whose state lives in two buffer sets, prepared once with the engine, that swap roles
    each step (A -> B, then B -> A): a step is one input copy plus one engine call, with no allocation.
    A subclass sets ``x_buf``, ``y_buf``, ``bufs`` (the two sets) and implements :meth:`_infer`."""

    x_buf: np.ndarray
    y_buf: np.ndarray
    bufs: list
    which: int = 0

    def _infer(self, which: int) -> None:
        """Run the engine once with state set ``which`` as input and the other as output."""
        raise NotImplementedError

    def reset(self):
        for side in self.bufs:
            for a in side:
                a[...] = 0
        self.which = 0

    def step(self, x):
        self.x_buf[...] = x
        return self.run_bound()

    def run_bound(self):
        """One step on whatever the caller left in ``x_buf`` (e.g. a window it shifts in place);
        returns a view of the output buffer."""
        self._infer(self.which)
        self.which ^= 1
        return self.y_buf
