"""Read Keras 3 ``.keras`` archives and Keras 2 / legacy ``.h5`` files (h5py, no Keras).

``.keras``: a zip with ``config.json``, ``metadata.json`` (``keras_version``) and
``model.weights.h5``.  Inside the HDF5 file the layer groups are *not* named after the
layers: each is ``snake_case(class_name)`` plus a per-class counter (``lstm``,
``lstm_1``, ...), assigned in config order, so we walk the config the same way.

Legacy ``.h5``: root attrs ``model_config`` and ``keras_version``; group
``model_weights/<layer name>`` lists its datasets in the attr ``weight_names`` in
Keras' variable order, which is the order we rely on (names differ between Keras
versions: ``:0`` suffixes, with or without a ``lstm_cell`` scope; Keras 1 wrote
``lstm_1_W_i``-style names, rewritten by :mod:`.keras1`).  The root ``backend`` attribute says
whether convolution kernels come from Theano (flipped).

The HDF5 parsing itself happens in :mod:`.hdf5_reader` (in a child process, because
libhdf5 can crash on damaged files); here we only map its plain output onto the config
and check that every weight dataset was used.  Optimizer state (``optimizer/``, ``optimizer_weights/``)
is training data, not part of the model, and is ignored.
"""

from __future__ import annotations

import re

from ._common import NonFloat, describe_keys, open_zip, parse_json, read_member
from ._limits import HDF5_CHILD_BASE_BYTES, Budget, hdf5_child_seconds, hdf5_max_chunks, shown
from .hdf5_reader import HDF5Error, extract
from .keras_config import chain_from_config, spec_from_chain

MAX_CONFIG_BYTES = 64 << 20
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def is_hdf5(data: bytes) -> bool:
    """HDF5's signature sits at offset 0 or, after a user block, at 512, 1024, 2048, ..."""
    offset = 0
    while offset + 8 <= len(data):
        if data[offset : offset + 8] == HDF5_MAGIC:
            return True
        offset = 512 if offset == 0 else offset * 2
    return False


#: A variable number, as .keras files name them ("0", "1", ...): ASCII digits only, since
#: ``str.isdigit`` accepts characters such as '²' that ``int`` then refuses.
_INDEX = re.compile(r"[0-9]{1,9}")


def _extract(data, source, skip, budget):
    """Parse HDF5 bytes in the child process, within the load's budget and the child's limits."""
    try:
        attrs, datasets = extract(
            data,
            skip,
            budget=budget.left,
            max_chunks=hdf5_max_chunks(budget.file_size),
            address_space=HDF5_CHILD_BASE_BYTES + 2 * budget.left,
            seconds=hdf5_child_seconds(budget.file_size),
        )
    except HDF5Error as exc:
        raise ValueError(f"{source}: {exc}") from None
    budget.charge(sum(getattr(v, "nbytes", 0) for v in datasets.values()), "the HDF5 datasets")
    return attrs, datasets


def _array(datasets, path):
    """A dataset's array; one that is not floating point stays a NonFloat (refused if a layer uses it)."""
    value = datasets[path]
    return NonFloat(*value) if isinstance(value, tuple) else value


def _attr_strings(attrs, key):
    """A string-list attribute; Keras splits long ones into key0, key1, ... chunks."""
    if key in attrs:
        chunks = [attrs[key]]
    else:
        chunks, i = [], 0
        while f"{key}{i}" in attrs:
            chunks.append(attrs[f"{key}{i}"])
            i += 1
    out = []
    for chunk in chunks:
        out.extend(chunk if isinstance(chunk, list) else [chunk])
    return [str(x) for x in out]


def _attr_text(attrs, key):
    value = attrs.get(key)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value if isinstance(value, str) else None


def _json(text, what, source, budget=None):
    return parse_json(text, what, source, Budget(len(text), source) if budget is None else budget)


def snake_case(name):
    """Keras 3's group name for a class: 'TimeDistributed' -> 'time_distributed'."""
    name = re.sub(r"\W+", "", name)
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


# Where each supported class keeps its variables inside its .keras layer group.
_KERAS3_VARS = {
    **{cls: ("cell/vars",) for cls in ("LSTM", "GRU", "SimpleRNN")},
    "Bidirectional": ("forward_layer/cell/vars", "backward_layer/cell/vars"),
    **{
        cls: ("vars",)
        for cls in (
            "Dense",
            "Conv1D",
            "BatchNormalization",
            "LayerNormalization",
            "Embedding",
            "PReLU",
            "Normalization",
        )
    },
    "TimeDistributed": ("layer/vars",),
}


def _check_unused(all_paths, used, ignore, source):
    unused = [p for p in all_paths if p not in used and not p.startswith(ignore)]
    if unused:
        raise ValueError(
            f"{source}: {len(unused)} weight tensor(s) are not used by any supported layer: "
            f"{describe_keys(unused)}; refusing to load part of the model"
        )


def read_keras_zip(data, source, budget=None):
    """Spec from the bytes of a ``.keras`` archive (within ``budget``; by default that of its size)."""
    budget = Budget(len(data), source) if budget is None else budget
    zf = open_zip(data, source)
    names = set(zf.namelist())
    if "config.json" not in names:
        raise ValueError(f"{source}: not a .keras archive (no config.json)")
    if "model.weights.h5" not in names:
        raise ValueError(
            f"{source}: .keras archive has no model.weights.h5 (sharded or missing weights are not supported)"
        )
    config = _json(read_member(zf, "config.json", source, budget, MAX_CONFIG_BYTES), "config.json", source, budget)
    version = None
    if "metadata.json" in names:
        meta = _json(
            read_member(zf, "metadata.json", source, budget, MAX_CONFIG_BYTES), "metadata.json", source, budget
        )
        version = meta.get("keras_version") if isinstance(meta, dict) else None
    _, datasets = _extract(
        read_member(zf, "model.weights.h5", source, budget), f"{source}: model.weights.h5", ("optimizer/",), budget
    )
    return keras3_spec(datasets, config, version, source)


def keras3_spec(datasets, config, version, source):
    chain, all_layers = chain_from_config(config, source)
    counters, group_of = {}, {}
    for entry in all_layers:
        base = snake_case(str(entry.get("class_name", "")))
        n = counters.get(base, 0)
        counters[base] = n + 1
        group_of[id(entry)] = f"layers/{base}" + (f"_{n}" if n else "")
    used = set()

    def get_weights(entry):
        out = []
        for sub in _KERAS3_VARS.get(entry.get("class_name"), ()):
            prefix = f"{group_of[id(entry)]}/{sub}/"
            found = sorted(
                (p for p in datasets if p.startswith(prefix) and _INDEX.fullmatch(p[len(prefix) :])),
                key=lambda p: int(p[len(prefix) :]),
            )
            for p in found:
                used.add(p)
                out.append((p[len(prefix) :], _array(datasets, p)))
        return out

    spec = spec_from_chain(chain, version, get_weights, source)
    _check_unused(datasets, used, ("optimizer/",), source)
    return spec


def read_keras_h5(data, source, budget=None):
    """Spec from the bytes of a legacy Keras ``.h5`` whole-model file (within ``budget``)."""
    budget = Budget(len(data), source) if budget is None else budget
    attrs, datasets = _extract(data, source, ("optimizer_weights/",), budget)
    return legacy_spec(attrs, datasets, source, budget)


def legacy_spec(attrs, datasets, source, budget=None):
    """The legacy-.h5 mapping, on the HDF5 reader's plain output (attrs by group path, datasets)."""
    root = attrs.get("", {})
    text = _attr_text(root, "model_config")
    if text is None:
        if any(p.startswith("layers/") for p in datasets) and "model_weights" not in attrs:
            raise ValueError(
                f"{source}: this is a Keras 3 weights-only file (.weights.h5); it has no architecture. "
                "Load it into your Keras model and use fastlstm.from_keras(model)"
            )
        raise ValueError(
            f"{source}: HDF5 file has no model_config (a weights-only file from save_weights?); "
            "fastlstm needs the architecture: save with model.save(...) or use from_keras(model)"
        )
    config = _json(text, "model_config", source, budget)
    wattrs = attrs.get("model_weights")
    if wattrs is None:
        raise ValueError(f"{source}: HDF5 file has a model_config but no model_weights group")
    version = _attr_text(root, "keras_version") or _attr_text(wattrs, "keras_version")
    chain, all_layers = chain_from_config(config, source)
    used = set()

    def get_weights(entry):
        name = entry["config"].get("name")
        group = attrs.get(f"model_weights/{name}") if isinstance(name, str) else None
        out = []
        for wn in _attr_strings(group or {}, "weight_names"):
            path = f"model_weights/{name}/{wn}"
            if path not in datasets:
                raise ValueError(
                    f"{source}: weight {shown(wn)} of layer {shown(name)} is listed but missing from the file"
                )
            used.add(path)
            out.append((wn, _array(datasets, path)))
        return out

    spec = spec_from_chain(chain, version, get_weights, source, _attr_text(root, "backend"))
    listed = set(_attr_strings(wattrs, "layer_names"))
    known = {
        e["config"].get("name")
        for e in all_layers
        if isinstance(e.get("config"), dict) and isinstance(e["config"].get("name"), str)
    }
    stray = sorted(n for n in listed - known if any(p.startswith(f"model_weights/{n}/") for p in datasets))
    if stray:
        raise ValueError(f"{source}: weights for layer(s) {stray} that the model config does not contain")
    _check_unused(datasets, used, ("optimizer_weights/",), source)
    return spec
