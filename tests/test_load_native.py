"""fastlstm's own format: save then load must reproduce every weight and option bit for bit."""

import numpy as np
import pytest

import fastlstm
import fastlstm.loaders as loaders
from fastlstm import Dense, LSTMLayer, LSTMWeights

FIELDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


def _weights(rng, n_in, hidden, proj=0, bias=True, scale=0.5):
    out = proj or hidden
    kw = dict(weight_ih=rng.uniform(-scale, scale, (4 * hidden, n_in)),
              weight_hh=rng.uniform(-scale, scale, (4 * hidden, out)))
    if bias:
        kw.update(bias_ih=rng.uniform(-scale, scale, 4 * hidden), bias_hh=rng.uniform(-scale, scale, 4 * hidden))
    if proj:
        kw["weight_hr"] = rng.uniform(-scale, scale, (proj, hidden))
    # Values that are awkward to round-trip through text, to prove the bytes are stored as is.
    kw["weight_ih"].flat[0] = np.float32(1e-42)  # a float32 denormal
    kw["weight_ih"].flat[1] = -0.0
    return LSTMWeights(**kw)


def _models():
    rng = np.random.default_rng(0)
    w = lambda *a, **k: _weights(rng, *a, **k)  # noqa: E731
    yield fastlstm.Model([LSTMLayer((w(3, 5),))])
    yield fastlstm.Model([LSTMLayer((w(3, 5, proj=2), w(3, 5, proj=2)), merge_mode="ave"),
                          LSTMLayer((w(2, 4, bias=False),), "relu", "hard_sigmoid_keras2", go_backwards=True)],
                         Dense(rng.standard_normal((3, 4)), None, "softmax"), return_sequences=False)
    yield fastlstm.Model([LSTMLayer((w(3, 4), w(3, 4)), "linear", "hard_sigmoid", merge_mode="mul"),
                          LSTMLayer((w(4, 6), w(4, 6)), merge_mode="concat")],
                         Dense(rng.standard_normal((2, 12)), rng.standard_normal(2), "tanh"))


def _same(a, b):
    return (a is None and b is None) or (a is not None and b is not None and a.dtype == b.dtype
                                         and a.shape == b.shape and a.tobytes() == b.tobytes())


@pytest.mark.parametrize("index", range(3))
def test_round_trip_bit_exact(index, tmp_path):
    model = list(_models())[index]
    path = tmp_path / "m.fastlstm"
    loaders.save_model(model, path)
    back = loaders.load(path)
    assert back.return_sequences == model.return_sequences
    assert len(back.layers) == len(model.layers)
    for a, b in zip(model.lstm_stack()[0], back.lstm_stack()[0]):
        assert (a.activation, a.recurrent_activation, a.merge_mode, a.go_backwards) == \
               (b.activation, b.recurrent_activation, b.merge_mode, b.go_backwards)
        assert len(a.directions) == len(b.directions)
        for da, db in zip(a.directions, b.directions):
            for f in FIELDS:
                assert _same(getattr(da, f), getattr(db, f)), f
    assert (model.head is None) == (back.head is None)
    if model.head is not None:
        assert model.head.activation == back.head.activation
        assert _same(model.head.weight, back.head.weight) and _same(model.head.bias, back.head.bias)
    x = np.random.default_rng(1).standard_normal((30, 2, model.input_size)).astype(np.float32)
    assert np.array_equal(model.predict(x), back.predict(x))
    # Saving the loaded model gives the identical file: nothing drifts on repeated round trips.
    loaders.save_model(back, tmp_path / "again.fastlstm")
    assert (tmp_path / "again.fastlstm").read_bytes() == path.read_bytes()


def test_native_file_is_plain_safetensors(tmp_path):
    import safetensors.numpy as st

    model = list(_models())[1]
    loaders.save_model(model, tmp_path / "m.safetensors")
    tensors = st.load_file(str(tmp_path / "m.safetensors"))
    assert np.array_equal(tensors["layers.0.backward.weight_hr"], model.layers[0].directions[1].weight_hr)
    assert "layers.1.forward.bias_ih" not in tensors  # a missing bias stays missing, not zeros


def test_corruption_is_detected(tmp_path):
    model = list(_models())[0]
    loaders.save_model(model, tmp_path / "m.fastlstm")
    data = bytearray((tmp_path / "m.fastlstm").read_bytes())
    data[-3] ^= 0x01  # one bit in the last weight
    (tmp_path / "bad.fastlstm").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        loaders.load(tmp_path / "bad.fastlstm")


def test_save_rejects_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="model"):
        loaders.save_model(object(), tmp_path / "x")
    with pytest.raises(TypeError, match="path"):
        loaders.save_model(list(_models())[0], 42)


def test_overrides_refused_for_self_describing_files(tmp_path):
    loaders.save_model(list(_models())[0], tmp_path / "m.fastlstm")
    with pytest.raises(TypeError, match="head_activation"):
        loaders.load(tmp_path / "m.fastlstm", head_activation="sigmoid")


def test_public_api_is_wired(tmp_path):
    """fastlstm.load / from_torch / from_keras / Model.save are the loaders' functions."""
    model = list(_models())[0]
    model.save(tmp_path / "m.fastlstm")
    back = fastlstm.load(tmp_path / "m.fastlstm")
    x = np.ones((4, model.input_size), np.float32)
    assert np.array_equal(back.predict(x), model.predict(x))
    assert callable(fastlstm.from_torch) and callable(fastlstm.from_keras)
