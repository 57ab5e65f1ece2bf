"""The recurrent state of a model: ``h`` and ``c`` for every layer and direction.

A :class:`State` is a plain value: copies of the arrays, plus the signature of
the model that made it, so that a state cannot silently be fed to a model of
another shape.  ``to_bytes`` / ``from_bytes`` carry it between processes or
machines exactly (float32 bit patterns, little-endian).
"""

from __future__ import annotations

import json
import struct
from typing import Optional, Sequence, Tuple, Union

import numpy as np

_MAGIC = b"FLSTATE\0"
_VERSION = 1
_HEADER = struct.Struct("<8sHI")      # magic, format version, JSON length
_MAX_JSON = 1 << 20                   # a state header is a few hundred bytes
_MAX_ARRAYS = 4096


class State:
    """Per layer (and direction) ``h`` and ``c`` arrays.

    ``h[k]`` and ``c[k]`` belong to layer ``k // D``, direction ``k % D``
    (``D`` = 2 for bidirectional layers).  Arrays are ``(B, width)`` for a
    batch of B streams or ``(width,)`` for a single unbatched stream; ``h`` is
    the projection size wide when the layer has one, ``c`` the hidden size.

    Parameters
    ----------
    h, c : sequences of arrays
    signature : tuple, optional
        The shape signature of the model the state belongs to (set by fastlstm).
    """

    __slots__ = ("h", "c", "signature")

    def __init__(self, h: Sequence, c: Sequence, signature: Optional[Tuple] = None):
        if isinstance(h, np.ndarray) or isinstance(c, np.ndarray):
            raise TypeError("h, c: expected a list of arrays (one per layer and direction)")
        h = [np.array(a, dtype=np.float32, copy=True, order="C") for a in h]
        c = [np.array(a, dtype=np.float32, copy=True, order="C") for a in c]
        if len(h) != len(c):
            raise ValueError(f"h, c: expected the same number of arrays, got {len(h)} and {len(c)}")
        self.h, self.c = h, c
        self.signature = None if signature is None else tuple(tuple(s) for s in signature)

    def __repr__(self):
        shapes = ", ".join(f"h{a.shape}/c{b.shape}" for a, b in zip(self.h, self.c))
        return f"State([{shapes}])"

    def __eq__(self, other):
        if not isinstance(other, State):
            return NotImplemented
        return (self.signature == other.signature and len(self.h) == len(other.h)
                and all(np.array_equal(a, b) for a, b in zip(self.h + self.c, other.h + other.c)))

    def copy(self) -> "State":
        return State(self.h, self.c, self.signature)

    def to_bytes(self) -> bytes:
        """Serialise exactly: a versioned header naming the model's shape, then the raw floats."""
        meta = {
            "h": [list(a.shape) for a in self.h],
            "c": [list(a.shape) for a in self.c],
            "signature": None if self.signature is None else [list(s) for s in self.signature],
        }
        text = json.dumps(meta, separators=(",", ":")).encode()
        body = b"".join(a.astype("<f4", copy=False).tobytes() for a in self.h + self.c)
        return _HEADER.pack(_MAGIC, _VERSION, len(text)) + text + body

    @classmethod
    def from_bytes(cls, data: Union[bytes, bytearray, memoryview]) -> "State":
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
        if version != _VERSION:
            raise ValueError(f"data: State format version {version} is not supported (expected {_VERSION})")
        if n_json > _MAX_JSON or _HEADER.size + n_json > len(data):
            raise ValueError("data: truncated or corrupt State header")
        try:
            meta = json.loads(bytes(data[_HEADER.size:_HEADER.size + n_json]))
            shapes = [tuple(int(d) for d in s) for s in meta["h"] + meta["c"]]
            n_h = len(meta["h"])
            signature = meta["signature"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"data: corrupt State header ({exc})") from None
        if len(shapes) > _MAX_ARRAYS or n_h * 2 != len(shapes) or any(
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
            return cls(arrays[:n_h], arrays[n_h:], signature)
        except TypeError as exc:
            raise ValueError(f"data: corrupt State signature ({exc})") from None
