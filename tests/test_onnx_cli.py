"""The command line on ONNX files: ``fastlstm bench model.onnx`` runs ONNX Runtime and OpenVINO on that very
file next to fastlstm (stepping a streaming graph through its own state inputs), ``info`` and ``convert``
read it like any other format."""

import json

import numpy as np
import pytest
import torch
from onnx_helpers import export
from test_cli import QUICK, run_cli

import fastlstm

I, H = 4, 16


class Seq(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.fc = torch.nn.LSTM(I, H, 2), torch.nn.Linear(H, 2)

    def forward(self, x):
        return self.fc(self.rnn(x)[0])


class Step(torch.nn.Module):
    def __init__(self, seq):
        super().__init__()
        self.rnn, self.fc = seq.rnn, seq.fc

    def forward(self, x, h0, c0):
        y, (h, c) = self.rnn(x, (h0, c0))
        return self.fc(y), h, c


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("onnx_cli")
    seq = Seq().eval()
    export(seq, (torch.randn(5, 2, I),), root / "seq.onnx", "torchscript", ["x"], ["y"], {"x": {0: "T", 1: "B"}})
    names = ["x", "h0", "c0", "y", "hn", "cn"]
    export(
        Step(seq).eval(),
        (torch.randn(1, 2, I), torch.zeros(2, 2, H), torch.zeros(2, 2, H)),
        root / "step.onnx",
        "torchscript",
        names[:3],
        names[3:],
        {n: {1: "B"} for n in names},
    )
    return root


def test_bench_steps_the_users_own_streaming_graph(onnx_files, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli("bench", onnx_files / "step.onnx", *QUICK, "--json", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["model"]["format"] == "ONNX" and doc["parity_ok"]
    for engine in ("onnxruntime", "openvino"):
        assert doc["frameworks"][engine]["status"] == "ran", doc["frameworks"][engine]
        assert "own state inputs" in doc["frameworks"][engine]["note"]
        assert all(engine in w["median_s"] for w in doc["workloads"])
    assert "ONNX Runtime runs MODEL itself" in proc.stdout


def test_bench_sequence_graph_runs_the_sequence_row(onnx_files, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli("bench", onnx_files / "seq.onnx", *QUICK, "--frameworks", "onnxruntime", "--json", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    rows = {w["key"]: w for w in doc["workloads"]}
    assert "onnxruntime" in rows["sequence"]["median_s"]
    assert "onnxruntime" not in rows["step"]["median_s"]  # no state inputs: ORT cannot carry state
    assert doc["parity"]["onnxruntime"]["sequence"] < 1e-5


def test_other_models_run_the_harness_export_in_openvino(tmp_path):
    # not an ONNX file: OpenVINO runs the harness's own export of the model, with no file note
    proc = run_cli("bench", *QUICK, "--frameworks", "openvino", "--json", tmp_path / "b.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    status = json.loads((tmp_path / "b.json").read_text())["frameworks"]["openvino"]
    assert status["status"] == "ran" and "note" not in status
    assert "runs MODEL itself" not in proc.stdout


def test_info_and_convert(onnx_files, tmp_path):
    proc = run_cli("info", onnx_files / "seq.onnx", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ONNX" in proc.stdout and "LSTM(4 -> 16)" in proc.stdout
    out = tmp_path / "m.fastlstm"
    proc = run_cli("convert", onnx_files / "seq.onnx", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    x = np.random.default_rng(0).standard_normal((30, 2, I)).astype(np.float32)
    assert np.array_equal(fastlstm.load(out).predict(x), fastlstm.load(onnx_files / "seq.onnx").predict(x))
