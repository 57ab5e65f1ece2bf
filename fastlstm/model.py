"""fastlstm.Model: a packed, immutable network (a chain of layers) with sequence and streaming inference."""

from __future__ import annotations

import os
from functools import partial
from typing import Literal, Optional, Sequence, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

from . import _kernels, _streams, _validate
from ._packing import pack_chain
from ._quantize import check_precision
from .layers import (
    RECURRENT,
    TIME_COLLAPSING,
    Dense,
    Embedding,
    Flatten,
    LastStep,
    LSTMLayer,
    RepeatVector,
    check_chain,
    check_stack,
    layer_streamable,
)
from .state import State, signed, state_from_rows, state_rows


def _drops_time(layer) -> bool:
    """Whether a layer turns a sequence into one vector (a last step, a global pool, a Flatten over it)."""
    return isinstance(layer, TIME_COLLAPSING) or (isinstance(layer, Flatten) and layer.steps is not None)


class Model:
    """A network ready for inference: a chain of layers run by compiled kernels.

    The weights are validated and repacked once, here; afterwards the model is
    read-only and may be shared by any number of streams and threads.  Every
    loader (``fastlstm.load``, ``from_torch``, ``from_keras``) returns one.

    Parameters
    ----------
    layers : sequence of layers
        The chain, first layer first: any of the classes of :mod:`fastlstm.layers`
        (:class:`~fastlstm.LSTMLayer`, :class:`~fastlstm.GRULayer`,
        :class:`~fastlstm.RNNLayer`, :class:`~fastlstm.Conv1D`,
        :class:`~fastlstm.Dense`, :class:`~fastlstm.Activation`,
        :class:`~fastlstm.BatchNorm`, :class:`~fastlstm.LayerNorm`,
        :class:`~fastlstm.Embedding`, the pools, :class:`~fastlstm.LastStep`,
        :class:`~fastlstm.Flatten`, :class:`~fastlstm.RepeatVector`).
    head : :class:`fastlstm.Dense`, optional
        The older form: a dense layer appended to the chain.
    return_sequences : bool
        The older form: ``False`` appends ``LastStep(final_state=True)`` before
        the head (Keras' ``return_sequences=False``), so :meth:`predict` returns
        only the last step's output.
    precision : str
        One of :data:`fastlstm.PRECISIONS`: the precision of the recurrent layers' gate products.
        ``"fp32"`` (the default) is exact float32.  ``"bf16"`` rounds the weights and the
        activations they multiply to bfloat16 and accumulates in float32; ``"int8"`` quantizes
        the weights per output row and the activations per row and step (symmetric scales) and
        accumulates in int32.  Everything else (biases, nonlinearities, cell state, projections,
        other layers) stays float32.  See :meth:`with_precision`.
    """

    def __init__(
        self,
        layers: Sequence,
        head: Optional[Dense] = None,
        *,
        return_sequences: bool = True,
        precision: str = "fp32",
    ):
        precision = check_precision(precision)
        layers = tuple(layers)
        if layers and all(isinstance(layer, RECURRENT) for layer in layers):
            layers, head = check_stack(layers, head)  # its messages name the head
        elif head is not None and not isinstance(head, Dense):
            raise TypeError(f"head: expected a Dense, got {type(head).__name__}")
        chain = layers + ((LastStep(final_state=True),) if not return_sequences else ()) + (head,) * (head is not None)
        self._layers = check_chain(chain)
        specs, layout, signature = pack_chain(self._layers, precision)
        self._precision = precision
        self._net = _kernels.Network(specs, layout, signed(signature, precision))
        self._tokens = isinstance(self._layers[0], Embedding)
        # predict drops the time axis when a last step, a global pool or a Flatten over the sequence
        # is not followed by a RepeatVector.
        drops = [k for k, layer in enumerate(self._layers) if _drops_time(layer)]
        repeats = [k for k, layer in enumerate(self._layers) if isinstance(layer, RepeatVector)]
        self._drops_time = bool(drops) and (not repeats or repeats[-1] < drops[-1])

    # -- description -----------------------------------------------------------------

    @property
    def input_size(self) -> int:
        """Features per input step (1 for a model that takes token ids)."""
        return self._net.n_in

    @property
    def output_size(self) -> int:
        return self._net.n_out

    @property
    def layers(self) -> Tuple:
        """The chain of layers (tuple), first layer first."""
        return self._layers

    @property
    def head(self) -> Optional[Dense]:
        """The last layer when it is a :class:`Dense` (the older "stack + head" view), else None."""
        return self._layers[-1] if isinstance(self._layers[-1], Dense) else None

    @property
    def return_sequences(self) -> bool:
        """Whether :meth:`predict` returns a sequence (False: the last step's output only)."""
        return not self._drops_time

    def lstm_stack(self):
        """(LSTM layers, Dense head or None, return_sequences): the older "LSTM stack + one Dense"
        view of this model, which fastlstm's file format and the comparison runners handle.

        Raises ValueError naming the first layer outside that form."""
        layers = list(self._layers)
        head = layers.pop() if isinstance(layers[-1], Dense) else None
        last = bool(layers) and isinstance(layers[-1], LastStep) and layers[-1].final_state
        if last:
            layers.pop()
        for k, layer in enumerate(layers):
            if not isinstance(layer, LSTMLayer):
                raise ValueError(f"layer {k} ({layer.describe()}) is not part of an LSTM stack with one Dense head")
        if not layers:
            raise ValueError("the model has no LSTM layer")
        return tuple(layers), head, not last

    @property
    def token_input(self) -> bool:
        """Whether the input is integer token ids (the first layer is an :class:`~fastlstm.Embedding`)."""
        return self._tokens

    @property
    def streamable(self) -> bool:
        """Whether :meth:`stream` works (see :meth:`stream`)."""
        return self._net.streamable

    @property
    def state_size(self) -> int:
        """Floats of state per stream (every layer's, see :class:`~fastlstm.State`)."""
        return self._net.state_size

    @property
    def precision(self) -> str:
        """The precision of the recurrent gate products: one of :data:`fastlstm.PRECISIONS`."""
        return self._precision

    def with_precision(self, precision: str) -> "Model":
        """A new model with the same layers at another ``precision`` (see :class:`Model`); this one is
        unchanged.  States of one are refused by the other (their signatures name the precision)."""
        return Model(self._layers, precision=precision)

    @property
    def num_parameters(self) -> int:
        return int(sum(a.size for layer in self._layers for a in getattr(layer, "arrays", list)()))

    def describe_short(self) -> str:
        shown = "" if self._precision == "fp32" else f", {self._precision}"
        return f"Model({self.input_size} -> {self.output_size}, {len(self._layers)} layer(s){shown})"

    def __repr__(self):
        lines = [f"  {layer.describe()}" for layer in self._layers]
        if self._precision != "fp32":
            lines.append(f"  precision={self._precision!r}")
        return "fastlstm.Model(\n" + "\n".join(lines) + "\n)"

    def __reduce__(self):
        return (partial(Model, precision=self._precision), (self._layers,))

    # -- inference ---------------------------------------------------------------------

    @overload
    def predict(
        self,
        x: npt.ArrayLike,
        state: Optional[State] = None,
        *,
        batch_first: bool = False,
        return_state: Literal[False] = False,
    ) -> np.ndarray: ...

    @overload
    def predict(
        self, x: npt.ArrayLike, state: Optional[State] = None, *, batch_first: bool = False, return_state: Literal[True]
    ) -> Tuple[np.ndarray, State]: ...

    def predict(
        self, x: npt.ArrayLike, state: Optional[State] = None, *, batch_first: bool = False, return_state: bool = False
    ) -> Union[np.ndarray, Tuple[np.ndarray, State]]:
        """Run whole sequences.

        Parameters
        ----------
        x : array (T, I), or (T, B, I) -- (B, T, I) with ``batch_first=True``;
            integer token ids (T,), (T, B) or (B, T) when the model starts with an Embedding
        state : State, optional
            Initial state (default zeros), e.g. from ``return_state=True`` or ``Stream.state``.
        batch_first : bool
        return_state : bool
            Also return the final :class:`State`.

        Returns
        -------
        y : (T', O), (T', B, O) or (B, T', O), T' the steps the chain outputs (T unless a
            Conv1D, pool or RepeatVector changes it); without a time axis (last step or
            global pool) (O,) or (B, O).
        state : State, when ``return_state`` is true.
        """
        x3, batched = _validate.sequence_input(x, self.input_size, batch_first, self._tokens)
        T, B = x3.shape[:2]
        batch_size = B if batched else None
        self._check_steps(T)
        if state is None:
            s = np.zeros((B, self._net.state_size), dtype=np.float32)
        else:
            s = state_rows(state, self._net.state_layout, self._net.signature, B, batch_size, "state")
        if self._tokens and x3.size and (x3.min() < 0 or x3.max() >= self._net.vocab_size):
            bad = x3[(x3 < 0) | (x3 >= self._net.vocab_size)][0]
            raise ValueError(f"x: token id {bad} is outside the Embedding's table [0, {self._net.vocab_size})")
        y = np.empty((self._net.out_steps(T), B, self.output_size), dtype=np.float32)
        self._net.forward(x3, y, s)
        if self._drops_time:
            y = y[-1]
            if not batched:
                y = y[0]
        elif not batched:
            y = y[:, 0, :]
        elif batch_first:
            y = np.ascontiguousarray(y.transpose(1, 0, 2))
        if return_state:
            return y, state_from_rows(s, self._net.state_layout, self._net.signature, batch_size)
        return y

    def _check_steps(self, T):
        """Refuse a sequence too short for the chain (a window longer than it, or nothing to take
        the last step of)."""
        steps = T
        for k, layer in enumerate(self._layers):
            if isinstance(layer, Flatten) and layer.steps not in (None, steps):
                raise ValueError(
                    f"x: layers[{k}] ({layer.describe()}) flattens exactly {layer.steps} steps (the model's "
                    f"input length is fixed), but {T} input steps bring {steps} steps to it"
                )
            if _drops_time(layer) and steps == 0:
                raise ValueError(
                    f"x: needs at least one time step (layers[{k}], {layer.describe()}, takes the last step's output)"
                )
            out_steps = getattr(layer, "out_steps", None)
            if out_steps is not None and not self._net.streamable:
                new = out_steps(steps)
                if new == 0 and steps:
                    raise ValueError(
                        f"x: {T} time steps are too few for layers[{k}] ({layer.describe()}), which gets {steps} steps"
                    )
                steps = new
            elif _drops_time(layer) and not self._net.streamable:
                steps = 1
            elif isinstance(layer, RepeatVector):
                steps *= layer.n
                _validate.check_count(steps, "x", f"output steps of layers[{k}] ({layer.describe()})")

    def stream(self, batch_size: Optional[int] = None) -> _streams.Stream:
        """A :class:`Stream` stepping ``batch_size`` streams (or one unbatched stream) from zero state.

        Raises ValueError when a layer cannot run one step at a time, saying which and why
        (bidirectional or go_backwards recurrent layers, strided or non-causal Conv1D and
        pools, RepeatVector)."""
        self._check_streamable()
        if batch_size is not None:
            batch_size = _validate.positive_int(batch_size, "batch_size", _validate.MAX_COUNT)
        return _streams.Stream(self, self._net, batch_size)

    @property
    def stream_refusal(self) -> Optional[str]:
        """Why the model cannot stream ("layer k is ..."), or None when it can."""
        for k, layer in enumerate(self._layers):
            why = layer_streamable(layer, self._layers[k - 1] if k else None)
            if why is not None:
                return f"layer {k} {why}"
        return None

    def _check_streamable(self):
        why = self.stream_refusal
        if why is not None:
            raise ValueError(f"this model cannot stream: {why}; use model.predict on whole sequences instead")

    def pool(self, capacity: int) -> _streams.StreamPool:
        """A :class:`StreamPool` with state preallocated for ``capacity`` streams (see ``reserve``)."""
        self._check_streamable()
        capacity = _validate.positive_int(capacity, "capacity", _validate.MAX_COUNT)
        return _streams.StreamPool(self, self._net, capacity)

    def to_onnx(self, path: Union[str, os.PathLike], *, batch_first: bool = False) -> None:
        """Write a standard ONNX graph: LSTM/GRU/RNN ops plus the rest of the chain, input ``x`` (T, B, I)
        (``(B, T, I)`` with ``batch_first``), output ``y`` as :meth:`predict` returns it.  ONNX Runtime
        runs it and :func:`fastlstm.load` reads it back.  The graph holds the float32 weights (ONNX's
        LSTM/GRU/RNN ops compute in float32), whatever the model's precision."""
        from .onnx_export import write_onnx

        write_onnx(self, path, batch_first=batch_first)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write fastlstm's own format (safetensors + JSON config); ``fastlstm.load`` reads it back exactly,
        at this model's precision (a bf16 model's recurrent weight matrices are stored as bfloat16)."""
        from .loaders import save_model

        save_model(self, path)
