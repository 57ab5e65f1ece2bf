"""Bad and unusual input: refused with a message naming the argument, or accepted and converted.

Policy asserted here (API.md: never silently truncate; name the argument, expected and received):
* wrong rank / feature size / batch rows -> ValueError naming ``x``; non-numeric dtypes (object,
  str, complex) -> TypeError naming ``x``; float64 and integer input is converted, and gives
  exactly the float32 result;
* non-contiguous input (strided slices, Fortran order, negative strides) gives exactly the result
  of a contiguous copy;
* NaN/inf input is refused with ValueError naming ``x``, before any state changes;
* T=0 is legal: an empty (0, [B,] O) float32 array, and the state is left as it was;
* a bad ``out=`` buffer or ``state`` is refused naming ``out``/``state``;
* every refused streaming call leaves the stream's state exactly as it was.
"""

import numpy as np
import pytest

import fastlstm
import oracle

I, H, O = 5, 8, 3
X_NAME = r"\bx\b"


@pytest.fixture
def built(make_model):
    return make_model(I, H, 2, seed=31, head_size=O)


@pytest.fixture
def model(built):
    return built[0]


def _x(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _warm_stream(model, B, rng):
    """A stream with a non-zero state, so 'unchanged' is a meaningful check."""
    s = model.stream(B)
    s.step_many(_x(rng, 5, I) if B is None else _x(rng, 5, B, I))
    return s


# --------------------------------------------------------------------------- predict: shapes
@pytest.mark.parametrize("shape", [(), (I,), (2, 3, 4, I)])
def test_predict_wrong_rank(model, shape):
    with pytest.raises(ValueError, match=X_NAME):
        model.predict(np.zeros(shape, np.float32))


@pytest.mark.parametrize("shape", [(10, I + 1), (10, 2, I - 1), (10, 1)])
def test_predict_wrong_feature_size(model, shape):
    with pytest.raises(ValueError, match=X_NAME) as info:
        model.predict(np.zeros(shape, np.float32))
    # The message says what was expected and what was received.
    assert str(I) in str(info.value) and str(shape[-1]) in str(info.value)


def test_predict_wrong_feature_size_batch_first(model):
    with pytest.raises(ValueError, match=X_NAME):
        model.predict(np.zeros((2, 10, I + 2), np.float32), batch_first=True)


# --------------------------------------------------------------------------- predict: dtypes
@pytest.mark.parametrize(
    "bad",
    [
        np.array([[object()] * I] * 3, dtype=object),
        np.array([["a"] * I] * 3),
        np.ones((3, I), dtype=np.complex64),
        "hello",
    ],
    ids=["object", "str", "complex", "plain-string"],
)
def test_predict_non_numeric_is_type_error(model, bad):
    with pytest.raises(TypeError, match=X_NAME):
        model.predict(bad)


def test_predict_object_array_of_numbers_is_type_error(model):
    """Even numeric-looking object arrays are refused: the engine does not guess element types."""
    with pytest.raises(TypeError, match=X_NAME):
        model.predict(np.ones((3, I)).astype(object))


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int64, np.int32, np.uint8])
def test_predict_converts_real_dtypes(model, dtype, rng):
    x = (rng.standard_normal((12, 2, I)) * 3).astype(dtype)
    assert np.array_equal(model.predict(x), model.predict(x.astype(np.float32)))


def test_predict_accepts_nested_lists(model, rng):
    x = _x(rng, 6, I)
    assert np.array_equal(model.predict(x.tolist()), model.predict(x))


# --------------------------------------------------------------------------- predict: layouts
def _layouts(rng):
    wide = _x(rng, 20, 2 * I)
    wide3 = _x(rng, 20, 6, I)
    return {
        "column-stride": wide[:, ::2],
        "fortran-2d": np.asfortranarray(_x(rng, 20, I)),
        "reversed-time": _x(rng, 20, I)[::-1],
        "batch-stride": wide3[:, ::2, :],
        "fortran-3d": np.asfortranarray(wide3),
        "transposed": _x(rng, 6, 20, I).transpose(1, 0, 2),
    }


@pytest.mark.parametrize(
    "name", ["column-stride", "fortran-2d", "reversed-time", "batch-stride", "fortran-3d", "transposed"]
)
def test_predict_non_contiguous_equals_contiguous(model, name, rng):
    x = _layouts(rng)[name]
    assert not x.flags.c_contiguous
    assert np.array_equal(model.predict(x), model.predict(np.ascontiguousarray(x)))


def test_predict_batch_first_non_contiguous(model, rng):
    x = _x(rng, 20, 4, I).transpose(1, 0, 2)  # (B, T, I) view of a (T, B, I) array
    assert np.array_equal(model.predict(x, batch_first=True), model.predict(np.ascontiguousarray(x), batch_first=True))


def test_predict_does_not_modify_its_input(model, rng):
    x = _x(rng, 10, 2, I)
    before = x.copy()
    model.predict(x)
    assert np.array_equal(x, before)


# --------------------------------------------------------------------------- NaN / inf
# Non-finite input is refused before anything runs (ValueError naming x), so a stream's state can
# never hold NaN: after a refused call it goes on exactly as if the call had not been made.


@pytest.mark.parametrize("B", [None, 3])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_predict_refuses_non_finite_input(model, B, value, rng):
    x = _x(rng, 12, I) if B is None else _x(rng, 12, B, I)
    x[5, ..., 2] = value
    with pytest.raises(ValueError, match=X_NAME):
        model.predict(x)


@pytest.mark.parametrize("B", [None, 3])
def test_stream_step_refuses_nan_and_keeps_state(model, B, rng, state_equal):
    s = _warm_stream(model, B, rng)
    twin = model.stream(B)
    twin.state = s.state
    before = s.state
    bad = _x(rng, I) if B is None else _x(rng, B, I)
    bad[..., 0] = np.nan
    with pytest.raises(ValueError, match=X_NAME):
        s.step(bad)
    state_equal(s.state, before)
    x = _x(rng, 4, I) if B is None else _x(rng, 4, B, I)
    assert np.array_equal(s.step_many(x), twin.step_many(x))


@pytest.mark.parametrize("B", [None, 3])
def test_stream_step_many_refuses_a_chunk_with_inf_and_keeps_state(model, B, rng, state_equal):
    s = _warm_stream(model, B, rng)
    before = s.state
    x = _x(rng, 3, I) if B is None else _x(rng, 3, B, I)
    x[1] = np.inf  # the first step of the chunk is fine: the whole chunk is still refused
    with pytest.raises(ValueError, match=X_NAME):
        s.step_many(x)
    state_equal(s.state, before)


# --------------------------------------------------------------------------- empty sequences
@pytest.mark.parametrize(
    "shape,batch_first,want",
    [
        ((0, I), False, (0, O)),
        ((0, 4, I), False, (0, 4, O)),
        ((4, 0, I), True, (4, 0, O)),
    ],
)
def test_predict_empty_sequence(model, shape, batch_first, want):
    y = model.predict(np.zeros(shape, np.float32), batch_first=batch_first)
    assert y.shape == want and y.dtype == np.float32


def test_predict_empty_sequence_keeps_state(built, rng, state_equal):
    model, layers, _ = built
    init = oracle.random_state(rng, layers, 2)
    state = fastlstm.State(h=init.h, c=init.c)
    y, final = model.predict(np.zeros((0, 2, I), np.float32), state, return_state=True)
    assert y.shape == (0, 2, O)
    state_equal(final, state)


@pytest.mark.parametrize("B", [None, 3])
def test_step_many_empty_chunk(model, B, rng, state_equal):
    s = _warm_stream(model, B, rng)
    before = s.state
    y = s.step_many(np.zeros((0, I) if B is None else (0, B, I), np.float32))
    assert y.shape == ((0, O) if B is None else (0, B, O)) and y.dtype == np.float32
    state_equal(s.state, before)


# --------------------------------------------------------------------------- predict: state
def _other_state(make_model, rng, B, **kw):
    _, layers, _ = make_model(kw.pop("I", I), kw.pop("H", H), kw.pop("L", 2), seed=99, **kw)
    st = oracle.random_state(rng, layers, B)
    return fastlstm.State(h=st.h, c=st.c)


@pytest.mark.parametrize(
    "kw",
    [dict(H=H + 1), dict(L=1), dict(L=3), dict(proj_size=4)],
    ids=["hidden", "fewer-layers", "more-layers", "proj"],
)
@pytest.mark.parametrize("B", [None, 2])
def test_predict_state_from_another_model(model, make_model, rng, kw, B):
    state = _other_state(make_model, rng, B, **kw)
    x = _x(rng, 4, I) if B is None else _x(rng, 4, B, I)
    with pytest.raises(ValueError, match="state"):
        model.predict(x, state)


@pytest.mark.parametrize("B", [None, 2])
def test_state_made_by_a_model_with_another_input_size(model, make_model, rng, state_equal, B):
    """Same h/c shapes, different input size: only the state's origin tells them apart."""
    other, _, _ = make_model(I + 2, H, 2, seed=98, head_size=O)
    _, state = other.predict(_x(rng, 3, I + 2) if B is None else _x(rng, 3, B, I + 2), return_state=True)
    x = _x(rng, 4, I) if B is None else _x(rng, 4, B, I)
    with pytest.raises(ValueError, match="state"):
        model.predict(x, state)
    s = _warm_stream(model, B, rng)
    before = s.state
    with pytest.raises(ValueError, match="state"):
        s.state = state
    state_equal(s.state, before)


def test_predict_state_batch_mismatch(built, rng):
    model, layers, _ = built
    st = oracle.random_state(rng, layers, 2)
    with pytest.raises(ValueError, match="state"):
        model.predict(_x(rng, 4, 3, I), fastlstm.State(h=st.h, c=st.c))


@pytest.mark.parametrize("bad", [(np.zeros(H), np.zeros(H)), "state", 3], ids=["tuple", "str", "int"])
def test_predict_state_wrong_type(model, rng, bad):
    with pytest.raises(TypeError, match="state"):
        model.predict(_x(rng, 4, I), bad)


def test_predict_does_not_modify_given_state(built, rng, state_equal):
    model, layers, _ = built
    init = oracle.random_state(rng, layers, 2)
    state = fastlstm.State(h=init.h, c=init.c)
    copy = fastlstm.State(h=[a.copy() for a in init.h], c=[a.copy() for a in init.c])
    model.predict(_x(rng, 6, 2, I), state)
    state_equal(state, copy)


# --------------------------------------------------------------------------- stream construction
@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-2, ValueError), (2.5, TypeError), ("3", TypeError)])
def test_stream_bad_batch_size(model, bad, exc):
    with pytest.raises(exc, match="batch_size"):
        model.stream(bad)


def test_stream_accepts_numpy_integer_batch_size(model, rng):
    s = model.stream(np.int64(2))
    assert s.step(_x(rng, 2, I)).shape == (2, O)


# --------------------------------------------------------------------------- refused stream calls
def _bad_x_cases(B):
    """(description, x, exception) for stream.step with batch_size B."""
    good_step = (I,) if B is None else (B, I)
    cases = [
        ("feature", np.zeros(good_step[:-1] + (I + 1,), np.float32), ValueError),
        ("rank-up", np.zeros((1,) + good_step, np.float32), ValueError),
        ("object", np.zeros(good_step).astype(object), TypeError),
        ("complex", np.zeros(good_step, np.complex128), TypeError),
        ("str", np.full(good_step, "a"), TypeError),
    ]
    if B is None:
        cases.append(("scalar", np.float32(1.0), ValueError))
    else:
        cases.append(("rows", np.zeros((B + 1, I), np.float32), ValueError))
        cases.append(("rows-fewer", np.zeros((B - 1, I), np.float32), ValueError))
        cases.append(("rank-down", np.zeros((I,), np.float32), ValueError))
    return cases


def _cases(builder, *shape_args):
    """pytest params (B, index) over every case ``builder(B)`` returns, with readable ids."""
    return [
        pytest.param(B, k, id=f"B={B}-{case[0]}") for B in (None, 3) for k, case in enumerate(builder(B, *shape_args))
    ]


@pytest.mark.parametrize("B,k", _cases(_bad_x_cases))
def test_step_refuses_bad_x_and_keeps_state(model, B, k, rng, state_equal):
    s = _warm_stream(model, B, rng)
    _, x, exc = _bad_x_cases(B)[k]
    before = s.state
    with pytest.raises(exc, match=X_NAME):
        s.step(x)
    state_equal(s.state, before)


def _bad_chunk_cases(B):
    """(description, x, exception) for stream.step_many with batch_size B (T=4 steps)."""
    good = (4, I) if B is None else (4, B, I)
    cases = [
        ("feature", np.zeros(good[:-1] + (I + 1,), np.float32), ValueError),
        ("rank-down", np.zeros(good[1:], np.float32), ValueError),  # one step's shape, no time axis
        ("rank-up", np.zeros((4, 1) + good[1:], np.float32), ValueError),
        ("object", np.zeros(good).astype(object), TypeError),
        ("complex", np.zeros(good, np.complex128), TypeError),
        ("str", np.full(good, "a"), TypeError),
    ]
    if B is not None:
        cases.append(("rows", np.zeros((4, B + 1, I), np.float32), ValueError))
    return cases


@pytest.mark.parametrize("B,k", _cases(_bad_chunk_cases))
def test_step_many_refuses_bad_x_and_keeps_state(model, B, k, rng, state_equal):
    s = _warm_stream(model, B, rng)
    _, x, exc = _bad_chunk_cases(B)[k]
    before = s.state
    with pytest.raises(exc, match=X_NAME):
        s.step_many(x)
    state_equal(s.state, before)


def _bad_outs(B, steps=None):
    """(description, out, exception) for a step (steps=None) or a chunk of ``steps`` steps."""
    shape = (O,) if B is None else (B, O)
    if steps is not None:
        shape = (steps,) + shape
    wide = np.zeros(shape[:-1] + (2 * shape[-1],), np.float32)
    ro = np.zeros(shape, np.float32)
    ro.setflags(write=False)
    return [
        ("shape", np.zeros(shape[:-1] + (shape[-1] + 1,), np.float32), ValueError),
        ("shape-rank", np.zeros((1,) + shape, np.float32), ValueError),
        ("float64", np.zeros(shape, np.float64), (TypeError, ValueError)),
        ("int32", np.zeros(shape, np.int32), (TypeError, ValueError)),
        ("non-contiguous", wide[..., ::2], (TypeError, ValueError)),
        ("read-only", ro, (TypeError, ValueError)),
        ("list", [0.0] * shape[-1], (TypeError, ValueError)),
    ]


@pytest.mark.parametrize("B,k", _cases(_bad_outs))
def test_step_refuses_bad_out_and_keeps_state(model, B, k, rng, state_equal):
    s = _warm_stream(model, B, rng)
    x = _x(rng, I) if B is None else _x(rng, B, I)
    _, out, exc = _bad_outs(B)[k]
    before = s.state
    with pytest.raises(exc, match="out"):
        s.step(x, out=out)
    state_equal(s.state, before)


@pytest.mark.parametrize("B,k", _cases(_bad_outs, 4))
def test_step_many_refuses_bad_out_and_keeps_state(model, B, k, rng, state_equal):
    s = _warm_stream(model, B, rng)
    x = _x(rng, 4, I) if B is None else _x(rng, 4, B, I)
    _, out, exc = _bad_outs(B, 4)[k]
    before = s.state
    with pytest.raises(exc, match="out"):
        s.step_many(x, out=out)
    state_equal(s.state, before)


@pytest.mark.parametrize("kw", [dict(H=H + 1), dict(L=1), dict(proj_size=4)], ids=["hidden", "layers", "proj"])
@pytest.mark.parametrize("B", [None, 3])
def test_stream_refuses_state_of_another_model(model, make_model, rng, kw, B, state_equal):
    s = _warm_stream(model, B, rng)
    before = s.state
    with pytest.raises(ValueError, match="state"):
        s.state = _other_state(make_model, rng, B, **kw)
    state_equal(s.state, before)


def test_stream_refuses_state_of_another_batch_size(built, rng, state_equal):
    model, layers, _ = built
    s = _warm_stream(model, 3, rng)
    before = s.state
    st = oracle.random_state(rng, layers, 2)
    with pytest.raises(ValueError, match="state"):
        s.state = fastlstm.State(h=st.h, c=st.c)
    state_equal(s.state, before)


def test_step_accepts_non_contiguous_and_float64(model, rng):
    wide = rng.standard_normal((3, 2 * I))
    a, b = model.stream(3), model.stream(3)
    assert np.array_equal(a.step(wide[:, ::2]), b.step(np.ascontiguousarray(wide[:, ::2], dtype=np.float32)))
    f = np.asfortranarray(rng.standard_normal((6, 3, I)).astype(np.float32))
    assert np.array_equal(a.step_many(f), b.step_many(np.ascontiguousarray(f)))
