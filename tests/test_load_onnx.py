"""ONNX files exported from live torch modules by both exporters (TorchScript and dynamo) load and give
ONNX Runtime's own outputs, in ``predict`` and step by step; the loader needs neither torch, onnx nor
onnxruntime (checked in a child process where importing them fails).
"""

import numpy as np
import pytest
import torch
from onnx_helpers import EXPORTERS, TOL, export, fit_input_shape, max_err, ort_session, stream_outputs
from test_load_noframework import run_without

import fastlstm
from fastlstm.layers import GRULayer, LastStep, RNNLayer
from fastlstm.loaders.onnx_files import read_onnx, read_onnx_file
from loader_helpers import torch_one_thread  # noqa: F401 (autouse fixture)

I, H, O = 3, 8, 2


class Net(torch.nn.Module):
    """A recurrent stack plus a Linear head, ending the ways published models do."""

    def __init__(self, rnn, end="seq", act=None, batch_first=True):
        super().__init__()
        self.rnn, self.end, self.act, self.bf = rnn, end, act, batch_first
        width = rnn.hidden_size * (2 if rnn.bidirectional else 1)
        self.fc = torch.nn.Linear(width, O)

    def forward(self, x):
        y, h = self.rnn(x)
        if isinstance(h, tuple):
            h = h[0]
        if self.end == "last":  # out[:, -1]
            y = y[:, -1] if self.bf else y[-1]
        elif self.end == "h_n":  # the last layer's final h
            y = torch.cat([h[-2], h[-1]], dim=1) if self.rnn.bidirectional else h[-1]
        y = self.fc(y)
        return self.act(y) if self.act is not None else y


class ConvFront(torch.nn.Module):
    """Conv1d -> ReLU -> MaxPool1d -> LSTM -> out[:, -1] -> Linear (audio/sensor models)."""

    def __init__(self):
        super().__init__()
        self.conv, self.pool = torch.nn.Conv1d(I, 6, 3, padding=1), torch.nn.MaxPool1d(2)
        self.rnn, self.fc = torch.nn.LSTM(6, H, batch_first=True), torch.nn.Linear(H, O)
        self.bf = True

    def forward(self, x):
        z = self.pool(torch.relu(self.conv(x.transpose(1, 2)))).transpose(1, 2)
        return self.fc(self.rnn(z)[0][:, -1])


class CausalConv(torch.nn.Module):
    """The two ways torch code writes a causal convolution before an LSTM: F.pad then Conv1d, or a padded
    Conv1d whose last padded steps are cropped.  Both stream."""

    def __init__(self, crop):
        super().__init__()
        self.crop = crop
        self.conv = torch.nn.Conv1d(I, 6, 3, dilation=2, padding=4 if crop else 0)
        self.rnn, self.fc = torch.nn.LSTM(6, H, batch_first=True), torch.nn.Linear(H, O)
        self.bf = True

    def forward(self, x):
        z = x.transpose(1, 2)
        z = self.conv(z)[:, :, :-4] if self.crop else self.conv(torch.nn.functional.pad(z, (4, 0)))
        return self.fc(self.rnn(torch.tanh(z).transpose(1, 2))[0])


class Tokens(torch.nn.Module):
    """Embedding -> GRU -> Linear on integer token ids."""

    def __init__(self):
        super().__init__()
        self.emb, self.rnn, self.fc = (
            torch.nn.Embedding(20, 5),
            torch.nn.GRU(5, H, batch_first=True),
            torch.nn.Linear(H, O),
        )
        self.bf = True

    def forward(self, x):
        return self.fc(self.rnn(self.emb(x))[0])


class MLPHead(torch.nn.Module):
    """LSTM -> last step -> Linear -> GELU -> LayerNorm -> BatchNorm1d -> LeakyReLU -> Linear -> softmax."""

    def __init__(self):
        super().__init__()
        self.rnn, self.f1, self.f2 = torch.nn.LSTM(I, H, batch_first=True), torch.nn.Linear(H, 6), torch.nn.Linear(6, O)
        self.ln, self.bn = torch.nn.LayerNorm(6), torch.nn.BatchNorm1d(6)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
        self.bf = True

    def forward(self, x):
        z = torch.nn.functional.gelu(self.f1(self.rnn(x)[0][:, -1]))
        z = torch.nn.functional.leaky_relu(self.bn(self.ln(z)), 0.1)
        return torch.softmax(self.f2(z), -1)


#: name -> (module factory, whether the input is integer token ids)
CASES = {
    "lstm_last_sigmoid": (lambda: Net(torch.nn.LSTM(I, H, 2, batch_first=True), "last", torch.nn.Sigmoid()), 0),
    "lstm_seq_time_major": (lambda: Net(torch.nn.LSTM(I, H, batch_first=False), "seq", batch_first=False), 0),
    "bilstm_seq": (lambda: Net(torch.nn.LSTM(I, H, 2, batch_first=True, bidirectional=True), "seq"), 0),
    "bilstm_last": (lambda: Net(torch.nn.LSTM(I, H, batch_first=True, bidirectional=True), "last"), 0),
    "bilstm_h_n": (lambda: Net(torch.nn.LSTM(I, H, batch_first=True, bidirectional=True), "h_n", torch.nn.Tanh()), 0),
    "lstm_h_n_softmax": (lambda: Net(torch.nn.LSTM(I, H, 2, batch_first=True), "h_n", torch.nn.Softmax(-1)), 0),
    "lstm_nobias_relu": (lambda: Net(torch.nn.LSTM(I, H, batch_first=True, bias=False), "seq", torch.nn.ReLU()), 0),
    "gru_stack_last": (lambda: Net(torch.nn.GRU(I, H, 2, batch_first=True), "last", torch.nn.Sigmoid()), 0),
    "bigru_seq": (lambda: Net(torch.nn.GRU(I, H, batch_first=True, bidirectional=True), "seq"), 0),
    "gru_h_n": (lambda: Net(torch.nn.GRU(I, H, batch_first=True), "h_n"), 0),
    "rnn_tanh_seq": (lambda: Net(torch.nn.RNN(I, H, 2, batch_first=True), "seq"), 0),
    "conv_pool_lstm": (ConvFront, 0),
    "causal_pad_conv_lstm": (lambda: CausalConv(crop=False), 0),
    "causal_crop_conv_lstm": (lambda: CausalConv(crop=True), 0),
    "embedding_gru": (Tokens, 1),
    "lstm_mlp_head": (MLPHead, 0),
}
#: torch's dynamo exporter unrolls nn.RNN into per-step nodes (refused, see test_dynamo_unrolled_rnn_refused).
UNROLLED = {("rnn_tanh_seq", "dynamo")}


class Step(torch.nn.Module):
    """The T=1 streaming graph ONNX Runtime users write: state in, state out."""

    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.LSTM(I, H, 2, batch_first=True)
        self.fc = torch.nn.Linear(H, O)

    def forward(self, x, h0, c0):
        y, (h, c) = self.rnn(x, (h0, c0))
        return self.fc(y), h, c


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every case through both exporters: {(case, exporter): (path, x, ORT output, batch_first)}."""
    root = tmp_path_factory.mktemp("onnx_exports")
    rng = np.random.default_rng(0)
    out = {}
    for name, (make, tokens) in CASES.items():
        torch.manual_seed(len(name))
        net = make().eval()
        bf = net.bf
        for exporter in EXPORTERS:
            if (name, exporter) in UNROLLED:
                continue
            folder = root / f"{name}_{exporter}"
            folder.mkdir()
            path = folder / "model.onnx"
            shape = (2, 6) if tokens else (2, 6, I)
            dummy = torch.randint(0, 20, shape) if tokens else torch.randn(shape if bf else (6, 2, I))
            axes = {0: "B", 1: "T"} if bf else {0: "T", 1: "B"}
            export(net, (dummy,), path, exporter, ["x"], ["y"], {"x": axes})
            sess = ort_session(path)
            shape = fit_input_shape(sess, ((3, 120) if tokens else (3, 120, I)) if bf else (120, 3, I))
            x = rng.integers(0, 20, shape) if tokens else rng.standard_normal(shape).astype(np.float32)
            out[name, exporter] = (path, x, sess.run(None, {"x": x})[0], bf)
    return out


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(CASES))
def test_torch_export_matches_onnxruntime(exported, name, exporter):
    if (name, exporter) in UNROLLED:
        return
    path, x, want, bf = exported[name, exporter]
    model = fastlstm.load(path)
    got = model.predict(x, batch_first=bf)
    assert max_err(got, want) <= TOL
    if not model.streamable:  # a bidirectional layer needs the whole sequence
        with pytest.raises(ValueError, match="cannot stream"):
            model.stream()
        return
    steps = stream_outputs(model, x, bf)  # (T, B, O), one step per call
    if model.return_sequences:
        assert max_err(np.swapaxes(steps, 0, 1) if bf else steps, want) <= TOL
    else:
        assert max_err(steps[-1], want) <= TOL


def test_read_reports_layouts(exported):
    path, _, _, _ = exported["lstm_last_sigmoid", "torchscript"]
    r = read_onnx_file(path)
    assert r.match.input_axes == ("B", "T", "F") and r.match.output_axes == ("B", "F")
    assert r.match.batch_first
    assert isinstance(r.chain[2], LastStep) and not r.chain[2].final_state
    path, _, _, _ = exported["bilstm_h_n", "dynamo"]
    r = read_onnx(path.read_bytes(), str(path), str(path.parent))
    assert r.chain[1] == LastStep(final_state=True)  # cat(h_n[-2], h_n[-1]): each direction's final h


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_streaming_graph_with_state_io(tmp_path, exporter):
    torch.manual_seed(1)
    net = Step().eval()
    B = 3
    args = (torch.randn(B, 1, I), torch.zeros(2, B, H), torch.zeros(2, B, H))
    path = tmp_path / "step.onnx"
    export(net, args, path, exporter, ["x", "h0", "c0"], ["y", "hn", "cn"], {})
    r = read_onnx(path.read_bytes(), str(path), str(tmp_path))
    assert r.match.state_inputs == {"h0": [(0, 0, "h"), (1, 0, "h")], "c0": [(0, 0, "c"), (1, 0, "c")]}
    assert r.match.state_outputs == {"hn": [(0, 0, "h"), (1, 0, "h")], "cn": [(0, 0, "c"), (1, 0, "c")]}
    model = fastlstm.load(path)
    assert model.streamable
    sess = ort_session(path)
    xs = np.random.default_rng(2).standard_normal((200, B, 1, I)).astype(np.float32)
    h = np.zeros((2, B, H), np.float32)
    c = h.copy()
    stream = model.stream(batch_size=B)
    for t in range(len(xs)):
        y, h, c = sess.run(None, {"x": xs[t], "h0": h, "c0": c})
        assert max_err(stream.step(xs[t, :, 0]), y) <= TOL
    # the whole run at once equals the steps
    assert max_err(model.predict(xs[:, :, 0])[-1], y) <= TOL


# --- GRU and RNN: the mapping, checked against ONNX Runtime through a float64 model of the layer classes ---


def _sig(z):
    return 0.5 * (1 + np.tanh(0.5 * z))


_ACT = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0), "sigmoid": _sig}


def _layer_forward(layer, x):
    """Float64 forward of one GRULayer/RNNLayer over x (T, B, I), written from the classes' docstrings."""
    outs = []
    for d, w in enumerate(layer.directions):
        Wi, Wh = w.weight_ih.astype(np.float64), w.weight_hh.astype(np.float64)
        bi = np.zeros(Wi.shape[0]) if w.bias_ih is None else w.bias_ih.astype(np.float64)
        bh = np.zeros(Wi.shape[0]) if w.bias_hh is None else w.bias_hh.astype(np.float64)
        h = np.zeros((x.shape[1], Wh.shape[1]))
        seq = x[::-1] if (d == 1 or layer.go_backwards) else x
        ys = []
        for xt in seq:
            gi, gh = xt @ Wi.T + bi, h @ Wh.T + bh
            if isinstance(layer, RNNLayer):
                h = _ACT[layer.activation](gi + gh)
            else:
                Hn = h.shape[1]
                ga, act = _ACT[layer.recurrent_activation], _ACT[layer.activation]
                r = ga(gi[:, :Hn] + gh[:, :Hn])
                z = ga(gi[:, Hn : 2 * Hn] + gh[:, Hn : 2 * Hn])
                if layer.reset_after:
                    n = act(gi[:, 2 * Hn :] + r * gh[:, 2 * Hn :])
                else:
                    n = act(gi[:, 2 * Hn :] + (r * h) @ Wh[2 * Hn :].T + bh[2 * Hn :])
                h = (1 - z) * n + z * h
            ys.append(h)
        ys = np.stack(ys)
        outs.append(ys[::-1] if d == 1 else ys)
    return np.concatenate(outs, axis=-1)


def chain_forward(chain, x):
    """Float64 forward of a chain of recurrent layers, LastStep and Dense (time-major x)."""
    y = x.astype(np.float64)
    for layer in chain:
        if isinstance(layer, (GRULayer, RNNLayer)):
            y = _layer_forward(layer, y)
        elif isinstance(layer, LastStep):
            y = y[-1]
        else:
            y = y @ layer.weight.T.astype(np.float64) + (0 if layer.bias is None else layer.bias)
            assert layer.activation == "linear"
    return y


def test_dynamo_unrolled_rnn_refused(tmp_path):
    """torch's dynamo exporter writes nn.RNN as per-step MatMul/Add/Tanh nodes: refused, saying why."""
    path = tmp_path / "m.onnx"
    export(
        CASES["rnn_tanh_seq"][0]().eval(),
        (torch.randn(2, 6, I),),
        path,
        "dynamo",
        ["x"],
        ["y"],
        {"x": {0: "B", 1: "T"}},
    )
    with pytest.raises(ValueError, match="unrolled step by step"):
        fastlstm.load(path)


# --- no framework at load time ---------------------------------------------------------------

BODY = """
import fastlstm
for path, bf in {cases!r}:
    x, want = np.load(path + ".x.npy"), np.load(path + ".y.npy")
    model = fastlstm.load(path)
    got = model.predict(x, batch_first=bf)
    err = float(np.max(np.abs(got - want.reshape(got.shape))))
    if model.streamable:   # and one step per call
        xt = np.swapaxes(x, 0, 1) if bf else x
        stream = model.stream(batch_size=xt.shape[1])
        steps = np.stack([stream.step(xt[t]) for t in range(xt.shape[0])])
        if model.return_sequences:
            steps = np.swapaxes(steps, 0, 1) if bf else steps
        else:
            steps = steps[-1]
        err = max(err, float(np.max(np.abs(steps - want.reshape(steps.shape)))))
    assert err <= {tol}, (path, err)
    print(path, "ok", err)
"""


def test_onnx_loads_without_torch_onnx_or_onnxruntime(exported, tmp_path):
    blocked = ("torch", "onnx", "onnxruntime", "onnxscript", "keras", "tensorflow", "jax")
    cases = []
    for path, x, want, bf in exported.values():
        np.save(f"{path}.x.npy", x)
        np.save(f"{path}.y.npy", want)
        cases.append((str(path), bf))
    run_without(blocked, BODY.format(cases=cases, tol=TOL), len(cases), tmp_path)
