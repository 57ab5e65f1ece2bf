"""The state of a model's streams: ``h`` and ``c`` for every recurrent layer and
direction, and the buffers of the other layers that stream with state.

A :class:`State` is a plain value: copies of the arrays, plus the signature of
the model that made it, so that a state cannot silently be fed to a model of
another shape.  ``to_bytes`` / ``from_bytes`` carry it between processes or
machines exactly (float32 bit patterns, little-endian).

The byte format::

    magic b"FLSTATE\\0" | u16 version | u32 n | n bytes of JSON (shapes, signature)
    | the arrays' float32 bytes, h..., c..., then (version 3) buffers...
    | version 2 on: u32 CRC-32 of all the bytes before it

Version 3 (written now: the layer buffers of a layer chain), version 2 (h and c with a
checksum) and version 1 (h and c, no checksum) are read; :data:`_VERSIONS` and
:func:`_unframe` are the one place that knows the versions.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from typing import Optional, Sequence, Tuple, Union

import numpy as np

_MAGIC = b"FLSTATE\0"
_VERSION = 3  # what to_bytes writes
#: every version from_bytes reads -> (has layer buffers, has the CRC-32 trailer)
_VERSIONS = {1: (False, False), 2: (False, True), 3: (True, True)}
_HEADER = struct.Struct("<8sHI")  # magic, format version, JSON length
_CHECKSUM = struct.Struct("<I")  # CRC-32 (zlib.crc32) of every byte before it
_MAX_JSON = 1 << 20  # a state header is a few hundred bytes
_MAX_ARRAYS = 4096
_MAX_DIM = 1 << 40  # beyond any real batch or width; keeps the size arithmetic exact


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
        The signature of the model the state belongs to: its shapes, and its precision when that is
        not fp32 (set by fastlstm; a state is refused by a model of other shapes or precision).
    buffers : sequence of arrays, optional
    """

    __slots__ = ("h", "c", "buffers", "signature")

    def __init__(
        self, h: Sequence, c: Optional[Sequence] = None, signature: Optional[Tuple] = None, buffers: Sequence = ()
    ):
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
        return (
            self.signature == other.signature
            and len(self.h) == len(other.h)
            and len(self.buffers) == len(other.buffers)
            and all(np.array_equal(a, b) for a, b in zip(self._arrays(), other._arrays()))
        )

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
        blob = _HEADER.pack(_MAGIC, _VERSION, len(text)) + text + body
        return blob + _CHECKSUM.pack(zlib.crc32(blob))

    @classmethod
    def from_bytes(cls, data: Union[bytes, bytearray, memoryview]) -> "State":
        """Rebuild a State written by :meth:`to_bytes`; ValueError on anything malformed or corrupt.

        Version 2 and 3 blobs carry a CRC-32, so any corruption is refused; version 1 blobs (no
        checksum, written by older fastlstm) are still read, with only their structure checked.
        """
        try:
            data = memoryview(data).cast("B")
        except TypeError:
            raise TypeError(f"data: expected bytes, got {type(data).__name__}") from None
        text, body, has_buffers = _unframe(data)
        try:
            meta = json.loads(bytes(text))
            buffer_shapes = meta["buffers"] if has_buffers else []
            shapes = [tuple(s) for s in meta["h"] + meta["c"] + buffer_shapes]
            n_h = len(meta["h"])
            signature = meta["signature"]
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise ValueError(f"data: corrupt State header ({type(exc).__name__}: {str(exc)[:200]})") from None
        if (
            len(shapes) > _MAX_ARRAYS
            or n_h * 2 + len(buffer_shapes) != len(shapes)
            or not all(len(s) in (1, 2) and all(type(d) is int and 0 <= d < _MAX_DIM for d in s) for s in shapes)
        ):
            raise ValueError("data: corrupt State header (bad array shapes)")
        sizes = [math.prod(s) for s in shapes]  # exact: np.prod would wrap around at 2**63
        if 4 * sum(sizes) != len(body):
            raise ValueError(
                f"data: the State header describes {4 * sum(sizes)} bytes of arrays, the data holds {len(body)}"
            )
        arrays, offset = [], 0
        for shape, size in zip(shapes, sizes):
            arrays.append(np.frombuffer(body, dtype="<f4", count=size, offset=offset).reshape(shape))
            offset += 4 * size
        try:
            return cls(arrays[:n_h], arrays[n_h : 2 * n_h], signature, arrays[2 * n_h :])
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValueError(f"data: corrupt State signature ({type(exc).__name__}: {str(exc)[:200]})") from None


def _unframe(data):
    """Check the framing of a serialised State; return ``(header JSON bytes, array bytes, has buffers)``.

    The one place that knows the format versions (see the module docstring): a new version
    adds its entry to ``_VERSIONS`` and, if its layout differs, its case here.
    """
    if len(data) < _HEADER.size:
        raise ValueError("data: too short to be a fastlstm State")
    magic, version, n_json = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise ValueError("data: not a fastlstm State (bad magic bytes)")
    if version not in _VERSIONS:
        raise ValueError(
            f"data: State format version {version} is not supported (this fastlstm reads versions "
            f"{', '.join(map(str, sorted(_VERSIONS)))})"
        )
    has_buffers, checksummed = _VERSIONS[version]
    end = len(data)
    if checksummed:
        end -= _CHECKSUM.size
        if end < _HEADER.size:
            raise ValueError("data: truncated State (no room for its checksum)")
        (crc,) = _CHECKSUM.unpack_from(data, end)
        if zlib.crc32(data[:end]) != crc:
            raise ValueError("data: State checksum mismatch: the data is corrupt or truncated")
    if n_json > _MAX_JSON or _HEADER.size + n_json > end:
        raise ValueError("data: truncated or corrupt State header")
    return data[_HEADER.size : _HEADER.size + n_json], data[_HEADER.size + n_json : end], has_buffers


def signed(signature, precision):
    """A network's state signature with its precision: an fp32 model's is the shape signature alone
    (so the states it wrote before precisions existed still load); others end with ("precision", p)."""
    return signature if precision == "fp32" else tuple(signature) + (("precision", precision),)


def signature_precision(signature):
    """The precision a signature made by :func:`signed` records."""
    last = signature[-1] if signature else None
    return last[1] if last is not None and len(last) == 2 and last[0] == "precision" else "fp32"


def state_rows(state, layout, signature, rows, batch_size, name):
    """``state`` checked against a network's state layout and signature (fastlstm._packing.pack_chain)
    for ``rows`` streams (``batch_size`` None: one unbatched stream); returns the (rows, state
    size) float32 rows the kernels step."""
    if not isinstance(state, State):
        raise TypeError(f"{name}: expected a fastlstm.State, got {type(state).__name__}")
    if state.signature is not None and state.signature != signature:
        theirs, mine = signature_precision(state.signature), signature_precision(signature)
        if theirs != mine:
            raise ValueError(
                f"{name}: belongs to a {theirs} model and this model is {mine}; continue it with the {theirs} "
                f"model (model.with_precision({theirs!r})), or drop its signature on purpose "
                "(State(s.h, s.c, buffers=s.buffers)) to carry it across precisions"
            )
        raise ValueError(
            f"{name}: belongs to a model of another shape (layers {state.signature}, this model's are {signature})"
        )
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
        out[:, offset : offset + width] = arr.reshape(rows, width)
    return out


def state_from_rows(rows, layout, signature, batch_size):
    """A :class:`State` of the state rows (rows, state size) of a network with this layout."""
    lists = {"h": [], "c": [], "buf": []}
    for label, _, offset, width in layout:
        arr = rows[:, offset : offset + width]
        lists[label].append(arr[0] if batch_size is None else arr)
    return State(lists["h"], lists["c"], signature, lists["buf"])
