"""The framework-neutral description of a network: what every loader produces.

A network is a stack of :class:`LSTMLayer` objects, optionally followed by one
:class:`Dense` head.  Weights are held in PyTorch's ``nn.LSTM`` layout (rows
stacked by gate in the order i, f, g, o), because that layout is the one users
can most easily produce by hand; the compute side repacks them once, in
:mod:`fastlstm._packing`, into the layout the kernels want.

All classes here are immutable and validate their arguments on construction,
so a malformed model is refused with a message naming the bad weight before
anything reaches compiled code.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional, Sequence, Tuple

import numpy as np

#: Activations the LSTM cell supports, by name.
#: ``hard_sigmoid`` is Keras 3's ``clip(x/6 + 0.5, 0, 1)``;
#: ``hard_sigmoid_keras2`` is Keras 1/2's ``clip(0.2*x + 0.5, 0, 1)``.
CELL_ACTIVATIONS = ("sigmoid", "tanh", "hard_sigmoid", "hard_sigmoid_keras2", "relu", "linear")

#: Activations a dense head supports.
HEAD_ACTIVATIONS = ("linear", "sigmoid", "tanh", "relu", "softmax")

#: How a bidirectional layer combines its two directions (Keras ``merge_mode``;
#: PyTorch always concatenates).
MERGE_MODES = ("concat", "sum", "mul", "ave")


def _as_float32_matrix(name, value, ndim):
    """Return ``value`` as a read-only C-contiguous float32 array, or raise naming ``name``."""
    try:
        arr = np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - e.g. a ragged list: whatever numpy raises, the input is not numeric
        raise TypeError(f"{name}: expected a numeric array, got {type(value).__name__} ({exc})") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty array, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    arr.setflags(write=False)
    return arr


def _same(a: Any, b: Any) -> bool:
    """Value equality through arrays (same shape and values) and tuples of them."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


class _ArrayValue:
    """Equality by value and a short repr for the frozen dataclasses below, which hold arrays.

    The generated ``__eq__`` would compare the arrays element-wise and raise on two equal
    objects, and the generated ``__repr__`` would print every weight.  Fields declared with
    ``compare=False`` (a weight's ``name``) do not count.  Unhashable, like the arrays inside.
    """

    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(_same(getattr(self, f.name), getattr(other, f.name))
                   for f in fields(self) if f.compare)  # type: ignore[arg-type]

    def describe(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.describe()


@dataclass(frozen=True, eq=False, repr=False)
class LSTMWeights(_ArrayValue):
    """One direction of one LSTM layer, in PyTorch's layout (gate rows i, f, g, o).

    Parameters
    ----------
    weight_ih : array (4H, I)
        Input-to-gates weights.
    weight_hh : array (4H, R)
        Recurrent weights; ``R`` is ``H``, or ``P`` when ``weight_hr`` is given.
    bias_ih, bias_hh : array (4H,), optional
        The two biases; either may be omitted (treated as zeros).  They are
        summed once when the model is packed.
    weight_hr : array (P, H), optional
        Projection of the hidden state (PyTorch ``proj_size``): ``h = weight_hr @ (o * act(c))``.
    """

    weight_ih: np.ndarray
    weight_hh: np.ndarray
    bias_ih: Optional[np.ndarray] = None
    bias_hh: Optional[np.ndarray] = None
    weight_hr: Optional[np.ndarray] = None
    name: str = field(default="lstm", compare=False)

    def __post_init__(self):
        n = self.name
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("weight_ih", _as_float32_matrix(f"{n}.weight_ih", self.weight_ih, 2))
        set_("weight_hh", _as_float32_matrix(f"{n}.weight_hh", self.weight_hh, 2))
        rows = self.weight_ih.shape[0]
        if rows % 4:
            raise ValueError(f"{n}.weight_ih: expected 4*hidden_size rows, got shape {self.weight_ih.shape}")
        hidden = rows // 4
        if self.weight_hr is not None:
            set_("weight_hr", _as_float32_matrix(f"{n}.weight_hr", self.weight_hr, 2))
            if self.weight_hr.shape[1] != hidden:
                raise ValueError(
                    f"{n}.weight_hr: expected shape (proj_size, {hidden}), got {self.weight_hr.shape}")
        rec = self.output_size
        if self.weight_hh.shape != (rows, rec):
            raise ValueError(f"{n}.weight_hh: expected shape ({rows}, {rec}), got {self.weight_hh.shape}")
        for key in ("bias_ih", "bias_hh"):
            value = getattr(self, key)
            if value is not None:
                value = _as_float32_matrix(f"{n}.{key}", value, 1)
                if value.shape != (rows,):
                    raise ValueError(f"{n}.{key}: expected shape ({rows},), got {value.shape}")
                set_(key, value)

    @property
    def hidden_size(self) -> int:
        return self.weight_ih.shape[0] // 4

    @property
    def input_size(self) -> int:
        return self.weight_ih.shape[1]

    @property
    def output_size(self) -> int:
        """Width of ``h``: the projection size if there is one, else the hidden size."""
        return self.weight_hr.shape[0] if self.weight_hr is not None else self.hidden_size

    def describe(self) -> str:
        biases = sum(b is not None for b in (self.bias_ih, self.bias_hh))
        proj = f", proj_size={self.output_size}" if self.weight_hr is not None else ""
        return f"LSTMWeights({self.name!r}: {self.input_size} -> {self.hidden_size}{proj}, {biases} bias vector(s))"


@dataclass(frozen=True, eq=False, repr=False)
class LSTMLayer(_ArrayValue):
    """One LSTM layer: one direction, or two for a bidirectional layer.

    Parameters
    ----------
    directions : sequence of LSTMWeights
        ``(forward,)`` or ``(forward, backward)``.
    activation : str
        The candidate and cell-output activation (Keras ``activation``), one of
        :data:`CELL_ACTIVATIONS`; ``"tanh"`` for PyTorch.
    recurrent_activation : str
        The i, f, o gate activation (Keras ``recurrent_activation``); ``"sigmoid"`` for PyTorch.
    merge_mode : str
        How a bidirectional layer combines its directions, one of :data:`MERGE_MODES`.
    go_backwards : bool
        Keras ``go_backwards`` on a unidirectional layer: the layer reads the
        sequence from last to first and returns its outputs in that reversed order.
    """

    directions: Tuple[LSTMWeights, ...]
    activation: str = "tanh"
    recurrent_activation: str = "sigmoid"
    merge_mode: str = "concat"
    go_backwards: bool = False

    def __post_init__(self):
        dirs = tuple(self.directions)
        object.__setattr__(self, "directions", dirs)
        if len(dirs) not in (1, 2) or not all(isinstance(d, LSTMWeights) for d in dirs):
            raise TypeError("directions: expected one or two LSTMWeights (forward[, backward])")
        first = dirs[0]
        for d in dirs[1:]:
            if (d.input_size, d.hidden_size, d.output_size) != (first.input_size, first.hidden_size, first.output_size):
                raise ValueError(
                    "directions: forward and backward weights differ in shape "
                    f"({first.input_size},{first.hidden_size},{first.output_size}) vs "
                    f"({d.input_size},{d.hidden_size},{d.output_size})")
        for key in ("activation", "recurrent_activation"):
            if getattr(self, key) not in CELL_ACTIVATIONS:
                raise ValueError(f"{key}: {getattr(self, key)!r} is not supported; expected one of {CELL_ACTIVATIONS}")
        if self.merge_mode not in MERGE_MODES:
            raise ValueError(f"merge_mode: {self.merge_mode!r} is not supported; expected one of {MERGE_MODES}")
        if self.go_backwards and len(dirs) == 2:
            raise ValueError("go_backwards: only meaningful for a unidirectional layer")

    @property
    def bidirectional(self) -> bool:
        return len(self.directions) == 2

    @property
    def input_size(self) -> int:
        return self.directions[0].input_size

    @property
    def hidden_size(self) -> int:
        return self.directions[0].hidden_size

    @property
    def proj_size(self) -> int:
        """0 when the layer has no projection (PyTorch's convention)."""
        w = self.directions[0].weight_hr
        return 0 if w is None else w.shape[0]

    @property
    def output_size(self) -> int:
        """Width of this layer's output sequence (after merging directions)."""
        width = self.directions[0].output_size
        return 2 * width if self.bidirectional and self.merge_mode == "concat" else width

    @property
    def streamable(self) -> bool:
        """Whether the layer can run one step at a time (it needs no future input)."""
        return not self.bidirectional and not self.go_backwards

    def describe(self) -> str:
        parts = [f"LSTM({self.input_size} -> {self.hidden_size}"]
        if self.proj_size:
            parts.append(f", proj_size={self.proj_size}")
        if self.bidirectional:
            parts.append(f", bidirectional, merge_mode={self.merge_mode!r}")
        if self.go_backwards:
            parts.append(", go_backwards")
        if (self.activation, self.recurrent_activation) != ("tanh", "sigmoid"):
            parts.append(f", activation={self.activation!r}, recurrent_activation={self.recurrent_activation!r}")
        return "".join(parts) + ")"


@dataclass(frozen=True, eq=False, repr=False)
class Dense(_ArrayValue):
    """A dense head applied at every time step: ``y = activation(h @ weight.T + bias)``.

    Parameters
    ----------
    weight : array (O, I)
        PyTorch ``nn.Linear`` layout.
    bias : array (O,), optional
    activation : str
        One of :data:`HEAD_ACTIVATIONS`.
    """

    weight: np.ndarray
    bias: Optional[np.ndarray] = None
    activation: str = "linear"

    def __post_init__(self):
        object.__setattr__(self, "weight", _as_float32_matrix("head.weight", self.weight, 2))
        if self.bias is not None:
            bias = _as_float32_matrix("head.bias", self.bias, 1)
            if bias.shape != (self.weight.shape[0],):
                raise ValueError(f"head.bias: expected shape ({self.weight.shape[0]},), got {bias.shape}")
            object.__setattr__(self, "bias", bias)
        if self.activation not in HEAD_ACTIVATIONS:
            raise ValueError(f"head activation: {self.activation!r} is not supported; "
                             f"expected one of {HEAD_ACTIVATIONS}")

    @property
    def input_size(self) -> int:
        return self.weight.shape[1]

    @property
    def output_size(self) -> int:
        return self.weight.shape[0]

    def describe(self) -> str:
        return f"Dense({self.input_size} -> {self.output_size}, activation={self.activation!r})"


def check_stack(layers: Sequence[LSTMLayer], head: Optional[Dense]) -> Tuple[Tuple[LSTMLayer, ...], Optional[Dense]]:
    """Validate that ``layers`` and ``head`` chain together; return them as a tuple and the head."""
    layers = tuple(layers)
    if not layers:
        raise ValueError("layers: a model needs at least one LSTM layer")
    for k, layer in enumerate(layers):
        if not isinstance(layer, LSTMLayer):
            raise TypeError(f"layers[{k}]: expected an LSTMLayer, got {type(layer).__name__}")
        if k and layer.input_size != layers[k - 1].output_size:
            raise ValueError(
                f"layers[{k}]: input size {layer.input_size} does not match the previous layer's "
                f"output size {layers[k - 1].output_size}")
    if head is not None:
        if not isinstance(head, Dense):
            raise TypeError(f"head: expected a Dense, got {type(head).__name__}")
        if head.input_size != layers[-1].output_size:
            raise ValueError(
                f"head: input size {head.input_size} does not match the last LSTM layer's "
                f"output size {layers[-1].output_size}")
    return layers, head
