"""Keras 1 layer configs and weights, rewritten into their Keras 2 form before mapping.

Keras 1 named things differently (``output_dim`` for ``units``, ``inner_activation`` for
``recurrent_activation``, ``bias`` for ``use_bias``, ``Convolution1D(nb_filter,
filter_length, border_mode, subsample_length)``, ``Dropout(p)``, ``TimeDistributedDense``)
and, up to Keras 1.1, stored one array per gate: ``lstm_1_W_i, lstm_1_U_i, lstm_1_b_i,
lstm_1_W_c, ...`` (LSTM gates i, c, f, o as stored; the Keras 2 kernel stacks them i, f, c, o),
``gru_1_W_z ... gru_1_W_h`` (GRU gates z, r, h).  Keras 1.2 already stored one ``W``, ``U``,
``b`` per layer, in the Keras 2 column order.  The rewrite follows Keras 2's own loader
(``preprocess_weights_for_loading``), by weight *name*, so a file is never read by position.

A Keras 1 config is recognised by keys that only Keras 1 wrote (``output_dim`` on a
recurrent or Dense layer, ``inner_activation``, ``nb_filter``, ``pool_length``), or by its
``keras_version``.  Keras 1 had no ``reset_after`` (its GRU is ``reset_after=False``) and
its ``hard_sigmoid`` is ``clip(0.2x + 0.5, 0, 1)``.
"""

from __future__ import annotations

import re

import numpy as np

_KERAS1_KEYS = ("output_dim", "inner_activation", "nb_filter", "filter_length", "pool_length", "border_mode")
_RENAMES = {
    "output_dim": "units",
    "inner_activation": "recurrent_activation",
    "bias": "use_bias",
    "nb_filter": "filters",
    "filter_length": "kernel_size",
    "border_mode": "padding",
    "subsample_length": "strides",
    "pool_length": "pool_size",
    "stride": "strides",
    "p": "rate",
}
_CLASS_RENAMES = {"Convolution1D": "Conv1D", "AtrousConvolution1D": "Conv1D"}
#: Per-gate weight suffixes: the order Keras 2 stacks the gates in its kernel.
_GATES = {"LSTM": "ifco", "GRU": "zrh"}
_NAME = re.compile(r"_(?P<kind>W|U|b|gamma|beta|running_mean|running_std)(?:_(?P<gate>[a-z]))?(?::0)?$")
_KIND_NAMES = {
    "W": "kernel",
    "U": "recurrent_kernel",
    "b": "bias",
    "gamma": "gamma",
    "beta": "beta",
    "running_mean": "moving_mean",
    "running_std": "moving_variance",
}


def is_keras1_entry(entry) -> bool:
    cfg = entry.get("config")
    if not isinstance(cfg, dict):
        return False
    if entry.get("class_name") in ("TimeDistributedDense", "Convolution1D", "AtrousConvolution1D"):
        return True
    if entry.get("class_name") == "Embedding":
        return False  # every Keras names its width output_dim
    if any(k in cfg for k in _KERAS1_KEYS):
        return True
    inner = cfg.get("layer")
    return isinstance(inner, dict) and is_keras1_entry(inner)


def upgrade_entry(entry):
    """The Keras 2 form of a Keras 1 layer entry (a new dict; the input is left alone)."""
    cls = entry.get("class_name")
    cfg = dict(entry.get("config") or {})
    if cls == "TimeDistributedDense":
        inner = {"class_name": "Dense", "config": dict(cfg)}
        return {
            **entry,
            "class_name": "TimeDistributed",
            "config": {"name": cfg.get("name"), "layer": upgrade_entry(inner)},
        }
    if cls == "Embedding":
        pass  # input_dim/output_dim kept their names in Keras 2
    else:
        for old, new in _RENAMES.items():
            if old in cfg and new not in cfg:
                cfg[new] = cfg.pop(old)
    if cls in ("Convolution1D", "AtrousConvolution1D"):
        cfg["dilation_rate"] = cfg.pop("atrous_rate", 1)
        for key in ("kernel_size", "strides", "dilation_rate"):
            if isinstance(cfg.get(key), int) and not isinstance(cfg.get(key), bool):
                cfg[key] = [cfg[key]]
    if cls in ("MaxPooling1D", "AveragePooling1D"):
        if cfg.get("strides") is None:
            cfg["strides"] = cfg.get("pool_size")
    if cls == "GRU":
        cfg.setdefault("reset_after", False)  # Keras 1 GRU applies the reset gate before the product
    if cls == "BatchNormalization":
        cfg["keras1_mode"] = cfg.pop("mode", 0)
    for key in ("layer", "backward_layer"):
        if isinstance(cfg.get(key), dict):
            cfg[key] = upgrade_entry(cfg[key])
    return {**entry, "class_name": _CLASS_RENAMES.get(cls, cls), "config": cfg}


def upgrade_weights(cls, weights, fail):
    """Keras 2 weights ``[(name, array)]`` from a Keras 1 layer's weights (rewritten by name).

    ``cls`` is the Keras 2 class name; ``fail(why)`` raises naming the layer.  Weights whose
    names are not Keras 1 names are returned unchanged (a Keras 2 layer inside a wrapper).
    """
    parsed = []
    for name, arr in weights:
        m = _NAME.search(name.split("/")[-1])
        if m is None:
            return weights
        # Keep what precedes the suffix ('forward_lstm_1'), so a Bidirectional's halves stay checkable.
        base = name.split("/")[-1][: m.start()]
        parsed.append((m["kind"], m["gate"], name, arr, base))
    gates = _GATES.get(cls)
    kind_names = dict(_KIND_NAMES, W="embeddings") if cls == "Embedding" else _KIND_NAMES
    if gates and any(g is not None for _, g, _, _, _ in parsed):
        by = {(k, g): (n, a) for k, g, n, a, _ in parsed}
        if len(by) != len(parsed) or any(g is None or g not in gates for _, g, _, _, _ in parsed):
            fail(
                f"Keras 1 per-gate weights {[n for _, _, n, _, _ in parsed]} do not match the {cls} gates "
                f"{', '.join(gates)}"
            )
        base = parsed[0][4]
        out = []
        for kind in ("W", "U", "b"):
            present = [(kind, g) in by for g in gates]
            if not any(present):
                continue
            if not all(present):
                fail(f"Keras 1 weights for {kind} lack gate(s) {[g for g, p in zip(gates, present) if not p]}")
            arrays = [np.asarray(by[(kind, g)][1]) for g in gates]
            if len({a.ndim for a in arrays}) != 1 or len({a.shape[:-1] for a in arrays}) != 1:
                fail(f"Keras 1 per-gate {kind} arrays have mismatched shapes {[a.shape for a in arrays]}")
            out.append((f"{base}/{kind_names[kind]}", np.concatenate(arrays, axis=-1)))
        return out
    return [(f"{base}/{kind_names[k]}", a) for k, _, _, a, base in parsed]


def keras1_conv_kernel(kernel, kernel_size, filters, fail):
    """A Keras 1 Convolution1D kernel, ``(k, 1, in, filters)`` or the Keras 1.1 ``(filters, in, k, 1)``,
    as Keras 2's ``(k, in, filters)``."""
    kernel = np.asarray(kernel)
    if kernel.ndim != 4:
        fail(f"Keras 1 Convolution1D kernel has shape {kernel.shape}; expected 4-d")
    if kernel.shape[:2] != (kernel_size, 1) or kernel.shape[3] != filters:
        if kernel.shape[0] != filters or kernel.shape[2:] != (kernel_size, 1):
            fail(
                f"Keras 1 Convolution1D kernel has shape {kernel.shape}; expected ({kernel_size}, 1, in, "
                f"{filters}) or ({filters}, in, {kernel_size}, 1)"
            )
        kernel = np.transpose(kernel, (2, 3, 1, 0))
    return kernel[:, 0, :, :]
