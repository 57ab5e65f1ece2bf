"""A team of threads on one batch chunk: exact against one thread, and right against the oracle.

When a batch has fewer row chunks than threads (a batch of 40 at H=256 is one chunk), the
threads share each chunk, each computing the gates and state of its own slice of hidden
units, with a barrier wherever a product needs all of h.  These tests pick shapes the
engine really runs that way (checked through ``Network.plan``), then require every output
and the final state to be bit-identical to a single-threaded run, and predict to match the
float64 oracle.  Layers a team cannot split (a projection, a hidden size off the 16-unit
slices) run on one thread of the team, in between split ones.
"""

import numpy as np
import pytest

import fastlstm
import oracle
from checks import assert_state_equal

B, T = 40, 12


def _stack(rng, parts):
    """Concatenate random_stack pieces: parts = [(hidden, kwargs), ...], input 16."""
    layers, n_in = [], 16
    for hidden, kw in parts:
        piece, _ = oracle.random_stack(rng, n_in, hidden, 1, **kw)
        layers += piece
        n_in = piece[0].output_size
    head = oracle.torch_default_dense(rng, n_in, 5, "tanh")
    return layers, head


CASES = {
    "two layers": [(256, {}), (256, {})],
    "projection between": [(256, {}), (128, {"proj_size": 48}), (256, {})],
    "odd hidden size between": [(256, {}), (40, {}), (256, {})],
    "bidirectional sum": [(256, {"bidirectional": True, "merge_mode": "sum"}), (256, {})],
    "bidirectional concat": [(256, {"bidirectional": True})],
    "go_backwards": [(256, {"go_backwards": True})],
}


def _model(name):
    layers, head = _stack(np.random.default_rng(7), CASES[name])
    return fastlstm.Model(layers, head), layers, head


def _run_all(model, x, h0, c0):
    """Every batched entry point the engine has, from the same start state."""
    out = {"predict": model.predict(x, fastlstm.State(h0, c0))}
    if not model.streamable:
        return out
    s = model.stream(B)
    s.state = fastlstm.State(h0, c0)
    out["step"] = np.stack([s.step(x[t]) for t in range(T)])
    out["step state"] = s.state
    s = model.stream(B)
    s.state = fastlstm.State(h0, c0)
    out["step_many"] = np.concatenate([s.step_many(x[a:b]) for a, b in ((0, 5), (5, 6), (6, T))])
    pool = model.pool(B)
    ids = np.array([pool.open() for _ in range(B)])
    for k, sid in enumerate(ids):
        pool.set_state(sid, fastlstm.State([a[k] for a in h0], [a[k] for a in c0]))
    out["pool"] = np.stack([pool.step(ids, x[t]) for t in range(T)])
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_team_matches_one_thread_and_oracle(name, restore_threads):
    model, layers, head = _model(name)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((T, B, 16)).astype(np.float32)
    start = oracle.random_state(rng, layers, batch=B)
    h0, c0 = start.h, start.c

    fastlstm.set_num_threads(2)
    assert model._net.plan(B) == "team", "the shapes no longer reach the team path; pick bigger ones"
    two = _run_all(model, x, h0, c0)
    fastlstm.set_num_threads(1)
    assert model._net.plan(B) == "chunks"
    one = _run_all(model, x, h0, c0)

    for key, value in one.items():
        if isinstance(value, fastlstm.State):
            assert_state_equal(value, two[key])
        else:
            assert np.array_equal(value, two[key]), key

    want, _ = oracle.forward(layers, head, x, state=fastlstm.State(h0, c0))
    assert np.max(np.abs(one["predict"] - want)) <= 2e-6


def test_three_threads_split_unevenly(restore_threads):
    """16 hidden-unit slices of 256 over 3 threads (6/5/5 panels) still give identical results."""
    model, layers, head = _model("two layers")
    rng = np.random.default_rng(12)
    x = rng.standard_normal((T, B, 16)).astype(np.float32)
    fastlstm.set_num_threads(1)
    one = model.predict(x)
    fastlstm.set_num_threads(3)
    assert model._net.plan(B) == "team"
    assert np.array_equal(one, model.predict(x))


@pytest.mark.parametrize("name", ["two layers", "projection between", "bidirectional concat"])
def test_single_stream_team(name, restore_threads):
    """One stream: each thread of the team owns a slice of every big layer's units (their gate
    columns, then their state)."""
    model, layers, head = _model(name)
    rng = np.random.default_rng(13)
    x = rng.standard_normal((T, 16)).astype(np.float32)

    def run():
        out = {"predict": model.predict(x)}
        if model.streamable:
            s = model.stream()
            out["step"] = np.stack([s.step(x[t]) for t in range(T)])
            s = model.stream()
            out["step_many"] = np.concatenate([s.step_many(x[a:b]) for a, b in ((0, 1), (1, 3), (3, 7), (7, T))])
            out["state"] = s.state
        return out

    fastlstm.set_num_threads(2)
    assert model._net.plan(1) == "team"
    two = run()
    fastlstm.set_num_threads(1)
    one = run()
    for key, value in one.items():
        if isinstance(value, fastlstm.State):
            assert_state_equal(value, two[key])
        else:
            assert np.array_equal(value, two[key]), key
    want, _ = oracle.forward(layers, head, x)
    assert np.max(np.abs(one["predict"] - want)) <= 2e-6


def _recurrent_models():
    """GRU (reset after, both bidirectional and not) and RNN stacks big enough for a single
    stream's team, one with a hidden size off the 16-unit panels (its later gate blocks do
    not start on a panel, so their columns come from the row-major weights)."""
    from fastlstm import GRULayer, GRUWeights, RNNLayer, RNNWeights

    rng = np.random.default_rng(21)

    def u(*shape):
        return rng.uniform(-0.06, 0.06, shape).astype(np.float32)

    def gru(n_in, H, **kw):
        dirs = 2 if kw.get("bidirectional") else 1
        ws = [GRUWeights(u(3 * H, n_in), u(3 * H, H), u(3 * H), u(3 * H)) for _ in range(dirs)]
        return GRULayer(ws)

    def rnn(n_in, H):
        return RNNLayer([RNNWeights(u(H, n_in), u(H, H), u(H), u(H))])

    return {
        "gru two layers": [gru(16, 256), gru(256, 272)],
        "gru off panels": [gru(16, 264)],
        "gru bidirectional": [gru(16, 256, bidirectional=True)],
        "rnn": [rnn(16, 256), rnn(256, 264)],
    }


@pytest.mark.parametrize("name", ["gru two layers", "gru off panels", "gru bidirectional", "rnn"])
@pytest.mark.parametrize("threads", [2, 3])
def test_single_stream_team_gru_rnn(name, threads, restore_threads):
    """A single GRU or RNN stream's team (each thread owns a slice of units in every gate
    block) gives one thread's bits for predict, step and step_many, and matches the oracle."""
    layers = _recurrent_models()[name]
    model = fastlstm.Model(layers)
    x = np.random.default_rng(14).standard_normal((T, 16)).astype(np.float32)

    def run():
        if not model.streamable:
            return (model.predict(x),)
        s = model.stream()
        steps = np.stack([s.step(x[t]) for t in range(T)])
        s = model.stream()
        many = np.concatenate([s.step_many(x[a:b]) for a, b in ((0, 1), (1, 4), (4, T))])
        return model.predict(x), steps, many

    fastlstm.set_num_threads(threads)
    assert model._net.plan(1) == "team"
    split = run()
    fastlstm.set_num_threads(1)
    one = run()
    assert len(one) == (3 if model.streamable else 1)
    for a, b in zip(one, split):
        assert np.array_equal(a, b)
    want = oracle.forward_recurrent(layers, x[:, None, :])[:, 0]
    assert np.max(np.abs(one[0] - want)) <= 2e-6
