"""PyTorch models with more than "LSTM + one Linear": GRU, RNN, Conv1d front ends, heads of several
layers, norms, Embedding.  Live modules are traced (torch.fx) and must match torch over 1000 steps in
predict and step; state_dict files load with layers=[...]; everything else is refused, by name."""

import io
import warnings

import numpy as np
import pytest
import torch

import fastlstm.loaders as loaders
from fastlstm.loaders import LoadWarning, read_spec
from loader_helpers import (
    STEPS,
    check_parity,
    torch_one_thread,  # noqa: F401 (autouse fixture)
    torch_outputs,
)

nn = torch.nn
F = torch.nn.functional
I, B = 5, 2


class LastStepMlp(nn.Module):
    """The issue's example: fc2(relu(fc1(out[:, -1])))."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(I, 9, num_layers=2, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(9, 6), nn.Linear(6, 3)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc2(F.relu(self.fc1(out[:, -1])))


class PreHeadActivation(nn.Module):
    """fc(relu(h)) on every step, with the ReLU registered *after* the Linear (the old loader applied it
    after the Linear); the initial state built as zeros in forward()."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(I, 7, num_layers=2)
        self.fc = nn.Linear(7, 3)
        self.act = nn.ReLU()

    def forward(self, x):
        h0 = torch.zeros(2, x.size(1), 7)
        out, _ = self.gru(x, h0)
        return self.fc(self.act(out))


class PublishedPattern(nn.Module):
    """The tutorial pattern: zero initial states sized from x.shape / x.size(), on x.device, detached,
    and a GRU's state built with x.new_zeros."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(I, 6, num_layers=2, batch_first=True)
        self.gru = nn.GRU(6, 5, batch_first=True)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        h0 = torch.zeros(2, x.size(0), 6).requires_grad_()
        c0 = torch.zeros(2, x.shape[0], 6, device=x.device)
        out, (hn, cn) = self.lstm(x, (h0.detach(), c0.detach()))
        out, _ = self.gru(out, x.new_zeros(1, x.size()[0], 5))
        return torch.sigmoid(self.fc(out[:, -1, :]))


class InputNorm(nn.Module):
    """Normalization first: BatchNorm1d over the input features, then LayerNorm, an LSTM and a Linear."""

    def __init__(self):
        super().__init__()
        self.bn, self.ln = nn.BatchNorm1d(I), nn.LayerNorm(I)
        self.lstm, self.fc = nn.LSTM(I, 4, batch_first=True), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.lstm(self.ln(self.bn(x.transpose(1, 2)).transpose(1, 2)))[0])


class ViewSqueeze(nn.Module):
    """A CNN-style head: adaptive pool to one step, x.view(x.size(0), -1), a 1-wide Linear, .squeeze(-1)
    (fastlstm returns the same values with the feature axis kept)."""

    def __init__(self):
        super().__init__()
        self.lstm, self.pool, self.fc = nn.LSTM(I, 5, batch_first=True), nn.AdaptiveAvgPool1d(1), nn.Linear(5, 1)

    def forward(self, x):
        out, _ = self.lstm(x)
        y = self.pool(out.transpose(1, 2))
        return self.fc(y.view(y.size(0), -1)).squeeze(-1)


class NormGeluHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(I, 8, batch_first=True, bidirectional=True)
        self.norm = nn.LayerNorm(16)
        self.fc1, self.fc2 = nn.Linear(16, 6), nn.Linear(6, 2)

    def forward(self, x):
        out = self.rnn(x)[0]
        return self.fc2(F.gelu(self.fc1(self.norm(out)), approximate="tanh"))


class SequentialHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(I, 6, nonlinearity="relu", batch_first=True)
        self.head = nn.Sequential(
            nn.Linear(6, 5),
            nn.GELU(),
            nn.Dropout(0.3),
            nn.Linear(5, 4),
            nn.LeakyReLU(0.1),
            nn.Linear(4, 2),
            nn.Softmax(dim=-1),
        )

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out)


class TokenModel(nn.Module):
    """Embedding front end, h_n of the last layer, softmax over the vocabulary; returns (y, hidden)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(17, 6)
        self.lstm = nn.LSTM(6, 7, num_layers=2, batch_first=True)
        self.fc = nn.Linear(7, 17)

    def forward(self, tokens):
        out, (h, c) = self.lstm(self.emb(tokens))
        return F.softmax(self.fc(h[-1]), dim=-1), (h, c)


class ConvFront(nn.Module):
    """Conv1d (padding, dilation) + BatchNorm1d + MaxPool1d between permutes, then a GRU and a Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(I, 6, kernel_size=3, padding=2, dilation=2)
        self.bn = nn.BatchNorm1d(6)
        self.pool = nn.MaxPool1d(2)
        self.gru = nn.GRU(6, 5, batch_first=True)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        y = self.pool(F.relu(self.bn(self.conv(x.permute(0, 2, 1)))))
        out, _ = self.gru(y.transpose(1, 2))
        return self.fc(out)


class DepthwiseAvg(nn.Module):
    """A depthwise, strided Conv1d, AvgPool1d, then mean over time (a global pool)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(I, 2 * I, kernel_size=4, stride=2, groups=I)
        self.pool = nn.AvgPool1d(3, stride=1, padding=1)
        self.lstm = nn.LSTM(2 * I, 4, batch_first=True)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.pool(self.conv(x.permute(0, 2, 1))).permute(0, 2, 1)
        return self.fc(self.lstm(y)[0].mean(dim=1))


class PoolFirst(nn.Module):
    """A pool as the first layer (its width comes from the LSTM after it)."""

    def __init__(self):
        super().__init__()
        self.pool = nn.MaxPool1d(3, stride=2, padding=1)
        self.lstm = nn.LSTM(I, 6, batch_first=True)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(self.lstm(self.pool(x.transpose(1, 2)).transpose(1, 2))[0])


class CausalAmp(nn.Module):
    """A guitar-amp-style model: dilated causal convs written as F.pad + Conv1d and as a symmetric
    padding trimmed with y[..., :-p], an LSTM, and a Dense x2 head, one sample per step (streams)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 4, kernel_size=3, dilation=2)
        self.pad2 = nn.ConstantPad1d((2, 0), 0.0)
        self.conv2 = nn.Conv1d(4, 4, kernel_size=3, groups=4)
        self.conv3 = nn.Conv1d(4, 6, kernel_size=2, padding=1)
        self.lstm = nn.LSTM(6, 8, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 1)

    def forward(self, x):  # x: (batch, samples)
        y = self.conv1(F.pad(x.unsqueeze(1), (4, 0)))
        y = torch.tanh(self.conv2(self.pad2(y)))
        y = self.conv3(y)[:, :, :-1]
        out, _ = self.lstm(y.transpose(1, 2))
        return self.fc2(torch.tanh(self.fc1(out)))


def _bn_stats(module):
    """Give BatchNorm layers non-trivial running statistics (a fresh one is the identity)."""
    g = torch.Generator().manual_seed(9)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return module


#: name -> (module factory, batch_first input, token input, streams)
MODULES = {
    "last_step_mlp": (LastStepMlp, True, False, True),
    "pre_head_activation": (PreHeadActivation, False, False, True),
    "published_pattern": (PublishedPattern, True, False, True),
    "input_norm": (InputNorm, True, False, True),
    "norm_gelu_head": (NormGeluHead, True, False, False),
    "sequential_head": (SequentialHead, True, False, True),
    "token_model": (TokenModel, True, True, True),
    "conv_front": (ConvFront, True, False, False),
    "depthwise_avg": (DepthwiseAvg, True, False, False),
    "pool_first": (PoolFirst, True, False, False),
    "gru_bidirectional": (lambda: nn.GRU(I, 6, num_layers=2, bidirectional=True), False, False, False),
    "rnn_relu_stack": (lambda: nn.RNN(I, 7, num_layers=3, nonlinearity="relu"), False, False, True),
}


def _input(batch_first, tokens, seed=1):
    rng = np.random.default_rng(seed)
    if tokens:
        return rng.integers(0, 17, (B, STEPS))
    x = rng.standard_normal((STEPS, B, I)).astype(np.float32)
    return np.ascontiguousarray(np.swapaxes(x, 0, 1)) if batch_first else x


def _module(name):
    torch.manual_seed(0)
    return _bn_stats(MODULES[name][0]()).eval()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_traced_module_parity(name):
    module = _module(name)
    _, bf, tokens, streams = MODULES[name]
    x = _input(bf, tokens)
    check_parity(loaders.from_torch(module), x, torch_outputs(module, x), batch_first=bf, stream=streams)


def test_causal_conv_front_streams():
    """F.pad + Conv1d and Conv1d + y[..., :-p] fold into causal convs, which stream sample by sample."""
    module = _bn_stats(CausalAmp()).eval()
    x = np.random.default_rng(4).standard_normal((B, STEPS)).astype(np.float32)  # (batch, samples)
    model = loaders.from_torch(module)
    assert [layer.padding for layer in model.layers if hasattr(layer, "padding")] == [(4, 0), (2, 0), (1, 0)]
    check_parity(model, x[..., None], torch_outputs(module, x), batch_first=True, stream=True)


def test_view_and_final_squeeze():
    module = _bn_stats(ViewSqueeze()).eval()
    x = _input(True, False)
    check_parity(loaders.from_torch(module), x, torch_outputs(module, x)[:, None], batch_first=True, stream=True)


def test_traced_module_keeps_training_flags():
    module = LastStepMlp().train()
    loaders.from_torch(module)
    assert all(m.training for m in module.modules())  # traced in eval mode, then restored


def _pt(state_dict):
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    buf.seek(0)
    return buf


@pytest.mark.parametrize(
    "name,layers,overrides",
    [
        ("last_step_mlp", ["lstm", "fc1", "relu", "fc2"], {"return_sequences": False}),
        ("last_step_mlp", ["lstm", "last_step", "fc1", "relu", "fc2"], {}),
        ("pre_head_activation", ["gru", "relu", "fc"], {}),
        ("token_model", ["emb", "lstm", "last_step", "fc", "softmax"], {}),
        ("norm_gelu_head", ["rnn", "norm", "fc1", "gelu_tanh", "fc2"], {}),
    ],
)
def test_state_dict_file_with_layers(name, layers, overrides):
    module = _module(name)
    _, bf, tokens, streams = MODULES[name]
    x = _input(bf, tokens)
    expected = torch_outputs(module, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LoadWarning)  # a LayerNorm's eps: PyTorch's default, as here
        model = loaders.load(_pt(module.state_dict()), layers=layers, **overrides)
    check_parity(model, x, expected, batch_first=bf, stream=streams)


def test_several_recurrent_modules_with_layers():
    torch.manual_seed(2)
    lstm, gru, fc = nn.LSTM(I, 6), nn.GRU(6, 4, bidirectional=True), nn.Linear(8, 2)
    parts = {"enc": lstm, "dec": gru, "out": fc}
    sd = {f"{p}.{k}": v for p, m in parts.items() for k, v in m.state_dict().items()}
    x = _input(False, False)
    with torch.no_grad():
        expected = torch.tanh(fc(gru(lstm(torch.from_numpy(x))[0])[0])).numpy()
    with pytest.raises(ValueError, match=r"several prefixes \('dec', 'enc'\)|several prefixes \('enc', 'dec'\)"):
        read_spec(_pt(sd))
    model = loaders.load(_pt(sd), layers=["enc", "dec", "out", "tanh"])
    check_parity(model, x, expected, stream=False)
    # The same modules saved as a dict of per-module state_dicts.
    nested = {"enc": lstm.state_dict(), "dec": gru.state_dict(), "out": fc.state_dict()}
    with pytest.raises(ValueError, match="several modules") as info:
        read_spec(_pt(nested))
    assert "key=" not in str(info.value)  # never suggest loading one module of several
    check_parity(loaders.load(_pt(nested), layers=["enc", "dec", "out", "tanh"]), x, expected, stream=False)


def test_gru_rnn_and_cells_from_files_and_objects():
    torch.manual_seed(3)
    x = _input(False, False)
    gru = nn.GRU(I, 6, num_layers=2)
    check_parity(loaders.load(_pt(gru.state_dict())), x, torch_outputs(gru, x))
    rnn = nn.RNN(I, 5, nonlinearity="relu")
    with pytest.warns(LoadWarning, match="nonlinearity"):
        assert loaders.load(_pt(rnn.state_dict())).layers[0].activation == "tanh"
    check_parity(loaders.from_torch(rnn), x, torch_outputs(rnn, x))
    for cell in (nn.GRUCell(I, 4), nn.RNNCell(I, 4, nonlinearity="relu")):
        h, outs = None, []
        with torch.no_grad():
            for t in range(x.shape[0]):
                h = cell(torch.from_numpy(x[t]), h)
                outs.append(h.numpy())
        check_parity(loaders.from_torch(cell), x, np.stack(outs))


# --- refusals ------------------------------------------------------------------------------------


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.fc = nn.LSTM(I, I), nn.Linear(I, I)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out) + out


class Cumsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(I, 4)

    def forward(self, x):
        return torch.cumsum(self.lstm(x)[0], dim=0)


class CellLoop(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(I, 4)

    def forward(self, x):
        h = c = torch.zeros(x.shape[1], 4)
        for t in range(x.shape[0]):
            h, c = self.cell(x[t], (h, c))
        return h


class BidirectionalHn(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru, self.fc = nn.GRU(I, 4, bidirectional=True), nn.Linear(4, 1)

    def forward(self, x):
        return self.fc(self.gru(x)[1][-1])


class SoftmaxOverTime(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(I, 4, batch_first=True)

    def forward(self, x):
        return F.softmax(self.lstm(x)[0], dim=1)


class RandomState(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(I, 4)

    def forward(self, x):
        return self.lstm(x, (torch.randn(1, x.size(1), 4), torch.randn(1, x.size(1), 4)))[0]


class ReflectPad(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.lstm = nn.Conv1d(I, 4, 3), nn.LSTM(4, 3, batch_first=True)

    def forward(self, x):
        return self.lstm(self.conv(F.pad(x.permute(0, 2, 1), (2, 0), mode="reflect")).permute(0, 2, 1))[0]


class ViewTime(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.fc = nn.LSTM(I, 4, batch_first=True), nn.Linear(4, 1)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out.reshape(-1, 4))


class PadBeforeLstm(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(I, 3, batch_first=True)

    def forward(self, x):
        return self.lstm(F.pad(x.permute(0, 2, 1), (2, 0)).permute(0, 2, 1))[0]


@pytest.mark.parametrize(
    "module,match",
    [
        (ReflectPad(), "mode='reflect'"),
        (PadBeforeLstm(), "only right before a Conv1d"),
        (ViewTime(), r"reshaping to \(-1, 4\): only x.view\(x.size\(0\), -1\)"),
        (Residual(), "add combines 2 tensors"),
        (Cumsum(), "cumsum"),
        (CellLoop(), "cannot trace forward"),
        (BidirectionalHn(), "h_n of a bidirectional"),
        (SoftmaxOverTime(), "not over the feature axis"),
        (RandomState(), "combines 3 tensors"),
        (nn.Sequential(nn.LSTM(I, 4)), "lstm_out|tuple"),
        (nn.Sequential(nn.Linear(I, 4), nn.Hardtanh()), "Hardtanh"),
        (nn.Linear(I, 3), "on its own"),
        (nn.Sequential(nn.Linear(I, 3), nn.ReLU()), "no nn.LSTM, nn.GRU or nn.RNN"),
    ],
)
def test_trace_refusals_name_the_op(module, match):
    with pytest.raises(ValueError, match=match):
        loaders.from_torch(module)


def test_module_overrides_are_refused():
    with pytest.raises(TypeError, match="forward"):
        loaders.from_torch(LastStepMlp(), head_activation="sigmoid")


def _conv_lstm_state():
    torch.manual_seed(5)
    conv, bn, emb, lstm, fc = nn.Conv1d(3, I, 3), nn.BatchNorm1d(I), nn.Embedding(20, I), nn.LSTM(I, 4), nn.Linear(4, 2)
    parts = {"conv": conv, "bn": bn, "emb": emb, "lstm": lstm, "fc": fc}
    return {f"{p}.{k}": v for p, m in parts.items() for k, v in m.state_dict().items()}


@pytest.mark.parametrize(
    "drop,match",
    [
        (("bn", "emb"), r"'conv.weight'.*: a 3-d weight \(5, 3, 3\), an nn.Conv1d"),
        (("conv", "emb"), r"'bn.weight'.*: a 1-d weight \(5,\) with running statistics, a norm"),
        (
            ("conv", "bn"),
            r"'emb.weight': a \(vocab, dim\) table \(20, 5\) feeding the recurrent input, an nn.Embedding",
        ),
    ],
)
def test_leftover_tensors_are_described_by_shape(drop, match):
    sd = {k: v for k, v in _conv_lstm_state().items() if k.split(".")[0] not in drop}
    with pytest.raises(ValueError, match=match) as info:
        read_spec(_pt(sd))
    assert "layers=" in str(info.value)


def test_layers_refusals():
    sd = _conv_lstm_state()
    with pytest.raises(
        ValueError,
        match=r"stride, padding, dilation and groups are not in a state_dict: name it "
        r"with them in layers=, e.g. 'conv\(stride=1, padding=0\)'",
    ):
        read_spec(_pt(sd), layers=["conv", "bn", "lstm", "fc"])
    with pytest.raises(ValueError, match=r"layers\[1\]: 'lstmm' is neither a key prefix"):
        read_spec(_pt(sd), layers=["emb", "lstmm", "fc"])
    with pytest.raises(ValueError, match="unused"):
        read_spec(_pt(sd), layers=["emb", "lstm", "fc"])
    with pytest.raises(TypeError, match="layers"):
        read_spec(_pt(sd), layers="lstm")
    with pytest.raises(TypeError, match="name the activation in the list"):
        read_spec(_pt(sd), layers=["lstm"], head_activation="relu")
    square = {"emb.weight": torch.randn(4, 4), **{f"lstm.{k}": v for k, v in nn.LSTM(4, 3).state_dict().items()}}
    with pytest.raises(ValueError, match="does not tell which"):
        read_spec(_pt(square), layers=["emb", "lstm"])


def test_checkpoint_with_one_state_dict_suggests_its_key():
    sd = nn.LSTM(I, 4).state_dict()
    with pytest.raises(ValueError, match="key='model'"):
        read_spec(_pt({"model": sd, "epoch": torch.tensor(3)}))


def test_git_lfs_pointer_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"ab" * 32 + b"\nsize 123456\n")
    for load in (loaders.load, loaders.from_keras):
        with pytest.raises(ValueError, match="git lfs pull"):
            load(path)
