"""The abstract values the ONNX matcher (:mod:`.onnx_graph`) runs a graph on, and the helpers that
reason about their axes (reshape grouping, probe sizes, descriptions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple

import numpy as np

from .onnx_fold import Sym


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
    kind: str  # 'h' or 'c'
    chain: tuple  # the chain up to and including ``layer``


@dataclass(frozen=True)
class Dyn:
    axes: Tuple[Axis, ...]
    chain: tuple
    time: str = "seq"  # 'seq': every step; 'last': one step was selected
    reverse: bool = False  # the time axis runs backwards relative to the engine's output
    rows: Tuple[StateRef, ...] = ()  # state rows (the 'R' axis, or the one row once it is dropped)
    pad: Tuple[int, int] = (0, 0)  # zero steps a Pad added before/after, owed to the next Conv

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
    input_axes: Tuple[str, ...]  # per input axis: 'T', 'B', 'F' or '1' (a unit axis)
    output_name: str
    output_axes: Tuple[str, ...]
    state_inputs: Dict[str, list] = field(default_factory=dict)  # name -> [(layer index, direction, kind)]
    state_outputs: Dict[str, list] = field(default_factory=dict)

    @property
    def batch_first(self) -> bool:
        axes = [a for a in self.input_axes if a in ("T", "B")]
        return axes == ["B", "T"]


class Lazy:
    """An initializer not yet decoded (most are weights read once, by the node that uses them)."""

    def __init__(self, proto):
        self.proto = proto


class Unusable:
    def __init__(self, what):
        self.what = what


def same_arrays(a, b):
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def fixed_sym(role, size):
    s = Sym(role, size)
    s.role = role
    return s


def probe_of(sym):
    """A concrete stand-in size for an open dimension: its declared size, else its own large prime."""
    return sym.bound if sym.bound is not None else sym.probe


def probe_sizes(axes):
    return [probe_of(a.size) if a.kind == "S" else a.size for a in axes]


def cut_groups(in_sizes, out_sizes):
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


def role_name(role):
    return {"T": "time", "B": "batch"}.get(role, str(role))


def show(axes):
    names = {"F": "features", "D": "directions", "R": "state rows", "U": "1"}
    parts = []
    for a in axes:
        if a.kind == "S":
            parts.append(role_name(a.role) if a.role else f"open({a.size.label})")
        else:
            parts.append(f"{names[a.kind]}={a.size}" if a.kind != "U" else "1")
    return "(" + ", ".join(parts) + ")"
