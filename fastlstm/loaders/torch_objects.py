"""Read live PyTorch objects: a module (its ``forward()`` traced with ``torch.fx``), the built-in
recurrent modules and cells on their own, or a state_dict-like mapping.

For a custom module or an ``nn.Sequential``, :mod:`.torch_trace` reads ``forward()`` as a chain
and each step becomes a fastlstm layer here, with the options only the module knows (an
nn.RNN's nonlinearity, a Conv1d's padding, a norm's eps).  So ``fc2(relu(fc1(out[:, -1])))``
loads as written, and a module that does something fastlstm cannot run is refused naming
the op rather than loaded in a guessed order.  The weights themselves go through the same
converters as state_dict files (:mod:`.torch_state`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..layers import (
    WIDTH_PRESERVING,
    Activation,
    BatchNorm,
    Conv1D,
    Dense,
    Embedding,
    Flatten,
    GlobalAvgPool1D,
    GlobalMaxPool1D,
    LastStep,
    LayerNorm,
)
from ._common import make_spec
from .torch_calls import conv1d_layer, module_pool_layer
from .torch_state import _group, cell_layers, check_overrides, recurrent_layers, spec_from_state_dict
from .torch_trace import torch_class, trace_chain

_RECURRENT = ("LSTM", "GRU", "RNN")
_CELLS = ("LSTMCell", "GRUCell", "RNNCell")


def is_torch_module(obj) -> bool:
    return any(c.__module__ == "torch.nn.modules.module" and c.__name__ == "Module" for c in type(obj).__mro__)


def tensor_to_numpy(value):
    """torch tensor -> NumPy, without importing torch (bfloat16 has no NumPy dtype: widen it)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        if str(getattr(value, "dtype", "")) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _state(module):
    return {k: tensor_to_numpy(v) for k, v in module.state_dict().items()}


def _nonlinearity(module):
    return getattr(module, "nonlinearity", "tanh") if torch_class(module) in ("RNN", "RNNCell") else None


def _recurrent(module, where):
    """nn.LSTM / GRU / RNN (or a cell) as fastlstm layers, cross-checked with the module's settings."""
    t = _state(module)
    rnn, cell, _ = _group(t.keys())
    if torch_class(module) in _CELLS:
        return cell_layers(t, "", cell[""], where, _nonlinearity(module))
    layers = recurrent_layers(t, "", rnn[""], where, _nonlinearity(module))
    first = layers[0]
    got = (len(layers), first.bidirectional, getattr(first, "proj_size", 0), first.hidden_size)
    want = (module.num_layers, bool(module.bidirectional), int(getattr(module, "proj_size", 0)), module.hidden_size)
    if got != want:
        raise ValueError(
            f"{where}: weights describe (layers, bidirectional, proj_size, hidden) = {got} but the module says {want}"
        )
    return layers


def _conv1d(m, where, extra=(0, 0)):
    """nn.Conv1d, with ``extra`` zero steps padded before/after it in forward()."""
    t = _state(m)
    settings = {key: getattr(m, key) for key in ("stride", "padding", "dilation", "groups", "padding_mode")}
    return conv1d_layer(t["weight"], t.get("bias"), settings, where, extra)


def _module_layer(m, where):
    """A traced built-in non-recurrent module as one fastlstm layer."""
    cls = torch_class(m)
    t = _state(m)
    if cls == "Linear":
        return Dense(t["weight"], t.get("bias"))
    if cls == "Embedding":
        if m.max_norm is not None:
            raise ValueError(f"{where}: nn.Embedding(max_norm=...) rescales rows at lookup; not supported")
        return Embedding(t["weight"])
    if cls == "LayerNorm":
        if len(m.normalized_shape) != 1:
            raise ValueError(f"{where}: LayerNorm over {tuple(m.normalized_shape)} is not over the features only")
        return LayerNorm(m.normalized_shape[0], t.get("weight"), t.get("bias"), eps=m.eps)
    if cls == "BatchNorm1d":
        if m.running_mean is None:
            raise ValueError(
                f"{where}: BatchNorm1d(track_running_stats=False) normalizes with batch statistics; not supported"
            )
        return BatchNorm(t["running_mean"], t["running_var"], t.get("weight"), t.get("bias"), eps=m.eps)
    if cls in ("MaxPool1d", "AvgPool1d"):
        return module_pool_layer(m, cls, where)
    raise ValueError(f"{where}: torch.nn.{cls} is not supported by fastlstm")


def _activation(op, where):
    name, o = op.name, op.options
    if name == "gelu":
        approx = o.get("approximate", "none")
        if approx not in ("none", "tanh"):
            raise ValueError(f"{where}: gelu(approximate={approx!r}) is not supported")
        return Activation("gelu_tanh" if approx == "tanh" else "gelu")
    if name == "softplus" and (o.get("beta", 1.0) != 1.0 or o.get("threshold", 20.0) < 20.0):
        raise ValueError(
            f"{where}: softplus with beta={o.get('beta')} / threshold={o.get('threshold')} is not "
            "supported (only beta=1, threshold>=20)"
        )
    if name == "elu":
        return Activation("elu", alpha=o.get("alpha", 1.0))
    if name == "leaky_relu":
        return Activation("leaky_relu", alpha=o.get("negative_slope", 0.01))
    if name == "prelu":
        return Activation("prelu", weight=tensor_to_numpy(op.module.weight))
    return Activation(name)


def _fold_pad(layers, op, pending, where):
    """Zero padding before a Conv1d becomes part of its padding (returned as the pending pad); steps cut
    off after a stride-1 Conv1d (``y[:, :, :-p]``) are taken off its padding."""
    left, right = op.options["left"], op.options["right"]
    if op.name == "pad":
        return (pending[0] + left, pending[1] + right)
    conv = layers[-1] if layers else None
    if not isinstance(conv, Conv1D) or conv.stride != 1 or pending != (0, 0) or isinstance(conv.padding, str):
        raise ValueError(f"{where}: slicing time is supported only right after a stride-1 Conv1d")
    padding = (conv.padding[0] + left, conv.padding[1] + right)
    if min(padding) < 0:
        raise ValueError(f"{where}: the slice cuts more steps than the Conv1d padded")
    layers[-1] = dataclasses.replace(conv, padding=padding)
    return pending


def _width(layers):
    """Features per step after ``layers`` (None where no layer so far fixes it)."""
    for layer in reversed(layers):
        if not isinstance(layer, WIDTH_PRESERVING):
            return layer.output_size
    return None


def _describe_op(op):
    if op is None:
        return "nothing (forward() ends there)"
    return f"module {op.name!r}" if op.kind == "module" else f"{op.kind} {op.name!r}"


def _sequence_flatten(layers, op, nxt, where):
    """A whole sequence flattened into one vector, and the nn.Linear it feeds: ``[Flatten(steps=T), Dense]``.

    The module does not record T; the Linear right after the flatten does, exactly: T = in_features /
    features.  torch's (B, F, T) flatten is feature-major (f * T + t) where fastlstm's Flatten is
    step-major (t * F + f), so the Linear's columns are put in step-major order (the same products)."""
    if nxt is None or nxt.kind != "module" or torch_class(nxt.module) != "Linear":
        raise ValueError(
            f"{where}: flattens a whole sequence into one vector; its number of steps is not recorded in the "
            "module, and fastlstm reads it only from an nn.Linear right after the flatten (in_features = steps x "
            f"features), but the flatten is followed by {_describe_op(nxt)}"
        )
    features = _width(layers)
    if features is None:
        raise ValueError(f"{where}: flattens a whole sequence, but no layer before it fixes its features per step")
    dense = _module_layer(nxt.module, f"{where}: module {nxt.name!r}")
    steps, rest = divmod(dense.input_size, features)
    if rest or not steps:
        raise ValueError(
            f"{where}: flattens a sequence of {features} features per step into nn.Linear {nxt.name!r} with "
            f"in_features={dense.input_size}, which is not a whole number of steps ({dense.input_size} / {features}); "
            "the sequence length cannot be read exactly"
        )
    if op.options["order"] == "FT":
        weight = dense.weight.reshape(dense.output_size, features, steps).transpose(0, 2, 1)
        dense = Dense(weight.reshape(dense.output_size, -1), dense.bias)
    return [Flatten(steps=steps), dense]


def _chain_from_ops(ops, source):
    layers, pending = [], (0, 0)
    ops = iter(ops)
    for op in ops:
        where = f"{source}: module {op.name!r}" if op.kind == "module" else f"{source}: {op.name}"
        if op.kind == "pad":
            pending = _fold_pad(layers, op, pending, where)
            continue
        if pending != (0, 0) and not (op.kind == "module" and torch_class(op.module) == "Conv1d"):
            raise ValueError(
                f"{where}: follows zero padding of the time axis, which fastlstm supports only right before a Conv1d"
            )
        if op.kind == "module" and torch_class(op.module) == "Conv1d":
            layers.append(_conv1d(op.module, where, pending))
            pending = (0, 0)
        elif op.kind == "module":
            cls = torch_class(op.module)
            layers.extend(_recurrent(op.module, where) if cls in _RECURRENT else [_module_layer(op.module, where)])
        elif op.kind == "activation":
            layers.append(_activation(op, where))
        elif op.kind == "last_step":
            layers.append(LastStep())
        elif op.kind == "global_pool":
            layers.append(GlobalAvgPool1D() if op.name == "avg" else GlobalMaxPool1D())
        elif op.kind == "flatten":
            layers.extend(_sequence_flatten(layers, op, next(ops, None), where))

        # "unsqueeze" (a (B, T) input made (B, T, 1)) needs no layer: the model's input has 1 feature.
    if pending != (0, 0):
        raise ValueError(
            f"{source}: forward() ends with zero padding of the time axis; fastlstm supports it only "
            "right before a Conv1d"
        )
    return layers


def _check_layout(source, layout, out):
    """The output must keep the input's batch/time placement (or have dropped time)."""
    if "T" in out and ("B" not in out or out.index("B") != layout.index("B") or out.index("T") != layout.index("T")):
        raise ValueError(
            f"{source}: forward() returns axes {out} for input axes {layout}; fastlstm returns the "
            "input's (time, batch) layout, so a module that moves them is not supported"
        )
    if "1" in out:
        raise ValueError(f"{source}: forward() returns a size-1 axis left by a pool; squeeze it in forward()")


def _numpy_tree(mapping):
    """A state_dict (or a dict of them) with every tensor as a NumPy array."""
    return {
        k: _numpy_tree(v)
        if hasattr(v, "keys") and hasattr(v, "__getitem__")
        else tensor_to_numpy(v)
        if hasattr(v, "shape")
        else v
        for k, v in mapping.items()
    }


def spec_from_torch_object(obj, **overrides):
    if is_torch_module(obj):
        source = f"torch module {type(obj).__name__}"
        cls = torch_class(obj)
        if overrides:
            raise TypeError(
                f"{', '.join(sorted(overrides))}: a live module's structure is read from its forward(); "
                "these overrides apply to state_dicts only"
            )
        if cls in _RECURRENT + _CELLS:
            return make_spec(_recurrent(obj, source), source)
        if cls is not None and cls != "Sequential":
            raise ValueError(
                f"{source}: a torch.nn.{cls} on its own; fastlstm runs models built around an nn.LSTM, nn.GRU or nn.RNN"
            )
        ops, layout, out = trace_chain(obj, source)
        _check_layout(source, layout, out)
        if not any(op.kind == "module" and torch_class(op.module) in _RECURRENT for op in ops):
            raise ValueError(f"{source}: forward() runs no nn.LSTM, nn.GRU or nn.RNN")
        return make_spec(_chain_from_ops(ops, source), source)
    check_overrides(overrides)
    if hasattr(obj, "keys") and hasattr(obj, "__getitem__"):
        return spec_from_state_dict(_numpy_tree(obj), "state_dict", **overrides)
    raise TypeError(
        f"obj: expected an nn.Module (nn.LSTM, nn.GRU, nn.Sequential, your own module) or a "
        f"state_dict mapping, got {type(obj).__name__}"
    )
