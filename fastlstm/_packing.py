"""Repack framework-layout weights (fastlstm.layers) into the kernels' layout, once, at load.

Per direction the kernels want one row-major matrix ``[W_x; W_h]`` of shape
``(n_in + n_out, 4H)`` -- so ``x @ W_x`` and ``h @ W_h`` are plain row-major
products that vectorize along the gate axis -- with the gate columns ordered
``[i | f | o | g]`` (the three sigmoid gates contiguous), both biases summed
into one, and the projection transposed to ``(H, P)``.
"""

import numpy as np

from .layers import Dense, LSTMLayer, LSTMWeights

#: Activation codes of include/fastlstm_activations.h (enum fl_activation).
ACTIVATION_CODES = {
    "sigmoid": 0, "tanh": 1, "hard_sigmoid": 2, "hard_sigmoid_keras2": 3,
    "relu": 4, "linear": 5, "softmax": 6,
}

#: Merge codes of include/fastlstm_cell.h (enum fl_merge).
MERGE_CODES = {"concat": 0, "sum": 1, "mul": 2, "ave": 3}


def _gate_permutation(hidden):
    """Rows of PyTorch's (i, f, g, o) blocks, reordered to (i, f, o, g)."""
    h = hidden
    return np.r_[0:2 * h, 3 * h:4 * h, 2 * h:3 * h]


def _frozen(arr):
    """A read-only, cache-line-aligned float32 copy of ``arr``."""
    out = aligned_empty(np.shape(arr))
    out[...] = arr
    out.setflags(write=False)
    return out


def pack_direction(w: LSTMWeights):
    """(stacked W (n_in + n_out, 4H), bias (4H,), projection (H, P) or None)."""
    perm = _gate_permutation(w.hidden_size)
    stacked = np.concatenate([w.weight_ih[perm].T, w.weight_hh[perm].T], axis=0)
    bias = np.zeros(4 * w.hidden_size, dtype=np.float32)
    for b in (w.bias_ih, w.bias_hh):
        if b is not None:
            bias += b[perm]
    proj = None if w.weight_hr is None else _frozen(w.weight_hr.T)
    return _frozen(stacked), _frozen(bias), proj


def pack_layer(layer: LSTMLayer, merge_override=None):
    """The dict fastlstm._kernels.Network takes for one layer."""
    merge = merge_override or layer.merge_mode
    width = layer.directions[0].output_size * (2 if layer.bidirectional and merge == "concat" else 1)
    return {
        "dirs": [pack_direction(d) for d in layer.directions],
        "gate_act": ACTIVATION_CODES[layer.recurrent_activation],
        "cell_act": ACTIVATION_CODES[layer.activation],
        "merge": MERGE_CODES[merge],
        "go_backwards": bool(layer.go_backwards),
        "n_in": layer.input_size,
        "hidden": layer.hidden_size,
        "n_out": layer.directions[0].output_size,
        "width": width,
    }


def pack_head(head: Dense):
    """(W (In, O), bias (O,), activation code) for the kernels."""
    bias = head.bias if head.bias is not None else np.zeros(head.output_size, dtype=np.float32)
    return _frozen(head.weight.T), _frozen(bias), ACTIVATION_CODES[head.activation]


def aligned_empty(shape, align=64):
    """An uninitialised float32 array whose data starts on an ``align``-byte boundary.

    Vector loads that straddle two cache lines cost about twice as much, and
    numpy only guarantees 16-byte alignment."""
    n = int(np.prod(shape))
    buf = np.empty(n + align // 4, dtype=np.float32)
    start = (-buf.ctypes.data % align) // 4
    return buf[start:start + n].reshape(shape)


def pack_panels(stacked, panel=16):
    """``stacked`` (K, N) as panels of ``panel`` columns: (ceil(N/panel), K, panel), zero-padded.

    The layout include/fastlstm_gemm.h streams: one panel's K rows are contiguous."""
    K, N = stacked.shape
    n_panels = -(-N // panel)
    padded = np.zeros((K, n_panels * panel), dtype=np.float32)
    padded[:, :N] = stacked
    return _frozen(padded.reshape(K, n_panels, panel).transpose(1, 0, 2))
