"""Thread policy: how many threads the kernels use."""

import contextlib
import os

from . import _kernels, _validate

#: set_num_threads refuses more than this many threads per available core: past
#: the cores, extra threads only wait for each other at every step's barrier.
THREADS_PER_CORE_CAP = 4


def available_cores() -> int:
    """The number of cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def max_threads() -> int:
    """The most threads set_num_threads accepts: 4 x the available cores (and the pool's own limit)."""
    return max(1, min(THREADS_PER_CORE_CAP * available_cores(), _kernels._max_threads()))


def set_num_threads(n: int) -> None:
    """Set the number of threads used across the batch (results do not depend on it).

    Parameters
    ----------
    n : int, 1 <= n <= 4 x the cores this process may use

    Raises
    ------
    ValueError
        Outside that range.
    """
    n = _validate.positive_int(n, "n")
    cap = max_threads()
    if n > cap:
        raise ValueError(
            f"n: expected at most {cap} threads (4 x the {available_cores()} cores this process may use), got {n}"
        )
    _kernels._set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads used across the batch (default: the cores this process may use)."""
    return _kernels._get_num_threads()


@contextlib.contextmanager
def threads(n):
    """``with fastlstm.threads(n):`` runs the block with ``n`` threads, then restores the previous count.

    The count is process-wide (as set_num_threads is): other Python threads see it too."""
    before = get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        _kernels._set_num_threads(before)


_kernels._set_num_threads(min(available_cores(), max_threads()))
