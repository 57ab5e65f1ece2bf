"""The bf16/int8 test models (tests/test_precision_parity.py), and, run as a script, their outputs on
the kernel path FASTLSTM_ISA selects, saved to the .npz named on the command line (a fresh process
per path: the path is chosen when the kernels load).

One case of each way the kernels run: a single row (gemv) with a head, odd sizes (K not a multiple
of the 2 or 4 values a bf16/int8 dword holds, G not a multiple of the 16-column panels), batch
chunks, a single-stream thread team (H >= 256), projection and two directions, stacks, both GRU
kinds, RNNs, Keras' last step."""

import sys

import numpy as np

import fastlstm
import oracle
from fastlstm.layers import GRULayer, GRUWeights, RNNLayer, RNNWeights

LOW = ("bf16", "int8")


def _weights(rng, cls, I, H, bias=True):
    u = lambda *s: rng.uniform(-0.5, 0.5, s).astype(np.float32)  # noqa: E731
    g = cls.GATES * H
    return cls(u(g, I), u(g, H), u(g) if bias else None, u(g) if bias else None)


def _lstm(seed, I, H, L, **kw):
    return oracle.random_stack(np.random.default_rng(seed), I, H, L, **kw)


def _gru_after(seed):
    rng = np.random.default_rng(seed)
    layers = [GRULayer([_weights(rng, GRUWeights, 3, 17)]), GRULayer([_weights(rng, GRUWeights, 17, 9)])]
    return layers, oracle.torch_default_dense(rng, 9, 2)


def _gru_before(seed):
    rng = np.random.default_rng(seed)
    dirs = [_weights(rng, GRUWeights, 4, 11) for _ in range(2)]
    return [GRULayer(dirs, reset_after=False, merge_mode="sum", recurrent_activation="hard_sigmoid_keras2")], None


def _rnn(seed):
    rng = np.random.default_rng(seed)
    layers = [
        RNNLayer([_weights(rng, RNNWeights, 3, 11)]),
        RNNLayer([_weights(rng, RNNWeights, 11, 6, bias=False) for _ in range(2)], activation="relu", merge_mode="ave"),
    ]
    return layers, oracle.torch_default_dense(rng, 6, 3, "tanh")


#: name -> (build() -> (layers, head), B (None: unbatched), T, I, last_step)
CASES = {
    "lstm-head": (lambda: _lstm(1, 7, 37, 1, head_size=3), None, 80, 7, False),
    "lstm-proj-bidir": (lambda: _lstm(2, 9, 20, 2, proj_size=6, bidirectional=True, head_size=3), 3, 25, 9, False),
    "lstm-chunks": (lambda: _lstm(3, 13, 48, 1), 70, 9, 13, False),
    "lstm-team": (lambda: _lstm(4, 24, 256, 1, head_size=2), None, 20, 24, False),
    "lstm-last-step": (lambda: _lstm(5, 5, 16, 2, head_size=2), 3, 30, 5, True),
    "gru-after-stack": (lambda: _gru_after(6), 4, 60, 3, False),
    "gru-before-bidir": (lambda: _gru_before(7), 2, 40, 4, False),
    "rnn-stack": (lambda: _rnn(8), 2, 60, 3, False),
}


def case(name, precision="fp32"):
    """(model, layers, head, x, last_step) of case ``name``, the model at ``precision``."""
    build, B, T, I, last_step = CASES[name]
    layers, head = build()
    model = fastlstm.Model(layers, head, return_sequences=not last_step, precision=precision)
    rng = np.random.default_rng(100 + list(CASES).index(name))
    x = rng.standard_normal((T, I) if B is None else (T, B, I)).astype(np.float32)
    return model, layers, head, x, last_step


def reference(name, precision):
    """The float64 oracle's output of case ``name`` at ``precision``, shaped like ``predict``'s."""
    _, layers, head, x, last_step = case(name)
    y = oracle.forward_recurrent(layers, x if x.ndim == 3 else x[:, None], last_step, head, precision)
    return y if x.ndim == 3 else y[..., 0, :]


def streamed(name):
    """Whether case ``name`` is stepped as a stream too (its model streams, and returns sequences)."""
    model, _, _, _, last_step = case(name)
    return model.streamable and not last_step


def outputs():
    """{case/precision/predict and case/precision/stream: outputs} for every case and low precision."""
    out = {}
    for name in CASES:
        for p in LOW:
            model, _, _, x, _ = case(name, p)
            out[f"{name}/{p}/predict"] = model.predict(x)
            if streamed(name):
                stream = model.stream(None if x.ndim == 2 else x.shape[1])
                out[f"{name}/{p}/stream"] = np.stack([stream.step(v) for v in x])
    return out


if __name__ == "__main__":
    np.savez(sys.argv[1], path=fastlstm._isa.levels()[0], **outputs())
