"""Run a :class:`fastlstm.Model` in other frameworks, for parity checks and side-by-side timing.

``fastlstm bench`` uses these; they are importable for anyone who wants the same
comparison in their own code.  Each framework gets the model's own weights:

* **PyTorch**: rebuilt as ``nn.LSTM`` (one module for a uniform stack, else one per
  layer) plus ``nn.Linear`` and the head's activation (:func:`torch_module`).
* **ONNX Runtime**: that module exported with ``torch.onnx.export``: a whole-sequence
  graph, and a T=1 graph with the state as inputs and outputs so a stream can carry it
  (ONNX Runtime itself is stateless).  Steps run through prepared IOBindings, the
  fastest Python route ORT offers (:class:`OrtRunner`).
* **ONNX Runtime and OpenVINO on an ONNX file**: when the model came from a ``.onnx`` file, that
  very file (:class:`OnnxFileRunner`).
* **Keras**: rebuilt as ``keras.layers.LSTM`` (``stateful=True`` for stepping) and ``Dense``.

Every runner offers the same three things, so the benchmark treats them alike:
``predict(x)`` for a ``(T, B, I)`` sequence from zero state, ``seq_loop(x)`` a
callable running that ``n`` times, and ``stepper(xs)`` for stepping ``B`` streams
through ``xs`` ``(T, B, I)`` one step per call.  A framework that cannot express the
model (e.g. torch with Keras' hard_sigmoid) raises :class:`Unsupported` saying why.
Frameworks are imported only when a runner is built.
"""

from __future__ import annotations

from ._common import FRAMEWORKS, Unsupported, installed, missing_modules
from .fastlstm_runner import FastlstmRunner
from .keras_runner import KerasRunner, keras_model
from .onnx_file import OnnxFileRunner, is_onnx_file
from .onnx_runner import OrtRunner
from .torch_runner import TorchRunner, torch_module

__all__ = ["FRAMEWORKS", "Unsupported", "installed", "missing_modules", "make_runner", "FastlstmRunner",
           "TorchRunner", "OrtRunner", "OnnxFileRunner", "is_onnx_file", "KerasRunner", "torch_module", "keras_model"]


def make_runner(name, model, threads=1, onnx_file=None):
    """The runner for framework ``name`` (see :data:`FRAMEWORKS`); raises :class:`Unsupported` if it cannot.

    With ``onnx_file`` (the path of the ONNX file ``model`` was loaded from), ONNX Runtime and OpenVINO
    run that very file (:class:`OnnxFileRunner`)."""
    if name in ("onnxruntime", "openvino") and onnx_file is not None:
        return OnnxFileRunner(name, onnx_file, model, threads)
    if name == "openvino":
        raise Unsupported("runs ONNX files only (fastlstm bench model.onnx)")
    if name == "torch":
        return TorchRunner(model)
    if name == "onnxruntime":
        return OrtRunner(model, threads=threads)
    if name == "keras":
        return KerasRunner(model)
    raise ValueError(f"unknown framework {name!r}; expected one of {', '.join(FRAMEWORKS)}")
