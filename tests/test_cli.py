"""The ``fastlstm`` command end to end, each run in a subprocess (``python -m fastlstm``).

Checked against things fastlstm did not compute: parameter counts and outputs from
the torch module that wrote the file, the naive baseline recomputed from the CSV
with the csv module, and the bundled model's forecasts recomputed in PyTorch from
the shipped weights.  Benchmarks run with --quick and no assertion on speed, only
on the report being well formed and the parity figures.
"""

import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastlstm import data  # noqa: E402

COMMANDS = ("bench", "info", "convert", "demo")
# The smallest honest bench run.  One thread: on a busy 2-core CI box, 2-thread torch and
# OpenMP spin-wait on each other and a quick run can take ten times longer.
QUICK = ("--quick", "--seq-len", "50", "--streams", "8", "--threads", "1")


def run_cli(*args, cwd, pythonpath=None, timeout=180):
    """Run ``python -m fastlstm *args`` in ``cwd`` (not the repo root, so the installed package
    is what runs); returns the CompletedProcess."""
    env = dict(os.environ, KERAS_BACKEND="torch")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run(
        [sys.executable, "-m", "fastlstm", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Net(torch.nn.Module):
    """A small model as a user would write it: 2-layer LSTM, linear head, tanh."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(4, 16, num_layers=2)
        self.fc = torch.nn.Linear(16, 2)

    def forward(self, x):
        return torch.tanh(self.fc(self.lstm(x)[0]))


@pytest.fixture(scope="module")
def torch_file(tmp_path_factory):
    """``(path, module)``: a state_dict saved with torch.save, and the module that wrote it."""
    torch.manual_seed(7)
    net = Net().eval()
    path = tmp_path_factory.mktemp("torchmodel") / "net.pt"
    torch.save(net.state_dict(), path)
    return path, net


def import_blocker(folder, modules):
    """A folder whose sitecustomize.py makes ``modules`` unimportable (put it on PYTHONPATH):
    to the program under test they look not installed."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        textwrap.dedent(f"""
        import sys
        BLOCKED = {set(modules)!r}
        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
                return None
        sys.meta_path.insert(0, Blocker())
    """)
    )
    return folder


def one_line_error(proc, command):
    """The failure contract: exit 1, a single line on stderr naming the command, no traceback."""
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"fastlstm {command}: error: ")
    assert "Traceback" not in proc.stderr
    return lines[0]


# --------------------------------------------------------------------------- usage


@pytest.mark.parametrize("command", ("",) + COMMANDS)
def test_help(command, tmp_path):
    proc = run_cli(*([command] if command else []), "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: fastlstm")


@pytest.mark.parametrize(
    "args", [(), ("nosuch",), ("bench", "--threads", "0"), ("convert", "only-one-arg"), ("bench", "--streams", "x")]
)
def test_usage_errors_exit_2(args, tmp_path):
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr


def test_console_script_is_declared():
    """pyproject.toml must install the ``fastlstm`` command pointing at the same main()."""
    tomllib = pytest.importorskip("tomllib")
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")
    if not os.path.exists(path):
        pytest.skip("not running from a source checkout")
    with open(path, "rb") as f:
        scripts = tomllib.load(f)["project"].get("scripts", {})
    assert scripts.get("fastlstm") == "fastlstm.cli:main"


# --------------------------------------------------------------------------- info / convert


def test_info_bundled(tmp_path):
    proc = run_cli("info", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "bundled model" in proc.stdout
    assert "can stream: yes" in proc.stdout
    assert "LSTM(3 -> 64)" in proc.stdout
    assert "path in use" in proc.stdout and "fastlstm threads" in proc.stdout  # show_config's report


def test_info_torch_file(torch_file, tmp_path):
    path, net = torch_file
    proc = run_cli("info", path, "--head-activation", "tanh", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    n = sum(p.numel() for p in net.parameters())  # counted by torch, not by fastlstm
    assert f"parameters: {n:,};" in proc.stdout
    assert f"weight memory {4 * n / 1024:,.1f} KiB" in proc.stdout
    assert "PyTorch state_dict" in proc.stdout
    assert "activation='tanh'" in proc.stdout
    assert proc.stderr == ""  # the activation was given, so no warning


def test_info_warns_about_an_assumed_head_activation(torch_file, tmp_path):
    proc = run_cli("info", torch_file[0], cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stderr.startswith("warning: ") and "head_activation" in proc.stderr


def test_convert_torch_file(torch_file, tmp_path):
    import fastlstm.loaders

    path, net = torch_file
    out = tmp_path / "net.safetensors"
    proc = run_cli("convert", path, out, "--head-activation", "tanh", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "read back and checked" in proc.stdout
    model = fastlstm.loaders.load(out)  # the converted file, against the torch module itself
    x = np.random.default_rng(3).standard_normal((40, 3, 4)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x), want, atol=1e-5, rtol=0)


class TwoHeads(torch.nn.Module):
    """A model ``load`` can read only with layers=: an LSTM, then fc2(relu(fc1(out[-1])))."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(4, 8)
        self.fc1, self.fc2 = torch.nn.Linear(8, 5), torch.nn.Linear(5, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.lstm(x)[0][-1])))


def test_load_options_reach_every_command(tmp_path):
    """--key, --layers and --return-sequences: what fastlstm.load reads, info and convert read too."""
    import fastlstm.loaders

    torch.manual_seed(3)
    net = TwoHeads().eval()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": net.state_dict(), "epoch": torch.tensor(4)}, path)
    opts = ("--key", "model", "--layers", "lstm,fc1,relu,fc2", "--no-return-sequences")
    proc = run_cli("info", path, *opts, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "returns the last step only" in proc.stdout
    assert f"parameters: {sum(p.numel() for p in net.parameters()):,};" in proc.stdout
    out = tmp_path / "two.safetensors"
    proc = run_cli("convert", path, out, *opts, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    x = np.random.default_rng(3).standard_normal((30, 3, 4)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(fastlstm.loaders.load(out).predict(x), want, atol=1e-5, rtol=0)
    proc = run_cli("info", path, "--key", "model", cwd=tmp_path)  # without --layers: refused, saying what to pass
    assert proc.returncode == 1 and "layers=" in proc.stderr
    proc = run_cli("info", "--layers", "lstm,fc", cwd=tmp_path)  # the bundled model is a fastlstm file
    assert proc.returncode == 1 and "--layers apply to PyTorch files only" in proc.stderr
    proc = run_cli("info", path, "--layers", "lstm,,fc", cwd=tmp_path)
    assert proc.returncode == 2 and "comma-separated" in proc.stderr


def test_convert_bundled_to_itself_is_refused(tmp_path):
    proc = run_cli("convert", data.MODEL_PATH, data.MODEL_PATH, cwd=tmp_path)
    assert "is the input file" in one_line_error(proc, "convert")


# --------------------------------------------------------------------------- bad files


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    with open(data.MODEL_PATH, "rb") as f:
        blob = f.read()
    (d / "truncated.safetensors").write_bytes(blob[: len(blob) // 3])
    (d / "garbage.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (d / "empty.keras").write_bytes(b"")
    return {
        "missing": d / "does-not-exist.pt",
        "truncated": d / "truncated.safetensors",
        "garbage": d / "garbage.pt",
        "empty": d / "empty.keras",
        "directory": d,
    }


# Every kind of bad file through info; each command with some (they share one loading path).
BAD_CASES = [("info", k) for k in ("missing", "truncated", "garbage", "empty", "directory")] + [
    ("bench", "missing"),
    ("bench", "truncated"),
    ("convert", "garbage"),
    ("convert", "directory"),
]


@pytest.mark.parametrize("command, kind", BAD_CASES)
def test_bad_model_file_is_one_line_exit_1(command, kind, bad_files, tmp_path):
    path = bad_files[kind]
    extra = [tmp_path / "out.safetensors"] if command == "convert" else []
    proc = run_cli(command, path, *extra, cwd=tmp_path)
    line = one_line_error(proc, command)
    assert str(path) in line or os.path.basename(str(path)) in line
    assert not (tmp_path / "out.safetensors").exists()


def test_debug_shows_the_traceback(bad_files, tmp_path):
    proc = run_cli("info", bad_files["garbage"], "--debug", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr


# --------------------------------------------------------------------------- bench


def check_bench_json(doc, frameworks_ran):
    from fastlstm.harness import PEERS

    assert doc["parity_ok"] is True
    for name in frameworks_ran:
        assert doc["frameworks"][name]["status"] == "ran"
        assert 0 <= max(doc["parity"][name].values()) < max(1e-5, PEERS[name].tolerance)
    rows = doc["workloads"]
    assert [r["key"] for r in rows] == ["step", "sequence", "streams_8"]
    for row in rows:
        assert set(row["median_s"]) == {"fastlstm", *frameworks_ran}
        assert all(t > 0 for t in row["median_s"].values())
        assert all(r > 0 for r in row["speedup"].values())
    return doc


def test_bench_bundled_quick_json(tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "speed.png"
    try:
        import matplotlib  # noqa: F401  (optional: the plot is checked where it is installed)

        plot = ["--plot", png]
    except ImportError:
        plot = []
    proc = run_cli("bench", *QUICK, "--json", out, *plot, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    from fastlstm.harness import PEERS, missing_modules

    auto = [n for n, peer in PEERS.items() if peer.auto and not missing_modules(n)]  # every installed peer
    assert {"torch", "onnxruntime"} <= set(auto)
    doc = check_bench_json(json.loads(out.read_text()), auto)
    assert doc["model"]["bundled"] is True
    assert doc["frameworks"]["keras"]["status"] == "skipped"  # not a Keras file
    assert "PyTorch" in proc.stdout and "ONNX Runtime" in proc.stdout and "parity" in proc.stdout
    if plot:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_plot_without_matplotlib(tmp_path):
    """matplotlib is optional: without it --plot is refused clearly, before any measuring."""
    hook = import_blocker(tmp_path / "hook", ["matplotlib"])
    proc = run_cli("bench", *QUICK, "--plot", tmp_path / "speed.png", cwd=tmp_path, pythonpath=hook)
    assert "pip install matplotlib" in one_line_error(proc, "bench")
    assert proc.stdout == ""


def test_bench_torch_file_quick_json(torch_file, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli(
        "bench",
        torch_file[0],
        "--head-activation",
        "tanh",
        *QUICK,
        "--json",
        out,
        "--frameworks",
        "torch,onnxruntime",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    doc = check_bench_json(json.loads(out.read_text()), ["torch", "onnxruntime"])
    assert doc["settings"]["threads"] == 1
    assert doc["settings"]["mode"] == "quick"
    assert doc["model"]["parameters"] == sum(p.numel() for p in torch_file[1].parameters())


def test_bench_reports_missing_frameworks_as_skipped(tmp_path):
    """Block torch and onnxruntime at import (as if not installed): bench still runs fastlstm."""
    hook = import_blocker(tmp_path / "hook", ["torch", "onnxruntime", "onnx", "keras"])
    out = tmp_path / "bench.json"
    proc = run_cli(
        "bench", *QUICK, "--frameworks", "torch,onnxruntime,keras", "--json", out, cwd=tmp_path, pythonpath=hook
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    for name, pip in (
        ("torch", "pip install torch"),
        ("onnxruntime", "pip install onnxruntime"),
        ("keras", "pip install keras"),
    ):
        st = doc["frameworks"][name]
        assert st["status"] == "skipped" and "not installed" in st["reason"]
        assert st["install"].startswith(pip)
    assert "skipped PyTorch: not installed" in proc.stdout
    assert all(set(r["median_s"]) == {"fastlstm"} and r["median_s"]["fastlstm"] > 0 for r in doc["workloads"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside keras, on save
def test_bench_keras_file_runs_keras(tmp_path):
    os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is first imported; CI sets it too
    keras = pytest.importorskip("keras")
    model = keras.Sequential(
        [
            keras.Input((None, 3)),
            keras.layers.LSTM(8, return_sequences=True),
            keras.layers.Dense(2, activation="sigmoid"),
        ]
    )
    path = tmp_path / "m.keras"
    model.save(path)
    out = tmp_path / "bench.json"
    proc = run_cli("bench", path, *QUICK, "--frameworks", "keras", "--json", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    check_bench_json(json.loads(out.read_text()), ["keras"])  # torch and ORT: covered above


# --------------------------------------------------------------------------- demo


def torch_forecaster_outputs(x):
    """The bundled weights run by PyTorch (read with the safetensors package, not fastlstm)."""
    from safetensors.numpy import load_file

    w = load_file(data.MODEL_PATH)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2284 steps: one thread takes 0.1 s, two on a busy box can take 30 s
    try:
        return _run_torch(w, x)
    finally:
        torch.set_num_threads(threads)


def _run_torch(w, x):
    layers = sorted({int(k.split(".")[1]) for k in w if k.startswith("layers.")})
    lstm = torch.nn.LSTM(x.shape[1], w["layers.0.forward.weight_hh"].shape[1], num_layers=len(layers))
    with torch.no_grad():
        for k in layers:
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(lstm, f"{name}_l{k}").copy_(torch.from_numpy(w[f"layers.{k}.forward.{name}"]))
        y, _ = lstm(torch.from_numpy(x)[:, None, :])
        return (y[:, 0] @ torch.from_numpy(w["head.weight"]).T + torch.from_numpy(w["head.bias"])).numpy()


def test_demo_beats_the_last_value_forecast(tmp_path):
    out = tmp_path / "demo.json"
    proc = run_cli("demo", "--json", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert "µs per step" in proc.stdout and "last value" in proc.stdout
    assert doc["step_us"] > 0

    # The baseline, recomputed straight from the CSV: forecast week t+1 by week t, over the
    # measured weeks the demo says it scored (missing weeks filled linearly, as documented).
    with open(data.CSV_PATH, newline="") as f:
        rows = [(int(r["date"]), r["co2"]) for r in csv.DictReader(f)]
    dates = np.array([d for d, _ in rows])
    raw = np.array([float(v) if v else np.nan for _, v in rows])
    ok = ~np.isnan(raw)
    filled = np.interp(np.arange(len(raw)), np.flatnonzero(ok), raw[ok])
    t = np.flatnonzero((dates[1:] >= doc["scored_from"]) & (dates[1:] <= doc["scored_to"]) & ok[1:])
    assert len(t) == doc["scored_weeks"] > 300
    naive = np.abs(filled[t] - raw[t + 1]).mean()
    assert doc["mae_last_value_ppm"] == pytest.approx(naive, abs=1e-9)

    # The model's error, recomputed in PyTorch from the shipped weights.
    y = torch_forecaster_outputs(data.features(data.load_series()))
    mae = np.abs(filled[t] + data.DIFF_SCALE * y[t, 0] - raw[t + 1]).mean()
    assert doc["mae_model_ppm"] == pytest.approx(mae, abs=1e-4)
    # The honest margin: on 1994-2001 (never trained on) the LSTM must be at least 15%
    # better than the naive forecast.  Trained, it is about 28% better; an untrained or
    # broken model is worse than naive.
    assert mae < 0.85 * naive


# --------------------------------------------------------------------------- the runners bench uses


def _weights(rng, I, H, P=None):
    from fastlstm import LSTMWeights

    a = lambda *s: rng.uniform(-0.4, 0.4, s).astype(np.float32)  # noqa: E731
    return LSTMWeights(a(4 * H, I), a(4 * H, P or H), a(4 * H), a(4 * H), a(P, H) if P else None)


def _shapes():
    """Models bench may meet that take each framework's less common paths."""
    from fastlstm import Dense, Model
    from fastlstm import LSTMLayer as L

    r = np.random.default_rng(11)
    head = lambda o, i, act: Dense(r.standard_normal((o, i)), r.standard_normal(o), act)  # noqa: E731
    return {
        "mixed-sizes-softmax": Model([L([_weights(r, 3, 8)]), L([_weights(r, 8, 5)])], head(4, 5, "softmax")),
        "bidirectional-sum-last-step": Model(
            [L([_weights(r, 3, 6), _weights(r, 3, 6)], merge_mode="sum")], head(2, 6, "linear"), return_sequences=False
        ),
        "go-backwards": Model([L([_weights(r, 3, 6)], go_backwards=True), L([_weights(r, 6, 6)])], head(1, 6, "tanh")),
        "projection": Model([L([_weights(r, 3, 8, 4)]), L([_weights(r, 4, 8, 4)])], head(2, 4, "sigmoid")),
    }


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside keras
@pytest.mark.filterwarnings("ignore:LSTM with projections:UserWarning")  # torch: no oneDNN path for proj_size
@pytest.mark.parametrize("shape", ["mixed-sizes-softmax", "bidirectional-sum-last-step", "go-backwards", "projection"])
def test_runners_match_fastlstm(shape):
    """Each framework's rebuild computes what fastlstm computes (or refuses, saying why)."""
    from fastlstm import harness
    from fastlstm.harness.fastlstm_runner import FastlstmRunner

    model = _shapes()[shape]
    x = np.random.default_rng(5).standard_normal((30, 2, 3)).astype(np.float32)
    ref = FastlstmRunner(model)
    want = ref.predict(x)
    steps = [ref.steppers(x[:, :1])[""].outputs(30), ref.steppers(x)[""].outputs(30)] if model.streamable else []
    for name, peer in harness.PEERS.items():
        if harness.missing_modules(name):
            continue
        try:
            runner = harness.make_runner(name, model)
        except harness.Unsupported as exc:
            assert shape == "projection" and name != "torch" and "projection" in str(exc)
            continue
        tol = 2e-6 if peer.tolerance <= 1e-5 else peer.tolerance
        np.testing.assert_allclose(runner.predict(x), want, atol=tol, rtol=0, err_msg=name)
        if model.streamable:
            for xs, expected in zip((x[:, :1], x), steps):
                for route, stepper in runner.steppers(np.ascontiguousarray(xs)).items():
                    np.testing.assert_allclose(
                        stepper.outputs(30), expected, atol=tol, rtol=0, err_msg=f"{name} {route}"
                    )


def test_bench_lists_a_framework_that_cannot_run_the_model(tmp_path):
    """Keras' hard_sigmoid has no nn.LSTM equivalent: torch is skipped with the reason, not an error."""
    from fastlstm import LSTMLayer, Model

    model = Model([LSTMLayer([_weights(np.random.default_rng(2), 3, 6)], recurrent_activation="hard_sigmoid")])
    path = tmp_path / "hard.safetensors"
    model.save(path)
    out = tmp_path / "bench.json"
    proc = run_cli("bench", path, *QUICK, "--frameworks", "torch", "--json", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    st = json.loads(out.read_text())["frameworks"]["torch"]
    assert st["status"] == "skipped" and "hard_sigmoid" in st["reason"]
    assert "skipped PyTorch: cannot run this model" in proc.stdout


def test_bench_fails_when_a_framework_disagrees(monkeypatch, capsys):
    """A parity failure is reported, with exit 1, not hidden behind the timings (run in-process so
    one framework can be made to compute something else)."""
    from fastlstm import cli
    from fastlstm.harness.torch_runner import TorchRunner

    real = TorchRunner.predict
    monkeypatch.setattr(TorchRunner, "predict", lambda self, x: real(self, x) + 0.1)
    code = cli.main(["bench", *QUICK, "--frameworks", "torch"])
    captured = capsys.readouterr()
    assert code == 1
    assert "parity check failed" in captured.err.strip().splitlines()[-1]
    assert "FAILED" in captured.out
