"""A corpus of hostile and damaged model files, built byte by byte (no torch or Keras needed).

Every kind fastlstm.load reads is covered: PyTorch zip/pickle, zip containers, safetensors,
fastlstm's own files, legacy Keras .h5 and Keras 3 .keras.  Each attack class of issue 9 has
at least one file (memory bombs that are a few hundred bytes, quadratic-time zips, type
errors that used to escape as non-ValueErrors, oversized error messages), and
:func:`fuzzed` adds seeded random mutations of valid files.

:func:`corpus` returns ``Case`` records; ``must_fail`` says whether the file has to be refused
(a mutated valid file may still be a valid model), and ``match`` is a regular expression the
refusal's message must contain, where the *reason* matters (a memory bomb must be stopped by
its cap, not by luck).  ``python hostile_corpus.py DIR`` writes the files out for inspection.
"""

from __future__ import annotations

import io
import json
import pickle
import random
import struct
import sys
import warnings
import zipfile
from dataclasses import dataclass
from typing import Optional

import numpy as np

I, H, O = 3, 4, 2
_RNG = np.random.default_rng(1)
#: A valid 1-layer LSTM (input 3, hidden 4) with a Linear head (2 outputs), PyTorch names.
WEIGHTS = {
    "lstm.weight_ih_l0": _RNG.uniform(-0.5, 0.5, (4 * H, I)).astype(np.float32),
    "lstm.weight_hh_l0": _RNG.uniform(-0.5, 0.5, (4 * H, H)).astype(np.float32),
    "lstm.bias_ih_l0": _RNG.uniform(-0.5, 0.5, 4 * H).astype(np.float32),
    "lstm.bias_hh_l0": _RNG.uniform(-0.5, 0.5, 4 * H).astype(np.float32),
    "fc.weight": _RNG.uniform(-0.5, 0.5, (O, H)).astype(np.float32),
    "fc.bias": _RNG.uniform(-0.5, 0.5, O).astype(np.float32),
}


@dataclass
class Case:
    name: str
    data: bytes
    must_fail: bool = True
    match: Optional[str] = None


# --- PyTorch: a pickle writer for torch.save's state_dict layout ---------------------------


def _int(n):
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if -(1 << 31) <= n < (1 << 31):
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _str(s):
    raw = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def _tuple(items):
    return b"(" + b"".join(items) + b"t"


def tensor_pickle(tensor):
    """The pickle of ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``.

    ``tensor`` is ``(storage key, storage class, numel, offset, size, stride)``."""
    key, stype, numel, offset, size, stride = tensor
    pid = _tuple([_str("storage"), b"ctorch\n" + stype.encode() + b"\n", _str(key), _str("cpu"), _int(numel)])
    args = _tuple(
        [
            pid + b"Q",
            _int(offset),
            _tuple(map(_int, size)),
            _tuple(map(_int, stride)),
            b"\x89",
            b"ccollections\nOrderedDict\n)R",
        ]
    )
    return b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R"


def state_dict_pickle(entries, extra=b""):
    """A protocol-2 pickle of an OrderedDict ``name -> tensor`` (``tensor_pickle`` items or raw bytes)."""
    body = b"".join(_str(k) + (v if isinstance(v, bytes) else tensor_pickle(v)) for k, v in entries.items())
    return b"\x80\x02ccollections\nOrderedDict\n)R" + extra + b"(" + body + b"u."


def torch_zip(pkl, storages, compress=zipfile.ZIP_STORED):
    """A torch.save-style zip: archive/data.pkl, archive/data/<key>, archive/byteorder, archive/version."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        for key, raw in storages.items():
            z.writestr(f"archive/data/{key}", raw)
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def valid_pt(weights=WEIGHTS):
    entries, storages = {}, {}
    for k, (name, arr) in enumerate(weights.items()):
        strides = tuple(s // arr.itemsize for s in arr.strides)
        entries[name] = (str(k), "FloatStorage", arr.size, 0, arr.shape, strides)
        storages[str(k)] = arr.tobytes()
    return torch_zip(state_dict_pickle(entries), storages)


def _pt_with(pkl_entries, storages=None, extra=b""):
    storages = {"0": np.zeros(64, np.float32).tobytes()} if storages is None else storages
    return torch_zip(state_dict_pickle(pkl_entries, extra), storages)


def _pickle_cases():
    ok = ("0", "FloatStorage", 64, 0, (16, 4), (4, 1))
    yield Case(
        "memo_bomb.pt", _pt_with({"weight_ih_l0": ok}, extra=b"r" + struct.pack("<I", 1 << 28)), match="memo index"
    )
    yield Case(
        "binbytes8_bomb.pt",
        _pt_with({"a": b"\x8e" + struct.pack("<Q", 1 << 33) + b"xx"}),
        match="corrupt pickle .* runs past the end",
    )
    yield Case(
        "stride0_view.pt",
        _pt_with({"weight_ih_l0": ("0", "FloatStorage", 64, 0, (1 << 20, 1 << 20), (0, 0))}),
        match="memory budget",
    )
    many = {f"t{k}.weight": ("0", "FloatStorage", 64, 0, (1 << 12, 1 << 10), (0, 0)) for k in range(40)}
    yield Case("stride0_many.pt", _pt_with(many), match="memory budget")
    yield Case(
        "huge_stride.pt",
        _pt_with({"weight_ih_l0": ("0", "FloatStorage", 64, 0, (1, 16), (1 << 62, 1))}),
        match="bad size",
    )
    yield Case("huge_offset.pt", _pt_with({"weight_ih_l0": ("0", "FloatStorage", 64, 1 << 70, (16,), (1,))}))
    yield Case("huge_numel.pt", _pt_with({"weight_ih_l0": ("0", "FloatStorage", 1 << 62, 0, (16,), (1,))}))
    yield Case("many_dims.pt", _pt_with({"weight_ih_l0": ("0", "FloatStorage", 64, 0, (1,) * 80, (1,) * 80)}))
    yield Case("huge_key.pt", _pt_with({"k" * (1 << 20): ok}))
    yield Case(
        "build_on_global.pt",
        _pt_with({}, extra=b"0ctorch._utils\n_rebuild_tensor_v2\nN}" + _str("__name__") + _str("pwned") + b"s\x86b0"),
        match="BUILD",
    )
    yield Case(
        "forbidden_global.pt",
        _pt_with({"a": b"cos\nsystem\n(" + _str("true") + b"tR"}),
        match="forbidden global os.system",
    )
    inner = []  # a list of 1000 references to a list of 1000 references ... (1000**4 leaves)
    for _ in range(4):
        inner = [inner] * 1000
    yield Case(
        "reference_bomb.pt", _pt_with({"x": pickle.dumps(inner, protocol=2)[2:-1]}), match="too deep or too large"
    )
    yield Case("deep_pickle.pt", _pt_with({"x": b"(" * 50_000 + b"t" * 50_000}))
    yield Case("long_text_int.pt", _pt_with({"x": b"L" + b"9" * 200_000 + b"L\n"}))
    yield Case("truncated_pickle.pt", _pt_with({"weight_ih_l0": ok})[:-200])
    yield Case("legacy.pt", b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8" + b"\x00" * 64, match="pre-1.6")
    yield Case("bare.pkl", b"\x80\x04\x95" + b"\x00" * 40, match="bare pickle")


# --- zip containers -------------------------------------------------------------------------


def _zip(members, compress=zipfile.ZIP_STORED):
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", compress) as z:
        warnings.simplefilter("ignore")  # "Duplicate name": wanted here
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


def _patch_sizes(data, name, file_size):
    """Rewrite the uncompressed size a zip records for ``name`` (local header and directory)."""
    out = bytearray(data)
    raw = name.encode()
    for sig, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = 0
        while True:
            at = out.find(sig, at)
            if at < 0:
                break
            name_at = at + (30 if sig == b"PK\x03\x04" else 46)
            if out[name_at : name_at + len(raw)] == raw:
                struct.pack_into("<I", out, at + size_at, file_size)
            at += 4
    return bytes(out)


def _zip_cases():
    # 20,000 members, each in its own folder: sniffing was quadratic in them (167 s).
    yield Case("many_members.pt", _zip([(f"d{k}/x", b"") for k in range(20_000)] + [("archive/data.pkl", b"")]))
    yield Case("too_many_members.pt", _zip([(f"{k}", b"") for k in range(65_537)]), match="members")
    yield Case("torchscript.pt", _zip([("m/data.pkl", b""), ("m/code/x.py", b"")]), match="TorchScript")
    yield Case("duplicates.pt", _zip([("a/data.pkl", b"x"), ("a/data.pkl", b"y")]), match="duplicate")
    zeros = bytes(128 << 20)
    storages = {"0": zeros}
    pkl = state_dict_pickle({"weight_ih_l0": ("0", "FloatStorage", len(zeros) // 4, 0, (16, 3), (3, 1))})
    yield Case("deflate_bomb.pt", torch_zip(pkl, storages, zipfile.ZIP_DEFLATED), match="zip bomb|memory budget")
    lie = torch_zip(
        state_dict_pickle({"weight_ih_l0": ("0", "FloatStorage", 48, 0, (16, 3), (3, 1))}),
        {"0": bytes(192)},
        zipfile.ZIP_DEFLATED,
    )
    yield Case("size_lie_small.pt", _patch_sizes(lie, "archive/data/0", 100), match="corrupt|truncated|holds")
    yield Case(
        "size_lie_huge.pt",
        _patch_sizes(valid_pt(), "archive/data/0", 0xFFFFFFF0),
        match="memory budget|zip bomb|truncated|corrupt",
    )
    yield Case("unknown_zip.pt", _zip([("readme.txt", b"hi")]), match="neither")
    yield Case("not_a_zip.pt", b"PK\x03\x04" + bytes(100), match="zip")


# --- safetensors ----------------------------------------------------------------------------


def safetensors(tensors, metadata=None, header_extra=None):
    header, chunks, pos = {}, [], 0
    for name, arr in tensors.items():
        raw = np.ascontiguousarray(arr, "<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [pos, pos + len(raw)]}
        chunks.append(raw)
        pos += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode() if header_extra is None else header_extra
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def _st_raw(text):
    return struct.pack("<Q", len(text)) + text


def _safetensors_cases():
    yield Case("header_1e12.safetensors", struct.pack("<Q", 10**12) + b"{" + bytes(64), match="header claims")
    yield Case("deep_json.safetensors", _st_raw(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), match="JSON")
    # 4 MB of "[]" items: small text, ~100 MB of Python objects once parsed.
    yield Case("json_amplifier.safetensors", _st_raw(b'{"a": [' + b"[]," * 1_500_000 + b"[]]}"), match="memory budget")
    yield Case(
        "many_dims.safetensors",
        _st_raw(json.dumps({"a": {"dtype": "F32", "shape": [1] * 100, "data_offsets": [0, 4]}}).encode()) + bytes(4),
        match="shape",
    )
    yield Case(
        "huge_dim.safetensors",
        _st_raw(json.dumps({"a": {"dtype": "F32", "shape": [0, 1 << 60], "data_offsets": [0, 0]}}).encode()),
        match="shape",
    )
    yield Case("huge_name.safetensors", safetensors({"n" * (1 << 20): np.zeros(4, np.float32)}))
    yield Case("utf16.safetensors", _st_raw('{"a": 1}'.encode("utf-16-le")), match="JSON")
    yield Case(
        "bad_offsets.safetensors",
        _st_raw(json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 62]}}).encode()),
    )


# --- fastlstm's own files -------------------------------------------------------------------


def valid_native():
    import fastlstm

    model = fastlstm.from_torch(dict(WEIGHTS), head_activation="tanh")
    buf = io.BytesIO()
    from fastlstm.loaders.native import encode_model

    buf.write(encode_model(model.layers))
    return buf.getvalue()


def _resigned_native(config_text):
    """A native file whose config is ``config_text``, with a checksum that matches it."""
    from fastlstm.loaders.native import _digest
    from fastlstm.loaders.safetensors_io import encode_safetensors, read_safetensors

    tensors, meta, start = read_safetensors(valid_native(), "x")
    body = valid_native()[start:]
    meta = dict(meta, fastlstm_config=config_text, sha256=_digest(config_text, body))
    return encode_safetensors(tensors, meta)


def _native_cases():
    yield Case("deep_config.fastlstm", _resigned_native("[" * 100_000 + "]" * 100_000), match="JSON")
    yield Case(
        "version_99.fastlstm",
        _resigned_native(json.dumps({"version": 99, "return_sequences": True, "layers": [], "head": None})),
        match="version",
    )
    data = bytearray(valid_native())
    data[-3] ^= 1
    yield Case("bitflip.fastlstm", bytes(data), match="checksum")


# --- Keras: legacy .h5 and .keras -----------------------------------------------------------


def _keras_arrays():
    rng = np.random.default_rng(2)
    return [rng.uniform(-0.5, 0.5, s).astype(np.float32) for s in ((I, 4 * H), (H, 4 * H), (4 * H,), (H, O), (O,))]


def keras_config(dropout_name="dropout"):
    return {
        "class_name": "Sequential",
        "config": {
            "name": "sequential",
            "layers": [
                {"class_name": "InputLayer", "config": {"batch_shape": [None, None, I], "name": "input_layer"}},
                {
                    "class_name": "LSTM",
                    "config": {
                        "name": "lstm",
                        "units": H,
                        "return_sequences": True,
                        "activation": "tanh",
                        "recurrent_activation": "sigmoid",
                    },
                },
                {"class_name": "Dropout", "config": {"name": dropout_name, "rate": 0.1}},
                {"class_name": "Dense", "config": {"name": "dense", "units": O, "activation": "sigmoid"}},
            ],
        },
    }


def _h5(build):
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        build(f)
    return buf.getvalue()


def keras3_weights(extra=None, var_names=("0", "1", "2")):
    k, r, b, dk, db = _keras_arrays()

    def build(f):
        for n, a in zip(var_names, (k, r, b)):
            f[f"layers/lstm/cell/vars/{n}"] = a
        f["layers/dense/vars/0"], f["layers/dense/vars/1"] = dk, db
        if extra:
            extra(f)

    return _h5(build)


def dot_keras(config=None, weights=None, compress=zipfile.ZIP_STORED, config_bytes=None):
    text = config_bytes if config_bytes is not None else json.dumps(config or keras_config()).encode()
    return _zip(
        [
            ("metadata.json", json.dumps({"keras_version": "3.15.1"}).encode()),
            ("config.json", text),
            ("model.weights.h5", weights if weights is not None else keras3_weights()),
        ],
        compress,
    )


def legacy_h5(config=None, extra=None, config_text=None):
    k, r, b, dk, db = _keras_arrays()

    def build(f):
        f.attrs["keras_version"] = b"2.15.0"
        f.attrs["model_config"] = (
            config_text if config_text is not None else json.dumps(config or keras_config()).encode()
        )
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = np.array([b"lstm", b"dropout", b"dense"])
        g = mw.create_group("lstm")
        g.attrs["weight_names"] = np.array(
            [b"lstm/lstm_cell/kernel:0", b"lstm/lstm_cell/recurrent_kernel:0", b"lstm/lstm_cell/bias:0"]
        )
        g["lstm/lstm_cell/kernel:0"], g["lstm/lstm_cell/recurrent_kernel:0"], g["lstm/lstm_cell/bias:0"] = k, r, b
        mw.create_group("dropout").attrs["weight_names"] = np.array([], dtype="S1")
        g = mw.create_group("dense")
        g.attrs["weight_names"] = np.array([b"dense/kernel:0", b"dense/bias:0"])
        g["dense/kernel:0"], g["dense/bias:0"] = dk, db
        if extra:
            extra(f)

    return _h5(build)


def _fill_bomb(f):
    f.create_dataset("model_weights/dense/bomb", shape=(2_000_000_000,), dtype="f4")


def _chunk_bomb(f):
    f.create_dataset("model_weights/dense/chunks", shape=(10_000_000,), dtype="f4", chunks=(1,))


def _keras_cases():
    yield Case("fill_value_bomb.h5", legacy_h5(extra=_fill_bomb), match="memory budget")
    yield Case("chunk_bomb.h5", legacy_h5(extra=_chunk_bomb), match="chunks")
    yield Case("deep_config.h5", legacy_h5(config_text=b"[" * 100_000 + b"]" * 100_000), match="JSON")
    yield Case("dropout_name_list.h5", legacy_h5(keras_config(dropout_name=["x"])))
    yield Case("dropout_name_list.keras", dot_keras(keras_config(dropout_name=["x"])))
    yield Case("superscript_var.keras", dot_keras(weights=keras3_weights(var_names=("0", "1", "²"))))
    yield Case(
        "fill_value_bomb.keras",
        dot_keras(
            weights=keras3_weights(
                extra=lambda f: f.create_dataset("layers/dense/vars/7", shape=(2_000_000_000,), dtype="f4")
            )
        ),
        match="memory budget",
    )
    yield Case(
        "config_bomb.keras",
        dot_keras(config_bytes=b" " * (120 << 20), compress=zipfile.ZIP_DEFLATED),
        match="declares|zip bomb|memory budget",
    )
    yield Case("deep_config.keras", dot_keras(config_bytes=b"[" * 100_000 + b"]" * 100_000), match="JSON")


# --- fuzzed mutations of valid files --------------------------------------------------------


def valid_files():
    return {
        "valid.pt": valid_pt(),
        "valid.safetensors": safetensors(WEIGHTS),
        "valid.fastlstm": valid_native(),
        "valid.h5": legacy_h5(),
        "valid.keras": dot_keras(),
    }


def _mutate(data, rng):
    out = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0:  # flip a few bytes
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    elif kind == 1:  # cut short
        del out[rng.randrange(1, len(out)) :]
    elif kind == 2:  # write a large integer over 8 bytes (sizes, counts, offsets)
        at = rng.randrange(len(out) - 8)
        out[at : at + 8] = struct.pack("<Q", rng.choice([1 << 31, 1 << 40, (1 << 64) - 1, 0x7FFFFFFF, 1 << 28]))
    else:  # insert or delete a run
        at = rng.randrange(len(out))
        if rng.random() < 0.5:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        else:
            del out[at : at + rng.randint(1, 16)]
    return bytes(out)


def fuzzed(counts=None, seed=9):
    """Seeded mutations of each valid file: ``counts`` maps a valid file's name to how many."""
    counts = counts or {
        "valid.pt": 150,
        "valid.safetensors": 150,
        "valid.fastlstm": 150,
        "valid.h5": 10,
        "valid.keras": 10,
    }
    rng = random.Random(seed)
    for name, data in valid_files().items():
        for k in range(counts.get(name, 0)):
            yield Case(f"fuzz{k}_{name}", _mutate(data, rng), must_fail=False)


def hostile():
    """Every hand-made attack file (all must be refused)."""
    for gen in (_pickle_cases, _zip_cases, _safetensors_cases, _native_cases, _keras_cases):
        yield from gen()


def corpus(fuzz_counts=None):
    return list(hostile()) + list(fuzzed(fuzz_counts))


if __name__ == "__main__":
    import os

    out = sys.argv[1] if len(sys.argv) > 1 else "hostile_corpus"
    os.makedirs(out, exist_ok=True)
    for case in corpus():
        with open(os.path.join(out, case.name), "wb") as f:
            f.write(case.data)
