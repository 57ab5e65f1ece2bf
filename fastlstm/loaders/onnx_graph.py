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

This module holds the interpreter itself (ordering, dispatch, state inputs, recurrent
nodes, the result); the values are in :mod:`.onnx_values`, the shape ops in
:mod:`.onnx_shape_ops` and the ops that add layers in :mod:`.onnx_layer_ops`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace

import numpy as np

from ..layers import RECURRENT, LastStep
from .onnx_fold import INT64_MAX, FoldError, Sym, SymVec, fold_const, fold_symvec, slice_args, slice_indices
from .onnx_layer_ops import ACTIVATION_OPS, LayerOps
from .onnx_recurrent import GATES, RecurrentRefused, recurrent_layer
from .onnx_shape_ops import ShapeOps
from .onnx_values import (
    Axis,
    Dyn,
    GraphMatch,
    GraphRefused,
    Lazy,
    StateIn,
    StateRef,
    Unusable,
    Zeros,
    fixed_sym,
    role_name,
    show,
)

__all__ = ["GraphMatch", "GraphRefused", "Matcher"]

_GLUE = ("Identity", "Slice", "Gather", "Squeeze", "Unsqueeze", "Split", "Cast")
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


# --- the interpreter -------------------------------------------------------------


class Matcher(ShapeOps, LayerOps):
    """Runs the graph symbolically; :meth:`run` returns a :class:`GraphMatch`."""

    def __init__(self, graph, tensor):
        self.graph = graph
        self.tensor = tensor  # Tensor proto -> numpy array (the file reader's, with its checks)
        self.values = {}
        self.state_in_use = {}  # (layer id, direction, kind) -> (input name, row)
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
            self.values[name] = Lazy(t)
        state_inputs = self._state_input_names()
        data_inputs = []
        for vi in g.inputs:
            if vi.name in g.initializers:
                continue
            if vi.kind != "tensor" or vi.shape is None:
                raise GraphRefused(
                    f"graph input {vi.name!r} is a {vi.kind} without a tensor shape; fastlstm needs "
                    "a tensor input of known rank"
                )
            if vi.name in state_inputs:
                rows = vi.shape[0] if vi.shape else None
                if not isinstance(rows, int) or rows < 1:
                    raise GraphRefused(
                        f"state input {vi.name!r} has shape {vi.shape}; its first axis (layers x "
                        "directions) must have a fixed size"
                    )
                self.values[vi.name] = StateIn(vi.name, tuple(range(rows)))
            else:
                self.values[vi.name] = self._data_input(vi)
                data_inputs.append(vi)
        if len(data_inputs) != 1:
            names = [vi.name for vi in data_inputs]
            raise GraphRefused(
                f"the graph has {len(names)} data inputs {names}; fastlstm models take one sequence "
                "(plus optional recurrent state inputs)"
            )
        self.input_vi = data_inputs[0]
        self.input_value = self.values[self.input_vi.name]
        for position, node in enumerate(self._ordered_nodes()):
            self.position, self.node = position, node
            try:
                with np.errstate(over="ignore", invalid="ignore"):  # an overflow to inf is refused by the layer
                    self._eval(node)
            except (
                KeyError,
                IndexError,
                TypeError,
                AttributeError,
                OverflowError,
                ZeroDivisionError,
                np.exceptions.AxisError,
            ) as exc:
                # a node whose inputs or attributes have the wrong kind or size for its op
                self.refuse(f"malformed node ({type(exc).__name__}: {exc})")
        self.node = None
        return self._result()

    def _data_input(self, vi):
        from .onnx_proto import DTYPE_NAMES

        shape = vi.shape
        if not 1 <= len(shape) <= 3:
            raise GraphRefused(
                f"graph input {vi.name!r} has rank {len(shape)}; expected (T, I), (T, B, I) or "
                "(B, T, I), or integer token ids (T,)/(B, T)"
            )
        axes = []
        integer = vi.elem_type in (6, 7)
        if not integer and vi.elem_type not in (1, 10, 11):
            raise GraphRefused(
                f"graph input {vi.name!r} has element type "
                f"{DTYPE_NAMES.get(vi.elem_type, vi.elem_type)}; expected float or integer ids"
            )
        open_axes = shape if integer else shape[:-1]
        for k, d in enumerate(open_axes):
            axes.append(Axis("S", Sym(f"{vi.name}[{k}]", d if isinstance(d, int) else None)))
        if not integer:
            last = shape[-1]
            if not isinstance(last, int) or last < 1:
                raise GraphRefused(
                    f"graph input {vi.name!r} has shape {shape}; its last axis (the features) must have a fixed size"
                )
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
                raise GraphRefused(
                    f"node {k} ({n.op_type} {n.name!r}) is from the custom-op domain {n.domain!r}; "
                    "fastlstm runs standard ONNX ops only"
                )
            for out in n.outputs:
                if not out:
                    continue
                if out in producer or out in self.values:
                    raise GraphRefused(
                        f"node {k} ({n.op_type} {n.name!r}) writes {out!r}, which is already "
                        "defined (an ONNX graph assigns each value once)"
                    )
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
                    raise GraphRefused(
                        f"node {k} ({n.op_type} {n.name!r}) reads {name!r}, which no node, input or initializer defines"
                    )
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
        if isinstance(v, Lazy):
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
            if isinstance(v, Unusable):
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
            self.values[node.outputs[1]] = Unusable("Dropout's mask output")

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
            self.refuse(
                f"the state input {s.name if isinstance(s, StateIn) else ''!r} is used by {op}; state "
                "inputs may only be sliced per layer and passed to a recurrent node"
            )
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
                    self.refuse(
                        f"slices axis {ax} of the state input {s.name!r}; only its first axis (the "
                        "layers and directions) may be sliced"
                    )
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
            sizes = (
                self.const(1).reshape(-1).tolist()
                if len(node.inputs) > 1 and node.inputs[1]
                else list(self._attr_value(node, "split", [])) or [len(s.rows) // len(node.outputs)] * len(node.outputs)
            )
            if sum(sizes) != len(s.rows) or len(sizes) != len(node.outputs):
                self.refuse(f"splits {len(s.rows)} state rows into {sizes}")
            out, start = [], 0
            for size in sizes:
                out.append(StateIn(s.name, s.rows[start : start + size]))
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
        if op in (
            "Identity",
            "Cast",
            "Slice",
            "Gather",
            "Squeeze",
            "Unsqueeze",
            "Transpose",
            "Reshape",
            "Expand",
            "Concat",
        ) and all(isinstance(v, (Zeros, np.ndarray, SymVec)) or v is None for v in vals):
            if op == "Concat" and not all(
                isinstance(v, Zeros) or (isinstance(v, np.ndarray) and not v.any()) for v in vals
            ):
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
            self.refuse(
                f"{op} of two values computed from the data (a residual or gated branch); fastlstm runs a "
                "single chain of layers"
            )
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
        if op in ACTIVATION_OPS:
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
        self.refuse(
            f"op {op} on the data is not one fastlstm runs (supported: LSTM, GRU, RNN, Gemm, MatMul+Add, "
            "activations, Conv (1-d), pooling, BatchNormalization, LayerNormalization, Gather on an "
            "embedding table, Identity/Dropout and shape glue)"
        )

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
                self.refuse(
                    f"{what} on a bidirectional output whose two directions are still on separate axes; "
                    "only their concatenation (Transpose + Reshape, as exporters write it) is supported"
                )
        if not v.axes or v.axes[-1].kind != "F":
            self.refuse(f"{what} needs the features on the last axis; here the axes are {show(v.axes)}")
        return v

    def _features(self, v):
        return v.axes[-1].size

    # -- recurrent nodes --

    def _assign(self, axis, role):
        if axis.kind == "S":
            if axis.size.role not in (None, role):
                self.refuse(f"uses the {role_name(axis.size.role)} axis as the {role_name(role)} axis")
            axis.size.role = role
        elif not axis.is_unit():
            self.refuse(f"expects the {role_name(role)} axis where the data has {show((axis,))}")

    def _recurrent(self, node, op, vals):
        x = vals[0] if vals else None
        if not isinstance(x, Dyn):
            self.refuse("the recurrent input X is not computed from the graph's input")
        x = self._canonical(x, op)
        if x.time != "seq":
            self.refuse(f"{op} on a single step (the time axis was already reduced)")
        if x.reverse:
            self.refuse(
                f"{op} on the output of a reverse-direction layer, whose steps fastlstm produces in reversed order"
            )
        try:
            layer, info = recurrent_layer(
                op,
                node.attributes,
                lambda k: np.asarray(self.const(k), np.float32),
                lambda k: len(node.inputs) > k and bool(node.inputs[k]),
            )
        except RecurrentRefused as exc:
            self.refuse(str(exc))
        except (TypeError, ValueError) as exc:
            self.refuse(f"weights do not form a {op} layer: {exc}")
        if len(x.axes) != 3:
            self.refuse(f"X has rank {len(x.axes)}; expected 3")
        t_pos, b_pos = (0, 1) if info.layout == 0 else (1, 0)
        t_axis, b_axis = x.axes[t_pos], x.axes[b_pos]
        if t_axis.kind == "U":
            t_axis = Axis("S", fixed_sym("T", 1))
        if b_axis.kind == "U":
            b_axis = Axis("S", fixed_sym("B", 1))
        self._assign(t_axis, "T")
        self._assign(b_axis, "B")
        if x.axes[2].size != info.input_size:
            self.refuse(f"X has {x.axes[2].size} features but W expects {info.input_size}")
        if len(node.inputs) > 4 and node.inputs[4]:
            self.refuse(
                "sequence_lens gives each batch row its own length; fastlstm runs every row for all steps "
                "(pad and export without sequence_lens)"
            )
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
            outputs[2] = Unusable(f"{op} has no Y_c output")
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
                self.refuse(
                    f"initial_{kind} is a non-zero constant; fastlstm models start from zero state "
                    "(pass state= to predict, or set stream.state)"
                )
            if not isinstance(s, StateIn):
                self.refuse(f"initial_{kind} is computed from the data")
            if info.layout == 1:
                self.refuse(f"initial_{kind} as a graph input with layout=1 (state rows on axis 1) is not supported")
            if not s.keepdim or len(s.rows) != info.directions:
                self.refuse(
                    f"initial_{kind} takes {len(s.rows)} rows of {s.name!r}; the layer has "
                    f"{info.directions} direction(s)"
                )
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
            raise GraphRefused(
                f"the graph has {len(data)} data outputs {[n for n, _ in data]}; fastlstm models "
                "return one (plus optional recurrent state outputs)"
            )
        name, v = data[0]
        if v.is_state:
            v = self._as_data(v)
        if v.time == "ids" or not v.chain:
            raise GraphRefused(f"graph output {name!r} applies no layer to the input")
        for a in v.axes:
            if a.kind == "D" and a.size > 1:
                raise GraphRefused(
                    f"graph output {name!r} keeps the two directions of a bidirectional layer on "
                    "separate axes; fastlstm returns them concatenated"
                )
        if v.reverse and v.time == "seq":
            raise GraphRefused(
                f"graph output {name!r} is the full output of a reverse-direction layer, whose "
                "steps fastlstm produces in reversed order (Keras go_backwards); keep its last "
                "step (Y_h) or use a bidirectional layer"
            )
        if v.axes and v.axes[-1].kind not in ("F", "U") and not (v.axes[-1].kind == "S" and v.axes[-1].size.bound == 1):
            raise GraphRefused(f"graph output {name!r} has axes {show(v.axes)}; fastlstm returns the features last")
        chain = v.chain
        in_axes = self._roles(self.input_value.axes)
        out_axes = self._roles(v.axes)
        seq_in = [r for r in in_axes if r in ("T", "B")]
        seq_out = [r for r in out_axes if r in ("T", "B")]
        if len(seq_in) == 2 and len(seq_out) == 2 and seq_in != seq_out:
            raise GraphRefused(
                f"the input is {'batch' if seq_in[0] == 'B' else 'time'}-major but output "
                f"{name!r} is {'batch' if seq_out[0] == 'B' else 'time'}-major; fastlstm's predict "
                "uses one layout for both"
            )
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
