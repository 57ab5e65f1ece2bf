"""Exact comparisons shared by the test modules (conftest holds no importable helpers)."""

import tempfile

import numpy as np


def assert_state_equal(a, b):
    """Exact equality of two states' h, c and buffer lists: same count, shapes and values."""
    assert len(a.h) == len(b.h) and len(a.c) == len(b.c) and len(a.buffers) == len(b.buffers)
    for x, y in zip(list(a.h) + list(a.c) + list(a.buffers), list(b.h) + list(b.c) + list(b.buffers)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape
        assert np.array_equal(x, y)


def child_env(**extra):
    """The environment for a Python child process that imports exactly the fastlstm this process imported.

    Start the child with ``cwd=CHILD_CWD``: ``python -c`` and ``python -m`` put the working directory
    first on ``sys.path``, and from the checkout that is the source tree, which shadows an installed
    (built) fastlstm with one that has no compiled kernels."""
    import os

    import fastlstm

    env = dict(os.environ, **extra)
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastlstm.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


#: A working directory outside the checkout for child processes (see child_env).
CHILD_CWD = tempfile.gettempdir()
