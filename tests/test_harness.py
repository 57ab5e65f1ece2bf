"""The comparison harness (fastlstm.harness): every peer's runner agrees with fastlstm, and the
runtime never imports the harness.

Parity is against fastlstm's own Model, which tests/test_torch_parity.py and
tests/test_oracle_parity.py hold to PyTorch and the float64 oracle; here each peer's rebuild of
the same weights must compute the same function, on a tiny config, to 1e-5 (a reduced-precision
peer, OpenVINO bf16, to the tolerance its registry entry states).
"""

import subprocess
import sys

import numpy as np
import pytest

from checks import CHILD_CWD, child_env
from fastlstm import harness
from fastlstm.harness import configs
from fastlstm.harness.fastlstm_runner import FastlstmRunner
from fastlstm.harness.timing import Case, calibrate, measure

TINY = configs.Config("test-tiny", 5, 12, 2, 3, 20)


@pytest.fixture(scope="module")
def tiny():
    model = configs.random_model(TINY, head_size=2)
    x = configs.make_inputs(TINY)
    ref = FastlstmRunner(model)
    return (
        model,
        x,
        ref.predict(x),
        {B: ref.steppers(np.ascontiguousarray(x[:, :B]))[""].outputs(TINY.T) for B in (1, TINY.B)},
    )


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside keras
@pytest.mark.parametrize("name", list(harness.PEERS))
def test_every_peer_agrees_with_fastlstm(name, tiny):
    missing = harness.missing_modules(name)
    if missing:  # CI installs every peer (the bench extra); elsewhere a peer may be absent
        pytest.skip(f"{name} not installed ({', '.join(missing)})")
    model, x, want, steps = tiny
    peer = harness.PEERS[name]
    tol = max(1e-5, peer.tolerance)
    runner = harness.make_runner(name, model, threads=1)
    got = runner.predict(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=tol, rtol=0, err_msg=name)
    for B, expected in steps.items():
        routes = runner.steppers(np.ascontiguousarray(x[:, :B]))
        assert routes
        for route, stepper in routes.items():
            out = stepper.outputs(TINY.T)
            np.testing.assert_allclose(out, expected, atol=tol, rtol=0, err_msg=f"{name} {route} B={B}")
            stepper.run(5)  # the timed path runs, state carried on
    if tol > 1e-5:  # a reduced-precision peer must really differ, or it is not what it says it is
        assert np.abs(got - want).max() > 1e-5 or not _cpu_has_bf16(), name


#: The precision-matched peers of bench/precision.py, and the unit each computes its products in.
REDUCED = {"torch-int8": "int8", "onnxruntime-int8": "int8", "torch-bf16": "bf16", "openvino-bf16": "bf16"}


@pytest.mark.parametrize("name", sorted(REDUCED))
def test_reduced_precision_peers_match_fp32_torch_within_their_tolerance(name, tiny):
    """Each int8/bf16 peer is registered with a reduced-precision tolerance, runs only when asked
    (openvino-bf16 excepted: it was in the default comparison before them), and stays within that
    tolerance of fp32 PyTorch on the same weights, in predict and in every stepping route,
    while really differing from it (or it is not the precision it says)."""
    peer = harness.PEERS[name]
    assert peer.tolerance >= 1e-2
    assert peer.auto is (name == "openvino-bf16")
    missing = harness.missing_modules(name)
    if missing:  # CI installs every peer (the bench extra)
        pytest.skip(f"{name} not installed ({', '.join(missing)})")
    model, x, _, _ = tiny
    fp32, runner = harness.make_runner("torch", model), harness.make_runner(name, model)
    want, got = fp32.predict(x), runner.predict(x)
    assert got.dtype == np.float32 and got.shape == want.shape
    worst = float(np.abs(got - want).max())
    for B in (1, TINY.B):
        xs = np.ascontiguousarray(x[:, :B])
        expected = fp32.steppers(xs)["nn.LSTM"].outputs(TINY.T)
        for stepper in runner.steppers(xs).values():
            out = stepper.outputs(TINY.T)
            assert out.shape == expected.shape
            worst = max(worst, float(np.abs(out - expected).max()))
    assert worst <= peer.tolerance, f"{name}: {worst:.3g} > {peer.tolerance}"
    if REDUCED[name] == "int8" or _cpu_has_bf16():
        assert worst > 1e-5, f"{name} computes what fp32 PyTorch computes: not reduced precision"
    if name == "torch-int8":  # the modules really were swapped for their quantized forms
        kinds = {(type(m).__module__, type(m).__name__) for m in runner.net.modules()}
        assert {name for mod, name in kinds if "quantized.dynamic" in mod} >= {"LSTM", "Linear"}
        assert not {name for mod, name in kinds if mod.startswith("torch.nn.")} & {"LSTM", "Linear"}


def _cpu_has_bf16():
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def test_a_peer_refuses_what_it_cannot_express():
    from fastlstm import LSTMLayer, LSTMWeights, Model

    rng = np.random.default_rng(0)
    w = LSTMWeights(*(rng.uniform(-0.3, 0.3, s).astype(np.float32) for s in ((16, 3), (16, 4))))
    model = Model([LSTMLayer([w], recurrent_activation="hard_sigmoid")])
    with pytest.raises(harness.Unsupported, match="hard_sigmoid"):
        harness.make_runner("torch", model)
    with pytest.raises(ValueError, match="unknown framework 'nope'"):
        harness.make_runner("nope", model)


def test_import_fastlstm_never_imports_the_harness():
    code = (
        "import sys, fastlstm; m = fastlstm.load; "
        "print(sorted(k for k in sys.modules if k.startswith('fastlstm.harness') or k in "
        "('torch', 'onnxruntime', 'openvino', 'tract', 'keras')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=child_env(), cwd=CHILD_CWD
    ).stdout
    assert out.strip() == "[]"


def test_calibration_sizes_samples_and_measure_interleaves():
    calls = []

    def run(n):
        calls.append(n)
        s = 0
        for i in range(200 * n):
            s += i

    case = Case("w", "a", run)
    calibrate(case, 0.005)
    assert case.n > 1 and case.unit_s > 0
    other = Case("w", "b", run)
    measure([case, other], repeats=3, sample_s=0.002, pause_s=0.0)
    assert len(case.samples) == len(other.samples) == 3
    assert all(t > 0 for t in case.samples + other.samples)


def test_thread_policy_sets_and_restores_fastlstm_threads():
    import fastlstm
    from fastlstm.harness.timing import thread_policy

    before = fastlstm.get_num_threads()
    other = 1 if before != 1 else 2
    with thread_policy(other):
        assert fastlstm.get_num_threads() == other
    assert fastlstm.get_num_threads() == before


def test_isa_holds_name_each_path_and_refuse_others():
    from fastlstm.harness import isa

    assert isa.environment("avx2") == {
        "FASTLSTM_ISA": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "OPENBLAS_CORETYPE": "Haswell",
    }
    assert isa.environment("avx512") == {"FASTLSTM_ISA": "avx512"}
    with pytest.raises(ValueError, match="isa: expected one of generic, avx2, avx512"):
        isa.environment("sse9")
    assert isa.left_out("avx512") == {} and isa.left_out(None) == {}
    assert "openvino-bf16" in isa.left_out("generic")


def test_isa_restart_held_restarts_the_script_under_the_holds(tmp_path, monkeypatch):
    from fastlstm.harness import isa

    for k in isa.environment("generic"):
        monkeypatch.delenv(k, raising=False)
    settings = "FASTLSTM_ISA=generic ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2"
    with pytest.raises(SystemExit, match=f"set {settings}"):
        isa.restart_held("generic", "driver.py", argv=["--isa", "generic"])  # main(argv) cannot restart
    script = tmp_path / "driver.py"
    script.write_text(
        "import os, sys\n"
        "from fastlstm.harness import isa\n"
        "print('start', sys.argv[1:], flush=True)\n"
        "isa.restart_held('generic', __file__)\n"
        "import fastlstm\n"
        "print('held', os.environ['ONEDNN_MAX_CPU_ISA'], fastlstm._isa.levels()[0])\n"
    )
    run = subprocess.run(
        [sys.executable, str(script), "--isa", "generic"], capture_output=True, text=True, timeout=120, check=True
    )
    # Two starts (the second under the holds), then the kernels on the generic path.
    assert run.stdout.splitlines() == ["start ['--isa', 'generic']"] * 2 + ["held SSE41 generic"]


def test_precision_bench_runs_and_reports_ratios_and_accuracy(tmp_path):
    """bench/precision.py end to end on the tiny config, at the smallest settings: every engine asked
    for is timed, the ratios of issue 15 are computed, and every accuracy is within its tolerance
    (the script exits 1 otherwise)."""
    import json
    import os

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "precision.py")
    engines = ["fastlstm", "fastlstm-bf16", "fastlstm-int8", "torch-int8", "onnxruntime-int8", "torch-bf16"]
    out = tmp_path / "precision.json"
    args = ["--quick", "--configs", "tiny", "--repeats", "1", "--sample-ms", "1", "--engines", ",".join(engines)]
    proc = subprocess.run(
        [sys.executable, script, *args, "--json", str(out)],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=CHILD_CWD,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "### Ratios" in proc.stdout and "### Accuracy" in proc.stdout
    tiny = json.loads(out.read_text())["configs"]["tiny"]
    for work in ("step", "predict"):
        assert set(tiny["median_s"][work]) == set(engines)
        assert all(t > 0 for t in tiny["median_s"][work].values())
        ratios = tiny["ratios"][work]
        assert {"bf16_vs_fp32", "int8_vs_fp32", "bf16_vs_peer", "int8_vs_peer"} <= set(ratios)
        assert ratios["int8_vs_peer"]["peer"] in ("torch-int8", "onnxruntime-int8")
    dev = tiny["deviation_from_torch_fp32"]
    assert set(dev) == set(engines)  # fp32 PyTorch is the reference, built though not timed
    assert max(dev["fastlstm"].values()) < 1e-5
    for name in engines[1:]:  # reduced precision: really reduced, within the bound
        assert 1e-5 < max(dev[name].values()) < 5e-2, name
