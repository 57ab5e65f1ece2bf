"""Live parity: Keras 3 models (torch backend) saved as .keras and legacy .h5, or handed over as
objects, must give Keras' own outputs over 1000 steps in predict and in step."""

import functools

import numpy as np
import pytest

import fastlstm.loaders as loaders
from fastlstm.loaders import read_spec
from loader_helpers import STEPS, check_parity, import_keras

pytestmark = pytest.mark.usefixtures("torch_one_thread")

keras = import_keras()
L = keras.layers

I, B = 4, 2


def _small(seed):
    # Modest weights keep relu/linear cells bounded over 1000 steps, so the 1e-5 bar is about
    # the loader and the kernels, not about float32 rounding of exploding values.
    return keras.initializers.RandomUniform(-0.3, 0.3, seed=seed)


def _seq(*layers, batch_size=None):
    return keras.Sequential([keras.Input((None, I), batch_size=batch_size), *layers])


def _functional():
    inp = keras.Input((None, I))
    x = L.Dropout(0.25)(inp)
    x = L.LSTM(6, return_sequences=True, name="enc")(x)
    x = L.LSTM(5, name="dec")(x)
    x = L.Dropout(0.1)(x)
    return keras.Model(inp, L.Dense(3, activation="relu")(x))


VARIANTS = {
    "lstm_dense": lambda: _seq(L.LSTM(8, return_sequences=True), L.Dense(3)),
    "stack_dropout_timedistributed": lambda: _seq(
        L.LSTM(8, return_sequences=True),
        L.Dropout(0.5),
        L.LSTM(6, return_sequences=True, use_bias=False),
        L.TimeDistributed(L.Dense(3, activation="softmax")),
    ),
    "cell_activations": lambda: _seq(
        L.LSTM(
            6,
            return_sequences=True,
            activation="relu",
            recurrent_activation="hard_sigmoid",
            kernel_initializer=_small(1),
            recurrent_initializer=_small(2),
        ),
        L.LSTM(
            5,
            return_sequences=True,
            activation="linear",
            recurrent_activation="sigmoid",
            kernel_initializer=_small(3),
            recurrent_initializer=_small(4),
        ),
        L.LSTM(4, return_sequences=True, activation="tanh", recurrent_activation="tanh"),
        L.Dense(2, activation="tanh"),
    ),
    "go_backwards_mid": lambda: _seq(
        L.LSTM(6, return_sequences=True, go_backwards=True), L.LSTM(5), L.Dense(2, activation="sigmoid")
    ),
    "go_backwards_last": lambda: _seq(L.LSTM(6, go_backwards=True), L.Dense(2)),
    "bidi_concat": lambda: _seq(L.Bidirectional(L.LSTM(6, return_sequences=True)), L.Dense(3)),
    "bidi_sum": lambda: _seq(L.Bidirectional(L.LSTM(6, return_sequences=True), merge_mode="sum"), L.Dense(3)),
    "bidi_mul": lambda: _seq(L.Bidirectional(L.LSTM(6, return_sequences=True), merge_mode="mul")),
    "bidi_ave": lambda: _seq(
        L.LSTM(5, return_sequences=True),
        L.Bidirectional(L.LSTM(6, return_sequences=True), merge_mode="ave"),
        L.Dense(3, use_bias=False),
    ),
    "bidi_last_step": lambda: _seq(L.Bidirectional(L.LSTM(5)), L.Dense(2)),
    "functional": _functional,
    "dense_then_activation": lambda: _seq(L.LSTM(6, return_sequences=True), L.Dense(3), L.Activation("softmax")),
}


def _make(variant):
    keras.utils.set_random_seed(7)
    model = VARIANTS[variant]()
    # Non-zero biases, so a dropped bias would show.
    for w in model.weights:
        if w.path.endswith("bias"):
            w.assign(np.random.default_rng(5).uniform(-0.5, 0.5, w.shape).astype("float32"))
    return model


def _x(seed=2, steps=STEPS, batch=B):
    return np.random.default_rng(seed).standard_normal((batch, steps, I)).astype(np.float32)


def _keras_out(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def _streamable(model):
    return all(
        not isinstance(layer, L.Bidirectional) and not getattr(layer, "go_backwards", False) for layer in model.layers
    )


@functools.lru_cache(maxsize=None)
def _made(variant):
    """One model and its Keras outputs per variant, shared by the three sources (Keras is the slow part)."""
    model = _make(variant)
    x = _x()
    return model, x, _keras_out(model, x)


@pytest.mark.parametrize("source", ["keras", "h5", "object"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_parity(variant, source, tmp_path):
    model, x, expected = _made(variant)
    if source == "object":
        fm = loaders.from_keras(model)
    else:
        path = tmp_path / f"m.{source}"
        model.save(path)
        fm = loaders.load(path)
        assert loaders.from_keras(path).output_size == fm.output_size
    check_parity(fm, x, expected, batch_first=True, stream=_streamable(model))


def test_stateful_maps_to_stream(tmp_path):
    """stateful=True keeps state across calls in Keras; in fastlstm that is a Stream."""
    keras.utils.set_random_seed(3)
    model = _seq(L.LSTM(6, return_sequences=True, stateful=True), L.Dense(2), batch_size=B)
    model.save(tmp_path / "s.keras")
    fm = loaders.load(tmp_path / "s.keras")
    x = _x()
    chunks = np.split(x, 4, axis=1)
    expected = np.concatenate([_keras_out(model, c) for c in chunks], axis=1)  # state carried between calls
    stream = fm.stream(batch_size=B)
    got = np.concatenate([stream.step_many(np.ascontiguousarray(np.swapaxes(c, 0, 1))) for c in chunks])
    assert np.max(np.abs(got - np.swapaxes(expected, 0, 1))) <= 1e-5
    check_parity(fm, x, expected, batch_first=True)


def test_hard_sigmoid_is_keras3_formula_in_keras3_files(tmp_path):
    keras.utils.set_random_seed(1)
    model = _seq(L.LSTM(3, recurrent_activation="hard_sigmoid", return_sequences=True))
    for ext in ("keras", "h5"):
        model.save(tmp_path / f"m.{ext}")
        assert read_spec(tmp_path / f"m.{ext}").layers[0].recurrent_activation == "hard_sigmoid"


def test_h5_group_names_follow_class_counters(tmp_path):
    """User layer names differ from the HDF5 group names (lstm, lstm_1): weights must not be swapped."""
    keras.utils.set_random_seed(9)
    inp = keras.Input((None, I))
    x = L.LSTM(5, return_sequences=True, name="lstm_1")(inp)  # stored as group 'lstm'
    x = L.LSTM(5, return_sequences=True, name="lstm")(x)  # stored as group 'lstm_1'
    model = keras.Model(inp, L.Dense(2, name="dense_7")(x))
    model.save(tmp_path / "m.keras")
    xs = _x(steps=50)
    check_parity(loaders.load(tmp_path / "m.keras"), xs, _keras_out(model, xs), batch_first=True)


def _refused(model, tmp_path, match):
    model.save(tmp_path / "r.keras")
    with pytest.raises(ValueError, match=match):
        loaders.load(tmp_path / "r.keras")
    with pytest.raises(ValueError, match=match):
        loaders.from_keras(model)


@keras.saving.register_keras_serializable(package="fastlstm_tests")
class Doubler(L.Layer):
    def call(self, x):
        return 2 * x


def test_refused_layers(tmp_path):
    _refused(_seq(L.Masking(0.0), L.LSTM(3)), tmp_path, r"'masking'.*Masking.*mask")
    _refused(
        _seq(L.LSTM(3, return_sequences=True), L.Lambda(lambda t: t * 2, name="times2")),
        tmp_path,
        r"'times2'.*Lambda.*code",
    )
    _refused(_seq(L.LSTM(3, return_sequences=True), Doubler(name="dbl")), tmp_path, r"'dbl'.*not supported")
    _refused(_seq(L.Bidirectional(L.LSTM(3, return_sequences=True), merge_mode=None)), tmp_path, r"merge_mode")
    _refused(_seq(L.LSTM(3, activation="softsign", name="soft")), tmp_path, r"'soft'.*softsign")
    _refused(
        _seq(L.LSTM(3, return_sequences=True), L.Dense(4, activation="exponential", name="expo")),
        tmp_path,
        r"'expo'.*exponential",
    )
    inp = keras.Input((None, I))
    h = L.LSTM(4, return_sequences=True)(inp)
    att = L.MultiHeadAttention(num_heads=1, key_dim=4, name="mha")(h, h)
    _refused(keras.Model(inp, att), tmp_path, r"'mha'")


@pytest.mark.parametrize(
    "extra,match",
    [
        ("layers/lstm/cell/vars/3", r"'lstm_a'.*found 4"),  # a 4th variable in a known layer
        ("layers/lstm_1/cell/vars/0", r"layers/lstm_1/cell/vars/0"),  # a whole layer the config lacks
    ],
)
def test_extra_tensor_in_weights_is_reported(tmp_path, extra, match):
    import zipfile

    import h5py

    keras.utils.set_random_seed(0)
    _seq(L.LSTM(3, name="lstm_a"), L.Dense(2)).save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as z:
        members = {n: z.read(n) for n in z.namelist()}
    with open(tmp_path / "w.h5", "wb") as f:
        f.write(members["model.weights.h5"])
    with h5py.File(tmp_path / "w.h5", "a") as f:
        f[extra] = np.zeros(12, np.float32)
    members["model.weights.h5"] = (tmp_path / "w.h5").read_bytes()
    with zipfile.ZipFile(tmp_path / "x.keras", "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    with pytest.raises(ValueError, match=match):
        loaders.load(tmp_path / "x.keras")


def test_nan_weight_named(tmp_path):
    import h5py

    keras.utils.set_random_seed(0)
    _seq(L.LSTM(3, name="enc"), L.Dense(2)).save(tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "a") as f:
        names = []
        f["model_weights/enc"].visit(names.append)
        rk = [n for n in names if n.endswith("recurrent_kernel")][0]
        ds = f["model_weights/enc"][rk]
        arr = ds[()]
        arr[0, 0] = np.nan
        ds[...] = arr
    with pytest.raises(ValueError, match=r"recurrent_kernel.*NaN"):
        loaders.load(tmp_path / "m.h5")
