"""ONNX files exported from live torch modules by both exporters (TorchScript and dynamo) load and give
ONNX Runtime's own outputs, in ``predict`` and step by step; the loader needs neither torch, onnx nor
onnxruntime (checked in a child process where importing them fails).
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import fastlstm
from fastlstm.layers import GRULayer, LastStep, RNNLayer
from fastlstm.loaders.onnx_files import read_onnx
from loader_helpers import torch_one_thread  # noqa: F401 (autouse fixture)
from onnx_helpers import EXPORTERS, TOL, export, fit_input_shape, max_err, ort_session, stream_outputs
from test_load_noframework import SITECUSTOMIZE

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
        if self.end == "last":            # out[:, -1]
            y = y[:, -1] if self.bf else y[-1]
        elif self.end == "h_n":           # the last layer's final h
            y = torch.cat([h[-2], h[-1]], dim=1) if self.rnn.bidirectional else h[-1]
        y = self.fc(y)
        return self.act(y) if self.act is not None else y


def _lstm_cases():
    return {
        "lstm_last_sigmoid": lambda: Net(torch.nn.LSTM(I, H, 2, batch_first=True), "last", torch.nn.Sigmoid()),
        "lstm_seq_time_major": lambda: Net(torch.nn.LSTM(I, H, batch_first=False), "seq", batch_first=False),
        "bilstm_seq": lambda: Net(torch.nn.LSTM(I, H, 2, batch_first=True, bidirectional=True), "seq"),
        "bilstm_h_n": lambda: Net(torch.nn.LSTM(I, H, batch_first=True, bidirectional=True), "h_n",
                                  torch.nn.Tanh()),
        "lstm_h_n_softmax": lambda: Net(torch.nn.LSTM(I, H, 2, batch_first=True), "h_n", torch.nn.Softmax(-1)),
        "lstm_nobias_relu": lambda: Net(torch.nn.LSTM(I, H, batch_first=True, bias=False), "seq", torch.nn.ReLU()),
    }


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
    """Every LSTM case through both exporters: {(case, exporter): (path, x, ORT output, batch_first)}."""
    root = tmp_path_factory.mktemp("onnx_exports")
    rng = np.random.default_rng(0)
    out = {}
    for name, make in _lstm_cases().items():
        torch.manual_seed(len(name))
        net = make().eval()
        bf = net.bf
        for exporter in EXPORTERS:
            folder = root / f"{name}_{exporter}"
            folder.mkdir()
            path = folder / "model.onnx"
            dummy = torch.randn(2, 5, I) if bf else torch.randn(5, 2, I)
            axes = {0: "B", 1: "T"} if bf else {0: "T", 1: "B"}
            export(net, (dummy,), path, exporter, ["x"], ["y"], {"x": axes})
            sess = ort_session(path)
            shape = fit_input_shape(sess, (3, 120, I) if bf else (120, 3, I))
            x = rng.standard_normal(shape).astype(np.float32)
            out[name, exporter] = (path, x, sess.run(None, {"x": x})[0], bf)
    return out


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(_lstm_cases()))
def test_torch_export_matches_onnxruntime(exported, name, exporter):
    path, x, want, bf = exported[name, exporter]
    model = fastlstm.load(path)
    got = model.predict(x, batch_first=bf)
    assert max_err(got, want) <= TOL
    if not model.streamable:                  # a bidirectional layer needs the whole sequence
        with pytest.raises(ValueError, match="cannot stream"):
            model.stream()
        return
    steps = stream_outputs(model, x, bf)      # (T, B, O), one step per call
    if model.return_sequences:
        assert max_err(np.swapaxes(steps, 0, 1) if bf else steps, want) <= TOL
    else:
        assert max_err(steps[-1], want) <= TOL


def test_read_reports_layouts(exported):
    path, _, _, _ = exported["lstm_last_sigmoid", "torchscript"]
    r = read_onnx(path.read_bytes(), str(path), str(path.parent))
    assert r.match.input_axes == ("B", "T", "F") and r.match.output_axes == ("B", "F")
    assert r.match.batch_first
    assert isinstance(r.chain[2], LastStep) and not r.chain[2].final_state
    path, _, _, _ = exported["bilstm_h_n", "dynamo"]
    r = read_onnx(path.read_bytes(), str(path), str(path.parent))
    assert r.chain[1] == LastStep(final_state=True)       # cat(h_n[-2], h_n[-1]): each direction's final h


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
                z = ga(gi[:, Hn:2 * Hn] + gh[:, Hn:2 * Hn])
                if layer.reset_after:
                    n = act(gi[:, 2 * Hn:] + r * gh[:, 2 * Hn:])
                else:
                    n = act(gi[:, 2 * Hn:] + (r * h) @ Wh[2 * Hn:].T + bh[2 * Hn:])
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


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name, make", [
    ("gru_stack_last", lambda: Net(torch.nn.GRU(I, H, 2, batch_first=True), "last")),
    ("bigru_seq", lambda: Net(torch.nn.GRU(I, H, batch_first=True, bidirectional=True), "seq")),
    ("rnn_relu", lambda: Net(torch.nn.RNN(I, H, batch_first=True, nonlinearity="relu"), "seq")),
])
def test_gru_rnn_exports_map_exactly(tmp_path, name, make, exporter):
    torch.manual_seed(3)
    net = make().eval()
    path = tmp_path / "m.onnx"
    export(net, (torch.randn(2, 5, I),), path, exporter, ["x"], ["y"], {"x": {0: "B", 1: "T"}})
    if exporter == "dynamo" and name == "rnn_relu":
        # torch's dynamo exporter unrolls nn.RNN into per-step MatMul/Relu nodes: refused by name
        with pytest.raises(ValueError, match="unrolled step by step"):
            fastlstm.load(path)
        return
    sess = ort_session(path)
    x = np.random.default_rng(4).standard_normal(fit_input_shape(sess, (3, 60, I))).astype(np.float32)
    want = sess.run(None, {"x": x})[0]
    r = read_onnx(path.read_bytes(), str(path), str(tmp_path))
    kinds = [type(layer).__name__ for layer in r.chain]
    assert kinds[0] == ("RNNLayer" if name.startswith("rnn") else "GRULayer")
    assert all(layer.reset_after for layer in r.chain if isinstance(layer, GRULayer))
    got = chain_forward(r.chain, np.swapaxes(x, 0, 1))
    assert max_err(np.swapaxes(got, 0, 1) if got.ndim == 3 else got, want) <= TOL


# --- no framework at load time ---------------------------------------------------------------

CHILD = """
import sys
import numpy as np
for name in {blocked!r}:
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"the import block does not work: {{name}} imported")
import fastlstm
for path, bf in {cases!r}:
    x, want = np.load(path + ".x.npy"), np.load(path + ".y.npy")
    model = fastlstm.load(path)
    err = float(np.max(np.abs(model.predict(x, batch_first=bf) - want.reshape(model.predict(x, batch_first=bf).shape))))
    assert err <= {tol}, (path, err)
    print(path, "ok", err)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r})
assert not leaked, leaked
print("ALL OK")
"""


def test_onnx_loads_without_torch_onnx_or_onnxruntime(exported, tmp_path):
    blocked = ("torch", "onnx", "onnxruntime", "onnxscript", "keras", "tensorflow", "jax")
    cases = []
    for (name, exporter), (path, x, want, bf) in exported.items():
        np.save(f"{path}.x.npy", x)
        np.save(f"{path}.y.npy", want)
        cases.append((str(path), bf))
    block_dir = tmp_path / "block"
    block_dir.mkdir()
    (block_dir / "sitecustomize.py").write_text(SITECUSTOMIZE.replace(
        "BLOCKED = (", f"BLOCKED = {blocked!r} or (", 1))
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD.format(blocked=blocked, cases=cases, tol=TOL)))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(fastlstm.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(block_dir), repo] + [p for p in sys.path if p])
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(" ok ") == len(cases) and "ALL OK" in proc.stdout
