# Type stubs for the compiled module _kernels.pyx (Cython emits none).
from enum import IntEnum
from typing import Any, Dict, List, Literal, Optional, Tuple

import numpy as np
import numpy.typing as npt
from typing_extensions import disjoint_base

OVERFLOW_MESSAGE: str

# The C enums, exported by `cpdef enum` (values as in the C headers).
class fl_activation(IntEnum):
    FL_ACT_SIGMOID = 0
    FL_ACT_TANH = 1
    FL_ACT_HARD_SIGMOID = 2
    FL_ACT_HARD_SIGMOID_KERAS2 = 3
    FL_ACT_RELU = 4
    FL_ACT_LINEAR = 5
    FL_ACT_SOFTMAX = 6
    FL_ACT_ELU = 7
    FL_ACT_SELU = 8
    FL_ACT_LEAKY_RELU = 9
    FL_ACT_GELU = 10
    FL_ACT_GELU_TANH = 11
    FL_ACT_SILU = 12
    FL_ACT_SOFTPLUS = 13
    FL_ACT_SOFTSIGN = 14
    FL_ACT_PRELU = 15

class fl_merge(IntEnum):
    FL_MERGE_CONCAT = 0
    FL_MERGE_SUM = 1
    FL_MERGE_MUL = 2
    FL_MERGE_AVE = 3

class fl_precision(IntEnum):
    FL_PREC_FP32 = 0
    FL_PREC_BF16 = 1
    FL_PREC_INT8 = 2

class fl_layer_kind(IntEnum):
    FL_LAYER_LSTM = 0
    FL_LAYER_GRU = 1
    FL_LAYER_GRU_BEFORE = 2
    FL_LAYER_RNN = 3
    FL_LAYER_DENSE = 4
    FL_LAYER_ACTIVATION = 5
    FL_LAYER_AFFINE = 6
    FL_LAYER_LAYERNORM = 7
    FL_LAYER_EMBEDDING = 8
    FL_LAYER_CONV = 9
    FL_LAYER_MAXPOOL = 10
    FL_LAYER_AVGPOOL = 11
    FL_LAYER_GLOBAL_MAX = 12
    FL_LAYER_GLOBAL_AVG = 13
    FL_LAYER_LAST_STEP = 14
    FL_LAYER_REPEAT = 15
    FL_LAYER_FLATTEN = 16

def openmp_enabled() -> bool:
    """Whether the compiled kernels run batches on several threads (fastlstm's own pool)."""

def _isa_levels() -> Tuple[str, str, Dict[str, bool], Dict[str, bool]]:
    """(path the kernels use, best path this CPU has, {CPU feature: present}, {path: whether
    this CPU runs it} for every path, lowest first)."""

def _max_threads() -> int: ...
def _set_num_threads(n: int) -> None: ...
def _get_num_threads() -> int: ...
def _activate(
    kind: int, x: npt.NDArray[np.float32], alpha: float = 0.0, slopes: Optional[npt.NDArray[np.float32]] = None
) -> npt.NDArray[np.float32]: ...

# (label, entry, offset, width) of each piece of a stream's state row; label "h", "c" or "buf".
_StateLayout = List[Tuple[str, int, int, int]]

@disjoint_base
class Network:
    """The packed layer chain the kernels run: raw pointers into the arrays it keeps."""

    @property
    def streamable(self) -> bool: ...
    @property
    def state_layout(self) -> _StateLayout: ...
    @property
    def signature(self) -> Tuple[Tuple[Any, ...], ...]: ...
    def __new__(cls, layers: List[Any], state_layout: _StateLayout, signature: Any) -> Network: ...
    @property
    def state_size(self) -> int: ...
    @property
    def token_input(self) -> bool: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def n_in(self) -> int: ...
    @property
    def n_out(self) -> int: ...
    def time_block(self, T: int, rows: int) -> int: ...
    def out_steps(self, T: int) -> int: ...
    def chunks(self, B: int) -> int: ...
    def plan(self, B: int) -> Literal["team", "chunks"]: ...
    def forward(self, x: npt.NDArray[Any], y: npt.NDArray[np.float32], s: npt.NDArray[np.float32]) -> None: ...
