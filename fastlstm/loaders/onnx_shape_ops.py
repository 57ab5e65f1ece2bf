"""The matcher's shape ops on the data (:class:`~.onnx_values.Dyn`): squeeze, gather, slice, reshape,
concat.  They move or drop axes; the only layers they add are what a selection of the time axis
means (:class:`~fastlstm.layers.LastStep`), and a crop of a Conv's padded steps changes its padding."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..layers import RECURRENT, LastStep
from .onnx_fold import INT64_MAX, Sym, SymVec, as_symvec, slice_indices
from .onnx_values import Axis, Dyn, cut_groups, probe_of, probe_sizes, show

UNROLLED = (
    "selects single steps of the input before any recurrent op: a recurrent layer unrolled step by "
    "step into MatMul/Add/activation nodes (torch's dynamo exporter does this for nn.RNN) has no "
    "LSTM/GRU/RNN op for fastlstm to match; export with torch.onnx.export(..., dynamo=False), which "
    "emits the ONNX RNN op"
)


class ShapeOps:
    """Mixed into :class:`~.onnx_graph.Matcher` (which provides ``refuse``, ``get``, ``const``, ...)."""

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
                continue  # a time axis of one step (a streaming graph) or a batch of one
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
            self.refuse(UNROLLED)
        if (
            a.kind in ("U",)
            or (a.kind == "D" and a.size == 1)
            or (a.kind == "S" and a.size.bound == 1 and a.role is not None)
        ):
            if i not in (0, -1):
                self.refuse(f"index {i} on an axis of size 1")
            return replace(v, axes=v.axes[:axis] + ((Axis("U", 1),) if keep else ()) + v.axes[axis + 1 :])
        what = {"S": "the batch", "F": "the features", "D": "the directions of a bidirectional output"}[a.kind]
        self.refuse(
            f"selects element {i} of {what} (axis {axis}); fastlstm keeps every {'feature' if a.kind == 'F' else 'row'}"
        )

    def _select_step(self, v, axis, i, keep, what):
        """Keep one step of the time axis: the last one (or the first of a reversed sequence), else refuse."""
        n = v.axes[axis].size.bound
        axes = v.axes[:axis] + ((Axis("U", 1),) if keep else ()) + v.axes[axis + 1 :]
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
        self.refuse(
            f"keeps {where} ({what}) of the time axis; fastlstm returns every step or the last one "
            "(the one a recurrent layer ends on) and never guesses another selection"
        )

    def _slice(self, node, v):
        axes, starts, ends, steps = self._slice_args(node, len(v.axes))
        for ax, st, en, sp in zip(axes, starts, ends, steps):
            a = v.axes[ax]
            n = a.size.bound if a.kind == "S" else a.size
            probe = n if n is not None else 1 << 40
            picked = slice_indices(probe, st, en, sp)
            if len(picked) == probe and sp == 1:
                continue  # the whole axis
            if a.kind == "R":
                v = replace(
                    v,
                    rows=tuple(v.rows[i] for i in picked),
                    axes=v.axes[:ax] + (Axis("R", len(picked)),) + v.axes[ax + 1 :],
                )
                continue
            if a.kind == "S" and a.role == "T" and sp == -1 and len(picked) == probe:
                v = replace(v, reverse=not v.reverse)  # the whole sequence, backwards
                continue
            if a.kind == "S" and a.role is None and not any(isinstance(x, RECURRENT) for x in v.chain):
                self.refuse(UNROLLED)
            if a.kind == "S" and a.role == "T" and len(picked) == 1 and sp == 1:
                i = picked[0] if n is not None or picked[0] == 0 else (-1 if picked[0] == probe - 1 else picked[0])
                v = self._select_step(v, ax, i, True, f"Slice {st}:{en}")
                continue
            if a.kind == "S" and a.role == "T" and sp == 1 and st >= 0 and (en < 0 or en >= INT64_MAX // 2):
                v = self._crop_conv(v, st, 0 if en >= 0 else -en, f"keeps steps {st}:{en} of the time axis")
                continue
            if a.kind == "S" and a.role == "T":
                self.refuse(
                    f"keeps steps {st}:{en}{f':{sp}' if sp != 1 else ''} of the time axis; fastlstm "
                    "returns every step or the last one and never guesses another crop"
                )
            self.refuse(f"keeps part ({st}:{en}) of axis {ax} ({show((a,))}); fastlstm keeps every feature and row")
        return v

    def _reshape(self, node, op, v):
        """Reshape (or Flatten) by row-major cut points: axes between matching cumulative sizes form groups."""
        probe = probe_sizes(v.axes)
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
                    e = probe_of(e)
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
        groups = cut_groups(probe, target)
        if groups is None:
            self.refuse(f"reshapes {show(v.axes)} to {target}, which does not keep the same elements")
        out = []
        for in_idx, out_sizes in groups:
            big = [v.axes[k] for k in in_idx if not v.axes[k].is_unit()]
            kinds = [a.kind for a in big]
            if len(big) <= 1:
                out.extend(big[0] if s != 1 else Axis("U", 1) for s in out_sizes)
            elif kinds in (["D", "F"], ["R", "F"]) and len([s for s in out_sizes if s != 1]) == 1:
                if kinds[0] == "R":  # both directions' final h, side by side
                    v = self._final_state_concat(v)
                out.extend(Axis("F", big[0].size * big[1].size) if s != 1 else Axis("U", 1) for s in out_sizes)
            else:
                self.refuse(
                    f"reshapes axes {show(big)} into {out_sizes}; a reshape may only drop or add unit "
                    "axes and merge the two directions of a recurrent output into its features (time "
                    "and batch are never merged)"
                )
        return replace(v, axes=tuple(out))

    def _final_state_concat(self, v):
        """Both directions' final h of one bidirectional layer, side by side: Keras' return_sequences=False."""
        refs = v.rows
        if (
            len(refs) != 2
            or refs[0].layer is not refs[1].layer
            or [r.direction for r in refs] != [0, 1]
            or any(r.kind != "h" for r in refs)
        ):
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
                return replace(
                    vals[0], rows=rows, axes=vals[0].axes[:axis] + (Axis("R", len(rows)),) + vals[0].axes[axis + 1 :]
                )
            if (
                all(k == "F" for k in kinds)
                and len(vals) == 2
                and all(len(x.rows) == 1 for x in vals)
                and all(x.index("R") == [] for x in vals)
            ):
                both = self._final_state_concat(replace(vals[0], rows=vals[0].rows + vals[1].rows))
                return replace(
                    both,
                    axes=vals[0].axes[:axis] + (Axis("F", 2 * vals[0].axes[axis].size),) + vals[0].axes[axis + 1 :],
                )
        self.refuse("joins two values computed from the data (two branches); fastlstm runs a single chain")
