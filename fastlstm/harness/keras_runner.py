"""Keras 3: the model rebuilt from its weights (``stateful=True`` copies for stepping)."""

from __future__ import annotations

import numpy as np

from ._common import Stepper, Unsupported, choose_keras_backend, lstm_stack_view

_KERAS_ACTIVATIONS = {
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "hard_sigmoid": "hard_sigmoid",
    "relu": "relu",
    "linear": "linear",
}


def keras_model(model, batch_size=None, stateful=False):
    """A Keras model with ``model``'s weights; ``stateful=True`` (with ``batch_size``) for stepping.

    Keras takes ``(B, T, I)`` inputs.  Raises :class:`Unsupported` for projections and for
    Keras 2's hard_sigmoid, which Keras 3 no longer has.
    """
    model = lstm_stack_view(model, "Keras")
    choose_keras_backend()
    import keras

    inputs = keras.Input(shape=(None, model.input_size), batch_size=batch_size)
    x = inputs
    n = len(model.layers)
    built = []
    for k, layer in enumerate(model.layers):
        if layer.proj_size:
            raise Unsupported(f"Keras' LSTM has no projection (layer {k} has proj_size={layer.proj_size})")
        acts = []
        for key in ("activation", "recurrent_activation"):
            a = getattr(layer, key)
            if a not in _KERAS_ACTIVATIONS:
                raise Unsupported(f"Keras {keras.__version__} has no {a!r} activation (layer {k} {key})")
            acts.append(_KERAS_ACTIVATIONS[a])
        last_only = k == n - 1 and not model.return_sequences and not stateful
        cell = keras.layers.LSTM(
            layer.hidden_size,
            activation=acts[0],
            recurrent_activation=acts[1],
            return_sequences=not last_only,
            go_backwards=layer.go_backwards,
            stateful=stateful,
            unit_forget_bias=False,
        )
        wrapped = keras.layers.Bidirectional(cell, merge_mode=layer.merge_mode) if layer.bidirectional else cell
        x = wrapped(x)
        built.append((wrapped, layer))
    head = None
    if model.head is not None:
        h = model.head
        act = {"linear": "linear"}.get(h.activation, h.activation)
        head = keras.layers.Dense(h.output_size, activation=act, use_bias=h.bias is not None)
        x = head(x)
    km = keras.Model(inputs, x)
    for wrapped, layer in built:
        weights = []
        for w in layer.directions:
            bias = np.zeros(4 * w.hidden_size, np.float32)
            for b in (w.bias_ih, w.bias_hh):
                if b is not None:
                    bias = bias + b
            weights += [w.weight_ih.T, w.weight_hh.T, bias]  # Keras: (I, 4H), (H, 4H); gate order i f c o
        wrapped.set_weights(weights)
    if head is not None:
        h = model.head
        head.set_weights([h.weight.T] + ([h.bias] if h.bias is not None else []))
    return km


class KerasRunner:
    """Keras 3 on whichever backend is configured, called with ``predict_on_batch`` (no callbacks)."""

    name = "keras"

    def __init__(self, model):
        self.model = lstm_stack_view(model, "Keras")
        self.seq_model = keras_model(self.model)

    def predict(self, x):
        y = np.asarray(self.seq_model.predict_on_batch(np.ascontiguousarray(x.transpose(1, 0, 2))))
        return y.transpose(1, 0, 2) if self.model.return_sequences else y

    def seq_loop(self, x):
        xb, call = np.ascontiguousarray(x.transpose(1, 0, 2)), self.seq_model.predict_on_batch

        def run(n):
            for _ in range(n):
                call(xb)

        return run

    def steppers(self, xs):
        if not self.model.streamable:
            raise Unsupported("the model cannot stream")
        return {"": KerasStepper(self.model, xs)}


class KerasStepper(Stepper):
    """A ``stateful=True`` copy of the model, called on ``(B, 1, I)``."""

    def __init__(self, model, xs):
        T, B, _ = xs.shape
        self.batch = B
        self.km = keras_model(model, batch_size=B, stateful=True)
        self.inputs = [np.ascontiguousarray(xs[t][:, None, :]) for t in range(T)]  # (B, 1, I)
        self.call = self.km.predict_on_batch

    def reset(self):
        for layer in self.km.layers:
            if hasattr(layer, "reset_state"):
                layer.reset_state()

    def step(self, x):
        return self.call(x)
