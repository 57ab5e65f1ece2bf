"""Hand-built ONNX graphs (``onnx.helper``) for what exporters rarely emit, each checked against ONNX
Runtime: reverse direction, layout=1, non-default activations, GRU linear_before_reset=0; and graphs
fastlstm must refuse by name (clip, crops of the time axis, control flow, custom ops, cycles, branches).
"""

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx_helpers import TOL, max_err, model_bytes, ort_session, recurrent_graph, recurrent_weights, tensor
from test_load_onnx import chain_forward

import fastlstm
from fastlstm.layers import GRULayer, LastStep, LSTMLayer, RNNLayer
from fastlstm.loaders.onnx_files import read_onnx

T, B, I, H = 40, 3, 4, 6
INT_MAX = np.iinfo(np.int64).max


def _load(tmp_path, data, name="g.onnx"):
    path = tmp_path / name
    path.write_bytes(data)
    return path, fastlstm.load(path)


def _ort(path, x):
    return ort_session(path).run(None, {"x": x})[0]


def _x(layout=0, seed=0):
    shape = (T, B, I) if layout == 0 else (B, T, I)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _weights(op="LSTM", ndir=1, seed=1):
    return recurrent_weights(np.random.default_rng(seed), op, ndir, I, H)


def test_reverse_direction_final_state(tmp_path):
    """direction=reverse, Y_h: the state after reading x[T-1] .. x[0] (Keras go_backwards, last step)."""
    path, model = _load(tmp_path, recurrent_graph("LSTM", *_weights(), attrs={"direction": "reverse"}, output="Y_h"))
    assert model.layers[0].go_backwards
    x = _x()
    assert max_err(model.predict(x), _ort(path, x)) <= TOL


def test_reverse_direction_whole_sequence_flipped_back(tmp_path):
    """Y of a reverse layer, then the time axis reversed (Slice step -1): fastlstm's go_backwards order."""
    nodes = [
        helper.make_node("Squeeze", ["Y", "one"], ["y3"]),
        helper.make_node("Slice", ["y3", "m1", "lo", "zero", "m1"], ["out"]),
    ]
    inits = [
        tensor("one", np.array([1], np.int64)),
        tensor("m1", np.array([-1], np.int64)),
        tensor("lo", np.array([-INT_MAX], np.int64)),
        tensor("zero", np.array([0], np.int64)),
    ]
    path, model = _load(
        tmp_path,
        recurrent_graph(
            "LSTM",
            *_weights(),
            attrs={"direction": "reverse"},
            output="custom",
            extra_nodes=nodes,
            extra_inits=inits,
            final_shape=["T", "B", H],
        ),
    )
    x = _x()
    assert max_err(model.predict(x), _ort(path, x)) <= TOL


def test_reverse_direction_unflipped_sequence_refused(tmp_path):
    path = tmp_path / "g.onnx"
    path.write_bytes(recurrent_graph("LSTM", *_weights(), attrs={"direction": "reverse"}, output="Y"))
    with pytest.raises(ValueError, match="reverse-direction layer"):
        fastlstm.load(path)


def _layout0_reference(tmp_path, W, R, Bb, attrs, output, x):
    """ONNX Runtime does not implement layout=1, so its meaning (X (B, T, I), Y (B, T, D, H), Y_h (B, D, H))
    is checked against the layout-0 graph with the transposes written out, run in ONNX Runtime."""
    ndir = W.shape[0]
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["xt", "W", "R", "B"], ["Y", "Y_h"], hidden_size=H, **attrs),
    ]
    if output == "Y":
        nodes += [
            helper.make_node("Transpose", ["Y"], ["yb"], perm=[2, 0, 1, 3]),
            helper.make_node("Reshape", ["yb", "shape"], ["out"]),
        ]
        shape = ["B", "T", ndir * H]
    else:
        nodes += [
            helper.make_node("Transpose", ["Y_h"], ["hb"], perm=[1, 0, 2]),
            helper.make_node("Reshape", ["hb", "shape"], ["out"]),
        ]
        shape = ["B", ndir * H]
    inits = [
        tensor("W", W),
        tensor("R", R),
        tensor("B", Bb),
        tensor("shape", np.array([0, 0, -1] if output == "Y" else [0, -1], np.int64)),
    ]
    path = tmp_path / "reference.onnx"
    path.write_bytes(
        model_bytes(nodes, [("x", TensorProto.FLOAT, ["B", "T", I])], [("out", TensorProto.FLOAT, shape)], inits)
    )
    return _ort(path, x)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_layout_1(tmp_path, bidirectional):
    """layout=1: X (B, T, I), Y (B, T, D, H); a bidirectional Y reshaped to (B, T, 2H)."""
    ndir = 2 if bidirectional else 1
    attrs = {"direction": "bidirectional"} if bidirectional else {}
    W, R, Bb = _weights(ndir=ndir)
    nodes = [helper.make_node("Reshape", ["Y", "shape"], ["out"])]
    inits = [tensor("shape", np.array([0, 0, -1], np.int64))]
    path, model = _load(
        tmp_path,
        recurrent_graph(
            "LSTM",
            W,
            R,
            Bb,
            attrs=attrs,
            layout=1,
            output="custom",
            extra_nodes=nodes,
            extra_inits=inits,
            final_shape=["B", "T", ndir * H],
        ),
    )
    x = _x(layout=1)
    assert read_onnx(path.read_bytes(), "g", None).match.batch_first
    want = _layout0_reference(tmp_path, W, R, Bb, attrs, "Y", x)
    assert max_err(model.predict(x, batch_first=True), want) <= TOL


def test_layout_1_final_state(tmp_path):
    W, R, Bb = _weights()
    _, model = _load(tmp_path, recurrent_graph("LSTM", W, R, Bb, layout=1, output="Y_h"))
    x = _x(layout=1)
    assert max_err(model.predict(x, batch_first=True), _layout0_reference(tmp_path, W, R, Bb, {}, "Y_h", x)) <= TOL


@pytest.mark.parametrize(
    "activations, alpha, beta, expect",
    [
        (["HardSigmoid", "Tanh", "Tanh"], [0.2], [0.5], ("hard_sigmoid_keras2", "tanh")),
        (["HardSigmoid", "Tanh", "Tanh"], [1 / 6], [0.5], ("hard_sigmoid", "tanh")),
        (["Sigmoid", "Relu", "Relu"], [], [], ("sigmoid", "relu")),
        (["Sigmoid", "Affine", "Affine"], [1.0, 1.0], [0.0, 0.0], ("sigmoid", "linear")),
    ],
)
def test_lstm_activations(tmp_path, activations, alpha, beta, expect):
    attrs = {"activations": activations}
    if alpha:
        attrs.update(activation_alpha=alpha, activation_beta=beta)
    W, R, Bb = _weights()
    path, model = _load(tmp_path, recurrent_graph("LSTM", W * 0.5, R * 0.5, Bb, attrs=attrs, output="Y"))
    layer = model.layers[0]
    assert (layer.recurrent_activation, layer.activation) == expect
    x = _x()
    assert max_err(model.predict(x), _ort(path, x)) <= TOL


@pytest.mark.parametrize(
    "attrs, match",
    [
        ({"clip": 3.0}, "clip"),
        ({"input_forget": 1}, "input_forget"),
        ({"activations": ["Sigmoid", "Tanh", "Relu"]}, "g=tanh and h=relu differ"),
        ({"activations": ["Sigmoid", "Softsign", "Softsign"]}, "Softsign"),
        ({"activations": ["HardSigmoid", "Tanh", "Tanh"], "activation_alpha": [0.3]}, "HardSigmoid with alpha"),
        ({"direction": "sideways"}, "direction"),
    ],
)
def test_lstm_attributes_refused(tmp_path, attrs, match):
    path = tmp_path / "g.onnx"
    path.write_bytes(recurrent_graph("LSTM", *_weights(), attrs=attrs))
    with pytest.raises(ValueError, match=match) as info:
        fastlstm.load(path)
    assert "LSTM" in str(info.value) and "node 0" in str(info.value)


def test_peepholes(tmp_path):
    W, R, Bb = _weights()
    inputs = ["x", "W", "R", "B", "", "", "", "P"]
    zero = recurrent_graph(
        "LSTM", W, R, Bb, rnn_inputs=inputs, extra_inits=[tensor("P", np.zeros((1, 3 * H), np.float32))]
    )
    path, model = _load(tmp_path, zero)
    x = _x()
    assert max_err(model.predict(x), _ort(path, x)) <= TOL  # zero peepholes change nothing
    path.write_bytes(
        recurrent_graph(
            "LSTM", W, R, Bb, rnn_inputs=inputs, extra_inits=[tensor("P", np.full((1, 3 * H), 0.1, np.float32))]
        )
    )
    with pytest.raises(ValueError, match="peephole"):
        fastlstm.load(path)


def test_sequence_lens_and_constant_state_refused(tmp_path):
    W, R, Bb = _weights()
    lens = [tensor("lens", np.full(B, T, np.int32))]
    path = tmp_path / "g.onnx"
    path.write_bytes(recurrent_graph("LSTM", W, R, Bb, rnn_inputs=["x", "W", "R", "B", "lens"], extra_inits=lens))
    with pytest.raises(ValueError, match="sequence_lens"):
        fastlstm.load(path)
    h0 = [tensor("h0", np.full((1, B, H), 0.5, np.float32))]
    path.write_bytes(recurrent_graph("LSTM", W, R, Bb, rnn_inputs=["x", "W", "R", "B", "", "h0"], extra_inits=h0))
    with pytest.raises(ValueError, match="initial_h is a non-zero constant"):
        fastlstm.load(path)


@pytest.mark.parametrize("lbr", [0, 1])
@pytest.mark.parametrize("ndir", [1, 2])
def test_gru_linear_before_reset(tmp_path, lbr, ndir):
    """GRU linear_before_reset=0 is Keras reset_after=False; 1 is PyTorch's nn.GRU."""
    attrs = {"linear_before_reset": lbr}
    if ndir == 2:
        attrs["direction"] = "bidirectional"
    nodes = [
        helper.make_node("Transpose", ["Y"], ["yt"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["yt", "shape"], ["out"]),
    ]
    data = recurrent_graph(
        "GRU",
        *_weights("GRU", ndir),
        attrs=attrs,
        output="custom",
        extra_nodes=nodes,
        extra_inits=[tensor("shape", np.array([0, 0, -1], np.int64))],
        final_shape=["T", "B", ndir * H],
    )
    path = tmp_path / "g.onnx"
    path.write_bytes(data)
    chain = read_onnx(data, "g", None).chain
    assert isinstance(chain[0], GRULayer) and chain[0].reset_after == bool(lbr)
    x = _x()
    want = _ort(path, x)
    assert max_err(chain_forward(chain, x), want) <= TOL  # the mapping, in float64
    assert max_err(fastlstm.load(path).predict(x), want) <= TOL  # and the engine


def test_rnn_activations(tmp_path):
    data = recurrent_graph("RNN", *_weights("RNN"), attrs={"activations": ["Relu"]}, output="Y_h")
    path = tmp_path / "g.onnx"
    path.write_bytes(data)
    chain = read_onnx(data, "g", None).chain
    assert isinstance(chain[0], RNNLayer) and chain[0].activation == "relu" and chain[1] == LastStep()
    x = _x()
    want = _ort(path, x)
    assert max_err(chain_forward(chain, x), want) <= TOL
    assert max_err(fastlstm.load(path).predict(x), want) <= TOL


# --- what the graph selects: exactly that, or refused ---------------------------------------------


def _select_graph(node, inits, shape):
    sq = [helper.make_node("Squeeze", ["Y", "one"], ["y3"]), node]
    return recurrent_graph(
        "LSTM",
        *_weights(),
        output="custom",
        extra_nodes=sq,
        extra_inits=[tensor("one", np.array([1], np.int64))] + inits,
        final_shape=shape,
    )


def test_last_step_by_gather_and_by_slice(tmp_path):
    x = _x()
    for node, inits, shape in [
        (helper.make_node("Gather", ["y3", "m1"], ["out"], axis=0), [tensor("m1", np.array(-1, np.int64))], ["B", H]),
        (
            helper.make_node("Slice", ["y3", "s", "e", "a"], ["out"]),
            [
                tensor("s", np.array([-1], np.int64)),
                tensor("e", np.array([INT_MAX], np.int64)),
                tensor("a", np.array([0], np.int64)),
            ],
            [1, "B", H],
        ),
    ]:
        path, model = _load(tmp_path, _select_graph(node, inits, shape))
        assert not model.return_sequences
        assert max_err(model.predict(x), _ort(path, x)) <= TOL


@pytest.mark.parametrize(
    "node, inits, match",
    [
        (
            helper.make_node("Slice", ["y3", "s", "e", "a"], ["out"]),
            [
                tensor("s", np.array([-30], np.int64)),
                tensor("e", np.array([INT_MAX], np.int64)),
                tensor("a", np.array([0], np.int64)),
            ],
            r"keeps steps -30:.* never guesses",
        ),
        (
            helper.make_node("Gather", ["y3", "five"], ["out"], axis=0),
            [tensor("five", np.array(5, np.int64))],
            "keeps step 5",
        ),
        (
            helper.make_node("Gather", ["y3", "zero"], ["out"], axis=0),
            [tensor("zero", np.array(0, np.int64))],
            "keeps the first step",
        ),
        (
            helper.make_node("Gather", ["y3", "zero"], ["out"], axis=1),
            [tensor("zero", np.array(0, np.int64))],
            "selects element 0 of the batch",
        ),
        (
            helper.make_node("Slice", ["y3", "s", "e", "a"], ["out"]),
            [
                tensor("s", np.array([0], np.int64)),
                tensor("e", np.array([2], np.int64)),
                tensor("a", np.array([2], np.int64)),
            ],
            "keeps part",
        ),
    ],
)
def test_other_selections_refused(tmp_path, node, inits, match):
    path = tmp_path / "g.onnx"
    path.write_bytes(_select_graph(node, inits, None))
    with pytest.raises(ValueError, match=match):
        fastlstm.load(path)


def test_crop_of_120_steps_in_a_static_graph_refused(tmp_path):
    """The issue's example: a graph declared for T=120 that returns the last 30 steps."""
    W, R, Bb = _weights()
    nodes = [
        helper.make_node("LSTM", ["x", "W", "R", "B"], ["Y"], hidden_size=H),
        helper.make_node("Squeeze", ["Y", "one"], ["y3"]),
        helper.make_node("Slice", ["y3", "s", "e", "a"], ["out"]),
    ]
    inits = [
        tensor("W", W),
        tensor("R", R),
        tensor("B", Bb),
        tensor("one", np.array([1], np.int64)),
        tensor("s", np.array([90], np.int64)),
        tensor("e", np.array([120], np.int64)),
        tensor("a", np.array([0], np.int64)),
    ]
    path = tmp_path / "g.onnx"
    path.write_bytes(
        model_bytes(nodes, [("x", TensorProto.FLOAT, [120, 1, I])], [("out", TensorProto.FLOAT, [30, 1, H])], inits)
    )
    with pytest.raises(ValueError, match="keeps steps 90:120"):
        fastlstm.load(path)


# --- refused graph structures ----------------------------------------------------------------------


def _identity_body():
    return helper.make_graph(
        [helper.make_node("Identity", ["a"], ["b"])],
        "body",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])],
    )


@pytest.mark.parametrize(
    "op, kwargs",
    [
        ("Loop", {"body": _identity_body()}),
        ("Scan", {"body": _identity_body(), "num_scan_inputs": 1}),
        ("If", {"then_branch": _identity_body(), "else_branch": _identity_body()}),
    ],
)
def test_control_flow_refused_by_name(tmp_path, op, kwargs):
    node = helper.make_node(op, ["x"], ["out"], name="tf2onnx_rnn", **kwargs)
    path = tmp_path / "g.onnx"
    path.write_bytes(
        model_bytes([node], [("x", TensorProto.FLOAT, ["T", "B", I])], [("out", TensorProto.FLOAT, None)], [])
    )
    with pytest.raises(ValueError, match=rf"node 0 \({op} 'tf2onnx_rnn'\): control flow"):
        fastlstm.load(path)


def test_decomposed_lstm_cell_refused(tmp_path):
    """An LSTM cell written out as Gemm + Split + Sigmoid/Tanh has no LSTM op: refused at the Split."""
    w = np.random.default_rng(0).standard_normal((I, 4 * H)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["z"]),
        helper.make_node("Split", ["z"], ["i", "f", "g", "o"], axis=2, num_outputs=4),
        helper.make_node("Sigmoid", ["i"], ["out"]),
    ]
    path = tmp_path / "g.onnx"
    path.write_bytes(
        model_bytes(
            nodes,
            [("x", TensorProto.FLOAT, ["T", "B", I])],
            [("out", TensorProto.FLOAT, None)],
            [tensor("w", w)],
            opset=18,
        )
    )
    with pytest.raises(ValueError, match=r"node 1 \(Split\).*no LSTM op"):
        fastlstm.load(path)


def test_custom_domain_refused(tmp_path):
    node = helper.make_node("FusedLSTM", ["x"], ["out"], domain="com.microsoft")
    path = tmp_path / "g.onnx"
    path.write_bytes(
        model_bytes(
            [node],
            [("x", TensorProto.FLOAT, ["T", "B", I])],
            [("out", TensorProto.FLOAT, None)],
            [],
            domain_opsets=[("com.microsoft", 1)],
        )
    )
    with pytest.raises(ValueError, match="custom-op domain 'com.microsoft'"):
        fastlstm.load(path)


def test_cycle_refused(tmp_path):
    nodes = [
        helper.make_node("Add", ["x", "b"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Identity", ["b"], ["out"]),
    ]
    path = tmp_path / "g.onnx"
    path.write_bytes(
        model_bytes(nodes, [("x", TensorProto.FLOAT, ["T", "B", I])], [("out", TensorProto.FLOAT, None)], [])
    )
    with pytest.raises(ValueError, match="cycle"):
        fastlstm.load(path)


def test_residual_branch_refused(tmp_path):
    W, R, Bb = _weights()
    nodes = [
        helper.make_node("Squeeze", ["Y", "one"], ["y3"]),
        helper.make_node("Relu", ["y3"], ["r"]),
        helper.make_node("Add", ["y3", "r"], ["out"]),
    ]
    path = tmp_path / "g.onnx"
    path.write_bytes(
        recurrent_graph(
            "LSTM",
            W,
            R,
            Bb,
            output="custom",
            extra_nodes=nodes,
            extra_inits=[tensor("one", np.array([1], np.int64))],
            final_shape=None,
        )
    )
    with pytest.raises(ValueError, match="residual or gated branch"):
        fastlstm.load(path)


def test_dense_chain_after_last_step(tmp_path):
    """Gemm, MatMul + Add, activations and Dropout/Identity after the recurrent layer."""
    rng = np.random.default_rng(5)
    W, R, Bb = _weights()
    w1, b1 = rng.standard_normal((H, 5)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    w2, b2 = rng.standard_normal((2, 5)).astype(np.float32), rng.standard_normal(2).astype(np.float32)
    nodes = [
        helper.make_node("Squeeze", ["Y_h", "zero"], ["h"]),
        helper.make_node("MatMul", ["h", "w1"], ["m"]),
        helper.make_node("Add", ["m", "b1"], ["a"]),
        helper.make_node("Dropout", ["a"], ["d"]),
        helper.make_node("Relu", ["d"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["g"], transB=1),
        helper.make_node("Identity", ["g"], ["out"]),
    ]
    inits = [
        tensor("zero", np.array([0], np.int64)),
        tensor("w1", w1),
        tensor("b1", b1),
        tensor("w2", w2),
        tensor("b2", b2),
    ]
    data = recurrent_graph(
        "LSTM", W, R, Bb, output="custom", extra_nodes=nodes, extra_inits=inits, final_shape=["B", 2]
    )
    chain = read_onnx(data, "g", None).chain
    assert [type(c).__name__ for c in chain] == ["LSTMLayer", "LastStep", "Dense", "Dense"]
    assert chain[2].activation == "relu" and isinstance(chain[0], LSTMLayer)
    path, model = _load(tmp_path, data)
    x = _x()
    assert max_err(model.predict(x), _ort(path, x)) <= TOL
    stream = model.stream(batch_size=B)
    steps = [stream.step(x[t]) for t in range(T)]
    assert max_err(steps[-1], _ort(path, x)) <= TOL


@pytest.mark.parametrize(
    "mode, value, then, match",
    [
        ("reflect", 0.0, "Conv", "Pad .*reflect"),
        ("constant", 1.0, "Conv", r"value \[1.0\]"),
        ("constant", 0.0, "Relu", "follows a Pad of the time axis"),
    ],
)
def test_pad_folds_only_as_zero_padding_of_a_conv(tmp_path, mode, value, then, match):
    w = np.random.default_rng(0).standard_normal((5, I, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["x"], ["xc"], perm=[0, 2, 1]),
        helper.make_node("Pad", ["xc", "pads", "value"], ["xp"], mode=mode),
        (helper.make_node("Conv", ["xp", "w"], ["c"]) if then == "Conv" else helper.make_node("Relu", ["xp"], ["c"])),
        helper.make_node("Transpose", ["c"], ["out"], perm=[0, 2, 1]),
    ]
    inits = [
        tensor("pads", np.array([0, 0, 2, 0, 0, 0], np.int64)),
        tensor("value", np.array(value, np.float32)),
        tensor("w", w),
    ]
    path = tmp_path / "g.onnx"
    path.write_bytes(
        model_bytes(
            nodes, [("x", TensorProto.FLOAT, ["B", "T", I])], [("out", TensorProto.FLOAT, None)], inits, opset=18
        )
    )
    with pytest.raises(ValueError, match=match):
        fastlstm.load(path)


def test_zero_pad_then_conv_is_a_causal_conv(tmp_path):
    w = np.random.default_rng(0).standard_normal((5, I, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["x"], ["xc"], perm=[0, 2, 1]),
        helper.make_node("Pad", ["xc", "pads"], ["xp"]),
        helper.make_node("Conv", ["xp", "w"], ["c"]),
        helper.make_node("Transpose", ["c"], ["out"], perm=[0, 2, 1]),
    ]
    inits = [tensor("pads", np.array([0, 0, 2, 0, 0, 0], np.int64)), tensor("w", w)]
    path, model = _load(
        tmp_path,
        model_bytes(
            nodes,
            [("x", TensorProto.FLOAT, ["B", "T", I])],
            [("out", TensorProto.FLOAT, ["B", "T", 5])],
            inits,
            opset=18,
        ),
    )
    assert model.layers[0].padding == (2, 0) and model.streamable
    x = _x(layout=1)
    assert max_err(model.predict(x, batch_first=True), _ort(path, x)) <= TOL
