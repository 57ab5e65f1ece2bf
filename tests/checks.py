"""Exact comparisons shared by the test modules (conftest holds no importable helpers)."""

import numpy as np


def assert_state_equal(a, b):
    """Exact equality of two states' h, c and buffer lists: same count, shapes and values."""
    assert len(a.h) == len(b.h) and len(a.c) == len(b.c) and len(a.buffers) == len(b.buffers)
    for x, y in zip(list(a.h) + list(a.c) + list(a.buffers), list(b.h) + list(b.c) + list(b.buffers)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape
        assert np.array_equal(x, y)
