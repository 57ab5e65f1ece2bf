"""Repack framework-layout weights (fastlstm.layers) into the kernels' layout, once, at load.

Per recurrent direction the kernels want one row-major matrix ``[W_x; W_h]`` of
shape ``(n_in + n_out, G)`` -- so ``x @ W_x`` and ``h @ W_h`` are plain
row-major products that vectorize along the gate axis -- with the biases summed
into one:

* LSTM: G = 4H, gate columns ``[i | f | o | g]`` (the three sigmoid gates
  contiguous), the projection transposed to ``(H, P)``;
* GRU, reset after the product: G = 4H, ``[r | z | n_x | n_h]``: the candidate's
  input part (W_in, zero in the h rows) and recurrent part (W_hn, zero in the x
  rows) get columns of their own, because the reset gate multiplies only the
  second; one fused product per step still gives every gate;
* GRU, reset before the product (Keras reset_after=False): G = 3H,
  ``[r | z | n]`` with the h rows of n zero, and ``W_hn`` (H, H) apart for
  ``(r * h) @ W_hn``;
* RNN: G = H.

Dense and Conv1D weights are transposed to ``(inputs, outputs)``; a BatchNorm
right after a linear Dense/Conv1D is folded into it, and an Activation right
after one becomes its activation.

The numeric codes of activations, merges and layer kinds are the C enums,
exported by fastlstm._kernels (declared once, in the headers).
"""

import numpy as np

from . import _kernels as K
from ._quantize import pack_lowp
from .layers import (
    ACTIVATIONS,
    MERGE_MODES,
    RECURRENT,
    Activation,
    AvgPool1D,
    BatchNorm,
    Conv1D,
    Dense,
    Embedding,
    Flatten,
    GlobalAvgPool1D,
    GlobalMaxPool1D,
    GRULayer,
    LastStep,
    LayerNorm,
    LSTMLayer,
    LSTMWeights,
    MaxPool1D,
    RepeatVector,
    input_width,
    layer_streamable,
    masked_recurrent,
)

#: Activation codes of include/fastlstm_activations.h (enum fl_activation), by name: FL_ACT_<NAME>.
ACTIVATION_CODES = {name: K.fl_activation["FL_ACT_" + name.upper()] for name in ACTIVATIONS}

#: Merge codes of include/fastlstm_cell.h (enum fl_merge): FL_MERGE_<MODE>.
MERGE_CODES = {mode: K.fl_merge["FL_MERGE_" + mode.upper()] for mode in MERGE_MODES}

#: Layer kinds of include/fastlstm_layers.h (enum fl_layer_kind).
KIND = K.fl_layer_kind


def _gate_permutation(hidden):
    """Rows of PyTorch's (i, f, g, o) blocks, reordered to (i, f, o, g)."""
    h = hidden
    return np.r_[0 : 2 * h, 3 * h : 4 * h, 2 * h : 3 * h]


def _frozen(arr):
    """A read-only, cache-line-aligned float32 copy of ``arr``."""
    out = aligned_empty(np.shape(arr))
    out[...] = arr
    out.setflags(write=False)
    return out


def _bias_sum(w, rows):
    bias = np.zeros(rows, dtype=np.float32)
    for b in (w.bias_ih, w.bias_hh):
        if b is not None:
            bias += b
    return bias


def pack_direction(w: LSTMWeights):
    """An LSTM direction: (stacked W (n_in + n_out, 4H), bias (4H,), projection (H, P) or None)."""
    perm = _gate_permutation(w.hidden_size)
    stacked = np.concatenate([w.weight_ih[perm].T, w.weight_hh[perm].T], axis=0)
    proj = None if w.weight_hr is None else _frozen(w.weight_hr.T)
    return _frozen(stacked), _frozen(_bias_sum(w, 4 * w.hidden_size)[perm]), proj


def _pack_gru_direction(w, reset_after):
    H, I = w.hidden_size, w.input_size
    wih, whh = w.weight_ih, w.weight_hh
    zeros = lambda n: np.zeros(n, dtype=np.float32)  # noqa: E731
    b_ih = w.bias_ih if w.bias_ih is not None else zeros(3 * H)
    b_hh = w.bias_hh if w.bias_hh is not None else zeros(3 * H)
    if reset_after:
        stacked = np.zeros((I + H, 4 * H), dtype=np.float32)
        stacked[:I, : 3 * H] = wih.T
        stacked[I:, : 2 * H] = whh[: 2 * H].T
        stacked[I:, 3 * H :] = whh[2 * H :].T
        bias = np.concatenate([b_ih[: 2 * H] + b_hh[: 2 * H], b_ih[2 * H :], b_hh[2 * H :]])
        return _frozen(stacked), _frozen(bias), None
    stacked = np.zeros((I + H, 3 * H), dtype=np.float32)
    stacked[:I] = wih.T
    stacked[I:, : 2 * H] = whh[: 2 * H].T
    return _frozen(stacked), _frozen(b_ih + b_hh), _frozen(whh[2 * H :].T)


def _pack_rnn_direction(w):
    stacked = np.concatenate([w.weight_ih.T, w.weight_hh.T], axis=0)
    return _frozen(stacked), _frozen(_bias_sum(w, w.hidden_size)), None


def _recurrent_spec(layer, merge):
    if isinstance(layer, LSTMLayer):
        kind, gates, dirs = KIND.FL_LAYER_LSTM, 4 * layer.hidden_size, [pack_direction(d) for d in layer.directions]
        gate_act, cell_act = layer.recurrent_activation, layer.activation
    elif isinstance(layer, GRULayer):
        kind = KIND.FL_LAYER_GRU if layer.reset_after else KIND.FL_LAYER_GRU_BEFORE
        gates = (4 if layer.reset_after else 3) * layer.hidden_size
        dirs = [_pack_gru_direction(d, layer.reset_after) for d in layer.directions]
        gate_act, cell_act = layer.recurrent_activation, layer.activation
    else:
        kind, gates, dirs = KIND.FL_LAYER_RNN, layer.hidden_size, [_pack_rnn_direction(d) for d in layer.directions]
        gate_act, cell_act = "linear", layer.activation
    n_out = layer.directions[0].output_size
    return {
        "kind": kind,
        "dirs": dirs,
        "gates": gates,
        "gate_act": ACTIVATION_CODES[gate_act],
        "cell_act": ACTIVATION_CODES[cell_act],
        "merge": MERGE_CODES[merge],
        "go_backwards": int(layer.go_backwards),
        "n_in": layer.input_size,
        "hidden": layer.hidden_size,
        "n_out": n_out,
        "width": n_out * (2 if layer.bidirectional and merge == "concat" else 1),
    }


def _act_fields(act: Activation):
    return {
        "act": ACTIVATION_CODES[act.name],
        "alpha": act.alpha or 0.0,
        "act_w": None if act.weight is None else _frozen(act.weight),
    }


def _product(weight_in_out, bias, n_out):
    """(W (inputs, outputs), bias) for Network, zeros for a missing bias."""
    b = np.zeros(n_out, dtype=np.float32) if bias is None else bias
    return _frozen(weight_in_out), _frozen(b)


def _conv_matrix(conv: Conv1D, weight):
    """The conv's weights as the kernel's products read them: without groups (K*C_in, C_out) with
    row j*C_in + c the weight of tap j, channel c; with groups (G*K*C_in/G, C_out/G), blocks (g, j)."""
    C_out, Cg, Kw = weight.shape
    if conv.groups == 1:
        return weight.transpose(2, 1, 0).reshape(Kw * Cg, C_out)
    G = conv.groups
    return weight.reshape(G, C_out // G, Cg, Kw).transpose(0, 3, 2, 1).reshape(G * Kw * Cg, C_out // G)


def _window_fields(layer, kind):
    same = layer.padding == "same"
    left, right = (0, 0) if same else layer.padding
    size = layer.kernel_size if isinstance(layer, Conv1D) else layer.size
    return {
        "kind": kind,
        "ksize": size,
        "stride": layer.stride,
        "dilation": getattr(layer, "dilation", 1),
        "groups": getattr(layer, "groups", 1),
        "pad_l": left,
        "pad_r": right,
        "same_pad": int(same),
        "reach": layer.reach,
        "count_pad": int(getattr(layer, "count_include_pad", True)),
    }


def _fuse(layers):
    """The chain as the kernels run it: Flatten dropped (an identity where it is allowed), a
    BatchNorm after a linear Dense/Conv1D folded into its weights, an Activation after a linear
    Dense/Conv1D made its activation.  Yields (layer, weight, bias, activation) for Dense/Conv1D
    and (layer, None, None, None) otherwise."""
    out = []
    for layer in layers:
        prev = out[-1] if out else None
        linear_product = prev is not None and isinstance(prev[0], (Dense, Conv1D)) and prev[3].name == "linear"
        if isinstance(layer, Flatten) and layer.steps is None:
            continue
        if linear_product and isinstance(layer, BatchNorm):
            scale, shift = layer.scale_shift()
            p, w, b, act = prev
            bias = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
            w = w.astype(np.float64) * scale.reshape((-1,) + (1,) * (w.ndim - 1))
            out[-1] = (p, w.astype(np.float32), (bias * scale + shift).astype(np.float32), act)
        elif linear_product and isinstance(layer, Activation):
            out[-1] = prev[:3] + (layer,)
        elif isinstance(layer, (Dense, Conv1D)):
            out.append((layer, layer.weight, layer.bias, layer.act))
        else:
            out.append((layer, None, None, None))
    return out


def pack_chain(layers, precision="fp32"):
    """The Network arguments for a checked chain: (layer dicts, state layout, state signature).

    ``precision`` ("fp32", "bf16", "int8"; fastlstm._quantize) is that of the recurrent
    layers' gate products: each direction's entry gets its weights packed for
    include/fastlstm_lowp.h, or None for fp32.

    The state layout lists the pieces of a stream's state row as (label, entry,
    offset, width): label "h"/"c" for recurrent entry ``entry`` (one per layer
    and direction, in chain order), "buf" for the state of other streaming
    layers (causal Conv1D history, stride-1 pools, global pools).  The
    signature has one item per stateful layer; an LSTM's is (I, H, P, D), as
    in version-1 State bytes."""
    fused = _fuse(layers)
    masked = {id(layers[k]): zeros for k, zeros in masked_recurrent(layers).items()}
    streams = all(
        layer_streamable(layer, fused[k - 1][0] if k else None) is None for k, (layer, _, _, _) in enumerate(fused)
    )
    specs, layout, signature = [], [], []
    offset = 0
    width = input_width(layers)
    n_entries = n_bufs = 0

    def add_buffer(spec, size, sig):
        nonlocal offset, n_bufs
        spec["s_off"], spec["s_size"] = offset, size
        layout.append(("buf", n_bufs, offset, size))
        signature.append(sig)
        n_bufs += 1
        offset += size

    for k, (layer, weight, bias, act) in enumerate(fused):
        nxt = fused[k + 1][0] if k + 1 < len(fused) else None
        spec = None
        if isinstance(layer, RECURRENT):
            # Keras' last step of a bidirectional layer needs the directions unmerged.
            keras_last = isinstance(nxt, LastStep) and nxt.final_state and layer.bidirectional
            spec = _recurrent_spec(layer, "concat" if keras_last else layer.merge_mode)
            if id(layer) in masked:
                spec["mask"] = 2 if masked[id(layer)] else 1
            dirs = []
            for w, b, p in spec["dirs"]:
                c_width = layer.hidden_size if isinstance(layer, LSTMLayer) else 0
                layout.append(("h", n_entries, offset, spec["n_out"]))
                layout.append(("c", n_entries, offset + spec["n_out"], c_width))
                try:
                    lowp = None if precision == "fp32" else pack_lowp(w, layer.input_size, precision)
                except ValueError as exc:
                    raise ValueError(f"layer {k} ({layer.describe()}): {exc}") from None
                dirs.append((w, b, p, offset, offset + spec["n_out"], lowp))
                offset += spec["n_out"] + c_width
                n_entries += 1
            spec["dirs"] = dirs
            D = len(layer.directions)
            if isinstance(layer, LSTMLayer):
                signature.append((layer.input_size, layer.hidden_size, spec["n_out"], D))
            else:
                signature.append(
                    (type(layer).__name__, layer.input_size, layer.hidden_size, D)
                    + ((layer.reset_after,) if isinstance(layer, GRULayer) else ())
                )
        elif isinstance(layer, Dense):
            spec = {
                "kind": KIND.FL_LAYER_DENSE,
                "n_in": layer.input_size,
                "width": layer.output_size,
                "product": _product(weight.T, bias, layer.output_size),
                **_act_fields(act),
            }
        elif isinstance(layer, Conv1D):
            spec = {
                **_window_fields(layer, KIND.FL_LAYER_CONV),
                "n_in": layer.input_size,
                "width": layer.output_size,
                "product": _product(_conv_matrix(layer, weight), bias, layer.output_size),
                **_act_fields(act),
            }
            if streams and layer.streamable and layer.reach:
                add_buffer(spec, layer.reach * layer.input_size, ("Conv1D", layer.input_size, layer.reach))
        elif isinstance(layer, Activation):
            spec = {"kind": KIND.FL_LAYER_ACTIVATION, **_act_fields(layer)}
        elif isinstance(layer, BatchNorm):
            scale, shift = layer.scale_shift()
            spec = {
                "kind": KIND.FL_LAYER_AFFINE,
                "n_in": layer.input_size,
                "scale": _frozen(scale),
                "shift": _frozen(shift),
            }
        elif isinstance(layer, LayerNorm):
            ones, zeros = np.ones(layer.size, np.float32), np.zeros(layer.size, np.float32)
            spec = {
                "kind": KIND.FL_LAYER_LAYERNORM,
                "n_in": layer.size,
                "eps": layer.eps,
                "scale": _frozen(ones if layer.gamma is None else layer.gamma),
                "shift": _frozen(zeros if layer.beta is None else layer.beta),
            }
        elif isinstance(layer, Embedding):
            spec = {
                "kind": KIND.FL_LAYER_EMBEDDING,
                "n_in": 1,
                "width": layer.output_size,
                "table": _frozen(layer.table),
            }
        elif isinstance(layer, (MaxPool1D, AvgPool1D)):
            kind = KIND.FL_LAYER_MAXPOOL if isinstance(layer, MaxPool1D) else KIND.FL_LAYER_AVGPOOL
            spec = _window_fields(layer, kind)
            if streams and layer.streamable and layer.reach:
                add_buffer(spec, 1 + layer.reach * width, (type(layer).__name__, width, layer.reach))
        elif isinstance(layer, (GlobalMaxPool1D, GlobalAvgPool1D)):
            is_max = isinstance(layer, GlobalMaxPool1D)
            spec = {"kind": KIND.FL_LAYER_GLOBAL_MAX if is_max else KIND.FL_LAYER_GLOBAL_AVG}
            add_buffer(spec, 2 + width, (type(layer).__name__, width))
        elif isinstance(layer, LastStep):
            prev = fused[k - 1][0]
            spec = {"kind": KIND.FL_LAYER_LAST_STEP}
            if layer.final_state and isinstance(prev, RECURRENT) and prev.bidirectional:
                spec["last_half"] = prev.directions[0].output_size
                spec["merge"] = MERGE_CODES[prev.merge_mode]
        elif isinstance(layer, RepeatVector):
            spec = {"kind": KIND.FL_LAYER_REPEAT, "repeat": layer.n}
        elif isinstance(layer, Flatten):  # over a whole sequence (_fuse dropped the others)
            spec = {"kind": KIND.FL_LAYER_FLATTEN, "n_in": width, "width": width * layer.steps, "steps": layer.steps}
        spec.setdefault("n_in", width)
        spec.setdefault("width", spec["n_in"])
        if isinstance(layer, LastStep) and "last_half" in spec:
            spec["n_in"] = 2 * spec["last_half"]
            spec["width"] = spec["n_in"] if prev.merge_mode == "concat" else spec["last_half"]
        spec["streams"] = streams
        width = spec["width"]
        specs.append(spec)
    return specs, layout, tuple(signature)


def aligned_empty(shape, align=64):
    """An uninitialised float32 array whose data starts on an ``align``-byte boundary.

    Vector loads that straddle two cache lines cost about twice as much, and
    numpy only guarantees 16-byte alignment."""
    n = int(np.prod(shape))
    buf = np.empty(n + align // 4, dtype=np.float32)
    start = (-buf.ctypes.data % align) // 4
    return buf[start : start + n].reshape(shape)


def pack_panels(stacked, panel=16):
    """``stacked`` (K, N) as panels of ``panel`` columns: (ceil(N/panel), K, panel), zero-padded.

    The layout include/fastlstm_gemm.h streams: one panel's K rows are contiguous."""
    K, N = stacked.shape
    n_panels = -(-N // panel)
    padded = np.zeros((K, n_panels * panel), dtype=np.float32)
    padded[:, :N] = stacked
    return _frozen(padded.reshape(K, n_panels, panel).transpose(1, 0, 2))
