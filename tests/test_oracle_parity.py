"""fastlstm against the float64 NumPy oracle (tests/oracle.py).

The oracle follows the equations directly, so these tests pin the engine's arithmetic: the
benchmark shapes over long sequences (float32 rounding and the approximate activations must not
accumulate), odd sizes that stress tails of vectorised loops, and every feature of the layer
description (projection, directions, merge modes, go_backwards, Keras activations, head
activations, initial state, return_sequences=False).

A few tests at the end check the oracle itself against Keras for the features PyTorch lacks
(hard_sigmoid, go_backwards, merge modes), so the reference is not trusted on faith;
test_torch_parity.py does the same for PyTorch's features.
"""

import os

import numpy as np
import pytest

import fastlstm
import oracle
from fastlstm.layers import LSTMLayer, LSTMWeights

#: The accuracy bound: max abs error over the whole output, float32 engine vs float64 oracle.
TOL = 2e-6

# (name, I, H, layers, B, T): the benchmark shapes, then odd sizes.
SHAPES = [
    ("tiny", 16, 32, 1, 1, 1000),
    ("small", 64, 128, 1, 1, 500),
    ("medium", 128, 256, 2, 1, 200),
    ("medium-batch", 128, 256, 2, 32, 100),
    ("large", 512, 1024, 1, 1, 50),
    ("large-batch", 512, 1024, 1, 64, 50),
    ("H=1", 16, 1, 1, 1, 1000),
    ("H=50", 16, 50, 2, 1, 1000),
    ("I=1", 1, 32, 1, 1, 1000),
    ("B=3", 16, 32, 1, 3, 1000),
    ("odd-all", 7, 13, 3, 5, 300),
]


def _x(rng, T, B, I):
    """Standard normal input: realistic magnitudes, so the bound is about rounding, not saturation."""
    shape = (T, I) if B is None else (T, B, I)
    return rng.standard_normal(shape).astype(np.float32)


def _max_err(a, b):
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - b))) if np.size(b) else 0.0


@pytest.mark.parametrize("name,I,H,L,B,T", SHAPES, ids=[s[0] for s in SHAPES])
def test_benchmark_and_odd_shapes(name, I, H, L, B, T, make_model, rng):
    model, layers, head = make_model(I, H, L, seed=I * 1000 + H)
    x = _x(rng, T, B, I)
    y = model.predict(x)
    ref, _ = oracle.forward(layers, head, x)
    assert y.dtype == np.float32 and y.shape == ref.shape
    assert _max_err(y, ref) <= TOL


@pytest.mark.parametrize("B", [None, 1, 4])
def test_unbatched_and_batched_agree_with_oracle(B, make_model, rng):
    model, layers, head = make_model(9, 20, 2, seed=3, head_size=5)
    x = _x(rng, 60, B, 9)
    ref, _ = oracle.forward(layers, head, x)
    assert _max_err(model.predict(x), ref) <= TOL


def test_batch_first(make_model, rng):
    model, layers, head = make_model(6, 11, 2, seed=4, head_size=3)
    x = rng.standard_normal((5, 40, 6)).astype(np.float32)  # (B, T, I)
    y = model.predict(x, batch_first=True)
    ref, _ = oracle.forward(layers, head, x, batch_first=True)
    assert y.shape == (5, 40, 3)
    assert _max_err(y, ref) <= TOL


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("proj_size", [0, 4])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_directions_and_projection(bidirectional, proj_size, num_layers, make_model, rng):
    model, layers, head = make_model(
        8, 12, num_layers, seed=5, bidirectional=bidirectional, proj_size=proj_size, head_size=3
    )
    x = _x(rng, 50, 3, 8)
    ref, _ = oracle.forward(layers, head, x)
    assert _max_err(model.predict(x), ref) <= TOL


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave"])
def test_merge_modes(merge_mode, make_model, rng):
    model, layers, head = make_model(5, 9, 2, seed=6, bidirectional=True, merge_mode=merge_mode)
    x = _x(rng, 30, 2, 5)
    ref, _ = oracle.forward(layers, head, x)
    assert model.output_size == ref.shape[-1]
    assert _max_err(model.predict(x), ref) <= TOL


def test_go_backwards_returns_reversed_outputs(make_model, rng):
    model, layers, head = make_model(5, 9, 2, seed=7, go_backwards=True, head_size=2)
    x = _x(rng, 30, 2, 5)
    ref, _ = oracle.forward(layers, head, x)
    assert _max_err(model.predict(x), ref) <= TOL


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "hard_sigmoid", "relu", "linear"])
@pytest.mark.parametrize("recurrent_activation", ["sigmoid", "hard_sigmoid", "hard_sigmoid_keras2", "tanh"])
def test_cell_activations(activation, recurrent_activation, make_model, rng):
    model, layers, head = make_model(6, 10, 2, seed=8, activation=activation, recurrent_activation=recurrent_activation)
    x = _x(rng, 40, 3, 6)
    ref, _ = oracle.forward(layers, head, x)
    # relu/linear cells are unbounded: compare relative to the output's magnitude.
    assert _max_err(model.predict(x), ref) <= TOL * max(1.0, float(np.abs(ref).max()))


@pytest.mark.parametrize("head_activation", ["linear", "sigmoid", "tanh", "relu", "softmax"])
@pytest.mark.parametrize("B", [None, 4])
def test_head_activations(head_activation, B, make_model, rng):
    model, layers, head = make_model(6, 16, 1, seed=9, head_size=7, head_activation=head_activation)
    x = _x(rng, 40, B, 6)
    y = model.predict(x)
    ref, _ = oracle.forward(layers, head, x)
    assert model.output_size == 7
    assert _max_err(y, ref) <= TOL
    if head_activation == "softmax":
        assert np.allclose(y.sum(axis=-1), 1.0, atol=1e-5)


def test_head_without_bias(rng):
    layers, _ = oracle.random_stack(np.random.default_rng(10), 4, 8)
    head = oracle.torch_default_dense(np.random.default_rng(11), 8, 3, bias=False)
    model = fastlstm.Model(layers, head)
    x = _x(rng, 20, 2, 4)
    ref, _ = oracle.forward(layers, head, x)
    assert _max_err(model.predict(x), ref) <= TOL


def test_lstm_without_bias(make_model, rng):
    model, layers, head = make_model(4, 8, 2, seed=12, bias=False)
    x = _x(rng, 20, 2, 4)
    ref, _ = oracle.forward(layers, head, x)
    assert _max_err(model.predict(x), ref) <= TOL


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("B", [None, 3])
def test_initial_and_final_state(bidirectional, B, make_model, rng):
    model, layers, head = make_model(5, 8, 2, seed=13, bidirectional=bidirectional, proj_size=3, head_size=2)
    init = oracle.random_state(rng, layers, B)
    x = _x(rng, 25, B, 5)
    y, state = model.predict(x, fastlstm.State(h=init.h, c=init.c), return_state=True)
    ref, ref_state = oracle.forward(layers, head, x, init)
    assert _max_err(y, ref) <= TOL
    assert len(state.h) == len(ref_state.h) == len(state.c)
    for got, want in zip(list(state.h) + list(state.c), ref_state.h + ref_state.c):
        assert np.shape(got) == want.shape
        assert _max_err(got, want) <= TOL


@pytest.mark.parametrize("bidirectional,go_backwards", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("B", [None, 3])
def test_return_sequences_false(bidirectional, go_backwards, B, make_model, rng):
    model, layers, head = make_model(
        5, 8, 2, seed=14, bidirectional=bidirectional, go_backwards=go_backwards, head_size=3, return_sequences=False
    )
    x = _x(rng, 25, B, 5)
    y = model.predict(x)
    ref, _ = oracle.forward(layers, head, x, return_sequences=False)
    assert y.shape == ref.shape == ((3,) if B is None else (B, 3))
    assert _max_err(y, ref) <= TOL


# --------------------------------------------------------------------------- the oracle vs Keras
def _keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    return keras


def _keras_weights_to_layer(cell_weights, **layer_kw):
    """Keras (kernel (I,4H), recurrent (H,4H), bias) per direction -> LSTMLayer (gate order i, f, c, o)."""
    dirs = tuple(LSTMWeights(k.T, r.T, b, None) for k, r, b in cell_weights)
    return LSTMLayer(dirs, **layer_kw)


@pytest.mark.parametrize("recurrent_activation", ["sigmoid", "hard_sigmoid"])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_oracle_matches_keras_lstm(recurrent_activation, go_backwards):
    keras = _keras()
    keras.utils.set_random_seed(1)
    layer = keras.layers.LSTM(
        6, recurrent_activation=recurrent_activation, go_backwards=go_backwards, return_sequences=True
    )
    x = np.random.default_rng(2).standard_normal((2, 15, 4)).astype(np.float32)
    layer(x)  # build the weights
    k, r, b = (np.asarray(w) for w in layer.get_weights())
    # Keras's default bias is unit-forget (0 except f): perturb it so the bias path is exercised.
    b = b + np.random.default_rng(3).uniform(-0.3, 0.3, b.shape).astype(np.float32)
    layer.set_weights([k, r, b])
    want = np.asarray(keras.ops.convert_to_numpy(layer(x)))
    ours = _keras_weights_to_layer([(k, r, b)], recurrent_activation=recurrent_activation, go_backwards=go_backwards)
    got, _ = oracle.forward([ours], None, x, batch_first=True)
    assert np.abs(got - want).max() <= 1e-5


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave"])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_oracle_matches_keras_bidirectional(merge_mode, return_sequences):
    keras = _keras()
    keras.utils.set_random_seed(4)
    layer = keras.layers.Bidirectional(keras.layers.LSTM(5, return_sequences=return_sequences), merge_mode=merge_mode)
    x = np.random.default_rng(5).standard_normal((3, 12, 4)).astype(np.float32)
    layer(x)
    w = [np.asarray(a) for a in layer.get_weights()]  # forward (k, r, b), then backward
    ours = _keras_weights_to_layer([w[0:3], w[3:6]], merge_mode=merge_mode)
    want = np.asarray(keras.ops.convert_to_numpy(layer(x)))
    got, _ = oracle.forward([ours], None, x, batch_first=True, return_sequences=return_sequences)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5
