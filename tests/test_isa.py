"""The kernel paths (include/fastlstm_isa.h): every one this CPU has is correct, bit-identical
across thread counts, and agrees with the others; FASTLSTM_ISA selects them and refuses what the
CPU lacks; the C kernels also pass on aarch64 (cross-compiled, run under qemu) where the tools exist.

The default test run exercises the best path; the lower ones run here in subprocesses (the path
is fixed when the kernels load), including the parity, streaming and pool test files."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastlstm
from checks import CHILD_CWD, child_env
from fastlstm import _isa

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
USED, BEST, FEATURES = _isa.levels()
#: The base paths this CPU can run, lowest first: the fp32 kernels differ only between these
#: (the extensions of the others serve the reduced precisions, tests/test_precision_parity.py).
PATHS = [p for p in _isa.BASES if p in _isa.runnable()]
#: The paths the rest of the suite does not already run.
LOWER = [p for p in PATHS if p != _isa.base(USED)]
#: Between paths and against the float64 oracle.
TOL = 1e-6
#: C flags of setup.py that change code generation (the C check must build the same kernels).
CFLAGS = ["-O3", "-std=c99", "-ffp-contract=fast", "-fno-trapping-math", "-Wno-unused-function"]


def _env(path):
    """The environment of a child on kernel path ``path`` that imports this same fastlstm."""
    env = child_env(FASTLSTM_ISA=path)
    env["PYTHONPATH"] = os.pathsep.join([HERE, env["PYTHONPATH"]])
    env.setdefault("KERAS_BACKEND", "torch")
    return env


@pytest.fixture(scope="module")
def path_outputs(tmp_path_factory):
    """{path: outputs of tests/isa_outputs.py on that path}."""
    out = {}
    for path in PATHS:
        target = tmp_path_factory.mktemp("isa") / f"{path}.npz"
        subprocess.run(
            [sys.executable, os.path.join(HERE, "isa_outputs.py"), str(target)], env=_env(path), check=True, timeout=300
        )
        with np.load(target) as f:
            out[path] = {k: f[k] for k in f.files}
    return out


def test_each_path_runs_as_asked(path_outputs):
    for path, out in path_outputs.items():
        assert str(out["path"]) == path
    assert set(_isa.runnable()) >= set(PATHS)


def test_each_path_bit_identical_across_threads(path_outputs):
    for path, out in path_outputs.items():
        for key in (k for k in out if k.endswith("/1")):
            case = key[:-2]
            for n in ("2", "3"):
                assert np.array_equal(out[f"{case}/{n}"], out[key]), (path, case, n)


def test_each_path_matches_oracle(path_outputs):
    for path, out in path_outputs.items():
        for key in (k for k in out if k.endswith("/1") or k.endswith("/stream")):
            ref = out[key.split("/")[0] + "/oracle"]
            err = float(np.max(np.abs(out[key].astype(np.float64) - ref)))
            assert err <= TOL, (path, key, err)


def test_paths_agree(path_outputs):
    first = path_outputs[PATHS[0]]
    for path in PATHS[1:]:
        for key, value in path_outputs[path].items():
            if key != "path":
                err = float(np.max(np.abs(value.astype(np.float64) - first[key])))
                assert err <= TOL, (PATHS[0], path, key, err)


@pytest.mark.parametrize("path", LOWER)
def test_suite_files_on_lower_path(path):
    """The parity, streaming, pool, batch-invariance and thread-team test files, on each path the
    default run skips."""
    files = [
        "test_oracle_parity.py",
        "test_torch_parity.py",
        "test_streaming.py",
        "test_pool.py",
        "test_batch_invariance.py",
        "test_team_threads.py",
    ]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *[os.path.join(HERE, f) for f in files]],
        env=_env(path),
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.splitlines()[-1]


def test_unknown_path_refused():
    run = subprocess.run(
        [sys.executable, "-c", "import fastlstm"],
        env=_env("avx1024"),
        cwd=CHILD_CWD,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "FASTLSTM_ISA='avx1024'" in run.stderr
    assert ", ".join(_isa.PATHS) in run.stderr and _isa.PATHS[0] == "generic" and _isa.PATHS[-1] == "amx"


def test_path_cpu_lacks_refused(monkeypatch):
    """A request for a path the CPU cannot run is an error that says what it can run."""
    runs = {p: p in ("generic", "avx2", "avx512") for p in _isa.PATHS}  # AVX-512 without VNNI
    monkeypatch.setattr(_isa, "_RUNS", runs)
    monkeypatch.setattr(_isa, "_BEST", "avx512")
    for want in ("avx2-vnni", "avx512-bf16", "amx"):
        with pytest.raises(
            ValueError,
            match=rf"FASTLSTM_ISA={want}: this CPU .* cannot run {want}; the best it runs is avx512\. "
            r"Set FASTLSTM_ISA to one of generic, avx2, avx512,",
        ):
            _isa.check_request({"FASTLSTM_ISA": want})
    for ok in ("avx512", "avx2", "generic"):
        _isa.check_request({"FASTLSTM_ISA": ok})
    _isa.check_request({})


def test_show_config_reports_path(capsys):
    fastlstm.show_config()
    text = capsys.readouterr().out
    assert f"path in use            {USED}" in text
    assert f"best path of this CPU  {BEST}" in text
    lines = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}
    for feature, present in FEATURES.items():
        assert feature in lines["features" if present else "missing"]
    assert "features" in text and "fastlstm threads" in text


def test_show_config_forced_path():
    run = subprocess.run(
        [sys.executable, "-c", "import fastlstm; fastlstm.show_config()"],
        env=_env("generic"),
        cwd=CHILD_CWD,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "path in use            generic" in run.stdout
    assert "FASTLSTM_ISA           generic" in run.stdout


def _compile_and_run(cc, runner, tmp_path, extra=(), name="kernels_check"):
    exe = tmp_path / name
    source = os.path.join(HERE, "c", name + ".c")
    subprocess.run(
        [cc, *CFLAGS, *extra, "-I", os.path.join(ROOT, "include"), source, "-lm", "-o", str(exe)],
        check=True,
        timeout=300,
    )
    run = subprocess.run([*runner, str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.rstrip().endswith("all passed"), run.stdout + run.stderr
    return exe, run.stdout


def test_c_kernels_every_path(tmp_path):
    """The C kernels alone, on every path this CPU has, against float64 (tests/c/kernels_check.c)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    _, out = _compile_and_run(cc, [], tmp_path)
    for path in PATHS:
        assert f"{path}: checked" in out


def test_c_lowp_kernels_every_path(tmp_path):
    """The bf16 and int8 products alone, on every path this CPU has (extensions included), give
    their reference's exact bits (tests/c/lowp_check.c)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    _, out = _compile_and_run(cc, [], tmp_path, name="lowp_check")
    for path in _isa.runnable():
        assert f"{path}: checked" in out


AARCH64_TOOLS = ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-objdump", "qemu-aarch64")


@pytest.mark.skipif(
    not all(shutil.which(t) for t in AARCH64_TOOLS),
    reason="needs gcc-aarch64-linux-gnu and qemu-user (.ci/run installs them)",
)
def test_c_kernels_aarch64(tmp_path):
    """The generic path compiled for aarch64: correct under qemu, and its GEMM block is NEON fmla."""
    exe, out = _compile_and_run("aarch64-linux-gnu-gcc", ["qemu-aarch64"], tmp_path, ["-static"])
    assert "generic: checked" in out
    _, out = _compile_and_run("aarch64-linux-gnu-gcc", ["qemu-aarch64"], tmp_path, ["-static"], name="lowp_check")
    assert "generic: checked" in out
    dump = subprocess.run(
        ["aarch64-linux-gnu-objdump", "-d", str(exe)], capture_output=True, text=True, check=True
    ).stdout
    block = dump[dump.index("<fl_gemm_panel_generic>:") :]
    block = block[: block.index("\n\n")]
    assert "fmla\tv" in block and ".4s" in block
