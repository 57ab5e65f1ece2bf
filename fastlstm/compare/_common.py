"""Helpers every runner shares: the refusal exception, install checks, the input cycler."""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import os

#: name -> (label, pip command installing what that runner needs).
FRAMEWORKS = {
    "torch": ("PyTorch", "pip install torch"),
    "onnxruntime": ("ONNX Runtime", "pip install onnxruntime onnx torch"),
    "keras": ("Keras", "pip install keras torch"),
    "openvino": ("OpenVINO", "pip install openvino"),
}


class Unsupported(Exception):
    """The framework is installed but cannot run this model as it is (the message says why)."""


def missing_modules(name, onnx_file=False):
    """The modules a runner needs that cannot be imported (empty when it can run).

    With ``onnx_file`` the ONNX engines run the user's own file, so they need nothing else."""
    needs = {"torch": ["torch"], "onnxruntime": ["torch", "onnx", "onnxruntime"], "keras": ["keras"],
             "openvino": ["openvino"]}[name]
    if onnx_file and name == "onnxruntime":
        needs = ["onnxruntime"]
    if name == "keras":
        choose_keras_backend()
    out = []
    for mod in needs:
        try:
            importlib.import_module(mod)
        except Exception:  # noqa: BLE001 - a broken install is as good as a missing one here
            out.append(mod)
    return out


def installed(module_name) -> bool:
    """Whether ``module_name`` can be found, without importing it."""
    try:
        return importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):  # a broken package, or an import hook refusing it
        return False


def choose_keras_backend():
    """Keras 3 defaults to TensorFlow; without it (and with no choice made) use an installed one."""
    if "KERAS_BACKEND" in os.environ or installed("tensorflow"):
        return
    for backend in ("torch", "jax"):
        if installed(backend):
            os.environ["KERAS_BACKEND"] = backend
            return


class _StackView:
    """A model seen as its LSTM stack + head (Model.lstm_stack): what the runners rebuild."""

    def __init__(self, model, framework):
        self._model = model
        try:
            self.layers, self.head, self.return_sequences = model.lstm_stack()
        except ValueError as exc:
            raise Unsupported(f"the {framework} comparison rebuilds LSTM stacks with one Dense head: {exc}") from None

    def __getattr__(self, name):
        return getattr(self._model, name)


def lstm_stack_view(model, framework):
    """``model`` as an LSTM stack + head for a framework runner, or :class:`Unsupported`."""
    return model if isinstance(model, _StackView) else _StackView(model, framework)


def require_standard_cells(model, framework):
    """Refuse a model whose cells use other activations than the fixed ones of torch's/ONNX's LSTM;
    return its LSTM-stack view."""
    model = lstm_stack_view(model, framework)
    for k, layer in enumerate(model.layers):
        if (layer.activation, layer.recurrent_activation) != ("tanh", "sigmoid"):
            raise Unsupported(f"{framework}'s LSTM has fixed sigmoid/tanh activations; layer {k} uses "
                              f"activation={layer.activation!r}, recurrent_activation={layer.recurrent_activation!r}")
    return model


def cycle_inputs(items, n):
    """The first ``n`` items of ``items`` repeated: the inputs a timed loop steps through."""
    return itertools.islice(itertools.cycle(items), n)
