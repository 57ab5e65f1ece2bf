"""``Model.to_onnx`` writes a standard graph: ONNX Runtime runs it to 1e-5 and ``fastlstm.load`` reads it
back to the same outputs, for every layer kind the writer handles, in both input layouts."""

import numpy as np
import pytest
from onnx_helpers import TOL, max_err, ort_session

import fastlstm
from fastlstm import (
    Activation,
    AvgPool1D,
    BatchNorm,
    Conv1D,
    Dense,
    Embedding,
    GlobalMaxPool1D,
    GRULayer,
    GRUWeights,
    LastStep,
    LayerNorm,
    LSTMLayer,
    LSTMWeights,
    Model,
    RNNLayer,
    RNNWeights,
)

RNG = np.random.default_rng(0)


def _w(cls, gates, I, H):
    return cls(
        RNG.standard_normal((gates * H, I)) * 0.3,
        RNG.standard_normal((gates * H, H)) * 0.3,
        RNG.standard_normal(gates * H) * 0.1,
        RNG.standard_normal(gates * H) * 0.1,
    )


def _dense(o, i, act="linear", bias=True):
    return Dense(RNG.standard_normal((o, i)) * 0.5, RNG.standard_normal(o) if bias else None, act)


CHAINS = {
    "bilstm_final_state": lambda: [
        LSTMLayer([_w(LSTMWeights, 4, 3, 5), _w(LSTMWeights, 4, 3, 5)]),
        LastStep(final_state=True),
        _dense(2, 10, "sigmoid"),
    ],
    "lstm_activations_go_backwards": lambda: [
        LSTMLayer([_w(LSTMWeights, 4, 3, 5)], activation="relu", recurrent_activation="hard_sigmoid"),
        LSTMLayer([_w(LSTMWeights, 4, 5, 4)], recurrent_activation="hard_sigmoid_keras2", go_backwards=True),
        LastStep(),
        _dense(2, 4, bias=False),
    ],
    "lstm_sequence_head": lambda: [LSTMLayer([_w(LSTMWeights, 4, 3, 6)], activation="linear"), _dense(3, 6, "tanh")],
    "bigru_sum_mlp": lambda: [
        GRULayer([_w(GRUWeights, 3, 3, 5), _w(GRUWeights, 3, 3, 5)], merge_mode="sum", reset_after=False),
        _dense(6, 5, "silu"),
        LayerNorm(6, RNG.standard_normal(6), RNG.standard_normal(6)),
        _dense(2, 6, "gelu_tanh"),
    ],
    "conv_pool_rnn": lambda: [
        Conv1D(RNG.standard_normal((4, 3, 3)) * 0.3, RNG.standard_normal(4), padding="causal", activation="elu"),
        AvgPool1D(2, padding=(0, 1)),
        RNNLayer([_w(RNNWeights, 1, 4, 5)]),
        GlobalMaxPool1D(),
        BatchNorm(RNG.standard_normal(5), RNG.uniform(0.5, 2, 5), RNG.standard_normal(5), RNG.standard_normal(5)),
        Dense(RNG.standard_normal((2, 5)), None, Activation("prelu", weight=np.array([0.1, 0.2]))),
    ],
    "embedding_lstm_softmax": lambda: [
        Embedding(RNG.standard_normal((11, 4))),
        LSTMLayer([_w(LSTMWeights, 4, 4, 5)]),
        Activation("leaky_relu", alpha=0.2),
        _dense(3, 5, "softmax"),
    ],
}


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("name", list(CHAINS))
def test_to_onnx_runs_in_onnxruntime_and_round_trips(tmp_path, name, batch_first):
    model = Model(CHAINS[name]())
    path = tmp_path / "m.onnx"
    model.to_onnx(path, batch_first=batch_first)
    shape = (3, 40) if batch_first else (40, 3)
    tokens = name.startswith("embedding")
    x = RNG.integers(0, 11, shape) if tokens else RNG.standard_normal(shape + (3,)).astype(np.float32)
    want = model.predict(x, batch_first=batch_first)
    assert max_err(want, ort_session(path).run(None, {"x": x})[0]) <= TOL
    back = fastlstm.load(path)
    assert back.input_size == model.input_size and back.output_size == model.output_size
    assert max_err(back.predict(x, batch_first=batch_first), want) <= 1e-6


def test_to_onnx_refuses_what_onnx_cannot_say(tmp_path):
    proj = LSTMWeights(RNG.standard_normal((8, 3)), RNG.standard_normal((8, 1)), weight_hr=RNG.standard_normal((1, 2)))
    with pytest.raises(ValueError, match="proj_size"):
        Model([LSTMLayer([proj])]).to_onnx(tmp_path / "m.onnx")
    bi_sum = LSTMLayer([_w(LSTMWeights, 4, 3, 5), _w(LSTMWeights, 4, 3, 5)], merge_mode="sum")
    with pytest.raises(ValueError, match="merge_mode='sum' has no standard ONNX form"):
        Model([bi_sum, LastStep(final_state=True)]).to_onnx(tmp_path / "m.onnx")
