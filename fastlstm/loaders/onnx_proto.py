"""A small, defensive reader of ONNX protobuf files (no ``onnx`` or ``protobuf`` package needed).

Only the messages a model needs are decoded: ModelProto, OperatorSetIdProto,
GraphProto, NodeProto, AttributeProto, TensorProto, ValueInfoProto and the
tensor part of TypeProto.  Everything else is skipped by its wire type.  Every
length, count and size is checked against the bytes that are really there and
against fixed caps before anything is allocated, so a truncated, fuzzed or
hostile file raises ``ValueError`` instead of exhausting memory.  Subgraph
attributes (``Loop``/``Scan``/``If`` bodies) are kept as undecoded bytes: a
graph that needs them is refused by name later, so the reader never recurses.

Field numbers follow ``onnx/onnx.proto3``.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

#: Largest file accepted (protobuf itself cannot exceed 2 GiB; weights beyond it are external data).
MAX_FILE_BYTES = 2**31
#: Largest tensor, in elements, in the file or in external data.
MAX_TENSOR_ELEMENTS = 2**28
#: Caps on repeated fields: a model with more nodes than this is not an LSTM network.
MAX_NODES = 100_000
MAX_DIMS = 16

# TensorProto.DataType -> numpy dtype (as stored: little-endian)
DTYPES = {
    1: np.float32,
    2: np.uint8,
    3: np.int8,
    4: np.uint16,
    5: np.int16,
    6: np.int32,
    7: np.int64,
    9: np.bool_,
    10: np.float16,
    11: np.float64,
    12: np.uint32,
    13: np.uint64,
}
BFLOAT16 = 16
DTYPE_NAMES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "string",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    14: "complex64",
    15: "complex128",
    16: "bfloat16",
}


class ProtoError(ValueError):
    """The bytes are not a well-formed ONNX protobuf message (the caller adds the file name)."""


# --- wire format -------------------------------------------------------------------


def _varint(buf, pos, end):
    result = shift = 0
    while True:
        if pos >= end:
            raise ProtoError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtoError("varint longer than 10 bytes")


def fields(buf, start=0, end=None):
    """Yield ``(field_number, wire_type, value)`` over one message's bytes.

    ``value`` is an int for varints and fixed-size fields, and a ``(start, end)`` pair into
    ``buf`` for length-delimited ones (no copy)."""
    end = len(buf) if end is None else end
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtoError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 1:
            if pos + 8 > end:
                raise ProtoError("truncated fixed64 field")
            value, pos = int.from_bytes(buf[pos : pos + 8], "little"), pos + 8
        elif wire == 5:
            if pos + 4 > end:
                raise ProtoError("truncated fixed32 field")
            value, pos = int.from_bytes(buf[pos : pos + 4], "little"), pos + 4
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if length > end - pos:
                raise ProtoError(f"field {number} declares {length} bytes but only {end - pos} remain")
            value, pos = (pos, pos + length), pos + length
        else:  # groups (3, 4) are proto2 only and never used by ONNX; 6, 7 do not exist
            raise ProtoError(f"unsupported wire type {wire} (field {number})")
        yield number, wire, value


def _signed64(v):
    if not isinstance(v, int):
        raise ProtoError("an integer field has a length-delimited wire type")
    return v - (1 << 64) if v >= 1 << 63 else v


def _span(value):
    """A length-delimited field's (start, end); a field of another wire type where a message or
    string belongs is a malformed file."""
    if not isinstance(value, tuple):
        raise ProtoError("a message or string field has a numeric wire type")
    return value


def _sub(buf, value):
    """The fields of an embedded message."""
    return fields(buf, *_span(value))


def _bytes(buf, value):
    start, end = _span(value)
    return bytes(buf[start:end])


def _text(buf, span):
    try:
        return _bytes(buf, span).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtoError("a string field is not valid UTF-8") from None


def _expect(wire, want, what):
    if wire != want:
        raise ProtoError(f"{what} has wire type {wire}, expected {want}")


def _ints(buf, wire, value, out, what):
    """Append a repeated int64 field, packed (wire 2) or not (wire 0)."""
    if wire == 0:
        out.append(_signed64(value))
    elif wire == 2:
        pos, end = value
        while pos < end:
            v, pos = _varint(buf, pos, end)
            out.append(_signed64(v))
            if len(out) > MAX_TENSOR_ELEMENTS:
                raise ProtoError(f"{what}: too many values")
    else:
        raise ProtoError(f"{what} has wire type {wire}")


def _floats(buf, wire, value, out, what, width=4):
    """Append a repeated float (width 4, wire 5) or double (width 8, wire 1) field, packed or not."""
    code = "<f" if width == 4 else "<d"
    if wire == (5 if width == 4 else 1):
        out.append(struct.unpack(code, value.to_bytes(width, "little"))[0])
    elif wire == 2:
        pos, end = value
        if (end - pos) % width:
            raise ProtoError(f"{what}: packed length {end - pos} is not a multiple of {width}")
        out.extend(np.frombuffer(buf[pos:end], dtype=code).tolist())
    else:
        raise ProtoError(f"{what} has wire type {wire}")


# --- messages ------------------------------------------------------------------------


@dataclass
class Tensor:
    name: str
    dims: Tuple[int, ...]
    data_type: int
    raw: Optional[Tuple[int, int]] = None  # span of raw_data in the file
    values: Optional[list] = None  # typed repeated field values, when not raw
    external: Optional[Dict[str, str]] = None  # external_data entries when data_location == EXTERNAL


@dataclass
class Attribute:
    name: str
    type: int = 0
    f: float = 0.0
    i: int = 0
    s: bytes = b""
    t: Optional[Tensor] = None
    floats: list = field(default_factory=list)
    ints: list = field(default_factory=list)
    strings: list = field(default_factory=list)
    has_graph: bool = False
    ref_attr_name: str = ""

    def value(self):
        """The value by the declared type (FLOAT=1, INT=2, STRING=3, TENSOR=4, FLOATS=6, INTS=7, STRINGS=8)."""
        return {1: self.f, 2: self.i, 3: self.s, 4: self.t, 6: self.floats, 7: self.ints, 8: self.strings}.get(
            self.type
        )


@dataclass
class Node:
    op_type: str
    inputs: List[str]
    outputs: List[str]
    name: str = ""
    domain: str = ""
    attributes: Dict[str, Attribute] = field(default_factory=dict)


@dataclass
class ValueInfo:
    name: str
    elem_type: int = 0
    shape: Optional[Tuple] = None  # entries: int, str (a dim_param) or None (unknown)
    kind: str = "tensor"  # "tensor", or the other TypeProto kind found


@dataclass
class Graph:
    nodes: List[Node]
    initializers: Dict[str, Tensor]
    inputs: List[ValueInfo]
    outputs: List[ValueInfo]
    has_sparse_initializers: bool = False


@dataclass
class ModelFile:
    ir_version: int
    opsets: Dict[str, int]
    graph: Graph
    producer: str = ""
    has_functions: bool = False


def _tensor(buf, span):
    t = Tensor(name="", dims=(), data_type=0)
    dims, values = [], []
    location, external, has_values = 0, {}, False
    for number, wire, value in _sub(buf, span):
        if number == 1:
            _ints(buf, wire, value, dims, "TensorProto.dims")
            if len(dims) > MAX_DIMS:
                raise ProtoError(f"a tensor declares more than {MAX_DIMS} dimensions")
        elif number == 2:
            _expect(wire, 0, "TensorProto.data_type")
            t.data_type = value
        elif number == 8:
            _expect(wire, 2, "TensorProto.name")
            t.name = _text(buf, value)
        elif number == 9:
            _expect(wire, 2, "TensorProto.raw_data")
            t.raw = value
        elif number == 4:
            _floats(buf, wire, value, values, "TensorProto.float_data")
            has_values = True
        elif number == 10:
            _floats(buf, wire, value, values, "TensorProto.double_data", width=8)
            has_values = True
        elif number in (5, 7, 11):  # int32_data, int64_data, uint64_data
            _ints(buf, wire, value, values, "TensorProto int data")
            has_values = True
        elif number == 6:
            raise ProtoError("string tensors are not model weights")
        elif number == 3:
            raise ProtoError("segmented tensors (TensorProto.segment) are not supported")
        elif number == 13:
            _expect(wire, 2, "TensorProto.external_data")
            key = val = ""
            for n2, w2, v2 in _sub(buf, value):
                if n2 == 1 and w2 == 2:
                    key = _text(buf, v2)
                elif n2 == 2 and w2 == 2:
                    val = _text(buf, v2)
            external[key] = val
        elif number == 14:
            _expect(wire, 0, "TensorProto.data_location")
            location = value
    t.dims = tuple(dims)
    if any(d < 0 for d in t.dims):
        raise ProtoError(f"tensor {t.name!r} has a negative dimension {t.dims}")
    count = 1
    for d in t.dims:
        count *= d
        if count > MAX_TENSOR_ELEMENTS:
            raise ProtoError(f"tensor {t.name!r} declares dimensions {t.dims} (over {MAX_TENSOR_ELEMENTS} elements)")
    if location == 1:
        t.external = external
    elif has_values:
        t.values = values
    return t


def _attribute(buf, span):
    a = Attribute(name="")
    for number, wire, value in _sub(buf, span):
        if number == 1:
            a.name = _text(buf, value)
        elif number == 20:
            a.type = _signed64(value)
        elif number == 2:
            a.f = struct.unpack("<f", value.to_bytes(4, "little"))[0] if wire == 5 else 0.0
        elif number == 3:
            a.i = _signed64(value)
        elif number == 4:
            a.s = _bytes(buf, value)
        elif number == 5:
            a.t = _tensor(buf, value)
        elif number in (6, 11):
            a.has_graph = True
        elif number == 7:
            _floats(buf, wire, value, a.floats, "AttributeProto.floats")
        elif number == 8:
            _ints(buf, wire, value, a.ints, "AttributeProto.ints")
        elif number == 9:
            a.strings.append(_bytes(buf, value))
        elif number == 21:
            a.ref_attr_name = _text(buf, value)
    return a


def _node(buf, span):
    n = Node(op_type="", inputs=[], outputs=[])
    for number, wire, value in _sub(buf, span):
        if number in (1, 2, 3, 4, 7):
            _expect(wire, 2, "NodeProto string field")
            text = _text(buf, value)
            if number == 1:
                n.inputs.append(text)
            elif number == 2:
                n.outputs.append(text)
            elif number == 3:
                n.name = text
            elif number == 4:
                n.op_type = text
            else:
                n.domain = text
        elif number == 5:
            _expect(wire, 2, "NodeProto.attribute")
            a = _attribute(buf, value)
            if a.name in n.attributes:
                raise ProtoError(f"node {n.name or n.op_type!r} repeats attribute {a.name!r}")
            n.attributes[a.name] = a
    return n


def _value_info(buf, span):
    v = ValueInfo(name="")
    for number, wire, value in _sub(buf, span):
        if number == 1:
            v.name = _text(buf, value)
        elif number == 2:
            _expect(wire, 2, "ValueInfoProto.type")
            for n2, w2, v2 in _sub(buf, value):
                if n2 == 1 and w2 == 2:
                    v.elem_type, v.shape = _tensor_type(buf, v2)
                elif n2 in (4, 5, 8, 9):
                    v.kind = {4: "sequence", 5: "map", 8: "sparse tensor", 9: "optional"}[n2]
    return v


def _tensor_type(buf, span):
    elem, shape = 0, None
    for number, wire, value in _sub(buf, span):
        if number == 1 and wire == 0:
            elem = value
        elif number == 2 and wire == 2:
            shape = []
            for n2, w2, v2 in _sub(buf, value):
                if n2 != 1 or w2 != 2:
                    continue
                if len(shape) >= MAX_DIMS:
                    raise ProtoError(f"a value declares more than {MAX_DIMS} dimensions")
                dim = None
                for n3, w3, v3 in _sub(buf, v2):
                    if n3 == 1 and w3 == 0:
                        dim = _signed64(v3)
                    elif n3 == 2 and w3 == 2:
                        dim = _text(buf, v3)
                shape.append(dim)
            shape = tuple(shape)
    return elem, shape


def _graph(buf, span):
    g = Graph(nodes=[], initializers={}, inputs=[], outputs=[])
    for number, wire, value in _sub(buf, span):
        if wire != 2:
            continue
        if number == 1:
            if len(g.nodes) >= MAX_NODES:
                raise ProtoError(f"the graph has more than {MAX_NODES} nodes")
            g.nodes.append(_node(buf, value))
        elif number == 5:
            t = _tensor(buf, value)
            if t.name in g.initializers:
                raise ProtoError(f"initializer {t.name!r} is defined twice")
            g.initializers[t.name] = t
        elif number == 15:
            g.has_sparse_initializers = True
        elif number == 11:
            g.inputs.append(_value_info(buf, value))
        elif number == 12:
            g.outputs.append(_value_info(buf, value))
    return g


def looks_like_onnx(data) -> bool:
    """Cheap content sniff: the top-level fields parse as a ModelProto that has a graph and an IR version."""
    if not data or data[0] != 0x08:  # ir_version (field 1, varint) comes first in every serializer
        return False
    try:
        seen = {number for number, _, _ in fields(data)}
    except ProtoError:
        return False
    return 1 in seen and 7 in seen


def read_model(data) -> ModelFile:
    """Decode a whole ONNX file; raises :class:`ProtoError` (a ValueError) on malformed bytes."""
    if len(data) > MAX_FILE_BYTES:
        raise ProtoError(f"the file has {len(data)} bytes (limit {MAX_FILE_BYTES})")
    buf = memoryview(data)
    ir_version, opsets, graph, producer, functions = 0, {}, None, "", False
    for number, wire, value in fields(buf):
        if number == 1 and wire == 0:
            ir_version = value
        elif number == 2 and wire == 2:
            producer = _text(buf, value)
        elif number == 7 and wire == 2:
            if graph is not None:
                raise ProtoError("the model has two graphs")
            graph = _graph(buf, value)
        elif number == 8 and wire == 2:
            domain, version = "", 0
            for n2, w2, v2 in _sub(buf, value):
                if n2 == 1 and w2 == 2:
                    domain = _text(buf, v2)
                elif n2 == 2 and w2 == 0:
                    version = _signed64(v2)
            opsets[domain] = version
        elif number == 25:
            functions = True
    if graph is None:
        raise ProtoError("the model has no graph")
    return ModelFile(ir_version, opsets, graph, producer, functions)


# --- tensor data ---------------------------------------------------------------------


def tensor_array(buf, t: Tensor, folder: Optional[str]) -> np.ndarray:
    """The tensor's values as a NumPy array (float16/bfloat16 widened to float32).

    External data must lie inside ``folder`` (the model's directory): absolute paths,
    ``..`` and links that leave it are refused, as is any external data for a model
    given as bytes (no folder)."""
    count = int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1
    label = f"tensor {t.name!r}"
    if t.data_type == BFLOAT16:
        bits = _tensor_bits(buf, t, folder, np.uint16, count, label)
        return (bits.astype(np.uint32) << 16).view(np.float32).reshape(t.dims)
    dtype = DTYPES.get(t.data_type)
    if dtype is None:
        raise ProtoError(
            f"{label} has data type {DTYPE_NAMES.get(t.data_type, t.data_type)}, which a model weight cannot have"
        )
    arr = _tensor_bits(buf, t, folder, dtype, count, label)
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    return arr.reshape(t.dims)


def _tensor_bits(buf, t, folder, dtype, count, label):
    itemsize = np.dtype(dtype).itemsize
    if t.external is not None:
        raw = read_external(t.external, folder, count * itemsize, label)
        return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype, copy=False)
    if t.raw is not None:
        start, end = t.raw
        if end - start != count * itemsize:
            raise ProtoError(
                f"{label} declares shape {t.dims} ({count * itemsize} bytes) but holds {end - start} bytes"
            )
        return np.frombuffer(buf[start:end], dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype, copy=False)
    values = t.values if t.values is not None else []
    if len(values) != count:
        raise ProtoError(f"{label} declares shape {t.dims} ({count} values) but holds {len(values)}")
    try:
        if dtype == np.float16:  # float16 is stored as its bits in int32_data
            return np.asarray(values, dtype=np.uint16).view(np.float16)
        return np.asarray(values, dtype=dtype)
    except (OverflowError, TypeError, ValueError):
        raise ProtoError(f"{label}: a value is out of range for its data type") from None


def read_external(info, folder, nbytes, label):
    """Read ``nbytes`` of external data described by ``info`` (location/offset/length)."""
    location = info.get("location", "")
    if folder is None:
        raise ProtoError(
            f"{label} is stored in an external file ({location!r}); load the model from its path "
            "so fastlstm knows its folder"
        )
    if not location or os.path.isabs(location) or "\\" in location or any(part == ".." for part in location.split("/")):
        raise ProtoError(
            f"{label}: external data location {location!r} is not a plain relative path inside the model's folder"
        )
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, location))
    if os.path.commonpath([root, path]) != root:
        raise ProtoError(f"{label}: external data location {location!r} leaves the model's folder")
    try:
        offset = int(info.get("offset", "0") or 0)
        length = int(info["length"]) if info.get("length") else nbytes
    except ValueError:
        raise ProtoError(f"{label}: external data offset/length are not integers") from None
    if offset < 0 or length != nbytes:
        raise ProtoError(f"{label}: external data length {length} does not match the shape ({nbytes} bytes)")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if offset + nbytes > size:
                raise ProtoError(
                    f"{label}: external file {location!r} has {size} bytes; the tensor needs {offset + nbytes}"
                )
            f.seek(offset)
            data = f.read(nbytes)
    except OSError as exc:
        raise ProtoError(f"{label}: cannot read external data {location!r} ({exc.strerror})") from None
    if len(data) != nbytes:
        raise ProtoError(f"{label}: external file {location!r} is truncated")
    return data
