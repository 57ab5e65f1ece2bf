"""fastlstm's own format: a safetensors file whose ``__metadata__`` carries the model config.

Version 2 (written now) describes the chain generically: ``layers`` is a list with, per
layer, ``{"type": <class name in fastlstm.layers>, <its scalar options>}``.  Every array
option is a tensor named ``layers.{k}.{field}`` (a recurrent layer's
``layers.{k}.{forward|backward}.{weight_ih|...}``, with the weight class in
``"directions"``; a Dense/Conv1D activation with options is ``{"name", "alpha"}`` plus the
tensor ``layers.{k}.activation.weight`` for PReLU slopes).  Tensors are stored as float32
exactly as the model holds them, so a load reproduces the weights bit for bit, and a layer
is rebuilt by calling its class, which validates it like any other.  A model of another
precision than fp32 records it as ``"precision"`` in the config (absent: fp32); a bf16 model
stores the matrices its gate products use in bf16 (a recurrent layer's ``weight_ih``, and its
``weight_hh`` except a reset-before GRU's, whose candidate part stays fp32) as BF16 tensors
holding the rounded values, so the file is about half the size and reloads to the same bf16
model bit for bit.  An int8 model stores float32 (its quantization is recomputed at load).  Version 1 (LSTM layers,
an optional head, ``return_sequences``) is still read.  Metadata (all strings, as safetensors
requires):

* ``format``: ``"fastlstm"`` (how :func:`fastlstm.load` recognises the file);
* ``fastlstm_config``: JSON ``{"version": 2, "layers": [...]}``, plus ``"precision"`` when not fp32;
* ``sha256``: digest of the config text and the data buffer.  safetensors has no checksum of its
  own; with this, any corruption of a native file is an error instead of a silently different model.

The files stay readable by any safetensors reader (``safetensors.numpy.load_file``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from typing import Dict

import numpy as np

from .. import _validate
from .. import layers as L
from ._common import STEP_OPTIONS, check_steps_option, describe_keys, float_weight, make_spec, parse_json
from ._limits import Budget, shown
from .safetensors_io import encode_safetensors

FORMAT_TAG = "fastlstm"
VERSION = 2
_FIELDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
_DIRS = ("forward", "backward")
_V1_LAYER_KEYS = {"directions", "activation", "recurrent_activation", "merge_mode", "go_backwards"}
#: The classes a file may name: the layer types and the recurrent weight containers, nothing else.
_LAYER_CLASSES = {cls.__name__: cls for cls in L.LAYER_TYPES}
_WEIGHT_CLASSES = {cls.__name__: cls for cls in (L.LSTMWeights, L.GRUWeights, L.RNNWeights)}


def _scalar(value):
    """A JSON-able option (tuples become lists) or None when ``value`` is not a plain option."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, tuple) and all(isinstance(v, (int, float)) for v in value):
        return list(value)
    raise TypeError(f"cannot store option {value!r}")


def _encode_layer(k, layer, tensors):
    cfg = {"type": type(layer).__name__}
    for f in dataclasses.fields(layer):
        value = getattr(layer, f.name)
        if f.name == "directions":
            cfg["directions"] = [type(d).__name__ for d in value]
            for d, weights in enumerate(value):
                for field in _FIELDS:
                    if getattr(weights, field) is not None:
                        tensors[f"layers.{k}.{_DIRS[d]}.{field}"] = getattr(weights, field)
        elif f.name == "activation" and hasattr(layer, "act"):  # Dense / Conv1D: keep alpha and PReLU slopes
            cfg["activation"] = {"name": layer.act.name, "alpha": layer.act.alpha}
            if layer.act.weight is not None:
                tensors[f"layers.{k}.activation.weight"] = layer.act.weight
        elif isinstance(value, np.ndarray):
            tensors[f"layers.{k}.{f.name}"] = value
        elif value is not None:
            cfg[f.name] = _scalar(value)
    return cfg


def _bf16_tensors(layers):
    """The tensors a bf16 model multiplies in bf16, so stores as BF16: every recurrent direction's
    weight_ih and weight_hh, but a reset-before GRU's weight_hh (its W_hn product stays fp32)."""
    names = set()
    for k, layer in enumerate(layers):
        if isinstance(layer, L.RECURRENT):
            fields = ("weight_ih",) if not getattr(layer, "reset_after", True) else ("weight_ih", "weight_hh")
            names.update(f"layers.{k}.{_DIRS[d]}.{f}" for d in range(len(layer.directions)) for f in fields)
    return names


def encode_model(layers, precision="fp32") -> bytes:
    tensors: Dict[str, np.ndarray] = {}
    config = {"version": VERSION, "layers": [_encode_layer(k, layer, tensors) for k, layer in enumerate(layers)]}
    if precision != "fp32":  # an fp32 file stays what it was before precisions existed
        config["precision"] = precision
    bf16 = _bf16_tensors(layers) if precision == "bf16" else ()
    text = json.dumps(config, sort_keys=True)
    body = encode_safetensors(tensors, bf16=bf16)  # to learn the data buffer, then again with metadata
    (n,) = struct.unpack("<Q", body[:8])
    meta = {"format": FORMAT_TAG, "fastlstm_config": text, "sha256": _digest(text, body[8 + n :])}
    return encode_safetensors(tensors, meta, bf16=bf16)


def _digest(config_text, buffer):
    """SHA-256 over the config text and the data buffer: any change to either is detected."""
    h = hashlib.sha256(config_text.encode("utf-8"))
    h.update(b"\0")
    h.update(buffer)
    return h.hexdigest()


def save_model(model, path):
    """Write ``model`` (its chain of layers and its precision) to ``path`` in fastlstm's format."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path: expected a file path, got {type(path).__name__}")
    try:
        layers, precision = tuple(model.layers), model.precision  # the whole chain
    except AttributeError as exc:
        raise TypeError(f"model: expected a fastlstm.Model, got {type(model).__name__} ({exc})") from None
    data = encode_model(layers, precision)
    tmp = os.fspath(path) + (b".tmp" if isinstance(path, bytes) else ".tmp")
    with open(tmp, "wb") as f:  # write then rename, so a crash never leaves a half-written model
        f.write(data)
    os.replace(tmp, path)


def is_native(metadata) -> bool:
    return metadata.get("format") == FORMAT_TAG


def _cfg(obj, key, types, where, source):
    if key not in obj:
        raise ValueError(f"{source}: fastlstm_config {where} lacks {shown(key)}")
    value = obj[key]
    if not isinstance(value, types) or (types is int and isinstance(value, bool)):
        raise ValueError(f"{source}: fastlstm_config {where}.{key} has the wrong type ({type(value).__name__})")
    return value


def spec_from_native(tensors, metadata, data, data_start, source):
    """Rebuild a Spec from a parsed native file; ``data`` is the whole file (for the checksum)."""
    digest, text = metadata.get("sha256"), metadata.get("fastlstm_config", "")
    if digest is None or _digest(text, data[data_start:]) != digest:
        raise ValueError(f"{source}: checksum mismatch: this fastlstm file is corrupt")
    extra_meta = set(metadata) - {"format", "fastlstm_config", "sha256"}
    if extra_meta:
        raise ValueError(
            f"{source}: unknown metadata {describe_keys(sorted(extra_meta))} (written by a newer fastlstm?)"
        )
    config = parse_json(text, "fastlstm_config", source, Budget(len(data), source))
    version = config.get("version") if isinstance(config, dict) else None
    if type(version) is not int or version not in (1, VERSION):
        raise ValueError(
            f"{source}: fastlstm format version {shown(version)} is not supported (this fastlstm reads "
            f"versions 1 and {VERSION}); upgrade fastlstm"
        )
    precision = _file_precision(config, version, source)
    used = set()

    def take(name, ndim=None):
        used.add(name)
        return float_weight(tensors[name], name, source, ndim=ndim)

    try:
        layers = _build_v1(config, tensors, take, source) if version == 1 else _build(config, tensors, take, source)
    except (TypeError, ValueError) as exc:  # from the layer classes: add the file's name
        msg = str(exc)
        raise ValueError(msg if msg.startswith(source) else f"{source}: {msg}") from None
    extra = [k for k in tensors if k not in used]
    if extra:
        raise ValueError(f"{source}: tensors not described by the config: {describe_keys(extra)}")
    return make_spec(layers, source, precision)


def _file_precision(config, version, source):
    """The precision a version-2 config records (absent: fp32); a value fastlstm does not know is refused."""
    if version == 1 or "precision" not in config:
        return "fp32"
    value = config["precision"]
    if not isinstance(value, str) or value not in _validate.PRECISIONS:
        raise ValueError(
            f"{source}: fastlstm_config precision={shown(value)} is not one of {', '.join(_validate.PRECISIONS)}"
        )
    return value


def _build(config, tensors, take, source):
    """Version 2: each layer rebuilt by its class from its options and tensors."""
    if set(config) - {"precision"} != {"version", "layers"}:
        raise ValueError(f"{source}: fastlstm_config must have exactly version and layers (and precision)")
    entries = _cfg(config, "layers", list, "", source)
    layers = []
    for k, lc in enumerate(entries):
        where = f"layers[{k}]"
        if not isinstance(lc, dict) or lc.get("type") not in _LAYER_CLASSES:
            raise ValueError(
                f"{source}: fastlstm_config {where} must be an object whose type is one of {sorted(_LAYER_CLASSES)}"
            )
        cls = _LAYER_CLASSES[lc["type"]]
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(lc) - fields - {"type"}
        if unknown:
            raise ValueError(f"{source}: fastlstm_config {where} has unknown options {sorted(unknown)}")
        kwargs = {}
        for name in fields:
            tensor = f"layers.{k}.{name}"
            if name == "directions":
                kwargs[name] = _directions(lc, k, tensors, take, where, source)
            elif name == "activation" and isinstance(lc.get(name), dict):
                kwargs[name] = _activation(lc[name], k, tensors, take, where, source)
            elif tensor in tensors:
                kwargs[name] = take(tensor)
            elif name in lc:
                kwargs[name] = _option(cls, name, lc[name], where, source)
        layers.append(cls(**kwargs))
    return layers


def _option(cls, name, value, where, source):
    """A scalar option from the config, of the type its field's default has (the classes check values,
    not always types: ``go_backwards=None`` must not pass as False)."""
    default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:  # ints, and options that also take a pair or a string (padding): the class checks those
        ok = not isinstance(value, (bool, dict)) and value is not None
    if not ok:
        raise ValueError(f"{source}: fastlstm_config {where}.{name}={shown(value)} has the wrong type")
    if name in STEP_OPTIONS:
        for v in value if isinstance(value, tuple) else (value,):
            check_steps_option(v, f"fastlstm_config {where}.{name}", source)
    return value


def _directions(lc, k, tensors, take, where, source):
    kinds = lc.get("directions")
    if not isinstance(kinds, list) or len(kinds) not in (1, 2) or any(n not in _WEIGHT_CLASSES for n in kinds):
        raise ValueError(
            f"{source}: fastlstm_config {where}.directions must list one or two of {sorted(_WEIGHT_CLASSES)}"
        )
    dirs = []
    for d, kind in enumerate(kinds):
        base = f"layers.{k}.{_DIRS[d]}."
        parts = {f: take(base + f, 1 if f.startswith("bias") else 2) for f in _FIELDS if base + f in tensors}
        if "weight_ih" not in parts or "weight_hh" not in parts:
            raise ValueError(f"{source}: missing {base}weight_ih / {base}weight_hh")
        dirs.append(_WEIGHT_CLASSES[kind](name=base.rstrip("."), **parts))
    return tuple(dirs)


def _activation(ac, k, tensors, take, where, source):
    if set(ac) - {"name", "alpha"} or not isinstance(ac.get("name"), str):
        raise ValueError(f"{source}: fastlstm_config {where}.activation must be {{'name': str, 'alpha': number}}")
    name = f"layers.{k}.activation.weight"
    return L.Activation(ac["name"], ac.get("alpha"), take(name, 1) if name in tensors else None)


def _build_v1(config, tensors, take, source):
    """Version 1: LSTM layers, an optional dense head, return_sequences; as the equivalent chain."""
    if set(config) != {"version", "return_sequences", "layers", "head"}:
        raise ValueError(f"{source}: fastlstm_config must have exactly version, return_sequences, layers, head")
    rs = _cfg(config, "return_sequences", bool, "", source)
    layers = []
    for k, lc in enumerate(_cfg(config, "layers", list, "", source)):
        where = f"layers[{k}]"
        if not isinstance(lc, dict) or set(lc) != _V1_LAYER_KEYS:
            raise ValueError(f"{source}: fastlstm_config {where} must have exactly {sorted(_V1_LAYER_KEYS)}")
        ndir = _cfg(lc, "directions", int, where, source)
        if ndir not in (1, 2):
            raise ValueError(f"{source}: fastlstm_config {where}.directions must be 1 or 2")
        lc = dict(lc, directions=["LSTMWeights"] * ndir)
        layers.append(
            L.LSTMLayer(
                _directions(lc, k, tensors, take, where, source),
                _cfg(lc, "activation", str, where, source),
                _cfg(lc, "recurrent_activation", str, where, source),
                _cfg(lc, "merge_mode", str, where, source),
                _cfg(lc, "go_backwards", bool, where, source),
            )
        )
    if not rs:
        layers.append(L.LastStep(final_state=True))  # version 1 kept Keras' merge(fwd[T-1], bwd[0])
    hc = config["head"]
    if hc is not None:
        if not isinstance(hc, dict) or set(hc) != {"activation"}:
            raise ValueError(f"{source}: fastlstm_config head must be null or {{'activation': ...}}")
        if "head.weight" not in tensors:
            raise ValueError(f"{source}: config has a head but tensor 'head.weight' is missing")
        bias = take("head.bias", 1) if "head.bias" in tensors else None
        layers.append(L.Dense(take("head.weight", 2), bias, _cfg(hc, "activation", str, "head", source)))
    return layers
