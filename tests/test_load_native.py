"""fastlstm's own format: save then load must reproduce every weight and option bit for bit."""

import dataclasses

import numpy as np
import pytest

import fastlstm
import fastlstm.loaders as loaders
from fastlstm import Dense, LSTMLayer, LSTMWeights
from fastlstm import layers as L

FIELDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


def _weights(rng, n_in, hidden, proj=0, bias=True, scale=0.5):
    out = proj or hidden
    kw = dict(
        weight_ih=rng.uniform(-scale, scale, (4 * hidden, n_in)),
        weight_hh=rng.uniform(-scale, scale, (4 * hidden, out)),
    )
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
    yield fastlstm.Model(
        [
            LSTMLayer((w(3, 5, proj=2), w(3, 5, proj=2)), merge_mode="ave"),
            LSTMLayer((w(2, 4, bias=False),), "relu", "hard_sigmoid_keras2", go_backwards=True),
        ],
        Dense(rng.standard_normal((3, 4)), None, "softmax"),
        return_sequences=False,
    )
    yield fastlstm.Model(
        [
            LSTMLayer((w(3, 4), w(3, 4)), "linear", "hard_sigmoid", merge_mode="mul"),
            LSTMLayer((w(4, 6), w(4, 6)), merge_mode="concat"),
        ],
        Dense(rng.standard_normal((2, 12)), rng.standard_normal(2), "tanh"),
    )


def _same(a, b):
    return (a is None and b is None) or (
        a is not None and b is not None and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    )


def _every_layer(rng):
    """A chain with every layer class and option the format must carry (predict runs it)."""
    u = lambda *shape: rng.uniform(-0.5, 0.5, shape).astype(np.float32)  # noqa: E731
    return fastlstm.Model(
        [
            L.Embedding(u(13, 4)),
            L.Conv1D(
                u(6, 2, 3),
                u(6),
                groups=2,
                dilation=2,
                padding="causal",
                activation=L.Activation("leaky_relu", alpha=0.3),
            ),
            L.BatchNorm(u(6), rng.uniform(0.5, 1.5, 6).astype(np.float32), u(6), None, eps=1e-3),
            L.MaxPool1D(2, 1, (1, 0)),
            L.GRULayer(
                (L.GRUWeights(u(15, 6), u(15, 5), u(15), None), L.GRUWeights(u(15, 6), u(15, 5), u(15), u(15))),
                "tanh",
                "hard_sigmoid_keras2",
                reset_after=False,
                merge_mode="ave",
            ),
            L.LayerNorm(5, u(5), None, eps=1e-3),
            L.RNNLayer((L.RNNWeights(u(4, 5), u(4, 4), None, u(4)),), activation="relu"),
            L.AvgPool1D(3, 2, "same", count_include_pad=False),
            L.LastStep(final_state=True),
            L.RepeatVector(3),
            L.Dense(u(2, 4), u(2), L.Activation("prelu", weight=u(2))),
            L.Activation("elu", alpha=0.5),
            L.Activation("gelu_tanh"),
            L.GlobalMaxPool1D(),
            L.Flatten(),
            L.Dense(u(3, 2), None, "softmax"),
        ]
    )


def _same_layer(a, b):
    """Every field of two layers equal, arrays bit for bit (the weights' ``name`` is not stored)."""
    assert type(a) is type(b), (a, b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "name":
            continue
        if isinstance(x, np.ndarray) or x is None:
            assert _same(x, y), f.name
        elif isinstance(x, tuple) and x and dataclasses.is_dataclass(x[0]):
            assert len(x) == len(y)
            for p, q in zip(x, y):
                _same_layer(p, q)
        else:
            assert x == y, (f.name, x, y)
    if hasattr(a, "act"):
        _same_layer(a.act, b.act)


@pytest.mark.parametrize("index", range(4))
def test_round_trip_bit_exact(index, tmp_path):
    model = (list(_models()) + [_every_layer(np.random.default_rng(2))])[index]
    path = tmp_path / "m.fastlstm"
    loaders.save_model(model, path)
    back = loaders.load(path)
    assert back.return_sequences == model.return_sequences
    assert len(back.layers) == len(model.layers)
    for a, b in zip(model.layers, back.layers):
        _same_layer(a, b)
    if model.token_input:
        x = np.random.default_rng(1).integers(0, 13, (30, 2))
    else:
        x = np.random.default_rng(1).standard_normal((30, 2, model.input_size)).astype(np.float32)
    assert np.array_equal(model.predict(x), back.predict(x))
    # Saving the loaded model gives the identical file: nothing drifts on repeated round trips.
    loaders.save_model(back, tmp_path / "again.fastlstm")
    assert (tmp_path / "again.fastlstm").read_bytes() == path.read_bytes()


def test_version_1_files_still_load(tmp_path):
    """A file as fastlstm wrote it before layer chains: LSTM layers, a head, return_sequences."""
    import json
    import struct

    from fastlstm.loaders.native import _digest
    from fastlstm.loaders.safetensors_io import encode_safetensors

    model = list(_models())[1]
    lstm = model.layers[:2]
    head = model.layers[-1]
    tensors = {
        f"layers.{k}.{('forward', 'backward')[d]}.{f}": getattr(w, f)
        for k, layer in enumerate(lstm)
        for d, w in enumerate(layer.directions)
        for f in FIELDS
        if getattr(w, f) is not None
    }
    tensors["head.weight"] = head.weight
    config = {
        "version": 1,
        "return_sequences": False,
        "head": {"activation": head.activation},
        "layers": [
            {
                "directions": len(layer.directions),
                "activation": layer.activation,
                "recurrent_activation": layer.recurrent_activation,
                "merge_mode": layer.merge_mode,
                "go_backwards": layer.go_backwards,
            }
            for layer in lstm
        ],
    }
    text = json.dumps(config)
    body = encode_safetensors(tensors)
    (n,) = struct.unpack("<Q", body[:8])
    meta = {"format": "fastlstm", "fastlstm_config": text, "sha256": _digest(text, body[8 + n :])}
    (tmp_path / "v1.fastlstm").write_bytes(encode_safetensors(tensors, meta))
    back = loaders.load(tmp_path / "v1.fastlstm")
    x = np.random.default_rng(1).standard_normal((30, 2, model.input_size)).astype(np.float32)
    assert np.array_equal(model.predict(x), back.predict(x))


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


def test_unbounded_options_refused(tmp_path):
    """A re-signed config asking for a billion-step RepeatVector must not reach predict."""
    import json

    from fastlstm.loaders.native import _digest, spec_from_native
    from fastlstm.loaders.safetensors_io import read_safetensors

    loaders.save_model(_every_layer(np.random.default_rng(2)), tmp_path / "m.fastlstm")
    data = (tmp_path / "m.fastlstm").read_bytes()
    tensors, meta, start = read_safetensors(data, "m")
    config = json.loads(meta["fastlstm_config"])
    k = next(k for k, lc in enumerate(config["layers"]) if lc["type"] == "RepeatVector")
    config["layers"][k]["n"] = 10**9
    text = json.dumps(config)
    meta = dict(meta, fastlstm_config=text, sha256=_digest(text, data[start:]))
    with pytest.raises(ValueError, match=r"layers\[9\].n=1000000000 is larger than fastlstm accepts"):
        spec_from_native(tensors, meta, data, start, "m")
