"""ONNX ``LSTM``, ``GRU`` and ``RNN`` nodes -> fastlstm layers, attribute by attribute.

ONNX stores one tensor per input for all directions: ``W`` ``[D, G*H, I]``,
``R`` ``[D, G*H, H]``, ``B`` ``[D, 2*G*H]`` (input biases, then recurrent biases).
Gate orders differ from PyTorch's, which fastlstm's layer classes use:

======  ============  =========================
op      ONNX order    PyTorch order (fastlstm)
======  ============  =========================
LSTM    i, o, f, c    i, f, g, o
GRU     z, r, h       r, z, n
RNN     (one gate)    (one gate)
======  ============  =========================

Every attribute either maps exactly or is refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..layers import CELL_ACTIVATIONS, GRULayer, GRUWeights, LSTMLayer, LSTMWeights, RNNLayer, RNNWeights

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
#: Blocks of ONNX's gate order, listed in PyTorch's order.
_TORCH_ORDER = {"LSTM": (0, 2, 3, 1), "GRU": (1, 0, 2), "RNN": (0,)}
#: ONNX default activations per direction: (f, g, h) for LSTM, (f, g) for GRU, (f,) for RNN.
DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
#: Activations that take alpha (and beta), which they consume from activation_alpha/beta in order.
_TAKES_PARAMS = ("Affine", "LeakyRelu", "ThresholdedRelu", "ScaledTanh", "HardSigmoid", "Elu", "Softplus")
_HARD_SIGMOID = {0.2: "hard_sigmoid_keras2", float(np.float32(1 / 6)): "hard_sigmoid"}


class RecurrentRefused(ValueError):
    """An attribute or input the kernels cannot run exactly (the caller names the node)."""


@dataclass(frozen=True)
class RecurrentInfo:
    """What the graph matcher needs to know about a recurrent node besides its layer."""

    op: str
    directions: int  # 1 or 2
    reverse: bool  # direction == "reverse"
    layout: int  # 0: (T, B, I); 1: (B, T, I)
    hidden_size: int
    input_size: int


def _activation_names(op, attrs):
    """fastlstm names of the node's activations for one direction, or RecurrentRefused."""
    ndir = 2 if _direction(attrs) == "bidirectional" else 1
    default = DEFAULT_ACTIVATIONS[op]
    names = (
        [s.decode("utf-8", "replace") for s in attrs["activations"].strings]
        if "activations" in attrs
        else list(default) * ndir
    )
    if len(names) != len(default) * ndir:
        raise RecurrentRefused(
            f"activations lists {len(names)} functions; {op} with {ndir} direction(s) takes {len(default) * ndir}"
        )
    alphas = list(attrs["activation_alpha"].floats) if "activation_alpha" in attrs else []
    betas = list(attrs["activation_beta"].floats) if "activation_beta" in attrs else []
    mapped = []
    for name in names:
        alpha = beta = None
        if name in _TAKES_PARAMS:
            alpha = alphas.pop(0) if alphas else None
            beta = betas.pop(0) if betas else None
        mapped.append(_map_activation(name, alpha, beta))
    per_dir = [tuple(mapped[k * len(default) : (k + 1) * len(default)]) for k in range(ndir)]
    if ndir == 2 and per_dir[0] != per_dir[1]:
        raise RecurrentRefused(
            f"the two directions use different activations {per_dir[0]} and {per_dir[1]}; "
            "a fastlstm layer has one set for both"
        )
    return per_dir[0]


def _map_activation(name, alpha, beta):
    simple = {"Sigmoid": "sigmoid", "Tanh": "tanh", "Relu": "relu"}
    if name in simple:
        return simple[name]
    if name == "HardSigmoid":
        alpha = 0.2 if alpha is None else float(np.float32(alpha))
        beta = 0.5 if beta is None else float(np.float32(beta))
        for ref, kind in _HARD_SIGMOID.items():
            if abs(alpha - float(np.float32(ref))) <= 1e-7 and beta == 0.5:
                return kind
        raise RecurrentRefused(
            f"HardSigmoid with alpha={alpha}, beta={beta}: fastlstm runs alpha 0.2 (Keras 2) "
            "or 1/6 (Keras 3) with beta 0.5"
        )
    if name == "Affine" and (alpha in (None, 1.0)) and (beta in (None, 0.0)):
        return "linear"
    raise RecurrentRefused(
        f"activation {name}{'' if alpha is None else f'(alpha={alpha}, beta={beta})'} is not "
        f"one fastlstm's recurrent kernels run ({', '.join(CELL_ACTIVATIONS)})"
    )


def _direction(attrs):
    d = attrs["direction"].s.decode("utf-8", "replace") if "direction" in attrs else "forward"
    if d not in ("forward", "reverse", "bidirectional"):
        raise RecurrentRefused(f"direction {d!r} is not forward, reverse or bidirectional")
    return d


def recurrent_layer(op, attrs, weights, has_input):
    """Build the fastlstm layer for one recurrent node.

    ``weights(k)`` returns the node's k-th input as a float32 array (W, R, B, ..., P) and
    ``has_input(k)`` says whether it is given.  Returns ``(layer, RecurrentInfo)``; the
    layer is an :class:`LSTMLayer`, :class:`GRULayer` or :class:`RNNLayer`."""
    direction = _direction(attrs)
    ndir = 2 if direction == "bidirectional" else 1
    layout = attrs["layout"].i if "layout" in attrs else 0
    if layout not in (0, 1):
        raise RecurrentRefused(f"layout={layout}; ONNX defines 0 and 1")
    if "clip" in attrs:
        raise RecurrentRefused(
            f"clip={attrs['clip'].f} clips the gate pre-activations, which fastlstm's kernels do "
            "not do; export without clip"
        )
    if op == "LSTM" and "input_forget" in attrs and attrs["input_forget"].i:
        raise RecurrentRefused("input_forget=1 couples the input and forget gates, which fastlstm's LSTM does not")
    gates = GATES[op]
    W, R = weights(1), weights(2)
    if W.ndim != 3 or W.shape[0] != ndir or W.shape[1] % gates:
        raise RecurrentRefused(f"W has shape {W.shape}; expected ({ndir}, {gates}*hidden_size, input_size)")
    H = W.shape[1] // gates
    if "hidden_size" in attrs and attrs["hidden_size"].i != H:
        raise RecurrentRefused(f"hidden_size={attrs['hidden_size'].i} but W holds {H} units per gate")
    if R.shape != (ndir, gates * H, H):
        raise RecurrentRefused(f"R has shape {R.shape}; expected {(ndir, gates * H, H)}")
    B = weights(3) if has_input(3) else np.zeros((ndir, 2 * gates * H), np.float32)
    if B.shape != (ndir, 2 * gates * H):
        raise RecurrentRefused(f"B has shape {B.shape}; expected {(ndir, 2 * gates * H)}")
    if op == "LSTM" and has_input(7):
        P = weights(7)
        if P.shape != (ndir, 3 * H):
            raise RecurrentRefused(f"P has shape {P.shape}; expected {(ndir, 3 * H)}")
        if np.any(P != 0):
            raise RecurrentRefused("P (peephole weights) is not zero; fastlstm's LSTM has no peepholes")
    acts = _activation_names(op, attrs)
    order = np.concatenate([np.arange(b * H, (b + 1) * H) for b in _TORCH_ORDER[op]])
    dirs = []
    for d in range(ndir):
        dirs.append((W[d][order], R[d][order], B[d, : gates * H][order], B[d, gates * H :][order]))
    info = RecurrentInfo(op, ndir, direction == "reverse", layout, H, W.shape[2])
    backwards = direction == "reverse"
    if op == "LSTM":
        if acts[1] != acts[2]:
            raise RecurrentRefused(
                f"activations g={acts[1]} and h={acts[2]} differ; fastlstm's LSTM uses one activation for both"
            )
        layer = LSTMLayer(
            [LSTMWeights(*w, name=f"LSTM direction {k}") for k, w in enumerate(dirs)],
            activation=acts[1],
            recurrent_activation=acts[0],
            go_backwards=backwards,
        )
    elif op == "GRU":
        # linear_before_reset=1 applies the reset gate after the recurrent product (PyTorch, Keras
        # reset_after=True); 0 before it (Keras reset_after=False).
        lbr = attrs["linear_before_reset"].i if "linear_before_reset" in attrs else 0
        layer = GRULayer(
            [GRUWeights(*w, name=f"GRU direction {k}") for k, w in enumerate(dirs)],
            activation=acts[1],
            recurrent_activation=acts[0],
            reset_after=bool(lbr),
            go_backwards=backwards,
        )
    else:
        layer = RNNLayer(
            [RNNWeights(*w, name=f"RNN direction {k}") for k, w in enumerate(dirs)],
            activation=acts[0],
            go_backwards=backwards,
        )
    return layer, info
