"""Keras 3 models (torch backend) with GRU, SimpleRNN, Conv1D, pools, norms, Dense stacks with every
activation layer, Embedding and RepeatVector: loaded from the live object, a .keras file and a legacy
.h5 file, they must match Keras over 1000 steps in predict and (where the model streams) step."""

import functools

import numpy as np
import pytest

import fastlstm.loaders as loaders
from loader_helpers import (
    STEPS,
    check_parity,
    import_keras,
    torch_one_thread,  # noqa: F401 (autouse fixture)
)

I, B = 3, 2


def _variants(keras):
    L = keras.layers
    seq = dict(return_sequences=True)
    return {
        # name: (layers after the Input, token input, streams)
        "gru_stack": (
            [L.GRU(7, **seq), L.GRU(5, reset_after=False, recurrent_activation="hard_sigmoid", **seq), L.Dense(3)],
            False,
            True,
        ),
        "bidirectional_gru_last": ([L.Bidirectional(L.GRU(6)), L.Dense(2, activation="softmax")], False, False),
        "simple_rnn": (
            [
                L.SimpleRNN(5, activation="relu", **seq),
                L.SimpleRNN(4, go_backwards=True, **seq),
                L.TimeDistributed(L.Dense(2)),
            ],
            False,
            False,
        ),
        "bidirectional_rnn_sum": (
            [
                L.Bidirectional(L.SimpleRNN(4, **seq), merge_mode="sum"),
                L.Bidirectional(L.LSTM(3, **seq), merge_mode="mul"),
                L.Dense(2),
            ],
            False,
            False,
        ),
        "causal_conv": (
            [
                L.Conv1D(5, 3, padding="causal", dilation_rate=2, activation="relu"),
                L.LSTM(6, **seq),
                L.Dense(4, activation="gelu"),
                L.Dense(1),
            ],
            False,
            True,
        ),
        "strided_same_conv_pool": (
            [L.Conv1D(4, 5, strides=2, padding="same"), L.MaxPooling1D(2), L.GRU(5, **seq), L.Dense(3)],
            False,
            False,
        ),
        "dense_stack_norms": (
            [
                L.Dense(8, activation="selu"),
                L.BatchNormalization(),
                L.LSTM(7, **seq),
                L.LayerNormalization(),
                L.Dense(6, activation="swish"),
                L.Dropout(0.3),
                L.Dense(5, activation="softplus"),
                L.LeakyReLU(0.2),
                L.PReLU(shared_axes=[1]),
                L.ELU(0.7),
                L.Activation("softsign"),
                L.TimeDistributed(L.Dense(4)),
                L.Activation("hard_sigmoid"),
                L.Dense(2, activation="tanh"),
                L.Softmax(),
            ],
            False,
            True,
        ),
        "embedding": ([L.Embedding(13, 5), L.LSTM(6), L.Dense(13, activation="softmax")], True, True),
        # Embedding(mask_zero=True): the ids have runs of zeros (_built); the mask passes Dropout, Dense and
        # LayerNormalization and ends at the GRU's last step.
        "embedding_mask_zero": (
            [
                L.Embedding(13, 5, mask_zero=True),
                L.LSTM(6, **seq),
                L.Dropout(0.2),
                L.TimeDistributed(L.Dense(5, activation="tanh")),
                L.LayerNormalization(),
                L.GRU(4, reset_after=False),
                L.Dense(3),
            ],
            True,
            True,
        ),
        "embedding_mask_zero_sequences": (
            [L.Embedding(13, 5, mask_zero=True), L.SimpleRNN(5, **seq), L.GRU(4, **seq), L.Dense(2)],
            True,
            True,
        ),
        "embedding_mask_zero_bidirectional": (
            [
                L.Embedding(13, 5, mask_zero=True),
                L.Bidirectional(L.LSTM(4, **seq), merge_mode="sum"),
                L.Dense(3),
            ],
            True,
            False,
        ),
        "embedding_mask_zero_bidirectional_last": (
            [L.Embedding(13, 5, mask_zero=True), L.Bidirectional(L.GRU(4)), L.Dense(3)],
            True,
            False,
        ),
        "autoencoder": ([L.LSTM(5), L.RepeatVector(7), L.LSTM(4, **seq), L.TimeDistributed(L.Dense(3))], False, False),
        # Flatten over a whole sequence: the input length is fixed (Input((STEPS, I)), see _built).
        "fixed_length_flatten": (
            [L.Conv1D(4, 3, padding="causal"), L.GRU(5, **seq), L.Flatten(), L.Dense(6, activation="relu"), L.Dense(2)],
            False,
            False,
        ),
        # A pool as the first layer takes its width from the input.
        "pool_first": ([L.MaxPooling1D(2), L.LSTM(5, **seq), L.Dense(2)], False, False),
        "fixed_length_pool_first_flatten": (
            [L.AveragePooling1D(4, strides=2), L.GRU(3, **seq), L.Flatten(), L.Dense(2)],
            False,
            False,
        ),
        "conv_global_pool": (
            [
                L.Conv1D(4, 3, activation="elu"),
                L.AveragePooling1D(2, strides=1),
                L.GRU(5, **seq),
                L.GlobalMaxPooling1D(),
                L.Flatten(),
                L.Dense(2, activation="tanh"),
            ],
            False,
            False,
        ),
        "global_average_streams": (
            [L.Conv1D(4, 2, padding="causal"), L.GRU(5, **seq), L.GlobalAveragePooling1D(), L.Dense(2)],
            False,
            True,
        ),
        "normalization": (
            [
                L.Normalization(),
                L.LSTM(4, **seq),
                L.Normalization(invert=True, mean=[0.5] * 4, variance=[2.0] * 4),
                L.Dense(2),
            ],
            False,
            True,
        ),
        # Built with the Functional API (a chain of calls) instead of Sequential.
        "functional_conv_gru": (
            [L.Conv1D(6, 3, groups=3, padding="same"), L.GRU(5), L.Dense(1, activation="sigmoid")],
            False,
            False,
        ),
    }


@functools.lru_cache(maxsize=None)
def _built(name):
    """(keras model, input, Keras' outputs, streams), built once per variant."""
    keras = import_keras()
    keras.utils.set_random_seed(7)
    layers, tokens, streams = _variants(keras)[name]
    rng = np.random.default_rng(3)
    length = STEPS if name.startswith("fixed_length") else None
    inp = keras.Input((None,), dtype="int32") if tokens else keras.Input((length, I))
    if name.startswith("functional_"):
        h = inp
        for layer in layers:
            h = layer(h)
        model = keras.Model(inp, h)
    else:
        model = keras.Sequential([inp] + layers)
    x = rng.integers(0, 13, (B, STEPS)) if tokens else rng.standard_normal((B, STEPS, I)).astype(np.float32)
    if "mask_zero" in name:  # a third of the steps masked, a row padded in front and one at the end
        x[rng.random(x.shape) < 0.3] = 0
        x[0, :40] = 0
        x[1, -60:] = 0
    for layer in model.layers:  # BatchNormalization: non-trivial statistics (fresh ones are the identity)
        if type(layer).__name__ == "BatchNormalization":
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.standard_normal(n).astype(np.float32) * 0.3)
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n).astype(np.float32))
        if type(layer).__name__ == "Normalization" and layer.input_mean is None:
            layer.adapt(rng.standard_normal((4, 20, I)).astype(np.float32) * 3 + 1)
        if type(layer).__name__ == "PReLU":
            layer.alpha.assign(rng.uniform(0.05, 0.4, layer.alpha.shape).astype(np.float32))
    y = model(x)
    return model, x, np.asarray(y.detach().cpu().numpy()), streams


def _names():
    """The variant names, listed here so that collecting the tests does not import Keras."""
    return [
        "gru_stack",
        "bidirectional_gru_last",
        "simple_rnn",
        "bidirectional_rnn_sum",
        "causal_conv",
        "strided_same_conv_pool",
        "dense_stack_norms",
        "embedding",
        "embedding_mask_zero",
        "embedding_mask_zero_sequences",
        "embedding_mask_zero_bidirectional",
        "embedding_mask_zero_bidirectional_last",
        "autoencoder",
        "fixed_length_flatten",
        "pool_first",
        "fixed_length_pool_first_flatten",
        "conv_global_pool",
        "global_average_streams",
        "functional_conv_gru",
        "normalization",
    ]


@pytest.mark.parametrize("source", ["object", "keras", "h5"])
@pytest.mark.parametrize("name", _names())
def test_parity(name, source, tmp_path):
    model, x, expected, streams = _built(name)
    if source == "object":
        loaded = loaders.from_keras(model)
    else:
        path = tmp_path / f"m.{source}"
        model.save(path)
        loaded = loaders.load(path)
    check_parity(loaded, x, expected, batch_first=True, stream=streams)


def test_names_cover_every_variant():
    assert sorted(_names()) == sorted(_variants(import_keras()))


def test_stream_refusals_say_why():
    model, _, _, _ = _built("strided_same_conv_pool")
    with pytest.raises(ValueError, match="stride"):
        loaders.from_keras(model).stream()


@pytest.mark.parametrize(
    "layers,match",
    [
        (lambda L: [L.Conv1D(4, 3, data_format="channels_first"), L.LSTM(2)], "channels_last"),
        (
            lambda L: [L.LSTM(4, return_sequences=True), L.AveragePooling1D(2, padding="same"), L.Dense(1)],
            "pads unevenly",
        ),
        (lambda L: [L.LSTM(4, return_sequences=True), L.BatchNormalization(axis=1)], "not the feature axis"),
        (lambda L: [L.LSTM(4, return_sequences=True), L.PReLU()], "shared_axes"),
        (lambda L: [L.LSTM(4, return_sequences=True), L.ReLU(max_value=6.0)], "max_value"),
        (lambda L: [L.LSTM(4, return_sequences=True), L.Dense(2, activation="relu6")], "relu6"),
        (lambda L: [L.LSTM(4, return_sequences=True), L.Reshape((-1, 2))], "Reshape"),
    ],
)
def test_refusals(layers, match):
    keras = import_keras()
    model = keras.Sequential([keras.Input((6, I))] + layers(keras.layers))
    model(np.zeros((1, 6, I), np.float32))
    with pytest.raises(ValueError, match=match):
        loaders.from_keras(model)


def test_flatten_of_a_sequence_of_open_length_refused(tmp_path):
    """(Keras itself cannot build such a model; a file whose input length was edited out says so.)"""
    import json

    import h5py

    keras = import_keras()
    L = keras.layers
    model = keras.Sequential([keras.Input((6, I)), L.LSTM(4, return_sequences=True), L.Flatten(), L.Dense(1)])
    model.save(tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "a") as f:
        config = json.loads(f.attrs["model_config"])
        config["config"]["layers"][0]["config"]["batch_shape"][1] = None
        f.attrs["model_config"] = json.dumps(config).encode()
    with pytest.raises(ValueError, match="flattens a whole sequence, but the model's input shape does not fix"):
        loaders.load(tmp_path / "m.h5")


def test_flatten_of_a_sequence_refuses_other_lengths_and_streams():
    model, x, _, _ = _built("fixed_length_flatten")
    loaded = loaders.from_keras(model)
    with pytest.raises(ValueError, match=r"flattens exactly 1000 steps .* 999 input steps bring 999"):
        loaded.predict(x[:, :-1], batch_first=True)
    with pytest.raises(ValueError, match="layer 2 flattens a whole sequence of 1000 steps into one vector"):
        loaded.stream()


@pytest.mark.parametrize(
    "layers,match",
    [
        (lambda L: [L.Conv1D(4, 2), L.LSTM(2)], r"Conv1D.*mask_zero=True\); fastlstm implements masking through"),
        (lambda L: [L.LSTM(4, return_sequences=True), L.GlobalAveragePooling1D()], "GlobalAvgPool1D.*mask"),
        (lambda L: [L.LSTM(4, go_backwards=True)], "go_backwards"),
        (lambda L: [L.Softmax(), L.LSTM(2)], "Softmax layer that receives the mask"),
    ],
)
def test_embedding_mask_zero_refusals(layers, match):
    """Where the mask would reach a layer fastlstm does not mask, the model is refused."""
    keras = import_keras()
    L = keras.layers
    model = keras.Sequential(
        [keras.Input((None,), dtype="int32"), L.Embedding(5, 3, mask_zero=True)] + layers(keras.layers)
    )
    with pytest.raises(ValueError, match=match):
        loaders.from_keras(model)
