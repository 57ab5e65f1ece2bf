"""A float64 NumPy LSTM written straight from the equations: the reference the engine is tested against.

Why a separate oracle: fastlstm's kernels are float32, reorder gates, pre-sum biases and use
approximate activations.  This module does none of that.  It reads the same framework-neutral
description (:mod:`fastlstm.layers`, PyTorch layout, gate rows i, f, g, o) and evaluates, one step
at a time and in float64::

    z  = W_ih x + b_ih + W_hh h + b_hh
    i, f, o = ra(z_i), ra(z_f), ra(z_o);  g = act(z_g)
    c' = f*c + i*g;   h' = o*act(c')   (with projection: h' = W_hr (o*act(c')))
    y  = head_act(W_y h' + b_y)

Direction conventions (those of PyTorch's nn.LSTM and Keras' Bidirectional/go_backwards):

* a bidirectional layer's backward direction reads x[T-1] .. x[0] and its outputs are re-aligned
  to input time before merging (PyTorch concatenates ``[fwd, bwd]``; Keras may also sum, multiply
  or average);
* a Keras ``go_backwards`` layer reads x[T-1] .. x[0] and returns its outputs in that processing
  order, i.e. reversed in time;
* ``return_sequences=False`` (Keras) keeps the last element of the last layer's output sequence;
  for a bidirectional last layer that is merge(fwd[T-1], bwd[0]).

State: flat lists ``h`` and ``c`` with one array per (layer, direction), in layer order and
forward before backward (``layer*D + direction`` when every layer has D directions).

Precision (issue 15, notes in docs/precision.md): every ``run_*`` function and both stack drivers take
``precision="fp32" | "bf16" | "int8"``, which changes only the recurrent gate products, as the engine's
spec defines them (:func:`gate_product`); everything else stays exact float64.

It deliberately imports nothing from fastlstm except the weight containers, so a bug in the engine
cannot leak into the reference.
"""

from __future__ import annotations

import math
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


# --------------------------------------------------------------------------- reduced precision
PRECISIONS = ("fp32", "bf16", "int8")


def bf16_round(a):
    """float32 -> nearest bfloat16 (round half to even), returned as float32 values.

    A float64 input is first rounded to float32: the engine holds activations in float32, and the
    spec rounds that float32 value (rounding float64 straight to bf16 could differ at a tie)."""
    a = np.asarray(a, dtype=np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000  # add half an ulp (minus 1 on an even tie), truncate
    out = u.astype(np.uint32).view(np.float32)
    return np.where(np.isnan(a), a, out)  # the carry could turn a NaN's payload into an infinity


def int8_weights(w):
    """Per output row of a PyTorch-layout (G, K) weight (= per output column of W): symmetric scales
    ``sw = max|w| / 127`` and ``q = clip(rint(w / sw), -127, 127)``, all float32 arithmetic as the
    engine's packing does; a zero row has sw = 0 and q = 0.  Returns (q as float64, sw as float64)."""
    w = np.asarray(w, dtype=np.float32)
    sw = np.max(np.abs(w), axis=1) / np.float32(127) if w.shape[1] else np.zeros(w.shape[0], np.float32)
    safe = np.where(sw > 0, sw, np.float32(1))
    q = np.where(sw[:, None] > 0, np.clip(np.rint(w / safe[:, None]), -127, 127), 0)
    return q.astype(np.float64), sw.astype(np.float64)


def int8_rows(a):
    """Dynamic per-row activation quantization of (B, K): amax = max|a|, ``sa = amax / 127`` and
    ``q = clip(rint(a * (127 / amax)), -127, 127)`` in float32 (the engine's order); amax = 0 gives
    sa = 0, q = 0.  Returns (q as float64, sa (B,) as float64)."""
    a = np.asarray(a, dtype=np.float32)
    amax = np.max(np.abs(a), axis=1) if a.shape[1] else np.zeros(a.shape[0], np.float32)
    inv = np.float32(127) / np.where(amax > 0, amax, np.float32(1))
    q = np.where(amax[:, None] > 0, np.clip(np.rint(a * inv[:, None]), -127, 127), 0)
    return q.astype(np.float64), (amax / np.float32(127)).astype(np.float64)


def gate_product(w, precision="fp32"):
    """The function ``a -> P(a, W)`` for one part (x or h) of a recurrent layer's gate product:
    ``a`` (B, K) activations, ``w`` (G, K) PyTorch-layout weight; returns (B, G) float64.

    * fp32: ``a W^T`` exactly;
    * bf16: ``bf16(a) bf16(W)^T`` (products of two bf16 are exact, the sum is float64);
    * int8: ``sa * sw[n] * I[n]`` with ``I = q_a q_w^T`` the exact integer sum (|I| < 2^53, so
      float64 holds it exactly), from :func:`int8_rows` and :func:`int8_weights`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        wt = np.asarray(w, dtype=np.float64).T
        return lambda a: np.asarray(a, dtype=np.float64) @ wt
    if precision == "bf16":
        wt = bf16_round(w).astype(np.float64).T
        return lambda a: bf16_round(a).astype(np.float64) @ wt
    qw, sw = int8_weights(w)
    qwt = qw.T

    def product(a):
        qa, sa = int8_rows(a)
        return sa[:, None] * sw[None, :] * (qa @ qwt)

    return product


@dataclass
class OracleState:
    """Final (or initial) state: ``h[k]`` is (B, Hout), ``c[k]`` is (B, H), k = flat direction index."""

    h: List[np.ndarray]
    c: List[np.ndarray]


# --------------------------------------------------------------------------- core
def _keep(mask, t, new, old):
    """Keras masking: rows whose mask is False at step t keep ``old`` (their state carries over)."""
    return new if mask is None else np.where(mask[t][:, None], new, old)


def run_direction(
    x, weights: LSTMWeights, h0, c0, activation="tanh", recurrent_activation="sigmoid", precision="fp32", mask=None
):
    """One direction over ``x`` (T, B, I) in the order given.  Returns (ys (T,B,Hout), h_T, c_T).
    ``precision`` changes the W_ih and W_hh products only (the projection W_hr stays exact).
    ``mask`` (T, B) bool, in the same order: False steps keep h and c and repeat the previous output."""
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
    px, ph = gate_product(w_ih, precision), gate_product(w_hh, precision)
    ys = np.empty((x.shape[0], x.shape[1], weights.output_size))
    for t in range(x.shape[0]):
        z = bias + px(x[t]) + ph(h)
        zi, zf, zg, zo = (z[:, k * hidden : (k + 1) * hidden] for k in range(4))
        c_new = ract(zf) * c + ract(zi) * act(zg)
        h_new = ract(zo) * act(c_new)
        if w_hr is not None:
            h_new = h_new @ w_hr.T
        h, c = _keep(mask, t, h_new, h), _keep(mask, t, c_new, c)
        ys[t] = h
    return ys, h, c


def run_gru_direction(
    x, weights, h0, activation="tanh", recurrent_activation="sigmoid", reset_after=True, precision="fp32", mask=None
):
    """One GRU direction over ``x`` (T, B, I), gate rows r, z, n (PyTorch layout)::

    r = ra(W_ir x + b_ir + W_hr h + b_hr);  z = ra(W_iz x + b_iz + W_hz h + b_hz)
    n = act(W_in x + b_in + r * (W_hn h + b_hn))        reset_after
    n = act(W_in x + b_in + W_hn (r * h) + b_hn)        not reset_after (Keras <= 2.2)
    h' = (1 - z) * n + z * h

    ``precision`` changes the products of the stacked [W_x; W_h]: all of W_ih, and all of W_hh with
    reset_after; without it, W_hn multiplies r*h, not h, so it stays exact (only W_hr, W_hz change).
    """
    act, ract = CELL_ACTIVATIONS[activation], CELL_ACTIVATIONS[recurrent_activation]
    H = weights.hidden_size
    f64 = lambda a: np.zeros(3 * H) if a is None else np.asarray(a, dtype=np.float64)  # noqa: E731
    w_ih, w_hh, b_ih, b_hh = f64(weights.weight_ih), f64(weights.weight_hh), f64(weights.bias_ih), f64(weights.bias_hh)
    blocks = lambda v: (v[..., :H], v[..., H : 2 * H], v[..., 2 * H :])  # noqa: E731
    px = gate_product(w_ih, precision)
    ph = gate_product(w_hh if reset_after else w_hh[: 2 * H], precision)
    Wn = w_hh[2 * H :].T
    h = np.array(h0, dtype=np.float64)
    ys = np.empty((x.shape[0], x.shape[1], H))
    for t in range(x.shape[0]):
        xr, xz, xn = blocks(px(x[t]) + b_ih)
        br, bz, bn = blocks(b_hh)
        hp = ph(h)
        r = ract(xr + hp[:, :H] + br)
        z = ract(xz + hp[:, H : 2 * H] + bz)
        n = act(xn + r * (hp[:, 2 * H :] + bn)) if reset_after else act(xn + (r * h) @ Wn + bn)
        h = _keep(mask, t, (1 - z) * n + z * h, h)
        ys[t] = h
    return ys


def run_rnn_direction(x, weights, h0, activation="tanh", precision="fp32", mask=None):
    """One Elman RNN direction: h' = act(W_ih x + b_ih + W_hh h + b_hh)."""
    act = CELL_ACTIVATIONS[activation]
    H = weights.hidden_size
    f64 = lambda a: np.zeros(H) if a is None else np.asarray(a, dtype=np.float64)  # noqa: E731
    bias = f64(weights.bias_ih) + f64(weights.bias_hh)
    px, ph = gate_product(weights.weight_ih, precision), gate_product(weights.weight_hh, precision)
    h = np.array(h0, dtype=np.float64)
    ys = np.empty((x.shape[0], x.shape[1], H))
    for t in range(x.shape[0]):
        h = _keep(mask, t, act(bias + px(x[t]) + ph(h)), h)
        ys[t] = h
    return ys


def forward_recurrent(layers, x, last_step=False, head=None, precision="fp32", mask=None):
    """A stack of LSTM, GRU and RNN layers over ``x`` (T, B, I) from zero state, in float64;
    ``last_step``: Keras' return_sequences=False on the last layer; ``head``: a Dense after it;
    ``precision``: that of the recurrent gate products (:func:`gate_product`); ``mask`` (T, B)
    bool: Keras' mask of ``Embedding(mask_zero=True)`` (a bidirectional layer that returns
    sequences outputs zeros at masked steps)."""
    seq = np.asarray(x, dtype=np.float64)
    pair = None
    for k, layer in enumerate(layers):
        outs = []
        for d, w in enumerate(layer.directions):
            rev = d == 1 or layer.go_backwards
            inp = seq[::-1] if rev else seq
            m = None if mask is None else (mask[::-1] if rev else mask)
            h0 = np.zeros((seq.shape[1], w.output_size))
            if isinstance(layer, GRULayer):
                ys = run_gru_direction(
                    inp, w, h0, layer.activation, layer.recurrent_activation, layer.reset_after, precision, m
                )
            elif isinstance(layer, RNNLayer):
                ys = run_rnn_direction(inp, w, h0, layer.activation, precision, m)
            else:
                c0 = np.zeros((seq.shape[1], w.hidden_size))
                ys = run_direction(inp, w, h0, c0, layer.activation, layer.recurrent_activation, precision, m)[0]
            outs.append(ys[::-1] if d == 1 else ys)
        if mask is not None and layer.bidirectional and not (last_step and k == len(layers) - 1):
            outs = [o * mask[:, :, None] for o in outs]
        seq = MERGES[layer.merge_mode](*outs) if layer.bidirectional else outs[0]
        pair = (outs[0][-1], outs[1][0]) if layer.bidirectional else None
    if last_step:
        seq = MERGES[layers[-1].merge_mode](*pair) if pair is not None else seq[-1]
    return seq if head is None else dense(head, seq)


def dense(head: Dense, y):
    """``head_act(y W^T + b)`` over the last axis of ``y``, in float64 (heads stay exact at every precision)."""
    w = head.weight.astype(np.float64)
    b = np.zeros(w.shape[0]) if head.bias is None else head.bias.astype(np.float64)
    return HEAD_ACTIVATIONS[head.activation](y @ w.T + b)


def _directions_count(layers):
    return sum(len(layer.directions) for layer in layers)


def forward(
    layers: Sequence[LSTMLayer],
    head: Optional[Dense],
    x,
    state=None,
    *,
    return_sequences=True,
    batch_first=False,
    precision="fp32",
):
    """Evaluate the network in float64 (``precision``: that of the LSTM gate products, :func:`gate_product`).

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
            ys, h, c = run_direction(
                seq[::-1] if reverse else seq, weights, h0, c0, layer.activation, layer.recurrent_activation, precision
            )
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
        y = dense(head, y)

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


def random_stack(
    rng,
    input_size,
    hidden_size,
    num_layers=1,
    *,
    bidirectional=False,
    proj_size=0,
    bias=True,
    head_size=None,
    head_activation="linear",
    activation="tanh",
    recurrent_activation="sigmoid",
    merge_mode="concat",
    go_backwards=False,
):
    """A stack of ``num_layers`` identical-shaped layers with PyTorch-default init; returns (layers, head)."""
    layers = []
    in_size = input_size
    for k in range(num_layers):
        n_dir = 2 if bidirectional else 1
        dirs = tuple(
            torch_default_weights(rng, in_size, hidden_size, proj_size=proj_size, bias=bias, name=f"l{k}d{d}")
            for d in range(n_dir)
        )
        layer = LSTMLayer(
            dirs,
            activation=activation,
            recurrent_activation=recurrent_activation,
            merge_mode=merge_mode,
            go_backwards=go_backwards,
        )
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


# --------------------------------------------------------------------------- Keras-layout layers
# Straight from the Keras equations (formats.md 2.5) on the arrays exactly as Keras stores them,
# batch first: x is (B, T, I).  They share no code with fastlstm's conversions, so a wrong gate
# permutation or a misplaced reset gate in a loader shows up as a mismatch.


def _elu(z, alpha=1.0):
    return np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0.0)))


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805
_GELU_C = np.sqrt(2.0 / np.pi)

#: Every activation name fastlstm's loaders produce, in float64.
ACTIVATIONS = {
    **CELL_ACTIVATIONS,
    **HEAD_ACTIVATIONS,
    "elu": _elu,
    "selu": lambda z: _SELU_SCALE * _elu(z, _SELU_ALPHA),
    "leaky_relu": lambda z, slope=0.2: np.where(z >= 0, z, slope * z),
    "gelu": lambda z: 0.5 * z * (1.0 + np.vectorize(math.erf)(z / np.sqrt(2.0))),
    "gelu_tanh": lambda z: 0.5 * z * (1.0 + np.tanh(_GELU_C * (z + 0.044715 * z**3))),
    "silu": lambda z: z * _sigmoid(z),
    "softplus": lambda z: np.logaddexp(0.0, z),
    "softsign": lambda z: z / (1.0 + np.abs(z)),
}


def keras_gru(
    x, kernel, rec, bias, *, reset_after=True, activation="tanh", recurrent_activation="sigmoid", go_backwards=False
):
    """Keras GRU, columns [z | r | h].  ``bias`` is (2, 3H) with reset_after (input row, recurrent row),
    (3H,) without, or None.  Returns (B, T, H) in processing order."""
    x = np.asarray(x, np.float64)
    k, r = np.asarray(kernel, np.float64), np.asarray(rec, np.float64)
    H = r.shape[0]
    b = np.zeros((2, 3 * H)) if bias is None else np.asarray(bias, np.float64).reshape(-1, 3 * H)
    b_in, b_rec = (b[0], b[1]) if b.shape[0] == 2 else (b[0], np.zeros(3 * H))
    act, ract = ACTIVATIONS[activation], ACTIVATIONS[recurrent_activation]
    h = np.zeros((x.shape[0], H))
    out = []
    for t in range(x.shape[1] - 1, -1, -1) if go_backwards else range(x.shape[1]):
        xz = x[:, t] @ k + b_in
        if reset_after:
            hz = h @ r + b_rec
            z = ract(xz[:, :H] + hz[:, :H])
            rr = ract(xz[:, H : 2 * H] + hz[:, H : 2 * H])
            hh = act(xz[:, 2 * H :] + rr * hz[:, 2 * H :])
        else:
            z = ract(xz[:, :H] + h @ r[:, :H])
            rr = ract(xz[:, H : 2 * H] + h @ r[:, H : 2 * H])
            hh = act(xz[:, 2 * H :] + (rr * h) @ r[:, 2 * H :])
        h = z * h + (1.0 - z) * hh
        out.append(h)
    return np.stack(out, axis=1)


def keras_simple_rnn(x, kernel, rec, bias, *, activation="tanh", go_backwards=False):
    """Keras SimpleRNN: h' = act(x K + h R + b).  Returns (B, T, H) in processing order."""
    x = np.asarray(x, np.float64)
    k, r = np.asarray(kernel, np.float64), np.asarray(rec, np.float64)
    b = 0.0 if bias is None else np.asarray(bias, np.float64)
    h = np.zeros((x.shape[0], r.shape[0]))
    out = []
    for t in range(x.shape[1] - 1, -1, -1) if go_backwards else range(x.shape[1]):
        h = ACTIVATIONS[activation](x[:, t] @ k + h @ r + b)
        out.append(h)
    return np.stack(out, axis=1)


def conv1d(x, kernel, bias, *, stride=1, dilation=1, pad_left=0, pad_right=0, groups=1):
    """Cross-correlation over time, Keras kernel layout (K, I/groups, O); x is (B, T, I)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(kernel, np.float64)
    K, ig, O = w.shape
    x = np.pad(x, ((0, 0), (pad_left, pad_right), (0, 0)))
    span = dilation * (K - 1) + 1
    T_out = (x.shape[1] - span) // stride + 1
    og = O // groups
    y = np.zeros((x.shape[0], max(T_out, 0), O))
    for t in range(max(T_out, 0)):
        window = x[:, t * stride : t * stride + span : dilation]  # (B, K, I)
        for g in range(groups):
            y[:, t, g * og : (g + 1) * og] = np.einsum(
                "bki,kio->bo", window[:, :, g * ig : (g + 1) * ig], w[:, :, g * og : (g + 1) * og]
            )
    return y + (0.0 if bias is None else np.asarray(bias, np.float64))


def keras_conv_padding(padding, kernel_size, dilation, stride=1, length=None):
    """(left, right) zero padding Keras applies for 'valid', 'causal' and 'same'."""
    span = dilation * (kernel_size - 1)
    if padding == "valid":
        return 0, 0
    if padding == "causal":
        return span, 0
    out = -(-length // stride)
    total = max((out - 1) * stride + span + 1 - length, 0)
    return total // 2, total - total // 2


def pool1d(x, size, stride, mode, *, pad_left=0, pad_right=0):
    """Max or average pooling over time of (B, T, F); padded positions are ignored (Keras 'same')."""
    x = np.asarray(x, np.float64)
    T = x.shape[1] + pad_left + pad_right
    out = []
    for start in range(0, T - size + 1, stride):
        lo, hi = max(start - pad_left, 0), min(start + size - pad_left, x.shape[1])
        window = x[:, lo:hi]
        out.append(window.max(axis=1) if mode == "max" else window.mean(axis=1))
    return np.stack(out, axis=1)


def batchnorm(x, gamma, beta, mean, var, eps):
    x = np.asarray(x, np.float64)
    g = 1.0 if gamma is None else np.asarray(gamma, np.float64)
    b = 0.0 if beta is None else np.asarray(beta, np.float64)
    return (x - np.asarray(mean, np.float64)) / np.sqrt(np.asarray(var, np.float64) + eps) * g + b


def layernorm(x, gamma, beta, eps):
    x = np.asarray(x, np.float64)
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    return y * (1.0 if gamma is None else np.asarray(gamma, np.float64)) + (0.0 if beta is None else beta)


def keras1_lstm(x, gates, *, activation="tanh", inner_activation="hard_sigmoid_keras2"):
    """Keras 1 LSTM from its per-gate arrays ``gates[g] = (W_g, U_g, b_g)``, g in i, f, c, o.

    i = ia(x W_i + h U_i + b_i), f = ia(...), c' = f*c + i*act(x W_c + h U_c + b_c),
    o = ia(...), h' = o*act(c').  x is (B, T, I); returns (B, T, H)."""
    x = np.asarray(x, np.float64)
    g = {k: [np.asarray(a, np.float64) for a in v] for k, v in gates.items()}
    act, ia = ACTIVATIONS[activation], ACTIVATIONS[inner_activation]
    H = g["i"][1].shape[0]
    h, c = np.zeros((x.shape[0], H)), np.zeros((x.shape[0], H))
    pre = lambda k, xt: xt @ g[k][0] + h @ g[k][1] + g[k][2]  # noqa: E731
    out = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        i, f, o, cc = ia(pre("i", xt)), ia(pre("f", xt)), ia(pre("o", xt)), act(pre("c", xt))
        c = f * c + i * cc
        h = o * act(c)
        out.append(h)
    return np.stack(out, axis=1)


def keras1_gru(x, gates, *, activation="tanh", inner_activation="hard_sigmoid_keras2"):
    """Keras 1 GRU from per-gate arrays ``gates[g] = (W_g, U_g, b_g)``, g in z, r, h:
    z, r = ia(x W + h U + b);  hh = act(x W_h + b_h + (r*h) U_h);  h' = z*h + (1-z)*hh."""
    x = np.asarray(x, np.float64)
    g = {k: [np.asarray(a, np.float64) for a in v] for k, v in gates.items()}
    act, ia = ACTIVATIONS[activation], ACTIVATIONS[inner_activation]
    H = g["z"][1].shape[0]
    h = np.zeros((x.shape[0], H))
    out = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        z = ia(xt @ g["z"][0] + h @ g["z"][1] + g["z"][2])
        r = ia(xt @ g["r"][0] + h @ g["r"][1] + g["r"][2])
        hh = act(xt @ g["h"][0] + g["h"][2] + (r * h) @ g["h"][1])
        h = z * h + (1.0 - z) * hh
        out.append(h)
    return np.stack(out, axis=1)
