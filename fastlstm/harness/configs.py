"""The benchmark configurations and the models they are timed on.

Models are drawn in NumPy like PyTorch's default ``nn.LSTM`` initialisation (uniform in
+-1/sqrt(H)), seeded, so every engine and every run sees the same weights with the
magnitudes real models start from (no saturated gates, no denormals), and a process that
never imports torch can build them.  They are built through the public model description
(``LSTMWeights`` / ``LSTMLayer`` / ``Dense``), the route a user takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np


@dataclass(frozen=True)
class Config:
    """One benchmark shape: input size, hidden size, stacked layers, batch, sequence length."""

    name: str
    I: int
    H: int
    L: int
    B: int
    T: int

    @property
    def batched(self) -> bool:
        return self.B > 1

    def layer_inputs(self) -> List[int]:
        """Input width of each layer (the first reads x, the others read the previous h)."""
        return [self.I] + [self.H] * (self.L - 1)

    def flops_per_sequence(self) -> float:
        """Multiply-adds of the gate matmuls, counted as 2 flops each: 2*T*B*4H*(I_l+H) per layer.

        Activations and the cell update are left out on purpose: they are O(T*B*H),
        negligible next to the matmuls at the sizes where GFLOP/s is quoted.
        """
        return float(sum(2 * self.T * self.B * 4 * self.H * (i + self.H) for i in self.layer_inputs()))

    def label(self) -> str:
        return f"I={self.I} H={self.H} L={self.L} B={self.B} T={self.T}"


#: The six engine configurations, smallest first: one stream at four sizes, two batches.
CONFIGS: Dict[str, Config] = {
    c.name: c
    for c in (
        Config("tiny", 16, 32, 1, 1, 1000),
        Config("small", 64, 128, 1, 1, 500),
        Config("medium", 128, 256, 2, 1, 200),
        Config("medium-batch", 128, 256, 2, 32, 100),
        Config("large", 512, 1024, 1, 1, 50),
        Config("large-batch", 512, 1024, 1, 64, 50),
    )
}


def make_inputs(cfg: Config, seed: int = 1) -> np.ndarray:
    """A ``(T, B, I)`` float32 C-contiguous input sequence with unit-variance entries."""
    return np.random.default_rng(seed).standard_normal((cfg.T, cfg.B, cfg.I), dtype=np.float32)


def random_arrays(cfg: Config, head_size: Optional[int] = None, seed: int = 0) -> dict:
    """An ``nn.LSTM`` state_dict of NumPy arrays (``weight_ih_l0`` ...), plus ``head.weight`` and
    ``head.bias`` for a dense head of ``head_size`` outputs, drawn like PyTorch's default init."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(cfg.H)
    shapes = {}
    for k, i in enumerate(cfg.layer_inputs()):
        shapes.update(
            {
                f"weight_ih_l{k}": (4 * cfg.H, i),
                f"weight_hh_l{k}": (4 * cfg.H, cfg.H),
                f"bias_ih_l{k}": (4 * cfg.H,),
                f"bias_hh_l{k}": (4 * cfg.H,),
            }
        )
    if head_size:
        shapes.update({"head.weight": (head_size, cfg.H), "head.bias": (head_size,)})
    return {name: rng.uniform(-bound, bound, shape).astype(np.float32) for name, shape in shapes.items()}


def model_from_arrays(arrays: dict, num_layers: int):
    """A :class:`fastlstm.Model` from :func:`random_arrays`' output (or any ``nn.LSTM`` state_dict
    of NumPy arrays with optional ``head.weight``/``head.bias``)."""
    import fastlstm

    layers = []
    for k in range(num_layers):
        w = fastlstm.LSTMWeights(
            weight_ih=arrays[f"weight_ih_l{k}"],
            weight_hh=arrays[f"weight_hh_l{k}"],
            bias_ih=arrays.get(f"bias_ih_l{k}"),
            bias_hh=arrays.get(f"bias_hh_l{k}"),
            name=f"lstm.l{k}",
        )
        layers.append(fastlstm.LSTMLayer((w,)))
    head = None
    if "head.weight" in arrays:
        head = fastlstm.Dense(weight=arrays["head.weight"], bias=arrays.get("head.bias"))
    return fastlstm.Model(layers, head)


def random_model(cfg: Config, head_size: Optional[int] = None, seed: int = 0):
    """The model ``cfg`` is timed on: :func:`model_from_arrays` of :func:`random_arrays`."""
    return model_from_arrays(random_arrays(cfg, head_size, seed), cfg.L)
