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

Every file is read within the caps of :mod:`._limits` (file size, a memory budget derived
from it, zip member counts, the HDF5 child's memory and time), and every problem with a
file's content surfaces as :class:`LoadError`, a ValueError naming the file: see
:func:`_reading`, the one place where other exception types are turned into it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
from typing import TYPE_CHECKING, Any, Optional, Union

from .._quantize import check_precision
from ._common import LoadWarning, Spec, build_model, describe_keys, open_zip
from ._limits import MAX_FILE_BYTES, Budget, shown
from .keras_files import is_hdf5, read_keras_h5, read_keras_zip
from .native import is_native, save_model, spec_from_native
from .onnx_files import folder_of, looks_like_onnx, spec_from_onnx
from .safetensors_io import looks_like_safetensors, read_safetensors
from .torch_state import OVERRIDES, check_overrides, spec_from_state_dict
from .torch_zip import LEGACY_MAGIC, read_torch_zip
from .torch_zip import sniff as sniff_torch_zip

if TYPE_CHECKING:
    from ..model import Model

__all__ = ["load", "from_torch", "from_keras", "save_model", "read_spec", "LoadError", "LoadWarning", "Spec"]


class LoadError(ValueError):
    """A model file is corrupt, hostile, too large or of an unsupported kind; the message names the
    file and the cause.  A ValueError, so ``except ValueError`` catches it too."""


@contextlib.contextmanager
def _reading(source):
    """Turn whatever reading ``source``'s content raises into a :class:`LoadError` naming the file.

    The readers raise ValueError with precise messages for everything they check; any other
    type escaping them (an OverflowError deep in NumPy, a RecursionError, a KeyError) still
    means a bad file, never a bad argument, so it is reported as one rather than leaking out.
    """
    try:
        yield
    except LoadError:
        raise
    except ValueError as exc:
        msg = str(exc)
        raise LoadError(msg if msg.startswith(source) else f"{source}: {msg}") from None
    except (ArithmeticError, LookupError, RecursionError, TypeError, AttributeError, EOFError, struct.error) as exc:
        raise LoadError(f"{source}: corrupt or unsupported file ({type(exc).__name__}: {str(exc)[:200]})") from None


#: Overrides a PyTorch file accepts: the torch ones, plus ``key`` to pick the state_dict
#: out of a training checkpoint (``{"model_state_dict": ..., "optimizer": ...}``).
_FILE_OVERRIDES = OVERRIDES + ("key",)

#: How a Git LFS pointer file starts: a clone without ``git lfs`` holds this text instead of the model.
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\n"


def _read_source(path):
    """Return ``(bytes, label)`` for a path or a binary file object, at most MAX_FILE_BYTES of it.

    Paths must name regular files (a device such as /dev/zero, a FIFO or a directory never
    ends or never starts); the size is checked before reading, and again while reading.
    """
    if hasattr(path, "read"):
        source = str(getattr(path, "name", "<file object>"))
        return _read_capped(path, source, 1 << 20), source
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path: expected a file path or a binary file object, got {type(path).__name__}")
    source = os.fsdecode(os.fspath(path))
    # O_NONBLOCK: opening a FIFO must not wait for a writer before we can refuse it.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise LoadError(f"{source}: not a regular file; fastlstm.load reads model files only")
        if info.st_size > MAX_FILE_BYTES:
            raise _too_large(source)
        f = open(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise
    with f:
        return _read_capped(f, source, info.st_size + 1), source


def _read_capped(f, source, first):
    """Read ``f`` to its end in pieces (``first`` bytes, then 1 MiB), refusing more than MAX_FILE_BYTES.

    Never ``read(MAX_FILE_BYTES)``: a buffered file preallocates what it is asked for.
    """
    chunks, total, want = [], 0, first
    while True:
        chunk = f.read(min(want, MAX_FILE_BYTES + 1 - total))
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError("path: the file object must be opened in binary mode")
        if not len(chunk):
            return chunks[0] if len(chunks) == 1 and type(chunks[0]) is bytes else b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > MAX_FILE_BYTES:
            raise _too_large(source)
        want = 1 << 20


def _too_large(source):
    return LoadError(
        f"{source}: the file has more than {MAX_FILE_BYTES:,} bytes, the largest model file fastlstm reads"
    )


def _no_overrides(overrides, kind):
    if overrides:
        raise TypeError(
            f"{', '.join(sorted(overrides))}: only PyTorch state_dict files take overrides; a {kind} "
            "records its own structure"
        )


def _refuse_lfs_pointer(data, source):
    if data.startswith(LFS_POINTER):
        raise ValueError(
            f"{source}: this is a Git LFS pointer file ({len(data)} bytes), not the model itself; "
            "run `git lfs pull` in the repository to download the real file"
        )


def spec_from_bytes(data, source, folder=None, **overrides):
    """Detect the format of ``data`` (a whole file) and read it into a Spec.

    ``folder`` is the file's directory, where an ONNX model's external data may live.

    Overrides are checked as arguments (TypeError/ValueError naming them) outside :func:`_reading`;
    everything about the file's content raises :class:`LoadError`.
    """
    check_overrides(overrides, _FILE_OVERRIDES)
    if "key" in overrides:
        try:
            hash(overrides["key"])
        except TypeError:
            raise TypeError(f"key: expected a dict key (a str), got {type(overrides['key']).__name__}") from None
    budget = Budget(len(data), source)
    with _reading(source):
        kind, parsed = _detect(data, source, budget)
    if kind == "safetensors":
        check_overrides(overrides)  # no ``key``: a safetensors file is one flat mapping
    elif kind != "torch":
        _no_overrides(overrides, kind)
    with _reading(source):
        if kind == "ONNX file":
            return spec_from_onnx(data, source, folder)
        if kind == "torch":
            return _spec_from_torch(data, source, overrides, budget)
        if kind == ".keras file":
            return read_keras_zip(data, source, budget)
        if kind == "Keras .h5 file":
            return read_keras_h5(data, source, budget)
        tensors, metadata, start = parsed
        if kind == "fastlstm file":
            return spec_from_native(tensors, metadata, data, start, source)
        return spec_from_state_dict(tensors, source, **overrides)


def _detect(data, source, budget):
    """``(kind, parsed)``: the format of ``data``; ``parsed`` is the safetensors parse where one was needed."""
    if not data:
        raise ValueError(f"{source}: the file is empty")
    _refuse_lfs_pointer(data, source)
    if data.startswith(LEGACY_MAGIC):
        raise ValueError(
            f"{source}: this is a pre-1.6 PyTorch file (legacy non-zip format), which can only be read "
            "by unpickling arbitrary objects; re-save it with a current torch.save(model.state_dict())"
        )
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        names = open_zip(data, source).namelist()
        if "config.json" in names and any(n.startswith("model.weights") for n in names):
            return ".keras file", None
        if sniff_torch_zip(names) is None:
            raise ValueError(
                f"{source}: a zip archive that is neither a PyTorch file nor a .keras file "
                f"(members: {describe_keys(names, 8)})"
            )
        return "torch", None
    if is_hdf5(data):
        return "Keras .h5 file", None
    if looks_like_safetensors(data[:9]):
        parsed = read_safetensors(data, source, budget)
        return ("fastlstm file" if is_native(parsed[1]) else "safetensors"), parsed
    if looks_like_onnx(data):
        return "ONNX file", None
    if data[:1] == b"\x80":
        raise ValueError(
            f"{source}: this looks like a bare pickle; fastlstm never unpickles arbitrary files. Save "
            "a state_dict with torch.save (zip format) or use safetensors"
        )
    raise ValueError(
        f"{source}: unrecognised file format. fastlstm.load reads PyTorch state_dict files (.pt/.pth), "
        "safetensors, Keras .keras and .h5 files, ONNX models and fastlstm's own files"
    )


def _spec_from_torch(data, source, overrides, budget):
    overrides = dict(overrides)
    key = overrides.pop("key", None)
    obj = read_torch_zip(data, source, budget)  # refuses TorchScript and forbidden globals
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            keys = list(obj) if isinstance(obj, dict) else []
            raise ValueError(f"{source}: key={shown(key)} is not in the file (top-level keys: {describe_keys(keys)})")
        obj = obj[key]
        source = f"{source}[{shown(key)}]"
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: the file holds a {type(obj).__name__}, not a state_dict")
    return spec_from_state_dict(obj, source, **overrides)


def read_spec(path: Union[str, os.PathLike], **overrides: Any) -> Spec:
    """What :func:`load` reads, before building the engine model (useful for inspection and tests)."""
    data, source = _read_source(path)
    return spec_from_bytes(data, source, folder_of(path), **overrides)


def load(path: Union[str, os.PathLike], precision: Optional[str] = None, **overrides: Any) -> Model:
    """Open a model file; the format is detected from the content, not the extension.

    Reads PyTorch ``torch.save(state_dict)`` files (.pt/.pth), safetensors with PyTorch
    names, Keras 3 ``.keras``, Keras 2 / legacy ``.h5``, ONNX models (``.onnx``, read
    without the ``onnx`` package or ONNX Runtime) and fastlstm's own files.  Needs
    neither torch nor Keras, and never executes code from the file: anything it cannot
    represent exactly, and any corrupt, hostile or oversized file, raises :class:`LoadError`
    (a ``ValueError``) naming the file and the layer, key or cause.  Reads stay within the
    caps in README.md ("Security and limits"); a path must name a regular file.

    ``overrides`` apply to PyTorch state_dict files only (a state_dict cannot record what
    ``forward()`` does): ``layers`` (the order of its modules, activations and pools, by key
    prefix, activation name and pool call, e.g. ``["embedding", "lstm", "fc1", "relu", "fc2"]``
    or ``["conv(padding=1)", "relu", "maxpool1d(2)", "lstm", "fc"]``, a Conv1d's prefix with its
    settings; needed for anything but one recurrent module plus at most one Linear), ``head_activation`` (that
    Linear's activation; 'linear' by default, with a :class:`LoadWarning`),
    ``return_sequences`` (False keeps the last step only) and ``key`` (pick the state_dict out
    of a checkpoint dict).  docs/loading.md lists what each source supports.

    ``precision`` (one of :data:`fastlstm.PRECISIONS`, see :class:`fastlstm.Model`) is the
    model's; by default (None) the one the file records: a fastlstm file saved by a bf16 or
    int8 model reloads as one, every other file as fp32.  Given, it wins over the file's.
    """
    if precision is not None:
        check_precision(precision)  # an argument error before the file is read
    return build_model(read_spec(path, **overrides), precision)


def from_torch(obj: Any, precision: str = "fp32", **overrides: Any) -> Model:
    """Build a model from a live PyTorch module or a state_dict mapping (tensors or arrays).

    ``nn.LSTM``/``nn.GRU``/``nn.RNN`` and their cells load directly.  Any other module (your
    own, or an ``nn.Sequential``) has its ``forward()`` traced with ``torch.fx``, so heads
    such as ``fc2(relu(fc1(out[:, -1])))``, norms, Conv1d front ends (with their
    ``permute`` glue), poolings and an Embedding load in the order forward() runs them;
    an op fastlstm cannot run is refused by name.  A state_dict takes the overrides of
    :func:`load` (``layers``, ``head_activation``, ``return_sequences``).  ``batch_first``
    is not a property of the model here: pass ``batch_first=True`` to ``predict`` instead.
    ``precision`` is the model's (see :class:`fastlstm.Model`).
    """
    from .torch_objects import spec_from_torch_object

    check_precision(precision)
    if isinstance(obj, (str, bytes, os.PathLike)):
        raise TypeError("obj: from_torch takes a module or a state_dict; use fastlstm.load(path) for files")
    return build_model(spec_from_torch_object(obj, **overrides), precision)


def from_keras(obj: Any, precision: str = "fp32") -> Model:
    """Build a model from a Keras Sequential/Functional model object, or a ``.keras``/``.h5`` path.

    ``stateful=True`` layers load like any other: keep state across calls with
    ``model.stream()`` (or pass ``state=`` to ``predict``).  ``precision`` is the model's (see
    :class:`fastlstm.Model`).
    """
    from .keras_objects import is_keras_model, spec_from_keras_object

    check_precision(precision)
    if isinstance(obj, (str, bytes, os.PathLike)) or hasattr(obj, "read"):
        data, source = _read_source(obj)
        with _reading(source):
            _refuse_lfs_pointer(data, source)
            if is_hdf5(data):
                return build_model(read_keras_h5(data, source), precision)
            if data[:4] == b"PK\x03\x04":
                return build_model(read_keras_zip(data, source), precision)
            raise ValueError(f"{source}: not a Keras .keras or .h5 file; use fastlstm.load for other formats")
    if not is_keras_model(obj):
        raise TypeError(f"obj: expected a Keras model or a path to a .keras/.h5 file, got {type(obj).__name__}")
    return build_model(spec_from_keras_object(obj), precision)
