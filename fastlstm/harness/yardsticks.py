"""BLAS yardsticks: the matrix products an LSTM cannot avoid, timed beside the engine.

fastlstm's own kernels call no BLAS; these time numpy's or scipy's OpenBLAS (``lib``) on the
same shapes, as the bar the packed kernels are measured against.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np

from .configs import Config


def product(a: np.ndarray, w: np.ndarray, c: np.ndarray, lib: str = "numpy") -> Callable[[], object]:
    """A zero-argument callable doing ``c = a @ w`` (``a`` (m, k), ``w`` (k, n), all C-contiguous)
    with no copies; one row is a matrix-vector product (sgemv), as the engine does it."""
    if lib == "numpy":
        matmul = np.matmul
        if a.shape[0] == 1:
            v, y = a[0], c[0]  # a 1-d left operand makes numpy call sgemv
            return lambda: matmul(v, w, out=y)
        return lambda: matmul(a, w, out=c)
    if lib != "scipy":
        raise ValueError(f"lib: expected 'numpy' or 'scipy', got {lib!r}")
    from scipy.linalg.blas import sgemm, sgemv

    if a.shape[0] == 1:
        wt, v, y = w.T, a[0], c[0]  # w.T is (n, k) Fortran-ordered: y = w.T @ v, no copy
        return lambda: sgemv(1.0, wt, v, beta=0.0, y=y, overwrite_y=1)
    at, wt, ct = a.T, w.T, c.T  # a C-contiguous matrix is the transpose of a Fortran one
    return lambda: sgemm(1.0, wt, at, beta=0.0, c=ct, overwrite_c=1)


def _random(rng, *shape, scale=1.0):
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)


def call_overhead_case(lib: str = "numpy") -> Callable[[], object]:
    """A 1x1 product: nothing but the Python wrapper, whose cost the other yardsticks include."""
    a = np.ones((1, 1), np.float32)
    return product(a, a.copy(), np.zeros((1, 1), np.float32), lib)


def sgemm_peak_case(
    cfg: Config, layer_input: Optional[int] = None, lib: str = "numpy"
) -> Tuple[Callable[[], object], float]:
    """One sgemm of shape ``(T*B, I+H) x (I+H, 4H)`` and its flops: the peak a layer could reach.

    All T steps' gate products fused into one well-shaped matmul is an upper bound: the
    recurrence forbids it, so a real LSTM reaches a fraction of it.
    """
    i = cfg.I if layer_input is None else layer_input
    rng = np.random.default_rng(3)
    a, b = _random(rng, cfg.T * cfg.B, i + cfg.H), _random(rng, i + cfg.H, 4 * cfg.H)
    c = np.empty((cfg.T * cfg.B, 4 * cfg.H), np.float32)
    return product(a, b, c, lib), 2.0 * a.shape[0] * a.shape[1] * b.shape[1]


def blas_floor_case(
    cfg: Config, lib: str = "numpy", rows: Optional[int] = None, time_block: Optional[int] = None, chunks: int = 1
) -> Tuple[Callable[[], None], int]:
    """Only the BLAS work the engine's design needs for one ``predict``, and the number of calls.

    Per layer, per chunk of ``rows`` batch rows and per time block of ``time_block`` steps: one
    sgemm for the input projection, then one recurrent product per step (an sgemv when one row).
    Defaults: the whole batch in one chunk, the whole sequence in one block.  Called from
    Python, each call also pays the wrapper's cost (:func:`call_overhead_case`).
    """
    rng = np.random.default_rng(4)
    H, rows = cfg.H, rows or cfg.B
    tc = time_block or cfg.T
    blocks = -(-cfg.T // tc)
    parts = []
    for i in cfg.layer_inputs():
        proj = product(
            _random(rng, tc * rows, i),
            _random(rng, i, 4 * H, scale=0.05),
            np.empty((tc * rows, 4 * H), np.float32),
            lib,
        )
        rec = product(
            _random(rng, rows, H), _random(rng, H, 4 * H, scale=0.05), np.empty((rows, 4 * H), np.float32), lib
        )
        parts.append((proj, rec))

    def run():
        for _ in range(chunks * blocks):
            for proj, rec in parts:
                proj()
                for _ in range(tc):
                    rec()

    return run, chunks * blocks * len(parts) * (1 + tc)
