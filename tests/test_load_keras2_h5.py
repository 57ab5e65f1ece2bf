"""Keras 2 / tf.keras legacy .h5 files, built by hand with h5py in the Keras-2 layout.

TensorFlow is not installed here (a CPU wheel is hundreds of MB), so no real tf.keras file can
be produced.  These files follow the layout tf_keras 2.21 writes (checked against files it saved
while this test was written): ':0' weight suffixes, datasets at
model_weights/<layer>/<layer>/lstm_cell/kernel:0, the 'weight_names' order, root attrs
keras_version='2.x' and model_config.  Expected outputs come from a float64 NumPy forward of
the Keras equations with Keras 2's hard_sigmoid = clip(0.2x + 0.5, 0, 1).
"""

import json

import h5py
import numpy as np
import pytest

import fastlstm.loaders as loaders
from loader_helpers import STEPS, check_parity, keras_dense_oracle, keras_lstm_oracle
from loader_helpers import write_keras_h5 as _write

I = 4


def _lstm_cfg(name, units, **kw):
    cfg = {
        "name": name,
        "trainable": True,
        "dtype": "float32",
        "return_sequences": False,
        "return_state": False,
        "go_backwards": False,
        "stateful": False,
        "unroll": False,
        "time_major": False,
        "units": units,
        "activation": "tanh",
        "recurrent_activation": "hard_sigmoid",
        "use_bias": True,
        "unit_forget_bias": True,
        "dropout": 0.0,
        "recurrent_dropout": 0.0,
        "implementation": 2,
    }
    cfg.update(kw)
    return cfg


def _weights(rng, n_in, units, bias=True):
    w = [rng.uniform(-0.6, 0.6, (n_in, 4 * units)), rng.uniform(-0.6, 0.6, (units, 4 * units))]
    if bias:
        w.append(rng.uniform(-0.5, 0.5, 4 * units))
    return [a.astype(np.float32) for a in w]


def _sequential_bidirectional(path, version="2.15.0"):
    """InputLayer -> LSTM(hard_sigmoid) -> Bidirectional(LSTM) concat -> Dropout -> Dense(softmax)."""
    rng = np.random.default_rng(11)
    w1 = _weights(rng, I, 6)
    wf, wb = _weights(rng, 6, 5), _weights(rng, 6, 5)
    wd = [rng.uniform(-0.5, 0.5, (10, 3)).astype(np.float32), rng.uniform(-0.5, 0.5, 3).astype(np.float32)]
    config = {
        "class_name": "Sequential",
        "config": {
            "name": "sequential",
            "layers": [
                {
                    "class_name": "InputLayer",
                    "config": {
                        "batch_input_shape": [None, None, I],
                        "dtype": "float32",
                        "sparse": False,
                        "ragged": False,
                        "name": "input_1",
                    },
                },
                {"class_name": "LSTM", "config": _lstm_cfg("lstm", 6, return_sequences=True)},
                {
                    "class_name": "Bidirectional",
                    "config": {
                        "name": "bidirectional",
                        "trainable": True,
                        "merge_mode": "concat",
                        "layer": {
                            "class_name": "LSTM",
                            "config": _lstm_cfg("lstm_1", 5, return_sequences=True, recurrent_activation="sigmoid"),
                        },
                    },
                },
                {"class_name": "Dropout", "config": {"name": "dropout", "rate": 0.2}},
                {
                    "class_name": "Dense",
                    "config": {"name": "dense", "units": 3, "activation": "softmax", "use_bias": True},
                },
            ],
        },
    }
    cell = ("kernel:0", "recurrent_kernel:0", "bias:0")
    layers = [
        ("lstm", [(f"lstm/lstm_cell/{n}", a) for n, a in zip(cell, w1)]),
        (
            "bidirectional",
            [(f"bidirectional/forward_lstm_1/lstm_cell/{n}", a) for n, a in zip(cell, wf)]
            + [(f"bidirectional/backward_lstm_1/lstm_cell/{n}", a) for n, a in zip(cell, wb)],
        ),
        ("dropout", []),
        ("dense", [("dense/kernel:0", wd[0]), ("dense/bias:0", wd[1])]),
    ]
    _write(path, config, layers, version)

    def oracle(x, hard="hard_sigmoid"):
        h = keras_lstm_oracle(x, *w1, recurrent_activation=hard)
        f = keras_lstm_oracle(h, *wf, recurrent_activation="sigmoid")
        b = keras_lstm_oracle(h, *wb, recurrent_activation="sigmoid", go_backwards=True)[:, ::-1]
        return keras_dense_oracle(np.concatenate([f, b], -1), *wd, activation="softmax")

    return oracle


def _functional_old_names(path):
    """Keras 2.2-era names (no cell scope, 'lstm_1/kernel:0'), Functional config, last step only."""
    rng = np.random.default_rng(12)
    w1, w2 = _weights(rng, I, 6), _weights(rng, 6, 4, bias=False)
    wd = [rng.uniform(-0.5, 0.5, (4, 2)).astype(np.float32), rng.uniform(-0.5, 0.5, 2).astype(np.float32)]

    def node(src):
        return [[[src, 0, 0, {}]]]

    config = {
        "class_name": "Model",
        "config": {
            "name": "model_1",
            "layers": [
                {
                    "name": "input_1",
                    "class_name": "InputLayer",
                    "inbound_nodes": [],
                    "config": {"batch_input_shape": [None, None, I], "dtype": "float32", "name": "input_1"},
                },
                {
                    "name": "lstm_1",
                    "class_name": "LSTM",
                    "inbound_nodes": node("input_1"),
                    "config": _lstm_cfg("lstm_1", 6, return_sequences=True),
                },
                {
                    "name": "lstm_2",
                    "class_name": "LSTM",
                    "inbound_nodes": node("lstm_1"),
                    "config": _lstm_cfg("lstm_2", 4, use_bias=False, recurrent_activation="sigmoid"),
                },
                {
                    "name": "dense_1",
                    "class_name": "Dense",
                    "inbound_nodes": node("lstm_2"),
                    "config": {"name": "dense_1", "units": 2, "activation": "sigmoid", "use_bias": True},
                },
            ],
            "input_layers": [["input_1", 0, 0]],
            "output_layers": [["dense_1", 0, 0]],
        },
    }
    layers = [
        ("input_1", []),
        ("lstm_1", [("lstm_1/kernel:0", w1[0]), ("lstm_1/recurrent_kernel:0", w1[1]), ("lstm_1/bias:0", w1[2])]),
        ("lstm_2", [("lstm_2/kernel:0", w2[0]), ("lstm_2/recurrent_kernel:0", w2[1])]),
        ("dense_1", [("dense_1/kernel:0", wd[0]), ("dense_1/bias:0", wd[1])]),
    ]
    _write(path, config, layers, "2.2.4")

    def oracle(x):
        h = keras_lstm_oracle(x, *w1)
        h = keras_lstm_oracle(h, w2[0], w2[1], None, recurrent_activation="sigmoid")[:, -1]
        return keras_dense_oracle(h, *wd, activation="sigmoid")

    return oracle


def _x():
    return np.random.default_rng(3).standard_normal((2, STEPS, I)).astype(np.float32)


def test_keras2_sequential_bidirectional(tmp_path):
    oracle = _sequential_bidirectional(tmp_path / "k2.h5")
    x = _x()
    for model in (loaders.load(tmp_path / "k2.h5"), loaders.from_keras(tmp_path / "k2.h5")):
        assert model.layers[0].recurrent_activation == "hard_sigmoid_keras2"
        check_parity(model, x, oracle(x), batch_first=True, stream=False)


def test_keras2_functional_old_names_last_step(tmp_path):
    oracle = _functional_old_names(tmp_path / "k22.h5")
    x = _x()
    check_parity(loaders.load(tmp_path / "k22.h5"), x, oracle(x), batch_first=True)


def test_hard_sigmoid_formula_follows_keras_version(tmp_path):
    """The same weights and config under keras_version 3.x must use x/6 + 0.5 instead."""
    oracle = _sequential_bidirectional(tmp_path / "k3.h5", version="3.1.0")
    x = _x()[:, :200]
    model = loaders.load(tmp_path / "k3.h5")
    assert model.layers[0].recurrent_activation == "hard_sigmoid"
    check_parity(model, x, oracle(x, hard="hard_sigmoid_k3"), batch_first=True, stream=False)
    assert np.max(np.abs(oracle(x) - oracle(x, hard="hard_sigmoid_k3"))) > 1e-3  # the formulas do differ


def test_unknown_version_refuses_hard_sigmoid(tmp_path):
    _sequential_bidirectional(tmp_path / "nov.h5", version="")
    with pytest.raises(ValueError, match=r"'lstm'.*hard_sigmoid.*keras_version"):
        loaders.load(tmp_path / "nov.h5")


def test_weights_only_and_swapped_names_refused(tmp_path):
    _sequential_bidirectional(tmp_path / "k2.h5")
    with h5py.File(tmp_path / "k2.h5", "a") as f:
        del f.attrs["model_config"]
    with pytest.raises(ValueError, match="model_config"):
        loaders.load(tmp_path / "k2.h5")
    _sequential_bidirectional(tmp_path / "sw.h5")
    with h5py.File(tmp_path / "sw.h5", "a") as f:  # list kernel and recurrent_kernel in the wrong order
        g = f["model_weights/lstm"]
        names = list(g.attrs["weight_names"])
        names[0], names[1] = names[1], names[0]
        g.attrs["weight_names"] = np.array(names)
    with pytest.raises(ValueError, match=r"'lstm'.*recurrent_kernel"):
        loaders.load(tmp_path / "sw.h5")


def test_stray_layer_weights_reported(tmp_path):
    _sequential_bidirectional(tmp_path / "k2.h5")
    with h5py.File(tmp_path / "k2.h5", "a") as f:
        g = f["model_weights"].create_group("lstm_9")
        g.attrs["weight_names"] = np.array([b"lstm_9/lstm_cell/kernel:0"])
        g["lstm_9/lstm_cell/kernel:0"] = np.zeros((4, 8), np.float32)
        f["model_weights"].attrs["layer_names"] = np.append(f["model_weights"].attrs["layer_names"], b"lstm_9")
    with pytest.raises(ValueError, match="lstm_9"):
        loaders.load(tmp_path / "k2.h5")


def test_swapped_bidirectional_directions_refused(tmp_path):
    """weight_names listing the backward cell first must not load as a silently mirrored model."""
    _sequential_bidirectional(tmp_path / "b.h5")
    with h5py.File(tmp_path / "b.h5", "a") as f:
        g = f["model_weights/bidirectional"]
        names = list(g.attrs["weight_names"])
        g.attrs["weight_names"] = np.array(names[3:] + names[:3])
    with pytest.raises(ValueError, match=r"'bidirectional'.*backward_lstm_1.*forward 'kernel'"):
        loaders.load(tmp_path / "b.h5")


def test_wrong_shape_and_missing_weight_named(tmp_path):
    _sequential_bidirectional(tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "a") as f:
        config = json.loads(f.attrs["model_config"])
        config["config"]["layers"][1]["config"]["units"] = 5  # the stored kernels are for 6 units
        f.attrs["model_config"] = json.dumps(config).encode()
    with pytest.raises(ValueError, match=r"'lstm'.*units=5"):
        loaders.load(tmp_path / "s.h5")
    _sequential_bidirectional(tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "a") as f:
        del f["model_weights/lstm/lstm/lstm_cell/bias:0"]
    with pytest.raises(ValueError, match=r"'lstm/lstm_cell/bias:0'.*missing"):
        loaders.load(tmp_path / "m.h5")


def _masked_embedding(path, bidirectional=False):
    """Embedding(mask_zero=True) -> LSTM(hard_sigmoid, return_sequences) (or a Bidirectional of it) -> Dense."""
    rng = np.random.default_rng(13)
    table = rng.uniform(-1, 1, (9, I)).astype(np.float32)
    w = _weights(rng, I, 5)
    wd = [rng.uniform(-0.5, 0.5, (5, 2)).astype(np.float32), rng.uniform(-0.5, 0.5, 2).astype(np.float32)]
    lstm = {"class_name": "LSTM", "config": _lstm_cfg("lstm", 5, return_sequences=True)}
    if bidirectional:
        lstm = {"class_name": "Bidirectional", "config": {"name": "lstm", "merge_mode": "sum", "layer": lstm}}
    config = {
        "class_name": "Sequential",
        "config": {
            "name": "sequential",
            "layers": [
                {"class_name": "InputLayer", "config": {"batch_input_shape": [None, None], "name": "input_1"}},
                {
                    "class_name": "Embedding",
                    "config": {"name": "embedding", "input_dim": 9, "output_dim": I, "mask_zero": True},
                },
                lstm,
                {"class_name": "Dense", "config": {"name": "dense", "units": 2, "activation": "linear"}},
            ],
        },
    }
    cell = ("kernel:0", "recurrent_kernel:0", "bias:0")
    halves = ("forward_lstm/", "backward_lstm/") if bidirectional else ("",)
    weights = [(f"lstm/{half}lstm_cell/{n}", a) for half in halves for n, a in zip(cell, w)]
    _write(
        path,
        config,
        [
            ("embedding", [("embedding/embeddings:0", table)]),
            ("lstm", weights),
            ("dense", [("dense/kernel:0", wd[0]), ("dense/bias:0", wd[1])]),
        ],
    )
    return table, w, wd


def test_embedding_mask_zero_matches_the_equations(tmp_path):
    """Keras 2: a masked step (id 0) keeps the LSTM's state and repeats its previous output."""
    import oracle
    from fastlstm.layers import LSTMLayer, LSTMWeights

    table, (kernel, rec, bias), wd = _masked_embedding(tmp_path / "m.h5")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 9, (2, STEPS))
    ids[rng.random(ids.shape) < 0.3] = 0
    ids[0, :50] = 0
    lstm = LSTMLayer([LSTMWeights(kernel.T, rec.T, bias, None)], recurrent_activation="hard_sigmoid_keras2")
    h = oracle.forward_recurrent([lstm], table.astype(np.float64)[ids.T], mask=ids.T != 0)
    expected = np.swapaxes(keras_dense_oracle(h, *wd), 0, 1)
    check_parity(loaders.load(tmp_path / "m.h5"), ids, expected, batch_first=True)


def test_embedding_mask_zero_bidirectional_sequences_refused(tmp_path):
    _masked_embedding(tmp_path / "m.h5", bidirectional=True)
    with pytest.raises(ValueError, match="Keras releases differ"):
        loaders.load(tmp_path / "m.h5")
