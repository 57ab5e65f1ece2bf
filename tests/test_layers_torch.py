"""Every new layer against live torch 2.13 modules given the same weights (fastlstm's classes
built directly from the modules' tensors): predict and step over 1000 steps, <= 1e-5."""

import numpy as np
import pytest
import torch
from torch import nn
from torch_chain import GLOBAL_AVG, GLOBAL_MAX, LAST, TORCH_ACTIVATIONS, build, torch_run

import fastlstm

TOL = 1e-5
T_LONG = 1000


def _x(rng, T, B, F):
    return rng.normal(0, 1, (T, B, F)).astype(np.float32)


def _check(ref, model, x, stream=True):
    """predict (and, for a streamable chain, step one at a time) against torch."""
    want = torch_run(ref, x)
    got = model.predict(x)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    if stream:
        st = model.stream(x.shape[1])
        steps = np.stack([st.step(x[t]) for t in range(x.shape[0])])
        full = want if want.ndim == 3 else None
        if full is None:  # a last-step chain: the stream's last output is predict's
            np.testing.assert_allclose(steps[-1], want, atol=TOL, rtol=0)
        else:
            np.testing.assert_allclose(steps, want, atol=TOL, rtol=0)


@pytest.mark.parametrize(
    "H, B, layers, bi",
    [(7, 1, 1, False), (13, 3, 2, False), (32, 5, 2, False), (48, 1, 1, False), (9, 2, 2, True), (32, 4, 1, True)],
)
def test_gru(rng, H, B, layers, bi):
    ref, model = build([nn.GRU(5, H, num_layers=layers, bidirectional=bi, batch_first=True)])
    T = T_LONG if not bi else 60
    _check(ref, model, _x(rng, T, B, 5), stream=not bi)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("B, bi", [(1, False), (3, False), (2, True)])
def test_rnn(rng, nonlinearity, B, bi):
    ref, model = build([nn.RNN(4, 11, num_layers=2, nonlinearity=nonlinearity, bidirectional=bi, batch_first=True)])
    _check(ref, model, _x(rng, T_LONG if not bi else 50, B, 4) * 0.5, stream=not bi)


@pytest.mark.parametrize("act", sorted(TORCH_ACTIVATIONS))
def test_dense_stack_with_activation(rng, act):
    parts = [
        nn.LSTM(3, 12, batch_first=True),
        nn.Linear(12, 9),
        TORCH_ACTIVATIONS[act](9),
        nn.Linear(9, 6),
        TORCH_ACTIVATIONS[act](6),
        nn.Linear(6, 2),
    ]
    ref, model = build(parts)
    _check(ref, model, _x(rng, 200, 2, 3) * 2)


def test_head_on_last_step_with_pre_head_activation(rng):
    """``fc2(relu(fc1(out[:, -1])))`` and ``fc(relu(out[:, -1]))``."""
    ref, model = build(
        [nn.LSTM(4, 10, batch_first=True), LAST, nn.ReLU(), nn.Linear(10, 8), nn.GELU(), nn.Linear(8, 3)]
    )
    _check(ref, model, _x(rng, 300, 3, 4))
    assert model.predict(_x(rng, 5, 3, 4)).shape == (3, 3)


def test_norms(rng):
    """LayerNorm between recurrent layers; BatchNorm after a Linear (folded) and after an
    activation (kept as a per-feature affine)."""
    parts = [
        nn.GRU(4, 16, batch_first=True),
        nn.LayerNorm(16),
        nn.LSTM(16, 12, batch_first=True),
        nn.Linear(12, 10),
        nn.BatchNorm1d(10),
        nn.ReLU(),
        nn.Linear(10, 7),
        nn.Tanh(),
        nn.BatchNorm1d(7),
        nn.Linear(7, 2),
    ]
    ref, model = build(parts)
    _check(ref, model, _x(rng, T_LONG, 2, 4))


def test_embedding_front_end(rng):
    ref, model = build([nn.Embedding(50, 8), nn.GRU(8, 16, batch_first=True), nn.Linear(16, 5)])
    ids = rng.integers(0, 50, (T_LONG, 3))
    want = torch_run(ref, ids)
    np.testing.assert_allclose(model.predict(ids), want, atol=TOL, rtol=0)
    np.testing.assert_allclose(model.predict(ids[:, 0]), want[:, 0], atol=TOL, rtol=0)
    st = model.stream(3)
    np.testing.assert_allclose(np.stack([st.step(ids[t]) for t in range(T_LONG)]), want, atol=TOL, rtol=0)
    one = model.stream()
    np.testing.assert_allclose(np.stack([one.step(int(i)) for i in ids[:20, 1]]), want[:20, 1], atol=TOL, rtol=0)


def test_embedding_refuses_bad_ids_before_running(rng):
    _, model = build([nn.Embedding(10, 4), nn.LSTM(4, 6, batch_first=True)])
    with pytest.raises(ValueError, match=r"token id 10 is outside .*\[0, 10\)"):
        model.predict(np.array([1, 2, 10]))
    with pytest.raises(ValueError, match=r"token id -1"):
        model.predict(np.array([[1], [-1]]))
    with pytest.raises(TypeError, match="integer token ids"):
        model.predict(np.zeros(3, np.float32))
    st = model.stream(2)
    st.step(np.array([3, 4]))
    before = st.state
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 10\).*unchanged"):
        st.step(np.array([3, 99]))
    np.testing.assert_array_equal(st.state.h[0], before.h[0])
    pool = model.pool(2)
    sid = pool.open()
    with pytest.raises(ValueError, match="token ids"):
        pool.step([sid], np.array([10]))


def _amp(seed=0):
    """A guitar-amp-style model: causal dilated Conv1d -> LSTM -> Dense x2, one sample per step."""
    torch.manual_seed(seed)
    return [
        ("causal", nn.Conv1d(1, 8, 5, dilation=2)),
        nn.Tanh(),
        nn.LSTM(8, 16, batch_first=True),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 1),
    ]


def test_causal_conv_streams_like_predict(rng):
    ref, model = build(_amp())
    x = _x(rng, T_LONG, 2, 1)
    _check(ref, model, x)
    st = model.stream(2)
    chunks = [st.step_many(x[a:b]) for a, b in [(0, 1), (1, 7), (7, 500), (500, T_LONG)]]
    np.testing.assert_allclose(np.concatenate(chunks), model.predict(x), atol=1e-6, rtol=0)


def test_causal_depthwise_conv_streams(rng):
    ref, model = build([("causal", nn.Conv1d(4, 8, 3, groups=4)), nn.GRU(8, 8, batch_first=True)])
    _check(ref, model, _x(rng, T_LONG, 3, 4))


@pytest.mark.parametrize(
    "conv",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=4, stride=2),
        dict(kernel_size=3, dilation=3, padding=2),
        dict(kernel_size=5, padding="same"),
        dict(kernel_size=4, padding="same", dilation=2),
        dict(kernel_size=3, groups=3, padding=1),
        dict(kernel_size=2, groups=3, stride=3),
    ],
)
def test_conv_predict_only(rng, conv):
    ref, model = build([nn.Conv1d(3, 6, **conv), nn.ReLU(), nn.LSTM(6, 8, batch_first=True), nn.Linear(8, 2)])
    _check(ref, model, _x(rng, 97, 2, 3), stream=False)
    with pytest.raises(ValueError, match=r"cannot stream: layer 0 is a Conv1D with (stride|padding)"):
        model.stream()
    with pytest.raises(ValueError, match="cannot stream"):
        model.pool(2)


@pytest.mark.parametrize(
    "pool",
    [
        nn.MaxPool1d(2),
        nn.MaxPool1d(3, stride=2, padding=1),
        nn.AvgPool1d(2),
        nn.AvgPool1d(3, stride=2, padding=1),
        nn.AvgPool1d(3, stride=1, padding=1, count_include_pad=False),
    ],
)
def test_conv_pool_recurrent(rng, pool):
    """The usual Conv1D -> MaxPooling1D -> LSTM/GRU -> Dense, predict only."""
    ref, model = build([nn.Conv1d(2, 6, 3), nn.ReLU(), pool, nn.GRU(6, 10, batch_first=True), LAST, nn.Linear(10, 3)])
    _check(ref, model, _x(rng, 101, 3, 2), stream=False)
    with pytest.raises(ValueError, match="cannot stream"):
        model.stream()


@pytest.mark.parametrize("glob", [GLOBAL_MAX, GLOBAL_AVG])
def test_global_pools_stream(rng, glob):
    ref, model = build(
        [("causal", nn.Conv1d(2, 6, 3)), nn.ReLU(), nn.LSTM(6, 8, batch_first=True), glob, nn.Linear(8, 3)]
    )
    x = _x(rng, T_LONG, 2, 2)
    _check(ref, model, x)
    st = model.stream(2)
    for t in range(T_LONG):
        y = st.step(x[t])
    np.testing.assert_allclose(y, torch_run(ref, x[: t + 1]), atol=TOL, rtol=0)


def test_autoencoder_repeat_vector(rng):
    """LSTM encoder -> out[:, -1] -> RepeatVector(n) -> LSTM decoder -> Linear."""
    ref, model = build(
        [nn.LSTM(3, 12, batch_first=True), LAST, ("repeat", 9), nn.LSTM(12, 6, batch_first=True), nn.Linear(6, 3)]
    )
    _check(ref, model, _x(rng, 40, 2, 3), stream=False)
    assert model.predict(_x(rng, 40, 2, 3)).shape == (9, 2, 3)
    with pytest.raises(ValueError, match="RepeatVector"):
        model.stream()


def test_bidirectional_last_step_torch_semantics(rng):
    """``out[:, -1]`` of a bidirectional layer: both halves at the last step."""
    ref, model = build([nn.GRU(3, 8, bidirectional=True, batch_first=True), LAST, nn.Linear(16, 2)])
    _check(ref, model, _x(rng, 30, 2, 3), stream=False)


def test_mixed_model_bit_identical_across_threads(rng, restore_threads):
    _, model = build(_amp() + [nn.Tanh()])
    x = _x(rng, 300, 70, 1)
    outs = []
    for n in (1, 2, 3):
        fastlstm.set_num_threads(n)
        outs.append(model.predict(x))
        st = model.stream(70)
        outs.append(np.stack([st.step(x[t]) for t in range(20)]))
    for a, b in zip(outs[0::2], outs[2::2]):
        assert np.array_equal(a, b)
    for a, b in zip(outs[1::2], outs[3::2]):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("B", [40, 1])
@pytest.mark.parametrize("rnn", [lambda: nn.GRU(24, 256, batch_first=True), lambda: nn.RNN(24, 256, batch_first=True)])
def test_recurrent_teams_bit_identical(rng, restore_threads, rnn, B):
    """Chunks big enough for a team of threads splitting the hidden units (GRU: four gate blocks,
    RNN: one; a single stream: its gate columns, then its units) give the same bits as one
    thread, and match torch."""
    ref, model = build([rnn(), nn.Linear(256, 3)])
    x = _x(rng, 12, B, 24)
    fastlstm.set_num_threads(1)
    one, st1 = model.predict(x), model.stream(B)
    s1 = np.stack([st1.step(x[t]) for t in range(12)])
    fastlstm.set_num_threads(2)
    assert model._net.plan(B) == "team"
    two, st2 = model.predict(x), model.stream(B)
    s2 = np.stack([st2.step(x[t]) for t in range(12)])
    assert np.array_equal(one, two) and np.array_equal(s1, s2)
    np.testing.assert_allclose(two, torch_run(ref, x), atol=TOL, rtol=0)
