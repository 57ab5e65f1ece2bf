"""``Model.to_onnx``: write a fastlstm model as a standard ONNX graph (no ``onnx`` package needed).

Recurrent layers become ONNX ``LSTM``/``GRU``/``RNN`` ops (gates reordered to ONNX's i, o, f, c and
z, r, h), the rest of the chain the standard ops ONNX Runtime, OpenVINO and fastlstm's own loader read:
``MatMul``+``Add``/``Gemm``, activations, ``BatchNormalization``, ``LayerNormalization``, ``Conv``,
pooling, ``Gather`` for an embedding.  The graph takes ``x`` as ``(T, B, I)`` (``(B, T, I)`` with
``batch_first=True``; integer ids for an Embedding model) with open ``T`` and ``B``, and returns ``y``
shaped as :meth:`fastlstm.Model.predict` returns it.

The protobuf is written directly: each message is its fields' bytes, field numbers from
``onnx/onnx.proto3``.
"""

from __future__ import annotations

import struct

import numpy as np

from .layers import (
    Activation,
    AvgPool1D,
    BatchNorm,
    Conv1D,
    Dense,
    Embedding,
    Flatten,
    GlobalAvgPool1D,
    GlobalMaxPool1D,
    GRULayer,
    LastStep,
    LayerNorm,
    LSTMLayer,
    MaxPool1D,
    RNNLayer,
)

OPSET = 20  # Gelu is opset 20; ONNX Runtime >= 1.16 runs it
_FLOAT, _INT64 = 1, 7
#: PyTorch gate blocks in ONNX's order (the inverse of the loader's mapping).
_ONNX_ORDER = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2), "RNN": (0,)}
_CELL = {
    "sigmoid": ("Sigmoid", None),
    "tanh": ("Tanh", None),
    "relu": ("Relu", None),
    "linear": ("Affine", (1.0, 0.0)),
    "hard_sigmoid": ("HardSigmoid", (1 / 6, 0.5)),
    "hard_sigmoid_keras2": ("HardSigmoid", (0.2, 0.5)),
}


# --- protobuf encoding ---------------------------------------------------------------------------


def _varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number, wire, payload):
    head = _varint(number << 3 | wire)
    if wire == 2:
        return head + _varint(len(payload)) + payload
    return head + payload


def _str(number, text):
    return _field(number, 2, text.encode("utf-8") if isinstance(text, str) else text)


def _int(number, value):
    return _field(number, 0, _varint(int(value)))


def _tensor(name, arr):
    arr = np.asarray(arr, order="C")  # (ascontiguousarray would turn a scalar into shape (1,))
    dtype = {np.dtype(np.float32): _FLOAT, np.dtype(np.int64): _INT64}[arr.dtype]
    dims = b"".join(_varint(d) for d in arr.shape)
    return (
        (_field(1, 2, dims) if arr.ndim else b"")
        + _int(2, dtype)
        + _str(8, name)
        + _field(9, 2, arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    )


def _attribute(name, value):
    out = _str(1, name)
    if isinstance(value, float):
        return out + _int(20, 1) + _field(2, 5, struct.pack("<f", value))
    if isinstance(value, (bool, int)):
        return out + _int(20, 2) + _int(3, value)
    if isinstance(value, str):
        return out + _int(20, 3) + _str(4, value)
    value = list(value)
    if value and isinstance(value[0], float):
        return out + _int(20, 6) + _field(7, 2, struct.pack(f"<{len(value)}f", *value))
    if value and isinstance(value[0], str):
        return out + _int(20, 8) + b"".join(_str(9, v) for v in value)
    return out + _int(20, 7) + _field(8, 2, b"".join(_varint(v) for v in value))


def _node(op, inputs, outputs, name, **attrs):
    return (
        b"".join(_str(1, i) for i in inputs)
        + b"".join(_str(2, o) for o in outputs)
        + _str(3, name)
        + _str(4, op)
        + b"".join(_field(5, 2, _attribute(k, v)) for k, v in sorted(attrs.items()))
    )


def _value_info(name, elem_type, dims):
    shape = b"".join(_field(1, 2, _str(2, d) if isinstance(d, str) else _int(1, d)) for d in dims)
    tensor_type = _int(1, elem_type) + _field(2, 2, shape)
    return _str(1, name) + _field(2, 2, _field(1, 2, tensor_type))


# --- the graph -----------------------------------------------------------------------------------


class _Graph:
    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, hint):
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint, arr):
        name = self.name(hint)
        self.inits.append(_tensor(name, np.asarray(arr)))
        return name

    def op(self, op, inputs, n_out=1, **attrs):
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(_node(op, inputs, outs, self.name(f"node_{op}"), **attrs))
        return outs[0] if n_out == 1 else outs


def write_onnx(model, path, *, batch_first=False):
    """Write ``model`` to ``path`` as an ONNX graph (see the module docstring); returns nothing."""
    with open(path, "wb") as f:
        f.write(onnx_bytes(model, batch_first=batch_first))


def onnx_bytes(model, *, batch_first=False) -> bytes:
    g = _Graph()
    layers = model.layers
    tokens = isinstance(layers[0], Embedding)
    x_dims = ["B", "T"] if batch_first else ["T", "B"]
    if not tokens:
        x_dims.append(model.input_size)
    x = "x"
    if batch_first:
        x = g.op("Transpose", [x], perm=[1, 0] if tokens else [1, 0, 2])
    seq = True  # (T, B, F) while True, (B, F) after the time axis is dropped
    last_state = None  # Y_h of the recurrent layer just written (for LastStep(final_state=True))
    for k, layer in enumerate(layers):
        where = f"layers[{k}] ({type(layer).__name__})"
        if isinstance(layer, (LSTMLayer, GRULayer, RNNLayer)):
            x, last_state = _recurrent(g, x, layer, where)
        elif isinstance(layer, LastStep):
            prev = layers[k - 1] if k else None
            if layer.final_state and prev is not None and getattr(prev, "bidirectional", False):
                if prev.merge_mode != "concat":
                    raise ValueError(
                        f"{where}: the final state of a bidirectional layer with merge_mode="
                        f"{prev.merge_mode!r} has no standard ONNX form; use merge_mode='concat'"
                    )
                ht = g.op("Transpose", [last_state], perm=[1, 0, 2])
                x = g.op("Reshape", [ht, g.const("shape", np.array([0, -1], np.int64))])
            else:
                x = g.op("Gather", [x, g.const("last", np.array(-1, np.int64))], axis=0)
            seq = False
        elif isinstance(layer, Dense):
            bias = [g.const("bias", layer.bias)] if layer.bias is not None else []
            if seq:  # MatMul + Add: Gemm only takes 2-d inputs
                x = g.op("MatMul", [x, g.const("weight_t", np.ascontiguousarray(layer.weight.T))])
                x = g.op("Add", [x] + bias) if bias else x
            else:
                x = g.op("Gemm", [x, g.const("weight", layer.weight)] + bias, transB=1)
            x = _activation(g, x, _act_of(layer), where)
        elif isinstance(layer, Activation):
            x = _activation(g, x, layer, where)
        elif isinstance(layer, BatchNorm):
            gamma = np.ones(layer.input_size, np.float32) if layer.gamma is None else layer.gamma
            beta = np.zeros(layer.input_size, np.float32) if layer.beta is None else layer.beta
            args = [
                g.const(n, a) for n, a in (("gamma", gamma), ("beta", beta), ("mean", layer.mean), ("var", layer.var))
            ]
            x = _channels_first(g, x, seq, "BatchNormalization", args, epsilon=layer.eps)
        elif isinstance(layer, LayerNorm):
            gamma = np.ones(layer.size, np.float32) if layer.gamma is None else layer.gamma
            beta = np.zeros(layer.size, np.float32) if layer.beta is None else layer.beta
            x = g.op(
                "LayerNormalization", [x, g.const("gamma", gamma), g.const("beta", beta)], axis=-1, epsilon=layer.eps
            )
        elif isinstance(layer, Embedding):
            if layer.mask_zero:
                raise ValueError(
                    f"{where}: mask_zero=True masks steps per row, which the ONNX recurrent ops do not express"
                )
            x = g.op("Gather", [g.const("table", layer.table), x], axis=0)
        elif isinstance(layer, Conv1D):
            if layer.padding == "same":
                raise ValueError(
                    f"{where}: Keras 'same' padding at stride > 1 depends on the sequence length; "
                    "ONNX Conv has no such padding"
                )
            args = [g.const("weight", layer.weight)] + ([g.const("bias", layer.bias)] if layer.bias is not None else [])
            x = _channels_first(
                g,
                x,
                True,
                "Conv",
                args,
                strides=[layer.stride],
                dilations=[layer.dilation],
                group=layer.groups,
                pads=_pads(layer),
                kernel_shape=[layer.kernel_size],
            )
            x = _activation(g, x, _act_of(layer), where)
        elif isinstance(layer, (MaxPool1D, AvgPool1D)):
            if layer.padding == "same":
                raise ValueError(f"{where}: Keras 'same' padding at stride > 1 has no ONNX form")
            attrs = {"kernel_shape": [layer.size], "strides": [layer.stride], "pads": _pads(layer)}
            if isinstance(layer, AvgPool1D):
                attrs["count_include_pad"] = int(layer.count_include_pad)
            op = "MaxPool" if isinstance(layer, MaxPool1D) else "AveragePool"
            x = _channels_first(g, x, True, op, [], **attrs)
        elif isinstance(layer, (GlobalMaxPool1D, GlobalAvgPool1D)):
            op = "ReduceMax" if isinstance(layer, GlobalMaxPool1D) else "ReduceMean"
            x = g.op(op, [x, g.const("axes", np.array([0], np.int64))], keepdims=0)
            seq = False
        elif isinstance(layer, Flatten):
            if layer.steps is not None:
                raise ValueError(f"{where}: flattens a sequence of a fixed length; the ONNX graph's T is open")
            continue
        else:
            raise ValueError(f"{where}: has no ONNX form in fastlstm's writer")
    if seq and batch_first:
        x = g.op("Transpose", [x], perm=[1, 0, 2])
    y_dims = (["B", "T"] if batch_first else ["T", "B"]) if seq else ["B"]
    g.nodes.append(_node("Identity", [x], ["y"], "output"))
    graph = (
        b"".join(_field(1, 2, n) for n in g.nodes)
        + _str(2, "fastlstm")
        + b"".join(_field(5, 2, t) for t in g.inits)
        + _field(11, 2, _value_info("x", _INT64 if tokens else _FLOAT, x_dims))
        + _field(12, 2, _value_info("y", _FLOAT, y_dims + [model.output_size]))
    )
    opset = _str(1, "") + _int(2, OPSET)
    return _int(1, 9) + _str(2, "fastlstm") + _field(7, 2, graph) + _field(8, 2, opset)


def _channels_first(g, x, seq, op, args, **attrs):
    """``op`` on (B, F, T) data (what ONNX Conv/pool/BatchNormalization expect), back to (T, B, F)."""
    if not seq:
        return g.op(op, [x] + args, **attrs)
    t = g.op(op, [g.op("Transpose", [x], perm=[1, 2, 0])] + args, **attrs)
    return g.op("Transpose", [t], perm=[2, 0, 1])


def _recurrent(g, x, layer, where):
    op = {LSTMLayer: "LSTM", GRULayer: "GRU", RNNLayer: "RNN"}[type(layer)]
    if op == "LSTM" and layer.proj_size:
        raise ValueError(f"{where}: an LSTM with a projection (proj_size) has no ONNX LSTM form")
    H, ndir = layer.hidden_size, len(layer.directions)
    order = np.concatenate([np.arange(b * H, (b + 1) * H) for b in _ONNX_ORDER[op]])
    W, R, B = [], [], []
    for d in layer.directions:
        zeros = np.zeros(d.weight_ih.shape[0], np.float32)
        W.append(d.weight_ih[order])
        R.append(d.weight_hh[order])
        B.append(
            np.concatenate(
                [(zeros if d.bias_ih is None else d.bias_ih)[order], (zeros if d.bias_hh is None else d.bias_hh)[order]]
            )
        )
    attrs = {"hidden_size": H}
    attrs["direction"] = "bidirectional" if ndir == 2 else ("reverse" if layer.go_backwards else "forward")
    if op == "RNN":
        names = (layer.activation,) * ndir
    else:
        names = (layer.recurrent_activation,) + (layer.activation,) * (2 if op == "LSTM" else 1)
        names *= ndir
    if names != {"LSTM": ("sigmoid", "tanh", "tanh"), "GRU": ("sigmoid", "tanh"), "RNN": ("tanh",)}[op] * ndir:
        attrs["activations"] = [_CELL[n][0] for n in names]
        params = [_CELL[n][1] for n in names if _CELL[n][1] is not None]
        if params:
            attrs["activation_alpha"] = [float(a) for a, _ in params]
            attrs["activation_beta"] = [float(b) for _, b in params]
    if op == "GRU":
        attrs["linear_before_reset"] = int(layer.reset_after)
    y, y_h = g.op(
        op, [x, g.const("W", np.stack(W)), g.const("R", np.stack(R)), g.const("B", np.stack(B))], n_out=2, **attrs
    )
    if ndir == 1:
        out = g.op("Squeeze", [y, g.const("axes", np.array([1], np.int64))])
        if layer.go_backwards:  # fastlstm returns a go_backwards layer's steps in reading order
            out = g.op(
                "Slice",
                [
                    out,
                    g.const("starts", np.array([-1], np.int64)),
                    g.const("ends", np.array([np.iinfo(np.int64).min], np.int64)),
                    g.const("axes", np.array([0], np.int64)),
                    g.const("steps", np.array([-1], np.int64)),
                ],
            )
        return out, y_h
    if layer.merge_mode != "concat":
        reduce = {"sum": "ReduceSum", "ave": "ReduceMean", "mul": "ReduceProd"}[layer.merge_mode]
        return g.op(reduce, [y, g.const("axes", np.array([1], np.int64))], keepdims=0), y_h
    yt = g.op("Transpose", [y], perm=[0, 2, 1, 3])
    return g.op("Reshape", [yt, g.const("shape", np.array([0, 0, -1], np.int64))]), y_h


def _act_of(layer):
    """A Dense or Conv1D layer's :class:`Activation` (set in its ``__post_init__``, not a field)."""
    return layer.act


def _pads(layer):
    """A conv or pool layer's ``(left, right)`` padding: ``__post_init__`` resolves every other form
    but 'same' at stride > 1, which the caller has refused."""
    return list(layer.padding)


def _activation(g, x, act, where):
    name = act.name
    simple = {
        "relu": "Relu",
        "sigmoid": "Sigmoid",
        "tanh": "Tanh",
        "selu": "Selu",
        "softplus": "Softplus",
        "softsign": "Softsign",
    }
    if name == "linear":
        return x
    if name in simple:
        return g.op(simple[name], [x])
    if name == "softmax":
        return g.op("Softmax", [x], axis=-1)
    if name in ("elu", "leaky_relu"):
        return g.op("Elu" if name == "elu" else "LeakyRelu", [x], alpha=float(act.alpha))
    if name in ("gelu", "gelu_tanh"):
        return g.op("Gelu", [x], approximate="none" if name == "gelu" else "tanh")
    if name in ("hard_sigmoid", "hard_sigmoid_keras2"):
        return g.op("HardSigmoid", [x], alpha=1 / 6 if name == "hard_sigmoid" else 0.2, beta=0.5)
    if name == "silu":
        return g.op("Mul", [x, g.op("Sigmoid", [x])])
    if name == "prelu":
        return g.op("PRelu", [x, g.const("slope", act.weight)])
    raise ValueError(f"{where}: activation {name!r} has no ONNX form in fastlstm's writer")
