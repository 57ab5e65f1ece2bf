"""fastlstm: fast CPU inference of LSTM networks, by the sequence or one step at a time.

    >>> import fastlstm
    >>> model = fastlstm.load("model.pt")          # PyTorch, Keras, safetensors, fastlstm files
    >>> y = model.predict(x)                       # whole sequences, (T, I) -> (T, O)
    >>> stream = model.stream()                    # live stepping, state kept between calls
    >>> y_t = stream.step(x_t)
"""

import os as _os

# OpenMP threads that spin while waiting steal the core from the thread doing
# the work whenever the machine has other load, which made a 2-thread step up
# to 10x slower than a 1-thread one here; sleeping waiters cost a few
# microseconds per parallel region instead.  Read once, when the OpenMP
# runtime loads: set OMP_WAIT_POLICY=ACTIVE before importing fastlstm to spin.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ._kernels import openmp_enabled  # noqa: E402
from ._streams import Stream, StreamPool  # noqa: E402
from ._threads import get_num_threads, set_num_threads  # noqa: E402
from .layers import (Activation, AvgPool1D, BatchNorm, Conv1D, Dense, Embedding, Flatten,  # noqa: E402
                     GlobalAvgPool1D, GlobalMaxPool1D, GRULayer, GRUWeights, LastStep, LayerNorm,
                     LSTMLayer, LSTMWeights, MaxPool1D, RepeatVector, RNNLayer, RNNWeights)
from .loaders import LoadWarning, from_keras, from_torch, load  # noqa: E402
from .model import Model  # noqa: E402
from .state import State  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "load", "from_torch", "from_keras", "LoadWarning",
    "Model", "Stream", "StreamPool", "State", "LSTMLayer", "LSTMWeights", "Dense",
    "GRULayer", "GRUWeights", "RNNLayer", "RNNWeights", "Conv1D", "Activation", "BatchNorm", "LayerNorm",
    "Embedding", "MaxPool1D", "AvgPool1D", "GlobalMaxPool1D", "GlobalAvgPool1D", "LastStep", "Flatten",
    "RepeatVector",
    "openmp_enabled", "set_num_threads", "get_num_threads", "__version__",
]
