"""The new layers against Keras 3 (torch backend): GRU reset_after True/False, SimpleRNN, Conv1D
paddings/strides/dilation, pools, norms, Embedding, RepeatVector, bidirectional last steps."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from keras import layers as kl  # noqa: E402
from keras_chain import fastlstm_layers, randomize  # noqa: E402

import fastlstm  # noqa: E402

TOL = 1e-5


def _pair(inputs, body, seed=0):
    km = randomize(keras.Sequential([keras.Input(inputs)] + body), seed)
    return km, fastlstm.Model(fastlstm_layers(km))


def _keras(km, x_btf):
    return keras.ops.convert_to_numpy(km.predict(x_btf, verbose=0)).astype(np.float64)


def _x(rng, B, T, F):
    return rng.normal(0, 1, (B, T, F)).astype(np.float32)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("acts", [("tanh", "sigmoid"), ("relu", "hard_sigmoid")])
def test_gru(rng, reset_after, acts):
    km, model = _pair(
        (None, 5),
        [
            kl.GRU(
                13, reset_after=reset_after, activation=acts[0], recurrent_activation=acts[1], return_sequences=True
            ),
            kl.GRU(16, reset_after=reset_after, return_sequences=True),
            kl.Dense(3),
        ],
    )
    x = _x(rng, 3, 1000, 5)
    want = _keras(km, x)
    np.testing.assert_allclose(model.predict(x, batch_first=True), want, atol=TOL, rtol=0)
    st = model.stream(3)
    got = np.stack([st.step(x[:, t]) for t in range(1000)], axis=1)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


@pytest.mark.parametrize("merge", ["concat", "sum", "mul", "ave"])
def test_bidirectional_gru_last_step(rng, merge):
    """Keras' return_sequences=False on a bidirectional layer: forward at T-1, backward at 0."""
    km, model = _pair((None, 4), [kl.Bidirectional(kl.GRU(7, reset_after=False), merge_mode=merge), kl.Dense(2)])
    x = _x(rng, 2, 50, 4)
    np.testing.assert_allclose(model.predict(x, batch_first=True), _keras(km, x), atol=TOL, rtol=0)


def test_simple_rnn_stack(rng):
    km, model = _pair(
        (None, 3),
        [kl.SimpleRNN(9, return_sequences=True), kl.SimpleRNN(5, activation="relu"), kl.Dense(2, activation="softmax")],
    )
    x = _x(rng, 2, 1000, 3) * 0.5
    np.testing.assert_allclose(model.predict(x, batch_first=True), _keras(km, x), atol=TOL, rtol=0)


@pytest.mark.parametrize(
    "conv",
    [
        dict(padding="valid"),
        dict(padding="same"),
        dict(padding="causal"),
        dict(padding="causal", dilation_rate=3),
        dict(padding="same", strides=2),
        dict(padding="valid", strides=3),
        dict(padding="same", dilation_rate=2),
    ],
)
def test_conv1d(rng, conv):
    km, model = _pair(
        (None, 3), [kl.Conv1D(6, 4, activation="relu", **conv), kl.LSTM(8, return_sequences=True), kl.Dense(2)]
    )
    for T in (41, 42):  # 'same' at stride 2 pads by the sequence length's parity
        x = _x(rng, 2, T, 3)
        np.testing.assert_allclose(model.predict(x, batch_first=True), _keras(km, x), atol=TOL, rtol=0)
    if conv["padding"] == "causal":
        st = model.stream(2)
        x = _x(rng, 2, 1000, 3)
        got = np.stack([st.step(x[:, t]) for t in range(1000)], axis=1)
        np.testing.assert_allclose(got, _keras(km, x), atol=TOL, rtol=0)
    else:
        with pytest.raises(ValueError, match="cannot stream: layer 0 is a Conv1D"):
            model.stream()


@pytest.mark.parametrize(
    "pool",
    [
        kl.MaxPooling1D(2),
        kl.MaxPooling1D(3, strides=2, padding="same"),
        kl.AveragePooling1D(2),
        kl.AveragePooling1D(3, strides=2, padding="same"),
        kl.AveragePooling1D(3, strides=1, padding="same"),
    ],
)
def test_conv_pool_gru(rng, pool):
    km, model = _pair((None, 2), [kl.Conv1D(8, 3, activation="relu"), pool, kl.GRU(10), kl.Dense(4)])
    x = _x(rng, 3, 57, 2)
    np.testing.assert_allclose(model.predict(x, batch_first=True), _keras(km, x), atol=TOL, rtol=0)


def test_norms_embedding_global_pool(rng):
    km, model = _pair(
        (None,),
        [
            kl.Embedding(30, 6),
            kl.LSTM(12, return_sequences=True),
            kl.LayerNormalization(),
            kl.Conv1D(8, 3, padding="causal"),
            kl.BatchNormalization(),
            kl.Activation("elu"),
            kl.GlobalAveragePooling1D(),
            kl.Dense(8, activation="selu"),
            kl.Dense(2),
        ],
    )
    ids = rng.integers(0, 30, (2, 300))
    want = _keras(km, ids)
    np.testing.assert_allclose(model.predict(ids, batch_first=True), want, atol=TOL, rtol=0)
    st = model.stream(2)
    for t in range(300):
        y = st.step(ids[:, t])
    np.testing.assert_allclose(y, want, atol=TOL, rtol=0)


def test_lstm_autoencoder(rng):
    km, model = _pair((None, 3), [kl.LSTM(16), kl.RepeatVector(7), kl.LSTM(8, return_sequences=True), kl.Dense(3)])
    x = _x(rng, 2, 30, 3)
    np.testing.assert_allclose(model.predict(x, batch_first=True), _keras(km, x), atol=TOL, rtol=0)
