"""A float64 NumPy LSTM written straight from the equations: the reference the engine is tested against.

Why a separate oracle: fastlstm's kernels are float32, reorder gates, pre-sum biases and use
approximate activations.  This module does none of that.  It reads the same framework-neutral
description (:mod:`fastlstm.layers`, PyTorch layout, gate rows i, f, g, o) and evaluates, one step
at a time and in float64::

    z  = W_ih x + b_ih + W_hh h + b_hh
    i, f, o = ra(z_i), ra(z_f), ra(z_o);  g = act(z_g)
    c' = f*c + i*g;   h' = o*act(c')   (with projection: h' = W_hr (o*act(c')))
    y  = head_act(W_y h' + b_y)

Direction conventions (formats.md sections 1.1, 2.3, 2.4):

* a bidirectional layer's backward direction reads x[T-1] .. x[0] and its outputs are re-aligned
  to input time before merging (PyTorch concatenates ``[fwd, bwd]``; Keras may also sum, multiply
  or average);
* a Keras ``go_backwards`` layer reads x[T-1] .. x[0] and returns its outputs in that processing
  order, i.e. reversed in time;
* ``return_sequences=False`` (Keras) keeps the last element of the last layer's output sequence;
  for a bidirectional last layer that is merge(fwd[T-1], bwd[0]).

State: flat lists ``h`` and ``c`` with one array per (layer, direction), in layer order and
forward before backward (``layer*D + direction`` when every layer has D directions).

It deliberately imports nothing from fastlstm except the weight containers, so a bug in the engine
cannot leak into the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from fastlstm.layers import Dense, GRULayer, LSTMLayer, LSTMWeights, RNNLayer


# --------------------------------------------------------------------------- activations
def _sigmoid(z):
    # 0.5*(1+tanh(z/2)) is the logistic function exactly, never overflows, and propagates NaN.
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _softmax(z):
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


CELL_ACTIVATIONS = {
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    # Keras 3: relu6(x + 3) / 6.
    "hard_sigmoid": lambda z: np.clip(z / 6.0 + 0.5, 0.0, 1.0),
    # Keras 1/2, tf.keras, Theano.
    "hard_sigmoid_keras2": lambda z: np.clip(0.2 * z + 0.5, 0.0, 1.0),
    "relu": lambda z: np.maximum(z, 0.0),
    "linear": lambda z: z,
}

HEAD_ACTIVATIONS = {
    "linear": lambda z: z,
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
    "softmax": _softmax,
}

MERGES = {
    "concat": lambda f, b: np.concatenate([f, b], axis=-1),
    "sum": lambda f, b: f + b,
    "mul": lambda f, b: f * b,
    "ave": lambda f, b: (f + b) / 2.0,
}


@dataclass
class OracleState:
    """Final (or initial) state: ``h[k]`` is (B, Hout), ``c[k]`` is (B, H), k = flat direction index."""

    h: List[np.ndarray]
    c: List[np.ndarray]


# --------------------------------------------------------------------------- core
def run_direction(x, weights: LSTMWeights, h0, c0, activation="tanh", recurrent_activation="sigmoid"):
    """One direction over ``x`` (T, B, I) in the order given.  Returns (ys (T,B,Hout), h_T, c_T)."""
    act = CELL_ACTIVATIONS[activation]
    ract = CELL_ACTIVATIONS[recurrent_activation]
    f64 = lambda a: None if a is None else np.asarray(a, dtype=np.float64)  # noqa: E731
    w_ih, w_hh, w_hr = f64(weights.weight_ih), f64(weights.weight_hh), f64(weights.weight_hr)
    hidden = weights.hidden_size
    bias = np.zeros(4 * hidden)
    for b in (weights.bias_ih, weights.bias_hh):
        if b is not None:
            bias = bias + f64(b)
    h, c = np.array(h0, dtype=np.float64), np.array(c0, dtype=np.float64)
    ys = np.empty((x.shape[0], x.shape[1], weights.output_size))
    for t in range(x.shape[0]):
        z = x[t] @ w_ih.T + h @ w_hh.T + bias
        zi, zf, zg, zo = (z[:, k * hidden:(k + 1) * hidden] for k in range(4))
        c = ract(zf) * c + ract(zi) * act(zg)
        h = ract(zo) * act(c)
        if w_hr is not None:
            h = h @ w_hr.T
        ys[t] = h
    return ys, h, c


def run_gru_direction(x, weights, h0, activation="tanh", recurrent_activation="sigmoid", reset_after=True):
    """One GRU direction over ``x`` (T, B, I), gate rows r, z, n (PyTorch layout)::

        r = ra(W_ir x + b_ir + W_hr h + b_hr);  z = ra(W_iz x + b_iz + W_hz h + b_hz)
        n = act(W_in x + b_in + r * (W_hn h + b_hn))        reset_after
        n = act(W_in x + b_in + W_hn (r * h) + b_hn)        not reset_after (Keras <= 2.2)
        h' = (1 - z) * n + z * h
    """
    act, ract = CELL_ACTIVATIONS[activation], CELL_ACTIVATIONS[recurrent_activation]
    H = weights.hidden_size
    f64 = lambda a: np.zeros(3 * H) if a is None else np.asarray(a, dtype=np.float64)  # noqa: E731
    w_ih, w_hh, b_ih, b_hh = f64(weights.weight_ih), f64(weights.weight_hh), f64(weights.bias_ih), f64(weights.bias_hh)
    blocks = lambda v: (v[..., :H], v[..., H:2 * H], v[..., 2 * H:])  # noqa: E731
    Wr, Wz, Wn = blocks(w_hh.T)
    h = np.array(h0, dtype=np.float64)
    ys = np.empty((x.shape[0], x.shape[1], H))
    for t in range(x.shape[0]):
        xr, xz, xn = blocks(x[t] @ w_ih.T + b_ih)
        br, bz, bn = blocks(b_hh)
        r = ract(xr + h @ Wr + br)
        z = ract(xz + h @ Wz + bz)
        n = act(xn + r * (h @ Wn + bn)) if reset_after else act(xn + (r * h) @ Wn + bn)
        h = (1 - z) * n + z * h
        ys[t] = h
    return ys


def run_rnn_direction(x, weights, h0, activation="tanh"):
    """One Elman RNN direction: h' = act(W_ih x + b_ih + W_hh h + b_hh)."""
    act = CELL_ACTIVATIONS[activation]
    H = weights.hidden_size
    f64 = lambda a: np.zeros(H) if a is None else np.asarray(a, dtype=np.float64)  # noqa: E731
    h = np.array(h0, dtype=np.float64)
    ys = np.empty((x.shape[0], x.shape[1], H))
    for t in range(x.shape[0]):
        h = act(x[t] @ f64(weights.weight_ih).T + f64(weights.bias_ih) + h @ f64(weights.weight_hh).T
                + f64(weights.bias_hh))
        ys[t] = h
    return ys


def forward_recurrent(layers, x, last_step=False):
    """A stack of LSTM, GRU and RNN layers over ``x`` (T, B, I) from zero state, in float64;
    ``last_step``: Keras' return_sequences=False on the last layer."""
    seq = np.asarray(x, dtype=np.float64)
    pair = None
    for layer in layers:
        outs = []
        for d, w in enumerate(layer.directions):
            rev = d == 1 or layer.go_backwards
            inp = seq[::-1] if rev else seq
            h0 = np.zeros((seq.shape[1], w.output_size))
            if isinstance(layer, GRULayer):
                ys = run_gru_direction(inp, w, h0, layer.activation, layer.recurrent_activation, layer.reset_after)
            elif isinstance(layer, RNNLayer):
                ys = run_rnn_direction(inp, w, h0, layer.activation)
            else:
                ys = run_direction(inp, w, h0, np.zeros((seq.shape[1], w.hidden_size)), layer.activation,
                                   layer.recurrent_activation)[0]
            outs.append(ys[::-1] if d == 1 else ys)
        seq = MERGES[layer.merge_mode](*outs) if layer.bidirectional else outs[0]
        pair = (outs[0][-1], outs[1][0]) if layer.bidirectional else None
    if not last_step:
        return seq
    return MERGES[layers[-1].merge_mode](*pair) if pair is not None else seq[-1]


def _directions_count(layers):
    return sum(len(layer.directions) for layer in layers)


def forward(layers: Sequence[LSTMLayer], head: Optional[Dense], x, state=None, *,
            return_sequences=True, batch_first=False):
    """Evaluate the network in float64.

    ``x`` is (T, I), (T, B, I), or (B, T, I) with ``batch_first``.  ``state`` is anything with
    ``.h``/``.c`` lists (an :class:`OracleState` or a ``fastlstm.State``) or None for zeros; for
    unbatched ``x`` its arrays may be 1-d.  Returns ``(y, OracleState)`` with ``y`` shaped like the
    engine's output and the final state in the same batched/unbatched form as ``x``.
    """
    x = np.asarray(x, dtype=np.float64)
    unbatched = x.ndim == 2
    if unbatched:
        x = x[:, None, :]
    elif batch_first:
        x = x.transpose(1, 0, 2)
    n_batch = x.shape[1]

    n_dirs = _directions_count(layers)
    if state is None:
        h_init = c_init = None
    else:
        if len(state.h) != n_dirs or len(state.c) != n_dirs:
            raise ValueError(f"state: expected {n_dirs} (h, c) pairs")
        h_init = [np.asarray(a, dtype=np.float64).reshape(n_batch, -1) for a in state.h]
        c_init = [np.asarray(a, dtype=np.float64).reshape(n_batch, -1) for a in state.c]

    seq = x
    h_out, c_out = [], []
    k = 0
    last_pair = None
    for layer in layers:
        outs = []
        for d, weights in enumerate(layer.directions):
            h0 = np.zeros((n_batch, weights.output_size)) if h_init is None else h_init[k]
            c0 = np.zeros((n_batch, weights.hidden_size)) if c_init is None else c_init[k]
            reverse = d == 1 or layer.go_backwards
            ys, h, c = run_direction(seq[::-1] if reverse else seq, weights, h0, c0,
                                     layer.activation, layer.recurrent_activation)
            if d == 1:
                ys = ys[::-1]  # re-align the backward direction to input time
            outs.append(ys)
            h_out.append(h)
            c_out.append(c)
            k += 1
        if layer.bidirectional:
            seq = MERGES[layer.merge_mode](outs[0], outs[1])
            last_pair = (outs[0][-1], outs[1][0]) if seq.shape[0] else None
        else:
            seq = outs[0]
            last_pair = None

    if return_sequences:
        y = seq
    elif last_pair is not None:
        y = MERGES[layers[-1].merge_mode](*last_pair)  # Keras: fwd at T-1, bwd at t=0
    else:
        y = seq[-1]
    if head is not None:
        w = head.weight.astype(np.float64)
        b = np.zeros(w.shape[0]) if head.bias is None else head.bias.astype(np.float64)
        y = HEAD_ACTIVATIONS[head.activation](y @ w.T + b)

    if return_sequences:
        if unbatched:
            y = y[:, 0, :]
        elif batch_first:
            y = y.transpose(1, 0, 2)
    elif unbatched:
        y = y[0]
    if unbatched:
        h_out = [a[0] for a in h_out]
        c_out = [a[0] for a in c_out]
    return y, OracleState(h_out, c_out)


# --------------------------------------------------------------------------- random models
def torch_default_weights(rng, input_size, hidden_size, *, proj_size=0, bias=True, name="lstm"):
    """One direction initialised like ``torch.nn.LSTM``: every tensor uniform(-1/sqrt(H), 1/sqrt(H))."""
    bound = 1.0 / np.sqrt(hidden_size)
    u = lambda *shape: rng.uniform(-bound, bound, size=shape).astype(np.float32)  # noqa: E731
    rec = proj_size or hidden_size
    return LSTMWeights(
        weight_ih=u(4 * hidden_size, input_size),
        weight_hh=u(4 * hidden_size, rec),
        bias_ih=u(4 * hidden_size) if bias else None,
        bias_hh=u(4 * hidden_size) if bias else None,
        weight_hr=u(proj_size, hidden_size) if proj_size else None,
        name=name,
    )


def torch_default_dense(rng, in_features, out_features, activation="linear", bias=True):
    """A head initialised like ``torch.nn.Linear``: weight and bias uniform(-1/sqrt(in), 1/sqrt(in))."""
    bound = 1.0 / np.sqrt(in_features)
    weight = rng.uniform(-bound, bound, size=(out_features, in_features)).astype(np.float32)
    b = rng.uniform(-bound, bound, size=out_features).astype(np.float32) if bias else None
    return Dense(weight, b, activation)


def random_stack(rng, input_size, hidden_size, num_layers=1, *, bidirectional=False, proj_size=0,
                 bias=True, head_size=None, head_activation="linear", activation="tanh",
                 recurrent_activation="sigmoid", merge_mode="concat", go_backwards=False):
    """A stack of ``num_layers`` identical-shaped layers with PyTorch-default init; returns (layers, head)."""
    layers = []
    in_size = input_size
    for k in range(num_layers):
        n_dir = 2 if bidirectional else 1
        dirs = tuple(torch_default_weights(rng, in_size, hidden_size, proj_size=proj_size, bias=bias,
                                           name=f"l{k}d{d}") for d in range(n_dir))
        layer = LSTMLayer(dirs, activation=activation, recurrent_activation=recurrent_activation,
                          merge_mode=merge_mode, go_backwards=go_backwards)
        layers.append(layer)
        in_size = layer.output_size
    head = None
    if head_size is not None:
        head = torch_default_dense(rng, in_size, head_size, head_activation)
    return layers, head


def random_state(rng, layers, batch=None, scale=0.5):
    """A random initial state for ``layers`` (1-d arrays when ``batch`` is None), float32."""
    shape = (lambda w: (w,)) if batch is None else (lambda w: (batch, w))
    h, c = [], []
    for layer in layers:
        for weights in layer.directions:
            h.append((scale * rng.standard_normal(shape(weights.output_size))).astype(np.float32))
            c.append((scale * rng.standard_normal(shape(weights.hidden_size))).astype(np.float32))
    return OracleState(h, c)
