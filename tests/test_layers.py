"""The model description classes compare by value and print shortly (they hold arrays)."""

import pickle

import numpy as np
import pytest

from fastlstm import Dense, LSTMLayer, LSTMWeights


def _weights(rng, I=3, H=2, name="lstm", biases=True):
    a = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return LSTMWeights(a(4 * H, I), a(4 * H, H), a(4 * H) if biases else None, None, name=name)


def _copy(w, **changes):
    kw = dict(
        weight_ih=w.weight_ih.copy(),
        weight_hh=w.weight_hh.copy(),
        bias_ih=w.bias_ih,
        bias_hh=w.bias_hh,
        weight_hr=w.weight_hr,
        name=w.name,
    )
    kw.update(changes)
    return LSTMWeights(**kw)


def test_equal_values_are_equal_and_any_difference_is_not(rng):
    w = _weights(rng)
    assert w == _copy(w) and not (w != _copy(w))
    assert w == _copy(w, name="renamed")  # the name labels errors; it is not part of the value
    changed = w.weight_ih.copy()
    changed[0, 0] += 1e-7
    assert w != _copy(w, weight_ih=changed)
    assert w != _copy(w, bias_ih=None)
    layer = LSTMLayer((w,))
    assert layer == LSTMLayer((_copy(w),))
    assert layer != LSTMLayer((w,), go_backwards=True)
    assert layer != LSTMLayer((w, _copy(w)))
    head = Dense(np.ones((1, 2)), np.zeros(1))
    assert head == Dense(np.ones((1, 2), np.float32), np.zeros(1, np.float32))
    assert head != Dense(np.ones((1, 2)), None)
    assert head != Dense(np.ones((1, 2)), np.zeros(1), "tanh")
    assert w != layer and layer != head  # other types compare unequal, without raising
    assert pickle.loads(pickle.dumps(layer)) == layer


def test_reprs_are_short_and_hashing_is_refused(rng):
    w = _weights(rng, I=3, H=2, name="enc.l0")
    assert repr(w) == "LSTMWeights('enc.l0': 3 -> 2, 1 bias vector(s))"
    assert repr(LSTMLayer((w,))) == "LSTM(3 -> 2)"
    assert repr(Dense(np.ones((4, 2)), activation="softmax")) == "Dense(2 -> 4, activation='softmax')"
    for obj in (w, LSTMLayer((w,)), Dense(np.ones((1, 2)))):
        with pytest.raises(TypeError, match="unhashable"):
            hash(obj)
