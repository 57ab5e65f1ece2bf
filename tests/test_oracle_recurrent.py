"""GRU and RNN layers against the float64 oracle written from the equations (tests/oracle.py),
on hand-built weights: Keras 2 semantics (reset_after=False, hard_sigmoid_keras2), odd sizes,
stacks, bidirectional merges, Keras' last step."""

import numpy as np
import pytest

import fastlstm
import oracle
from fastlstm.layers import GRULayer, GRUWeights, LastStep, RNNLayer, RNNWeights

TOL = 1e-5


def _weights(rng, cls, gates, I, H, bias=True):
    u = lambda *s: rng.uniform(-0.5, 0.5, s).astype(np.float32)  # noqa: E731
    return cls(u(gates * H, I), u(gates * H, H), u(gates * H) if bias else None, u(gates * H) if bias else None)


def _gru(rng, I, H, bi=False, **kw):
    return GRULayer([_weights(rng, GRUWeights, 3, I, H) for _ in range(1 + bi)], **kw)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize(
    "acts", [("tanh", "sigmoid"), ("tanh", "hard_sigmoid_keras2"), ("relu", "hard_sigmoid"), ("linear", "sigmoid")]
)
@pytest.mark.parametrize("H, B", [(5, 1), (17, 3), (32, 4)])
def test_gru_stack(rng, reset_after, acts, H, B):
    layers = [
        _gru(rng, 3, H, activation=acts[0], recurrent_activation=acts[1], reset_after=reset_after),
        _gru(rng, H, 7, reset_after=reset_after),
    ]
    model = fastlstm.Model(layers)
    x = rng.normal(0, 1, (300, B, 3)).astype(np.float32)
    want = oracle.forward_recurrent(layers, x)
    np.testing.assert_allclose(model.predict(x), want, atol=TOL, rtol=0)
    st = model.stream(B)
    np.testing.assert_allclose(np.stack([st.step(x[t]) for t in range(300)]), want, atol=TOL, rtol=0)


@pytest.mark.parametrize("merge", ["concat", "sum", "mul", "ave"])
@pytest.mark.parametrize("reset_after", [True, False])
def test_bidirectional_gru_keras_last_step(rng, merge, reset_after):
    layers = [_gru(rng, 4, 6, bi=True, merge_mode=merge, reset_after=reset_after)]
    model = fastlstm.Model(layers + [LastStep(final_state=True)])
    x = rng.normal(0, 1, (40, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), oracle.forward_recurrent(layers, x, last_step=True), atol=TOL, rtol=0)
    np.testing.assert_allclose(fastlstm.Model(layers).predict(x), oracle.forward_recurrent(layers, x), atol=TOL, rtol=0)


def test_go_backwards_gru(rng):
    layers = [_gru(rng, 4, 9, go_backwards=True, reset_after=False)]
    x = rng.normal(0, 1, (30, 2, 4)).astype(np.float32)
    np.testing.assert_allclose(fastlstm.Model(layers).predict(x), oracle.forward_recurrent(layers, x), atol=TOL, rtol=0)


@pytest.mark.parametrize("act", ["tanh", "relu", "sigmoid", "hard_sigmoid_keras2"])
def test_rnn(rng, act):
    layers = [
        RNNLayer([_weights(rng, RNNWeights, 1, 3, 11)], activation=act),
        RNNLayer([_weights(rng, RNNWeights, 1, 11, 4, bias=False)] * 2, merge_mode="ave"),
    ]
    x = rng.normal(0, 1, (200, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(fastlstm.Model(layers).predict(x), oracle.forward_recurrent(layers, x), atol=TOL, rtol=0)
