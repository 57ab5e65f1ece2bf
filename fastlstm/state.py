"""The recurrent state of a model: ``h`` and ``c`` for every layer and direction.

A :class:`State` is a plain value: copies of the arrays, plus the signature of
the model that made it, so that a state cannot silently be fed to a model of
another shape.  ``to_bytes`` / ``from_bytes`` carry it between processes or
machines exactly (float32 bit patterns, little-endian).

The byte format::

    magic b"FLSTATE\\0" | u16 version | u32 n | n bytes of JSON (shapes, signature)
    | the arrays' float32 bytes, h then c | version 2 on: u32 CRC-32 of all the bytes before it

Version 2 (written since the checksum was added) and version 1 (no checksum) are read;
:func:`_unframe` is the one place that knows the versions.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from typing import Optional, Sequence, Tuple, Union

import numpy as np

_MAGIC = b"FLSTATE\0"
_VERSION = 2                          # what to_bytes writes
_CHECKSUMMED = {1: False, 2: True}    # every version from_bytes reads -> has the CRC-32 trailer
_HEADER = struct.Struct("<8sHI")      # magic, format version, JSON length
_CHECKSUM = struct.Struct("<I")       # CRC-32 (zlib.crc32) of every byte before it
_MAX_JSON = 1 << 20                   # a state header is a few hundred bytes
_MAX_ARRAYS = 4096
_MAX_DIM = 1 << 40                    # beyond any real batch or width; keeps the size arithmetic exact


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
        """Serialise exactly: a versioned header naming the model's shape, the raw floats, a CRC-32."""
        meta = {
            "h": [list(a.shape) for a in self.h],
            "c": [list(a.shape) for a in self.c],
            "signature": None if self.signature is None else [list(s) for s in self.signature],
        }
        text = json.dumps(meta, separators=(",", ":")).encode()
        body = b"".join(a.astype("<f4", copy=False).tobytes() for a in self.h + self.c)
        blob = _HEADER.pack(_MAGIC, _VERSION, len(text)) + text + body
        return blob + _CHECKSUM.pack(zlib.crc32(blob))

    @classmethod
    def from_bytes(cls, data: Union[bytes, bytearray, memoryview]) -> "State":
        """Rebuild a State written by :meth:`to_bytes`; ValueError on anything malformed or corrupt.

        Version 2 blobs carry a CRC-32, so any corruption is refused; version 1 blobs (no
        checksum, written by older fastlstm) are still read, with only their structure checked.
        """
        try:
            data = memoryview(data).cast("B")
        except TypeError:
            raise TypeError(f"data: expected bytes, got {type(data).__name__}") from None
        text, body = _unframe(data)
        try:
            meta = json.loads(bytes(text))
            shapes = [tuple(s) for s in meta["h"] + meta["c"]]
            n_h = len(meta["h"])
            signature = meta["signature"]
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise ValueError(f"data: corrupt State header ({type(exc).__name__}: {str(exc)[:200]})") from None
        if len(shapes) > _MAX_ARRAYS or n_h * 2 != len(shapes) or not all(
                len(s) in (1, 2) and all(type(d) is int and 0 <= d < _MAX_DIM for d in s) for s in shapes):
            raise ValueError("data: corrupt State header (bad array shapes)")
        sizes = [math.prod(s) for s in shapes]  # exact: np.prod would wrap around at 2**63
        if 4 * sum(sizes) != len(body):
            raise ValueError(f"data: the State header describes {4 * sum(sizes)} bytes of arrays, the data holds "
                             f"{len(body)}")
        arrays, offset = [], 0
        for shape, size in zip(shapes, sizes):
            arrays.append(np.frombuffer(body, dtype="<f4", count=size, offset=offset).reshape(shape))
            offset += 4 * size
        try:
            return cls(arrays[:n_h], arrays[n_h:], signature)
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValueError(f"data: corrupt State signature ({type(exc).__name__}: {str(exc)[:200]})") from None


def _unframe(data):
    """Check the framing of a serialised State; return ``(header JSON bytes, array bytes)``.

    The one place that knows the format versions (see the module docstring): a new version
    adds its entry to ``_CHECKSUMMED`` and, if its layout differs, its case here.
    """
    if len(data) < _HEADER.size:
        raise ValueError("data: too short to be a fastlstm State")
    magic, version, n_json = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise ValueError("data: not a fastlstm State (bad magic bytes)")
    if version not in _CHECKSUMMED:
        raise ValueError(f"data: State format version {version} is not supported (this fastlstm reads versions "
                         f"{', '.join(map(str, sorted(_CHECKSUMMED)))})")
    end = len(data)
    if _CHECKSUMMED[version]:
        end -= _CHECKSUM.size
        if end < _HEADER.size:
            raise ValueError("data: truncated State (no room for its checksum)")
        (crc,) = _CHECKSUM.unpack_from(data, end)
        if zlib.crc32(data[:end]) != crc:
            raise ValueError("data: State checksum mismatch: the data is corrupt or truncated")
    if n_json > _MAX_JSON or _HEADER.size + n_json > end:
        raise ValueError("data: truncated or corrupt State header")
    return data[_HEADER.size:_HEADER.size + n_json], data[_HEADER.size + n_json:end]
