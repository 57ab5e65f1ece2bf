"""Model loaders: files and framework objects in, :class:`fastlstm.Model` out.

Public entry points (re-exported by :mod:`fastlstm`):

* :func:`load` - any supported file, format detected from its content;
* :func:`from_torch` - a live module (``forward()`` traced with ``torch.fx``), or a state_dict;
* :func:`from_keras` - a Keras Sequential/Functional model object, or a ``.keras``/``.h5`` path;
* :func:`save_model` - fastlstm's own format (what ``Model.save`` writes).

File loading needs neither torch nor Keras (h5py only for Keras files) and never runs
code from the file.  Each reader produces a :class:`~._common.Spec` (a chain of the layer
classes of :mod:`fastlstm.layers`); only :func:`~._common.build_model` touches the engine.
docs/loading.md lists what each source supports.
"""

from __future__ import annotations

import io
import os

from ._common import LoadWarning, Spec, build_model, open_zip
from .keras_files import is_hdf5, read_keras_h5, read_keras_zip
from .native import is_native, save_model, spec_from_native
from .safetensors_io import looks_like_safetensors, read_safetensors
from .torch_state import OVERRIDES, check_overrides, spec_from_state_dict
from .torch_zip import LEGACY_MAGIC, read_torch_zip, sniff as sniff_torch_zip

__all__ = ["load", "from_torch", "from_keras", "save_model", "read_spec", "LoadWarning", "Spec"]

#: Overrides a PyTorch file accepts: the torch ones, plus ``key`` to pick the state_dict
#: out of a training checkpoint (``{"model_state_dict": ..., "optimizer": ...}``).
_FILE_OVERRIDES = OVERRIDES + ("key",)

#: How a Git LFS pointer file starts: a clone without ``git lfs`` holds this text instead of the model.
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\n"


def _read_source(path):
    """Return ``(bytes, label)`` for a path or a binary file object."""
    if hasattr(path, "read"):
        data = path.read()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("path: the file object must be opened in binary mode")
        return bytes(data), getattr(path, "name", "<file object>")
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path: expected a file path or a binary file object, got {type(path).__name__}")
    with open(path, "rb") as f:
        return f.read(), os.fsdecode(os.fspath(path))


def _no_overrides(overrides, kind):
    if overrides:
        raise TypeError(f"{', '.join(sorted(overrides))}: only PyTorch state_dict files take overrides; a {kind} "
                        "records its own structure")


def _refuse_lfs_pointer(data, source):
    if data.startswith(LFS_POINTER):
        raise ValueError(f"{source}: this is a Git LFS pointer file ({len(data)} bytes), not the model itself; "
                         "run `git lfs pull` in the repository to download the real file")


def spec_from_bytes(data, source, **overrides):
    """Detect the format of ``data`` (a whole file) and read it into a Spec."""
    if not data:
        raise ValueError(f"{source}: the file is empty")
    _refuse_lfs_pointer(data, source)
    if data.startswith(LEGACY_MAGIC):
        raise ValueError(f"{source}: this is a pre-1.6 PyTorch file (legacy non-zip format), which can only be read "
                         "by unpickling arbitrary objects; re-save it with a current torch.save(model.state_dict())")
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return _spec_from_zip(data, source, overrides)
    if is_hdf5(data):
        _no_overrides(overrides, "Keras .h5 file")
        return read_keras_h5(data, source)
    if looks_like_safetensors(data[:9]):
        tensors, metadata, start = read_safetensors(data, source)
        if is_native(metadata):
            _no_overrides(overrides, "fastlstm file")
            return spec_from_native(tensors, metadata, data, start, source)
        check_overrides(overrides)
        return spec_from_state_dict(tensors, source, **overrides)
    if data[:1] == b"\x80":
        raise ValueError(f"{source}: this looks like a bare pickle; fastlstm never unpickles arbitrary files. Save "
                         "a state_dict with torch.save (zip format) or use safetensors")
    raise ValueError(f"{source}: unrecognised file format. fastlstm.load reads PyTorch state_dict files (.pt/.pth), "
                     "safetensors, Keras .keras and .h5 files, and fastlstm's own files")


def _spec_from_zip(data, source, overrides):
    names = open_zip(io.BytesIO(data), source).namelist()
    if "config.json" in names and any(n.startswith("model.weights") for n in names):
        _no_overrides(overrides, ".keras file")
        return read_keras_zip(data, source)
    kind = sniff_torch_zip(names)
    if kind is None:
        raise ValueError(f"{source}: a zip archive that is neither a PyTorch file nor a .keras file "
                         f"(members: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''})")
    check_overrides(overrides, _FILE_OVERRIDES)
    overrides = dict(overrides)
    key = overrides.pop("key", None)
    obj = read_torch_zip(data, source)  # refuses TorchScript and forbidden globals
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            keys = list(obj) if isinstance(obj, dict) else []
            raise ValueError(f"{source}: key={key!r} is not in the file (top-level keys: {keys[:20]})")
        obj = obj[key]
        source = f"{source}[{key!r}]"
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: the file holds a {type(obj).__name__}, not a state_dict")
    return spec_from_state_dict(obj, source, **overrides)


def read_spec(path, **overrides) -> Spec:
    """What :func:`load` reads, before building the engine model (useful for inspection and tests)."""
    data, source = _read_source(path)
    return spec_from_bytes(data, source, **overrides)


def load(path, **overrides):
    """Open a model file; the format is detected from the content, not the extension.

    Reads PyTorch ``torch.save(state_dict)`` files (.pt/.pth), safetensors with PyTorch
    names, Keras 3 ``.keras``, Keras 2 / legacy ``.h5`` and fastlstm's own files.  Needs
    neither torch nor Keras, and never executes code from the file: anything it cannot
    represent exactly raises ``ValueError`` naming the layer, key or option.

    ``overrides`` apply to PyTorch state_dict files only (a state_dict cannot record what
    ``forward()`` does): ``layers`` (the order of its modules and activations, by key prefix
    and activation name, e.g. ``["embedding", "lstm", "fc1", "relu", "fc2"]``; needed for
    anything but one recurrent module plus at most one Linear), ``head_activation`` (that
    Linear's activation; 'linear' by default, with a :class:`LoadWarning`),
    ``return_sequences`` (False keeps the last step only) and ``key`` (pick the state_dict out
    of a checkpoint dict).  docs/loading.md lists what each source supports.
    """
    return build_model(read_spec(path, **overrides))


def from_torch(obj, **overrides):
    """Build a model from a live PyTorch module or a state_dict mapping (tensors or arrays).

    ``nn.LSTM``/``nn.GRU``/``nn.RNN`` and their cells load directly.  Any other module (your
    own, or an ``nn.Sequential``) has its ``forward()`` traced with ``torch.fx``, so heads
    such as ``fc2(relu(fc1(out[:, -1])))``, norms, Conv1d front ends (with their
    ``permute`` glue), poolings and an Embedding load in the order forward() runs them;
    an op fastlstm cannot run is refused by name.  A state_dict takes the overrides of
    :func:`load` (``layers``, ``head_activation``, ``return_sequences``).  ``batch_first``
    is not a property of the model here: pass ``batch_first=True`` to ``predict`` instead.
    """
    from .torch_objects import spec_from_torch_object

    if isinstance(obj, (str, bytes, os.PathLike)):
        raise TypeError("obj: from_torch takes a module or a state_dict; use fastlstm.load(path) for files")
    return build_model(spec_from_torch_object(obj, **overrides))


def from_keras(obj):
    """Build a model from a Keras Sequential/Functional model object, or a ``.keras``/``.h5`` path.

    ``stateful=True`` layers load like any other: keep state across calls with
    ``model.stream()`` (or pass ``state=`` to ``predict``).
    """
    from .keras_objects import is_keras_model, spec_from_keras_object

    if isinstance(obj, (str, bytes, os.PathLike)) or hasattr(obj, "read"):
        data, source = _read_source(obj)
        _refuse_lfs_pointer(data, source)
        if is_hdf5(data):
            return build_model(read_keras_h5(data, source))
        if data[:4] == b"PK\x03\x04":
            return build_model(read_keras_zip(data, source))
        raise ValueError(f"{source}: not a Keras .keras or .h5 file; use fastlstm.load for other formats")
    if not is_keras_model(obj):
        raise TypeError(f"obj: expected a Keras model or a path to a .keras/.h5 file, got {type(obj).__name__}")
    return build_model(spec_from_keras_object(obj))
