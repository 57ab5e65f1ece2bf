"""Pieces every loader shares: the loaded-model description, weight checks, safe zip reads.

Loaders turn a file or a framework object into a :class:`Spec` (the chain of layers,
first layer first) made of the framework-neutral classes in :mod:`fastlstm.layers`;
only :func:`build_model` touches the engine.  Keeping the two apart lets every loader be
tested for *what* it read independently of the compute code.
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
import warnings
import zipfile
from dataclasses import dataclass
from typing import Tuple

import numpy as np

from ..layers import check_chain
from ._limits import JSON_BYTES_PER_TEXT_BYTE, MAX_DEFLATE_RATIO, MAX_ZIP_DIRECTORY_BYTES, MAX_ZIP_MEMBERS, shown


class LoadWarning(UserWarning):
    """A loader had to assume something the source does not record (e.g. a head's activation)."""


@dataclass(frozen=True)
class Spec:
    """What a loader read: the chain of layers, enough to build a :class:`fastlstm.Model`, and the
    precision the source records (only fastlstm's own files record one)."""

    layers: Tuple
    precision: str = "fp32"


#: The largest window, stride, dilation or RepeatVector length a file may ask for.  Real models use
#: at most a few thousand; a file asking for more would make predict or a stream allocate without bound.
MAX_STEPS_OPTION = 1 << 16
#: The layer options that count time steps (bounded by :data:`MAX_STEPS_OPTION`).
STEP_OPTIONS = ("size", "stride", "dilation", "padding", "n")


def check_steps_option(value, what, source):
    """Refuse an int option that sets a number of time steps above :data:`MAX_STEPS_OPTION`."""
    # (floats too: the layer classes take an integral float such as 2.0 as the int it equals)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > MAX_STEPS_OPTION:
        raise ValueError(
            f"{source}: {what}={value} is larger than fastlstm accepts from a file "
            f"({MAX_STEPS_OPTION}); refusing a model that would allocate without bound"
        )
    return value


def make_spec(layers, source, precision="fp32"):
    """Validate that the layers chain together; prefix any complaint with ``source``."""
    try:
        layers = check_chain(layers)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {exc}") from None
    return Spec(layers, precision)


def build_model(spec: Spec, precision=None):
    """Turn a :class:`Spec` into an engine :class:`fastlstm.Model` (imported late: the engine imports us)
    at ``precision``, by default the one the source records."""
    from ..model import Model

    return Model(layers=list(spec.layers), precision=spec.precision if precision is None else precision)


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def warn(message):
    """Warn with the location of the user's call, not of a loader internal."""
    level, frame = 2, sys._getframe(1)  # noqa: SLF001 - the documented way to walk the caller's frames
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, LoadWarning, stacklevel=level)


_FLOAT_KINDS = ("f",)


@dataclass(frozen=True)
class NonFloat:
    """A stored tensor that is not floating point (e.g. Keras Normalization's int ``count``): kept unread,
    so that a layer that ignores it loads and one that uses it is refused by :func:`float_weight`."""

    dtype: str
    shape: Tuple[int, ...]


def float_weight(value, key, source, ndim=None):
    """Return ``value`` as a C-contiguous float32 array or raise ``ValueError`` naming ``key`` and ``source``.

    Integer and boolean tensors are refused rather than converted: an LSTM weight
    stored as int64 means the key was misread, not that it should be rounded.
    NaN/inf are refused here (not only in :class:`LSTMWeights`) so the message can
    name the key as it appears in the file.
    """
    if isinstance(value, NonFloat):
        raise ValueError(f"{source}: tensor {shown(key)} has dtype {value.dtype}; expected a floating-point weight")
    arr = np.asarray(value)
    if arr.dtype.kind not in _FLOAT_KINDS:
        raise ValueError(f"{source}: tensor {shown(key)} has dtype {arr.dtype}; expected a floating-point weight")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{source}: tensor {shown(key)} has shape {arr.shape}; expected a {ndim}-d array")
    if arr.size == 0:
        raise ValueError(f"{source}: tensor {shown(key)} is empty (shape {arr.shape})")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        what = "NaN" if np.isnan(out).any() else "infinite"
        if np.all(np.isfinite(arr)):
            what = "values too large for float32 (they overflow to inf)"
        raise ValueError(f"{source}: tensor {shown(key)} contains {what} values; refusing to load a broken weight")
    return out


def parse_json(text, what, source, budget, **hooks):
    """``json.loads(text, **hooks)`` for file content: the parsed size is charged to ``budget`` first,
    and every failure (bad UTF-8 or JSON, nesting deep enough to exhaust the stack, an error
    from a hook) is a ValueError naming ``what``."""
    budget.charge(JSON_BYTES_PER_TEXT_BYTE * len(text), f"parsing {what} ({len(text):,} bytes of JSON)")
    try:
        if isinstance(text, (bytes, bytearray)):
            text = text.decode("utf-8")  # strictly: json.loads would also guess UTF-16 and UTF-32
        return json.loads(text, **hooks)
    except (ValueError, TypeError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"{source}: {what} is not valid JSON ({str(exc)[:200]})") from None


def check_shape(arr, expected, key, source):
    if tuple(arr.shape) != tuple(expected):
        raise ValueError(f"{source}: tensor {shown(key)} has shape {tuple(arr.shape)}; expected {tuple(expected)}")


# --- zip archives -----------------------------------------------------------------

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")


def _central_directory_size(data):
    """The central directory size ``zipfile`` will read, from the end record (None if absent).

    Found the way ``zipfile`` finds it (the last end record, zip64 if flagged), so that the
    directory can be refused before ``zipfile`` parses every entry into objects.
    """
    at = len(data) - _EOCD.size
    if at < 0:
        return None
    if data[at : at + 4] != b"PK\x05\x06":
        at = data.rfind(b"PK\x05\x06", max(0, len(data) - _EOCD.size - 0xFFFF))
        if at < 0 or at + _EOCD.size > len(data):
            return None
    size = _EOCD.unpack_from(data, at)[6]
    loc = at - _ZIP64_LOCATOR.size
    if loc >= 0 and data[loc : loc + 4] == b"PK\x06\x07":
        z64 = _ZIP64_LOCATOR.unpack_from(data, loc)[2]
        if z64 + _ZIP64_EOCD.size <= len(data) and data[z64 : z64 + 4] == b"PK\x06\x06":
            size = _ZIP64_EOCD.unpack_from(data, z64)[8]
    return size


def open_zip(data, source):
    """A ``zipfile.ZipFile`` over the bytes ``data``, refusing oversized directories up front.

    Everything after this is linear in the member count, which is capped at MAX_ZIP_MEMBERS.
    """
    directory = _central_directory_size(data)
    if directory is not None and directory > MAX_ZIP_DIRECTORY_BYTES:
        raise ValueError(
            f"{source}: the zip directory takes {directory:,} bytes (limit {MAX_ZIP_DIRECTORY_BYTES:,}); "
            "a model archive has a few entries per tensor"
        )
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        names = zf.namelist()
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        OSError,
        ValueError,
        EOFError,
        KeyError,
        IndexError,
        UnicodeDecodeError,
        NotImplementedError,
        struct.error,
    ) as exc:
        raise ValueError(f"{source}: not a readable zip archive ({str(exc)[:200]})") from None
    if len(names) > MAX_ZIP_MEMBERS:
        raise ValueError(f"{source}: zip archive has {len(names):,} members (limit {MAX_ZIP_MEMBERS:,})")
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: zip archive has duplicate member names; refusing an ambiguous file")
    return zf


def read_member(zf, name, source, budget, limit=None):
    """Read one zip member, charging its size to ``budget``, with the CRC check ``zipfile`` performs.

    The declared size is checked (against ``limit``, the budget and MAX_DEFLATE_RATIO times the
    compressed size) before anything is decompressed, and ``zipfile`` stops decompressing at
    the declared size, so a member that lies about its size is truncated or fails its CRC
    rather than expanding without bound.
    """
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise ValueError(f"{source}: archive member {shown(name)} is missing") from None
    if limit is not None and info.file_size > limit:
        raise ValueError(f"{source}: archive member {shown(name)} declares {info.file_size} bytes (limit {limit})")
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_DEFLATE_RATIO * max(info.compress_size, 1):
        raise ValueError(f"{source}: archive member {shown(name)} expands too much; refusing a possible zip bomb")
    budget.charge(info.file_size, f"archive member {shown(name)}")
    try:
        data = zf.read(info)
    except (
        zipfile.BadZipFile,
        OSError,
        ValueError,
        EOFError,
        NotImplementedError,
        RuntimeError,
        UnicodeDecodeError,
    ) as exc:
        # zipfile raises these for bad CRCs, truncated data, unknown compression, encryption.
        raise ValueError(f"{source}: archive member {shown(name)} is corrupt ({str(exc)[:200]})") from None
    except Exception as exc:  # noqa: BLE001 - zlib.error and friends: still a corrupt file, never a crash
        raise ValueError(
            f"{source}: archive member {shown(name)} is corrupt ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    if len(data) != info.file_size:
        raise ValueError(f"{source}: archive member {shown(name)} is truncated")
    return data


def describe_keys(keys, limit=20):
    keys = list(keys)
    text = ", ".join(shown(k) for k in keys[:limit])
    return text + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")
