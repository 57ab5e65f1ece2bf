"""A small, strict safetensors reader and writer (no dependency on the safetensors package).

Layout: ``u64 little-endian N`` | ``N bytes of UTF-8 JSON header`` | data buffer.  The
header maps each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}``,
offsets relative to the start of the data buffer, plus an optional ``__metadata__``
str -> str map.  We validate everything the reference implementation does (header
size cap, dtype, ``end - begin == numel * itemsize``, tensors tiling the buffer with no
gap, overlap or trailing bytes) and a little more (duplicate JSON keys, non-integer
shapes), because a header is untrusted input that decides how much memory we touch.
"""

from __future__ import annotations

import json
import struct
from typing import Dict

import numpy as np

from ._common import parse_json
from ._limits import Budget, shown

#: The reference implementation's cap on the JSON header (the parse is also charged to the budget).
MAX_HEADER_BYTES = 100_000_000
#: Dimensions and the largest extent of one tensor (NumPy cannot go beyond 64 dimensions).
_MAX_DIMS = 32
_MAX_EXTENT = 1 << 48

_DTYPES: Dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {np.dtype("<f8"): "F64", np.dtype("<f4"): "F32", np.dtype("<f2"): "F16"}


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {shown(k)}")
        out[k] = v
    return out


def _reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def looks_like_safetensors(head: bytes) -> bool:
    """Content sniff: an 8-byte length, then the header's opening ``{``.  Deliberately loose, so
    a damaged header (absurd length, bad JSON) reaches the parser and gets a precise error."""
    return len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] >= 2


def read_safetensors(data: bytes, source: str, budget=None):
    """Parse ``data``; return ``(tensors, metadata, data_start)``.

    ``tensors`` maps name -> NumPy array (a copy, in header order; BF16 widened to
    float32), ``metadata`` is the ``__metadata__`` dict (empty if absent) and
    ``data_start`` the file offset of the data buffer.  The parsed header and the tensors
    are charged to ``budget`` (by default, the budget of a file of ``len(data)`` bytes).
    """
    budget = Budget(len(data), source) if budget is None else budget
    if len(data) < 8:
        raise ValueError(f"{source}: file too short for a safetensors header ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"{source}: safetensors header claims {n} bytes (limit {MAX_HEADER_BYTES})")
    if 8 + n > len(data):
        raise ValueError(
            f"{source}: safetensors header claims {n} bytes but the file has {len(data) - 8} after "
            "the length field (truncated?)"
        )
    header = parse_json(
        data[8 : 8 + n],
        "the safetensors header",
        source,
        budget,
        object_pairs_hook=_no_duplicates,
        parse_constant=_reject_constant,
    )
    if not isinstance(header, dict):
        raise ValueError(f"{source}: safetensors header must be a JSON object")

    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ValueError(f"{source}: safetensors __metadata__ must map strings to strings")

    start = 8 + n
    buf_len = len(data) - start
    entries = []
    for name, info in header.items():
        where = f"{source}: tensor {shown(name)}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"{where}: header entry must have exactly dtype, shape and data_offsets")
        dtype_name, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype_name not in _DTYPES:
            raise ValueError(f"{where}: unsupported dtype {shown(dtype_name)}")
        if (
            not isinstance(shape, list)
            or len(shape) > _MAX_DIMS
            or not all(type(d) is int and 0 <= d < _MAX_EXTENT for d in shape)
        ):
            raise ValueError(f"{where}: shape must be a list of non-negative integers, got {shown(shape)}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise ValueError(f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, got {shown(offsets)}")
        numel = 1
        for d in shape:
            numel *= d
        dtype = _DTYPES[dtype_name]
        if offsets[1] - offsets[0] != numel * dtype.itemsize:
            raise ValueError(
                f"{where}: data_offsets span {offsets[1] - offsets[0]} bytes but shape {shape} "
                f"of {dtype_name} needs {numel * dtype.itemsize}"
            )
        if offsets[1] > buf_len:
            raise ValueError(f"{where}: data ends at byte {offsets[1]} of a {buf_len}-byte buffer (truncated?)")
        budget.charge(numel * (4 if dtype_name == "BF16" else dtype.itemsize), f"tensor {shown(name)}")
        entries.append((offsets[0], offsets[1], name, dtype_name, tuple(shape)))

    # The tensors must tile the buffer exactly: no overlap (two names aliasing the same
    # bytes), no gap and no trailing bytes (where unchecked data could hide).
    pos = 0
    for begin, end, name, _, _ in sorted(entries):
        if begin != pos:
            kind = "overlaps the previous tensor" if begin < pos else f"leaves a gap at byte {pos}"
            raise ValueError(f"{source}: tensor {shown(name)} {kind}; tensors must tile the data buffer")
        pos = end
    if pos != buf_len:
        raise ValueError(f"{source}: {buf_len - pos} bytes after the last tensor; the data buffer must end there")

    tensors = {}
    for begin, end, name, dtype_name, shape in entries:
        dtype = _DTYPES[dtype_name]
        arr = np.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=start + begin)
        arr = arr.reshape(shape).copy()
        if dtype_name == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = arr.astype(arr.dtype.newbyteorder("="), copy=False)
    return tensors, metadata, start


def bf16_bits(arr) -> np.ndarray:
    """The bfloat16 bit patterns (uint16) of float32 ``arr``, rounded to nearest, ties to even.

    ValueError when a finite value rounds to infinity (beyond bfloat16's largest, about 3.39e38)."""
    bits = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32)
    rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    if np.any((rounded & 0x7F80) == 0x7F80):  # an all-ones exponent: infinity (the inputs are finite)
        raise ValueError("a value is too large for bfloat16 (it rounds to infinity)")
    return rounded


def encode_safetensors(tensors, metadata=None, bf16=()) -> bytes:
    """Serialise ``tensors`` (name -> float NumPy array) with optional str -> str ``metadata``.

    The tensors named in ``bf16`` are stored as BF16, rounded to nearest even (:func:`bf16_bits`);
    :func:`read_safetensors` widens them back to float32 exactly, so a tensor whose values are
    already bfloat16 values round-trips bit for bit.  Tensors are written in name order,
    C-contiguous and little-endian, and the header is padded with spaces so the data buffer
    starts 8-byte aligned, as the reference writer does.
    """
    header = {}
    chunks = []
    pos = 0
    for name in sorted(tensors):
        arr = np.asarray(tensors[name])
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder != "|" else arr.dtype
        if dtype not in _NAMES:
            raise TypeError(f"tensors[{shown(name)}]: dtype {arr.dtype} cannot be written (float16/32/64 only)")
        if name in bf16:
            try:
                raw, kind = bf16_bits(arr).astype("<u2").tobytes(), "BF16"
            except ValueError as exc:
                raise ValueError(f"tensors[{shown(name)}]: {exc}") from None
        else:
            raw, kind = np.ascontiguousarray(arr, dtype=dtype).tobytes(), _NAMES[dtype]
        header[name] = {"dtype": kind, "shape": list(arr.shape), "data_offsets": [pos, pos + len(raw)]}
        chunks.append(raw)
        pos += len(raw)
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("metadata: keys and values must be str")
        header = {"__metadata__": dict(metadata), **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)
