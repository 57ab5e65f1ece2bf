"""fastlstm.Model: a packed, immutable LSTM network with sequence and streaming inference."""

from __future__ import annotations

import os
from typing import Literal, Optional, Sequence, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

from . import _kernels, _streams, _validate
from ._packing import pack_head, pack_layer
from .layers import Dense, LSTMLayer, check_stack
from .state import State


class Model:
    """An LSTM network ready for inference.

    The weights are validated and repacked once, here; afterwards the model is
    read-only and may be shared by any number of streams and threads.  Every
    loader (``fastlstm.load``, ``from_torch``, ``from_keras``) returns one.

    Parameters
    ----------
    layers : sequence of :class:`fastlstm.LSTMLayer`
        The recurrent stack, first layer first.
    head : :class:`fastlstm.Dense`, optional
        A dense layer applied to the last layer's output at every step.
    return_sequences : bool
        ``False`` (Keras) makes :meth:`predict` return only the last step's output.
    """

    def __init__(self, layers: Sequence[LSTMLayer], head: Optional[Dense] = None, *,
                 return_sequences: bool = True):
        self._layers, self._head = check_stack(layers, head)
        self._return_sequences = bool(return_sequences)
        self._net = _kernels.Network([pack_layer(layer) for layer in self._layers],
                                     None if head is None else pack_head(head))
        self._trunk = None  # built on demand, see _last_step_bidirectional
        # (P, H) of every (layer, direction), in state order.
        self._entries = [(d.output_size, d.hidden_size) for layer in self._layers for d in layer.directions]
        self._signature = tuple((layer.input_size, layer.hidden_size, layer.directions[0].output_size,
                                 len(layer.directions)) for layer in self._layers)

    # -- description -----------------------------------------------------------------

    @property
    def input_size(self) -> int:
        return self._layers[0].input_size

    @property
    def output_size(self) -> int:
        return self._head.output_size if self._head is not None else self._layers[-1].output_size

    @property
    def layers(self) -> Tuple[LSTMLayer, ...]:
        """The LSTM layers (tuple of :class:`fastlstm.LSTMLayer`); the head is :attr:`head`."""
        return self._layers

    @property
    def head(self) -> Optional[Dense]:
        return self._head

    @property
    def return_sequences(self) -> bool:
        return self._return_sequences

    @property
    def streamable(self) -> bool:
        """Whether :meth:`stream` works (no bidirectional or go_backwards layer)."""
        return self._net.streamable

    @property
    def num_parameters(self) -> int:
        arrays = [a for layer in self._layers for d in layer.directions
                  for a in (d.weight_ih, d.weight_hh, d.bias_ih, d.bias_hh, d.weight_hr) if a is not None]
        if self._head is not None:
            arrays += [a for a in (self._head.weight, self._head.bias) if a is not None]
        return int(sum(a.size for a in arrays))

    def describe_short(self) -> str:
        return f"Model({self.input_size} -> {self.output_size}, {len(self._layers)} LSTM layer(s))"

    def __repr__(self):
        lines = [f"  {layer.describe()}" for layer in self._layers]
        if self._head is not None:
            lines.append(f"  {self._head.describe()}")
        if not self._return_sequences:
            lines.append("  (returns the last step only)")
        return "fastlstm.Model(\n" + "\n".join(lines) + "\n)"

    def __reduce__(self):
        return (_restore, (self._layers, self._head, self._return_sequences))

    # -- inference ---------------------------------------------------------------------

    @overload
    def predict(self, x: npt.ArrayLike, state: Optional[State] = None, *, batch_first: bool = False,
                return_state: Literal[False] = False) -> np.ndarray: ...

    @overload
    def predict(self, x: npt.ArrayLike, state: Optional[State] = None, *, batch_first: bool = False,
                return_state: Literal[True]) -> Tuple[np.ndarray, State]: ...

    def predict(self, x: npt.ArrayLike, state: Optional[State] = None, *, batch_first: bool = False,
                return_state: bool = False) -> Union[np.ndarray, Tuple[np.ndarray, State]]:
        """Run whole sequences.

        Parameters
        ----------
        x : array (T, I), or (T, B, I) -- (B, T, I) with ``batch_first=True``
        state : State, optional
            Initial state (default zeros), e.g. from ``return_state=True`` or ``Stream.state``.
        batch_first : bool
        return_state : bool
            Also return the final :class:`State`.

        Returns
        -------
        y : (T, O), (T, B, O) or (B, T, O); with ``return_sequences=False``
            only the last step: (O,) or (B, O).
        state : State, when ``return_state`` is true.
        """
        x3, batched = _validate.sequence_input(x, self.input_size, batch_first)
        T, B = x3.shape[:2]
        batch_size = B if batched else None
        if state is None:
            h, c = self._zero_buffers(B)
        else:
            h, c = self._state_to_buffers(state, B, batch_size, "state")
        if not self._return_sequences and T == 0:
            raise ValueError("x: needs at least one time step (the model returns the last step's output)")
        if not self._return_sequences and self._layers[-1].bidirectional:
            y = self._last_step_bidirectional(x3, h, c)
        else:
            y = np.empty((T, B, self.output_size), dtype=np.float32)
            self._net.forward(x3, y, h, c)
            y = y[-1] if not self._return_sequences else y
        if self._return_sequences:
            if not batched:
                y = y[:, 0, :]
            elif batch_first:
                y = np.ascontiguousarray(y.transpose(1, 0, 2))
        elif not batched:
            y = y[0]
        if return_state:
            return y, self._state_from_buffers(h, c, batch_size)
        return y

    def _last_step_bidirectional(self, x3, h, c):
        """Keras' last step of a bidirectional layer: forward output at t=T-1 and
        backward output at t=0, merged, then the head.  Runs a copy of the
        network without head or merge on the last layer (built once)."""
        last = self._layers[-1]
        if self._trunk is None:
            packed = [pack_layer(layer) for layer in self._layers[:-1]] + [pack_layer(last, "concat")]
            self._trunk = _kernels.Network(packed, None)
        T, B = x3.shape[:2]
        width = last.directions[0].output_size
        seq = np.empty((T, B, 2 * width), dtype=np.float32)
        self._trunk.forward(x3, seq, h, c)
        fwd, bwd = seq[-1, :, :width], seq[0, :, width:]
        merged = {"concat": lambda: np.concatenate([fwd, bwd], axis=1), "sum": lambda: fwd + bwd,
                  "mul": lambda: fwd * bwd, "ave": lambda: 0.5 * (fwd + bwd)}[last.merge_mode]()
        if self._head is None:
            return np.ascontiguousarray(merged, dtype=np.float32)
        w, b, act = pack_head(self._head)
        return _kernels._activate(act, np.ascontiguousarray(merged @ w + b, dtype=np.float32))  # noqa: SLF001

    def stream(self, batch_size: Optional[int] = None) -> _streams.Stream:
        """A :class:`Stream` stepping ``batch_size`` streams (or one unbatched stream) from zero state.

        Raises ValueError when a layer needs the whole sequence (bidirectional or go_backwards)."""
        self._check_streamable()
        if batch_size is not None:
            batch_size = _validate.positive_int(batch_size, "batch_size", _validate.MAX_COUNT)
        return _streams.Stream(self, self._net, batch_size)

    def _check_streamable(self):
        for k, layer in enumerate(self._layers):
            if not layer.streamable:
                why = "is bidirectional" if layer.bidirectional else "reads the sequence backwards (go_backwards)"
                raise ValueError(
                    f"this model cannot stream: layer {k} {why}, so each output depends on future "
                    "inputs; use model.predict on whole sequences instead")

    def pool(self, capacity: int) -> _streams.StreamPool:
        """A :class:`StreamPool` with state preallocated for ``capacity`` streams (see ``reserve``)."""
        self._check_streamable()
        capacity = _validate.positive_int(capacity, "capacity", _validate.MAX_COUNT)
        return _streams.StreamPool(self, self._net, capacity)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write fastlstm's own format (safetensors + JSON config); ``fastlstm.load`` reads it back exactly."""
        from .loaders import save_model
        save_model(self, path)

    # -- state conversion (used by Stream and StreamPool) ----------------------------------

    def _zero_buffers(self, rows):
        h_size, c_size = self._net.state_size
        return np.zeros((rows, h_size), dtype=np.float32), np.zeros((rows, c_size), dtype=np.float32)

    def _state_to_buffers(self, state, rows, batch_size, name):
        """Check ``state`` fits this model and ``rows`` streams; return packed (h, c) copies."""
        if not isinstance(state, State):
            raise TypeError(f"{name}: expected a fastlstm.State, got {type(state).__name__}")
        if state.signature is not None and state.signature != self._signature:
            raise ValueError(f"{name}: belongs to a model of another shape (layers {state.signature}, "
                             f"this model's are {self._signature})")
        if len(state.h) != len(self._entries):
            raise ValueError(f"{name}: expected {len(self._entries)} (layer, direction) entries, got {len(state.h)}")
        h, c = self._zero_buffers(rows)
        col_h = col_c = 0
        for k, (P, H) in enumerate(self._entries):
            for label, arr, width, buf, col in (("h", state.h[k], P, h, col_h), ("c", state.c[k], H, c, col_c)):
                expected = (width,) if batch_size is None else (rows, width)
                if arr.shape != expected:
                    raise ValueError(f"{name}: {label}[{k}] expected shape {expected}, got {arr.shape}")
                if not np.all(np.isfinite(arr)):
                    raise ValueError(f"{name}: {label}[{k}] contains NaN or infinite values")
                buf[:, col:col + width] = arr.reshape(rows, width)
            col_h += P
            col_c += H
        return h, c

    def _state_from_buffers(self, h, c, batch_size):
        hs, cs = [], []
        col_h = col_c = 0
        for P, H in self._entries:
            hs.append(h[:, col_h:col_h + P])
            cs.append(c[:, col_c:col_c + H])
            col_h += P
            col_c += H
        if batch_size is None:
            hs, cs = [a[0] for a in hs], [a[0] for a in cs]
        return State(hs, cs, self._signature)


def _restore(layers, head, return_sequences):
    return Model(layers, head, return_sequences=return_sequences)
