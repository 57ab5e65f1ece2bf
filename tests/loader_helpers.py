"""Helpers for the loader tests: framework set-up, parity checks, a Keras-2 float64 oracle.

Parity is always against the framework's own outputs (torch / Keras) or, for Keras 2
files that cannot be produced here, a float64 NumPy forward written from the Keras
equations on the *Keras-layout* arrays (so it shares no conversion code with fastlstm).
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

#: The loaders' parity bar: max abs error against the framework over 1000 steps.
TOL = 1e-5
STEPS = 1000


@pytest.fixture(scope="module")
def torch_one_thread():
    """Run torch (and Keras on torch) single-threaded in the loader tests, restoring it afterwards.

    The reference models are tiny, so one thread is also the fastest; and torch's OpenMP
    workers spin-wait, which on a busy 2-core CI machine turned a 50 ms LSTM call into 20 s.
    A loader test module uses it with ``pytestmark = pytest.mark.usefixtures("torch_one_thread")``
    (tests/conftest.py registers this module as a plugin).
    """
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def import_keras():
    import keras

    assert keras.backend.backend() == "torch", "the loader tests run Keras on the torch backend"
    return keras


def check_parity(model, x, expected, *, batch_first=False, stream=True, tol=TOL):
    """``model.predict(x)`` and step-by-step streaming must both match ``expected``.

    ``x`` is (T, B, I) or (B, T, I) with ``batch_first``; ``expected`` has the matching
    layout, or is (B, O) / (O,) when the model returns only the last step.
    """
    y = model.predict(x, batch_first=batch_first)
    assert y.shape == expected.shape, (y.shape, expected.shape)
    err = float(np.max(np.abs(y - expected)))
    assert err <= tol, f"predict: max abs error {err:.3g} > {tol}"
    if not stream:
        return err
    xt = np.swapaxes(x, 0, 1) if batch_first else x  # (T, B, I)
    s = model.stream(batch_size=xt.shape[1])
    steps = np.stack([s.step(xt[t]) for t in range(xt.shape[0])])  # (T, B, O)
    if model.return_sequences:
        want = np.swapaxes(expected, 0, 1) if batch_first else expected
    else:
        steps, want = steps[-1], expected
    serr = float(np.max(np.abs(steps - want)))
    assert serr <= tol, f"stream.step: max abs error {serr:.3g} > {tol}"
    return max(err, serr)


def torch_outputs(module, x):
    """Run a torch module (LSTM-style tuple output handled) in eval mode, return NumPy."""
    import torch

    module.eval()
    with torch.no_grad():
        out = module(torch.from_numpy(np.asarray(x)))
    if isinstance(out, tuple):
        out = out[0]
    return out.float().numpy()


def torch_cell_outputs(cell, x):
    """Loop an nn.LSTMCell over x (T, B, I) from zero state; return h at every step."""
    import torch

    h = c = None
    outs = []
    with torch.no_grad():
        for t in range(x.shape[0]):
            xt = torch.from_numpy(x[t])
            h, c = cell(xt) if h is None else cell(xt, (h, c))
            outs.append(h.numpy())
    return np.stack(outs)


# --- hand-built Keras 1/2 files --------------------------------------------------------------


def write_keras_h5(path, model_config, layers, version="2.15.0", backend="tensorflow"):
    """A legacy Keras whole-model .h5 file written with h5py (formats.md 2.7).

    layers: [(layer name, [(weight name relative to the layer group, array), ...]), ...]."""
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = version.encode() if version else b""
        if not version:
            del f.attrs["keras_version"]
        if backend:
            f.attrs["backend"] = backend.encode()
        f.attrs["model_config"] = json.dumps(model_config).encode()
        f.attrs["training_config"] = json.dumps({"loss": "mse"}).encode()
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = np.array([n.encode() for n, _ in layers])
        if backend:
            mw.attrs["backend"] = backend.encode()
        if version:
            mw.attrs["keras_version"] = version.encode()
        for name, weights in layers:
            g = mw.create_group(name)
            g.attrs["weight_names"] = np.array([wn.encode() for wn, _ in weights])
            for wn, arr in weights:
                g[wn] = arr
        mw.create_group("top_level_model_weights").attrs["weight_names"] = np.array([], dtype="S1")
        opt = f.create_group("optimizer_weights")  # training state: must be ignored, not loaded
        opt["Adam/iter:0"] = np.int64(10)


# --- a float64 Keras-2 oracle -------------------------------------------------------------


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _k_act(name):
    return {
        "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
        "tanh": np.tanh,
        "relu": lambda z: np.maximum(z, 0.0),
        "linear": lambda z: z,
        "hard_sigmoid": lambda z: np.clip(0.2 * z + 0.5, 0.0, 1.0),  # Keras 1/2 formula
        "hard_sigmoid_k3": lambda z: np.clip(z / 6.0 + 0.5, 0.0, 1.0),  # Keras 3 formula
        "softmax": _softmax,
    }[name]


def keras_lstm_oracle(x, kernel, rec, bias, activation="tanh", recurrent_activation="hard_sigmoid", go_backwards=False):
    """Keras LSTM forward in float64 on Keras-layout weights; x is (B, T, I); returns (B, T, H) in
    processing order (reversed in time when go_backwards, as Keras returns it)."""
    x = np.asarray(x, np.float64)
    k, r = np.asarray(kernel, np.float64), np.asarray(rec, np.float64)
    b = np.zeros(k.shape[1]) if bias is None else np.asarray(bias, np.float64)
    act, ract = _k_act(activation), _k_act(recurrent_activation)
    B, T, _ = x.shape
    H = r.shape[0]
    h, c = np.zeros((B, H)), np.zeros((B, H))
    out = []
    order = range(T - 1, -1, -1) if go_backwards else range(T)
    for t in order:
        z = x[:, t] @ k + h @ r + b
        i, f, g, o = ract(z[:, :H]), ract(z[:, H : 2 * H]), act(z[:, 2 * H : 3 * H]), ract(z[:, 3 * H :])
        c = f * c + i * g
        h = o * act(c)
        out.append(h)
    return np.stack(out, axis=1)


def keras_dense_oracle(x, kernel, bias, activation="linear"):
    y = np.asarray(x, np.float64) @ np.asarray(kernel, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return _k_act(activation)(y)
