"""fastlstm: fast CPU inference of LSTM networks, by the sequence or one step at a time.

>>> import fastlstm
>>> model = fastlstm.load("model.pt")          # PyTorch, Keras, safetensors, fastlstm files
>>> y = model.predict(x)                       # whole sequences, (T, I) -> (T, O)
>>> stream = model.stream()                    # live stepping, state kept between calls
>>> y_t = stream.step(x_t)
"""

from . import _isa  # noqa: F401  (checks FASTLSTM_ISA)
from ._config import show_config
from ._kernels import openmp_enabled
from ._streams import Stream, StreamPool
from ._threads import get_num_threads, set_num_threads, threads
from ._validate import PRECISIONS
from .layers import (
    Activation,
    AvgPool1D,
    BatchNorm,
    Conv1D,
    Dense,
    Embedding,
    Flatten,
    GlobalAvgPool1D,
    GlobalMaxPool1D,
    GRULayer,
    GRUWeights,
    LastStep,
    LayerNorm,
    LSTMLayer,
    LSTMWeights,
    MaxPool1D,
    RepeatVector,
    RNNLayer,
    RNNWeights,
)
from .loaders import LoadError, LoadWarning, from_keras, from_torch, load
from .model import Model
from .state import State

__version__ = "0.1.0"

__all__ = [
    "load",
    "from_torch",
    "from_keras",
    "LoadError",
    "LoadWarning",
    "Model",
    "PRECISIONS",
    "Stream",
    "StreamPool",
    "State",
    "LSTMLayer",
    "LSTMWeights",
    "Dense",
    "GRULayer",
    "GRUWeights",
    "RNNLayer",
    "RNNWeights",
    "Conv1D",
    "Activation",
    "BatchNorm",
    "LayerNorm",
    "Embedding",
    "MaxPool1D",
    "AvgPool1D",
    "GlobalMaxPool1D",
    "GlobalAvgPool1D",
    "LastStep",
    "Flatten",
    "RepeatVector",
    "openmp_enabled",
    "show_config",
    "set_num_threads",
    "get_num_threads",
    "threads",
    "__version__",
]


def __getattr__(name):
    """``fastlstm.serving`` and ``fastlstm.ray`` load on first use (ray is large and optional)."""
    if name in ("serving", "ray"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'fastlstm' has no attribute {name!r}")
