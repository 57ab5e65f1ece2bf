"""Keras 1 and Keras 2 files with the layers around the recurrent core, built by hand with h5py.

Neither Keras 1 nor TensorFlow can run here, so these files follow the layouts the Keras 2
loader itself converts (``preprocess_weights_for_loading``): Keras 1.0/1.1 stored one array per
gate (``lstm_1_W_i``, ``lstm_1_U_i``, ``lstm_1_b_i``, ... stored i, c, f, o; GRU z, r, h),
Keras 1.2 one ``W``/``U``/``b`` per layer, ``Convolution1D`` kernels ``(k, 1, in, filters)``
(Keras 1.1: ``(filters, in, k, 1)``), ``output_dim``/``inner_activation``/``border_mode``
config keys.  Expected outputs come from float64 forwards written from the equations on the
per-gate arrays (tests/oracle.py), with Keras 1/2's hard_sigmoid clip(0.2x + 0.5, 0, 1).
"""

import numpy as np
import pytest

import fastlstm.loaders as loaders
import oracle
from loader_helpers import STEPS, check_parity
from loader_helpers import write_keras_h5 as write

I = 3


def _u(rng, *shape, scale=0.5):
    return rng.uniform(-scale, scale, shape).astype(np.float32)


def _seq(layers, batch_input_shape=(None, None, I)):
    """A Keras 1 Sequential config: a bare list, the first layer carrying batch_input_shape."""
    layers = [dict(e) for e in layers]
    layers[0] = {
        "class_name": layers[0]["class_name"],
        "config": dict(layers[0]["config"], batch_input_shape=list(batch_input_shape)),
    }
    return {"class_name": "Sequential", "config": layers}


def _keras1_per_gate(path):
    """Keras 1.0: Convolution1D(same) -> MaxPooling1D -> LSTM(per-gate) -> GRU(per-gate) -> Dropout -> Dense."""
    rng = np.random.default_rng(21)
    conv_w, conv_b = _u(rng, 3, 1, I, 4), _u(rng, 4)
    lstm = {g: (_u(rng, 4, 5), _u(rng, 5, 5), _u(rng, 5)) for g in "icfo"}
    gru = {g: (_u(rng, 5, 6), _u(rng, 6, 6), _u(rng, 6)) for g in "zrh"}
    dense_w, dense_b = _u(rng, 6, 2), _u(rng, 2)
    config = _seq(
        [
            {
                "class_name": "Convolution1D",
                "config": {
                    "name": "convolution1d_1",
                    "nb_filter": 4,
                    "filter_length": 3,
                    "border_mode": "same",
                    "subsample_length": 1,
                    "activation": "relu",
                    "bias": True,
                    "init": "glorot_uniform",
                },
            },
            {
                "class_name": "MaxPooling1D",
                "config": {"name": "maxpooling1d_1", "pool_length": 2, "stride": None, "border_mode": "valid"},
            },
            {
                "class_name": "LSTM",
                "config": {
                    "name": "lstm_1",
                    "output_dim": 5,
                    "inner_activation": "hard_sigmoid",
                    "activation": "tanh",
                    "return_sequences": True,
                    "go_backwards": False,
                    "consume_less": "cpu",
                    "stateful": False,
                    "dropout_W": 0.0,
                },
            },
            {
                "class_name": "GRU",
                "config": {
                    "name": "gru_1",
                    "output_dim": 6,
                    "inner_activation": "hard_sigmoid",
                    "activation": "tanh",
                    "return_sequences": False,
                },
            },
            {"class_name": "Dropout", "config": {"name": "dropout_1", "p": 0.5}},
            {
                "class_name": "Dense",
                "config": {"name": "dense_1", "output_dim": 2, "activation": "sigmoid", "bias": True},
            },
        ]
    )
    gate_order = {"lstm_1": "icfo", "gru_1": "zrh"}  # the order Keras 1.0 listed them in weight_names
    per_gate = lambda name, gates: [
        (f"{name}_{k}_{g}", gates[g][j])
        for g in gate_order[name]  # noqa: E731
        for j, k in enumerate("WUb")
    ]
    write(
        path,
        config,
        [
            ("convolution1d_1", [("convolution1d_1_W", conv_w), ("convolution1d_1_b", conv_b)]),
            ("maxpooling1d_1", []),
            ("lstm_1", per_gate("lstm_1", lstm)),
            ("gru_1", per_gate("gru_1", gru)),
            ("dropout_1", []),
            ("dense_1", [("dense_1_W", dense_w), ("dense_1_b", dense_b)]),
        ],
        version=None,
        backend=None,
    )

    def expected(x):
        pad = oracle.keras_conv_padding("same", 3, 1, length=x.shape[1])
        h = np.maximum(oracle.conv1d(x, conv_w[:, 0], conv_b, pad_left=pad[0], pad_right=pad[1]), 0)
        h = oracle.pool1d(h, 2, 2, "max")
        h = oracle.keras1_lstm(h, lstm)
        h = oracle.keras1_gru(h, gru)[:, -1]
        return oracle.ACTIVATIONS["sigmoid"](h @ dense_w + dense_b)

    return expected, False  # a strided pool: predict only


def _keras12_embedding_theano(path):
    """Keras 1.2 (keras_version 1.2.2, Theano): Embedding -> Convolution1D (Keras 1.1 kernel layout, a true
    convolution in Theano) -> BatchNormalization(mode 0) -> LSTM(W, U, b) -> TimeDistributedDense."""
    rng = np.random.default_rng(22)
    table = _u(rng, 11, I)
    conv_w = _u(rng, 4, I, 2, 1)  # (nb_filter, input_dim, filter_length, 1)
    gamma, beta, mean, var = _u(rng, 4), _u(rng, 4), _u(rng, 4), rng.uniform(0.5, 2, 4).astype(np.float32)
    W, U, b = _u(rng, 4, 20), _u(rng, 5, 20), _u(rng, 20)
    dense_w, dense_b = _u(rng, 5, 3), _u(rng, 3)
    config = _seq(
        [
            {
                "class_name": "Embedding",
                "config": {"name": "embedding_1", "input_dim": 11, "output_dim": I, "mask_zero": False, "dropout": 0.0},
            },
            {
                "class_name": "Convolution1D",
                "config": {
                    "name": "convolution1d_1",
                    "nb_filter": 4,
                    "filter_length": 2,
                    "border_mode": "valid",
                    "subsample_length": 1,
                    "activation": "linear",
                    "bias": False,
                },
            },
            {
                "class_name": "BatchNormalization",
                "config": {"name": "batchnormalization_1", "epsilon": 1e-3, "mode": 0, "axis": -1, "momentum": 0.99},
            },
            {
                "class_name": "LSTM",
                "config": {
                    "name": "lstm_1",
                    "output_dim": 5,
                    "inner_activation": "hard_sigmoid",
                    "activation": "tanh",
                    "return_sequences": True,
                },
            },
            {
                "class_name": "TimeDistributedDense",
                "config": {"name": "timedistributeddense_1", "output_dim": 3, "activation": "softmax", "bias": True},
            },
        ],
        batch_input_shape=(None, None),
    )
    write(
        path,
        config,
        [
            ("embedding_1", [("embedding_1_W", table)]),
            ("convolution1d_1", [("convolution1d_1_W", conv_w)]),
            (
                "batchnormalization_1",
                [
                    (f"batchnormalization_1_{n}", a)
                    for n, a in (("gamma", gamma), ("beta", beta), ("running_mean", mean), ("running_std", var))
                ],
            ),
            ("lstm_1", [("lstm_1_W", W), ("lstm_1_U", U), ("lstm_1_b", b)]),
            ("timedistributeddense_1", [("timedistributeddense_1_W", dense_w), ("timedistributeddense_1_b", dense_b)]),
        ],
        version="1.2.2",
        backend="theano",
    )

    def expected(tokens):
        h = table.astype(np.float64)[tokens]
        kernel = conv_w[:, :, :, 0].transpose(2, 1, 0)[::-1]  # Theano convolves: the kernel runs backwards
        h = oracle.conv1d(h, kernel, None)
        h = oracle.batchnorm(h, gamma, beta, mean, var, 1e-3)  # Keras 1 'running_std' holds the variance
        gates = {
            g: (W[:, k * 5 : (k + 1) * 5], U[:, k * 5 : (k + 1) * 5], b[k * 5 : (k + 1) * 5])
            for k, g in enumerate("ifco")
        }  # Keras 1.2 W columns are [i | f | c | o]
        h = oracle.keras1_lstm(h, gates)
        return oracle.ACTIVATIONS["softmax"](h @ dense_w + dense_b)

    return expected, False  # a 'valid' conv: each output needs a later input


def _keras2_gru_variants(path):
    """Keras 2.2 names: GRU(reset_after=False, hard_sigmoid) -> Bidirectional(GRU reset_after=True, ave)
    -> SimpleRNN(relu) -> Conv1D(causal, dilation 2) -> GlobalAveragePooling1D -> Dense(elu)."""
    rng = np.random.default_rng(23)
    g1 = (_u(rng, I, 12), _u(rng, 4, 12), _u(rng, 12))
    gf = (_u(rng, 4, 9), _u(rng, 3, 9), _u(rng, 2, 9))
    gb = (_u(rng, 4, 9), _u(rng, 3, 9), _u(rng, 2, 9))
    rn = (_u(rng, 3, 5), _u(rng, 5, 5), _u(rng, 5))
    cv = (_u(rng, 3, 5, 2), _u(rng, 2))
    dn = (_u(rng, 2, 2), _u(rng, 2))
    rnn = {
        "return_sequences": True,
        "return_state": False,
        "go_backwards": False,
        "stateful": False,
        "use_bias": True,
        "activation": "tanh",
    }
    config = {
        "class_name": "Sequential",
        "config": {
            "name": "sequential_1",
            "layers": [
                {
                    "class_name": "GRU",
                    "config": dict(
                        rnn,
                        name="gru_1",
                        units=4,
                        recurrent_activation="hard_sigmoid",
                        reset_after=False,
                        batch_input_shape=[None, None, I],
                    ),
                },
                {
                    "class_name": "Bidirectional",
                    "config": {
                        "name": "bidirectional_1",
                        "merge_mode": "ave",
                        "layer": {
                            "class_name": "GRU",
                            "config": dict(
                                rnn, name="gru_2", units=3, recurrent_activation="sigmoid", reset_after=True
                            ),
                        },
                    },
                },
                {"class_name": "SimpleRNN", "config": dict(rnn, name="simple_rnn_1", units=5, activation="relu")},
                {
                    "class_name": "Conv1D",
                    "config": {
                        "name": "conv1d_1",
                        "filters": 2,
                        "kernel_size": [3],
                        "strides": [1],
                        "padding": "causal",
                        "dilation_rate": [2],
                        "activation": "linear",
                        "use_bias": True,
                        "data_format": "channels_last",
                    },
                },
                {"class_name": "GlobalAveragePooling1D", "config": {"name": "gap", "data_format": "channels_last"}},
                {
                    "class_name": "Dense",
                    "config": {"name": "dense_1", "units": 2, "activation": "elu", "use_bias": True},
                },
            ],
        },
    }
    cell = ("kernel:0", "recurrent_kernel:0", "bias:0")
    write(
        path,
        config,
        [
            ("gru_1", [(f"gru_1/{n}", a) for n, a in zip(cell, g1)]),
            (
                "bidirectional_1",
                [(f"bidirectional_1/forward_gru_2/{n}", a) for n, a in zip(cell, gf)]
                + [(f"bidirectional_1/backward_gru_2/{n}", a) for n, a in zip(cell, gb)],
            ),
            ("simple_rnn_1", [(f"simple_rnn_1/{n}", a) for n, a in zip(cell, rn)]),
            ("conv1d_1", [("conv1d_1/kernel:0", cv[0]), ("conv1d_1/bias:0", cv[1])]),
            ("gap", []),
            ("dense_1", [("dense_1/kernel:0", dn[0]), ("dense_1/bias:0", dn[1])]),
        ],
        version="2.2.4",
    )

    def expected(x):
        h = oracle.keras_gru(x, *g1, reset_after=False, recurrent_activation="hard_sigmoid_keras2")
        f = oracle.keras_gru(h, *gf)
        b = oracle.keras_gru(h, *gb, go_backwards=True)[:, ::-1]
        h = oracle.keras_simple_rnn((f + b) / 2, *rn, activation="relu")
        h = oracle.conv1d(h, cv[0], cv[1], dilation=2, pad_left=4).mean(axis=1)
        return oracle.ACTIVATIONS["elu"](h @ dn[0] + dn[1])

    return expected, False  # bidirectional


def _keras12_bidirectional(path):
    """Keras 1.2: Bidirectional(LSTM(W, U, b), concat) -> Dense, weights named forward_/backward_lstm_1_W ..."""
    rng = np.random.default_rng(24)
    fwd, bwd = ([_u(rng, I, 16), _u(rng, 4, 16), _u(rng, 16)] for _ in range(2))
    dense_w, dense_b = _u(rng, 8, 2), _u(rng, 2)
    config = _seq(
        [
            {
                "class_name": "Bidirectional",
                "config": {
                    "name": "bidirectional_1",
                    "merge_mode": "concat",
                    "layer": {
                        "class_name": "LSTM",
                        "config": {
                            "name": "lstm_1",
                            "output_dim": 4,
                            "inner_activation": "hard_sigmoid",
                            "activation": "tanh",
                            "return_sequences": True,
                        },
                    },
                },
            },
            {"class_name": "Dense", "config": {"name": "dense_1", "output_dim": 2, "activation": "linear"}},
        ]
    )
    names = lambda d, ws: [(f"{d}_lstm_1_{k}", w) for k, w in zip("WUb", ws)]  # noqa: E731
    write(
        path,
        config,
        [
            ("bidirectional_1", names("forward", fwd) + names("backward", bwd)),
            ("dense_1", [("dense_1_W", dense_w), ("dense_1_b", dense_b)]),
        ],
        version="1.2.2",
    )

    def expected(x):
        gates = lambda W, U, b: {
            g: (W[:, k * 4 : (k + 1) * 4], U[:, k * 4 : (k + 1) * 4], b[k * 4 : (k + 1) * 4])  # noqa: E731
            for k, g in enumerate("ifco")
        }
        f = oracle.keras1_lstm(x, gates(*fwd))
        b = oracle.keras1_lstm(x[:, ::-1], gates(*bwd))[:, ::-1]
        return np.concatenate([f, b], -1) @ dense_w + dense_b

    return expected, False


BUILDERS = {
    "keras1_per_gate": _keras1_per_gate,
    "keras12_bidirectional": _keras12_bidirectional,
    "keras12_embedding_theano": _keras12_embedding_theano,
    "keras2_gru_variants": _keras2_gru_variants,
}


def inputs(name):
    rng = np.random.default_rng(5)
    if name == "keras12_embedding_theano":
        return rng.integers(0, 11, (2, STEPS))
    return rng.standard_normal((2, STEPS, I)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_hand_built_files_match_the_equations(name, tmp_path):
    expected, streams = BUILDERS[name](tmp_path / "m.h5")
    x = inputs(name)
    model = loaders.load(tmp_path / "m.h5")
    check_parity(model, x, expected(x), batch_first=True, stream=streams)


def _rewrite(path, edit):
    """Load the file's model_config, let ``edit`` change it, write it back."""
    import json

    import h5py

    with h5py.File(path, "a") as f:
        config = json.loads(f.attrs["model_config"])
        edit(config)
        f.attrs["model_config"] = json.dumps(config).encode()


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda c: c["config"][2]["config"].update(mode=1), "mode=1"),
        (lambda c: c["config"][0]["config"].update(mask_zero=True), "mask_zero"),
        (lambda c: c["config"][1]["config"].update(border_mode="full"), "padding='full'"),
    ],
)
def test_keras1_refusals(edit, match, tmp_path):
    _keras12_embedding_theano(tmp_path / "m.h5")
    _rewrite(tmp_path / "m.h5", edit)
    with pytest.raises(ValueError, match=match):
        loaders.read_spec(tmp_path / "m.h5")


def test_keras1_bidirectional_halves_in_the_wrong_order_are_refused(tmp_path):
    import h5py

    _keras12_bidirectional(tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "a") as f:
        g = f["model_weights/bidirectional_1"]
        names = list(g.attrs["weight_names"])
        g.attrs["weight_names"] = np.array(names[3:] + names[:3])
    with pytest.raises(ValueError, match="'backward_lstm_1/kernel' found where the forward 'kernel' was expected"):
        loaders.read_spec(tmp_path / "m.h5")


def test_per_gate_arrays_with_a_missing_gate_are_refused(tmp_path):
    import h5py

    _keras1_per_gate(tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "a") as f:
        g = f["model_weights/lstm_1"]
        g.attrs["weight_names"] = np.array([n for n in g.attrs["weight_names"] if not n.endswith(b"_f")])
        for n in ("W_f", "U_f", "b_f"):
            del g[f"lstm_1_{n}"]
    with pytest.raises(ValueError, match="lack gate"):
        loaders.read_spec(tmp_path / "m.h5")


def test_gru_without_reset_after_key_or_bias_is_refused(tmp_path):
    _keras2_gru_variants(tmp_path / "m.h5")
    _rewrite(tmp_path / "m.h5", lambda c: c["config"]["layers"][0]["config"].pop("reset_after"))
    spec = loaders.read_spec(tmp_path / "m.h5")  # the (3H,) bias says reset_after=False
    assert spec.layers[0].reset_after is False
    import h5py

    _rewrite(tmp_path / "m.h5", lambda c: c["config"]["layers"][0]["config"].update(use_bias=False))
    with h5py.File(tmp_path / "m.h5", "a") as f:
        g = f["model_weights/gru_1"]
        g.attrs["weight_names"] = np.array([b"gru_1/kernel:0", b"gru_1/recurrent_kernel:0"])
        del g["gru_1/bias:0"]
    with pytest.raises(ValueError, match="refusing to guess between the two GRU formulas"):
        loaders.read_spec(tmp_path / "m.h5")
