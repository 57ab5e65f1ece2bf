"""The file loaders need neither torch nor Keras: load .pt, safetensors, .keras, .h5 and native files
in a subprocess where importing torch, keras, tensorflow, tf_keras, jax or safetensors raises.

The block is a ``sitecustomize`` on the child's PYTHONPATH, so it also covers the HDF5 reader's
own child process.  Expected outputs are computed here, by the frameworks themselves.
"""

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import safetensors.torch as safetensors_torch
import torch

import fastlstm.loaders as loaders
from loader_helpers import import_keras, torch_outputs

pytestmark = pytest.mark.usefixtures("torch_one_thread")


BLOCKED = ("torch", "keras", "tensorflow", "tf_keras", "jax", "safetensors")


def sitecustomize(blocked):
    """A ``sitecustomize`` that makes importing any of ``blocked`` (top-level names) raise ImportError."""
    return f"""
import importlib.abc
import sys

BLOCKED = {tuple(blocked)!r}


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked in this test")
        return None


sys.meta_path.insert(0, _Blocker())
"""


_PRELUDE = """
import sys

import numpy as np

for name in {blocked!r}:
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"the import block does not work: {{name}} imported")
"""

_EPILOGUE = """
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r})
assert not leaked, leaked
print("ALL OK")
"""


def run_without(blocked, body, n_cases, tmp_path):
    """Run ``body`` (Python source that prints ``NAME ok ERR`` per case) in a child process where
    importing any of ``blocked`` raises, through a ``sitecustomize`` on its PYTHONPATH (so the HDF5
    reader's own child is covered too); check the block held, nothing blocked leaked in, and every
    case passed."""
    block_dir = tmp_path / "block"
    block_dir.mkdir()
    (block_dir / "sitecustomize.py").write_text(sitecustomize(blocked))
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(_PRELUDE.format(blocked=blocked))
        + textwrap.dedent(body)
        + textwrap.dedent(_EPILOGUE.format(blocked=blocked))
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(loaders.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(block_dir), repo] + [p for p in sys.path if p])
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ALL OK" in proc.stdout
    assert proc.stdout.count(" ok ") == n_cases


BODY = """
import fastlstm.loaders as loaders

for fname, batch_first in {cases!r}:
    x = np.load({root!r} + "/x_" + fname + ".npy")
    want = np.load({root!r} + "/y_" + fname + ".npy")
    model = loaders.load({root!r} + "/" + fname)
    got = model.predict(x, batch_first=batch_first)
    err = float(np.max(np.abs(got - want)))
    assert err <= 1e-5, (fname, err)
    print(fname, "ok", err)
"""


def _torch_files(root):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True)
    torch.save(lstm.state_dict(), root / "m.pt")
    safetensors_torch.save_file(lstm.state_dict(), root / "m.safetensors")
    x = np.random.default_rng(1).standard_normal((300, 2, 3)).astype(np.float32)
    y = torch_outputs(lstm, x)
    for name in ("m.pt", "m.safetensors"):
        np.save(root / f"x_{name}.npy", x)
        np.save(root / f"y_{name}.npy", y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaders.save_model(loaders.from_torch(lstm.state_dict()), root / "m.fastlstm")
    np.save(root / "x_m.fastlstm.npy", x)
    np.save(root / "y_m.fastlstm.npy", y)
    return [("m.pt", False), ("m.safetensors", False), ("m.fastlstm", False)]


def _keras_files(root):
    keras = import_keras()
    L = keras.layers
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            keras.Input((None, 3)),
            L.LSTM(5, return_sequences=True, go_backwards=True),
            L.Bidirectional(L.LSTM(4, return_sequences=True), merge_mode="sum"),
            L.Dense(2, activation="softmax"),
        ]
    )
    x = np.random.default_rng(3).standard_normal((2, 300, 3)).astype(np.float32)
    y = keras.ops.convert_to_numpy(model(x))
    cases = []
    for name in ("m.keras", "m.h5"):
        model.save(root / name)
        np.save(root / f"x_{name}.npy", x)
        np.save(root / f"y_{name}.npy", y)
        cases.append((name, True))
    return cases


def test_loaders_need_no_framework(tmp_path):
    cases = _torch_files(tmp_path) + _keras_files(tmp_path)
    run_without(BLOCKED, BODY.format(cases=cases, root=str(tmp_path)), len(cases), tmp_path)
