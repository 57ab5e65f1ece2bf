"""Batch invariance: a stream's outputs are bit for bit the same whether it is stepped alone
(Stream.step), inside any StreamPool.step batch, or run as a sequence by predict with any batch
size, on one thread or two -- for every layer kind with a weight product (LSTM with and without projection, GRU reset
after and before, RNN, Conv1D, Dense narrower and wider than a 16-column panel).  Every product
computes each output as one chain of multiply-adds over k in order, starting from the bias,
whatever the row count (include/fastlstm_gemm.h).  tests/test_isa.py runs this file on every
kernel path the CPU has.  Closeness to the float64 oracle is tests/test_oracle_parity.py's job;
here the references are fastlstm's own other paths, compared with np.array_equal."""

import numpy as np
import pytest

import fastlstm
from fastlstm.layers import (
    Conv1D,
    Dense,
    GRULayer,
    GRUWeights,
    LSTMLayer,
    LSTMWeights,
    RNNLayer,
    RNNWeights,
)

I, T = 7, 9
BATCHES = (1, 2, 3, 37)
N_STREAMS = 37


def _u(rng, *shape):
    return rng.uniform(-0.6, 0.6, shape).astype(np.float32)


def _models():
    """{name: model}, random weights, sizes that leave partial panels and scalar tails."""
    rng = np.random.default_rng(21)
    u = lambda *s: _u(rng, *s)  # noqa: E731
    return {
        "lstm": fastlstm.Model([LSTMLayer([LSTMWeights(u(76, I), u(76, 19), u(76), u(76))]), Dense(u(3, 19), u(3))]),
        "lstm_proj": fastlstm.Model(
            [
                LSTMLayer([LSTMWeights(u(80, I), u(80, 9), u(80), u(80), u(9, 20))]),
                Dense(u(70, 9), u(70), activation="tanh"),
                Dense(u(2, 70), u(2)),
            ]
        ),
        "gru_after": fastlstm.Model([GRULayer([GRUWeights(u(63, I), u(63, 21), u(63), u(63))]), Dense(u(5, 21), u(5))]),
        "gru_before": fastlstm.Model(
            [GRULayer([GRUWeights(u(51, I), u(51, 17), u(51), u(51))], reset_after=False), Dense(u(33, 17), u(33))]
        ),
        "rnn_conv": fastlstm.Model(
            [
                Conv1D(u(11, I, 3), u(11), dilation=2, padding="causal", activation="tanh"),
                RNNLayer([RNNWeights(u(35, 11), u(35, 35), u(35), u(35))]),
                LSTMLayer([LSTMWeights(u(136, 35), u(136, 34), u(136), u(136))]),
                Dense(u(4, 34), u(4)),
            ]
        ),
    }


MODELS = _models()


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = fastlstm.get_num_threads()
    fastlstm.set_num_threads(request.param)
    yield request.param
    fastlstm.set_num_threads(before)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_lone_pool_predict_bit_identical(name, threads):
    model = MODELS[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    x = (1.5 * rng.standard_normal((T, N_STREAMS, I))).astype(np.float32)

    lone = [model.stream() for _ in range(N_STREAMS)]
    y_lone = np.stack([np.stack([lone[s].step(x[t, s]) for s in range(N_STREAMS)]) for t in range(T)])
    if threads > 1:  # the reference is always a lone stream on one thread
        fastlstm.set_num_threads(1)
        one = model.stream()
        assert np.array_equal(np.stack([one.step(x[t, 0]) for t in range(T)]), y_lone[:, 0])
        fastlstm.set_num_threads(threads)

    # the pool: each step a random subset of the streams, in a random order, with the stepped
    # ones' inputs; several steps per time index until every stream has taken it
    pool = model.pool(N_STREAMS)
    ids = [pool.open() for _ in range(N_STREAMS)]
    y_pool = np.full_like(y_lone, np.nan)
    for t in range(T):
        left = list(rng.permutation(N_STREAMS))
        while left:
            n = int(rng.integers(1, len(left) + 1))
            take, left = left[:n], left[n:]
            y_pool[t, take] = pool.step(np.array([ids[s] for s in take]), x[t, take])
    assert np.array_equal(y_pool, y_lone)

    for b in BATCHES:
        for s0 in range(0, N_STREAMS, b):
            s1 = min(N_STREAMS, s0 + b)
            y = model.predict(x[:, s0:s1])
            assert np.array_equal(y, y_lone[:, s0:s1]), (b, s0)
