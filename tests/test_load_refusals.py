"""Every loader refusal for the layers around the recurrent core, each with the message it must give.

Keras layer entries are fed to the config mapper directly (the part shared by .keras, .h5 and live
objects), with weights in Keras' layout; PyTorch state_dicts go through ``read_spec`` and modules
through ``from_torch``.  Each case checks that the error names what is wrong.
"""

import io

import numpy as np
import pytest

from fastlstm.loaders import read_spec
from fastlstm.loaders.keras_config import spec_from_chain

I = 3
R = np.random.default_rng(0)


def _w(*shape):
    return R.uniform(-0.5, 0.5, shape).astype(np.float32)


def _entry(cls, name="x", **config):
    return {"class_name": cls, "config": dict(name=name, **config)}


def _rnn(cls, units=4, **kw):
    return _entry(cls, cls.lower(), units=units, return_sequences=True, **kw)


GATES = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}


def _rnn_weights(cls, n_in=I, units=4, bias=True, reset_after=True):
    g = GATES[cls]
    w = [("kernel", _w(n_in, g * units)), ("recurrent_kernel", _w(units, g * units))]
    if bias:
        w.append(("bias", _w(2, g * units) if cls == "GRU" and reset_after else _w(g * units)))
    return w


def _load(chain, weights, version="3.15.1"):
    """``chain``: layer entries; ``weights``: the list of weights of each entry, in order."""
    by_id = {id(e): w for e, w in zip(chain, weights)}
    return spec_from_chain(chain, version, lambda e: by_id[id(e)], "m.keras")


LSTM_IN = (_rnn("LSTM"), _rnn_weights("LSTM"))


def _after_lstm(entry, weights=()):
    return [LSTM_IN[0], entry], [LSTM_IN[1], list(weights)]


KERAS_CASES = {
    "units type": ([_rnn("GRU", units="4")], [_rnn_weights("GRU")], "units='4' has the wrong type"),
    "kernel_size": (
        *_after_lstm(_entry("Conv1D", filters=2, kernel_size=[0]), [("kernel", _w(1, 4, 2))]),
        "kernel_size=\\[0\\] must be an integer >= 1",
    ),
    "per-gate arrays": (
        [_rnn("LSTM")],
        [[(f"W{k}", _w(I, 4)) for k in range(12)]],
        "12 per-gate arrays, as a Keras 1 file stores them",
    ),
    "gru bias shape": (
        [_rnn("GRU", reset_after=False)],
        [_rnn_weights("GRU", reset_after=True)],
        "bias has shape \\(2, 12\\); expected \\(12,\\) for reset_after=False",
    ),
    "rnn kernel": ([_rnn("SimpleRNN")], [_rnn_weights("SimpleRNN", units=5)], "do not match units=4"),
    "bidirectional dense": (
        [_entry("Bidirectional", layer=_entry("Dense", units=2))],
        [[]],
        "wraps a Dense; only Bidirectional\\(LSTM / GRU / SimpleRNN\\)",
    ),
    "backward class": (
        [_entry("Bidirectional", layer=_rnn("GRU"), backward_layer=_rnn("LSTM", go_backwards=True))],
        [[]],
        "backward_layer is a LSTM; the forward layer is a GRU",
    ),
    "backward units": (
        [_entry("Bidirectional", layer=_rnn("GRU"), backward_layer=_rnn("GRU", units=5, go_backwards=True))],
        [[]],
        "backward_layer has units=5 but the forward layer has 4",
    ),
    "backward direction": (
        [_entry("Bidirectional", layer=_rnn("GRU"), backward_layer=_rnn("GRU"))],
        [[]],
        "backward_layer must have go_backwards=True",
    ),
    "forward go_backwards": (
        [_entry("Bidirectional", layer=_rnn("GRU", go_backwards=True))],
        [[]],
        "go_backwards=True, which swaps the directions",
    ),
    "bidirectional odd weights": (
        [_entry("Bidirectional", layer=_rnn("GRU"))],
        [_rnn_weights("GRU")],
        "expected weights for two directions, found 3",
    ),
    "dense lora": (
        *_after_lstm(_entry("Dense", units=2, lora_rank=4), [("kernel", _w(4, 2)), ("bias", _w(2))]),
        "LoRA",
    ),
    "dense kernel": (
        *_after_lstm(_entry("Dense", units=2), [("kernel", _w(4, 3)), ("bias", _w(2))]),
        "kernel has shape \\(4, 3\\); expected \\(input, 2\\)",
    ),
    "relu threshold": (*_after_lstm(_entry("ReLU", threshold=0.5)), "max_value or threshold"),
    "elu alpha": (*_after_lstm(_entry("ELU", alpha=float("inf"))), "alpha=inf must be a finite number"),
    "prelu alpha": (*_after_lstm(_entry("PReLU", shared_axes=[1]), [("alpha", _w(2, 4))]), "one slope per feature"),
    "renorm": (*_after_lstm(_entry("BatchNormalization", renorm=True)), "renormalization"),
    "rms": (*_after_lstm(_entry("LayerNormalization", rms_scaling=True)), "rms_scaling"),
    "ln no weights": (
        *_after_lstm(_entry("LayerNormalization", scale=False, center=False)),
        "without scale and center",
    ),
    "conv filters": (*_after_lstm(_entry("Conv1D", filters=0, kernel_size=[2])), "filters=0"),
    "conv kernel": (
        *_after_lstm(_entry("Conv1D", filters=2, kernel_size=[2]), [("kernel", _w(3, 4, 2)), ("bias", _w(2))]),
        "kernel has shape \\(3, 4, 2\\); expected \\(2, input/groups, 2\\)",
    ),
    "conv bias": (
        *_after_lstm(_entry("Conv1D", filters=2, kernel_size=[2]), [("kernel", _w(2, 4, 2)), ("bias", _w(3))]),
        "bias has shape \\(3,\\); expected \\(2,\\)",
    ),
    "pool padding": (
        *_after_lstm(_entry("MaxPooling1D", pool_size=[2], padding="causal")),
        "padding='causal' is not supported",
    ),
    "huge pool": (
        *_after_lstm(_entry("MaxPooling1D", pool_size=[1 << 40])),
        "pool_size=1099511627776 is larger than fastlstm accepts from a file",
    ),
    "huge repeat": (
        [_entry("LSTM", "a", units=4, return_sequences=False), _entry("RepeatVector", n=10**9)],
        [_rnn_weights("LSTM"), []],
        "n=1000000000 is larger than fastlstm accepts",
    ),
    "huge dilation": (
        *_after_lstm(
            _entry("Conv1D", filters=2, kernel_size=[2], dilation_rate=[1 << 20]),
            [("kernel", _w(2, 4, 2)), ("bias", _w(2))],
        ),
        "dilation_rate=1048576 is larger",
    ),
    "keepdims": (*_after_lstm(_entry("GlobalMaxPooling1D", keepdims=True)), "keepdims"),
    "embedding shape": (
        [_entry("Embedding", input_dim=10, output_dim=I), _rnn("LSTM")],
        [[("embeddings", _w(9, I))], _rnn_weights("LSTM")],
        "the config says \\(10, 3\\)",
    ),
    "rnn after last step": (
        [_entry("LSTM", "a", units=4, return_sequences=False), _rnn("GRU", units=4)],
        [_rnn_weights("LSTM"), _rnn_weights("GRU", n_in=4)],
        "add a RepeatVector",
    ),
    "time distributed conv": (
        *_after_lstm(_entry("TimeDistributed", layer=_entry("Conv1D", filters=2))),
        "wraps a Conv1D; TimeDistributed is supported around per-step layers",
    ),
    "time distributed no time": (
        [
            _entry("LSTM", "a", units=4, return_sequences=False),
            _entry("TimeDistributed", layer=_entry("Dense", units=2)),
        ],
        [_rnn_weights("LSTM"), [("kernel", _w(4, 2)), ("bias", _w(2))]],
        "TimeDistributed needs a sequence",
    ),
    "weights on weightless": (
        *_after_lstm(_entry("Dropout", rate=0.5), [("kernel", _w(2))]),
        "has 1 unexpected weight",
    ),
    "nothing to run": ([_entry("Dropout", rate=0.1)], [[]], "the model has no layers fastlstm runs"),
    "keras 1 gate mismatch": (
        [_entry("LSTM", "lstm_1", output_dim=4, return_sequences=True)],
        [[(f"lstm_1_{k}_{g}", _w(I, 4)) for g in "izro" for k in "WUb"]],
        "do not match the LSTM gates",
    ),
    "keras 1 conv kernel": (
        [_entry("Convolution1D", "c", nb_filter=2, filter_length=3, border_mode="valid"), _rnn("LSTM", units=4)],
        [[("c_W", _w(2, 2, 2, 2))], _rnn_weights("LSTM", n_in=2)],
        "Keras 1 Convolution1D kernel has shape \\(2, 2, 2, 2\\)",
    ),
}


@pytest.mark.parametrize("case", sorted(KERAS_CASES))
def test_keras_refusals(case):
    chain, weights, match = KERAS_CASES[case]
    with pytest.raises(ValueError, match=match):
        _load(chain, weights)


# --- PyTorch state_dicts -------------------------------------------------------------------------


def _pt(sd):
    import torch

    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return buf


def _lstm_sd(prefix="lstm.", n_in=I, hidden=4):
    import torch

    torch.manual_seed(0)
    return {prefix + k: v for k, v in torch.nn.LSTM(n_in, hidden).state_dict().items()}


def test_state_dict_refusals():
    import torch

    sd = _lstm_sd()
    with pytest.raises(ValueError, match="already has 'last_step'"):
        read_spec(_pt(sd), layers=["lstm", "last_step"], return_sequences=False)
    with pytest.raises(ValueError, match="holds several modules \\(\\['enc.a', 'enc.b'\\]\\)"):
        read_spec(_pt({**_lstm_sd("enc.a."), **_lstm_sd("enc.b.", n_in=4)}), layers=["enc"])
    with pytest.raises(ValueError, match="kind is ambiguous"):
        read_spec(_pt({**sd, "act.weight": torch.ones(1)}), layers=["lstm", "act"])
    with pytest.raises(ValueError, match="running_var' is missing"):
        read_spec(
            _pt({**sd, "bn.weight": torch.ones(4), "bn.bias": torch.ones(4), "bn.running_mean": torch.ones(4)}),
            layers=["lstm", "bn"],
        )
    with pytest.raises(ValueError, match="unexpected tensors"):
        read_spec(_pt({**sd, "fc.weight": torch.ones(2, 4), "fc.running_mean": torch.ones(2)}), layers=["lstm", "fc"])
    with pytest.raises(ValueError, match="not a state_dict"):
        read_spec(_pt({"a": {"b": 1}}))
    with pytest.raises(ValueError, match="no dense head"):
        read_spec(_pt(sd), head_activation="relu")
    with pytest.raises(ValueError, match="not 4H x H \\(LSTM\\), 3H x H \\(GRU\\) or H x H \\(RNN\\)"):
        read_spec(_pt({**sd, "lstm.weight_hh_l0": torch.ones(10, 4)}))
    with pytest.raises(ValueError, match="head_activation: 'prelu' is not supported"):
        read_spec(_pt(sd), head_activation="prelu")


# --- traced modules ------------------------------------------------------------------------------


def _modules():
    import torch

    nn, F = torch.nn, torch.nn.functional

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(I, 4)

        def forward(self, x, h):
            return self.lstm(x, h)[0]

    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(I, 4)

        def forward(self, x):
            return self.lstm(x)[0], 3

    class CellState(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.fc = nn.LSTM(I, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.lstm(x)[1][1][-1])

    class FirstStep(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(I, 4, batch_first=True)

        def forward(self, x):
            return self.lstm(x)[0][:, 0]

    class Swapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(I, 4)

        def forward(self, x):
            return self.lstm(x)[0].transpose(0, 1)

    class MeanOverFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(I, 4, batch_first=True)

        def forward(self, x):
            return self.lstm(x)[0].mean(dim=2)

    class Adaptive(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool, self.lstm = nn.Conv1d(I, 4, 1), nn.AdaptiveAvgPool1d(5), nn.LSTM(4, 2)

        def forward(self, x):
            return self.lstm(self.pool(self.conv(x.permute(1, 2, 0))).permute(2, 0, 1))[0]

    class Reflect(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.lstm = nn.Conv1d(I, 4, 3, padding=1, padding_mode="reflect"), nn.LSTM(4, 2)

        def forward(self, x):
            return self.lstm(self.conv(x.permute(1, 2, 0)).permute(2, 0, 1))[0]

    class Softplus2(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(I, 4)

        def forward(self, x):
            return F.softplus(self.lstm(x)[0], beta=2.0)

    class Ceil(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool, self.lstm = nn.MaxPool1d(2, ceil_mode=True), nn.LSTM(I, 2, batch_first=True)

        def forward(self, x):
            return self.lstm(self.pool(x.transpose(1, 2)).transpose(1, 2))[0]

    class MaxNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.lstm = nn.Embedding(5, I, max_norm=1.0), nn.LSTM(I, 2)

        def forward(self, x):
            return self.lstm(self.emb(x))[0]

    class LayerNorm2d(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.norm = nn.LSTM(I, 4, batch_first=True), nn.LayerNorm([7, 4])

        def forward(self, x):
            return self.norm(self.lstm(x)[0])

    class TimeMajorWrongIndex(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(I, 4)  # time-major, so out[:, -1] is the last batch row, not the last step

        def forward(self, x):
            return self.lstm(x)[0][:, -1]

    class LinearOnTuple(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.fc = nn.LSTM(I, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.lstm(x))

    class ReturnsConstant(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(I, 4)

        def forward(self, x):
            return 3.0

    return [
        (TimeMajorWrongIndex(), "no input layout fits forward"),
        (LinearOnTuple(), "applied to a recurrent module's \\(output, state\\) tuple"),
        (ReturnsConstant(), "returns a constant"),
        (TwoInputs(), "takes 2 inputs"),
        (Constant(), "returns 2 values"),
        (CellState(), "cell state c_n"),
        (FirstStep(), "picking the last time step"),
        (Swapped(), "returns axes"),
        (MeanOverFeatures(), "only a pool over time"),
        (Adaptive(), "adaptive pooling to 5 steps"),
        (Reflect(), "padding_mode='reflect'"),
        (Softplus2(), "softplus"),
        (Ceil(), "ceil_mode"),
        (MaxNorm(), "max_norm"),
        (LayerNorm2d(), "LayerNorm over \\(7, 4\\)"),
    ]


@pytest.mark.parametrize("index", range(15))
def test_trace_refusals(index):
    import fastlstm.loaders as loaders

    module, match = _modules()[index]
    with pytest.raises(ValueError, match=match):
        loaders.from_torch(module)
