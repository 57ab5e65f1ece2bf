"""Fuzz: valid model files with a few bytes changed (or cut short) must give a clean ValueError, or a
model whose outputs equal the clean load's.  The one exception is a change inside raw weight bytes
of a format with no checksum (PyTorch-style safetensors, legacy .h5): that is a different but valid
model, and it must still load without any other kind of error.

.pt and .keras are zips with a CRC per member, and fastlstm's own files carry a SHA-256 of their
weights, so for those any change to the weights must be detected.
"""

import functools
import io
import json
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastlstm.loaders as loaders
from fastlstm.loaders import read_spec
from fastlstm.loaders._common import build_model
from loader_helpers import import_keras

pytestmark = pytest.mark.usefixtures("torch_one_thread")

X = np.random.default_rng(0).standard_normal((16, 2, 3)).astype(np.float32)


def _module():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 4, num_layers=2)
    head = torch.nn.Linear(4, 2)
    sd = {"lstm." + k: v for k, v in lstm.state_dict().items()}
    sd.update({"fc." + k: v for k, v in head.state_dict().items()})
    return sd


def _module_chain():
    """A state_dict that loads only with layers=: GRU -> LayerNorm -> Linear -> ReLU -> Linear."""
    torch.manual_seed(0)
    parts = {
        "gru": torch.nn.GRU(3, 5, num_layers=2),
        "ln": torch.nn.LayerNorm(5),
        "fc1": torch.nn.Linear(5, 4),
        "fc2": torch.nn.Linear(4, 2),
    }
    return {f"{p}.{k}": v for p, m in parts.items() for k, v in m.state_dict().items()}


def _overrides(kind):
    if kind == "pt_layers":
        return {"layers": ["gru", "ln", "fc1", "relu", "fc2"]}
    return {"head_activation": "tanh"} if kind in ("pt", "safetensors") else {}


@functools.lru_cache(maxsize=None)
def _clean(kind):
    """(file bytes, clean outputs, byte ranges where a change may legitimately alter the weights)."""
    buf = io.BytesIO()
    free = []
    if kind == "pt":
        torch.save(_module(), buf)
    elif kind == "pt_layers":
        torch.save(_module_chain(), buf)
    elif kind == "safetensors":
        from fastlstm.loaders.safetensors_io import encode_safetensors

        buf.write(encode_safetensors({k: v.numpy() for k, v in _module().items()}))
        (n,) = struct.unpack("<Q", buf.getvalue()[:8])
        free = [(8 + n, len(buf.getvalue()))]  # the raw data buffer: no checksum in this format
    elif kind in ("native", "native_layers"):
        model = (
            loaders.from_keras(_keras_model(True))
            if kind == "native_layers"
            else loaders.from_torch(_module(), head_activation="tanh")
        )
        loaders.save_model(model, _tmp("fuzz.fastlstm"))
        buf.write(open(_tmp("fuzz.fastlstm"), "rb").read())
    else:
        m = _keras_model(kind.endswith("_layers"))
        kind = kind.replace("_layers", "")
        path = _tmp(f"fuzz.{kind}")
        m.save(path)
        buf.write(open(path, "rb").read())
        if kind == "h5":
            free = _h5_free_ranges(path, buf.getvalue())
    data = buf.getvalue()
    spec = read_spec(io.BytesIO(data), **_overrides(kind))
    return data, build_model(spec).predict(X), free


def _keras_model(new_layers):
    """The Keras fuzz target: LSTM -> Dropout -> Dense, or a chain of the layers around the recurrent core."""
    keras = import_keras()
    keras.utils.set_random_seed(0)
    L = keras.layers
    if not new_layers:
        return keras.Sequential(
            [keras.Input((None, 3)), L.LSTM(4, return_sequences=True), L.Dropout(0.1), L.Dense(2, activation="sigmoid")]
        )
    return keras.Sequential(
        [
            keras.Input((None, 3)),
            L.Conv1D(4, 3, padding="causal"),
            L.BatchNormalization(),
            L.MaxPooling1D(2),
            L.GRU(5, return_sequences=True),
            L.LayerNormalization(),
            L.Dense(4, activation="gelu"),
            L.PReLU(shared_axes=[1]),
            L.Dense(2),
        ]
    )


def _h5_free_ranges(path, data):
    """Byte ranges of the datasets and of the model_config text in a legacy .h5 file."""
    import h5py

    ranges = []
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None:
                ranges.append((obj.id.get_offset(), obj.id.get_offset() + obj.id.get_storage_size()))

        f.visititems(visit)
        cfg = f.attrs["model_config"]
        cfg = cfg.encode() if isinstance(cfg, str) else bytes(cfg)
    at = data.find(cfg)
    if at >= 0:
        # A config edit can be a valid, different model (e.g. another activation name).
        ranges.append((at, at + len(cfg)))
    json.loads(cfg)
    return ranges


def _only_weight_values_differ(data, mutated):
    """Whether libhdf5 reads the two .h5 files as the same attributes (config, names, versions) and
    the same datasets but for their values.  An edit of a dataset's datatype message (its byte order,
    or where the exponent and mantissa sit) changes the weights the file declares without touching
    their bytes; an unchecksummed format cannot tell that from a retrained model, so such a file is a
    valid, different model.  (Parsed in fastlstm's HDF5 child process: libhdf5 may crash on damaged files.)"""
    from fastlstm.loaders.hdf5_reader import extract

    attrs0, sets0 = extract(data)
    attrs1, sets1 = extract(mutated)
    if sets0.keys() != sets1.keys() or any(np.shape(sets0[k]) != np.shape(sets1[k]) for k in sets0):
        return False
    same_attrs = attrs0.keys() == attrs1.keys() and all(
        np.array_equal(np.asarray(attrs0[k], dtype=object), np.asarray(attrs1[k], dtype=object)) for k in attrs0
    )
    return same_attrs and any(not np.array_equal(sets0[k], sets1[k], equal_nan=True) for k in sets0)


_TMP = {}


def _tmp(name):
    """A scratch path shared by the cached fuzz targets (hypothesis tests cannot use tmp_path)."""
    import atexit
    import os
    import shutil
    import tempfile

    if "dir" not in _TMP:
        _TMP["dir"] = tempfile.mkdtemp(prefix="fastlstm_fuzz_")
        atexit.register(shutil.rmtree, _TMP["dir"], True)
    return os.path.join(_TMP["dir"], name)


def _mutate(data, edits):
    out = bytearray(data)
    for pos, value in edits:
        out[pos] = value
    return bytes(out)


def _check(kind, edits, cut):
    data, clean, free = _clean(kind)
    edits = [(min(int(frac * len(data)), len(data) - 1), value) for frac, value in edits]
    mutated = _mutate(data, edits)
    if cut is not None:
        mutated = mutated[: int(cut * len(data))]
    if mutated == data:
        return
    overrides = _overrides(kind)
    try:
        spec = read_spec(io.BytesIO(mutated), **overrides)
    except ValueError:
        return  # a clean, explained refusal
    y = build_model(spec).predict(X)
    if np.array_equal(y, clean):
        return  # the change hit bytes the model does not depend on
    assert cut is None, "a truncated file loaded as a different model"
    # A different model is legitimate only as the effect of edits inside unprotected weight bytes:
    # the same edits without the others must give exactly this model.
    inside = [(p, v) for p, v in edits if any(a <= p < b for a, b in free)]
    if not inside and kind.startswith("h5") and _only_weight_values_differ(data, mutated):
        return  # e.g. a dataset's datatype message (byte order, float layout): the weights the file declares
    assert inside, f"{kind}: edits {edits} outside any weight data changed the model without an error"
    y_inside = build_model(read_spec(io.BytesIO(_mutate(data, inside)), **overrides)).predict(X)
    assert np.array_equal(y, y_inside, equal_nan=True), f"{kind}: edits {edits} changed the model's structure"


EDITS = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=4)
CUT = st.none() | st.floats(0, 1, exclude_max=True)


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["pt", "safetensors", "native", "keras", "pt_layers", "native_layers", "keras_layers"]),
    edits=EDITS,
    cut=CUT,
)
def test_fuzz_in_process_formats(kind, edits, cut):
    _check(kind, edits, cut)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["h5", "h5_layers"]), edits=EDITS, cut=CUT)
def test_fuzz_legacy_h5(kind, edits, cut):
    """Each .h5 load parses HDF5 in a child process (libhdf5 can crash on damaged files), so fewer examples."""
    _check(kind, edits, cut)


def test_fuzz_targets_are_valid():
    for kind in (
        "pt",
        "safetensors",
        "native",
        "keras",
        "h5",
        "pt_layers",
        "native_layers",
        "keras_layers",
        "h5_layers",
    ):
        data, clean, _ = _clean(kind)
        halved = kind.endswith("_layers") and kind != "pt_layers"  # their MaxPooling1D(2)
        assert clean.shape == ((8, 2, 2) if halved else (16, 2, 2)) and np.all(np.isfinite(clean))


# --- structure fuzz: valid archives whose JSON config has one node replaced ------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(
        [
            "",
            "tanh",
            "relu",
            "softmax",
            "LSTM",
            "Dense",
            "InputLayer",
            "lstm",
            "concat",
            "mul",
            "hard_sigmoid",
            "__keras_tensor__",
            "GRU",
            "Conv1D",
            "Convolution1D",
            "GRULayer",
            "Embedding",
            "RepeatVector",
            "LastStep",
            "causal",
            "same",
            "valid",
            "theano",
            "gelu",
            "prelu",
        ]
    ),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "name",
                    "config",
                    "class_name",
                    "units",
                    "layer",
                    "args",
                    "type",
                    "padding",
                    "kernel_size",
                    "reset_after",
                    "output_dim",
                    "directions",
                    "n",
                ]
            ),
            inner,
            max_size=3,
        )
    ),
    max_leaves=6,
)


def _paths(node, prefix=()):
    yield prefix
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in children:
        yield from _paths(v, prefix + (k,))


def _replaced(config, path, value):
    import copy

    if not path:
        return value
    out = copy.deepcopy(config)
    node = out
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return out


def _runs(spec, x):
    """A structure that loads must also build and run (or refuse this input cleanly, e.g. too short for a
    window it grew)."""
    model = build_model(spec)
    if model.token_input:
        x = np.zeros(x.shape[:2], np.int64)
    try:
        y = model.predict(x)
    except ValueError as exc:
        assert "x" in str(exc)  # a refusal naming the argument
        return
    assert y.shape[1:] == (2, model.output_size) if model.return_sequences else y.shape == (2, model.output_size)


@functools.lru_cache(maxsize=None)
def _keras_parts(kind="keras"):
    """The config and already-extracted weights of a .keras file, so no HDF5 child runs per example."""
    import zipfile

    from fastlstm.loaders.hdf5_reader import parse

    data, _, _ = _clean(kind)
    z = zipfile.ZipFile(io.BytesIO(data))
    return json.loads(z.read("config.json")), parse(z.read("model.weights.h5"), ("optimizer/",))[1]


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(["keras", "keras_layers"]), pick=st.integers(0, 10**6), value=JSON_VALUES)
def test_fuzz_keras_config_nodes(kind, pick, value):
    """Any JSON node of config.json replaced by any JSON value: a ValueError or a working model."""
    from fastlstm.loaders.keras_files import keras3_spec

    config, datasets = _keras_parts(kind)
    paths = list(_paths(config))
    mutated = _replaced(config, paths[pick % len(paths)], value)
    try:
        spec = keras3_spec(datasets, mutated, "3.15.1", "fuzz.keras")
    except ValueError:
        return
    _runs(spec, X)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(["native", "native_layers"]), pick=st.integers(0, 10**6), value=JSON_VALUES)
def test_fuzz_native_config_nodes(kind, pick, value):
    """Same for fastlstm's own config, re-signed so that validation (not the checksum) must catch it."""
    from fastlstm.loaders.native import _digest, spec_from_native
    from fastlstm.loaders.safetensors_io import read_safetensors

    data, _, _ = _clean(kind)
    tensors, meta, start = read_safetensors(data, "fuzz")
    config = json.loads(meta["fastlstm_config"])
    paths = list(_paths(config))
    text = json.dumps(_replaced(config, paths[pick % len(paths)], value))
    meta = dict(meta, fastlstm_config=text, sha256=_digest(text, data[start:]))
    try:
        spec = spec_from_native(tensors, meta, data, start, "fuzz")
    except ValueError:
        return
    _runs(spec, X)


@functools.lru_cache(maxsize=None)
def _legacy_parts(kind):
    """A hand-built Keras 2 Functional .h5 (test_load_keras2_h5) or Keras 1 / 2.2 file with the layers around
    the core (test_load_keras_legacy_layers), parsed once."""
    from test_load_keras2_h5 import _functional_old_names
    from test_load_keras_legacy_layers import BUILDERS

    from fastlstm.loaders.hdf5_reader import parse

    (_functional_old_names if kind == "keras2_functional" else BUILDERS[kind])(_tmp(f"{kind}.h5"))
    attrs, datasets = parse(open(_tmp(f"{kind}.h5"), "rb").read(), ("optimizer_weights/",))
    return attrs, datasets


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["keras2_functional", "keras1_per_gate", "keras12_embedding_theano", "keras2_gru_variants"]),
    pick=st.integers(0, 10**6),
    value=JSON_VALUES,
)
def test_fuzz_legacy_config_nodes(kind, pick, value):
    """Same for Keras 1 and 2 model_configs (inbound_nodes, input_layers, Keras 1 option names, ...)."""
    from fastlstm.loaders.keras_files import legacy_spec

    attrs, datasets = _legacy_parts(kind)
    config = json.loads(attrs[""]["model_config"])
    paths = list(_paths(config))
    mutated = dict(
        attrs, **{"": dict(attrs[""], model_config=json.dumps(_replaced(config, paths[pick % len(paths)], value)))}
    )
    try:
        spec = legacy_spec(mutated, datasets, "fuzz.h5")
    except ValueError:
        return
    _runs(spec, X[:, :, :1].repeat(4, -1) if kind == "keras2_functional" else X)
