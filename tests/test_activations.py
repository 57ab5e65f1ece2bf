"""The C activations (include/fastlstm_activations.h) against float64 NumPy.

The header promises a max abs error <= 5e-7 for sigmoid and tanh, NaN in ->
NaN out, exact saturation at +-inf, sigmoid(+-0) = 0.5 and tanh(+-0) = +-0.
The kernels call exactly these functions (through _kernels._activate, the
same inline code the fused gate pass uses)."""

import numpy as np
import pytest

from fastlstm import _kernels
from fastlstm._packing import ACTIVATION_CODES

BOUND = 5e-7


def _apply(name, x):
    return _kernels._activate(ACTIVATION_CODES[name], np.array(x, dtype=np.float32))


def _dense_grid():
    """Every 512th float32 bit pattern in [-40, 40] (about 4 million points: every
    binade from the smallest denormal up, densely), mirrored for the negatives."""
    pos = np.arange(0, np.float32(40.0).view(np.int32), 512, dtype=np.int32).view(np.float32)
    return np.concatenate([-pos[::-1], pos])


@pytest.mark.parametrize(
    "name, ref",
    [
        ("sigmoid", lambda x: 1.0 / (1.0 + np.exp(-x))),
        ("tanh", np.tanh),
    ],
)
def test_max_abs_error_dense(name, ref):
    x = _dense_grid()
    err = np.abs(_apply(name, x).astype(np.float64) - ref(x.astype(np.float64)))
    assert err.max() <= BOUND, f"{name}: max abs error {err.max():.3g} at x={x[err.argmax()]!r}"


@pytest.mark.parametrize(
    "name, ref",
    [
        ("sigmoid", lambda x: 1.0 / (1.0 + np.exp(-x))),
        ("tanh", np.tanh),
    ],
)
def test_error_on_random_and_tiny_inputs(name, ref):
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.normal(0, 3, 200_000),
            rng.normal(0, 1e-3, 50_000),
            10.0 ** rng.uniform(-38, 2, 50_000) * rng.choice([-1, 1], 50_000),
        ]
    ).astype(np.float32)
    err = np.abs(_apply(name, x).astype(np.float64) - ref(x.astype(np.float64)))
    assert err.max() <= BOUND


def test_tanh_is_odd_and_exact_at_zero():
    x = _dense_grid()
    y = _apply("tanh", x)
    np.testing.assert_array_equal(y, -_apply("tanh", -x))
    zeros = _apply("tanh", [0.0, -0.0])
    assert zeros[0] == 0.0 and not np.signbit(zeros[0])
    assert zeros[1] == 0.0 and np.signbit(zeros[1])


def test_special_values():
    s = _apply("sigmoid", [np.nan, np.inf, -np.inf, 0.0, -0.0, 88.0, -88.0, 1e30, -1e30])
    assert np.isnan(s[0])
    assert s[1] == 1.0 and s[7] == 1.0 and s[5] == 1.0
    assert 0.0 <= s[2] < 1e-30 and 0.0 <= s[6] < 1e-30 and 0.0 <= s[8] < 1e-30
    assert s[3] == 0.5 and s[4] == 0.5
    t = _apply("tanh", [np.nan, np.inf, -np.inf, 9.0, -9.0, 1e30, -1e30])
    assert np.isnan(t[0])
    np.testing.assert_array_equal(t[1:], [1.0, -1.0, 1.0, -1.0, 1.0, -1.0])


def test_outputs_stay_in_range():
    x = _dense_grid()
    s, t = _apply("sigmoid", x), _apply("tanh", x)
    assert s.min() >= 0.0 and s.max() <= 1.0
    assert t.min() >= -1.0 and t.max() <= 1.0


@pytest.mark.parametrize(
    "name, ref",
    [
        ("hard_sigmoid", lambda x: np.clip(x / 6.0 + 0.5, 0, 1)),  # Keras 3
        ("hard_sigmoid_keras2", lambda x: np.clip(0.2 * x + 0.5, 0, 1)),  # Keras 1/2
        ("relu", lambda x: np.maximum(x, 0)),
        ("linear", lambda x: x),
    ],
)
def test_piecewise_activations(name, ref):
    x = np.linspace(-10, 10, 100_001).astype(np.float32)
    np.testing.assert_allclose(_apply(name, x), ref(x.astype(np.float64)), atol=1e-7, rtol=0)


def test_softmax_rows():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 20, (50, 7)).astype(np.float32)
    x[0] = [1000, -1000, 0, 3, 3, 3, 999]  # would overflow a naive exp
    ref = np.exp(x - x.max(axis=1, keepdims=True).astype(np.float64))
    ref /= ref.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(_apply("softmax", x), ref, atol=1e-6, rtol=0)


# The layer activations: abs error <= 5e-7 * max(1, |x|) (include/fastlstm_activations.h).
def _erf(x):
    from scipy.special import erf

    return erf(x)


LAYER_REFS = {
    "selu": lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(np.minimum(x, 0))),
    "gelu": lambda x: 0.5 * x * (1 + _erf(x / np.sqrt(2))),
    "gelu_tanh": lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
    "silu": lambda x: x * 0.5 * (1 + np.tanh(0.5 * x)),
    "softplus": lambda x: np.logaddexp(0, x),
    "softsign": lambda x: x / (1 + np.abs(x)),
}


@pytest.mark.parametrize("name", sorted(LAYER_REFS))
def test_layer_activation_error_bound(name):
    x = _dense_grid()[::4]
    want = LAYER_REFS[name](x.astype(np.float64))
    err = np.abs(_apply(name, x).astype(np.float64) - want) / np.maximum(1, np.abs(x))
    assert err.max() <= BOUND, f"{name}: max scaled error {err.max():.3g} at x={x[err.argmax()]!r}"


@pytest.mark.parametrize("name", sorted(LAYER_REFS) + ["elu", "leaky_relu", "prelu"])
def test_layer_activation_special_values(name):
    """NaN in -> NaN out; 0 and the saturated ends match float64 (elu/leaky/prelu slope 1 here)."""
    refs = dict(
        LAYER_REFS,
        elu=lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
        leaky_relu=lambda x: x,
        prelu=lambda x: np.where(x >= 0, x, 0.25 * x),
    )
    slopes = np.array([0.25], np.float32) if name == "prelu" else None
    x = np.array([np.nan, 0.0, -0.0, 90.0, -90.0, 1e30, -1e30], np.float32)
    y = _kernels._activate(ACTIVATION_CODES[name], x.copy(), 1.0, slopes)
    assert np.isnan(y[0])
    want = refs[name](x[1:].astype(np.float64))
    np.testing.assert_allclose(y[1:], want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("alpha", [0.3, 1.0, 1.7])
def test_elu_and_leaky_relu_take_alpha(alpha):
    x = np.linspace(-20, 20, 40_001).astype(np.float32)
    x64 = x.astype(np.float64)
    elu = _kernels._activate(ACTIVATION_CODES["elu"], x.copy(), alpha)
    np.testing.assert_allclose(elu, np.where(x64 > 0, x64, alpha * np.expm1(np.minimum(x64, 0))), atol=5e-7 * alpha)
    leaky = _kernels._activate(ACTIVATION_CODES["leaky_relu"], x.copy(), alpha)
    np.testing.assert_allclose(leaky, np.where(x64 >= 0, x64, alpha * x64), atol=1e-6, rtol=1e-7)


def test_prelu_per_feature():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 3, (40, 5)).astype(np.float32)
    slopes = rng.uniform(-1, 1, 5).astype(np.float32)
    want = np.where(x >= 0, x, slopes * x)
    np.testing.assert_allclose(_kernels._activate(ACTIVATION_CODES["prelu"], x.copy(), 0.0, slopes), want, rtol=1e-7)
    with pytest.raises(ValueError, match="slopes"):
        _kernels._activate(ACTIVATION_CODES["prelu"], x.copy(), 0.0, slopes[:3])
