"""The framework-neutral description of a network: what every loader produces.

A network is a chain of typed layers, first layer first: recurrent layers
(:class:`LSTMLayer`, :class:`GRULayer`, :class:`RNNLayer`), :class:`Conv1D`,
:class:`Dense`, :class:`Activation`, the norms (:class:`BatchNorm`,
:class:`LayerNorm`), :class:`Embedding`, the poolings and the shape layers
(:class:`LastStep`, :class:`Flatten`, :class:`RepeatVector`).  Every layer maps
a sequence of feature vectors ``(T, features)`` (per batch row) to another;
:func:`check_chain` checks that the widths line up.  Layers that only pass
data through (Dropout, noise layers, ``nn.Identity``) have no class: loaders
drop them.

Weights are held in PyTorch's layouts (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``,
``nn.Linear``, ``nn.Conv1d``), because those are the layouts users can most
easily produce by hand; the compute side repacks them once, in
:mod:`fastlstm._packing`, into the layouts the kernels want.

All classes here are immutable and validate their arguments on construction,
so a malformed model is refused with a message naming the bad weight before
anything reaches compiled code.

Streaming: a layer "streams" when its output at step t depends only on inputs
up to t and it needs finite state, so that ``Model.stream`` can run it one step
at a time; each class's ``streamable`` says whether it does, and
``stream_refusal`` why not.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional, Sequence, Tuple, Union, cast

import numpy as np

#: Activations a recurrent cell supports, by name.
#: ``hard_sigmoid`` is Keras 3's ``clip(x/6 + 0.5, 0, 1)`` (= PyTorch ``nn.Hardsigmoid``);
#: ``hard_sigmoid_keras2`` is Keras 1/2's ``clip(0.2*x + 0.5, 0, 1)``.
CELL_ACTIVATIONS = ("sigmoid", "tanh", "hard_sigmoid", "hard_sigmoid_keras2", "relu", "linear")

#: Activations of :class:`Activation` and of the ``activation`` of :class:`Dense` and
#: :class:`Conv1D`.  Definitions (x one feature; ``softmax`` is over the features of a step):
#:
#: ========================  ===============================================================
#: ``linear``                x
#: ``relu``                  max(x, 0)
#: ``sigmoid``               1 / (1 + exp(-x))
#: ``tanh``                  tanh(x)
#: ``softmax``               exp(x - max) / sum(exp(x - max)) over the step's features
#: ``elu``                   x if x > 0 else alpha * (exp(x) - 1)            (alpha default 1)
#: ``selu``                  1.0507009873554805 * (x if x > 0 else 1.6732632423543772 * (exp(x) - 1))
#: ``leaky_relu``            x if x >= 0 else alpha * x   (alpha: the negative slope, default
#:                           0.01 as in PyTorch; Keras' defaults differ, loaders pass theirs)
#: ``gelu``                  x * (1 + erf(x / sqrt(2))) / 2 (PyTorch ``approximate='none'``,
#:                           Keras ``approximate=False``)
#: ``gelu_tanh``             x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) / 2
#:                           (PyTorch ``approximate='tanh'``, Keras' default ``gelu``)
#: ``silu``                  x * sigmoid(x)  (Keras ``swish``: the name ``swish`` is accepted)
#: ``softplus``              log(1 + exp(x))  (PyTorch ``nn.Softplus()`` with beta=1)
#: ``softsign``              x / (1 + |x|)
#: ``hard_sigmoid``          clip(x/6 + 0.5, 0, 1)  (Keras 3, PyTorch ``nn.Hardsigmoid``)
#: ``hard_sigmoid_keras2``   clip(0.2 x + 0.5, 0, 1)  (Keras 1/2)
#: ``prelu``                 x if x >= 0 else weight[channel] * x  (``weight``: (1,) or (features,))
#: ========================  ===============================================================
ACTIVATIONS = (
    "linear",
    "relu",
    "sigmoid",
    "tanh",
    "softmax",
    "elu",
    "selu",
    "leaky_relu",
    "gelu",
    "gelu_tanh",
    "silu",
    "softplus",
    "softsign",
    "hard_sigmoid",
    "hard_sigmoid_keras2",
    "prelu",
)

#: Activations a dense head supports (kept for the loaders written against it): all of them.
HEAD_ACTIVATIONS = ACTIVATIONS

#: Other names accepted for an activation, and the name they stand for.
ACTIVATION_ALIASES = {"swish": "silu", "identity": "linear"}

#: How a bidirectional layer combines its two directions (Keras ``merge_mode``;
#: PyTorch always concatenates).
MERGE_MODES = ("concat", "sum", "mul", "ave")

#: Token ids index the table with 32-bit ints in the kernels.
_MAX_VOCAB = 1 << 31


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


def _vector(name, value, size):
    """An optional 1-d weight of ``size`` floats (None stays None)."""
    if value is None:
        return None
    arr = _as_float32_matrix(name, value, 1)
    if arr.shape != (size,):
        raise ValueError(f"{name}: expected shape ({size},), got {arr.shape}")
    return arr


def _positive(name, value):
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a positive int, got {value!r}") from None
    if v != value or v < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return v


def _finite_float(name, value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {value!r}") from None
    if not np.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return v


def _set(obj, key, value):
    object.__setattr__(obj, key, value)  # frozen dataclasses


def _same(a: Any, b: Any) -> bool:
    """Value equality through arrays (same shape and values) and tuples of them."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


class _ArrayValue:
    """Equality by value and a short repr for the frozen dataclasses below that hold arrays.

    The generated ``__eq__`` would compare the arrays element-wise and raise on two equal
    objects, and the generated ``__repr__`` would print every weight.  Fields declared with
    ``compare=False`` (a weight's ``name``) do not count.  Unhashable, like the arrays inside.
    """

    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(_same(getattr(self, f.name), getattr(other, f.name)) for f in fields(self) if f.compare)  # type: ignore[arg-type]

    def describe(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.describe()


# ---------------------------------------------------------------------------
# Activations


@dataclass(frozen=True, eq=False, repr=False)
class Activation(_ArrayValue):
    """An element-wise (or, for softmax, per-step) activation as a layer of its own.

    Parameters
    ----------
    name : str
        One of :data:`ACTIVATIONS` (or an alias in :data:`ACTIVATION_ALIASES`),
        defined there.
    alpha : float, optional
        ``elu``'s alpha (default 1.0) or ``leaky_relu``'s negative slope (default
        0.01); refused for other activations.
    weight : array (1,) or (features,), optional
        ``prelu``'s slopes (PyTorch ``nn.PReLU.weight``, Keras ``PReLU.alpha``
        flattened); required for ``prelu`` and refused otherwise.
    """

    name: str
    alpha: Optional[float] = None
    weight: Optional[np.ndarray] = None

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise TypeError(f"activation: expected a name, got {type(self.name).__name__}")
        name = ACTIVATION_ALIASES.get(self.name, self.name)
        if name not in ACTIVATIONS:
            raise ValueError(f"activation: {self.name!r} is not supported; expected one of {ACTIVATIONS}")
        _set(self, "name", name)
        if name in ("elu", "leaky_relu"):
            default = 1.0 if name == "elu" else 0.01
            _set(self, "alpha", default if self.alpha is None else _finite_float(f"{name} alpha", self.alpha))
        elif self.alpha is not None:
            raise ValueError(f"alpha: only elu and leaky_relu take one, not {name}")
        if name == "prelu":
            if self.weight is None:
                raise ValueError("prelu: needs weight, the slope of each feature (or one shared slope)")
            w = _as_float32_matrix("prelu.weight", np.ravel(np.asarray(self.weight)), 1)
            _set(self, "weight", w)
        elif self.weight is not None:
            raise ValueError(f"weight: only prelu takes one, not {name}")

    def check_width(self, width, where):
        """Raise if this activation's weights do not fit ``width`` features."""
        if self.weight is not None and self.weight.shape[0] not in (1, width):
            raise ValueError(f"{where}: prelu weight has {self.weight.shape[0]} slopes for {width} features")

    def describe(self) -> str:
        extra = f", alpha={self.alpha:g}" if self.alpha is not None else ""
        return f"Activation({self.name!r}{extra})"


def as_activation(value, where="activation") -> Activation:
    """``value`` (a name or an :class:`Activation`) as an :class:`Activation`."""
    if isinstance(value, Activation):
        return value
    if isinstance(value, str):
        try:
            return Activation(value)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    raise TypeError(f"{where}: expected an activation name or an Activation, got {type(value).__name__}")


# ---------------------------------------------------------------------------
# Recurrent layers


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

    GATES = 4

    def __post_init__(self):
        n = self.name
        _set(self, "weight_ih", _as_float32_matrix(f"{n}.weight_ih", self.weight_ih, 2))
        _set(self, "weight_hh", _as_float32_matrix(f"{n}.weight_hh", self.weight_hh, 2))
        rows = self.weight_ih.shape[0]
        if rows % self.GATES:
            raise ValueError(f"{n}.weight_ih: expected {self.GATES}*hidden_size rows, got shape {self.weight_ih.shape}")
        hidden = rows // self.GATES
        if self.weight_hr is not None:
            _set(self, "weight_hr", _as_float32_matrix(f"{n}.weight_hr", self.weight_hr, 2))
            if self.weight_hr.shape[1] != hidden:
                raise ValueError(f"{n}.weight_hr: expected shape (proj_size, {hidden}), got {self.weight_hr.shape}")
        rec = self.output_size
        if self.weight_hh.shape != (rows, rec):
            raise ValueError(f"{n}.weight_hh: expected shape ({rows}, {rec}), got {self.weight_hh.shape}")
        for key in ("bias_ih", "bias_hh"):
            _set(self, key, _vector(f"{n}.{key}", getattr(self, key), rows))

    @property
    def hidden_size(self) -> int:
        return self.weight_ih.shape[0] // self.GATES

    @property
    def input_size(self) -> int:
        return self.weight_ih.shape[1]

    @property
    def output_size(self) -> int:
        """Width of ``h``: the projection size if there is one, else the hidden size."""
        return self.weight_hr.shape[0] if self.weight_hr is not None else self.hidden_size

    def arrays(self):
        return [
            a for a in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.weight_hr) if a is not None
        ]

    def describe(self) -> str:
        biases = sum(b is not None for b in (self.bias_ih, self.bias_hh))
        proj = f", proj_size={self.output_size}" if self.weight_hr is not None else ""
        return (
            f"{type(self).__name__}({self.name!r}: {self.input_size} -> {self.hidden_size}{proj}, "
            f"{biases} bias vector(s))"
        )


@dataclass(frozen=True, eq=False, repr=False)
class GRUWeights(LSTMWeights):
    """One direction of one GRU layer, in PyTorch's ``nn.GRU`` layout (gate rows r, z, n).

    Parameters
    ----------
    weight_ih : array (3H, I)
    weight_hh : array (3H, H)
    bias_ih, bias_hh : array (3H,), optional (zeros when omitted)
        With ``reset_after=True`` the n rows of ``bias_hh`` sit inside the reset
        gate's product (see :class:`GRULayer`); Keras' bias of shape (2, 3H) is
        ``(bias_ih, bias_hh)`` after reordering Keras' z, r, h gates to r, z, n.
        Keras' ``reset_after=False`` bias (3H,) is ``bias_ih``.
    """

    name: str = field(default="gru", compare=False)
    GATES = 3

    def __post_init__(self):
        if self.weight_hr is not None:
            raise ValueError(f"{self.name}.weight_hr: a GRU has no projection")
        super().__post_init__()


@dataclass(frozen=True, eq=False, repr=False)
class RNNWeights(LSTMWeights):
    """One direction of one Elman RNN layer (PyTorch ``nn.RNN``, Keras ``SimpleRNN``).

    Parameters
    ----------
    weight_ih : array (H, I)
        PyTorch ``weight_ih_l0``; Keras ``kernel`` transposed.
    weight_hh : array (H, H)
        PyTorch ``weight_hh_l0``; Keras ``recurrent_kernel`` transposed.
    bias_ih, bias_hh : array (H,), optional (zeros when omitted; summed at pack time)
    """

    name: str = field(default="rnn", compare=False)
    GATES = 1

    def __post_init__(self):
        if self.weight_hr is not None:
            raise ValueError(f"{self.name}.weight_hr: an RNN has no projection")
        super().__post_init__()


class _Recurrent(_ArrayValue):
    """What the recurrent layers share: directions, merge, go_backwards, sizes."""

    # The fields each subclass declares (annotations only, so that the checks below type-check).
    directions: Tuple[LSTMWeights, ...]
    merge_mode: str
    go_backwards: bool

    WEIGHTS = LSTMWeights
    KIND = "LSTM"

    def _check_recurrent(self):
        dirs = tuple(self.directions)
        _set(self, "directions", dirs)
        wname = self.WEIGHTS.__name__
        if len(dirs) not in (1, 2) or not all(type(d) is self.WEIGHTS for d in dirs):
            raise TypeError(f"directions: expected one or two {wname} (forward[, backward])")
        first = dirs[0]
        for d in dirs[1:]:
            if (d.input_size, d.hidden_size, d.output_size) != (first.input_size, first.hidden_size, first.output_size):
                raise ValueError(
                    "directions: forward and backward weights differ in shape "
                    f"({first.input_size},{first.hidden_size},{first.output_size}) vs "
                    f"({d.input_size},{d.hidden_size},{d.output_size})"
                )
        if self.merge_mode not in MERGE_MODES:
            raise ValueError(f"merge_mode: {self.merge_mode!r} is not supported; expected one of {MERGE_MODES}")
        if self.go_backwards and len(dirs) == 2:
            raise ValueError("go_backwards: only meaningful for a unidirectional layer")

    @staticmethod
    def _check_activation(key, value):
        if value not in CELL_ACTIVATIONS:
            raise ValueError(f"{key}: {value!r} is not supported; expected one of {CELL_ACTIVATIONS}")

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
    def output_size(self) -> int:
        """Width of this layer's output sequence (after merging directions)."""
        width = self.directions[0].output_size
        return 2 * width if self.bidirectional and self.merge_mode == "concat" else width

    @property
    def streamable(self) -> bool:
        """Whether the layer can run one step at a time (it needs no future input)."""
        return not self.bidirectional and not self.go_backwards

    @property
    def stream_refusal(self) -> Optional[str]:
        if self.bidirectional:
            return "is bidirectional, so each output depends on future inputs"
        if self.go_backwards:
            return "reads the sequence backwards (go_backwards), so each output depends on future inputs"
        return None

    def arrays(self):
        return [a for d in self.directions for a in d.arrays()]

    def _describe(self, extra):
        parts = [f"{self.KIND}({self.input_size} -> {self.hidden_size}"] + extra
        if self.bidirectional:
            parts.append(f", bidirectional, merge_mode={self.merge_mode!r}")
        if self.go_backwards:
            parts.append(", go_backwards")
        return "".join(parts) + ")"


@dataclass(frozen=True, eq=False, repr=False)
class LSTMLayer(_Recurrent):
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

    Notes
    -----
    State per direction: ``h`` (P or H wide) and ``c`` (H wide).
    """

    directions: Tuple[LSTMWeights, ...]
    activation: str = "tanh"
    recurrent_activation: str = "sigmoid"
    merge_mode: str = "concat"
    go_backwards: bool = False

    def __post_init__(self):
        self._check_recurrent()
        self._check_activation("activation", self.activation)
        self._check_activation("recurrent_activation", self.recurrent_activation)

    @property
    def proj_size(self) -> int:
        """0 when the layer has no projection (PyTorch's convention)."""
        w = self.directions[0].weight_hr
        return 0 if w is None else w.shape[0]

    def describe(self) -> str:
        extra = [f", proj_size={self.proj_size}"] if self.proj_size else []
        if (self.activation, self.recurrent_activation) != ("tanh", "sigmoid"):
            extra.append(f", activation={self.activation!r}, recurrent_activation={self.recurrent_activation!r}")
        return self._describe(extra)


@dataclass(frozen=True, eq=False, repr=False)
class GRULayer(_Recurrent):
    """One GRU layer: one direction, or two for a bidirectional layer.

    With ``x`` the input, ``h`` the previous output, ``W_i*``/``W_h*`` the row
    blocks r, z, n of ``weight_ih``/``weight_hh`` and ``b_i*``/``b_h*`` those of
    the biases (``ga`` = ``recurrent_activation``, ``act`` = ``activation``)::

        r  = ga(W_ir x + b_ir + W_hr h + b_hr)
        z  = ga(W_iz x + b_iz + W_hz h + b_hz)
        n  = act(W_in x + b_in + r * (W_hn h + b_hn))       reset_after=True
        n  = act(W_in x + b_in + W_hn (r * h) + b_hn)       reset_after=False
        h' = (1 - z) * n + z * h

    ``reset_after=True`` is PyTorch ``nn.GRU`` and Keras 3's / Keras 2.3+'s
    default; ``reset_after=False`` is Keras <= 2.2 (the reset gate applied to h
    before the recurrent product; Keras has one bias then, so pass it as
    ``bias_ih`` -- a ``bias_hh`` is simply added).

    Parameters
    ----------
    directions : sequence of GRUWeights
        ``(forward,)`` or ``(forward, backward)``.
    activation, recurrent_activation : str
        One of :data:`CELL_ACTIVATIONS` each; ``"tanh"`` and ``"sigmoid"`` for PyTorch.
    reset_after : bool
    merge_mode, go_backwards
        As for :class:`LSTMLayer`.

    State per direction: ``h`` (H wide); its ``c`` is empty (width 0).
    """

    directions: Tuple[GRUWeights, ...]
    activation: str = "tanh"
    recurrent_activation: str = "sigmoid"
    reset_after: bool = True
    merge_mode: str = "concat"
    go_backwards: bool = False

    WEIGHTS = GRUWeights
    KIND = "GRU"

    def __post_init__(self):
        self._check_recurrent()
        self._check_activation("activation", self.activation)
        self._check_activation("recurrent_activation", self.recurrent_activation)
        _set(self, "reset_after", bool(self.reset_after))

    def describe(self) -> str:
        extra = [] if self.reset_after else [", reset_after=False"]
        if (self.activation, self.recurrent_activation) != ("tanh", "sigmoid"):
            extra.append(f", activation={self.activation!r}, recurrent_activation={self.recurrent_activation!r}")
        return self._describe(extra)


@dataclass(frozen=True, eq=False, repr=False)
class RNNLayer(_Recurrent):
    """One Elman RNN layer (PyTorch ``nn.RNN``, Keras ``SimpleRNN``)::

        h' = act(W_ih x + b_ih + W_hh h + b_hh)

    Parameters
    ----------
    directions : sequence of RNNWeights
        ``(forward,)`` or ``(forward, backward)``.
    activation : str
        One of :data:`CELL_ACTIVATIONS`: PyTorch's ``nonlinearity`` is ``"tanh"`` or ``"relu"``.
    merge_mode, go_backwards
        As for :class:`LSTMLayer`.

    State per direction: ``h`` (H wide); its ``c`` is empty (width 0).
    """

    directions: Tuple[RNNWeights, ...]
    activation: str = "tanh"
    merge_mode: str = "concat"
    go_backwards: bool = False

    WEIGHTS = RNNWeights
    KIND = "RNN"

    def __post_init__(self):
        self._check_recurrent()
        self._check_activation("activation", self.activation)

    def describe(self) -> str:
        return self._describe([] if self.activation == "tanh" else [f", activation={self.activation!r}"])


RECURRENT = (LSTMLayer, GRULayer, RNNLayer)


# ---------------------------------------------------------------------------
# Per-step layers


@dataclass(frozen=True, eq=False, repr=False)
class Dense(_ArrayValue):
    """A dense layer applied at every time step: ``y = activation(x @ weight.T + bias)``.

    Usable anywhere in the chain (Keras ``Dense``/``TimeDistributed(Dense)``,
    PyTorch ``nn.Linear``).

    Parameters
    ----------
    weight : array (O, I)
        PyTorch ``nn.Linear`` layout (Keras' kernel transposed).
    bias : array (O,), optional
    activation : str or Activation
        A name from :data:`ACTIVATIONS` or an :class:`Activation` (for elu's
        alpha, leaky_relu's slope, prelu's weights).  ``activation`` reads back
        as the name; :attr:`act` is the :class:`Activation`.
    """

    weight: np.ndarray
    bias: Optional[np.ndarray] = None
    activation: Union[str, Activation] = "linear"

    def __post_init__(self):
        _set(self, "weight", _as_float32_matrix("dense.weight", self.weight, 2))
        _set(self, "bias", _vector("dense.bias", self.bias, self.weight.shape[0]))
        act = as_activation(self.activation, "dense activation")
        act.check_width(self.output_size, "dense activation")
        _set(self, "act", act)
        _set(self, "activation", act.name)

    @property
    def input_size(self) -> int:
        return self.weight.shape[1]

    @property
    def output_size(self) -> int:
        return self.weight.shape[0]

    def arrays(self):
        return [a for a in (self.weight, self.bias, self.act.weight) if a is not None]

    def describe(self) -> str:
        return f"Dense({self.input_size} -> {self.output_size}, activation={self.activation!r})"


@dataclass(frozen=True, eq=False, repr=False)
class BatchNorm(_ArrayValue):
    """Batch normalization in inference form, per feature (channel)::

        y = (x - mean) / sqrt(var + eps) * gamma + beta

    PyTorch ``nn.BatchNorm1d`` (its C channels are this chain's features, the
    running statistics are ``mean``/``var``), Keras ``BatchNormalization``
    (``moving_mean``, ``moving_variance``; ``epsilon`` defaults to 1e-3 there).
    When it directly follows a :class:`Dense` or :class:`Conv1D` whose
    activation is linear, it is folded into that layer's weights when the
    model is packed (exact up to float32 rounding).

    Parameters
    ----------
    mean, var : array (C,)
    gamma, beta : array (C,), optional (ones / zeros when omitted)
    eps : float
    """

    mean: np.ndarray
    var: np.ndarray
    gamma: Optional[np.ndarray] = None
    beta: Optional[np.ndarray] = None
    eps: float = 1e-5

    def __post_init__(self):
        _set(self, "mean", _as_float32_matrix("batchnorm.mean", self.mean, 1))
        C = self.mean.shape[0]
        _set(self, "var", _vector("batchnorm.var", self.var, C))
        if np.any(self.var < 0):
            raise ValueError("batchnorm.var: contains negative variances")
        _set(self, "gamma", _vector("batchnorm.gamma", self.gamma, C))
        _set(self, "beta", _vector("batchnorm.beta", self.beta, C))
        _set(self, "eps", _finite_float("batchnorm.eps", self.eps))
        if self.eps < 0 or np.any(self.var + self.eps <= 0):
            raise ValueError("batchnorm.eps: var + eps must be positive")

    @property
    def input_size(self) -> int:
        return self.mean.shape[0]

    output_size = input_size

    def scale_shift(self):
        """(scale, shift), float64: ``y = x * scale + shift``."""
        gamma = np.ones(self.input_size) if self.gamma is None else self.gamma.astype(np.float64)
        beta = np.zeros(self.input_size) if self.beta is None else self.beta.astype(np.float64)
        scale = gamma / np.sqrt(self.var.astype(np.float64) + self.eps)
        return scale, beta - self.mean * scale

    def arrays(self):
        return [a for a in (self.mean, self.var, self.gamma, self.beta) if a is not None]

    def describe(self) -> str:
        return f"BatchNorm({self.input_size}, eps={self.eps:g})"


@dataclass(frozen=True, eq=False, repr=False)
class LayerNorm(_ArrayValue):
    """Layer normalization over the features of each step::

        y = (x - mean(x)) / sqrt(var(x) + eps) * gamma + beta     (var: biased, 1/C)

    PyTorch ``nn.LayerNorm(C)`` (eps default 1e-5), Keras ``LayerNormalization``
    over the last axis (epsilon default 1e-3; ``scale=False``/``center=False``
    leave gamma/beta out).

    Parameters
    ----------
    size : int
        C, the features normalized.
    gamma, beta : array (C,), optional (ones / zeros when omitted)
    eps : float
    """

    size: int
    gamma: Optional[np.ndarray] = None
    beta: Optional[np.ndarray] = None
    eps: float = 1e-5

    def __post_init__(self):
        _set(self, "size", _positive("layernorm.size", self.size))
        _set(self, "gamma", _vector("layernorm.gamma", self.gamma, self.size))
        _set(self, "beta", _vector("layernorm.beta", self.beta, self.size))
        _set(self, "eps", _finite_float("layernorm.eps", self.eps))
        if self.eps <= 0:
            raise ValueError(f"layernorm.eps: expected a positive number, got {self.eps}")

    @property
    def input_size(self) -> int:
        return self.size

    output_size = input_size

    def arrays(self):
        return [a for a in (self.gamma, self.beta) if a is not None]

    def describe(self) -> str:
        return f"LayerNorm({self.size}, eps={self.eps:g})"


@dataclass(frozen=True, eq=False, repr=False)
class Embedding(_ArrayValue):
    """A lookup table from integer token ids: ``y = table[id]``.  Only as the first layer.

    The model's input is then integer ids, ``(T,)`` or ``(T, B)`` (``(B, T)``
    with ``batch_first``), and ``Stream.step`` takes ``()``/``(B,)`` ids.  Ids
    outside ``[0, V)`` raise ValueError before anything runs.

    Parameters
    ----------
    table : array (V, D)
        PyTorch ``nn.Embedding.weight``, Keras ``Embedding.embeddings``.
    mask_zero : bool
        Keras ``mask_zero=True``: token id 0 masks its step, per row.  A
        recurrent layer keeps its state over a masked step and outputs its
        previous output there (zeros before the first unmasked step; a
        Bidirectional layer that returns sequences outputs zeros), so its last
        step is that of the last unmasked step.  The mask passes through Dense,
        Activation, BatchNorm and LayerNorm and ends at a recurrent layer's
        :class:`LastStep`; a chain where it would reach any other layer is
        refused (see :func:`check_chain`).
    """

    table: np.ndarray
    mask_zero: bool = False

    def __post_init__(self):
        _set(self, "table", _as_float32_matrix("embedding.table", self.table, 2))
        if self.table.shape[0] >= _MAX_VOCAB:
            raise ValueError(f"embedding.table: at most {_MAX_VOCAB - 1} rows, got {self.table.shape[0]}")
        if not isinstance(self.mask_zero, (bool, np.bool_)):
            raise TypeError(f"embedding.mask_zero: expected a bool, got {type(self.mask_zero).__name__}")
        _set(self, "mask_zero", bool(self.mask_zero))

    @property
    def vocab_size(self) -> int:
        return self.table.shape[0]

    @property
    def input_size(self) -> int:
        return 1

    @property
    def output_size(self) -> int:
        return self.table.shape[1]

    def arrays(self):
        return [self.table]

    def describe(self) -> str:
        return f"Embedding({self.vocab_size} tokens -> {self.output_size}{', mask_zero' if self.mask_zero else ''})"


# ---------------------------------------------------------------------------
# Layers over time


def _resolve_padding(name, padding, reach, stride):
    """(left, right) for an int, a pair, 'valid', 'causal', or 'same' at stride 1; or 'same'.

    ``reach`` is how many steps before the last one a window covers
    (dilation * (K - 1) for a conv, size - 1 for a pool)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        if padding == "causal":
            return (reach, 0)
        if padding == "same":
            # TF/Keras and PyTorch: total padding split with the extra step on the right.
            # At stride > 1 Keras' total depends on the sequence length: resolved per call.
            return (reach // 2, reach - reach // 2) if stride == 1 else "same"
        raise ValueError(
            f"{name}: {padding!r} is not a padding; expected an int, (left, right), 'valid', 'same' or 'causal'"
        )
    pair = (padding, padding) if np.ndim(padding) == 0 else tuple(padding)
    if len(pair) != 2:
        raise ValueError(f"{name}: expected an int or (left, right), got {padding!r}")
    left, right = pair
    for v in pair:
        if int(v) != v or v < 0:
            raise ValueError(f"{name}: expected non-negative ints, got {padding!r}")
    return (int(left), int(right))


@dataclass(frozen=True, eq=False, repr=False)
class Conv1D(_ArrayValue):
    """A 1-d convolution over time, PyTorch ``nn.Conv1d`` semantics::

        y[t, o] = bias[o] + sum_{c, k} weight[o, c, k] * xpad[t * stride + k * dilation, g(o) * C_in/groups + c]

    where ``xpad`` is the input with ``padding`` zero steps added before and
    after, and ``g(o) = o // (C_out / groups)`` the group of output channel o.
    Keras ``Conv1D`` kernels ``(K, C_in/groups, C_out)`` transpose to this
    layout with ``kernel.transpose(2, 1, 0)``.

    Parameters
    ----------
    weight : array (C_out, C_in / groups, K)
    bias : array (C_out,), optional
    stride, dilation, groups : int
        ``groups == C_in`` with ``C_out = m * C_in`` is a depthwise conv.
    padding : int, (left, right), "valid", "same" or "causal"
        Stored resolved to ``(left, right)`` ints; "causal" is
        ``(dilation*(K-1), 0)`` (Keras), "same" at stride 1 is the total
        ``dilation*(K-1)`` split with the odd step on the right (PyTorch and
        Keras agree).  "same" at stride > 1 (Keras only) depends on the
        sequence length and stays the string "same":
        ``total = max((ceil(T/stride) - 1)*stride + dilation*(K-1) + 1 - T, 0)``, left = total // 2.
    activation : str or Activation
        As for :class:`Dense` (Keras ``Conv1D(activation=...)``).

    Streams when its output at step t depends on inputs up to t only and it
    emits one output per input: stride 1 and padding ``(dilation*(K-1), 0)``
    (causal).  Its state is then the last ``dilation*(K-1)`` inputs.
    """

    weight: np.ndarray
    bias: Optional[np.ndarray] = None
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    padding: Union[int, Tuple[int, int], str] = 0
    activation: Union[str, Activation] = "linear"

    def __post_init__(self):
        _set(self, "weight", _as_float32_matrix("conv1d.weight", self.weight, 3))
        C_out = self.weight.shape[0]
        _set(self, "bias", _vector("conv1d.bias", self.bias, C_out))
        for key in ("stride", "dilation", "groups"):
            _set(self, key, _positive(f"conv1d.{key}", getattr(self, key)))
        if C_out % self.groups:
            raise ValueError(f"conv1d.groups: {self.groups} does not divide the {C_out} output channels")
        _set(self, "padding", _resolve_padding("conv1d.padding", self.padding, self.reach, self.stride))
        act = as_activation(self.activation, "conv1d activation")
        act.check_width(C_out, "conv1d activation")
        _set(self, "act", act)
        _set(self, "activation", act.name)

    @property
    def kernel_size(self) -> int:
        return self.weight.shape[2]

    @property
    def reach(self) -> int:
        """How many steps before its last input a window starts: dilation * (K - 1)."""
        return self.dilation * (self.kernel_size - 1)

    @property
    def input_size(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def output_size(self) -> int:
        return self.weight.shape[0]

    @property
    def streamable(self) -> bool:
        return self.stride == 1 and self.padding == (self.reach, 0)

    @property
    def stream_refusal(self) -> Optional[str]:
        if self.streamable:
            return None
        if self.stride != 1:
            return f"is a Conv1D with stride {self.stride}, which emits fewer outputs than inputs"
        return (
            f"is a Conv1D with padding {self.padding}, so its output at step t needs inputs after t "
            f"(only causal padding ({self.reach}, 0) streams)"
        )

    @property
    def state_size(self) -> int:
        """Floats of streaming state per stream: the last ``reach`` inputs."""
        return self.reach * self.input_size if self.streamable else 0

    def out_steps(self, T: int) -> int:
        """Output steps for T input steps (0 when the input is shorter than a window)."""
        pads = same_padding(T, self.stride, self.reach) if self.padding == "same" else self.padding
        left, right = cast(Tuple[int, int], pads)  # __post_init__ made any other padding a pair
        return max(0, (T + left + right - self.reach - 1) // self.stride + 1)

    def arrays(self):
        return [a for a in (self.weight, self.bias, self.act.weight) if a is not None]

    def describe(self) -> str:
        opts = "".join(f", {k}={getattr(self, k)}" for k in ("stride", "dilation", "groups") if getattr(self, k) != 1)
        return (
            f"Conv1D({self.input_size} -> {self.output_size}, kernel_size={self.kernel_size}{opts}, "
            f"padding={self.padding}, activation={self.activation!r})"
        )


def same_padding(T, stride, reach):
    """Keras/TF 'same' padding (left, right) of a length-T sequence."""
    out = -(-T // stride)
    total = max((out - 1) * stride + reach + 1 - T, 0)
    return total // 2, total - total // 2


@dataclass(frozen=True)
class _Pool1D:
    """Shared by the windowed pools; see :class:`MaxPool1D`."""

    size: int
    stride: Optional[int] = None
    padding: Union[int, Tuple[int, int], str] = 0

    def __post_init__(self):
        _set(self, "size", _positive("pool.size", self.size))
        _set(self, "stride", self.size if self.stride is None else _positive("pool.stride", self.stride))
        _set(self, "padding", _resolve_padding("pool.padding", self.padding, self.size - 1, self.stride))

    reach = property(lambda self: self.size - 1)
    out_steps = Conv1D.out_steps

    @property
    def streamable(self) -> bool:
        return self.stride == 1 and self.padding == (self.size - 1, 0)

    @property
    def stream_refusal(self) -> Optional[str]:
        if self.streamable:
            return None
        if self.stride != 1:
            return f"is a {type(self).__name__} with stride {self.stride}, which emits fewer outputs than inputs"
        return (
            f"is a {type(self).__name__} with padding {self.padding}, so its output at step t needs "
            f"inputs after t (only stride 1 with padding ({self.size - 1}, 0) streams)"
        )

    def describe(self) -> str:
        return f"{type(self).__name__}(size={self.size}, stride={self.stride}, padding={self.padding})"


@dataclass(frozen=True)
class MaxPool1D(_Pool1D):
    """Max over windows of ``size`` steps, every ``stride`` steps (default: ``size``), per feature.

    ``padding``: as for :class:`Conv1D` (int, (left, right), "valid", "same",
    "causal"); padded steps never win the max (PyTorch pads with -inf; Keras
    'same' likewise).  PyTorch ``nn.MaxPool1d(k, stride, padding)`` (with the
    default ``dilation=1, ceil_mode=False``), Keras ``MaxPooling1D(pool_size,
    strides, padding)``.  Streams only at stride 1 with causal padding; state:
    the last ``size - 1`` inputs.
    """


@dataclass(frozen=True)
class AvgPool1D(_Pool1D):
    """Mean over windows of ``size`` steps, every ``stride`` steps (default: ``size``), per feature.

    ``count_include_pad``: whether padded (zero) steps count in the divisor:
    True is PyTorch ``nn.AvgPool1d``'s default, False is Keras
    ``AveragePooling1D(padding='same')``.  Otherwise as :class:`MaxPool1D`.
    """

    count_include_pad: bool = True


@dataclass(frozen=True)
class GlobalMaxPool1D:
    """Max over all time steps, per feature: a sequence becomes one vector (Keras ``GlobalMaxPooling1D``,
    ``x.max(dim=time)``).

    Streams as a running max: step t's output is the pool over steps 0..t, so
    the last step of a stream equals ``predict``.  State: the running max."""

    def describe(self) -> str:
        return "GlobalMaxPool1D()"


@dataclass(frozen=True)
class GlobalAvgPool1D:
    """Mean over all time steps, per feature (Keras ``GlobalAveragePooling1D``, ``x.mean(dim=time)``).

    Streams as a running mean (state: the running sum and the step count)."""

    def describe(self) -> str:
        return "GlobalAvgPool1D()"


@dataclass(frozen=True)
class LastStep:
    """Keep the last time step only: PyTorch ``out[:, -1]`` and Keras ``return_sequences=False``.

    Drops the time axis: ``predict`` returns ``(O,)``/``(B, O)`` when nothing
    later adds one back (:class:`RepeatVector`).

    Parameters
    ----------
    final_state : bool
        After a bidirectional recurrent layer, take the backward direction's
        half at the *first* step, where that direction finishes (its final
        state): Keras ``Bidirectional(..., return_sequences=False)``.  False
        takes every feature at the last step: PyTorch ``out[:, -1]``.  Without
        a bidirectional layer just before, both mean the same.

    Streams (each step's output is what ``predict`` would return had the
    sequence ended there), unless ``final_state`` follows a bidirectional layer.
    """

    final_state: bool = False

    def describe(self) -> str:
        return "LastStep(final_state=True)" if self.final_state else "LastStep()"


@dataclass(frozen=True)
class Flatten:
    """Keras ``Flatten`` / ``torch.flatten(x, 1)``.

    Without ``steps``: where the time axis is already gone (after :class:`LastStep` or a
    global pool), an identity.  With ``steps``: a whole sequence of exactly ``steps`` steps
    becomes one vector of ``steps * features`` values, step 0's features first (Keras
    ``Flatten()`` after a layer that returns sequences, in a model whose input length is
    fixed).  ``predict`` then refuses a sequence that brings another number of steps to the
    Flatten, and the model cannot stream (the vector needs every step).

    Parameters
    ----------
    steps : int, optional
        The number of time steps reaching the Flatten.
    """

    steps: Optional[int] = None

    def __post_init__(self):
        if self.steps is not None:
            _set(self, "steps", _positive("flatten.steps", self.steps))

    def describe(self) -> str:
        return "Flatten()" if self.steps is None else f"Flatten(steps={self.steps})"


@dataclass(frozen=True)
class RepeatVector:
    """Keras ``RepeatVector(n)``: one vector (after :class:`LastStep` or a global pool) becomes a
    sequence of ``n`` copies (LSTM autoencoders).  ``predict`` only: a stream
    would have to produce n outputs per input."""

    n: int

    def __post_init__(self):
        _set(self, "n", _positive("repeatvector.n", self.n))

    def describe(self) -> str:
        return f"RepeatVector({self.n})"


#: Layers that keep the width of their input (their width comes from the chain).
WIDTH_PRESERVING = (Activation, MaxPool1D, AvgPool1D, GlobalMaxPool1D, GlobalAvgPool1D, LastStep, Flatten, RepeatVector)
#: Layers that reduce a sequence to one vector.
TIME_COLLAPSING = (LastStep, GlobalMaxPool1D, GlobalAvgPool1D)
LAYER_TYPES = RECURRENT + (Dense, Conv1D, BatchNorm, LayerNorm, Embedding) + WIDTH_PRESERVING


def layer_streamable(layer, prev) -> Optional[str]:
    """Why ``layer`` (after ``prev``, or None) cannot stream, or None when it can."""
    if isinstance(layer, RECURRENT + (Conv1D, MaxPool1D, AvgPool1D)):
        return layer.stream_refusal
    if isinstance(layer, RepeatVector):
        return "is a RepeatVector, which turns one input into a sequence of outputs"
    if isinstance(layer, LastStep) and layer.final_state and isinstance(prev, RECURRENT) and prev.bidirectional:
        return "takes the final state of a bidirectional layer"
    if isinstance(layer, Flatten) and layer.steps is not None:
        return f"flattens a whole sequence of {layer.steps} steps into one vector, which needs every step at once"
    return None


def input_width(layers: Sequence) -> int:
    """Features per input step: the input size of the first layer that has one (layers that keep
    their input's width, such as a first pool, take it from there).  ValueError when none has."""
    for layer in layers:
        if not isinstance(layer, WIDTH_PRESERVING):
            return layer.input_size
    raise ValueError(
        f"layers: the input width is unknown: every layer ({', '.join(type(x).__name__ for x in layers)}) "
        "keeps its input's width; add a layer that has weights"
    )


#: Layers the mask of ``Embedding(mask_zero=True)`` passes through unchanged (Keras' per-step
#: layers with ``supports_masking``; they compute every step as usual).
MASK_PASSING = (Dense, Activation, BatchNorm, LayerNorm)


def masked_recurrent(layers: Sequence) -> dict:
    """{index: zero_outputs} of the recurrent layers that ``Embedding(mask_zero=True)``'s mask
    reaches (``zero_outputs``: a bidirectional layer that returns sequences, whose masked steps
    output zeros in Keras); raises ValueError naming a layer it would reach whose masked
    behaviour fastlstm does not implement.  The mask ends at a recurrent layer's LastStep."""
    if not (layers and isinstance(layers[0], Embedding) and layers[0].mask_zero):
        return {}
    masked = {}
    for k in range(1, len(layers)):
        layer, prev = layers[k], layers[k - 1]
        if isinstance(layer, RECURRENT):
            if layer.go_backwards:
                raise ValueError(
                    f"layers[{k}]: a go_backwards layer after Embedding(mask_zero=True) is not supported "
                    "(Keras reverses the mask with the steps); use a Bidirectional layer or no mask"
                )
            nxt = layers[k + 1] if k + 1 < len(layers) else None
            masked[k] = layer.bidirectional and not isinstance(nxt, LastStep)
        elif isinstance(layer, LastStep) and isinstance(prev, RECURRENT):
            if prev.bidirectional and not layer.final_state:
                raise ValueError(
                    f"layers[{k}]: after Embedding(mask_zero=True), the last step of a bidirectional layer "
                    "must be Keras' (LastStep(final_state=True))"
                )
            return masked
        elif not isinstance(layer, MASK_PASSING):
            raise ValueError(
                f"layers[{k}]: {layer.describe()} would receive the mask of Embedding(mask_zero=True); fastlstm "
                "implements masking through recurrent, Dense, Activation, BatchNorm and LayerNorm layers, ending "
                "at a recurrent layer's last step (return_sequences=False)"
            )
    return masked


def check_chain(layers: Sequence) -> Tuple:
    """Validate that ``layers`` chain together; return them as a tuple.

    Raises TypeError for something that is not a layer, ValueError (naming
    ``layers[k]``) for widths that do not line up, an Embedding that is not
    first, Flatten without ``steps`` or RepeatVector on a sequence, a
    time-collapsing layer on a single vector, or a layer that the mask of
    ``Embedding(mask_zero=True)`` would reach and fastlstm does not mask
    (:func:`masked_recurrent`)."""
    layers = tuple(layers)
    if not layers:
        raise ValueError("layers: a model needs at least one layer")
    width = input_width(layers)
    has_time = True
    for k, layer in enumerate(layers):
        where = f"layers[{k}]"
        if not isinstance(layer, LAYER_TYPES):
            raise TypeError(f"{where}: expected a fastlstm layer, got {type(layer).__name__}")
        if isinstance(layer, Embedding) and k:
            raise ValueError(f"{where}: an Embedding can only be the first layer (it takes token ids)")
        if isinstance(layer, WIDTH_PRESERVING):
            if isinstance(layer, Activation):
                layer.check_width(width, where)
        elif width is not None and layer.input_size != width:
            raise ValueError(
                f"{where}: input size {layer.input_size} does not match the previous layer's output size {width}"
            )
        if isinstance(layer, Flatten) and has_time and layer.steps is None:
            raise ValueError(
                f"{where}: Flatten on a sequence needs its number of steps (Flatten(steps=T): the "
                "sequence length is fixed); it is an identity after LastStep or a global pool"
            )
        if isinstance(layer, Flatten) and layer.steps is not None:
            if not has_time:
                raise ValueError(
                    f"{where}: Flatten(steps={layer.steps}) needs a sequence, but the time axis was dropped"
                )
            has_time = False
            width *= layer.steps
        if isinstance(layer, RepeatVector) and has_time:
            raise ValueError(
                f"{where}: RepeatVector needs one vector per stream (put LastStep or a global pool before it)"
            )
        if isinstance(layer, TIME_COLLAPSING + (RECURRENT + (Conv1D, MaxPool1D, AvgPool1D))) and not has_time:
            raise ValueError(
                f"{where}: {type(layer).__name__} needs a sequence, but the time axis was "
                "dropped before it (add a RepeatVector)"
            )
        if isinstance(layer, TIME_COLLAPSING):
            has_time = False
        elif isinstance(layer, RepeatVector):
            has_time = True
        if not isinstance(layer, WIDTH_PRESERVING):
            width = layer.output_size
    masked_recurrent(layers)
    return layers


def check_stack(layers: Sequence[LSTMLayer], head: Optional[Dense]) -> Tuple[Tuple[LSTMLayer, ...], Optional[Dense]]:
    """The older form: validate a recurrent stack and an optional Dense head; return them as a tuple and the head."""
    layers = tuple(layers)
    if not layers:
        raise ValueError("layers: a model needs at least one LSTM layer")
    for k, layer in enumerate(layers):
        if not isinstance(layer, RECURRENT):
            raise TypeError(f"layers[{k}]: expected an LSTMLayer, got {type(layer).__name__}")
    if head is not None and not isinstance(head, Dense):
        raise TypeError(f"head: expected a Dense, got {type(head).__name__}")
    try:
        check_chain(layers + ((head,) if head is not None else ()))
    except ValueError as exc:
        if head is not None and str(exc).startswith(f"layers[{len(layers)}]"):
            raise ValueError(
                "head" + str(exc)[len(f"layers[{len(layers)}]") :].replace("previous layer's", "last LSTM layer's")
            ) from None
        raise
    return layers, head
