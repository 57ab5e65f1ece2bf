"""The state of a model's streams: ``h`` and ``c`` for every recurrent layer and
direction, and the buffers of the other layers that stream with state.

A :class:`State` is a plain value: copies of the arrays, plus the signature of
the model that made it, so that a state cannot silently be fed to a model of
another shape.  ``to_bytes`` / ``from_bytes`` carry it between processes or
machines exactly (float32 bit patterns, little-endian).

Byte format: a header (magic, version, JSON length), the JSON (array shapes and
signature), the arrays' float32 data in order h..., c..., buffers..., and from
version 3 a CRC-32 of everything before it.  Version 1 (no buffers, no
checksum) still loads.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Optional, Sequence, Tuple

import numpy as np

_MAGIC = b"FLSTATE\0"
_VERSION = 3
_HEADER = struct.Struct("<8sHI")      # magic, format version, JSON length
_CHECKSUM = struct.Struct("<I")
_MAX_JSON = 1 << 20                   # a state header is a few hundred bytes
_MAX_ARRAYS = 4096


def _version_traits(version):
    """(has buffers, has a trailing CRC-32) of a State byte format version, or ValueError.

    Version 1: h and c only.  Version 3: buffers and a checksum.  (Version 2
    belongs to another branch's format; its traits go here when it merges.)"""
    traits = {1: (False, False), 3: (True, True)}
    if version not in traits:
        raise ValueError(f"data: State format version {version} is not supported (expected one of "
                         f"{sorted(traits)})")
    return traits[version]


class State:
    """Per recurrent layer (and direction) ``h`` and ``c`` arrays, and the other layers' buffers.

    ``h[k]`` and ``c[k]`` belong to the k-th (recurrent layer, direction) of the
    chain, directions in order (forward, backward).  ``h`` is the projection
    size wide when an LSTM layer has one, else the hidden size; ``c`` is an
    LSTM's hidden size, and empty (width 0) for GRU and RNN layers.
    ``buffers[j]`` is the state of the j-th other layer that streams with
    state, in chain order: a causal Conv1D's last ``dilation*(K-1)`` inputs
    (oldest first, flattened), a stride-1 pool's [steps seen | last size-1
    inputs], a global pool's [step count (2 floats) | running max or sum].
    Arrays are ``(B, width)`` for a batch of B streams or ``(width,)`` for a
    single unbatched stream.

    Parameters
    ----------
    h : sequence of arrays
    c : sequence of arrays, optional
        May be left out when every recurrent layer is a GRU or RNN.
    signature : tuple, optional
        The shape signature of the model the state belongs to (set by fastlstm).
    buffers : sequence of arrays, optional
    """

    __slots__ = ("h", "c", "buffers", "signature")

    def __init__(self, h: Sequence, c: Optional[Sequence] = None, signature: Optional[Tuple] = None,
                 buffers: Sequence = ()):
        if any(isinstance(v, np.ndarray) for v in (h, c, buffers)):
            raise TypeError("h, c, buffers: expected lists of arrays (one per layer and direction)")
        copy = lambda arrays: [np.array(a, dtype=np.float32, copy=True, order="C") for a in arrays]  # noqa: E731
        h = copy(h)
        c = [np.zeros(a.shape[:-1] + (0,), np.float32) for a in h] if c is None else copy(c)
        if len(h) != len(c):
            raise ValueError(f"h, c: expected the same number of arrays, got {len(h)} and {len(c)}")
        self.h, self.c, self.buffers = h, c, copy(buffers)
        self.signature = None if signature is None else tuple(tuple(s) for s in signature)

    def __repr__(self):
        shapes = ", ".join(f"h{a.shape}/c{b.shape}" for a, b in zip(self.h, self.c))
        shapes += "".join(f", buffer{a.shape}" for a in self.buffers)
        return f"State([{shapes}])"

    def _arrays(self):
        return self.h + self.c + self.buffers

    def __eq__(self, other):
        if not isinstance(other, State):
            return NotImplemented
        return (self.signature == other.signature and len(self.h) == len(other.h)
                and len(self.buffers) == len(other.buffers)
                and all(np.array_equal(a, b) for a, b in zip(self._arrays(), other._arrays())))

    def copy(self) -> "State":
        return State(self.h, self.c, self.signature, self.buffers)

    def to_bytes(self) -> bytes:
        """Serialise exactly: a versioned header naming the model's shape, the raw floats, a checksum."""
        meta = {
            "h": [list(a.shape) for a in self.h],
            "c": [list(a.shape) for a in self.c],
            "buffers": [list(a.shape) for a in self.buffers],
            "signature": None if self.signature is None else [list(s) for s in self.signature],
        }
        text = json.dumps(meta, separators=(",", ":")).encode()
        body = b"".join(a.astype("<f4", copy=False).tobytes() for a in self._arrays())
        data = _HEADER.pack(_MAGIC, _VERSION, len(text)) + text + body
        return data + _CHECKSUM.pack(zlib.crc32(data))

    @classmethod
    def from_bytes(cls, data) -> "State":
        """Rebuild a State written by :meth:`to_bytes`; ValueError on anything malformed."""
        try:
            data = memoryview(data).cast("B")
        except TypeError:
            raise TypeError(f"data: expected bytes, got {type(data).__name__}") from None
        if len(data) < _HEADER.size:
            raise ValueError("data: too short to be a fastlstm State")
        magic, version, n_json = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise ValueError("data: not a fastlstm State (bad magic bytes)")
        has_buffers, has_checksum = _version_traits(version)
        if has_checksum:
            if len(data) < _HEADER.size + _CHECKSUM.size:
                raise ValueError("data: truncated State")
            (expected,) = _CHECKSUM.unpack_from(data, len(data) - _CHECKSUM.size)
            data = data[:len(data) - _CHECKSUM.size]
            if zlib.crc32(data) != expected:
                raise ValueError("data: State checksum mismatch (the bytes are corrupt or truncated)")
        if n_json > _MAX_JSON or _HEADER.size + n_json > len(data):
            raise ValueError("data: truncated or corrupt State header")
        try:
            meta = json.loads(bytes(data[_HEADER.size:_HEADER.size + n_json]))
            buffer_shapes = meta["buffers"] if has_buffers else []
            shapes = [tuple(int(d) for d in s) for s in meta["h"] + meta["c"] + buffer_shapes]
            n_h = len(meta["h"])
            signature = meta["signature"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"data: corrupt State header ({exc})") from None
        if len(shapes) > _MAX_ARRAYS or n_h * 2 + len(buffer_shapes) != len(shapes) or any(
                len(s) not in (1, 2) or min(s) < 0 for s in shapes):
            raise ValueError("data: corrupt State header (bad array shapes)")
        sizes = [int(np.prod(s)) for s in shapes]
        offset = _HEADER.size + n_json
        if offset + 4 * sum(sizes) != len(data):
            raise ValueError(f"data: expected {offset + 4 * sum(sizes)} bytes for this State, got {len(data)}")
        arrays = []
        for shape, size in zip(shapes, sizes):
            arrays.append(np.frombuffer(data, dtype="<f4", count=size, offset=offset).reshape(shape))
            offset += 4 * size
        try:
            return cls(arrays[:n_h], arrays[n_h:2 * n_h], signature, arrays[2 * n_h:])
        except TypeError as exc:
            raise ValueError(f"data: corrupt State signature ({exc})") from None


def state_rows(state, layout, signature, rows, batch_size, name):
    """``state`` checked against a network's state layout and signature (fastlstm._packing.pack_chain)
    for ``rows`` streams (``batch_size`` None: one unbatched stream); returns the (rows, state
    size) float32 rows the kernels step."""
    if not isinstance(state, State):
        raise TypeError(f"{name}: expected a fastlstm.State, got {type(state).__name__}")
    if state.signature is not None and state.signature != signature:
        raise ValueError(f"{name}: belongs to a model of another shape (layers {state.signature}, "
                         f"this model's are {signature})")
    lists = {"h": state.h, "c": state.c, "buf": state.buffers}
    n_entries = sum(1 for label, *_ in layout if label == "h")
    n_buffers = sum(1 for label, *_ in layout if label == "buf")
    if len(state.h) != n_entries:
        raise ValueError(f"{name}: expected {n_entries} (layer, direction) entries, got {len(state.h)}")
    if len(state.buffers) != n_buffers:
        raise ValueError(f"{name}: expected {n_buffers} layer buffers, got {len(state.buffers)}")
    out = np.zeros((rows, sum(width for *_, width in layout)), dtype=np.float32)
    for label, k, offset, width in layout:
        arr = lists[label][k]
        shown = "buffers" if label == "buf" else label
        expected = (width,) if batch_size is None else (rows, width)
        if arr.shape != expected:
            raise ValueError(f"{name}: {shown}[{k}] expected shape {expected}, got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: {shown}[{k}] contains NaN or infinite values")
        out[:, offset:offset + width] = arr.reshape(rows, width)
    return out


def state_from_rows(rows, layout, signature, batch_size):
    """A :class:`State` of the state rows (rows, state size) of a network with this layout."""
    lists = {"h": [], "c": [], "buf": []}
    for label, _, offset, width in layout:
        arr = rows[:, offset:offset + width]
        lists[label].append(arr[0] if batch_size is None else arr)
    return State(lists["h"], lists["c"], signature, lists["buf"])
