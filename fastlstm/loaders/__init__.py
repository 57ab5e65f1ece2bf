"""Model loaders: files and framework objects in, :class:`fastlstm.Model` out.

Public entry points (re-exported by :mod:`fastlstm`):

* :func:`load` - any supported file, format detected from its content;
* :func:`from_torch` - ``nn.LSTM``, ``nn.LSTMCell``, a module with an LSTM and a Linear head, or a state_dict;
* :func:`from_keras` - a Keras Sequential/Functional model object, or a ``.keras``/``.h5`` path;
* :func:`save_model` - fastlstm's own format (what ``Model.save`` writes).

File loading needs neither torch nor Keras (h5py only for Keras files) and never runs
code from the file.  Each reader produces a :class:`~._common.Spec`; only
:func:`~._common.build_model` touches the engine.
"""

from __future__ import annotations

import io
import os

from ._common import LoadWarning, Spec, build_model, open_zip
from .keras_files import is_hdf5, read_keras_h5, read_keras_zip
from .native import is_native, save_model, spec_from_native
from .onnx_files import folder_of, looks_like_onnx, spec_from_onnx
from .safetensors_io import looks_like_safetensors, read_safetensors
from .torch_state import OVERRIDES, check_overrides, spec_from_state_dict
from .torch_zip import LEGACY_MAGIC, read_torch_zip, sniff as sniff_torch_zip

__all__ = ["load", "from_torch", "from_keras", "save_model", "read_spec", "LoadWarning", "Spec"]

#: Overrides a PyTorch file accepts: the torch ones, plus ``key`` to pick the state_dict
#: out of a training checkpoint (``{"model_state_dict": ..., "optimizer": ...}``).
_FILE_OVERRIDES = OVERRIDES + ("key",)


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


def spec_from_bytes(data, source, folder=None, **overrides):
    """Detect the format of ``data`` (a whole file) and read it into a Spec.

    ``folder`` is the file's directory, where an ONNX model's external data may live."""
    if not data:
        raise ValueError(f"{source}: the file is empty")
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
    if looks_like_onnx(data):
        _no_overrides(overrides, "ONNX file")
        return spec_from_onnx(data, source, folder)
    if data[:1] == b"\x80":
        raise ValueError(f"{source}: this looks like a bare pickle; fastlstm never unpickles arbitrary files. Save "
                         "a state_dict with torch.save (zip format) or use safetensors")
    raise ValueError(f"{source}: unrecognised file format. fastlstm.load reads PyTorch state_dict files (.pt/.pth), "
                     "safetensors, Keras .keras and .h5 files, ONNX models and fastlstm's own files")


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
    return spec_from_bytes(data, source, folder_of(path), **overrides)


def load(path, **overrides):
    """Open a model file; the format is detected from the content, not the extension.

    Reads PyTorch ``torch.save(state_dict)`` files (.pt/.pth), safetensors with PyTorch
    names, Keras 3 ``.keras``, Keras 2 / legacy ``.h5``, ONNX models (``.onnx``, read
    without the ``onnx`` package or ONNX Runtime) and fastlstm's own files.  Needs
    neither torch nor Keras, and never executes code from the file: anything it cannot
    represent exactly raises ``ValueError`` naming the layer, key or option.

    ``overrides`` apply to PyTorch state_dict files only (a state_dict cannot record them):
    ``head_activation`` ('linear' by default, with a :class:`LoadWarning`), ``return_sequences``
    (True by default) and ``key`` (pick the state_dict out of a checkpoint dict).
    """
    return build_model(read_spec(path, **overrides))


def from_torch(obj, **overrides):
    """Build a model from ``nn.LSTM``, ``nn.LSTMCell``, a module holding one plus an ``nn.Linear``
    head, or a state_dict mapping (tensors or arrays).

    The structure (layers, directions, proj_size, bias) is inferred from the weights.  What
    weights cannot tell comes from ``overrides``: ``head_activation`` (detected from an
    ``nn.Sigmoid``/``Tanh``/``ReLU``/``Softmax(dim=-1)`` registered after the Linear; else
    'linear' with a :class:`LoadWarning`) and ``return_sequences`` (default True, like
    ``nn.LSTM``; pass False for a module whose forward keeps only the last step).
    ``batch_first`` is not a property of the model here: pass ``batch_first=True`` to
    ``predict`` instead.  torch is not imported: only the object's own methods are used.
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
        if is_hdf5(data):
            return build_model(read_keras_h5(data, source))
        if data[:4] == b"PK\x03\x04":
            return build_model(read_keras_zip(data, source))
        raise ValueError(f"{source}: not a Keras .keras or .h5 file; use fastlstm.load for other formats")
    if not is_keras_model(obj):
        raise TypeError(f"obj: expected a Keras model or a path to a .keras/.h5 file, got {type(obj).__name__}")
    return build_model(spec_from_keras_object(obj))
