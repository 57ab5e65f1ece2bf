"""The matcher's layer ops: ONNX nodes that append a layer to the chain (dense, activations, norms,
Conv and pooling, embedding), with the exact conditions under which each one maps."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..layers import (
    RECURRENT,
    Activation,
    AvgPool1D,
    BatchNorm,
    Conv1D,
    Dense,
    Embedding,
    GlobalAvgPool1D,
    GlobalMaxPool1D,
    LayerNorm,
    MaxPool1D,
)
from .onnx_fold import Sym
from .onnx_values import Axis, Dyn, same_arrays, show

#: ONNX activation ops and the fastlstm activation each is (None: decided from its attributes).
ACTIVATION_OPS = {
    "Relu": "relu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "Elu": "elu",
    "Selu": "selu",
    "LeakyRelu": "leaky_relu",
    "Softplus": "softplus",
    "Softsign": "softsign",
    "HardSigmoid": None,
    "Gelu": None,
    "Softmax": "softmax",
    "PRelu": "prelu",
}


class LayerOps:
    """Mixed into :class:`~.onnx_graph.Matcher` (which provides ``refuse``, ``const``, ``_append``, ...)."""

    def _embedding(self, vals):
        table, ids = vals[0], vals[1]
        if not isinstance(table, np.ndarray) or table.ndim != 2:
            self.refuse("gathers from something other than a constant 2-d table")
        if ids.time != "ids" or ids.chain:
            self.refuse("an embedding lookup that is not on the model's integer input")
        return Dyn(ids.axes + (Axis("F", table.shape[1]),), (Embedding(table),), time="seq")

    def _dense(self, node, op, v):
        v = self._canonical(v, op)
        F = self._features(v)
        if op == "MatMul":
            w = self.const(1)
            if w.ndim != 2 or w.shape[0] != F:
                self.refuse(f"multiplies {F} features by a weight of shape {w.shape}; expected ({F}, out)")
            return self._widened(self._append(v, Dense(w.T)), w.shape[1])
        if len(v.axes) != 2:
            self.refuse(f"Gemm on a rank-{len(v.axes)} value")
        if self._attr_value(node, "transA", 0):
            self.refuse("Gemm with transA=1 on the data")
        w = self.const(1)
        w = w.T if self._attr_value(node, "transB", 0) else w
        if w.ndim != 2 or w.shape[0] != F:
            self.refuse(f"multiplies {F} features by a weight of shape {w.shape}")
        alpha, beta = self._attr_value(node, "alpha", 1.0), self._attr_value(node, "beta", 1.0)
        bias = None
        if len(node.inputs) > 2 and node.inputs[2]:
            c = np.asarray(self.const(2), dtype=np.float64) * beta
            bias = self._bias_vector(c, w.shape[1])
        return self._widened(self._append(v, Dense(alpha * w.T.astype(np.float64), bias)), w.shape[1])

    @staticmethod
    def _widened(v, width):
        """``v`` with ``width`` features (after a dense layer)."""
        return replace(v, axes=v.axes[:-1] + (Axis("F", width),))

    def _bias_vector(self, c, width):
        if c.size not in (1, width) or (c.ndim and c.shape[-1] not in (1, width)) or any(d != 1 for d in c.shape[:-1]):
            self.refuse(f"adds a constant of shape {c.shape} that is not one value per feature ({width})")
        return np.broadcast_to(c.reshape(-1), (width,))

    def _bias_add(self, v, c):
        if not isinstance(c, np.ndarray):
            self.refuse("adds a value that is not a constant")
        v = self._canonical(v, "Add")
        last = v.chain[-1] if v.chain else None
        if not isinstance(last, Dense) or last.activation != "linear":
            self.refuse(
                "adds a constant that does not follow a MatMul (only MatMul + Add, a dense layer, is supported)"
            )
        bias = self._bias_vector(np.asarray(c, np.float64), last.output_size)
        total = bias if last.bias is None else last.bias.astype(np.float64) + bias
        return replace(v, chain=v.chain[:-1] + (Dense(last.weight, total),))

    def _activation(self, node, op, v):
        name = ACTIVATION_OPS[op]
        kwargs = {}
        if op == "Softmax":
            v = self._canonical(v, op)
            axis = self._attr_value(node, "axis", -1)
            if self._axis(axis, v) != len(v.axes) - 1:
                self.refuse(f"softmax over axis {axis}, not over the features")
        elif op == "PRelu":
            v = self._canonical(v, op)
            slope = np.asarray(self.const(1), np.float32)
            F = self._features(v)
            if slope.size not in (1, F) or (slope.ndim and slope.shape[-1] != slope.size):
                self.refuse(f"PRelu slope of shape {slope.shape} is not one per feature ({F})")
            kwargs["weight"] = slope.reshape(-1)
        elif op in ("Elu", "LeakyRelu"):
            kwargs["alpha"] = self._attr_value(node, "alpha", 1.0 if op == "Elu" else 0.01)
        elif op == "Selu":
            alpha, gamma = (
                self._attr_value(node, "alpha", 1.67326319217681884765625),
                self._attr_value(node, "gamma", 1.05070102214813232421875),
            )
            if abs(alpha - 1.6732632423543772) > 1e-6 or abs(gamma - 1.0507009873554805) > 1e-6:
                self.refuse(f"Selu with alpha={alpha}, gamma={gamma}; only the standard constants are supported")
        elif op == "HardSigmoid":
            alpha, beta = self._attr_value(node, "alpha", 0.2), self._attr_value(node, "beta", 0.5)
            if abs(beta - 0.5) > 1e-7:
                self.refuse(f"HardSigmoid with beta={beta}")
            if abs(alpha - 0.2) <= 1e-7:
                name = "hard_sigmoid_keras2"
            elif abs(alpha - 1 / 6) <= 1e-7:
                name = "hard_sigmoid"
            else:
                self.refuse(f"HardSigmoid with alpha={alpha} (supported: 0.2 and 1/6)")
        elif op == "Gelu":
            approx = self._attr_value(node, "approximate", b"none")
            name = {b"none": "gelu", b"tanh": "gelu_tanh"}.get(approx)
            if name is None:
                self.refuse(f"Gelu approximate={approx!r}")
        v = self._as_data(v)
        if v.time == "ids":
            self.refuse(f"{op} on integer token ids")
        last = v.chain[-1] if v.chain else None
        if isinstance(last, Dense) and last.activation == "linear":
            act = Activation(name, **kwargs)
            return replace(v, chain=v.chain[:-1] + (Dense(last.weight, last.bias, act),))
        return self._append(v, Activation(name, **kwargs))

    def _channel_axis_ok(self, v, what):
        v = self._as_data(v)
        if len(v.axes) < 2 or v.axes[1].kind != "F":
            self.refuse(f"{what} normalizes axis 1, which holds {show(v.axes[1:2])}, not the features")
        return v

    def _batchnorm(self, node, v):
        v = self._channel_axis_ok(v, "BatchNormalization")
        if self._attr_value(node, "training_mode", 0):
            self.refuse("BatchNormalization in training mode; export in eval mode")
        if len(node.outputs) > 1 and any(node.outputs[1:]):
            self.refuse("BatchNormalization with running-statistics outputs (training mode)")
        scale, bias, mean, var = (np.asarray(self.const(k), np.float32) for k in range(1, 5))
        eps = self._attr_value(node, "epsilon", 1e-5)
        return self._append(v, BatchNorm(mean, var, scale, bias, eps))

    def _layernorm(self, node, v):
        v = self._canonical(v, "LayerNormalization")
        if self._axis(self._attr_value(node, "axis", -1), v) != len(v.axes) - 1:
            self.refuse("LayerNormalization over more than the feature axis")
        if len(node.outputs) > 1 and any(node.outputs[1:]):
            self.refuse("LayerNormalization with mean/inverse-deviation outputs")
        gamma = np.asarray(self.const(1), np.float32).reshape(-1)
        beta = np.asarray(self.const(2), np.float32).reshape(-1) if len(node.inputs) > 2 and node.inputs[2] else None
        return self._append(v, LayerNorm(self._features(v), gamma, beta, self._attr_value(node, "epsilon", 1e-5)))

    def _time_layer_input(self, v, what):
        """(N, C, L) data for Conv/pooling: fixes N as the batch and L as time."""
        v = self._as_data(v)
        if len(v.axes) != 3 or v.axes[1].kind != "F":
            self.refuse(f"{what} expects (batch, channels, time), got axes {show(v.axes)}")
        if v.time != "seq" or v.reverse:
            self.refuse(f"{what} on {'a single step' if v.time == 'last' else 'a reversed sequence'}")
        self._assign(v.axes[0], "B")
        self._assign(v.axes[2], "T")
        return v

    def _new_time(self, v, same_length):
        if same_length:
            return v.axes[2]
        sym = Sym(f"time after node {self.position}")
        sym.role = "T"
        return Axis("S", sym)

    def _conv(self, node, v):
        v = self._time_layer_input(v, "Conv")
        w = np.asarray(self.const(1), np.float32)
        if w.ndim != 3:
            self.refuse(f"a {w.ndim - 2}-d convolution; fastlstm runs 1-d convolutions over time")
        bias = np.asarray(self.const(2), np.float32) if len(node.inputs) > 2 and node.inputs[2] else None
        stride, dilation, padding = self._window_attrs(node, "strides", w.shape[2])
        group = self._attr_value(node, "group", 1)
        padding = (padding[0] + v.pad[0], padding[1] + v.pad[1])
        conv = Conv1D(w, bias, stride=stride, dilation=dilation, groups=group, padding=padding)
        v = replace(v, pad=(0, 0))
        same = stride == 1 and sum(conv.padding) == conv.reach
        axes = (v.axes[0], Axis("F", conv.output_size), self._new_time(v, same))
        return replace(self._append(v, conv), axes=axes)

    def _pad(self, node, v):
        """Zero padding of the time axis of (batch, channels, time) data: owed to the Conv that follows
        (``F.pad(x, (k - 1, 0))`` before ``nn.Conv1d``, a causal convolution)."""
        mode = self._attr_value(node, "mode", b"constant")
        pads = self._attr_value(node, "pads", None)
        pads = [int(p) for p in (self.const(1).reshape(-1) if pads is None else pads)]
        value = (
            self.const(2).reshape(-1)
            if len(node.inputs) > 2 and node.inputs[2]
            else np.asarray([self._attr_value(node, "value", 0.0)])
        )
        if len(node.inputs) > 3 and node.inputs[3]:
            self.refuse("Pad with an axes input")
        n = len(v.axes)
        if (
            mode != b"constant"
            or np.any(value != 0)
            or len(pads) != 2 * n
            or n != 3
            or v.axes[1].kind != "F"
            or any(pads[k] or pads[k + n] for k in (0, 1))
            or min(pads) < 0
        ):
            self.refuse(
                f"Pad {pads} ({mode.decode(errors='replace')}, value {value.tolist()}); fastlstm folds "
                "only zero padding of the time axis of (batch, channels, time) data into the next Conv"
            )
        return replace(v, pad=(v.pad[0] + pads[2], v.pad[1] + pads[2 + n]))

    def _crop_conv(self, v, left, right, what):
        """Dropping the first/last steps of a stride-1 Conv's output is the same Conv with less padding
        (``conv(x)[..., :-(k - 1)]``, another way to write a causal convolution)."""
        conv = v.chain[-1] if v.chain else None
        if (
            not isinstance(conv, Conv1D)
            or conv.stride != 1
            or conv.padding == "same"
            or conv.padding[0] < left
            or conv.padding[1] < right
        ):
            self.refuse(
                f"{what}; fastlstm returns every step or the last one and never guesses another crop "
                "(a crop of a stride-1 Conv's padded steps is folded into its padding)"
            )
        padding = (conv.padding[0] - left, conv.padding[1] - right)
        trimmed = Conv1D(
            conv.weight,
            conv.bias,
            stride=1,
            dilation=conv.dilation,
            groups=conv.groups,
            padding=padding,
            activation=conv.act,
        )
        return replace(v, chain=v.chain[:-1] + (trimmed,))

    def _window_attrs(self, node, key, kernel):
        auto = self._attr_value(node, "auto_pad", b"NOTSET")
        if auto not in (b"NOTSET", b"VALID"):
            self.refuse(f"auto_pad={auto.decode(errors='replace')}; export with explicit pads")
        strides = list(self._attr_value(node, key, [1]))
        dilations = list(self._attr_value(node, "dilations", [1]))
        pads = list(self._attr_value(node, "pads", [0, 0])) if auto == b"NOTSET" else [0, 0]
        if len(strides) != 1 or len(dilations) != 1 or len(pads) != 2:
            self.refuse("strides, dilations and pads must describe one (time) axis")
        return strides[0], dilations[0], (pads[0], pads[1])

    def _pool(self, node, op, v):
        v = self._time_layer_input(v, op)
        kernel = list(self._attr_value(node, "kernel_shape", []))
        if len(kernel) != 1:
            self.refuse(f"kernel_shape {kernel}; a 1-d pool has one")
        stride, dilation, padding = self._window_attrs(node, "strides", kernel[0])
        if dilation != 1 or self._attr_value(node, "ceil_mode", 0):
            self.refuse("pooling with dilation or ceil_mode")
        if op == "MaxPool":
            if len(node.outputs) > 1 and node.outputs[1]:
                self.refuse("MaxPool's indices output")
            pool = MaxPool1D(kernel[0], stride, padding)
        else:
            pool = AvgPool1D(kernel[0], stride, padding, bool(self._attr_value(node, "count_include_pad", 0)))
        same = stride == 1 and sum(pool.padding) == kernel[0] - 1
        return replace(self._append(v, pool), axes=(v.axes[0], v.axes[1], self._new_time(v, same)))

    def _global_pool(self, node, op, v):
        v = self._as_data(v)
        if op.startswith("Global"):
            v = self._time_layer_input(v, op)
            axis, keep = 2, True
        else:
            axes = self._axes_arg(node)
            if axes is None or len(axes) != 1:
                self.refuse(f"{op} over axes {axes}; only a reduction over time is supported")
            axis, keep = self._axis(axes[0], v), bool(self._attr_value(node, "keepdims", 1))
            if v.axes[axis].kind == "D" and v.axes[axis].size == 2:
                return self._merge_directions(v, axis, keep, op)
            if v.axes[axis].role != "T" or op in ("ReduceSum", "ReduceProd"):
                self.refuse(f"{op} over axis {axis} ({show(v.axes[axis : axis + 1])}), not over time")
        layer = GlobalMaxPool1D() if op.endswith(("Max", "MaxPool")) else GlobalAvgPool1D()
        v = self._append(v, layer, time="last")
        return replace(v, axes=v.axes[:axis] + ((Axis("U", 1),) if keep else ()) + v.axes[axis + 1 :])

    def _merge_directions(self, v, axis, keep, op):
        """Sum, mean or product over the directions of a bidirectional output: Keras' merge modes."""
        layer = v.chain[-1] if v.chain else None
        if not isinstance(layer, RECURRENT) or not layer.bidirectional or layer.merge_mode != "concat":
            self.refuse(f"{op} over the directions of something other than a bidirectional layer's output")
        merged = replace(layer, merge_mode={"ReduceSum": "sum", "ReduceMean": "ave", "ReduceProd": "mul"}[op])
        axes = v.axes[:axis] + ((Axis("U", 1),) if keep else ()) + v.axes[axis + 1 :]
        return replace(v, chain=v.chain[:-1] + (merged,), axes=axes)

    def _silu(self, a, b):
        """``Mul(x, Sigmoid(x))``: SiLU/swish, the one two-branch pattern fastlstm recognises."""
        a, b = (a, b) if len(a.chain) <= len(b.chain) else (b, a)
        same_prefix = len(a.chain) and all(p is q for p, q in zip(a.chain[:-1], b.chain[:-1]))
        last_a, last_b = (a.chain[-1], b.chain[-1]) if same_prefix else (None, None)
        if len(b.chain) == len(a.chain) + 1 and last_a is b.chain[-2] and b.chain[-1] == Activation("sigmoid"):
            return self._append(a, Activation("silu"))
        if (
            len(b.chain) == len(a.chain)
            and isinstance(last_a, Dense)
            and isinstance(last_b, Dense)
            and last_a.activation == "linear"
            and last_b.activation == "sigmoid"
            and np.array_equal(last_a.weight, last_b.weight)
            and same_arrays(last_a.bias, last_b.bias)
        ):
            return replace(a, chain=a.chain[:-1] + (Dense(last_a.weight, last_a.bias, "silu"),))
        self.refuse(
            "Mul of two values computed from the data (a gated branch); only x * sigmoid(x) (SiLU) is recognised"
        )
