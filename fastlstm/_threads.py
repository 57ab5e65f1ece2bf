"""Thread policy: how many OpenMP threads the kernels use (see _blas.py for BLAS's)."""

import os

from . import _blas, _kernels, _validate


def available_cores() -> int:
    """The number of cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_num_threads(n: int) -> None:
    """Set the number of threads used across the batch (results do not depend on it).

    Parameters
    ----------
    n : int >= 1
    """
    _kernels._set_num_threads(_validate.positive_int(n, "n"))


def get_num_threads() -> int:
    """The number of threads used across the batch (default: the cores this process may use)."""
    return _kernels._get_num_threads()


_hooks, _sgemm64 = _blas.discover()
_kernels._set_blas_hooks(_hooks, _sgemm64)
_kernels._set_num_threads(available_cores())
