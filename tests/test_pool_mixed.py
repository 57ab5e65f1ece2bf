"""StreamPool of a mixed-layer model (causal Conv1D, GRU, LayerNorm, LSTM, a stride-1 pool, a global
pool, a Dense stack): random open/close/step/reset/set_state sequences, every pooled stream against
its own lone Stream, bit for bit, every layer's state included (hypothesis state machine); and the
same for a token model with Embedding(mask_zero=True), whose streams sit at different positions."""

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import fastlstm
from checks import assert_state_equal
from fastlstm.layers import (
    AvgPool1D,
    Conv1D,
    Dense,
    Embedding,
    GlobalAvgPool1D,
    GRULayer,
    GRUWeights,
    LayerNorm,
    LSTMLayer,
    LSTMWeights,
)

I, O = 3, 2


def _model():
    rng = np.random.default_rng(11)
    u = lambda *s: rng.uniform(-0.5, 0.5, s).astype(np.float32)  # noqa: E731
    return fastlstm.Model(
        [
            Conv1D(u(6, I, 3), u(6), dilation=2, padding="causal", activation="tanh"),
            GRULayer([GRUWeights(u(48, 6), u(48, 16), u(48), u(48))]),
            LayerNorm(16, u(16) + 1, u(16)),
            AvgPool1D(3, 1, "causal"),
            LSTMLayer([LSTMWeights(u(48, 16), u(48, 12), u(48), u(48))]),
            GlobalAvgPool1D(),
            Dense(u(8, 12), u(8), activation="gelu"),
            Dense(u(O, 8), u(O)),
        ]
    )


MODEL = _model()


def _masked_model():
    """Embedding(mask_zero=True) -> LSTM -> GRU -> Dense: masked rows keep their state per stream."""
    rng = np.random.default_rng(12)
    u = lambda *s: rng.uniform(-0.5, 0.5, s).astype(np.float32)  # noqa: E731
    return fastlstm.Model(
        [
            Embedding(u(VOCAB, 4), mask_zero=True),
            LSTMLayer([LSTMWeights(u(24, 4), u(24, 6), u(24), u(24))]),
            GRULayer([GRUWeights(u(15, 6), u(15, 5), u(15), u(15))]),
            Dense(u(O, 5), u(O)),
        ]
    )


VOCAB = 7


class MixedPoolMachine(RuleBasedStateMachine):
    model = MODEL
    n_buffers = 3  # the conv's, the stride-1 pool's and the global pool's

    def _inputs(self, rng, n):
        return rng.standard_normal((n, I)).astype(np.float32)

    def __init__(self):
        super().__init__()
        self.pool = self.model.pool(200)
        self.refs = {}
        self.dead = set()

    def _open(self, n):
        for _ in range(n):
            sid = self.pool.open()
            assert sid not in self.refs and sid not in self.dead
            self.refs[sid] = self.model.stream()

    def _pick(self, rng, frac, at_least=1):
        ids = np.array(sorted(self.refs), dtype=np.int64)
        n = min(len(ids), max(at_least, int(round(len(ids) * frac))))
        return rng.permutation(ids)[:n]

    @initialize(n=st.integers(0, 60))
    def start(self, n):
        self._open(n)

    @precondition(lambda self: len(self.refs) < 150)
    @rule(n=st.integers(1, 40))
    def open_streams(self, n):
        self._open(min(n, 150 - len(self.refs)))

    @precondition(lambda self: self.refs)
    @rule(seed=st.integers(0, 2**32 - 1), frac=st.floats(0.0, 0.5))
    def close_streams(self, seed, frac):
        for sid in self._pick(np.random.default_rng(seed), frac, 0):
            self.pool.close(int(sid))
            del self.refs[int(sid)]
            self.dead.add(int(sid))

    @precondition(lambda self: self.refs)
    @rule(seed=st.integers(0, 2**32 - 1), frac=st.floats(0.0, 1.0), steps=st.integers(1, 4))
    def step(self, seed, frac, steps):
        rng = np.random.default_rng(seed)
        ids = self._pick(rng, frac)
        for _ in range(steps):
            x = self._inputs(rng, len(ids))
            y = self.pool.step(ids, x)
            want = np.stack([self.refs[int(s)].step(x[k]) for k, s in enumerate(ids)])
            assert np.array_equal(y, want)

    @precondition(lambda self: self.refs)
    @rule(seed=st.integers(0, 2**32 - 1))
    def reset(self, seed):
        for sid in self._pick(np.random.default_rng(seed), 0.1):
            self.pool.reset(int(sid))
            self.refs[int(sid)].reset()

    @precondition(lambda self: len(self.refs) >= 2)
    @rule(seed=st.integers(0, 2**32 - 1), via_bytes=st.booleans())
    def set_state(self, seed, via_bytes):
        sid, other = (int(s) for s in self._pick(np.random.default_rng(seed), 0.0, at_least=2)[:2])
        new = self.pool.get_state(other)
        if via_bytes:
            new = fastlstm.State.from_bytes(new.to_bytes())
        self.pool.set_state(sid, new)
        self.refs[sid].state = new
        assert_state_equal(self.pool.get_state(sid), new)

    @precondition(lambda self: self.refs)
    @rule(seed=st.integers(0, 2**32 - 1))
    def refused_step(self, seed):
        rng = np.random.default_rng(seed)
        ids = [int(s) for s in self._pick(rng, 0.3)]
        before = {s: self.pool.get_state(s) for s in ids}
        x = self._inputs(rng, len(ids) + 1)
        with pytest.raises(ValueError):
            self.pool.step(np.array(ids + [ids[0]], np.int64), x)
        for s in ids:
            assert_state_equal(self.pool.get_state(s), before[s])

    @invariant()
    def pool_matches_lone_streams(self):
        assert sorted(self.pool.ids()) == sorted(self.refs)
        for sid, ref in self.refs.items():
            got = self.pool.get_state(sid)
            assert len(got.buffers) == self.n_buffers
            assert_state_equal(got, ref.state)


class MaskedPoolMachine(MixedPoolMachine):
    """The same rules over token ids, about 40% of them the masked id 0."""

    model = _masked_model()
    n_buffers = 0

    def _inputs(self, rng, n):
        ids = rng.integers(1, VOCAB, n)
        ids[rng.random(n) < 0.4] = 0
        return ids


_SETTINGS = settings(
    max_examples=10,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestMixedPoolStateMachine = MixedPoolMachine.TestCase
TestMixedPoolStateMachine.settings = _SETTINGS
TestMaskedPoolStateMachine = MaskedPoolMachine.TestCase
TestMaskedPoolStateMachine.settings = _SETTINGS
