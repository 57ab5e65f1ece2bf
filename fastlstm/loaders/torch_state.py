"""Infer a model from PyTorch-style tensor names and shapes (a ``state_dict``).

Recognised modules, each under an optional attribute prefix (``lstm.``, ``encoder.rnn.``):

* ``nn.LSTM``: ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``,
  ``weight_hr_l{k}`` (proj_size), each optionally with ``_reverse`` (bidirectional);
* ``nn.LSTMCell``: ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``;
* ``nn.Linear``: ``weight``, ``bias`` - the head, applied to every step's output.

Exactly one recurrent module is accepted.  Several separate LSTM modules are refused:
their weights alone do not say in which order ``forward`` calls them, and a wrong
guess would give a wrong model silently.  Every tensor must be used; leftovers are
listed in the error, so a file can never load as fewer layers than it holds.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import numpy as np

from ..layers import HEAD_ACTIVATIONS, Dense, LSTMLayer, LSTMWeights
from ._common import describe_keys, float_weight, make_spec, warn
from ._limits import shown

_LSTM_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?)(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)"
                       r"_l(?P<layer>0|[1-9][0-9]*)(?P<rev>_reverse)?$")
_CELL_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?)(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh)$")
_LINEAR_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?)(?P<kind>weight|bias)$")

#: Keyword overrides accepted by :func:`spec_from_state_dict` (and so by from_torch / load).
OVERRIDES = ("head_activation", "return_sequences")


def check_overrides(overrides, allowed=OVERRIDES):
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}; accepted: {', '.join(allowed)}")
    act = overrides.get("head_activation")
    if act is not None and act not in HEAD_ACTIVATIONS:
        raise ValueError(f"head_activation: {shown(act)} is not supported; expected one of {HEAD_ACTIVATIONS}")
    rs = overrides.get("return_sequences")
    if rs is not None and not isinstance(rs, (bool, np.bool_)):
        raise TypeError(f"return_sequences: expected a bool, got {type(rs).__name__}")


def _group(keys):
    """Split keys into LSTM / LSTMCell / Linear groups by prefix (other keys end up as leftovers)."""
    lstm, cell, linear = OrderedDict(), OrderedDict(), OrderedDict()
    for key in keys:
        if not isinstance(key, str):
            continue
        m = _LSTM_KEY.match(key)
        if m:
            slot = (int(m["layer"]), 1 if m["rev"] else 0)
            lstm.setdefault(m["prefix"], {}).setdefault(slot, {})[m["kind"]] = key
            continue
        m = _CELL_KEY.match(key) or _LINEAR_KEY.match(key)
        if m:
            target = cell if m.re is _CELL_KEY else linear
            target.setdefault(m["prefix"], {})[m["kind"]] = key
    return lstm, cell, linear


def _shape_hint(w_ih, w_hh, key):
    """Explain a weight that is not LSTM-shaped: GRU and vanilla RNN use the same key names."""
    rows, cols = w_hh.shape if w_hh.ndim == 2 else (None, None)
    if rows is not None and cols and rows == 3 * cols:
        return (f"{key}: {rows} gate rows for hidden size {cols} looks like an nn.GRU (3 gates); "
                "fastlstm runs LSTMs only")
    if rows is not None and rows == cols:
        return f"{key}: a square recurrent weight looks like a vanilla nn.RNN; fastlstm runs LSTMs only"
    return None


def _direction(t, keys, key_for, name, source, need_hr):
    """Build one LSTMWeights from the keys of one (layer, direction); ``key_for(kind)`` names a key."""
    for kind in ("weight_ih", "weight_hh"):
        if kind not in keys:
            raise ValueError(f"{source}: missing {shown(key_for(kind))} "
                             f"(found {describe_keys(sorted(keys.values())) or 'nothing else for this layer'})")
    if ("bias_ih" in keys) != ("bias_hh" in keys):
        have, miss = ("bias_ih", "bias_hh") if "bias_ih" in keys else ("bias_hh", "bias_ih")
        raise ValueError(f"{source}: {shown(keys[have])} is present but {shown(key_for(miss))} is missing")
    w = {kind: float_weight(t[key], key, source) for kind, key in keys.items()}
    for kind in ("weight_ih", "weight_hh", "weight_hr"):
        if kind in w and w[kind].ndim != 2:
            raise ValueError(f"{source}: tensor {shown(keys[kind])} has shape {w[kind].shape}; expected a 2-d matrix")
    hint = _shape_hint(w["weight_ih"], w["weight_hh"], keys["weight_hh"])
    if hint:
        raise ValueError(f"{source}: {hint}")
    if need_hr and "weight_hr" not in w:
        raise ValueError(f"{source}: {shown(key_for('weight_hr'))} is missing while other layers have a projection")
    try:
        return LSTMWeights(w["weight_ih"], w["weight_hh"], w.get("bias_ih"), w.get("bias_hh"), w.get("weight_hr"),
                           name=name)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {exc} (keys {describe_keys(sorted(keys.values()))})") from None


def _lstm_layers(t, prefix, slots, source):
    layer_ids = sorted({k for k, _ in slots})
    if layer_ids != list(range(len(layer_ids))):
        missing = sorted(set(range(max(layer_ids) + 1)) - set(layer_ids))
        raise ValueError(f"{source}: LSTM '{prefix}' has weights for layers {layer_ids} but none for layer(s) "
                         f"{missing}; refusing a partial stack")
    reverse = {k for k, d in slots if d == 1}
    if reverse and reverse != set(layer_ids):
        raise ValueError(f"{source}: LSTM '{prefix}' has _reverse weights for layers {sorted(reverse)} only; "
                         "a bidirectional nn.LSTM has them for every layer")
    has_bias = {("bias_ih" in keys or "bias_hh" in keys) for keys in slots.values()}
    if len(has_bias) > 1:
        raise ValueError(f"{source}: LSTM '{prefix}' has biases in some layers but not others")
    need_hr = any("weight_hr" in keys for keys in slots.values())
    layers = []
    for k in layer_ids:
        dirs = []
        for d in (0, 1) if reverse else (0,):
            suffix = f"_l{k}" + ("_reverse" if d else "")
            dirs.append(_direction(t, slots.get((k, d), {}), lambda kind, s=suffix: f"{prefix}{kind}{s}",
                                   f"{prefix}l{k}" + ("_reverse" if d else ""), source, need_hr))
        try:
            layers.append(LSTMLayer(tuple(dirs)))
        except (TypeError, ValueError) as exc:  # e.g. forward and reverse weights of different shapes
            raise ValueError(f"{source}: LSTM '{prefix}' layer {k}: {exc}") from None
    return layers


def _cell_layer(t, prefix, keys, source):
    weights = _direction(t, keys, lambda kind: f"{prefix}{kind}", prefix.rstrip(".") or "cell", source, False)
    return [LSTMLayer((weights,))]


def spec_from_state_dict(tensors, source, *, head_activation=None, return_sequences=None):
    """Build a :class:`Spec` from a mapping of PyTorch-style names to arrays.

    ``head_activation`` defaults to ``"linear"``: an ``nn.Linear`` applies none, and a
    state_dict cannot record what ``forward`` does after it.  When a head is present and
    the activation was not passed (or found in a module), a :class:`LoadWarning` says so.
    ``return_sequences`` defaults to True (``nn.LSTM`` returns every step).
    """
    if not hasattr(tensors, "keys") or not hasattr(tensors, "__getitem__"):
        raise TypeError(f"{source}: expected a mapping of names to tensors, got {type(tensors).__name__}")
    nested = [k for k in tensors.keys() if hasattr(tensors[k], "items")]
    if nested:
        raise ValueError(f"{source}: entries {describe_keys(nested)} are nested mappings, so this looks like a "
                         f"training checkpoint, not a state_dict; pick the model's entry, e.g. "
                         f"fastlstm.load(path, key={shown(nested[0])})")
    t = OrderedDict()
    for key in tensors.keys():
        value = tensors[key]
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{source}: entry {shown(key)} is a {type(value).__name__}, not a tensor")
        t[key] = value
    lstm, cell, linear = _group(t.keys())

    # A cell-style group with only 'bias_*' keys is not a module: its keys end up as leftovers.
    cell = OrderedDict((p, keys) for p, keys in cell.items() if "weight_ih" in keys or "weight_hh" in keys)
    recurrent = [("lstm", p) for p in lstm] + [("cell", p) for p in cell]
    if not recurrent:
        raise ValueError(f"{source}: no LSTM weights found (expected keys such as 'weight_ih_l0' or "
                         f"'lstm.weight_ih_l0'); keys: {describe_keys(t.keys())}")
    if len(recurrent) > 1:
        names = ", ".join(repr(p or "<top level>") for _, p in recurrent)
        raise ValueError(f"{source}: found recurrent weights under several prefixes ({names}). The weights do not "
                         "say in which order forward() runs separate modules, so fastlstm refuses to guess: use one "
                         "nn.LSTM(num_layers=...) or build fastlstm.Model from LSTMLayer objects yourself")
    kind, prefix = recurrent[0]
    if kind == "lstm":
        layers = _lstm_layers(t, prefix, lstm[prefix], source)
        used = {key for slot in lstm[prefix].values() for key in slot.values()}
    else:
        layers = _cell_layer(t, prefix, cell[prefix], source)
        used = set(cell[prefix].values())

    head = None
    heads = [(p, keys) for p, keys in linear.items() if "weight" in keys]
    if len(heads) > 1:
        found = describe_keys(k["weight"] for _, k in heads)
        raise ValueError(f"{source}: found several Linear-like weights ({found}); fastlstm supports one dense head "
                         "after the LSTM")
    if heads:
        hp, keys = heads[0]
        w = float_weight(t[keys["weight"]], keys["weight"], source, ndim=2)
        b = float_weight(t[keys["bias"]], keys["bias"], source, ndim=1) if "bias" in keys else None
        out = layers[-1].output_size
        if w.shape[1] != out:
            raise ValueError(f"{source}: {shown(keys['weight'])} has shape {w.shape}, so it cannot be a head on an "
                             f"LSTM that outputs {out} features; refusing an unused or misplaced tensor")
        if b is not None and b.shape != (w.shape[0],):
            raise ValueError(f"{source}: tensor {shown(keys['bias'])} has shape {b.shape}; expected ({w.shape[0]},)")
        if head_activation is None:
            warn(f"{source}: using {describe_keys(keys.values())} as a dense head applied to every step. "
                 "Its activation is not recorded in weights; assuming 'linear' (nn.Linear's raw output). "
                 "Pass head_activation='sigmoid'/'tanh'/'relu'/'softmax'/'linear' to say so explicitly")
            head_activation = "linear"
        head = Dense(w, b, head_activation)
        used |= set(keys.values())

    if head is None and head_activation is not None:
        raise ValueError(f"head_activation: {source} has no dense head (no Linear weights) to apply it to")
    leftovers = [k for k in t if k not in used]
    if leftovers:
        raise ValueError(f"{source}: {len(leftovers)} tensor(s) not part of a supported LSTM [+ Linear head] model: "
                         f"{describe_keys(leftovers)}. Every tensor must be used, so that a model never loads "
                         "partially (e.g. 1 layer of 3)")
    rs = True if return_sequences is None else bool(return_sequences)
    return make_spec(layers, head, rs, source)
