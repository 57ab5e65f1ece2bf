"""Thread policy: how many OpenMP threads the kernels use, and holding BLAS to
one thread inside our parallel regions.

scipy's OpenBLAS (the one ``scipy.linalg.cython_blas`` calls) runs its own
pthread pool.  Called from inside an OpenMP region it would start its threads
on top of ours, so the kernels lower its thread count around each parallel
region through the library's own ``openblas_set_num_threads`` -- a plain C call
through a pointer found here once, cheap enough for the per-step path.
"""

import ctypes
import operator
import os

from . import _kernels


def available_cores():
    """The number of cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _openblas_thread_hooks():
    """(set, get) function addresses of every pthread-layer OpenBLAS loaded in the process."""
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (loads scipy's OpenBLAS)
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return []
    hooks = []
    for lib in ThreadpoolController().lib_controllers:
        # An OpenMP-layer OpenBLAS already runs single-threaded inside a parallel region.
        if lib.internal_api != "openblas" or getattr(lib, "threading_layer", None) == "openmp":
            continue
        for prefix in ("", "scipy_"):
            for suffix in ("", "64_", "_64"):
                set_fn = getattr(lib.dynlib, f"{prefix}openblas_set_num_threads{suffix}", None)
                get_fn = getattr(lib.dynlib, f"{prefix}openblas_get_num_threads{suffix}", None)
                if set_fn is not None and get_fn is not None:
                    hooks.append((ctypes.cast(set_fn, ctypes.c_void_p).value,
                                  ctypes.cast(get_fn, ctypes.c_void_p).value))
                    break
            else:
                continue
            break
    return hooks


def set_num_threads(n):
    """Set the number of threads used across the batch (results do not depend on it).

    Parameters
    ----------
    n : int >= 1
    """
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"n: expected an int, got {type(n).__name__}") from None
    if n < 1:
        raise ValueError(f"n: expected at least 1 thread, got {n}")
    _kernels._set_num_threads(n)


def get_num_threads():
    """The number of threads used across the batch (default: the cores this process may use)."""
    return _kernels._get_num_threads()


_kernels._set_blas_hooks(_openblas_thread_hooks())
_kernels._set_num_threads(available_cores())
