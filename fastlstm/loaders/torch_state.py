"""Build a model from PyTorch-style tensor names and shapes (a ``state_dict``).

Modules are recognised under their attribute prefix (``lstm.``, ``encoder.rnn.``) by their keys:

* ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``: ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``,
  ``bias_hh_l{k}``, ``weight_hr_l{k}`` (LSTM proj_size), each optionally with ``_reverse``; the
  gate rows (4H, 3H or H) say which;
* the cells ``nn.LSTMCell`` / ``nn.GRUCell`` / ``nn.RNNCell``: ``weight_ih``, ``weight_hh``, ...;
* ``nn.Linear`` (``weight`` 2-d, ``bias``), ``nn.Embedding`` (``weight`` (vocab, dim)),
  ``nn.LayerNorm`` (``weight``, ``bias`` 1-d), ``nn.BatchNorm1d`` (plus ``running_mean``,
  ``running_var``).

A state_dict does not record what ``forward()`` does.  Without ``layers=`` only the
common case is inferred: one recurrent module, optionally followed by one Linear applied
to every step (``head_activation``, ``return_sequences`` say the rest).  Anything else
needs ``layers=[...]``: the order ``forward()`` runs the modules in, by key prefix, with
activation names, ``"last_step"`` and pools (``"maxpool1d(2)"``, see :mod:`.torch_calls`)
between them.  Every tensor must be used; leftovers are described by what their shapes
look like, so a file never loads as fewer layers than it holds.  An nn.Conv1d is named with its
settings, which a state_dict does not hold (``"conv(padding=1)"``, also in :mod:`.torch_calls`).
"""

from __future__ import annotations

import re
from collections import OrderedDict

import numpy as np

from ..layers import (
    ACTIVATION_ALIASES,
    ACTIVATIONS,
    Activation,
    BatchNorm,
    Dense,
    Embedding,
    GRULayer,
    GRUWeights,
    LastStep,
    LayerNorm,
    LSTMLayer,
    LSTMWeights,
    RNNLayer,
    RNNWeights,
)
from ._common import describe_keys, float_weight, make_spec, warn
from ._limits import shown
from .torch_calls import CONV_FORM, POOL_FORMS, conv1d_from_call, parse_pool, prefix_call

_RNN_KEY = re.compile(
    r"^(?P<prefix>(?:.*\.)?)(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)"
    r"_l(?P<layer>0|[1-9][0-9]*)(?P<rev>_reverse)?$"
)
_CELL_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?)(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh)$")
_PLAIN_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?)(?P<kind>weight|bias|running_mean|running_var|num_batches_tracked)$")

#: Keyword overrides accepted by :func:`spec_from_state_dict` (and so by from_torch / load).
OVERRIDES = ("head_activation", "return_sequences", "layers")
#: The recurrent kinds by gate rows per hidden unit.
_BY_GATES = {
    4: (LSTMLayer, LSTMWeights, "nn.LSTM"),
    3: (GRULayer, GRUWeights, "nn.GRU"),
    1: (RNNLayer, RNNWeights, "nn.RNN"),
}
#: What ``layers=`` accepts besides key prefixes.
LAST_STEP = "last_step"


def check_overrides(overrides, allowed=OVERRIDES):
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}; accepted: {', '.join(allowed)}")
    act = overrides.get("head_activation")
    if act is not None and ACTIVATION_ALIASES.get(act, act) not in ACTIVATIONS or act == "prelu":
        raise ValueError(
            f"head_activation: {shown(act)} is not supported; expected one of "
            f"{tuple(a for a in ACTIVATIONS if a != 'prelu')}"
        )
    rs = overrides.get("return_sequences")
    if rs is not None and not isinstance(rs, (bool, np.bool_)):
        raise TypeError(f"return_sequences: expected a bool, got {type(rs).__name__}")
    order = overrides.get("layers")
    if order is not None and (isinstance(order, str) or not all(isinstance(n, str) and n for n in order)):
        raise TypeError(
            "layers: expected a list of key prefixes, activation names and pools, e.g. "
            "['embedding', 'lstm', 'fc1', 'relu', 'fc2'] or ['maxpool1d(2)', 'lstm', 'fc']"
        )
    if order is not None and overrides.get("head_activation") is not None:
        raise TypeError("head_activation: with layers=[...] name the activation in the list instead")


# --- grouping keys by module ----------------------------------------------------------------


def _group(keys):
    """Split keys into recurrent / cell / plain-module groups by prefix (others end up as leftovers)."""
    rnn, cell, plain = OrderedDict(), OrderedDict(), OrderedDict()
    for key in keys:
        if not isinstance(key, str):
            continue
        m = _RNN_KEY.match(key)
        if m:
            slot = (int(m["layer"]), 1 if m["rev"] else 0)
            rnn.setdefault(m["prefix"], {}).setdefault(slot, {})[m["kind"]] = key
            continue
        m = _CELL_KEY.match(key) or _PLAIN_KEY.match(key)
        if m:
            target = cell if m.re is _CELL_KEY else plain
            target.setdefault(m["prefix"], {})[m["kind"]] = key
    # A cell-style group with only 'bias_*' keys is not a module: its keys end up as leftovers.
    cell = OrderedDict((p, k) for p, k in cell.items() if "weight_ih" in k or "weight_hh" in k)
    return rnn, cell, plain


def _gates(t, key, source):
    """Gate rows per hidden unit of a recurrent weight_hh (4 LSTM, 3 GRU, 1 RNN), from its shape."""
    w = np.asarray(t[key])
    if w.ndim != 2 or not w.shape[1] or w.shape[0] % w.shape[1] or w.shape[0] // w.shape[1] not in _BY_GATES:
        return None
    return w.shape[0] // w.shape[1]


def _direction(t, keys, key_for, name, source, weight_cls, need_hr):
    """One direction's weights from the keys of one (layer, direction); ``key_for(kind)`` names a key."""
    for kind in ("weight_ih", "weight_hh"):
        if kind not in keys:
            raise ValueError(
                f"{source}: missing {shown(key_for(kind))} "
                f"(found {describe_keys(sorted(keys.values())) or 'nothing else for this layer'})"
            )
    if ("bias_ih" in keys) != ("bias_hh" in keys):
        have, miss = ("bias_ih", "bias_hh") if "bias_ih" in keys else ("bias_hh", "bias_ih")
        raise ValueError(f"{source}: {shown(keys[have])} is present but {shown(key_for(miss))} is missing")
    w = {kind: float_weight(t[key], key, source) for kind, key in keys.items()}
    for kind in ("weight_ih", "weight_hh", "weight_hr"):
        if kind in w and w[kind].ndim != 2:
            raise ValueError(f"{source}: tensor {shown(keys[kind])} has shape {w[kind].shape}; expected a 2-d matrix")
    if need_hr and "weight_hr" not in w:
        raise ValueError(f"{source}: {shown(key_for('weight_hr'))} is missing while other layers have a projection")
    try:
        return weight_cls(
            w["weight_ih"], w["weight_hh"], w.get("bias_ih"), w.get("bias_hh"), w.get("weight_hr"), name=name
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {exc} (keys {describe_keys(sorted(keys.values()))})") from None


def _recurrent_kind(t, prefix, first_keys, source):
    if "weight_hr" in first_keys:
        return _BY_GATES[4]
    gates = _gates(t, first_keys["weight_hh"], source) if "weight_hh" in first_keys else None
    if gates is None:
        shape = np.shape(t[first_keys["weight_hh"]]) if "weight_hh" in first_keys else None
        raise ValueError(
            f"{source}: recurrent module '{prefix}' has weight_hh of shape {shape}, which is not "
            "4H x H (LSTM), 3H x H (GRU) or H x H (RNN)"
        )
    return _BY_GATES[gates]


def recurrent_layers(t, prefix, slots, source, nonlinearity=None):
    """The layers of one nn.LSTM / nn.GRU / nn.RNN from its keys; ``nonlinearity`` is nn.RNN's (None: from
    a state_dict, which does not record it: 'tanh', nn.RNN's default, with a LoadWarning)."""
    layer_ids = sorted({k for k, _ in slots})
    if layer_ids != list(range(len(layer_ids))):
        missing = sorted(set(range(max(layer_ids) + 1)) - set(layer_ids))
        raise ValueError(
            f"{source}: recurrent module '{prefix}' has weights for layers {layer_ids} but none for "
            f"layer(s) {missing}; refusing a partial stack"
        )
    reverse = {k for k, d in slots if d == 1}
    if reverse and reverse != set(layer_ids):
        raise ValueError(
            f"{source}: recurrent module '{prefix}' has _reverse weights for layers {sorted(reverse)} "
            "only; a bidirectional module has them for every layer"
        )
    has_bias = {("bias_ih" in keys or "bias_hh" in keys) for keys in slots.values()}
    if len(has_bias) > 1:
        raise ValueError(f"{source}: recurrent module '{prefix}' has biases in some layers but not others")
    layer_cls, weight_cls, torch_name = _recurrent_kind(t, prefix, slots[(0, 0)] if (0, 0) in slots else {}, source)
    need_hr = any("weight_hr" in keys for keys in slots.values())
    kw = {}
    if layer_cls is RNNLayer:
        if nonlinearity is None:
            warn(
                f"{source}: '{prefix}' looks like an nn.RNN, whose nonlinearity is not recorded in the weights; "
                "assuming 'tanh' (the default). Pass the live module to fastlstm.from_torch if it used 'relu'"
            )
            nonlinearity = "tanh"
        kw["activation"] = nonlinearity
    layers = []
    for k in layer_ids:
        dirs = []
        for d in (0, 1) if reverse else (0,):
            suffix = f"_l{k}" + ("_reverse" if d else "")
            dirs.append(
                _direction(
                    t,
                    slots.get((k, d), {}),
                    lambda kind, s=suffix: f"{prefix}{kind}{s}",
                    f"{prefix}l{k}" + ("_reverse" if d else ""),
                    source,
                    weight_cls,
                    need_hr,
                )
            )
        try:
            layers.append(layer_cls(tuple(dirs), **kw))
        except (TypeError, ValueError) as exc:  # e.g. forward and reverse weights of different shapes
            raise ValueError(f"{source}: {torch_name} '{prefix}' layer {k}: {exc}") from None
    return layers


def cell_layers(t, prefix, keys, source, nonlinearity=None):
    """nn.LSTMCell / GRUCell / RNNCell keys as a one-layer recurrent stack."""
    return recurrent_layers(t, prefix, {(0, 0): dict(keys)}, source, nonlinearity)


# --- plain modules ---------------------------------------------------------------------------


def _shape(t, keys, kind):
    return tuple(np.shape(t[keys[kind]])) if kind in keys else None


def describe_module(t, prefix, keys, recurrent_input=None):
    """What a plain module's tensors look like, in words, for refusals."""
    w = _shape(t, keys, "weight")
    name = describe_keys(sorted(keys.values()))
    if w is None:
        return f"{name}: {describe_keys(sorted(keys.values()))} without a weight"
    if len(w) == 3:
        return f"{name}: a 3-d weight {w}, an nn.Conv1d (out_channels, in_channels/groups, kernel_size)"
    if len(w) == 1 and "running_mean" in keys:
        return f"{name}: a 1-d weight {w} with running statistics, a norm (nn.BatchNorm1d)"
    if len(w) == 1:
        return f"{name}: a 1-d weight {w}" + (
            ", an nn.LayerNorm" if "bias" in keys else " (an nn.PReLU, or an nn.LayerNorm without bias)"
        )
    if len(w) == 2 and "bias" not in keys and recurrent_input is not None and w[1] == recurrent_input:
        return f"{name}: a (vocab, dim) table {w} feeding the recurrent input, an nn.Embedding"
    if len(w) == 2:
        return f"{name}: a 2-d weight {w}" + (" with bias" if "bias" in keys else "") + ", an nn.Linear"
    return f"{name}: a weight of shape {w}"


def plain_layer(t, prefix, keys, source, *, first=False, next_input=None):
    """One non-recurrent module (by its tensors) as a fastlstm layer, for ``layers=``.

    A 2-d weight without bias is an nn.Linear(bias=False) or, first in the chain, an
    nn.Embedding; the width the next layer takes tells them apart, or the load is refused.
    Norm epsilons are not in a state_dict: PyTorch's default 1e-5 is used, with a LoadWarning.
    """
    w = float_weight(t[keys["weight"]], keys["weight"], source) if "weight" in keys else None
    b = float_weight(t[keys["bias"]], keys["bias"], source, ndim=1) if "bias" in keys else None
    where = describe_module(t, prefix, keys)
    if w is not None and w.ndim == 3:
        name = prefix.rstrip(".")
        raise ValueError(
            f"{source}: {where}; its stride, padding, dilation and groups are not in a state_dict: name it with "
            f"them in layers=, e.g. '{name}(stride=1, padding=0)' ('{name}()' for nn.Conv1d's defaults), or load "
            "the live module with fastlstm.from_torch(module)"
        )
    if w is None or (w.ndim == 1 and "bias" not in keys and "running_mean" not in keys):
        why = "its kind is ambiguous from the tensors alone"
        raise ValueError(f"{source}: {where}; {why}: load the live module with fastlstm.from_torch(module)")
    if w.ndim == 1:
        warn(
            f"{source}: '{prefix.rstrip('.')}' is a norm whose eps is not recorded in a state_dict; assuming "
            "PyTorch's default 1e-5"
        )
        if "running_mean" in keys:
            if "running_var" not in keys:
                raise ValueError(f"{source}: {where} but '{prefix}running_var' is missing")
            mean = float_weight(t[keys["running_mean"]], keys["running_mean"], source, ndim=1)
            var = float_weight(t[keys["running_var"]], keys["running_var"], source, ndim=1)
            return BatchNorm(mean, var, w, b, eps=1e-5)
        return LayerNorm(w.shape[0], w, b, eps=1e-5)
    if w.ndim != 2:
        raise ValueError(f"{source}: {where}; not a module fastlstm runs")
    extra = sorted(set(keys) - {"weight", "bias"})
    if extra:
        raise ValueError(f"{source}: {where} has unexpected tensors {[keys[k] for k in extra]}")
    if b is None and first:
        as_linear, as_table = next_input == w.shape[0], next_input == w.shape[1]
        if as_table and not as_linear:
            return Embedding(w)
        if as_table == as_linear:
            raise ValueError(
                f"{source}: {where} comes first, so it is an nn.Embedding (vocab, dim) or an "
                f"nn.Linear(bias=False) (out, in), and the next layer's input ({next_input}) does not "
                "tell which; load the live module with fastlstm.from_torch(module)"
            )
    return Dense(w, b)


def conv_layer(t, prefix, keys, settings, source, where):
    """An nn.Conv1d named with its ``settings`` in ``layers=`` (``"conv(padding=1)"``)."""
    w = float_weight(t[keys["weight"]], keys["weight"], source) if "weight" in keys else None
    if w is None or w.ndim != 3 or set(keys) - {"weight", "bias"}:
        raise ValueError(
            f"{where}: {describe_module(t, prefix, keys)}; only an nn.Conv1d (a 3-d weight) takes its settings "
            "in layers="
        )
    b = float_weight(t[keys["bias"]], keys["bias"], source, ndim=1) if "bias" in keys else None
    return conv1d_from_call(w, b, settings, where)


# --- the whole state_dict ----------------------------------------------------------------------


def _tensor_dict(tensors, source, allow_nested):
    """Names -> arrays; nested per-module dicts are flattened to 'name.key' when ``allow_nested``."""
    t = OrderedDict()
    for key in tensors.keys():
        value = tensors[key]
        if hasattr(value, "items") and allow_nested:
            for k, v in _tensor_dict(value, source, True).items():
                t[f"{key}.{k}"] = v
            continue
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{source}: entry {shown(key)} is a {type(value).__name__}, not a tensor")
        t[key] = value
    return t


def _refuse_nested(tensors, source):
    nested = [k for k in tensors.keys() if hasattr(tensors[k], "items")]
    if not nested:
        return
    modules = [k for k in nested if tensors[k] and all(isinstance(v, np.ndarray) for v in tensors[k].values())]
    if len(modules) > 1:
        raise ValueError(
            f"{source}: entries {describe_keys(modules)} each hold a state_dict: this file holds "
            f"several modules. Load them together with layers=[...] naming their order in forward(), "
            f"e.g. layers={shown(modules)} (with activation names where forward() applies them)"
        )
    if modules:
        raise ValueError(
            f"{source}: entry {shown(modules[0])} holds a state_dict beside other entries "
            f"({describe_keys(k for k in tensors.keys() if k != modules[0])}), so this looks like a "
            f"training checkpoint; pick the model's entry: fastlstm.load(path, key={shown(modules[0])})"
        )
    raise ValueError(
        f"{source}: entries {describe_keys(nested)} are nested mappings without tensors; this is not a state_dict"
    )


def _leftover_error(t, used, source, rnn, cell, plain, recurrent_input, what):
    leftovers = [k for k in t if k not in used]
    if not leftovers:
        return
    words = [
        describe_module(t, p, keys, recurrent_input)
        for p, keys in plain.items()
        if any(k in leftovers for k in keys.values())
    ]
    grouped = {k for p, keys in plain.items() for k in keys.values()}
    words += [f"{describe_keys([k])}" for k in leftovers if k not in grouped]
    prefixes = [p.rstrip(".") for p in list(rnn) + list(cell) + list(plain) if p]
    raise ValueError(
        f"{source}: {len(leftovers)} tensor(s) not part of {what}: {'; '.join(words)}. A state_dict "
        f"does not say in which order forward() runs its modules: pass layers=[...] naming the "
        f"prefixes {prefixes} in that order, with activation names where forward() applies them "
        "(for example layers=['embedding', 'lstm', 'fc1', 'relu', 'fc2'])"
    )


def spec_from_state_dict(tensors, source, *, head_activation=None, return_sequences=None, layers=None):
    """Build a :class:`Spec` from a mapping of PyTorch-style names to arrays.

    Without ``layers``: one recurrent module and at most one Linear head.  ``head_activation``
    defaults to ``"linear"`` (with a :class:`LoadWarning`: a state_dict cannot record what
    ``forward`` does after the Linear); ``return_sequences=False`` keeps the last step only.
    With ``layers``: the modules (by key prefix) and activations in ``forward()``'s order.
    """
    if not hasattr(tensors, "keys") or not hasattr(tensors, "__getitem__"):
        raise TypeError(f"{source}: expected a mapping of names to tensors, got {type(tensors).__name__}")
    if layers is None:
        _refuse_nested(tensors, source)
    t = _tensor_dict(tensors, source, allow_nested=layers is not None)
    rnn, cell, plain = _group(t.keys())
    if layers is not None:
        chain = _ordered_chain(t, rnn, cell, plain, list(layers), source)
    else:
        chain = _inferred_chain(t, rnn, cell, plain, source, head_activation)
    if return_sequences is not None and not return_sequences:
        last = max(k for k, layer in enumerate(chain) if isinstance(layer, (LSTMLayer, GRULayer, RNNLayer)))
        if any(isinstance(layer, LastStep) for layer in chain):
            raise ValueError(f"return_sequences: {source}: layers already has '{LAST_STEP}'")
        chain.insert(last + 1, LastStep())
    return make_spec(chain, source)


def _inferred_chain(t, rnn, cell, plain, source, head_activation):
    recurrent = [("rnn", p) for p in rnn] + [("cell", p) for p in cell]
    if not recurrent:
        raise ValueError(
            f"{source}: no recurrent weights found (expected keys such as 'weight_ih_l0' or "
            f"'lstm.weight_ih_l0'); keys: {describe_keys(t.keys())}"
        )
    if len(recurrent) > 1:
        names = [p.rstrip(".") or "<top level>" for _, p in recurrent]
        raise ValueError(
            f"{source}: found recurrent weights under several prefixes ({', '.join(map(repr, names))}). "
            "The weights do not say in which order forward() runs separate modules: pass layers=[...] "
            f"naming them in that order, e.g. layers={shown(names)} (plus any Linear and activations)"
        )
    kind, prefix = recurrent[0]
    if kind == "rnn":
        chain = recurrent_layers(t, prefix, rnn[prefix], source)
        used = {key for slot in rnn[prefix].values() for key in slot.values()}
    else:
        chain = cell_layers(t, prefix, cell[prefix], source)
        used = set(cell[prefix].values())
    out = chain[-1].output_size
    heads = [
        (p, keys)
        for p, keys in plain.items()
        if set(keys) <= {"weight", "bias"}
        and "weight" in keys
        and np.ndim(t[keys["weight"]]) == 2
        and np.shape(t[keys["weight"]])[1] == out
    ]
    what = "a recurrent stack [+ one Linear head] model"
    if len(heads) == 1 and len(plain) == 1:
        hp, keys = heads[0]
        w = float_weight(t[keys["weight"]], keys["weight"], source, ndim=2)
        b = float_weight(t[keys["bias"]], keys["bias"], source, ndim=1) if "bias" in keys else None
        if b is not None and b.shape != (w.shape[0],):
            raise ValueError(f"{source}: tensor {shown(keys['bias'])} has shape {b.shape}; expected ({w.shape[0]},)")
        if head_activation is None:
            warn(
                f"{source}: using {describe_keys(keys.values())} as a dense head applied to every step. "
                "Its activation is not recorded in weights; assuming 'linear' (nn.Linear's raw output). "
                "Pass head_activation='sigmoid'/'tanh'/'relu'/'softmax'/'linear' to say so explicitly"
            )
            head_activation = "linear"
        chain.append(Dense(w, b, head_activation))
        used |= set(keys.values())
    elif head_activation is not None and not plain:
        raise ValueError(f"head_activation: {source} has no dense head (no Linear weights) to apply it to")
    _leftover_error(t, used, source, rnn, cell, plain, chain[0].input_size, what)
    return chain


def _ordered_chain(t, rnn, cell, plain, order, source):
    """The chain ``layers=[...]`` names: key prefixes, activation names, ``"last_step"`` and pools, in
    forward()'s order."""
    chain, used, pending = [], set(), None
    for k, name in enumerate(order):
        act = ACTIVATION_ALIASES.get(name, name)
        if name == LAST_STEP:
            chain.append(LastStep())
            continue
        is_prefix = any(p.rstrip(".") == name for p in (*rnn, *cell, *plain))
        if act in ACTIVATIONS and act != "prelu" and not is_prefix:
            chain.append(Activation(act))
            continue
        call = None if is_prefix else prefix_call(name, lambda x: _holds(x, rnn, cell, plain), f"layers[{k}]")
        pool = None if is_prefix or call else parse_pool(name, f"layers[{k}]")
        if pool is not None:
            chain.append(pool)
            continue
        if call is not None:
            name, settings = call
        prefix = name + "."
        groups = [(g, p) for g in (rnn, cell, plain) for p in g if p == prefix or p.startswith(prefix)]
        if not groups:
            prefixes = sorted({p.rstrip(".") for g in (rnn, cell, plain) for p in g if p})
            raise ValueError(
                f"layers[{k}]: {shown(name)} is neither a key prefix of {source} ({prefixes}) nor an "
                f"activation name ({', '.join(a for a in ACTIVATIONS if a != 'prelu')}) nor "
                f"'{LAST_STEP}' nor a pool ({POOL_FORMS}) nor a Conv1d's prefix with its settings ({CONV_FORM})"
            )
        if len(groups) > 1:
            inner = sorted(p.rstrip(".") for _, p in groups)
            raise ValueError(f"layers[{k}]: {shown(name)} holds several modules ({inner}); name each of them in order")
        group, p = groups[0]
        keys = group[p]
        if call is not None:
            where = f"layers[{k}] ({shown(order[k])})"
            if group is not plain:
                raise ValueError(f"{where}: '{p.rstrip('.')}' is a recurrent module; only an nn.Conv1d takes settings")
            chain.append(conv_layer(t, p, keys, settings, source, where))
            used |= set(keys.values())
        elif group is rnn:
            chain.extend(recurrent_layers(t, p, keys, source))
            used |= {key for slot in keys.values() for key in slot.values()}
        elif group is cell:
            chain.extend(cell_layers(t, p, keys, source))
            used |= set(keys.values())
        else:
            used |= {v for kind, v in keys.items()}
            if pending is None and not chain and "bias" not in keys and np.ndim(t.get(keys.get("weight"))) == 2:
                pending = (p, keys)  # Linear(bias=False) or Embedding: the next layer's width decides
                chain.append(None)
                continue
            chain.append(plain_layer(t, p, keys, source))
        if pending is not None and chain[0] is None and len(chain) > 1:
            chain[0] = plain_layer(t, *pending, source, first=True, next_input=_input_width(chain[1:]))
    if chain and chain[0] is None:
        chain[0] = plain_layer(t, *pending, source, first=True, next_input=None)
    leftovers = [key for key in t if key not in used and not key.endswith("num_batches_tracked")]
    if leftovers:
        raise ValueError(
            f"{source}: layers={shown(order)} leaves {len(leftovers)} tensor(s) unused: "
            f"{describe_keys(leftovers)}; every tensor must be part of the model"
        )
    return chain


def _holds(name, *groups):
    """Whether ``name`` is the key prefix of a module (or of modules) in ``groups``."""
    return any(p == name + "." or p.startswith(name + ".") for g in groups for p in g)


def _input_width(layers):
    for layer in layers:
        if layer is not None and hasattr(layer, "input_size"):
            return layer.input_size
    return None
