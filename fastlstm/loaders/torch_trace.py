"""Read the order of a live PyTorch module's ``forward()`` with ``torch.fx``.

A state_dict says which weights exist, not in which order ``forward()`` uses them, nor
what happens between them (``fc(relu(out[:, -1]))``).  For a live module we trace
``forward()`` symbolically and read its graph as one chain from the input to the output.
Every node must be on that chain (or build a zero initial state, ``torch.zeros(L, x.size(0), H)``);
anything else (a residual ``+``, a second input, an op fastlstm does not run) is refused
naming the op, because skipping or reordering it would give wrong outputs silently.

Tensors are followed by their *axes*: each value carries a tuple of labels, ``B`` (batch),
``T`` (time), ``F`` (features) and ``1`` (a size-1 axis left by a global pool).  That is how
``out[:, -1]`` is known to pick the last time step (and ``out[-1]`` too, for a time-major
LSTM), how ``x.permute(0, 2, 1)`` around a Conv1d is glue rather than computation, and how a
Softmax is known to run over features.  The input's layout is not known in advance, so the
chain is read for every candidate input layout and must fit exactly one (or give the same
chain under each).

The result is a list of :class:`Op` in execution order, which :mod:`.torch_objects` turns
into layers.  torch is imported here only, and only when a live module is passed.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

#: Recurrent modules and the axes of their input for batch_first False / True.
_RECURRENT = ("LSTM", "GRU", "RNN")
#: Modules that act on the feature axis, wherever it is last.
_PER_STEP_MODULES = ("Linear", "LayerNorm")
#: Modules that are the identity at inference.
_IDENTITY_MODULES = ("Dropout", "Dropout1d", "Dropout2d", "AlphaDropout", "FeatureAlphaDropout", "Identity")
#: Elementwise activation modules -> fastlstm activation names (options read in _module_activation).
_ACT_MODULES = {
    "ReLU": "relu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "GELU": "gelu",
    "SiLU": "silu",
    "ELU": "elu",
    "SELU": "selu",
    "Softplus": "softplus",
    "Softsign": "softsign",
    "LeakyReLU": "leaky_relu",
    "Hardsigmoid": "hard_sigmoid",
    "Mish": None,
    "PReLU": "prelu",
    "Softmax": "softmax",
    "Identity": "linear",
}
#: Elementwise activation functions / methods, by name (torch.relu, F.relu, x.relu(), ...).
_ACT_FUNCS = {
    "relu": "relu",
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "gelu": "gelu",
    "silu": "silu",
    "elu": "elu",
    "selu": "selu",
    "softplus": "softplus",
    "softsign": "softsign",
    "leaky_relu": "leaky_relu",
    "hardsigmoid": "hard_sigmoid",
    "softmax": "softmax",
}
#: Calls that only move the tensor (device, dtype, memory layout).
_NO_OPS = ("contiguous", "float", "detach", "clone")
#: Calls that only build the zero initial state handed to a recurrent module.
_STATE_BUILDERS = (
    "zeros",
    "zeros_like",
    "new_zeros",
    "size",
    "to",
    "cuda",
    "float",
    "detach",
    "requires_grad_",
    "getattr",
    "getitem",
    "type",
    "contiguous",
)


@dataclass
class Op:
    """One step of the traced chain.

    ``kind`` is ``"module"`` (``module`` is the torch module, ``name`` its path),
    ``"activation"`` (``name`` is a fastlstm activation name, ``options`` its parameters),
    ``"last_step"`` (keep the last time step only), ``"global_pool"`` (``name`` 'avg' or 'max'),
    ``"pad"`` (zero steps added before/after, ``options`` left/right; negative: steps cut off), or
    ``"flatten"`` (a whole sequence into one vector; ``options['order']`` 'TF' for step-major values,
    'FT' for feature-major; ``name`` describes the op).
    ``layout`` is the axes of the op's input tensor.
    """

    kind: str
    name: str
    module: Any = None
    options: Dict[str, Any] = field(default_factory=dict)
    layout: Tuple[str, ...] = ()


class TraceError(ValueError):
    """The module's forward() cannot be read as a chain fastlstm runs (message names the op)."""


def torch_class(module):
    """The class name if ``module`` is a built-in ``torch.nn`` module, else None."""
    cls = type(module)
    return cls.__name__ if cls.__module__.startswith("torch.nn.") else None


def _leaf_tracer():
    import torch.fx

    class Tracer(torch.fx.Tracer):
        # torch.nn built-ins are leaves (their parameters are read directly); custom modules
        # are traced through, so their forward() is read too.
        def is_leaf_module(self, m, qualname):
            return torch_class(m) is not None and torch_class(m) not in ("Sequential", "ModuleList", "ModuleDict")

    return Tracer()


def trace_graph(module, source):
    """The module's fx graph with dead nodes removed, traced in eval mode (training flags restored)."""
    import torch.fx

    flags = [(m, m.training) for m in module.modules()]
    module.eval()  # F.dropout(x, training=self.training) must trace as the inference path
    try:
        graph = _leaf_tracer().trace(module)
    except Exception as exc:  # noqa: BLE001 - fx raises many kinds: data-dependent control flow, unsupported calls...
        raise TraceError(
            f"{source}: torch.fx cannot trace forward() ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]}); fastlstm needs forward() as one chain of "
            "torch.nn layers and functions to know their order"
        ) from None
    finally:
        for m, was in flags:
            m.train(was)
    graph = torch.fx.GraphModule(module, graph).graph
    graph.eliminate_dead_code()  # e.g. the unused (h, c) of `out, (h, c) = self.lstm(x)`
    return graph


def _describe(node):
    target = node.target
    name = getattr(target, "__name__", None) or str(target)
    if node.op == "call_method":
        return f"the method .{target}()"
    if node.op == "call_function":
        mod = getattr(target, "__module__", None) or ""
        return f"the function {mod + '.' if mod and mod != '_operator' else ''}{name}"
    return f"{node.op} {name!r}"


def _state_nodes(graph_nodes, placeholder):
    """Nodes that only build a zero initial state (torch.zeros(L, x.size(0), H).to(x.device)) or read a
    tensor's shape (``out.size(0)`` in ``out.view(out.size(0), -1)``): side inputs, not data."""
    state = set()
    for node in graph_nodes:
        name = getattr(node.target, "__name__", node.target)
        if node.op not in ("call_function", "call_method") or name not in _STATE_BUILDERS:
            continue
        if name == "size" or (name == "getattr" and node.args[1:] in (("shape",), ("device",), ("dtype",))):
            state.add(node)  # metadata of any tensor: never data
            continue
        reads_input = name in ("size", "getattr", "zeros_like", "new_zeros")  # shape, device or dtype of x only
        if all(a in state or (reads_input and a is placeholder) for a in _node_args(node)):
            state.add(node)
    return state


def _node_args(node):
    import torch.fx

    found = []
    torch.fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n))
    return found


def _chain(graph, source):
    """The nodes from the single input to the output, with the zero-state helpers checked."""
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise TraceError(
            f"{source}: forward() takes {len(inputs)} inputs ({', '.join(n.name for n in inputs)}); "
            "fastlstm runs modules with one input tensor"
        )
    x = inputs[0]
    out = next(n for n in nodes if n.op == "output")
    result = out.args[0]
    if isinstance(result, (tuple, list)):
        # (output, hidden) as char-RNN modules return: fastlstm keeps the state itself.
        extra = [r for r in _flat(result[1:]) if not _is_recurrent_state(r)]
        if extra or not result:
            raise TraceError(
                f"{source}: forward() returns {len(result)} values; fastlstm runs modules that return "
                "one tensor (optionally with the recurrent module's own final state)"
            )
        result = result[0]
    zero_state = _state_nodes(nodes, x)
    chain, node = [], result
    while node is not x:
        if not hasattr(node, "op"):
            raise TraceError(f"{source}: forward() returns a constant, not a function of its input")
        data = [a for a in _node_args(node) if a not in zero_state]
        if len(data) != 1:
            names = ", ".join(a.name for a in data)
            raise TraceError(
                f"{source}: {_describe(node)} combines {len(data)} tensors ({names}); fastlstm runs one "
                "chain of layers (no residual or parallel branches)"
            )
        chain.append(node)
        node = data[0]
    chain.reverse()
    on_chain = set(chain) | {x, out} | zero_state
    for n in nodes:
        if n not in on_chain and not _is_recurrent_state(n):
            raise TraceError(
                f"{source}: {_describe(n)} ({n.name}) is not on the path from input to output; "
                "fastlstm runs one chain of layers"
            )
    return chain


def _flat(values):
    for v in values:
        if isinstance(v, (tuple, list)):
            yield from _flat(v)
        else:
            yield v


def _is_recurrent_state(node):
    """getitem(lstm_out, 1) and its own getitems: the final state a module may return alongside."""
    while hasattr(node, "op") and node.op == "call_function" and node.target is operator.getitem:
        parent = node.args[0]
        if hasattr(parent, "op") and parent.op == "call_module" and node.args[1] == 1:
            return True
        node = parent
    return False


# --- following the axes ---------------------------------------------------------------------------


class _Misfit(Exception):
    """This candidate input layout does not fit the chain (another may)."""


def _norm_dim(dim, ndim, what):
    if not isinstance(dim, int) or isinstance(dim, bool) or not -ndim <= dim < ndim:
        raise _Misfit(f"{what}: dim {dim!r} does not fit a {ndim}-d tensor")
    return dim % ndim


class _Walker:
    """Follows one candidate input layout through the chain, collecting Ops."""

    def __init__(self, modules, source):
        self.modules, self.source = modules, source
        self.ops = []

    def fail(self, node, why):
        raise TraceError(
            f"{self.source}: {_describe(node) if node.op != 'call_module' else repr(node.target)} ({node.name}): {why}"
        )

    def run(self, chain, layout):
        value = ("tensor", layout)
        for node in chain:
            value = self.step(node, value)
        if value[0] != "tensor":
            raise TraceError(
                f"{self.source}: forward() returns a {value[0]!r} value, not a tensor "
                "(a recurrent module's (output, state) tuple? take [0])"
            )
        return value[1]

    def emit(self, kind, name, layout, module=None, **options):
        self.ops.append(Op(kind, name, module, options, layout))

    # One node: returns the value it produces, ("tensor", axes) or a recurrent module's tuple.
    def step(self, node, value):
        if node.op == "call_module":
            return self.call_module(node, self.modules[node.target], value)
        name = getattr(node.target, "__name__", node.target)
        if node.op == "call_function" and node.target is operator.getitem:
            return self.getitem(node, value, node.args[1])
        if value[0] != "tensor":
            self.fail(node, "applied to a recurrent module's (output, state) tuple; take [0] first")
        axes = value[1]
        args = [a for a in node.args[1:]]
        kwargs = dict(node.kwargs)
        if name in _NO_OPS or name == "to":
            return value
        if name == "dropout" or name in ("alpha_dropout", "feature_alpha_dropout"):
            if kwargs.get("training", False) or (len(args) >= 2 and args[1] is True):
                self.fail(node, "dropout with training=True at inference")
            return value
        if name in _ACT_FUNCS:
            return self.function_activation(node, _ACT_FUNCS[name], axes, args, kwargs)
        if name == "pad":
            return self.pad(
                node,
                axes,
                kwargs.get("pad", args[0] if args else None),
                kwargs.get("mode", "constant"),
                kwargs.get("value", 0) or 0,
            )
        if name in ("permute", "transpose", "swapaxes", "swapdims", "movedim"):
            return ("tensor", self.permute(node, name, axes, args, kwargs))
        if name in ("view", "reshape"):
            return ("tensor", self.view(node, axes, args))
        if (
            name == "squeeze"
            and axes[-1] == "F"
            and [_norm_dim(a, len(axes), node.name) for a in args] == [len(axes) - 1]
            and axes[:-1] in (("B", "T"), ("T", "B"), ("B",))
        ):
            # y.squeeze(-1): the same values (a 1-wide output loses its axis in torch, fastlstm keeps it).
            return ("tensor", axes)
        if name in ("flatten", "squeeze", "unsqueeze", "mean", "amax", "max"):
            # torch.max(x, dim) returns (values, indices): [0] takes the values.
            return ("max" if name == "max" else "tensor", self.reshape(node, name, axes, args, kwargs))
        self.fail(
            node,
            "this op is not supported by fastlstm (it runs torch.nn layers, activations, "
            "permute/transpose glue, out[:, -1] and global pooling)",
        )

    def call_module(self, node, m, value):
        cls = torch_class(m)
        if value[0] != "tensor":
            self.fail(node, "applied to a recurrent module's (output, state) tuple; take [0] first")
        axes = value[1]
        if cls in _RECURRENT:
            want = ("B", "T", "F") if m.batch_first else ("T", "B", "F")
            if axes != want:
                raise _Misfit(f"{node.target} expects {want}")
            self.emit("module", node.target, axes, m)
            return ("recurrent", m, axes)
        if cls in ("LSTMCell", "GRUCell", "RNNCell"):
            self.fail(
                node,
                f"nn.{cls} is stepped by a Python loop in forward(), which fastlstm cannot read; "
                f"use nn.{cls[:-4]}, or pass the cell itself to fastlstm.from_torch",
            )
        if cls in _IDENTITY_MODULES:
            return value
        if cls in _PER_STEP_MODULES:
            if axes[-1] != "F":
                raise _Misfit(f"{node.target} acts on the last axis")
            self.emit("module", node.target, axes, m)
            return value
        if cls == "Embedding":
            if "F" in axes or len(axes) != 2:
                raise _Misfit("Embedding takes token ids")
            self.emit("module", node.target, axes, m)
            return ("tensor", axes + ("F",))
        if cls in ("Conv1d", "MaxPool1d", "AvgPool1d", "BatchNorm1d"):
            if axes != ("B", "F", "T") and not (cls == "BatchNorm1d" and axes == ("B", "F")):
                raise _Misfit(f"{node.target} takes (batch, channels, time)")
            self.emit("module", node.target, axes, m)
            return value
        if cls in ("AdaptiveAvgPool1d", "AdaptiveMaxPool1d"):
            size = m.output_size if isinstance(m.output_size, int) else m.output_size[0]
            if size != 1:
                self.fail(node, f"adaptive pooling to {size} steps is not supported (only a global pool, size 1)")
            if axes != ("B", "F", "T"):
                raise _Misfit(f"{node.target} takes (batch, channels, time)")
            self.emit("global_pool", "avg" if "Avg" in cls else "max", axes)
            return ("tensor", ("B", "F", "1"))
        if cls == "Flatten":
            return ("tensor", self.flatten(node, axes, m.start_dim, m.end_dim))
        if cls in ("ConstantPad1d", "ZeroPad1d"):
            return self.pad(node, axes, m.padding, "constant", getattr(m, "value", 0))
        if cls in _ACT_MODULES:
            return self.module_activation(node, cls, m, axes)
        self.fail(node, f"torch.nn.{cls} is not supported by fastlstm")

    def module_activation(self, node, cls, m, axes):
        name = _ACT_MODULES[cls]
        if name is None:
            self.fail(node, f"torch.nn.{cls} is not supported by fastlstm")
        if cls == "Softmax":
            if m.dim is None or _norm_dim(m.dim, len(axes), node.target) != axes.index("F"):
                self.fail(node, f"nn.Softmax(dim={m.dim}) is not over the feature axis")
        if cls == "PReLU" and m.weight.numel() > 1 and (len(axes) < 2 or axes[1] != "F"):
            self.fail(node, "a per-channel nn.PReLU acts on axis 1, which is not the feature axis here")
        options = {}
        for key in ("alpha", "beta", "threshold", "negative_slope", "approximate"):
            if hasattr(m, key):
                options[key] = getattr(m, key)
        self.emit("activation", name, axes, m, **options)
        return ("tensor", axes)

    def function_activation(self, node, name, axes, args, kwargs):
        options = {}
        if name == "softmax":
            dim = kwargs.get("dim", args[0] if args else None)
            if dim is None or _norm_dim(dim, len(axes), node.name) != axes.index("F"):
                self.fail(node, f"softmax(dim={dim}) is not over the feature axis")
        elif name == "gelu":
            options["approximate"] = kwargs.get("approximate", args[0] if args else "none")
        elif name == "elu":
            options["alpha"] = kwargs.get("alpha", args[0] if args else 1.0)
        elif name == "leaky_relu":
            options["negative_slope"] = kwargs.get("negative_slope", args[0] if args else 0.01)
        elif name == "softplus":
            options["beta"] = kwargs.get("beta", args[0] if args else 1.0)
            options["threshold"] = kwargs.get("threshold", args[1] if len(args) > 1 else 20.0)
        elif args or any(k != "inplace" for k in kwargs):
            self.fail(node, f"unexpected arguments {args or ''}{kwargs or ''}")
        self.emit("activation", name, axes, None, **options)
        return ("tensor", axes)

    def getitem(self, node, value, index):
        if value[0] == "recurrent":
            m, axes = value[1], value[2]
            if index == 0:
                return ("tensor", axes)
            if index == 1:
                return ("state", m, torch_class(m) == "LSTM")
            self.fail(node, f"index {index!r} of a recurrent module's output")
        if value[0] == "state":
            m, is_lstm = value[1], value[2]
            if is_lstm:
                if index == 0:
                    return ("h_n", m)
                self.fail(node, "the cell state c_n is not an output fastlstm can return")
            return self._h_n(node, m, index)
        if value[0] == "h_n":
            return self._h_n(node, value[1], index)
        if value[0] == "max":
            if index != 0:
                self.fail(node, "only the values ([0]) of torch.max(x, dim) are supported")
            return ("tensor", value[1])
        axes = value[1]
        idx = index if isinstance(index, tuple) else (index,)
        if Ellipsis in idx:
            self.fail(node, "indexing with ... is not supported; write out[:, -1]")
        picks = [k for k, i in enumerate(idx) if not (isinstance(i, slice) and i == slice(None))]
        if (
            len(idx) <= len(axes)
            and len(picks) == 1
            and isinstance(idx[picks[0]], slice)
            and axes[picks[0]] == "T"
            and axes[-1] == "T"
        ):
            return ("tensor", self.trim(node, axes, idx[picks[0]]))
        if len(idx) > len(axes) or len(picks) != 1 or idx[picks[0]] != -1 or axes[picks[0]] != "T":
            if len(picks) == 1 and idx[picks[0]] == -1:
                raise _Misfit("[-1] on a non-time axis")
            self.fail(
                node, f"indexing {index!r}: fastlstm supports picking the last time step (out[:, -1] or out[-1]) only"
            )
        self.emit("last_step", "last_step", axes)
        return ("tensor", tuple(a for k, a in enumerate(axes) if k != picks[0]))

    def trim(self, node, axes, cut):
        """y[:, :, a:-b] on (batch, channels, time): the steps a causal conv padded on both sides drops."""
        start, stop = cut.start or 0, cut.stop
        if (
            cut.step not in (None, 1)
            or not isinstance(start, int)
            or start < 0
            or not (stop is None or (isinstance(stop, int) and stop < 0))
        ):
            self.fail(node, f"slicing time with {cut!r}: only y[..., a:-b] right after a Conv1d is supported")
        self.emit("pad", "trim", axes, left=-start, right=stop or 0)
        return axes

    def pad(self, node, axes, pad, mode="constant", value=0):
        """F.pad / nn.ConstantPad1d / nn.ZeroPad1d of the time axis right before a Conv1d."""
        pad = tuple(pad) if isinstance(pad, (tuple, list)) else (pad, pad)
        if axes[-1] != "T":
            raise _Misfit("padding of a non-time axis")
        if len(pad) != 2 or mode != "constant" or value != 0 or not all(isinstance(p, int) and p >= 0 for p in pad):
            self.fail(
                node,
                f"padding {pad} (mode={mode!r}, value={value!r}): only zero padding of the time axis "
                "of (batch, channels, time), right before a Conv1d, is supported",
            )
        self.emit("pad", "pad", axes, left=pad[0], right=pad[1])
        return ("tensor", axes)

    def _h_n(self, node, m, index):
        """h_n[-1] of a unidirectional module is the last layer's output at the last step."""
        layers = m.num_layers * (2 if m.bidirectional else 1)
        if m.bidirectional:
            self.fail(
                node,
                "h_n of a bidirectional module holds each direction's final state (the backward "
                "one at t=0); use out[:, -1] or the output sequence instead",
            )
        if index not in (-1, layers - 1):
            self.fail(node, f"h_n[{index!r}] is not the last layer's state")
        self.emit("last_step", "last_step", ("T", "B", "F"))
        return ("tensor", ("B", "F"))

    def permute(self, node, name, axes, args, kwargs):
        n = len(axes)
        if name == "permute":
            dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
            dims = kwargs.get("dims", dims)
            dims = [_norm_dim(d, n, node.name) for d in dims]
            if sorted(dims) != list(range(n)):
                raise _Misfit("permute does not fit")
            return tuple(axes[d] for d in dims)
        if name == "movedim":
            self.fail(node, "movedim is not supported; use permute")
        a, b = (_norm_dim(d, n, node.name) for d in (list(args) + [kwargs.get("dim0"), kwargs.get("dim1")])[:2])
        out = list(axes)
        out[a], out[b] = out[b], out[a]
        return tuple(out)

    def view(self, node, axes, args):
        """``x.view(x.size(0), -1)`` / ``reshape``: a flatten after the batch axis, nothing else."""
        dims = tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else tuple(args)
        if len(dims) != 2 or dims[1] != -1 or axes[0] != "B" or not hasattr(dims[0], "op"):
            self.fail(
                node,
                f"reshaping to {dims!r}: only x.view(x.size(0), -1) (a flatten after the batch axis) is supported",
            )
        return self.flatten(node, axes, 1, -1)

    def flatten(self, node, axes, start, end):
        n = len(axes)
        start, end = _norm_dim(start, n, node.name), _norm_dim(end, n, node.name)
        merged = axes[start : end + 1]
        if len(merged) <= 1:
            return axes
        kept = tuple(a for a in merged if a != "1")
        if "B" in merged or (kept not in (("F",), ()) and sorted(kept) != ["F", "T"]):
            self.fail(
                node,
                f"flattening axes {merged} together is not supported (only features, or the time and "
                "feature axes of (batch, time, features) / (batch, features, time))",
            )
        if len(kept) == 2:
            if axes[:start] != ("B",) or axes[end + 1 :]:
                self.fail(
                    node,
                    f"flattening {merged} of axes {axes}: a whole sequence flattens right after the batch axis only",
                )
            # A whole sequence into one vector: step-major (B, T, F) or feature-major (B, F, T).  Its length
            # is not in the module; the nn.Linear it feeds says it (torch_objects reads it there).
            what = f"module {node.target!r}" if node.op == "call_module" else f"{_describe(node)} ({node.name})"
            self.emit("flatten", what, axes, order="".join(kept))
        return axes[:start] + ("F",) + axes[end + 1 :]

    def reshape(self, node, name, axes, args, kwargs):
        n = len(axes)
        dim = kwargs.get("dim", kwargs.get("start_dim", args[0] if args else None))
        if name == "flatten":
            end = kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
            return self.flatten(node, axes, 0 if dim is None else dim, end)
        if name == "unsqueeze":
            # (batch, time) samples given one feature axis, anywhere: the model's input has 1 feature.
            d = dim % (n + 1) if isinstance(dim, int) and not isinstance(dim, bool) else None
            if "F" in axes or d is None:
                raise _Misfit("unsqueeze adds the feature axis")
            self.emit("unsqueeze", "unsqueeze", axes)
            return axes[:d] + ("F",) + axes[d:]
        if dim is None:
            self.fail(node, f".{name}() without a dim is not supported (write the axis explicitly)")
        d = _norm_dim(dim, n, node.name)
        if name == "squeeze":
            if axes[d] != "1":
                raise _Misfit("squeeze of an axis that is not size 1")
            return axes[:d] + axes[d + 1 :]
        if name == "max" and not (len(args) >= 1 or "dim" in kwargs):
            self.fail(node, "max over all axes is not supported")
        keep = kwargs.get("keepdim", args[1] if len(args) > 1 else False)
        if axes[d] != "T" or keep:
            self.fail(
                node,
                f"{name} over axis {dim} (the {axes[d]!r} axis): only a pool over time without keepdim is supported",
            )
        self.emit("global_pool", "avg" if name == "mean" else "max", axes)
        return axes[:d] + axes[d + 1 :]


def trace_chain(module, source) -> Tuple[list, Tuple[str, ...], Optional[Tuple[str, ...]]]:
    """Trace ``module`` and return ``(ops, input_axes, output_axes)``.

    Raises :class:`TraceError` (a ValueError) naming the op when forward() is not a chain
    fastlstm runs, or when no input layout fits it.
    """
    graph = trace_graph(module, source)
    chain = _chain(graph, source)
    modules = dict(module.named_modules())
    fits, misfits = [], []
    for layout in (("B", "T", "F"), ("T", "B", "F"), ("B", "T"), ("T", "B")):
        walker = _Walker(modules, source)
        try:
            out = walker.run(chain, layout)
        except _Misfit as exc:
            misfits.append(f"{layout}: {exc}")
            continue
        fits.append((walker.ops, layout, out))
    if not fits:
        raise TraceError(f"{source}: no input layout fits forward() (tried {'; '.join(misfits)})")
    ops, layout, out = fits[0]
    if any([(o.kind, o.name) for o in f[0]] != [(o.kind, o.name) for o in ops] for f in fits[1:]):
        raise TraceError(
            f"{source}: forward() reads as different chains for input layouts "
            f"{', '.join(str(f[1]) for f in fits)}; fastlstm cannot tell which is meant"
        )
    return ops, layout, out
