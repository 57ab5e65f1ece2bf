"""Match an ONNX graph to fastlstm's layer chain, by running it symbolically.

Each node is evaluated once, in dependency order, on abstract values:

* NumPy arrays and :class:`~.onnx_fold.SymVec` shapes: folded as constants
  (:mod:`.onnx_fold`), so the shape glue exporters emit disappears;
* :class:`Zeros`: an all-zero tensor of a shape known only symbolically (an
  exporter's zero initial state, ``ConstantOfShape(Shape(x)...)``);
* :class:`StateIn`: rows of a graph input that feeds a recurrent node's initial state;
* :class:`Dyn`: the data itself.  It records the *layers applied so far* (the chain)
  and what each of its axes means: an open dimension (time or batch, a
  :class:`~.onnx_fold.Sym` whose role the first recurrent or convolution node
  fixes), features, the directions of a recurrent output, recurrent state rows, or a
  unit axis.  Transposes, reshapes, squeezes and slices move or drop axes; only a
  layer op appends to the chain.

An op is accepted only when its meaning on the data is certain; anything else is
refused naming the node, its op type and its position.  So a graph that keeps the
last 30 of 120 steps, picks one direction of a bidirectional output, or joins two
branches is refused, never approximated.  Output shapes are derived, never read from
the file's declarations.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from typing import Dict, Tuple

import numpy as np

from ..layers import (Activation, AvgPool1D, BatchNorm, Conv1D, Dense, Embedding, GlobalAvgPool1D,
                      GlobalMaxPool1D, LastStep, LayerNorm, MaxPool1D, RECURRENT)
from .onnx_fold import (INT64_MAX, FoldError, Sym, SymVec, as_symvec, fold_const, fold_symvec, slice_args,
                        slice_indices)
from .onnx_recurrent import GATES, RecurrentRefused, recurrent_layer


class GraphRefused(ValueError):
    """The graph cannot be run exactly by fastlstm; the message names the node."""


# --- abstract values ---------------------------------------------------------------

@dataclass(frozen=True)
class Axis:
    """One axis of a :class:`Dyn`: kind 'S' (open: time or batch, ``size`` is a Sym), 'F' (features),
    'D' (directions of a recurrent output), 'R' (recurrent state rows) or 'U' (a unit axis)."""

    kind: str
    size: object

    @property
    def role(self):
        return self.size.role if self.kind == "S" else None

    def is_unit(self):
        return (self.kind != "S" and self.size == 1) or (self.kind == "S" and self.size.bound == 1)


@dataclass(frozen=True)
class StateRef:
    """One row of a recurrent node's Y_h/Y_c output: direction ``direction`` of ``layer``."""

    layer: object
    direction: int
    kind: str                 # 'h' or 'c'
    chain: tuple              # the chain up to and including ``layer``


@dataclass(frozen=True)
class Dyn:
    axes: Tuple[Axis, ...]
    chain: tuple
    time: str = "seq"          # 'seq': every step; 'last': one step was selected
    reverse: bool = False      # the time axis runs backwards relative to the engine's output
    rows: Tuple[StateRef, ...] = ()   # state rows (the 'R' axis, or the one row once it is dropped)
    pad: Tuple[int, int] = (0, 0)      # zero steps a Pad added before/after, owed to the next Conv

    @property
    def is_state(self):
        return bool(self.rows)

    def index(self, kind):
        return [k for k, a in enumerate(self.axes) if a.kind == kind]


class Zeros:
    """An all-zero tensor whose shape is known only symbolically."""


@dataclass(frozen=True)
class StateIn:
    """Rows ``rows`` (along axis 0) of the graph input ``name``; ``keepdim`` False once one row was taken."""

    name: str
    rows: Tuple[int, ...]
    keepdim: bool = True


@dataclass
class GraphMatch:
    """The result: the chain of layers, and how the graph's inputs and outputs relate to it."""

    chain: tuple
    input_name: str
    input_axes: Tuple[str, ...]     # per input axis: 'T', 'B', 'F' or '1' (a unit axis)
    output_name: str
    output_axes: Tuple[str, ...]
    state_inputs: Dict[str, list] = field(default_factory=dict)   # name -> [(layer index, direction, kind)]
    state_outputs: Dict[str, list] = field(default_factory=dict)

    @property
    def batch_first(self) -> bool:
        axes = [a for a in self.input_axes if a in ("T", "B")]
        return axes == ["B", "T"]


_GLUE = ("Identity", "Slice", "Gather", "Squeeze", "Unsqueeze", "Split", "Cast")
_ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Elu": "elu", "Selu": "selu",
                "LeakyRelu": "leaky_relu", "Softplus": "softplus", "Softsign": "softsign", "HardSigmoid": None,
                "Gelu": None, "Softmax": "softmax", "PRelu": "prelu"}
#: Ops refused with an explanation of what they usually are.
_KNOWN_REFUSALS = {
    "Loop": "control flow (tf2onnx writes a Keras GRU/LSTM it does not recognise as a Loop); re-export so "
            "that the recurrent layers become ONNX LSTM/GRU/RNN ops",
    "Scan": "control flow (a recurrent layer written as a Scan); re-export so that the graph uses the "
            "ONNX LSTM/GRU/RNN op",
    "If": "control flow; fastlstm runs a fixed chain of layers",
    "Erf": "part of a decomposed GELU; export with opset >= 20 so the exporter emits Gelu",
    "Split": "splitting the data (an LSTM cell written out as Gemm/Split/Sigmoid nodes has no LSTM op to "
             "match; re-export with the ONNX LSTM op)",
}


_UNROLLED = ("selects single steps of the input before any recurrent op: a recurrent layer unrolled step by "
             "step into MatMul/Add/activation nodes (torch's dynamo exporter does this for nn.RNN) has no "
             "LSTM/GRU/RNN op for fastlstm to match; export with torch.onnx.export(..., dynamo=False), which "
             "emits the ONNX RNN op")


# --- the interpreter -------------------------------------------------------------

class Matcher:
    """Runs the graph symbolically; :meth:`run` returns a :class:`GraphMatch`."""

    def __init__(self, graph, tensor):
        self.graph = graph
        self.tensor = tensor          # Tensor proto -> numpy array (the file reader's, with its checks)
        self.values = {}
        self.state_in_use = {}        # (layer id, direction, kind) -> (input name, row)
        self.node = None
        self.position = 0

    # -- errors --

    def refuse(self, why):
        n = self.node
        label = f"node {self.position} ({n.op_type}{f' {n.name!r}' if n.name else ''})" if n else "the graph"
        raise GraphRefused(f"{label}: {why}")

    # -- set-up --

    def run(self) -> GraphMatch:
        g = self.graph
        if g.has_sparse_initializers:
            raise GraphRefused("the graph has sparse initializers, which fastlstm does not read")
        for name, t in g.initializers.items():
            self.values[name] = _Lazy(t)
        state_inputs = self._state_input_names()
        data_inputs = []
        for vi in g.inputs:
            if vi.name in g.initializers:
                continue
            if vi.kind != "tensor" or vi.shape is None:
                raise GraphRefused(f"graph input {vi.name!r} is a {vi.kind} without a tensor shape; fastlstm needs "
                                   "a tensor input of known rank")
            if vi.name in state_inputs:
                rows = vi.shape[0] if vi.shape else None
                if not isinstance(rows, int) or rows < 1:
                    raise GraphRefused(f"state input {vi.name!r} has shape {vi.shape}; its first axis (layers x "
                                       "directions) must have a fixed size")
                self.values[vi.name] = StateIn(vi.name, tuple(range(rows)))
            else:
                self.values[vi.name] = self._data_input(vi)
                data_inputs.append(vi)
        if len(data_inputs) != 1:
            names = [vi.name for vi in data_inputs]
            raise GraphRefused(f"the graph has {len(names)} data inputs {names}; fastlstm models take one sequence "
                               "(plus optional recurrent state inputs)")
        self.input_vi = data_inputs[0]
        self.input_value = self.values[self.input_vi.name]
        for position, node in enumerate(self._ordered_nodes()):
            self.position, self.node = position, node
            try:
                with np.errstate(over="ignore", invalid="ignore"):   # an overflow to inf is refused by the layer
                    self._eval(node)
            except (KeyError, IndexError, TypeError, AttributeError, OverflowError, ZeroDivisionError,
                    np.exceptions.AxisError) as exc:
                # a node whose inputs or attributes have the wrong kind or size for its op
                self.refuse(f"malformed node ({type(exc).__name__}: {exc})")
        self.node = None
        return self._result()

    def _data_input(self, vi):
        from .onnx_proto import DTYPE_NAMES
        shape = vi.shape
        if not 1 <= len(shape) <= 3:
            raise GraphRefused(f"graph input {vi.name!r} has rank {len(shape)}; expected (T, I), (T, B, I) or "
                               "(B, T, I), or integer token ids (T,)/(B, T)")
        axes = []
        integer = vi.elem_type in (6, 7)
        if not integer and vi.elem_type not in (1, 10, 11):
            raise GraphRefused(f"graph input {vi.name!r} has element type "
                               f"{DTYPE_NAMES.get(vi.elem_type, vi.elem_type)}; expected float or integer ids")
        open_axes = shape if integer else shape[:-1]
        for k, d in enumerate(open_axes):
            axes.append(Axis("S", Sym(f"{vi.name}[{k}]", d if isinstance(d, int) else None)))
        if not integer:
            last = shape[-1]
            if not isinstance(last, int) or last < 1:
                raise GraphRefused(f"graph input {vi.name!r} has shape {shape}; its last axis (the features) "
                                   "must have a fixed size")
            axes.append(Axis("F", last))
        return Dyn(tuple(axes), chain=(), time="ids" if integer else "seq")

    def _state_input_names(self):
        """Graph inputs that reach a recurrent node's initial_h/initial_c through slicing only."""
        consumers = {}
        for n in self.graph.nodes:
            for k, name in enumerate(n.inputs):
                consumers.setdefault(name, []).append((n, k))
        found = set()
        for vi in self.graph.inputs:
            frontier, seen = [vi.name], set()
            while frontier:
                name = frontier.pop()
                if name in seen:
                    continue
                seen.add(name)
                for n, k in consumers.get(name, []):
                    if n.op_type in GATES and k in (5, 6):
                        found.add(vi.name)
                    elif n.op_type in _GLUE and k == 0:
                        frontier.extend(n.outputs)
        return found

    def _ordered_nodes(self):
        """Nodes in dependency order (Kahn); a cycle or an undefined input is refused."""
        nodes = self.graph.nodes
        producer = {}
        for k, n in enumerate(nodes):
            if n.domain not in ("", "ai.onnx"):
                raise GraphRefused(f"node {k} ({n.op_type} {n.name!r}) is from the custom-op domain {n.domain!r}; "
                                   "fastlstm runs standard ONNX ops only")
            for out in n.outputs:
                if not out:
                    continue
                if out in producer or out in self.values:
                    raise GraphRefused(f"node {k} ({n.op_type} {n.name!r}) writes {out!r}, which is already "
                                       "defined (an ONNX graph assigns each value once)")
                producer[out] = k
        deps = [set() for _ in nodes]
        users = [[] for _ in nodes]
        for k, n in enumerate(nodes):
            for name in n.inputs:
                if not name:
                    continue
                if name in producer:
                    if producer[name] not in deps[k]:
                        deps[k].add(producer[name])
                        users[producer[name]].append(k)
                elif name not in self.values:
                    raise GraphRefused(f"node {k} ({n.op_type} {n.name!r}) reads {name!r}, which no node, input "
                                       "or initializer defines")
        ready = deque(k for k in range(len(nodes)) if not deps[k])
        order = []
        waiting = [len(d) for d in deps]
        while ready:
            k = ready.popleft()
            order.append(k)
            for u in users[k]:
                waiting[u] -= 1
                if not waiting[u]:
                    ready.append(u)
        if len(order) != len(nodes):
            stuck = [k for k in range(len(nodes)) if waiting[k]]
            raise GraphRefused(f"the graph has a cycle (nodes {stuck[:5]} depend on each other)")
        return [nodes[k] for k in order]

    # -- evaluation --

    def get(self, name):
        v = self.values.get(name)
        if isinstance(v, _Lazy):
            v = self.values[name] = self.tensor(v.proto)
        return v

    def const(self, k):
        """The node's k-th input as a constant array, or refuse."""
        n = self.node
        if k >= len(n.inputs) or not n.inputs[k]:
            self.refuse(f"input {k} is missing")
        v = self.get(n.inputs[k])
        if isinstance(v, SymVec):
            known = v.known()
            if known is not None:
                return known
        if not isinstance(v, np.ndarray):
            self.refuse(f"input {k} ({n.inputs[k]!r}) must be a constant here, but it depends on the data")
        return v

    def _eval(self, node):
        op = node.op_type
        vals = [self.get(name) if name else None for name in node.inputs]
        present = [v for v in vals if v is not None]
        for v in present:
            if isinstance(v, _Unusable):
                self.refuse(f"uses {v.what}")
        if op == "Constant":
            out = self._constant(node)
        elif op in GATES:
            self._recurrent(node, op, vals)
            return
        elif op in _KNOWN_REFUSALS and not (op == "Split" and present and isinstance(vals[0], StateIn)):
            self.refuse(_KNOWN_REFUSALS[op])
        elif present and all(isinstance(v, np.ndarray) for v in present):
            out = self._fold(node, op, vals)
        elif any(isinstance(v, Dyn) for v in present):
            out = self._data_op(node, op, vals)
        elif any(isinstance(v, StateIn) for v in present):
            out = self._state_op(node, op, vals)
        elif any(isinstance(v, Zeros) for v in present):
            out = self._zeros_op(node, op, vals)
        elif op in ("ConstantOfShape", "Expand") and any(isinstance(v, SymVec) for v in present):
            out = self._symbolic_fill(node, op, vals)
        elif any(isinstance(v, SymVec) for v in present):
            try:
                out = fold_symvec(node, op, vals, self.const)
            except FoldError as exc:
                self.refuse(str(exc))
        elif op == "ConstantOfShape":
            out = self._fold(node, op, vals)
        else:
            self.refuse(f"op {op} with no usable inputs")
        outs = out if isinstance(out, list) else [out]
        for name, value in zip(node.outputs, outs):
            if name:
                self.values[name] = value
        if op == "Dropout" and len(node.outputs) > 1 and node.outputs[1]:
            self.values[node.outputs[1]] = _Unusable("Dropout's mask output")

    def _constant(self, node):
        if "value" in node.attributes and node.attributes["value"].t is not None:
            return self.tensor(node.attributes["value"].t)
        for key, cast in (("value_float", np.float32), ("value_int", np.int64)):
            if key in node.attributes:
                return np.asarray(self._attr_value(node, key, None), dtype=cast)
        for key, cast in (("value_floats", np.float32), ("value_ints", np.int64)):
            if key in node.attributes:
                return np.asarray(self._attr_value(node, key, None), dtype=cast)
        self.refuse("a Constant without a tensor, float or int value")

    def _fold(self, node, op, vals):
        try:
            return fold_const(node, op, vals, self.const, lambda key, default: self._attr_value(node, key, default))
        except FoldError as exc:
            self.refuse(str(exc))

    def _attr_value(self, node, key, default):
        a = node.attributes.get(key)
        if a is None:
            return default
        if a.type == 4:
            return self.tensor(a.t)
        return a.value()

    # -- state inputs and zeros --

    def _state_op(self, node, op, vals):
        s = vals[0]
        if not isinstance(s, StateIn) or any(isinstance(v, (Dyn, StateIn)) for v in vals[1:]):
            self.refuse(f"the state input {s.name if isinstance(s, StateIn) else ''!r} is used by {op}; state "
                        "inputs may only be sliced per layer and passed to a recurrent node")
        axis = self._attr_value(node, "axis", 0)
        if op == "Identity" or op == "Cast":
            return s
        if op == "Slice":
            axes, starts, ends, steps = self._slice_args(node, 3 if s.keepdim else 2)
            rows = s.rows
            for ax, st, en, sp in zip(axes, starts, ends, steps):
                if ax == 0:
                    rows = tuple(rows[i] for i in slice_indices(len(rows), st, en, sp))
                elif (st, sp) != (0, 1) or en < INT64_MAX // 2:
                    self.refuse(f"slices axis {ax} of the state input {s.name!r}; only its first axis (the "
                                "layers and directions) may be sliced")
            return replace(s, rows=rows)
        if op == "Gather" and axis == 0:
            idx = self.const(1)
            if idx.ndim > 1 or (idx.ndim == 1 and idx.size != 1):
                self.refuse("gathers several rows of a state input")
            i = int(idx.reshape(-1)[0])
            if not -len(s.rows) <= i < len(s.rows):
                self.refuse(f"row {i} is out of range for the state input {s.name!r}")
            return StateIn(s.name, (s.rows[i],), keepdim=idx.ndim == 1)
        if op in ("Squeeze", "Unsqueeze"):
            axes = self._axes_arg(node)
            if list(axes) != [0]:
                self.refuse(f"{op} of the state input {s.name!r} on axes {axes}; only axis 0 is supported")
            if op == "Squeeze" and len(s.rows) != 1:
                self.refuse(f"squeezes {len(s.rows)} rows of the state input {s.name!r}")
            return replace(s, keepdim=op == "Unsqueeze")
        if op == "Split" and axis == 0:
            sizes = self.const(1).reshape(-1).tolist() if len(node.inputs) > 1 and node.inputs[1] else \
                list(self._attr_value(node, "split", [])) or [len(s.rows) // len(node.outputs)] * len(node.outputs)
            if sum(sizes) != len(s.rows) or len(sizes) != len(node.outputs):
                self.refuse(f"splits {len(s.rows)} state rows into {sizes}")
            out, start = [], 0
            for size in sizes:
                out.append(StateIn(s.name, s.rows[start:start + size]))
                start += size
            return out
        self.refuse(f"{op} on the state input {s.name!r}; state inputs may only be sliced per layer")

    def _symbolic_fill(self, node, op, vals):
        """``ConstantOfShape``/``Expand`` to a shape computed from the input's: a zero state, else refused."""
        fill = self._attr_value(node, "value", None) if op == "ConstantOfShape" else vals[0]
        if fill is not None and (not isinstance(fill, np.ndarray) or np.any(fill)):
            self.refuse(f"{op} fills a tensor shaped like the input with a non-zero or computed value")
        return Zeros()

    def _zeros_op(self, node, op, vals):
        if op in ("Identity", "Cast", "Slice", "Gather", "Squeeze", "Unsqueeze", "Transpose", "Reshape",
                  "Expand", "Concat") and all(isinstance(v, (Zeros, np.ndarray, SymVec)) or v is None
                                                for v in vals):
            if op == "Concat" and not all(isinstance(v, Zeros) or (isinstance(v, np.ndarray) and not v.any())
                                          for v in vals):
                self.refuse("joins a zero state with non-zero values")
            return Zeros()
        self.refuse(f"{op} on a zero tensor made from the input's shape is not supported")

    # -- shape helpers --

    def _axes_arg(self, node):
        axes = self._attr_value(node, "axes", None)
        if axes is None and len(node.inputs) > 1 and node.inputs[1]:
            axes = self.const(1).reshape(-1).tolist()
        return [int(a) for a in axes] if axes is not None else None

    def _slice_args(self, node, ndim):
        """(axes, starts, ends, steps); an end equal to an open size (``Shape(x)[1]``) means 'to the end'."""
        def vector(k):
            v = self.get(node.inputs[k])
            if isinstance(v, SymVec):
                return [INT64_MAX if isinstance(e, Sym) else e for e in v.items]
            return [int(e) for e in np.asarray(self.const(k)).reshape(-1)]
        try:
            return slice_args(node, vector, ndim)
        except FoldError as exc:
            self.refuse(str(exc))

    def _axis(self, axis, v):
        n = len(v.axes)
        if not -n <= axis < n:
            self.refuse(f"axis {axis} is out of range for rank {n}")
        return axis % n

    # -- the data path --

    def _data_op(self, node, op, vals):
        v = vals[0]
        dyn_at = [k for k, x in enumerate(vals) if isinstance(x, Dyn)]
        if isinstance(v, Dyn) and v.pad != (0, 0) and op != "Conv":
            self.refuse("follows a Pad of the time axis; fastlstm folds such a Pad only into a Conv right after it")
        if op == "Pad":
            return self._pad(node, v)
        if op == "Concat":
            return self._concat(node, vals)
        if op == "Gather" and dyn_at == [1]:
            return self._embedding(vals)
        if op == "Mul" and len(dyn_at) == 2:
            return self._silu(self._as_data(vals[0]), self._as_data(vals[1]))
        if op in ("Add", "Mul", "Sub", "Div") and len(dyn_at) == 2:
            self.refuse(f"{op} of two values computed from the data (a residual or gated branch); fastlstm runs a "
                        "single chain of layers")
        if op == "Add" and len(dyn_at) == 1:
            return self._bias_add(vals[dyn_at[0]], vals[1 - dyn_at[0]])
        if dyn_at != [0]:
            self.refuse(f"the data enters {op} as input {dyn_at[0]}, not as its first input")
        if any(isinstance(x, Dyn) for x in vals[1:]):
            self.refuse(f"{op} combines two values computed from the data")
        if op in ("Identity", "Cast"):
            return v
        if op == "Dropout":
            if len(node.inputs) > 2 and node.inputs[2]:
                if bool(np.asarray(self.const(2)).reshape(-1)[0]):
                    self.refuse("Dropout with training_mode=True is random; export in eval mode")
            return v
        if op == "Shape":
            sizes = [a.size for a in v.axes]
            start, end = self._attr_value(node, "start", 0), self._attr_value(node, "end", None)
            return SymVec(tuple(sizes[slice(start, end)]))
        if op == "Transpose":
            perm = self._attr_value(node, "perm", None)
            perm = list(range(len(v.axes)))[::-1] if perm is None else [int(p) for p in perm]
            if sorted(perm) != list(range(len(v.axes))):
                self.refuse(f"perm {perm} does not fit rank {len(v.axes)}")
            return replace(v, axes=tuple(v.axes[p] for p in perm))
        if op == "Unsqueeze":
            axes = self._axes_arg(node)
            rank = len(v.axes) + len(axes)
            out = list(v.axes)
            for a in sorted(a % rank for a in axes):
                out.insert(a, Axis("U", 1))
            return replace(v, axes=tuple(out))
        if op == "Squeeze":
            return self._squeeze(v, self._axes_arg(node))
        if op in ("Reshape", "Flatten"):
            return self._reshape(node, op, v)
        if op == "Gather":
            return self._gather(v, self._axis(self._attr_value(node, "axis", 0), v), self.const(1))
        if op == "Slice":
            return self._slice(node, v)
        if op in ("Gemm", "MatMul"):
            return self._dense(node, op, v)
        if op in _ACTIVATIONS:
            return self._activation(node, op, v)
        if op == "BatchNormalization":
            return self._batchnorm(node, v)
        if op == "LayerNormalization":
            return self._layernorm(node, v)
        if op == "Conv":
            return self._conv(node, v)
        if op in ("MaxPool", "AveragePool"):
            return self._pool(node, op, v)
        if op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "ReduceSum", "ReduceProd"):
            return self._global_pool(node, op, v)
        self.refuse(f"op {op} on the data is not one fastlstm runs (supported: LSTM, GRU, RNN, Gemm, MatMul+Add, "
                    "activations, Conv (1-d), pooling, BatchNormalization, LayerNormalization, Gather on an "
                    "embedding table, Identity/Dropout and shape glue)")

    def _append(self, v, layer, **changes):
        v = self._as_data(v)
        return replace(v, chain=v.chain + (layer,), **changes)

    def _as_data(self, v):
        """A recurrent state output (Y_h) used as data: the final step of its layer."""
        if not v.is_state:
            return v
        if self.index_r(v) is not None and len(v.rows) > 1:
            self.refuse("uses several recurrent state rows at once as data")
        ref = v.rows[0]
        if ref.kind != "h":
            self.refuse("uses a cell state (Y_c) as data; fastlstm's layers output h")
        if ref.layer.bidirectional:
            self.refuse("uses the final state of one direction of a bidirectional layer alone")
        axes = tuple(Axis("U", 1) if a.kind == "R" else a for a in v.axes)
        return Dyn(axes, ref.chain + (LastStep(),), time="last")

    @staticmethod
    def index_r(v):
        r = v.index("R")
        return r[0] if r else None

    def _canonical(self, v, what):
        """``v`` as data whose last axis holds the features, with no direction or state axis left."""
        v = self._as_data(v)
        if v.time == "ids":
            self.refuse(f"{what} on integer token ids")
        for a in v.axes:
            if a.kind == "D" and a.size > 1:
                self.refuse(f"{what} on a bidirectional output whose two directions are still on separate axes; "
                            "only their concatenation (Transpose + Reshape, as exporters write it) is supported")
        if not v.axes or v.axes[-1].kind != "F":
            self.refuse(f"{what} needs the features on the last axis; here the axes are {_show(v.axes)}")
        return v

    def _features(self, v):
        return v.axes[-1].size

    def _squeeze(self, v, axes):
        if axes is None:
            axes = [k for k, a in enumerate(v.axes) if a.kind in ("U", "D", "R") and a.size == 1]
        axes = sorted({self._axis(a, v) for a in axes})
        out = []
        for k, a in enumerate(v.axes):
            if k not in axes:
                out.append(a)
                continue
            if a.kind == "S":
                if a.size.bound != 1 or a.role is None:
                    self.refuse(f"squeezes axis {k}, an open dimension ({a.size!r}) that may not be 1")
                continue   # a time axis of one step (a streaming graph) or a batch of one
            if a.size != 1:
                self.refuse(f"squeezes axis {k} of size {a.size}")
        return replace(v, axes=tuple(out))

    def _gather(self, v, axis, idx):
        a = v.axes[axis]
        if idx.dtype.kind not in "iu" or idx.ndim > 1 or idx.size != 1:
            self.refuse(f"gathers indices {idx.tolist()} on axis {axis}; only one index is supported")
        i = int(idx.reshape(-1)[0])
        keep = idx.ndim == 1
        if a.kind == "R":
            if not -len(v.rows) <= i < len(v.rows):
                self.refuse(f"index {i} is out of range for {len(v.rows)} state rows")
            axes = list(v.axes)
            if keep:
                axes[axis] = Axis("R", 1)
            else:
                del axes[axis]
            return replace(v, axes=tuple(axes), rows=(v.rows[i],))
        if a.kind == "S" and a.role == "T":
            return self._select_step(v, axis, i, keep, f"index {i}")
        if a.kind == "S" and a.role is None and not any(isinstance(x, RECURRENT) for x in v.chain):
            self.refuse(_UNROLLED)
        if a.kind in ("U",) or (a.kind == "D" and a.size == 1) or (a.kind == "S" and a.size.bound == 1
                                                                      and a.role is not None):
            if i not in (0, -1):
                self.refuse(f"index {i} on an axis of size 1")
            return replace(v, axes=v.axes[:axis] + ((Axis("U", 1),) if keep else ()) + v.axes[axis + 1:])
        what = {"S": "the batch", "F": "the features", "D": "the directions of a bidirectional output"}[a.kind]
        self.refuse(f"selects element {i} of {what} (axis {axis}); fastlstm keeps every "
                    f"{'feature' if a.kind == 'F' else 'row'}")

    def _select_step(self, v, axis, i, keep, what):
        """Keep one step of the time axis: the last one (or the first of a reversed sequence), else refuse."""
        n = v.axes[axis].size.bound
        axes = v.axes[:axis] + ((Axis("U", 1),) if keep else ()) + v.axes[axis + 1:]
        if n == 1 and i == 0 and not v.reverse:
            # the one step of a streaming graph (x[0]): every step's output, not "the last of any T"
            return replace(v, axes=axes)
        if n is not None:
            if not -n <= i < n:
                self.refuse(f"{what} is out of range for {n} steps")
            i = -1 if i % n == n - 1 else i % n
        if (i == -1 and not v.reverse) or (i == 0 and v.reverse):
            return replace(self._append(v, LastStep(), time="last", reverse=False), axes=axes)
        where = "the first step" if i == 0 else ("the last step of a reversed sequence" if i == -1 else f"step {i}")
        self.refuse(f"keeps {where} ({what}) of the time axis; fastlstm returns every step or the last one "
                    "(the one a recurrent layer ends on) and never guesses another selection")

    def _slice(self, node, v):
        axes, starts, ends, steps = self._slice_args(node, len(v.axes))
        for ax, st, en, sp in zip(axes, starts, ends, steps):
            a = v.axes[ax]
            n = a.size.bound if a.kind == "S" else a.size
            probe = n if n is not None else 1 << 40
            picked = slice_indices(probe, st, en, sp)
            if len(picked) == probe and sp == 1:
                continue   # the whole axis
            if a.kind == "R":
                v = replace(v, rows=tuple(v.rows[i] for i in picked),
                            axes=v.axes[:ax] + (Axis("R", len(picked)),) + v.axes[ax + 1:])
                continue
            if a.kind == "S" and a.role == "T" and sp == -1 and len(picked) == probe:
                v = replace(v, reverse=not v.reverse)   # the whole sequence, backwards
                continue
            if a.kind == "S" and a.role is None and not any(isinstance(x, RECURRENT) for x in v.chain):
                self.refuse(_UNROLLED)
            if a.kind == "S" and a.role == "T" and len(picked) == 1 and sp == 1:
                i = picked[0] if n is not None or picked[0] == 0 else \
                    (-1 if picked[0] == probe - 1 else picked[0])
                v = self._select_step(v, ax, i, True, f"Slice {st}:{en}")
                continue
            if a.kind == "S" and a.role == "T" and sp == 1 and st >= 0 and (en < 0 or en >= INT64_MAX // 2):
                v = self._crop_conv(v, st, 0 if en >= 0 else -en, f"keeps steps {st}:{en} of the time axis")
                continue
            if a.kind == "S" and a.role == "T":
                self.refuse(f"keeps steps {st}:{en}{f':{sp}' if sp != 1 else ''} of the time axis; fastlstm "
                            "returns every step or the last one and never guesses another crop")
            self.refuse(f"keeps part ({st}:{en}) of axis {ax} ({_show((a,))}); fastlstm keeps every feature and row")
        return v

    def _reshape(self, node, op, v):
        """Reshape (or Flatten) by row-major cut points: axes between matching cumulative sizes form groups."""
        probe = _probe_sizes(v.axes)
        if op == "Flatten":
            axis = self._attr_value(node, "axis", 1) % (len(v.axes) + 1)
            target = [int(np.prod(probe[:axis], dtype=np.int64)), int(np.prod(probe[axis:], dtype=np.int64))]
        else:
            raw = self.get(node.inputs[1])
            vec = as_symvec(raw, "Reshape shape") if isinstance(raw, (SymVec, np.ndarray)) else None
            if vec is None:
                self.refuse("the target shape depends on the data")
            target = []
            allowzero = self._attr_value(node, "allowzero", 0)
            for k, e in enumerate(vec.items):
                if isinstance(e, Sym):
                    e = _probe_of(e)
                elif e == 0 and not allowzero:
                    if k >= len(probe):
                        self.refuse("a 0 in the target shape beyond the input's rank")
                    e = probe[k]
                target.append(int(e))
            if target.count(-1) > 1:
                self.refuse("more than one -1 in the target shape")
            if -1 in target:
                rest = int(np.prod([t for t in target if t != -1], dtype=object))
                total = int(np.prod(probe, dtype=object))
                if rest == 0 or total % rest:
                    self.refuse(f"target shape {target} does not fit the input")
                target[target.index(-1)] = total // rest
        groups = _cut_groups(probe, target)
        if groups is None:
            self.refuse(f"reshapes {_show(v.axes)} to {target}, which does not keep the same elements")
        out = []
        for in_idx, out_sizes in groups:
            big = [v.axes[k] for k in in_idx if not v.axes[k].is_unit()]
            kinds = [a.kind for a in big]
            if len(big) <= 1:
                out.extend(big[0] if s != 1 else Axis("U", 1) for s in out_sizes)
            elif kinds in (["D", "F"], ["R", "F"]) and len([s for s in out_sizes if s != 1]) == 1:
                if kinds[0] == "R":   # both directions' final h, side by side
                    v = self._final_state_concat(v)
                out.extend(Axis("F", big[0].size * big[1].size) if s != 1 else Axis("U", 1) for s in out_sizes)
            else:
                self.refuse(f"reshapes axes {_show(big)} into {out_sizes}; a reshape may only drop or add unit "
                            "axes and merge the two directions of a recurrent output into its features (time "
                            "and batch are never merged)")
        return replace(v, axes=tuple(out))

    def _final_state_concat(self, v):
        """Both directions' final h of one bidirectional layer, side by side: Keras' return_sequences=False."""
        refs = v.rows
        if len(refs) != 2 or refs[0].layer is not refs[1].layer or [r.direction for r in refs] != [0, 1] \
                or any(r.kind != "h" for r in refs):
            self.refuse("joins recurrent state rows other than the forward and backward h of one layer")
        return Dyn((), refs[0].chain + (LastStep(final_state=True),), time="last")

    def _concat(self, node, vals):
        if not all(isinstance(x, Dyn) for x in vals if x is not None):
            self.refuse("joins data with a constant or a state input")
        vals = [x for x in vals if x is not None]
        axis = self._axis(self._attr_value(node, "axis", 0), vals[0])
        if all(x.is_state for x in vals):
            kinds = [x.axes[axis].kind for x in vals]
            if all(k == "R" for k in kinds):
                rows = tuple(r for x in vals for r in x.rows)
                return replace(vals[0], rows=rows, axes=vals[0].axes[:axis] + (Axis("R", len(rows)),)
                               + vals[0].axes[axis + 1:])
            if all(k == "F" for k in kinds) and len(vals) == 2 and all(len(x.rows) == 1 for x in vals) \
                    and all(x.index("R") == [] for x in vals):
                both = self._final_state_concat(replace(vals[0], rows=vals[0].rows + vals[1].rows))
                return replace(both, axes=vals[0].axes[:axis] + (Axis("F", 2 * vals[0].axes[axis].size),)
                               + vals[0].axes[axis + 1:])
        self.refuse("joins two values computed from the data (two branches); fastlstm runs a single chain")

    def _embedding(self, vals):
        table, ids = vals[0], vals[1]
        if not isinstance(table, np.ndarray) or table.ndim != 2:
            self.refuse("gathers from something other than a constant 2-d table")
        if ids.time != "ids" or ids.chain:
            self.refuse("an embedding lookup that is not on the model's integer input")
        return Dyn(ids.axes + (Axis("F", table.shape[1]),), (Embedding(table),), time="seq")

    def _dense(self, node, op, v):
        v = self._canonical(v, op)
        F = self._features(v)
        if op == "MatMul":
            w = self.const(1)
            if w.ndim != 2 or w.shape[0] != F:
                self.refuse(f"multiplies {F} features by a weight of shape {w.shape}; expected ({F}, out)")
            return self._widened(self._append(v, Dense(w.T)), w.shape[1])
        if len(v.axes) != 2:
            self.refuse(f"Gemm on a rank-{len(v.axes)} value")
        if self._attr_value(node, "transA", 0):
            self.refuse("Gemm with transA=1 on the data")
        w = self.const(1)
        w = w.T if self._attr_value(node, "transB", 0) else w
        if w.ndim != 2 or w.shape[0] != F:
            self.refuse(f"multiplies {F} features by a weight of shape {w.shape}")
        alpha, beta = self._attr_value(node, "alpha", 1.0), self._attr_value(node, "beta", 1.0)
        bias = None
        if len(node.inputs) > 2 and node.inputs[2]:
            c = np.asarray(self.const(2), dtype=np.float64) * beta
            bias = self._bias_vector(c, w.shape[1])
        return self._widened(self._append(v, Dense(alpha * w.T.astype(np.float64), bias)), w.shape[1])

    @staticmethod
    def _widened(v, width):
        """``v`` with ``width`` features (after a dense layer)."""
        return replace(v, axes=v.axes[:-1] + (Axis("F", width),))

    def _bias_vector(self, c, width):
        if c.size not in (1, width) or (c.ndim and c.shape[-1] not in (1, width)) or \
                any(d != 1 for d in c.shape[:-1]):
            self.refuse(f"adds a constant of shape {c.shape} that is not one value per feature ({width})")
        return np.broadcast_to(c.reshape(-1), (width,))

    def _bias_add(self, v, c):
        if not isinstance(c, np.ndarray):
            self.refuse("adds a value that is not a constant")
        v = self._canonical(v, "Add")
        last = v.chain[-1] if v.chain else None
        if not isinstance(last, Dense) or last.activation != "linear":
            self.refuse("adds a constant that does not follow a MatMul (only MatMul + Add, a dense layer, is "
                        "supported)")
        bias = self._bias_vector(np.asarray(c, np.float64), last.output_size)
        total = bias if last.bias is None else last.bias.astype(np.float64) + bias
        return replace(v, chain=v.chain[:-1] + (Dense(last.weight, total),))

    def _activation(self, node, op, v):
        name = _ACTIVATIONS[op]
        kwargs = {}
        if op == "Softmax":
            v = self._canonical(v, op)
            axis = self._attr_value(node, "axis", -1)
            if self._axis(axis, v) != len(v.axes) - 1:
                self.refuse(f"softmax over axis {axis}, not over the features")
        elif op == "PRelu":
            v = self._canonical(v, op)
            slope = np.asarray(self.const(1), np.float32)
            F = self._features(v)
            if slope.size not in (1, F) or (slope.ndim and slope.shape[-1] != slope.size):
                self.refuse(f"PRelu slope of shape {slope.shape} is not one per feature ({F})")
            kwargs["weight"] = slope.reshape(-1)
        elif op in ("Elu", "LeakyRelu"):
            kwargs["alpha"] = self._attr_value(node, "alpha", 1.0 if op == "Elu" else 0.01)
        elif op == "Selu":
            alpha, gamma = self._attr_value(node, "alpha", 1.67326319217681884765625), \
                self._attr_value(node, "gamma", 1.05070102214813232421875)
            if abs(alpha - 1.6732632423543772) > 1e-6 or abs(gamma - 1.0507009873554805) > 1e-6:
                self.refuse(f"Selu with alpha={alpha}, gamma={gamma}; only the standard constants are supported")
        elif op == "HardSigmoid":
            alpha, beta = self._attr_value(node, "alpha", 0.2), self._attr_value(node, "beta", 0.5)
            if abs(beta - 0.5) > 1e-7:
                self.refuse(f"HardSigmoid with beta={beta}")
            if abs(alpha - 0.2) <= 1e-7:
                name = "hard_sigmoid_keras2"
            elif abs(alpha - 1 / 6) <= 1e-7:
                name = "hard_sigmoid"
            else:
                self.refuse(f"HardSigmoid with alpha={alpha} (supported: 0.2 and 1/6)")
        elif op == "Gelu":
            approx = self._attr_value(node, "approximate", b"none")
            name = {b"none": "gelu", b"tanh": "gelu_tanh"}.get(approx)
            if name is None:
                self.refuse(f"Gelu approximate={approx!r}")
        v = self._as_data(v)
        if v.time == "ids":
            self.refuse(f"{op} on integer token ids")
        last = v.chain[-1] if v.chain else None
        if isinstance(last, Dense) and last.activation == "linear":
            act = Activation(name, **kwargs)
            return replace(v, chain=v.chain[:-1] + (Dense(last.weight, last.bias, act),))
        return self._append(v, Activation(name, **kwargs))

    def _channel_axis_ok(self, v, what):
        v = self._as_data(v)
        if len(v.axes) < 2 or v.axes[1].kind != "F":
            self.refuse(f"{what} normalizes axis 1, which holds {_show(v.axes[1:2])}, not the features")
        return v

    def _batchnorm(self, node, v):
        v = self._channel_axis_ok(v, "BatchNormalization")
        if self._attr_value(node, "training_mode", 0):
            self.refuse("BatchNormalization in training mode; export in eval mode")
        if len(node.outputs) > 1 and any(node.outputs[1:]):
            self.refuse("BatchNormalization with running-statistics outputs (training mode)")
        scale, bias, mean, var = (np.asarray(self.const(k), np.float32) for k in range(1, 5))
        eps = self._attr_value(node, "epsilon", 1e-5)
        return self._append(v, BatchNorm(mean, var, scale, bias, eps))

    def _layernorm(self, node, v):
        v = self._canonical(v, "LayerNormalization")
        if self._axis(self._attr_value(node, "axis", -1), v) != len(v.axes) - 1:
            self.refuse("LayerNormalization over more than the feature axis")
        if len(node.outputs) > 1 and any(node.outputs[1:]):
            self.refuse("LayerNormalization with mean/inverse-deviation outputs")
        gamma = np.asarray(self.const(1), np.float32).reshape(-1)
        beta = np.asarray(self.const(2), np.float32).reshape(-1) if len(node.inputs) > 2 and node.inputs[2] else None
        return self._append(v, LayerNorm(self._features(v), gamma, beta, self._attr_value(node, "epsilon", 1e-5)))

    def _time_layer_input(self, v, what):
        """(N, C, L) data for Conv/pooling: fixes N as the batch and L as time."""
        v = self._as_data(v)
        if len(v.axes) != 3 or v.axes[1].kind != "F":
            self.refuse(f"{what} expects (batch, channels, time), got axes {_show(v.axes)}")
        if v.time != "seq" or v.reverse:
            self.refuse(f"{what} on {'a single step' if v.time == 'last' else 'a reversed sequence'}")
        self._assign(v.axes[0], "B")
        self._assign(v.axes[2], "T")
        return v

    def _new_time(self, v, same_length):
        if same_length:
            return v.axes[2]
        sym = Sym(f"time after node {self.position}")
        sym.role = "T"
        return Axis("S", sym)

    def _conv(self, node, v):
        v = self._time_layer_input(v, "Conv")
        w = np.asarray(self.const(1), np.float32)
        if w.ndim != 3:
            self.refuse(f"a {w.ndim - 2}-d convolution; fastlstm runs 1-d convolutions over time")
        bias = np.asarray(self.const(2), np.float32) if len(node.inputs) > 2 and node.inputs[2] else None
        stride, dilation, padding = self._window_attrs(node, "strides", w.shape[2])
        group = self._attr_value(node, "group", 1)
        padding = (padding[0] + v.pad[0], padding[1] + v.pad[1])
        conv = Conv1D(w, bias, stride=stride, dilation=dilation, groups=group, padding=padding)
        v = replace(v, pad=(0, 0))
        same = stride == 1 and sum(conv.padding) == conv.reach
        axes = (v.axes[0], Axis("F", conv.output_size), self._new_time(v, same))
        return replace(self._append(v, conv), axes=axes)

    def _pad(self, node, v):
        """Zero padding of the time axis of (batch, channels, time) data: owed to the Conv that follows
        (``F.pad(x, (k - 1, 0))`` before ``nn.Conv1d``, a causal convolution)."""
        mode = self._attr_value(node, "mode", b"constant")
        pads = self._attr_value(node, "pads", None)
        pads = [int(p) for p in (self.const(1).reshape(-1) if pads is None else pads)]
        value = self.const(2).reshape(-1) if len(node.inputs) > 2 and node.inputs[2] else \
            np.asarray([self._attr_value(node, "value", 0.0)])
        if len(node.inputs) > 3 and node.inputs[3]:
            self.refuse("Pad with an axes input")
        n = len(v.axes)
        if mode != b"constant" or np.any(value != 0) or len(pads) != 2 * n or n != 3 or v.axes[1].kind != "F" \
                or any(pads[k] or pads[k + n] for k in (0, 1)) or min(pads) < 0:
            self.refuse(f"Pad {pads} ({mode.decode(errors='replace')}, value {value.tolist()}); fastlstm folds "
                        "only zero padding of the time axis of (batch, channels, time) data into the next Conv")
        return replace(v, pad=(v.pad[0] + pads[2], v.pad[1] + pads[2 + n]))

    def _crop_conv(self, v, left, right, what):
        """Dropping the first/last steps of a stride-1 Conv's output is the same Conv with less padding
        (``conv(x)[..., :-(k - 1)]``, another way to write a causal convolution)."""
        conv = v.chain[-1] if v.chain else None
        if not isinstance(conv, Conv1D) or conv.stride != 1 or conv.padding == "same" or \
                conv.padding[0] < left or conv.padding[1] < right:
            self.refuse(f"{what}; fastlstm returns every step or the last one and never guesses another crop "
                        "(a crop of a stride-1 Conv's padded steps is folded into its padding)")
        padding = (conv.padding[0] - left, conv.padding[1] - right)
        trimmed = Conv1D(conv.weight, conv.bias, stride=1, dilation=conv.dilation, groups=conv.groups,
                         padding=padding, activation=conv.act)
        return replace(v, chain=v.chain[:-1] + (trimmed,))

    def _window_attrs(self, node, key, kernel):
        auto = self._attr_value(node, "auto_pad", b"NOTSET")
        if auto not in (b"NOTSET", b"VALID"):
            self.refuse(f"auto_pad={auto.decode(errors='replace')}; export with explicit pads")
        strides = list(self._attr_value(node, key, [1]))
        dilations = list(self._attr_value(node, "dilations", [1]))
        pads = list(self._attr_value(node, "pads", [0, 0])) if auto == b"NOTSET" else [0, 0]
        if len(strides) != 1 or len(dilations) != 1 or len(pads) != 2:
            self.refuse("strides, dilations and pads must describe one (time) axis")
        return strides[0], dilations[0], (pads[0], pads[1])

    def _pool(self, node, op, v):
        v = self._time_layer_input(v, op)
        kernel = list(self._attr_value(node, "kernel_shape", []))
        if len(kernel) != 1:
            self.refuse(f"kernel_shape {kernel}; a 1-d pool has one")
        stride, dilation, padding = self._window_attrs(node, "strides", kernel[0])
        if dilation != 1 or self._attr_value(node, "ceil_mode", 0):
            self.refuse("pooling with dilation or ceil_mode")
        if op == "MaxPool":
            if len(node.outputs) > 1 and node.outputs[1]:
                self.refuse("MaxPool's indices output")
            pool = MaxPool1D(kernel[0], stride, padding)
        else:
            pool = AvgPool1D(kernel[0], stride, padding, bool(self._attr_value(node, "count_include_pad", 0)))
        same = stride == 1 and sum(pool.padding) == kernel[0] - 1
        return replace(self._append(v, pool), axes=(v.axes[0], v.axes[1], self._new_time(v, same)))

    def _global_pool(self, node, op, v):
        v = self._as_data(v)
        if op.startswith("Global"):
            v = self._time_layer_input(v, op)
            axis, keep = 2, True
        else:
            axes = self._axes_arg(node)
            if axes is None or len(axes) != 1:
                self.refuse(f"{op} over axes {axes}; only a reduction over time is supported")
            axis, keep = self._axis(axes[0], v), bool(self._attr_value(node, "keepdims", 1))
            if v.axes[axis].kind == "D" and v.axes[axis].size == 2:
                return self._merge_directions(v, axis, keep, op)
            if v.axes[axis].role != "T" or op in ("ReduceSum", "ReduceProd"):
                self.refuse(f"{op} over axis {axis} ({_show(v.axes[axis:axis + 1])}), not over time")
        layer = GlobalMaxPool1D() if op.endswith(("Max", "MaxPool")) else GlobalAvgPool1D()
        v = self._append(v, layer, time="last")
        return replace(v, axes=v.axes[:axis] + ((Axis("U", 1),) if keep else ()) + v.axes[axis + 1:])

    def _merge_directions(self, v, axis, keep, op):
        """Sum, mean or product over the directions of a bidirectional output: Keras' merge modes."""
        layer = v.chain[-1] if v.chain else None
        if not isinstance(layer, RECURRENT) or not layer.bidirectional or layer.merge_mode != "concat":
            self.refuse(f"{op} over the directions of something other than a bidirectional layer's output")
        merged = replace(layer, merge_mode={"ReduceSum": "sum", "ReduceMean": "ave", "ReduceProd": "mul"}[op])
        axes = v.axes[:axis] + ((Axis("U", 1),) if keep else ()) + v.axes[axis + 1:]
        return replace(v, chain=v.chain[:-1] + (merged,), axes=axes)

    def _silu(self, a, b):
        """``Mul(x, Sigmoid(x))``: SiLU/swish, the one two-branch pattern fastlstm recognises."""
        a, b = (a, b) if len(a.chain) <= len(b.chain) else (b, a)
        same_prefix = len(a.chain) and all(p is q for p, q in zip(a.chain[:-1], b.chain[:-1]))
        last_a, last_b = (a.chain[-1], b.chain[-1]) if same_prefix else (None, None)
        if len(b.chain) == len(a.chain) + 1 and last_a is b.chain[-2] and b.chain[-1] == Activation("sigmoid"):
            return self._append(a, Activation("silu"))
        if len(b.chain) == len(a.chain) and isinstance(last_a, Dense) and isinstance(last_b, Dense) and \
                last_a.activation == "linear" and last_b.activation == "sigmoid" and \
                np.array_equal(last_a.weight, last_b.weight) and _same(last_a.bias, last_b.bias):
            return replace(a, chain=a.chain[:-1] + (Dense(last_a.weight, last_a.bias, "silu"),))
        self.refuse("Mul of two values computed from the data (a gated branch); only x * sigmoid(x) (SiLU) is "
                    "recognised")

    # -- recurrent nodes --

    def _assign(self, axis, role):
        if axis.kind == "S":
            if axis.size.role not in (None, role):
                self.refuse(f"uses the {_role_name(axis.size.role)} axis as the {_role_name(role)} axis")
            axis.size.role = role
        elif not axis.is_unit():
            self.refuse(f"expects the {_role_name(role)} axis where the data has {_show((axis,))}")

    def _recurrent(self, node, op, vals):
        x = vals[0] if vals else None
        if not isinstance(x, Dyn):
            self.refuse("the recurrent input X is not computed from the graph's input")
        x = self._canonical(x, op)
        if x.time != "seq":
            self.refuse(f"{op} on a single step (the time axis was already reduced)")
        if x.reverse:
            self.refuse(f"{op} on the output of a reverse-direction layer, whose steps fastlstm produces in "
                        "reversed order")
        try:
            layer, info = recurrent_layer(op, node.attributes, lambda k: np.asarray(self.const(k), np.float32),
                                          lambda k: len(node.inputs) > k and bool(node.inputs[k]))
        except RecurrentRefused as exc:
            self.refuse(str(exc))
        except (TypeError, ValueError) as exc:
            self.refuse(f"weights do not form a {op} layer: {exc}")
        if len(x.axes) != 3:
            self.refuse(f"X has rank {len(x.axes)}; expected 3")
        t_pos, b_pos = (0, 1) if info.layout == 0 else (1, 0)
        t_axis, b_axis = x.axes[t_pos], x.axes[b_pos]
        if t_axis.kind == "U":
            t_axis = Axis("S", _fixed_sym("T", 1))
        if b_axis.kind == "U":
            b_axis = Axis("S", _fixed_sym("B", 1))
        self._assign(t_axis, "T")
        self._assign(b_axis, "B")
        if x.axes[2].size != info.input_size:
            self.refuse(f"X has {x.axes[2].size} features but W expects {info.input_size}")
        if len(node.inputs) > 4 and node.inputs[4]:
            self.refuse("sequence_lens gives each batch row its own length; fastlstm runs every row for all steps "
                        "(pad and export without sequence_lens)")
        self._initial_state(node, op, layer, info)
        chain = x.chain + (layer,)
        D, H = Axis("D", info.directions), Axis("F", info.hidden_size)
        y_axes = (t_axis, D, b_axis, H) if info.layout == 0 else (b_axis, t_axis, D, H)
        outputs = [Dyn(y_axes, chain, reverse=info.reverse)]
        R = Axis("R", info.directions)
        s_axes = (R, b_axis, H) if info.layout == 0 else (b_axis, R, H)
        for kind in ("h", "c"):
            rows = tuple(StateRef(layer, d, kind, chain) for d in range(info.directions))
            outputs.append(Dyn(s_axes, chain, time="last", rows=rows))
        if op != "LSTM":
            outputs[2] = _Unusable(f"{op} has no Y_c output")
        for name, value in zip(node.outputs, outputs):
            if name:
                self.values[name] = value

    def _initial_state(self, node, op, layer, info):
        kinds = ("h", "c") if op == "LSTM" else ("h",)
        for k, kind in zip((5, 6), kinds):
            if len(node.inputs) <= k or not node.inputs[k]:
                continue
            s = self.get(node.inputs[k])
            if isinstance(s, Zeros) or (isinstance(s, np.ndarray) and not np.any(s)):
                continue
            if isinstance(s, np.ndarray):
                self.refuse(f"initial_{kind} is a non-zero constant; fastlstm models start from zero state "
                            "(pass state= to predict, or set stream.state)")
            if not isinstance(s, StateIn):
                self.refuse(f"initial_{kind} is computed from the data")
            if info.layout == 1:
                self.refuse(f"initial_{kind} as a graph input with layout=1 (state rows on axis 1) is not supported")
            if not s.keepdim or len(s.rows) != info.directions:
                self.refuse(f"initial_{kind} takes {len(s.rows)} rows of {s.name!r}; the layer has "
                            f"{info.directions} direction(s)")
            for d, row in enumerate(s.rows):
                self.state_in_use[(id(layer), d, kind)] = (s.name, row)

    # -- result --

    def _result(self):
        outputs = self.graph.outputs
        data, states = [], {}
        for vi in outputs:
            v = self.values.get(vi.name)
            if isinstance(v, Dyn) and v.is_state and self.index_r(v) is not None:
                states[vi.name] = v
            elif isinstance(v, Dyn):
                data.append((vi.name, v))
            elif isinstance(v, StateIn):
                raise GraphRefused(f"graph output {vi.name!r} passes a state input through unchanged")
            else:
                raise GraphRefused(f"graph output {vi.name!r} does not depend on the input data")
        if len(data) != 1:
            raise GraphRefused(f"the graph has {len(data)} data outputs {[n for n, _ in data]}; fastlstm models "
                               "return one (plus optional recurrent state outputs)")
        name, v = data[0]
        if v.is_state:
            v = self._as_data(v)
        if v.time == "ids" or not v.chain:
            raise GraphRefused(f"graph output {name!r} applies no layer to the input")
        for a in v.axes:
            if a.kind == "D" and a.size > 1:
                raise GraphRefused(f"graph output {name!r} keeps the two directions of a bidirectional layer on "
                                   "separate axes; fastlstm returns them concatenated")
        if v.reverse and v.time == "seq":
            raise GraphRefused(f"graph output {name!r} is the full output of a reverse-direction layer, whose "
                               "steps fastlstm produces in reversed order (Keras go_backwards); keep its last "
                               "step (Y_h) or use a bidirectional layer")
        if v.axes and v.axes[-1].kind not in ("F", "U") and not (v.axes[-1].kind == "S" and
                                                                   v.axes[-1].size.bound == 1):
            raise GraphRefused(f"graph output {name!r} has axes {_show(v.axes)}; fastlstm returns the features "
                               "last")
        chain = v.chain
        in_axes = self._roles(self.input_value.axes)
        out_axes = self._roles(v.axes)
        seq_in = [r for r in in_axes if r in ("T", "B")]
        seq_out = [r for r in out_axes if r in ("T", "B")]
        if len(seq_in) == 2 and len(seq_out) == 2 and seq_in != seq_out:
            raise GraphRefused(f"the input is {'batch' if seq_in[0] == 'B' else 'time'}-major but output "
                               f"{name!r} is {'batch' if seq_out[0] == 'B' else 'time'}-major; fastlstm's predict "
                               "uses one layout for both")
        layers = [layer for layer in chain if isinstance(layer, RECURRENT)]
        index = {id(layer): k for k, layer in enumerate(layers)}
        state_inputs = {}
        for (lid, d, kind), (sname, row) in self.state_in_use.items():
            if lid not in index:
                raise GraphRefused(f"state input {sname!r} feeds a recurrent layer that the output does not use")
            state_inputs.setdefault(sname, {})[row] = (index[lid], d, kind)
        state_inputs = {n: [rows[r] for r in sorted(rows)] for n, rows in state_inputs.items()}
        state_outputs = {}
        for sname, sv in states.items():
            refs = []
            for ref in sv.rows:
                if id(ref.layer) not in index:
                    raise GraphRefused(f"state output {sname!r} comes from a layer the data output does not use")
                refs.append((index[id(ref.layer)], ref.direction, ref.kind))
            state_outputs[sname] = refs
        return GraphMatch(chain, self.input_vi.name, in_axes, name, out_axes, state_inputs, state_outputs)

    @staticmethod
    def _roles(axes):
        out = []
        for a in axes:
            if a.kind == "S":
                out.append(a.role or "?")
            elif a.kind == "U":
                out.append("1")
            else:
                out.append("F")
        return tuple(out)


class _Lazy:
    """An initializer not yet decoded (most are weights read once, by the node that uses them)."""

    def __init__(self, proto):
        self.proto = proto


class _Unusable:
    def __init__(self, what):
        self.what = what


def _same(a, b):
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def _fixed_sym(role, size):
    s = Sym(role, size)
    s.role = role
    return s


def _probe_of(sym):
    """A concrete stand-in size for an open dimension: its declared size, else its own large prime."""
    return sym.bound if sym.bound is not None else sym.probe


def _probe_sizes(axes):
    return [_probe_of(a.size) if a.kind == "S" else a.size for a in axes]


def _cut_groups(in_sizes, out_sizes):
    """Pair runs of input and output axes whose products match (row-major reshape); None if sizes differ."""
    if int(np.prod(in_sizes, dtype=object)) != int(np.prod(out_sizes, dtype=object)):
        return None
    groups, i, j = [], 0, 0
    while i < len(in_sizes) or j < len(out_sizes):
        gi, gj = [], []
        pi = pj = 1
        # take at least one element from a side that has elements left, then balance the products
        if i < len(in_sizes):
            gi.append(i)
            pi *= in_sizes[i]
            i += 1
        if j < len(out_sizes):
            gj.append(out_sizes[j])
            pj *= out_sizes[j]
            j += 1
        while pi != pj:
            if pi < pj and i < len(in_sizes):
                gi.append(i)
                pi *= in_sizes[i]
                i += 1
            elif pj < pi and j < len(out_sizes):
                gj.append(out_sizes[j])
                pj *= out_sizes[j]
                j += 1
            else:
                return None
        # unit dims that follow belong to the group just closed
        while i < len(in_sizes) and in_sizes[i] == 1 and (j >= len(out_sizes) or out_sizes[j] != 1):
            gi.append(i)
            i += 1
        while j < len(out_sizes) and out_sizes[j] == 1 and (i >= len(in_sizes) or in_sizes[i] != 1):
            gj.append(1)
            j += 1
        groups.append((gi, gj))
    return groups


def _role_name(role):
    return {"T": "time", "B": "batch"}.get(role, str(role))


def _show(axes):
    names = {"F": "features", "D": "directions", "R": "state rows", "U": "1"}
    parts = []
    for a in axes:
        if a.kind == "S":
            parts.append(_role_name(a.role) if a.role else f"open({a.size.label})")
        else:
            parts.append(f"{names[a.kind]}={a.size}" if a.kind != "U" else "1")
    return "(" + ", ".join(parts) + ")"
