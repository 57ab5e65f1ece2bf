"""The registry of peers: every framework fastlstm is compared with, in one table.

Adding a peer is one entry in :data:`PEERS` plus a runner module beside this one
(see ``CONTRIBUTING.md``, "Adding a peer to the benchmark").  A runner offers:

* ``predict(x)``: ``x`` is ``(T, B, I)`` float32; returns ``(T, B, O)`` (or ``(B, O)`` for a
  model that returns the last step only), from zero state;
* ``seq_loop(x)``: a callable ``run(n)`` that runs ``predict`` on ``x`` ``n`` times;
* ``steppers(xs)``: ``{route: stepper}`` stepping ``B`` streams through ``xs`` ``(T, B, I)``,
  one step per call; a stepper has ``outputs(steps) -> (steps, B, O)`` (from zero state) and
  ``run(n)`` (``n`` steps, state carried on).  Most runners have one route, named ``""``.

A framework that cannot express a model raises :class:`Unsupported` saying why.  Every
runner module imports its framework only when a runner is built, so this table can be
read (``fastlstm bench --help``, the report) without any framework installed.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

from ._common import Unsupported, choose_keras_backend
from .onnx_file import ENGINES as FILE_ENGINES

#: Tolerances of the reduced-precision peers (per unit of output scale, like :attr:`Peer.tolerance`).
#: bfloat16 keeps 8 bits of mantissa: about 4e-3 relative per rounding, compounded over the steps.
#: int8 keeps 1/127 of each tensor's largest |value| per rounding (per-tensor weight scales in both
#: peers, dynamic activation scales).  Measured max |difference| from fp32 over 200 steps of the
#: harness configs: bf16 peers 4e-3, int8 peers 1.1e-2 (PyTorch's; ORT's 7e-3).
TOL_BF16 = 3e-2
TOL_INT8 = 5e-2


def _torch_threads(threads):
    """Hold PyTorch to ``threads``: ``timing.thread_policy`` can only do so where torch was imported
    before the block began, and a torch imported inside it takes every core (precision.py's
    "1-thread" PyTorch ran on two)."""
    import torch

    torch.set_num_threads(threads)


def _torch(model, threads):
    from .torch_runner import TorchRunner

    _torch_threads(threads)
    return TorchRunner(model)


def _torch_int8(model, threads):
    from .torch_lowp_runner import TorchInt8Runner

    _torch_threads(threads)
    return TorchInt8Runner(model)


def _torch_bf16(model, threads):
    from .torch_lowp_runner import TorchBf16Runner

    _torch_threads(threads)
    return TorchBf16Runner(model)


def _onnxruntime(model, threads):
    from .ort_runner import OrtRunner

    return OrtRunner(model, threads=threads)


def _onnxruntime_int8(model, threads):
    from .ort_int8_runner import OrtInt8Runner

    return OrtInt8Runner(model, threads=threads)


def _openvino(precision):
    def build(model, threads):
        from .openvino_runner import OpenVinoRunner

        return OpenVinoRunner(model, threads=threads, precision=precision)

    return build


def _tract(model, threads):
    from .tract_runner import TractRunner

    return TractRunner(model)


def _keras(model, threads):
    from .keras_runner import KerasRunner

    runner = KerasRunner(model)
    _torch_threads(threads)  # Keras runs on the torch backend
    return runner


@dataclass(frozen=True)
class Peer:
    """One framework in the comparison."""

    name: str  #: the ``--frameworks`` name and the JSON key
    label: str  #: how reports name it
    install: str  #: the pip command that installs what it needs
    modules: Tuple[str, ...]  #: what must import for it to run
    build: Callable[[Any, int], Any]  #: ``build(model, threads)`` -> runner
    #: max |difference| from fastlstm that still counts as the same function, per unit of
    #: output scale; a reduced-precision peer needs more than float32 rounding
    tolerance: float = 1e-5
    #: whether ``fastlstm bench`` runs it without ``--frameworks`` (Keras: Keras files only; the
    #: int8 and bf16 peers: only when asked, as they compare with fastlstm's reduced precisions)
    auto: bool = True
    note: str = ""  #: one line for the report on how it is called


PEERS: Dict[str, Peer] = {
    p.name: p
    for p in (
        Peer(
            "torch",
            "PyTorch",
            "pip install torch",
            ("torch",),
            _torch,
            note="PyTorch steps: the faster of nn.LSTM on T=1 and one nn.LSTMCell per layer.",
        ),
        # Reduced-precision peers, matched with fastlstm's precision="int8" / "bf16" (bench/precision.py).
        Peer(
            "torch-int8",
            "PyTorch int8",
            "pip install torch",
            ("torch",),
            _torch_int8,
            tolerance=TOL_INT8,
            auto=False,
            note="PyTorch int8: quantize_dynamic({nn.LSTM, nn.LSTMCell, nn.Linear}, torch.qint8), FBGEMM.",
        ),
        Peer(
            "torch-bf16",
            "PyTorch bf16",
            "pip install torch",
            ("torch",),
            _torch_bf16,
            tolerance=TOL_BF16,
            auto=False,
            note="PyTorch bf16: the modules cast to bfloat16, run under torch.autocast('cpu', torch.bfloat16).",
        ),
        Peer(
            "onnxruntime",
            "ONNX Runtime",
            "pip install onnxruntime onnx torch",
            ("torch", "onnx", "onnxruntime"),
            _onnxruntime,
            note="ONNX Runtime steps: a T=1 graph with the state as inputs and outputs, through IOBinding.",
        ),
        Peer(
            "onnxruntime-int8",
            "ONNX Runtime int8",
            "pip install onnxruntime onnx torch",
            ("torch", "onnx", "onnxruntime"),
            _onnxruntime_int8,
            tolerance=TOL_INT8,
            auto=False,
            note="ONNX Runtime int8: quantize_dynamic(weight_type=QInt8): DynamicQuantizeLSTM, MatMulInteger head.",
        ),
        Peer(
            "openvino",
            "OpenVINO f32",
            "pip install openvino onnx torch",
            ("torch", "onnx", "openvino"),
            _openvino("f32"),
            note="OpenVINO: the ONNX graphs compiled for CPU with INFERENCE_PRECISION_HINT set explicitly.",
        ),
        Peer(
            "openvino-bf16",
            "OpenVINO bf16",
            "pip install openvino onnx torch",
            ("torch", "onnx", "openvino"),
            _openvino("bf16"),
            tolerance=TOL_BF16,
        ),
        Peer(
            "tract",
            "tract",
            "pip install tract onnx torch",
            ("torch", "onnx", "tract"),
            _tract,
            note="tract: the ONNX graphs, optimised for fixed shapes, one thread.",
        ),
        Peer("keras", "Keras", "pip install keras torch", ("keras",), _keras, auto=False),
    )
}

#: How reports name each engine, fastlstm included.
LABELS = {"fastlstm": "fastlstm", **{name: p.label for name, p in PEERS.items()}}


def missing_modules(name: str, on_file: bool = False) -> list:
    """The modules peer ``name`` needs that cannot be imported (empty when it can run).

    ``on_file``: it runs the user's own ONNX file, so it needs only its engine, not the exporter."""
    if name == "keras":
        choose_keras_backend()
    out = []
    for mod in PEERS[name].modules[-1:] if on_file else PEERS[name].modules:
        try:
            importlib.import_module(mod)
        except Exception:  # noqa: BLE001 - a broken install is as good as a missing one here
            out.append(mod)
    return out


def make_runner(name: str, model, threads: int = 1, onnx_file=None):
    """The runner of peer ``name`` (a key of :data:`PEERS`); raises :class:`Unsupported` if it cannot.

    With ``onnx_file`` (the path of the ONNX file ``model`` was loaded from), ONNX Runtime and
    OpenVINO run that very file (:class:`~fastlstm.harness.onnx_file.OnnxFileRunner`)."""
    if name not in PEERS:
        raise ValueError(f"unknown framework {name!r}; expected one of {', '.join(PEERS)}")
    if onnx_file is not None and name in FILE_ENGINES:
        from .onnx_file import OnnxFileRunner

        return OnnxFileRunner(name, onnx_file, model, threads)
    return PEERS[name].build(model, threads)


def build_runners(model, left_out: Dict[str, str], threads: int, say=lambda msg: None, onnx_file=None):
    """A runner for every peer that can run ``model``, and a status entry for every peer.

    ``onnx_file``: the ONNX file ``model`` came from, which ONNX Runtime and OpenVINO then run
    (their status entry gets a ``note`` saying how).

    ``left_out`` maps peers not to try to the reason.  A missing framework is skipped with its
    install command, one that cannot express the model with its reason, and one that fails
    to build with its error: one framework's bug must not stop the comparison.
    """
    from .fastlstm_runner import FastlstmRunner

    status: Dict[str, dict] = {"fastlstm": {"status": "ran", "version": _version("fastlstm")}}
    runners: Dict[str, Any] = {"fastlstm": FastlstmRunner(model)}
    for name, peer in PEERS.items():
        if name in left_out:
            status[name] = {"status": "skipped", "reason": left_out[name]}
            continue
        on_file = onnx_file is not None and name in FILE_ENGINES
        missing = missing_modules(name, on_file)
        if missing:
            status[name] = {
                "status": "skipped",
                "reason": f"not installed ({', '.join(missing)})",
                "install": peer.install,
            }
            continue
        say(f"building the {peer.label} model")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                runners[name] = make_runner(name, model, threads=threads, onnx_file=onnx_file if on_file else None)
        except Unsupported as exc:
            status[name] = {"status": "skipped", "reason": f"cannot run this model: {exc}"}
            continue
        except Exception as exc:  # noqa: BLE001 - one framework's bug must not stop the comparison
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            status[name] = {"status": "skipped", "reason": f"failed to build: {type(exc).__name__}: {first}"}
            continue
        status[name] = {"status": "ran", "version": _version(peer.modules[-1])}
        if getattr(runners[name], "note", ""):
            status[name]["note"] = runners[name].note
    return runners, status


def _version(module_name: str):
    import sys

    mod = sys.modules.get(module_name)
    return getattr(mod, "__version__", None) if mod is not None else None
