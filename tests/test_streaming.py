"""Streaming: Stream.step / step_many / reset / state against predict, and thread-count independence.

The promise (API.md) is that chunked stepping equals one predict over the concatenated sequence
to float32 rounding: the two paths may sum the input projection in a different order (one large
sgemm vs per-step products), so equality is asserted to ~1e-6, not bit for bit.  Everything that
is *the same computation* (restored state, thread counts, out= vs a fresh array) must be exact.
"""

import numpy as np
import pytest

import fastlstm
import oracle

ROUND = 1e-6  # "to float32 rounding" for outputs of magnitude ~1


def _close(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    return np.abs(a - b).max() <= ROUND * max(1.0, float(np.abs(b).max()))


def _x(rng, T, B, I):
    return rng.standard_normal((T, I) if B is None else (T, B, I)).astype(np.float32)


def _chunks(T, sizes=(1, 7, 64, 3, 0, 2, 11)):
    """Uneven chunk boundaries cycling through ``sizes`` (0 included: an empty chunk is legal)."""
    out, start, k = [], 0, 0
    while start < T:
        n = min(sizes[k % len(sizes)], T - start)
        out.append((start, start + n))
        start += n
        k += 1
    return out


@pytest.fixture
def model_and_weights(make_model):
    return make_model(6, 24, 2, seed=21, head_size=3)


@pytest.mark.parametrize("B", [None, 1, 5])
def test_step_and_step_many_agree_with_predict(B, model_and_weights, rng):
    model, layers, head = model_and_weights
    T = 150
    x = _x(rng, T, B, 6)
    full = model.predict(x)
    assert np.abs(full - oracle.forward(layers, head, x)[0]).max() <= 2e-6  # the reference itself

    stream = model.stream(B)
    stepped = np.stack([stream.step(x[t]) for t in range(T)])
    assert stepped.dtype == np.float32
    assert _close(stepped, full)

    stream = model.stream(B)
    parts = [stream.step_many(x[a:b]) for a, b in _chunks(T)]
    assert all(p.dtype == np.float32 for p in parts)
    assert _close(np.concatenate(parts), full)


@pytest.mark.parametrize("B", [None, 4])
def test_stream_from_initial_state_matches_predict(B, model_and_weights, rng):
    model, layers, _ = model_and_weights
    init = oracle.random_state(rng, layers, B)
    x = _x(rng, 40, B, 6)
    full = model.predict(x, fastlstm.State(h=init.h, c=init.c))
    stream = model.stream(B)
    stream.state = fastlstm.State(h=init.h, c=init.c)
    assert _close(np.concatenate([stream.step_many(x[a:b]) for a, b in _chunks(40)]), full)


@pytest.mark.parametrize("B", [None, 3])
def test_final_stream_state_matches_predict_state(B, model_and_weights, rng):
    model, _, _ = model_and_weights
    x = _x(rng, 30, B, 6)
    _, final = model.predict(x, return_state=True)
    stream = model.stream(B)
    stream.step_many(x)
    got = stream.state
    for a, b in zip(list(got.h) + list(got.c), list(final.h) + list(final.c)):
        assert _close(a, b)


@pytest.mark.parametrize("B", [None, 3])
def test_reset_zeroes_state(B, model_and_weights, rng):
    model, _, _ = model_and_weights
    x = _x(rng, 20, B, 6)
    stream = model.stream(B)
    first = stream.step_many(x)
    stream.step_many(_x(rng, 9, B, 6))
    stream.reset()
    for a in list(stream.state.h) + list(stream.state.c):
        assert not np.any(np.asarray(a))
    assert np.array_equal(stream.step_many(x), first)


@pytest.mark.parametrize("B", [None, 3])
def test_state_get_continue_restore_continue(B, model_and_weights, rng, state_equal):
    model, _, _ = model_and_weights
    stream = model.stream(B)
    stream.step_many(_x(rng, 17, B, 6))
    saved = stream.state
    snapshot = fastlstm.State(h=[np.array(a, copy=True) for a in saved.h], c=[np.array(a, copy=True) for a in saved.c])
    tail = _x(rng, 23, B, 6)
    once = np.stack([stream.step(tail[t]) for t in range(23)])
    state_equal(saved, snapshot)  # the getter returned a copy, not a live view
    stream.state = saved
    again = np.stack([stream.step(tail[t]) for t in range(23)])
    assert np.array_equal(once, again)


def test_streams_of_one_model_are_independent(model_and_weights, rng):
    model, _, _ = model_and_weights
    xa, xb = _x(rng, 30, 2, 6), _x(rng, 30, 2, 6)
    a, b = model.stream(2), model.stream(2)
    ya, yb = [], []
    for t in range(30):  # interleaved
        ya.append(a.step(xa[t]))
        yb.append(b.step(xb[t]))
    # Same computation (one step at a time) on a stream of its own: must be bit-identical.
    for xs, ys in ((xa, ya), (xb, yb)):
        alone = model.stream(2)
        assert np.array_equal(np.stack(ys), np.stack([alone.step(xs[t]) for t in range(30)]))


@pytest.mark.parametrize("B", [None, 1, 4])
def test_step_out_is_written_and_returned(B, model_and_weights, rng):
    model, _, _ = model_and_weights
    x = _x(rng, 12, B, 6)
    s1, s2 = model.stream(B), model.stream(B)
    shape = (3,) if B is None else (B, 3)
    for t in range(12):
        out = np.full(shape, np.nan, dtype=np.float32)
        ret = s1.step(x[t], out=out)
        assert ret is out
        assert np.array_equal(out, s2.step(x[t]))
    out = np.full((12,) + shape, np.nan, dtype=np.float32)
    ret = s1.step_many(x, out=out)
    assert ret is out
    assert np.array_equal(out, s2.step_many(x))


# H=48 runs every layer on one thread per chunk; H=516 (not a multiple of the 16-unit slices) takes
# the path that splits a single stream's hidden units over threads; B=130 is cut into four chunks.
@pytest.mark.parametrize("H, B", [(48, 1), (48, 3), (48, 64), (48, 130), (516, 1), (516, 3)])
def test_results_do_not_depend_on_thread_count(H, B, make_model, rng, restore_threads):
    model, _, _ = make_model(16, H, 2, seed=22, head_size=4)
    x = _x(rng, 25, B, 16)
    x_single = x[:, 0] if B == 1 else None  # B=1 also runs unbatched

    def run():
        out = {"predict": model.predict(x)}
        s = model.stream(B)
        out["step"] = np.stack([s.step(x[t]) for t in range(25)])
        s = model.stream(B)
        out["step_many"] = np.concatenate([s.step_many(x[a:b]) for a, b in _chunks(25)])
        if x_single is not None:
            out["predict1"] = model.predict(x_single)
            s = model.stream()
            out["step1"] = np.stack([s.step(x_single[t]) for t in range(25)])
        return out

    fastlstm.set_num_threads(1)
    assert fastlstm.get_num_threads() == 1
    one = run()
    fastlstm.set_num_threads(2)
    two = run()
    for key in one:
        assert np.array_equal(one[key], two[key]), key


def test_bidirectional_model_cannot_stream(make_model):
    model, _, _ = make_model(4, 6, 2, seed=23, bidirectional=True)
    with pytest.raises(ValueError, match="(?i)bidirectional"):
        model.stream()
    with pytest.raises(ValueError, match="(?i)bidirectional"):
        model.stream(3)


def test_go_backwards_model_cannot_stream(make_model):
    """go_backwards needs the last input first, so it cannot stream either (LSTMLayer.streamable)."""
    model, _, _ = make_model(4, 6, 1, seed=24, go_backwards=True)
    with pytest.raises(ValueError, match="(?i)backward"):
        model.stream()
