"""Constant folding for ONNX graphs: the values exporters compute from shapes and constants.

Exporters surround every LSTM with small subgraphs that compute shapes (``Shape`` ->
``Gather`` -> ``Concat`` -> ``Reshape``) and zero initial states (``ConstantOfShape``).
Their results depend only on the input's *shape*, so they are evaluated here, with the
batch and time sizes kept symbolic (:class:`Sym`).  Two kinds of value come out:

* a NumPy array (every entry known);
* a :class:`SymVec`, a 1-D integer vector whose entries may be symbols (``[T, B, 10]``).

Every result is capped in size, so a hostile ``ConstantOfShape([10**12])`` or ``Range``
is refused before anything is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

#: Largest folded constant, in elements.
MAX_FOLD_ELEMENTS = 1 << 24
INT64_MAX = np.iinfo(np.int64).max


class FoldError(ValueError):
    """A node's constant result cannot be computed (the caller names the node)."""


_PRIMES = (
    1000003,
    1000033,
    1000037,
    1000039,
    1000081,
    1000099,
    1000117,
    1000121,
    1000133,
    1000151,
    1000159,
    1000171,
    1000183,
    1000187,
    1000193,
    1000199,
)


class Sym:
    """A dimension the graph leaves open (time or batch), identified by where it came from.

    ``bound`` is the size the file declares for it, if any (a static export), so a graph
    that wrote that number as a constant can still be matched.  ``role`` becomes 'T' or
    'B' once a recurrent op (or another op that knows) consumes the axis."""

    _count = 0

    def __init__(self, label, bound=None):
        self.label = label
        self.bound = bound
        self.role = None
        # A stand-in size for reshapes: primes above 10**6, distinct per symbol, so no product of
        # a graph's fixed sizes can be mistaken for it.
        Sym._count += 1
        self.probe = _PRIMES[Sym._count % len(_PRIMES)] * (1 + Sym._count // len(_PRIMES)) ** 3

    def __repr__(self):
        return self.role or self.label


def same_dim(a, b) -> bool:
    """Whether two dims (int or Sym) are equal; a Sym equals the int it is bound to."""
    if a is b:
        return True
    if isinstance(a, Sym) and isinstance(b, int):
        return a.bound == b
    if isinstance(b, Sym) and isinstance(a, int):
        return b.bound == a
    return isinstance(a, int) and isinstance(b, int) and a == b


@dataclass(frozen=True)
class SymVec:
    """A 1-D int64 vector (or scalar, ``scalar=True``) whose entries are ints or :class:`Sym`."""

    items: Tuple
    scalar: bool = False

    def known(self) -> Optional[np.ndarray]:
        if any(isinstance(v, Sym) for v in self.items):
            return None
        arr = np.asarray(self.items, dtype=np.int64)
        return arr.reshape(()) if self.scalar else arr


def as_symvec(value, what):
    """A SymVec from a SymVec or an integer array of at most one dimension."""
    if isinstance(value, SymVec):
        return value
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu" or arr.ndim > 1:
        raise FoldError(f"{what} must be an integer vector, got dtype {arr.dtype} shape {arr.shape}")
    return SymVec(tuple(int(v) for v in arr.reshape(-1)), scalar=arr.ndim == 0)


def simplify(vec: SymVec):
    """Turn a SymVec with no symbols into a plain array."""
    known = vec.known()
    return vec if known is None else known


def check_size(shape, what):
    count = 1
    for d in shape:
        if not isinstance(d, (int, np.integer)) or d < 0:
            raise FoldError(f"{what}: dimension {d!r} is not a non-negative integer")
        count *= int(d)
        if count > MAX_FOLD_ELEMENTS:
            raise FoldError(f"{what}: a constant of shape {tuple(shape)} is over {MAX_FOLD_ELEMENTS} elements")
    return count


def _axis(axis, ndim, what):
    if not -ndim <= axis < max(ndim, 1):
        raise FoldError(f"{what}: axis {axis} is out of range for rank {ndim}")
    return axis % max(ndim, 1)


def slice_indices(n, start, end, step):
    """The indices ONNX ``Slice`` selects from a length-``n`` axis (clamping as the spec says)."""
    if step == 0:
        raise FoldError("Slice: step 0")
    return range(n)[
        slice(int(max(min(start, INT64_MAX), -INT64_MAX)), int(max(min(end, INT64_MAX), -INT64_MAX)), int(step))
    ]


def slice_args(node, vector, ndim):
    """(axes, starts, ends, steps) of a Slice node, from its inputs (opset >= 10) or attributes.

    ``vector(k)`` returns input k as a list of ints."""
    inputs = node.inputs
    if len(inputs) >= 3:
        starts, ends = vector(1), vector(2)
        axes = vector(3) if len(inputs) > 3 and inputs[3] else list(range(len(starts)))
        steps = vector(4) if len(inputs) > 4 and inputs[4] else [1] * len(starts)
    else:
        attrs = node.attributes
        starts = list(attrs["starts"].ints) if "starts" in attrs else []
        ends = list(attrs["ends"].ints) if "ends" in attrs else []
        axes = list(attrs["axes"].ints) if "axes" in attrs else list(range(len(starts)))
        steps = [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise FoldError("Slice: starts, ends, axes and steps differ in length")
    return [_axis(a, ndim, "Slice") for a in axes], starts, ends, steps


def _int_list(consts):
    return lambda k: [int(v) for v in np.asarray(consts(k)).reshape(-1)]


def fold_symvec(node, op, vals, consts):
    """Evaluate ``node`` when some input is a SymVec; return a SymVec/array or raise FoldError."""
    a = vals[0]
    if op in ("Identity", "Cast"):
        return a
    if op == "Gather":
        vec = as_symvec(a, "Gather data")
        idx = np.asarray(consts(1))
        if idx.dtype.kind not in "iu":
            raise FoldError("Gather: indices must be integers")
        n = len(vec.items)
        picked = []
        for i in idx.reshape(-1):
            if not -n <= int(i) < n:
                raise FoldError(f"Gather: index {int(i)} is out of range for length {n}")
            picked.append(vec.items[int(i)])
        return simplify(SymVec(tuple(picked), scalar=idx.ndim == 0))
    if op == "Unsqueeze":
        vec = as_symvec(a, "Unsqueeze data")
        if not vec.scalar:
            raise FoldError("Unsqueeze of a symbolic vector to rank 2 is not supported")
        return simplify(SymVec(vec.items))
    if op == "Squeeze":
        vec = as_symvec(a, "Squeeze data")
        if len(vec.items) != 1:
            raise FoldError("Squeeze of a symbolic vector longer than 1")
        return simplify(SymVec(vec.items, scalar=True))
    if op == "Reshape":
        vec = as_symvec(a, "Reshape data")
        target = np.asarray(consts(1)).reshape(-1)
        if target.size == 0:
            if len(vec.items) != 1:
                raise FoldError("Reshape to a scalar needs one element")
            return simplify(SymVec(vec.items, scalar=True))
        if target.size != 1 or int(target[0]) not in (-1, len(vec.items)):
            raise FoldError(f"Reshape of a symbolic vector to {target.tolist()}")
        return simplify(SymVec(vec.items))
    if op == "Concat":
        items = []
        for v in vals:
            v = as_symvec(v, "Concat input")
            if v.scalar:
                raise FoldError("Concat of scalars")
            items.extend(v.items)
        return simplify(SymVec(tuple(items)))
    if op == "Slice":
        vec = as_symvec(a, "Slice data")
        axes, starts, ends, steps = slice_args(node, _int_list(consts), 1)
        idx = range(len(vec.items))
        for _, s, e, st in zip(axes, starts, ends, steps):
            idx = [idx[i] for i in slice_indices(len(idx), s, e, st)]
        return simplify(SymVec(tuple(vec.items[i] for i in idx)))
    if op in ("Mul", "Add", "Sub", "Div"):
        x, y = as_symvec(vals[0], f"{op} input"), as_symvec(vals[1], f"{op} input")
        n = max(len(x.items), len(y.items))
        if {len(x.items), len(y.items)} - {1, n}:
            raise FoldError(f"{op}: lengths {len(x.items)} and {len(y.items)} do not broadcast")
        xs = x.items * n if len(x.items) == 1 else x.items
        ys = y.items * n if len(y.items) == 1 else y.items
        return simplify(SymVec(tuple(_sym_arith(op, p, q) for p, q in zip(xs, ys)), scalar=x.scalar and y.scalar))
    raise FoldError(f"{op} on a symbolic shape is not supported")


def _sym_arith(op, p, q):
    """Arithmetic on shape entries: exact on ints; with a symbol only the identities (x*1, x+0, x/1)."""
    if isinstance(p, int) and isinstance(q, int):
        if op == "Div":
            if q == 0:
                raise FoldError("Div by zero in a shape computation")
            return int(np.trunc(p / q)) if abs(p) < 2**52 else p // q
        return {"Mul": p * q, "Add": p + q, "Sub": p - q}[op]
    if op == "Mul" and (q == 1 or p == 1):
        return p if q == 1 else q
    if op in ("Add", "Sub") and q == 0:
        return p
    if op == "Add" and p == 0:
        return q
    if op == "Div" and q == 1:
        return p
    raise FoldError(f"{op} of {p!r} and {q!r}: arithmetic on an open dimension")


def _broadcast_check(*arrays):
    try:
        shape = np.broadcast_shapes(*(np.shape(a) for a in arrays))
    except ValueError as exc:
        raise FoldError(f"shapes do not broadcast ({exc})") from None
    check_size(shape, "broadcast result")


_UNARY = {
    "Neg": np.negative,
    "Sqrt": np.sqrt,
    "Abs": np.abs,
    "Reciprocal": np.reciprocal,
    "Exp": np.exp,
    "Log": np.log,
    "Floor": np.floor,
    "Ceil": np.ceil,
    "Not": np.logical_not,
    "Tanh": np.tanh,
    "Sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "Relu": lambda x: np.maximum(x, 0),
}
_BINARY = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Pow": np.power,
    "Equal": np.equal,
    "Less": np.less,
    "Greater": np.greater,
    "And": np.logical_and,
    "Or": np.logical_or,
    "Max": np.maximum,
    "Min": np.minimum,
}


def fold_const(node, op, vals, consts, attr):
    """Evaluate ``node`` on all-constant inputs (NumPy arrays); raise FoldError if it cannot."""
    with np.errstate(all="ignore"):
        return _fold(node, op, vals, consts, attr)


def _fold(node, op, vals, consts, attr):
    a = vals[0] if vals else None
    if op in ("Identity", "Dropout"):
        return a
    if op == "Cast":
        from .onnx_proto import DTYPES

        to = attr("to", 1)
        if to not in DTYPES:
            raise FoldError(f"Cast to data type {to}")
        return np.asarray(a).astype(DTYPES[to])
    if op in _UNARY:
        return _UNARY[op](np.asarray(a))
    if op in _BINARY:
        _broadcast_check(vals[0], vals[1])
        return _BINARY[op](np.asarray(vals[0]), np.asarray(vals[1]))
    if op == "Div":
        x, y = np.asarray(vals[0]), np.asarray(vals[1])
        _broadcast_check(x, y)
        if x.dtype.kind in "iu" and y.dtype.kind in "iu":
            if np.any(y == 0):
                raise FoldError("integer Div by zero")
            return np.trunc(x / y).astype(np.result_type(x, y))
        return x / y
    if op == "Where":
        _broadcast_check(*vals)
        return np.where(np.asarray(vals[0]).astype(bool), vals[1], vals[2])
    if op == "Shape":
        shape = np.asarray(np.shape(a), dtype=np.int64)
        start, end = attr("start", 0), attr("end", None)
        return shape[slice(start, end)]
    if op == "Size":
        return np.asarray(np.size(a), dtype=np.int64)
    if op == "ConstantOfShape":
        shape = [int(v) for v in np.asarray(a).reshape(-1)]
        check_size(shape, "ConstantOfShape")
        fill = attr("value", None)
        fill = np.zeros(1, np.float32) if fill is None else fill
        return np.full(shape, fill.reshape(-1)[0], dtype=fill.dtype)
    if op == "Expand":
        shape = [int(v) for v in np.asarray(vals[1]).reshape(-1)]
        try:
            out_shape = np.broadcast_shapes(np.shape(a), tuple(shape))
        except ValueError as exc:
            raise FoldError(f"Expand: {exc}") from None
        check_size(out_shape, "Expand")
        return np.broadcast_to(a, out_shape).copy()
    if op == "Range":
        start, limit, delta = (np.asarray(v).reshape(()) for v in vals[:3])
        if delta == 0:
            raise FoldError("Range with delta 0")
        count = max(int(np.ceil((limit - start) / delta)), 0)
        check_size([count], "Range")
        return np.arange(count, dtype=np.result_type(start, limit, delta)) * delta + start
    if op == "Gather":
        idx = np.asarray(vals[1])
        if idx.dtype.kind not in "iu":
            raise FoldError("Gather: indices must be integers")
        axis = _axis(attr("axis", 0), np.ndim(a), "Gather")
        n = np.shape(a)[axis]
        if np.any((idx < -n) | (idx >= n)):
            raise FoldError(f"Gather: an index is out of range for length {n}")
        _broadcast_check(idx)
        check_size(np.shape(a)[:axis] + idx.shape + np.shape(a)[axis + 1 :], "Gather")
        return np.take(a, idx, axis=axis)
    if op == "Unsqueeze":
        axes = attr("axes", None)
        axes = [int(v) for v in (np.asarray(vals[1]).reshape(-1) if axes is None else axes)]
        out = np.asarray(a)
        rank = out.ndim + len(axes)
        for ax in sorted(_axis(x, rank, "Unsqueeze") for x in axes):
            out = np.expand_dims(out, ax)
        return out
    if op == "Squeeze":
        axes = attr("axes", None)
        if axes is None and len(vals) > 1:
            axes = [int(v) for v in np.asarray(vals[1]).reshape(-1)]
        out = np.asarray(a)
        if axes is None:
            return np.squeeze(out)
        axes = tuple(_axis(x, out.ndim, "Squeeze") for x in axes)
        if any(out.shape[x] != 1 for x in axes):
            raise FoldError(f"Squeeze: axes {axes} of shape {out.shape} are not all 1")
        return np.squeeze(out, axis=axes)
    if op == "Concat":
        axis = attr("axis", 0)
        try:
            return np.concatenate([np.asarray(v) for v in vals], axis=axis)
        except (ValueError, np.exceptions.AxisError) as exc:
            raise FoldError(f"Concat: {exc}") from None
    if op == "Reshape":
        out = np.asarray(a)
        target = [int(v) for v in np.asarray(vals[1]).reshape(-1)]
        target = [out.shape[i] if v == 0 and not attr("allowzero", 0) else v for i, v in enumerate(target)]
        try:
            return out.reshape(target)
        except ValueError as exc:
            raise FoldError(f"Reshape: {exc}") from None
    if op == "Transpose":
        perm = attr("perm", None)
        out = np.asarray(a)
        perm = list(range(out.ndim))[::-1] if perm is None else perm
        if sorted(perm) != list(range(out.ndim)):
            raise FoldError(f"Transpose: perm {perm} does not fit rank {out.ndim}")
        return out.transpose(perm)
    if op == "Slice":
        out = np.asarray(a)
        axes, starts, ends, steps = slice_args(node, _int_list(consts), out.ndim)
        index = [slice(None)] * out.ndim
        for ax, s, e, st in zip(axes, starts, ends, steps):
            r = slice_indices(out.shape[ax], s, e, st)
            index[ax] = slice(r.start, r.stop if r.stop >= 0 else None, r.step)
        return out[tuple(index)]
    if op == "Split":
        raise FoldError("Split of a constant")
    raise FoldError(f"no constant evaluation for {op}")
