"""Shared fixtures for the engine tests.

Tests import the float64 reference as ``import oracle``; the tests folder is put on ``sys.path``
here so that also works under ``--import-mode=importlib`` (which does not add it).
"""

import os
import sys

import numpy as np
import pytest
from hypothesis import settings

#: Property tests draw the same examples on every run, so a CI run cannot fail on a draw that the
#: previous one never made; ``--hypothesis-profile=explore`` draws new ones when hunting for bugs.
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("repeatable")

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import oracle  # noqa: E402
from checks import assert_state_equal  # noqa: E402

#: The loader tests' fixtures (torch_one_thread), available to every module that asks for them.
pytest_plugins = ["loader_helpers"]


@pytest.fixture
def rng():
    """A fixed-seed generator, fresh per test, so each test is reproducible on its own."""
    return np.random.default_rng(20240611)


@pytest.fixture
def make_model():
    """Factory: ``make_model(I, H, L, seed=..., **random_stack_kw)`` -> (fastlstm.Model, layers, head).

    Returns the layer description too so a test can run the oracle on exactly the same weights.
    ``return_sequences`` is passed to the Model, everything else to :func:`oracle.random_stack`.
    """
    import fastlstm

    def build(input_size, hidden_size, num_layers=1, *, seed=0, return_sequences=True, **kw):
        layers, head = oracle.random_stack(np.random.default_rng(seed), input_size, hidden_size, num_layers, **kw)
        model = fastlstm.Model(layers, head, return_sequences=return_sequences)
        return model, layers, head

    return build


@pytest.fixture
def restore_threads():
    """Put fastlstm's thread count back after a test that changes it (other tests assume the default)."""
    import fastlstm

    before = fastlstm.get_num_threads()
    yield
    fastlstm.set_num_threads(before)


@pytest.fixture
def state_equal():
    """The exact state comparison, as a fixture (conftest holds no importable helpers)."""
    return assert_state_equal
