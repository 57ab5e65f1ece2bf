"""fastlstm's own file format: a safetensors file whose ``__metadata__`` carries the model config.

Tensors are named ``layers.{k}.{forward|backward}.{weight_ih|weight_hh|bias_ih|bias_hh|weight_hr}``
and ``head.{weight|bias}``, stored as float32 exactly as the model holds them, so a load
reproduces the weights bit for bit.  Metadata (all strings, as safetensors requires):

* ``format``: ``"fastlstm"`` (how :func:`fastlstm.load` recognises the file);
* ``fastlstm_config``: JSON ``{"version": 1, "return_sequences": bool, "layers": [...], "head": ...}``;
* ``sha256``: digest of the config text and the data buffer.  safetensors has no checksum of its
  own; with this, any corruption of a native file is an error instead of a silently different model.

The files stay readable by any safetensors reader (``safetensors.numpy.load_file``).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct

from ..layers import Dense, LSTMLayer, LSTMWeights
from ._common import describe_keys, float_weight, make_spec
from .safetensors_io import encode_safetensors, read_safetensors

FORMAT_TAG = "fastlstm"
VERSION = 1
_FIELDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
_DIRS = ("forward", "backward")
_LAYER_KEYS = {"directions", "activation", "recurrent_activation", "merge_mode", "go_backwards"}


def encode_model(layers, head, return_sequences) -> bytes:
    tensors, layer_cfg = {}, []
    for k, layer in enumerate(layers):
        for d, weights in enumerate(layer.directions):
            for field in _FIELDS:
                value = getattr(weights, field)
                if value is not None:
                    tensors[f"layers.{k}.{_DIRS[d]}.{field}"] = value
        layer_cfg.append({"directions": len(layer.directions), "activation": layer.activation,
                          "recurrent_activation": layer.recurrent_activation, "merge_mode": layer.merge_mode,
                          "go_backwards": bool(layer.go_backwards)})
    head_cfg = None
    if head is not None:
        tensors["head.weight"] = head.weight
        if head.bias is not None:
            tensors["head.bias"] = head.bias
        head_cfg = {"activation": head.activation}
    config = {"version": VERSION, "return_sequences": bool(return_sequences), "layers": layer_cfg, "head": head_cfg}
    text = json.dumps(config, sort_keys=True)
    body = encode_safetensors(tensors)  # to learn the data buffer, then again with metadata
    (n,) = struct.unpack("<Q", body[:8])
    meta = {"format": FORMAT_TAG, "fastlstm_config": text, "sha256": _digest(text, body[8 + n:])}
    return encode_safetensors(tensors, meta)


def _digest(config_text, buffer):
    """SHA-256 over the config text and the data buffer: any change to either is detected."""
    h = hashlib.sha256(config_text.encode("utf-8"))
    h.update(b"\0")
    h.update(buffer)
    return h.hexdigest()


def save_model(model, path):
    """Write ``model`` (its ``layers``, ``head`` and ``return_sequences``) to ``path`` in fastlstm's format."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path: expected a file path, got {type(path).__name__}")
    if not hasattr(model, "lstm_stack"):
        raise TypeError(f"model: expected a fastlstm.Model, got {type(model).__name__}")
    try:
        layers, head, rs = model.lstm_stack()
    except ValueError as exc:
        raise ValueError(f"model: fastlstm's file format (version {VERSION}) holds LSTM stacks with one "
                         f"Dense head; {exc}") from None
    data = encode_model(layers, head, rs)
    tmp = os.fspath(path) + (b".tmp" if isinstance(path, bytes) else ".tmp")
    with open(tmp, "wb") as f:  # write then rename, so a crash never leaves a half-written model
        f.write(data)
    os.replace(tmp, path)


def is_native(metadata) -> bool:
    return metadata.get("format") == FORMAT_TAG


def _cfg(obj, key, types, where, source):
    if key not in obj:
        raise ValueError(f"{source}: fastlstm_config {where} lacks {key!r}")
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
        raise ValueError(f"{source}: unknown metadata {describe_keys(sorted(extra_meta))} "
                         "(written by a newer fastlstm?)")
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{source}: fastlstm_config is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or set(config) != {"version", "return_sequences", "layers", "head"}:
        raise ValueError(f"{source}: fastlstm_config must have exactly version, return_sequences, layers, head")
    if type(config["version"]) is not int or config["version"] != VERSION:
        raise ValueError(f"{source}: fastlstm format version {config['version']!r} is not supported (this "
                         f"fastlstm reads version {VERSION}); upgrade fastlstm")
    rs = _cfg(config, "return_sequences", bool, "", source)
    try:
        layers, head = _build(config, tensors, source)
    except (TypeError, ValueError) as exc:  # from LSTMWeights/LSTMLayer/Dense: add the file's name
        msg = str(exc)
        raise ValueError(msg if msg.startswith(source) else f"{source}: {msg}") from None
    return make_spec(layers, head, rs, source)


def _build(config, tensors, source):
    used = set()

    def take(name, ndim):
        used.add(name)
        return float_weight(tensors[name], name, source, ndim=ndim)

    layers = []
    for k, lc in enumerate(_cfg(config, "layers", list, "", source)):
        where = f"layers[{k}]"
        if not isinstance(lc, dict) or set(lc) != _LAYER_KEYS:
            raise ValueError(f"{source}: fastlstm_config {where} must have exactly {sorted(_LAYER_KEYS)}")
        ndir = _cfg(lc, "directions", int, where, source)
        if ndir not in (1, 2):
            raise ValueError(f"{source}: fastlstm_config {where}.directions must be 1 or 2")
        dirs = []
        for d in range(ndir):
            base = f"layers.{k}.{_DIRS[d]}."
            parts = {f: take(base + f, 1 if f.startswith("bias") else 2) for f in _FIELDS if base + f in tensors}
            if "weight_ih" not in parts or "weight_hh" not in parts:
                raise ValueError(f"{source}: missing {base}weight_ih / {base}weight_hh")
            dirs.append(LSTMWeights(name=base.rstrip("."), **parts))
        layers.append(LSTMLayer(tuple(dirs), _cfg(lc, "activation", str, where, source),
                                _cfg(lc, "recurrent_activation", str, where, source),
                                _cfg(lc, "merge_mode", str, where, source),
                                _cfg(lc, "go_backwards", bool, where, source)))
    head = None
    hc = config["head"]
    if hc is not None:
        if not isinstance(hc, dict) or set(hc) != {"activation"}:
            raise ValueError(f"{source}: fastlstm_config head must be null or {{'activation': ...}}")
        if "head.weight" not in tensors:
            raise ValueError(f"{source}: config has a head but tensor 'head.weight' is missing")
        bias = take("head.bias", 1) if "head.bias" in tensors else None
        head = Dense(take("head.weight", 2), bias, _cfg(hc, "activation", str, "head", source))
    extra = [k for k in tensors if k not in used]
    if extra:
        raise ValueError(f"{source}: tensors not described by the config: {describe_keys(extra)}")
    return layers, head


def read_native_bytes(data, source):
    tensors, metadata, start = read_safetensors(data, source)
    if not is_native(metadata):
        raise ValueError(f"{source}: not a fastlstm file (no format='fastlstm' metadata)")
    return spec_from_native(tensors, metadata, data, start, source)
