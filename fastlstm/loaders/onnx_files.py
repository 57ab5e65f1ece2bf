"""ONNX files -> fastlstm models: the reader (:mod:`.onnx_proto`) and the matcher (:mod:`.onnx_graph`) together.

Neither ``onnx`` nor ONNX Runtime is needed.  A file is refused with a ``ValueError``
naming the problem when it is malformed, too large, from a custom-op domain, stores
weights outside its folder, or holds a graph that fastlstm cannot run exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ._common import STEP_OPTIONS, Spec, check_steps_option, make_spec
from .onnx_graph import GraphMatch, GraphRefused, Matcher
from .onnx_proto import ProtoError, looks_like_onnx, read_model, tensor_array

__all__ = ["OnnxRead", "looks_like_onnx", "read_onnx", "read_onnx_file", "spec_from_onnx"]

#: Default-domain opsets whose LSTM/GRU/RNN and glue ops fastlstm knows (7: LSTM as today, 14: layout).
MIN_OPSET, MAX_OPSET = 7, 24


@dataclass
class OnnxRead:
    """What :func:`read_onnx` found: the layer chain and how the graph's inputs and outputs map to it."""

    chain: tuple
    match: GraphMatch
    opset: int
    producer: str


def read_onnx(data, source, folder=None) -> OnnxRead:
    """Parse and match an ONNX model given as bytes; ``folder`` is where external data may live."""
    try:
        model = read_model(data)
    except ProtoError as exc:
        raise ValueError(f"{source}: not a readable ONNX file ({exc})") from None
    opset = model.opsets.get("", model.opsets.get("ai.onnx"))
    if opset is None:
        raise ValueError(f"{source}: the model imports no standard ONNX opset (imports: {sorted(model.opsets)})")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"{source}: opset {opset} is outside the range fastlstm reads ({MIN_OPSET}..{MAX_OPSET})")
    buf = memoryview(data)

    def tensor(proto):
        try:
            return tensor_array(buf, proto, folder)
        except ProtoError as exc:
            raise ValueError(f"{source}: {exc}") from None

    try:
        match = Matcher(model.graph, tensor).run()
    except GraphRefused as exc:
        raise ValueError(f"{source}: {exc}") from None
    return OnnxRead(match.chain, match, opset, model.producer)


def read_onnx_file(path) -> OnnxRead:
    """:func:`read_onnx` on a file: the chain, and how the graph's inputs, outputs and state map to it
    (``.match.input_axes``, ``.match.batch_first``, ``.match.state_inputs``, ...)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        return read_onnx(f.read(), path, folder_of(path))


def spec_from_onnx(data, source, folder=None) -> Spec:
    """The :class:`Spec` for an ONNX file (what ``fastlstm.load`` builds the model from)."""
    return chain_spec(read_onnx(data, source, folder).chain, source)


def chain_spec(chain, source) -> Spec:
    """A Spec holding the chain itself, its step counts within what fastlstm takes from a file."""
    for k, layer in enumerate(chain):
        for name in STEP_OPTIONS:
            value = getattr(layer, name, None)
            for v in value if isinstance(value, tuple) else (value,):
                check_steps_option(v, f"layer {k} ({type(layer).__name__}) {name}", source)
    return make_spec(list(chain), source)


def folder_of(path):
    """The folder external data of the model at ``path`` must stay in (None for file objects)."""
    if isinstance(path, (str, bytes, os.PathLike)):
        return os.path.dirname(os.path.abspath(os.fsdecode(os.fspath(path))))
    return None
