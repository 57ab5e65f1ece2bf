"""Pieces every loader shares: the loaded-model description, weight checks, safe zip reads.

Loaders turn a file or a framework object into a :class:`Spec` (the chain of layers,
first layer first) made of the framework-neutral classes in :mod:`fastlstm.layers`;
only :func:`build_model` touches the engine.  Keeping the two apart lets every loader be tested for *what* it read independently of
the compute code.
"""

from __future__ import annotations

import os
import sys
import warnings
import zipfile
from dataclasses import dataclass
from typing import Tuple

import numpy as np

from ..layers import check_chain


class LoadWarning(UserWarning):
    """A loader had to assume something the source does not record (e.g. a head's activation)."""


@dataclass(frozen=True)
class Spec:
    """What a loader read: the chain of layers, enough to build a :class:`fastlstm.Model`."""

    layers: Tuple


#: The largest window, stride, dilation or RepeatVector length a file may ask for.  Real models use
#: at most a few thousand; a file asking for more would make predict or a stream allocate without bound.
MAX_STEPS_OPTION = 1 << 16


def check_steps_option(value, what, source):
    """Refuse an int option that sets a number of time steps above :data:`MAX_STEPS_OPTION`."""
    if isinstance(value, int) and value > MAX_STEPS_OPTION:
        raise ValueError(f"{source}: {what}={value} is larger than fastlstm accepts from a file "
                         f"({MAX_STEPS_OPTION}); refusing a model that would allocate without bound")
    return value


def make_spec(layers, source):
    """Validate that the layers chain together; prefix any complaint with ``source``."""
    try:
        layers = check_chain(layers)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {exc}") from None
    return Spec(layers)


def build_model(spec: Spec):
    """Turn a :class:`Spec` into an engine :class:`fastlstm.Model` (imported late: the engine imports us)."""
    from ..model import Model

    return Model(layers=list(spec.layers))


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def warn(message):
    """Warn with the location of the user's call, not of a loader internal."""
    level, frame = 2, sys._getframe(1)
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
        raise ValueError(f"{source}: tensor {key!r} has dtype {value.dtype}; expected a floating-point weight")
    arr = np.asarray(value)
    if arr.dtype.kind not in _FLOAT_KINDS:
        raise ValueError(f"{source}: tensor {key!r} has dtype {arr.dtype}; expected a floating-point weight")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{source}: tensor {key!r} has shape {arr.shape}; expected a {ndim}-d array")
    if arr.size == 0:
        raise ValueError(f"{source}: tensor {key!r} is empty (shape {arr.shape})")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        what = "NaN" if np.isnan(out).any() else "infinite"
        if np.all(np.isfinite(arr)):
            what = "values too large for float32 (they overflow to inf)"
        raise ValueError(f"{source}: tensor {key!r} contains {what} values; refusing to load a broken weight")
    return out


def check_shape(arr, expected, key, source):
    if tuple(arr.shape) != tuple(expected):
        raise ValueError(f"{source}: tensor {key!r} has shape {tuple(arr.shape)}; expected {tuple(expected)}")


# --- zip archives -----------------------------------------------------------------

#: Largest member we agree to read.  Weights of any LSTM worth streaming on a CPU are far
#: below this; a declared size above it is a corrupt or hostile archive.
MAX_MEMBER_BYTES = 1 << 32
#: A deflated member may not claim to expand more than this (zip-bomb guard).
MAX_DEFLATE_RATIO = 1000


def open_zip(fileobj, source):
    try:
        zf = zipfile.ZipFile(fileobj)
        names = zf.namelist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, KeyError,
            IndexError, UnicodeDecodeError, NotImplementedError) as exc:
        raise ValueError(f"{source}: not a readable zip archive ({exc})") from None
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: zip archive has duplicate member names; refusing an ambiguous file")
    return zf


def read_member(zf, name, source, limit=MAX_MEMBER_BYTES):
    """Read one zip member with size caps and the CRC check ``zipfile`` performs on a full read."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise ValueError(f"{source}: archive member {name!r} is missing") from None
    if info.file_size > limit:
        raise ValueError(f"{source}: archive member {name!r} declares {info.file_size} bytes (limit {limit})")
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_DEFLATE_RATIO * max(info.compress_size, 1):
        raise ValueError(f"{source}: archive member {name!r} expands too much; refusing a possible zip bomb")
    try:
        data = zf.read(info)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError,
            UnicodeDecodeError) as exc:
        # zipfile raises these for bad CRCs, truncated data, unknown compression, encryption.
        raise ValueError(f"{source}: archive member {name!r} is corrupt ({exc})") from None
    except Exception as exc:  # zlib.error and friends: still a corrupt file, never a crash
        raise ValueError(f"{source}: archive member {name!r} is corrupt ({type(exc).__name__}: {exc})") from None
    if len(data) != info.file_size:
        raise ValueError(f"{source}: archive member {name!r} is truncated")
    return data


def describe_keys(keys, limit=20):
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")
