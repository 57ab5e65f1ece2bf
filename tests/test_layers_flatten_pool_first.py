"""Flatten over a whole sequence of a fixed length, and chains that start with a pool, against the
float64 oracle: predict, and streaming where the chain streams (a causal stride-1 pool first)."""

import numpy as np
import pytest

import fastlstm
import oracle
from fastlstm.layers import AvgPool1D, Dense, Flatten, GRULayer, GRUWeights, LastStep, LSTMLayer, LSTMWeights, MaxPool1D

I, H, T, B = 3, 5, 40, 3
TOL = 1e-5


def _u(rng, *shape):
    return rng.uniform(-0.6, 0.6, shape).astype(np.float32)


def _gru(rng, n_in=I):
    return GRULayer([GRUWeights(_u(rng, 3 * H, n_in), _u(rng, 3 * H, H), _u(rng, 3 * H), _u(rng, 3 * H))])


def _flatten_chain(rng, steps=T):
    gru = _gru(rng)
    return [
        gru,
        Flatten(steps=steps),
        Dense(_u(rng, 7, steps * H), _u(rng, 7), activation="tanh"),
        Dense(_u(rng, 2, 7), None),
    ]


def _flatten_oracle(layers, x):
    h = oracle.forward_recurrent([layers[0]], x)  # (T, B, H)
    flat = np.swapaxes(h, 0, 1).reshape(h.shape[1], -1)  # (B, T*H), step 0's features first
    return oracle.dense(layers[3], oracle.dense(layers[2], flat))


def test_flatten_matches_the_oracle(rng):
    layers = _flatten_chain(rng)
    model = fastlstm.Model(layers)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    want = _flatten_oracle(layers, x)
    np.testing.assert_allclose(model.predict(x), want, atol=TOL, rtol=0)
    np.testing.assert_allclose(model.predict(np.swapaxes(x, 0, 1), batch_first=True), want, atol=TOL, rtol=0)
    np.testing.assert_allclose(model.predict(x[:, 1]), want[1], atol=TOL, rtol=0)
    assert model.output_size == 2 and not model.return_sequences


def test_flatten_refuses_other_lengths_and_streaming(rng):
    model = fastlstm.Model(_flatten_chain(rng))
    for steps in (T - 1, T + 1):
        with pytest.raises(ValueError, match=rf"layers\[1\] \(Flatten\(steps={T}\)\) flattens exactly {T} steps"):
            model.predict(np.zeros((steps, I), np.float32))
    with pytest.raises(ValueError, match=f"layer 1 flattens a whole sequence of {T} steps into one vector"):
        model.stream()
    with pytest.raises(ValueError, match="flattens a whole sequence"):
        model.pool(2)


def test_flatten_after_a_strided_pool_counts_the_pooled_steps(rng):
    gru = _gru(rng)
    layers = [MaxPool1D(2), gru, Flatten(steps=T // 2), Dense(_u(rng, 2, T // 2 * H), _u(rng, 2))]
    model = fastlstm.Model(layers)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    pooled = np.swapaxes(oracle.pool1d(np.swapaxes(x, 0, 1), 2, 2, "max"), 0, 1)
    h = oracle.forward_recurrent([gru], pooled)
    want = oracle.dense(layers[3], np.swapaxes(h, 0, 1).reshape(B, -1))
    np.testing.assert_allclose(model.predict(x), want, atol=TOL, rtol=0)
    with pytest.raises(ValueError, match=f"but {T + 2} input steps bring {T // 2 + 1} steps"):
        model.predict(np.zeros((T + 2, I), np.float32))


@pytest.mark.parametrize(
    "chain,match",
    [
        (lambda rng: [_gru(rng), Flatten()], "Flatten on a sequence needs its number of steps"),
        (lambda rng: [_gru(rng), LastStep(), Flatten(steps=4)], "needs a sequence, but the time axis was dropped"),
        (lambda rng: [_gru(rng), Flatten(steps=4), Dense(_u(rng, 2, 4 * H + 1), None)], "does not match"),
    ],
)
def test_flatten_chain_refusals(rng, chain, match):
    with pytest.raises(ValueError, match=match):
        fastlstm.Model(chain(rng))
    with pytest.raises(ValueError, match="flatten.steps"):
        Flatten(steps=0)


def test_flatten_too_wide_is_refused(rng):
    with pytest.raises(ValueError, match="a width of 5000000000000 is more than"):
        fastlstm.Model([_gru(rng), Flatten(steps=10**12)])


def test_flatten_survives_the_native_file(rng, tmp_path):
    model = fastlstm.Model(_flatten_chain(rng, steps=6))
    model.save(tmp_path / "m.fastlstm")
    loaded = fastlstm.load(tmp_path / "m.fastlstm")
    assert loaded.layers[1] == Flatten(steps=6)
    x = rng.standard_normal((6, 2, I)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def _pool_first(rng, pool):
    lstm = LSTMLayer([LSTMWeights(_u(rng, 4 * H, I), _u(rng, 4 * H, H), _u(rng, 4 * H), None)])
    return [pool, lstm, Dense(_u(rng, 2, H), _u(rng, 2))]


def _pool_first_oracle(layers, x, pad_left=0):
    pool = layers[0]
    mode = "max" if isinstance(pool, MaxPool1D) else "avg"
    pooled = oracle.pool1d(np.swapaxes(x, 0, 1), pool.size, pool.stride, mode, pad_left=pad_left)
    return oracle.dense(layers[2], oracle.forward_recurrent([layers[1]], np.swapaxes(pooled, 0, 1)))


def test_causal_pool_first_streams(rng):
    layers = _pool_first(rng, MaxPool1D(3, 1, "causal"))
    model = fastlstm.Model(layers)
    assert model.input_size == I and model.streamable
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    y = model.predict(x)
    np.testing.assert_allclose(y, _pool_first_oracle(layers, x, pad_left=2), atol=TOL, rtol=0)
    s = model.stream(B)
    np.testing.assert_array_equal(np.stack([s.step(x[t]) for t in range(T)]), y)
    # A pool of streams at different positions, and a state saved half-way.
    pool = model.pool(4)
    a, b = pool.open(), pool.open()
    for t in range(T):
        out = pool.step([a, b] if t >= 5 else [a], np.stack([x[t, 0], x[t - 5, 1]]) if t >= 5 else x[t, :1])
        np.testing.assert_array_equal(out[0], y[t, 0])
        if t >= 5:
            np.testing.assert_array_equal(out[1], y[t - 5, 1])
    half, state = model.predict(x[:20], return_state=True)
    np.testing.assert_array_equal(model.predict(x[20:], fastlstm.State.from_bytes(state.to_bytes())), y[20:])


@pytest.mark.parametrize("pool", [MaxPool1D(2), AvgPool1D(3, 2, count_include_pad=False), AvgPool1D(2, 1)])
def test_strided_pool_first_predicts(rng, pool):
    layers = _pool_first(rng, pool)
    model = fastlstm.Model(layers)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), _pool_first_oracle(layers, x), atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="layer 0 is a"):
        model.stream()
