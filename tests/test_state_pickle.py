"""Serialisation: State.to_bytes/from_bytes and pickling a Model.

Both must be exact (API.md: a stream can move between processes or machines), so everything here
is compared with np.array_equal, never a tolerance.
"""

import pickle

import numpy as np
import pytest

import fastlstm
import oracle


def _x(rng, T, B, I):
    return rng.standard_normal((T, I) if B is None else (T, B, I)).astype(np.float32)


@pytest.mark.parametrize("B", [None, 1, 4])
@pytest.mark.parametrize("proj_size", [0, 3])
def test_state_bytes_round_trip_is_exact(B, proj_size, make_model, rng, state_equal):
    model, _, _ = make_model(5, 9, 2, seed=41, proj_size=proj_size, head_size=2)
    stream = model.stream(B)
    stream.step_many(_x(rng, 13, B, 5))
    state = stream.state
    blob = state.to_bytes()
    assert isinstance(blob, (bytes, bytearray, memoryview))
    restored = fastlstm.State.from_bytes(bytes(blob))
    state_equal(restored, state)
    for a in list(restored.h) + list(restored.c):
        assert np.asarray(a).dtype == np.float32

    # Continuing from the restored state in a new stream is bit-identical to continuing the old one.
    tail = _x(rng, 9, B, 5)
    other = model.stream(B)
    other.state = restored
    assert np.array_equal(other.step_many(tail), stream.step_many(tail))


def test_state_bytes_keeps_extreme_values(rng, state_equal):
    """Arbitrary float32 bit patterns (denormals, -0.0, huge values) survive the round trip."""
    h = [np.array([[1e-42, -0.0, 3.4e38], [np.float32(np.pi), -1e-45, 7.0]], np.float32)]
    c = [np.array([[np.nextafter(np.float32(1), np.float32(2)), 0.0, -2.5], [1.0, 2.0, 3.0]], np.float32)]
    state = fastlstm.State(h=h, c=c)
    restored = fastlstm.State.from_bytes(state.to_bytes())
    state_equal(restored, state)
    assert np.array_equal(np.asarray(restored.h[0]).view(np.uint32), h[0].view(np.uint32))


def test_state_from_predict_round_trips(make_model, rng, state_equal):
    model, layers, _ = make_model(5, 9, 2, seed=42, bidirectional=True)
    x = _x(rng, 11, 3, 5)
    y, state = model.predict(x, return_state=True)
    restored = fastlstm.State.from_bytes(state.to_bytes())
    state_equal(restored, state)
    tail = _x(rng, 6, 3, 5)
    assert np.array_equal(model.predict(tail, restored), model.predict(tail, state))


@pytest.mark.parametrize("blob", [b"", b"not a state", b"\x00" * 64], ids=["empty", "text", "zeros"])
def test_state_from_garbage_bytes_is_refused(blob):
    with pytest.raises((ValueError, TypeError)):
        fastlstm.State.from_bytes(blob)


def test_state_from_truncated_bytes_is_refused(make_model, rng):
    model, _, _ = make_model(5, 9, 1, seed=43)
    stream = model.stream(2)
    stream.step(_x(rng, 1, 2, 5)[0])
    blob = stream.state.to_bytes()
    with pytest.raises((ValueError, TypeError)):
        fastlstm.State.from_bytes(blob[: len(blob) // 2])


@pytest.mark.parametrize(
    "kw",
    [dict(), dict(bidirectional=True, proj_size=3), dict(head_activation="softmax"), dict(go_backwards=True)],
    ids=["plain", "bidi-proj", "softmax", "go_backwards"],
)
@pytest.mark.parametrize("return_sequences", [True, False])
def test_pickled_model_predicts_identically(kw, return_sequences, make_model, rng):
    model, layers, head = make_model(6, 10, 2, seed=44, head_size=3, return_sequences=return_sequences, **kw)
    clone = pickle.loads(pickle.dumps(model))
    assert (clone.input_size, clone.output_size) == (model.input_size, model.output_size)
    for x in (_x(rng, 30, None, 6), _x(rng, 30, 4, 6)):
        y = model.predict(x)
        assert np.array_equal(clone.predict(x), y)
        ref, _ = oracle.forward(layers, head, x, return_sequences=return_sequences)
        assert np.abs(y - ref).max() <= 2e-6  # and it is the right answer, not a shared wrong one


def test_pickle_all_protocols(make_model, rng):
    model, _, _ = make_model(4, 7, 1, seed=45, head_size=2)
    x = _x(rng, 10, 2, 4)
    y = model.predict(x)
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        assert np.array_equal(pickle.loads(pickle.dumps(model, protocol=protocol)).predict(x), y)


@pytest.mark.parametrize("B", [None, 3])
def test_stream_of_unpickled_model(B, make_model, rng):
    model, _, _ = make_model(6, 10, 2, seed=46, head_size=3)
    clone = pickle.loads(pickle.dumps(model))
    x = _x(rng, 20, B, 6)
    a, b = model.stream(B), clone.stream(B)
    assert np.array_equal(np.stack([b.step(x[t]) for t in range(20)]), np.stack([a.step(x[t]) for t in range(20)]))
    # A state taken from the original model's stream works in the clone's stream.
    b.state = a.state
    tail = _x(rng, 5, B, 6)
    assert np.array_equal(b.step_many(tail), a.step_many(tail))


def test_unpickled_model_is_independent_of_the_original(make_model, rng):
    """The pickle carries the weights: deleting the original does not affect the clone."""
    model, _, _ = make_model(4, 7, 1, seed=47)
    x = _x(rng, 10, None, 4)
    y = model.predict(x)
    blob = pickle.dumps(model)
    del model
    assert np.array_equal(pickle.loads(blob).predict(x), y)
