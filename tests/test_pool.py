"""StreamPool: random open/close/step/reset/set_state sequences against lone Streams and the oracle,
refused calls that change nothing, a full pool, reserve, and ids that stay dead.

The reference for every pooled stream is its own unbatched ``model.stream()``.  A pool step runs the
N chosen rows through the packed GEMM while a lone stream uses the single-row kernel; both compute
every output as the same chain of multiply-adds (include/fastlstm_gemm.h), so the two agree bit for
bit, whatever rows a step takes.  Every stream is also followed by the float64
oracle (tests/oracle.py), stepped as one batch per pool step, so a shared bug in the two fastlstm
paths cannot hide.  Refused calls must change nothing at all: compared bit for bit.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import fastlstm
import oracle
from checks import assert_state_equal

I, H, L, O = 5, 12, 2, 3
TOL_ORACLE = 2e-5  # pool vs float64 oracle (float32 state + approximate activations, carried over steps)

_LAYERS, _HEAD = oracle.random_stack(np.random.default_rng(4), I, H, L, head_size=O)
MODEL = fastlstm.Model(_LAYERS, _HEAD)


def _max_rel_diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    return float(np.abs(a - b).max() / max(1.0, float(np.abs(b).max()))) if a.size else 0.0


def _state_diff(s, ref_h, ref_c):
    return max(_max_rel_diff(a, b) for a, b in zip(list(s.h) + list(s.c), list(ref_h) + list(ref_c)))


def _snapshot(pool, ids):
    return {sid: pool.get_state(sid) for sid in ids}


def _assert_unchanged(pool, before):
    assert sorted(pool.ids()) == sorted(before)
    for sid, st_ in before.items():
        assert_state_equal(pool.get_state(sid), st_)


def _random_state(rng, model_layers=_LAYERS, scale=0.7):
    s = oracle.random_state(rng, model_layers, None, scale)
    return fastlstm.State(s.h, s.c)


# --------------------------------------------------------------------------- hypothesis stateful

CAPACITY = 1000
MAX_OPEN = 320


class PoolMachine(RuleBasedStateMachine):
    """One pool of capacity 1000; each open id has a lone Stream and a float64 oracle state."""

    def __init__(self):
        super().__init__()
        self.pool = MODEL.pool(CAPACITY)
        self.refs = {}  # sid -> lone fastlstm Stream
        self.orc = {}  # sid -> (list of float64 h, list of float64 c), 1-d per (layer, direction)
        self.dead = set()  # ids of closed streams: never valid again, never reissued

    # -- helpers
    def _open(self, n):
        for _ in range(n):
            sid = self.pool.open()
            assert isinstance(sid, int)
            assert sid not in self.refs and sid not in self.dead
            self.refs[sid] = MODEL.stream()
            self.orc[sid] = ([np.zeros(H)] * L, [np.zeros(H)] * L)

    def _pick(self, rng, frac_lo, frac_hi, at_least=1):
        ids = np.array(sorted(self.refs), dtype=np.int64)
        n = int(round(len(ids) * rng.uniform(frac_lo, frac_hi)))
        n = min(len(ids), max(at_least, n))
        return rng.permutation(ids)[:n]

    # -- rules
    @initialize(n=st.integers(0, 300))
    def start(self, n):
        self._open(n)

    @precondition(lambda self: len(self.refs) < MAX_OPEN)
    @rule(n=st.integers(1, 80))
    def open_streams(self, n):
        self._open(min(n, MAX_OPEN - len(self.refs)))

    @precondition(lambda self: self.refs)
    @rule(seed=st.integers(0, 2**32 - 1), frac=st.floats(0.0, 0.5))
    def close_streams(self, seed, frac):
        for sid in self._pick(np.random.default_rng(seed), frac, frac):
            sid = int(sid)
            self.pool.close(sid)
            del self.refs[sid], self.orc[sid]
            self.dead.add(sid)

    @precondition(lambda self: self.refs)
    @rule(
        seed=st.integers(0, 2**32 - 1),
        frac=st.floats(0.0, 1.0),
        scale=st.sampled_from([0.5, 1.0, 3.0]),
        how=st.sampled_from(["array", "list", "out", "int32", "big-endian"]),
    )
    def step(self, seed, frac, scale, how):
        rng = np.random.default_rng(seed)
        ids = self._pick(rng, frac, frac)  # any subset, in any order
        x = (scale * rng.standard_normal((len(ids), I))).astype(np.float32)
        if how == "array":
            y = self.pool.step(ids, x)
        elif how == "list":
            y = self.pool.step([int(s) for s in ids], x.astype(np.float64).tolist())
        elif how == "int32" and ids.max() < 2**31:
            y = self.pool.step(ids.astype(np.int32), x)
        elif how == "big-endian":  # read by value, not as native bytes
            y = self.pool.step(ids.astype(">i8"), x.astype(">f4"))
        else:
            out = np.full((len(ids), O), np.nan, np.float32)
            y = self.pool.step(ids, x, out=out)
            assert y is out
        assert y.dtype == np.float32 and y.shape == (len(ids), O)
        # lone streams, one call each
        y_ref = np.stack([self.refs[int(s)].step(x[k]) for k, s in enumerate(ids)])
        assert np.array_equal(y, y_ref)
        # float64 oracle, the stepped streams as one batch of T=1
        init = oracle.OracleState(
            [np.stack([self.orc[int(s)][0][k] for s in ids]) for k in range(L)],
            [np.stack([self.orc[int(s)][1][k] for s in ids]) for k in range(L)],
        )
        y_orc, fin = oracle.forward(_LAYERS, _HEAD, x[None].astype(np.float64), init)
        assert _max_rel_diff(y, y_orc[0]) <= TOL_ORACLE
        for row, s in enumerate(ids):
            self.orc[int(s)] = ([fin.h[k][row] for k in range(L)], [fin.c[k][row] for k in range(L)])

    @precondition(lambda self: self.refs)
    @rule(seed=st.integers(0, 2**32 - 1))
    def reset(self, seed):
        for sid in self._pick(np.random.default_rng(seed), 0.0, 0.1):
            sid = int(sid)
            self.pool.reset(sid)
            self.refs[sid].reset()
            self.orc[sid] = ([np.zeros(H)] * L, [np.zeros(H)] * L)

    @precondition(lambda self: self.refs)
    @rule(seed=st.integers(0, 2**32 - 1), source=st.sampled_from(["random", "other stream", "bytes"]))
    def set_state(self, seed, source):
        rng = np.random.default_rng(seed)
        sid, other = (int(s) for s in np.resize(self._pick(rng, 0.0, 0.0, at_least=2), 2))
        if source == "random":
            new = _random_state(rng)
        elif source == "other stream":
            new = self.pool.get_state(other)
        else:
            new = fastlstm.State.from_bytes(self.pool.get_state(other).to_bytes())
        self.pool.set_state(sid, new)
        self.refs[sid].state = new
        self.orc[sid] = ([np.asarray(a, np.float64) for a in new.h], [np.asarray(a, np.float64) for a in new.c])
        assert_state_equal(self.pool.get_state(sid), new)

    @precondition(lambda self: self.refs)
    @rule(
        seed=st.integers(0, 2**32 - 1),
        kind=st.sampled_from(["dead", "repeat", "unknown", "nan", "overlap", "too many", "big-endian out"]),
    )
    def refused_step(self, seed, kind):
        """A step mixing good ids with one bad one (or a NaN, an out= overlapping x, more ids than the
        pool holds, a big-endian out=) raises; the invariant then checks nothing moved."""
        rng = np.random.default_rng(seed)
        ids = [int(s) for s in self._pick(rng, 0.0, 0.3)]
        if kind == "dead" and not self.dead:
            kind = "repeat"
        if kind in ("overlap", "big-endian out"):
            buf = rng.standard_normal(len(ids) * (I + O)).astype(np.float32)
            x = buf[: len(ids) * I].reshape(len(ids), I)
            lo = int(rng.integers(0, len(ids) * I)) if kind == "overlap" else len(ids) * I
            out = (
                buf[lo : lo + len(ids) * O].reshape(len(ids), O)
                if kind == "overlap"
                else np.empty((len(ids), O), ">f4")
            )
            with pytest.raises(ValueError if kind == "overlap" else TypeError, match=r"\bout\b"):
                self.pool.step(np.array(ids, np.int64), x, out=out)
            return
        if kind == "too many":
            ids = np.broadcast_to(np.int64(ids[0]), (CAPACITY + 1,))
            with pytest.raises(ValueError, match=r"\bids\b"):
                self.pool.step(ids, np.zeros((CAPACITY + 1, I), np.float32))
            return
        if kind == "nan":
            x = rng.standard_normal((len(ids), I)).astype(np.float32)
            x[int(rng.integers(len(ids))), int(rng.integers(I))] = np.nan
        else:
            bad = {
                "dead": lambda: sorted(self.dead)[int(rng.integers(len(self.dead)))],
                "repeat": lambda: ids[int(rng.integers(len(ids)))],
                "unknown": lambda: (7 << 32) | int(rng.integers(CAPACITY, 2**31)),
            }[kind]()
            ids.insert(int(rng.integers(len(ids) + 1)), bad)
            x = rng.standard_normal((len(ids), I)).astype(np.float32)
        with pytest.raises(ValueError):
            self.pool.step(np.array(ids, np.int64), x)

    # -- invariants
    @invariant()
    def pool_matches_references(self):
        assert len(self.pool) == len(self.refs)
        assert sorted(self.pool.ids()) == sorted(self.refs)
        for sid, ref in self.refs.items():
            got = self.pool.get_state(sid)
            want = ref.state
            assert_state_equal(got, want)
            assert _state_diff(got, *self.orc[sid]) <= TOL_ORACLE

    def teardown(self):
        # dead ids stay invalid even when their slots were reused
        for sid in list(self.dead)[:20]:
            with pytest.raises(ValueError):
                self.pool.get_state(sid)


TestPoolStateMachine = PoolMachine.TestCase
TestPoolStateMachine.settings = settings(
    max_examples=12,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# --------------------------------------------------------------------------- batches of every size


@pytest.mark.parametrize("proj", [0, 7])
def test_pool_matches_streams_and_oracle_across_chunk_sizes(proj, rng):
    """Batch sizes around the 16/32-row chunk edges, a projection (h narrower than c), random order."""
    layers, head = oracle.random_stack(np.random.default_rng(9), 6, 20, 2, proj_size=proj, head_size=4)
    model = fastlstm.Model(layers, head)
    pool = model.pool(300)
    ids = np.array([pool.open() for _ in range(260)])
    refs = {int(s): model.stream() for s in ids}
    orc = {int(s): None for s in ids}
    for n in (1, 2, 15, 16, 17, 31, 32, 33, 47, 64, 100, 255, 260):
        sel = rng.permutation(ids)[:n]
        x = rng.standard_normal((n, 6)).astype(np.float32)
        y = pool.step(sel, x)
        y_ref = np.stack([refs[int(s)].step(x[k]) for k, s in enumerate(sel)])
        assert np.array_equal(y, y_ref)
        for k, s in enumerate(sel):
            yo, orc[int(s)] = oracle.forward(layers, head, x[k : k + 1].astype(np.float64), orc[int(s)])
            assert _max_rel_diff(y[k], yo[0]) <= TOL_ORACLE
    for s in ids:
        got, want = pool.get_state(int(s)), refs[int(s)].state
        assert [a.shape for a in got.h] == [(proj or 20,)] * 2
        assert_state_equal(got, want)
        if orc[int(s)] is not None:
            assert _state_diff(got, orc[int(s)].h, orc[int(s)].c) <= TOL_ORACLE


def test_same_batch_same_bits_whatever_the_slots(rng):
    """The same rows in the same order give the same bits, whichever slots the streams sit in."""
    a, b = MODEL.pool(64), MODEL.pool(64)
    ida = np.array([a.open() for _ in range(40)])
    for _ in range(17):  # push b's streams into other slots
        b.close(b.open())
    filler = [b.open() for _ in range(9)]
    idb = np.array([b.open() for _ in range(40)])
    for s in filler:
        b.close(s)
    for _ in range(25):
        x = rng.standard_normal((40, I)).astype(np.float32)
        assert np.array_equal(a.step(ida, x), b.step(idb, x))
    for sa, sb in zip(ida, idb):
        assert_state_equal(a.get_state(int(sa)), b.get_state(int(sb)))


# --------------------------------------------------------------------------- refused calls


@pytest.fixture
def busy_pool(rng):
    """A pool of 64 with 20 open streams in non-zero states and 3 closed ids."""
    pool = MODEL.pool(64)
    ids = [pool.open() for _ in range(23)]
    for _ in range(5):
        pool.step(ids, rng.standard_normal((23, I)))
    dead = ids[3:6]
    for sid in dead:
        pool.close(sid)
    live = [s for s in ids if s not in dead]
    return pool, live, dead


def _bad_ids_cases(live, dead):
    a, b, c = live[:3]
    return [
        ("closed", [a, dead[0], b], ValueError),
        ("closed only", [dead[1]], ValueError),
        ("never opened slot", [a, 40], ValueError),
        ("slot beyond capacity", [a, 64], ValueError),
        ("slot beyond capacity, huge", [a, 2**31 + 5], ValueError),
        ("right slot, wrong generation", [a, (5 << 32) | (b & 0xFFFFFFFF)], ValueError),
        ("repeated", [a, b, a], ValueError),
        ("repeated at once", [c, c], ValueError),
        ("negative", [a, -1], ValueError),
        ("negative, large", [a, -(2**40)], ValueError),
        ("above int64", np.array([a, 2**64 - 1], dtype=np.uint64), ValueError),
        ("float array", np.array([a, b], dtype=np.float64), TypeError),
        ("float list", [float(a), float(b)], TypeError),
        ("bool array", np.array([True, False]), TypeError),
        ("strings", ["0", "1"], TypeError),
        ("None", [a, None], TypeError),
        ("object", np.array([a, object()], dtype=object), TypeError),
        ("2-d", np.array([[a, b]]), ValueError),
        ("0-d", np.int64(a), ValueError),
        ("complex", np.array([a, b], dtype=np.complex64), TypeError),
    ]


def test_bad_ids_raise_and_change_nothing(busy_pool, rng):
    pool, live, dead = busy_pool
    before = _snapshot(pool, live)
    for label, ids, exc in _bad_ids_cases(live, dead):
        n = np.size(ids) if np.ndim(ids) == 1 else 2
        x = rng.standard_normal((n, I)).astype(np.float32)
        out = np.zeros((n, O), np.float32)
        with pytest.raises(exc):
            pool.step(ids, x, out=out)
        _assert_unchanged(pool, before)
        assert not out.any(), label  # nothing written to out either
    # the same call with good ids does change the states (so the check above can fail)
    pool.step(live[:3], rng.standard_normal((3, I)))
    assert pool.get_state(live[0]) != before[live[0]]
    _assert_unchanged(pool, {s: before[s] for s in live[3:]} | {s: pool.get_state(s) for s in live[:3]})


def test_bad_x_and_out_change_nothing(busy_pool, rng):
    pool, live, _ = busy_pool
    ids = np.array(live[:4])
    good = rng.standard_normal((4, I)).astype(np.float32)
    nan, inf = good.copy(), good.copy()
    nan[2, 1] = np.nan
    inf[3, 4] = -np.inf
    cases = [
        (nan, None, ValueError),
        (inf, None, ValueError),
        (good[:3], None, ValueError),  # fewer rows than ids
        (np.zeros((5, I), np.float32), None, ValueError),  # more rows than ids
        (np.zeros((4, I + 1), np.float32), None, ValueError),
        (good.reshape(-1), None, ValueError),
        (good[None], None, ValueError),
        (good.astype(bool), None, TypeError),
        (good.astype(np.complex64), None, TypeError),
        ([["a"] * I] * 4, None, TypeError),
        (good, np.zeros((4, O), np.float64), TypeError),
        (good, np.zeros((3, O), np.float32), ValueError),
        (good, np.asfortranarray(np.zeros((4, O), np.float32)), ValueError),
        (good, [[0.0] * O] * 4, TypeError),
    ]
    before = _snapshot(pool, live)
    for x, out, exc in cases:
        with pytest.raises(exc):
            pool.step(ids, x, out=out)
        _assert_unchanged(pool, before)
    ro = np.zeros((4, O), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        pool.step(ids, good, out=ro)
    _assert_unchanged(pool, before)
    # float64, F-ordered and strided inputs are converted, not refused
    xf = np.asfortranarray(good.astype(np.float64))
    y1 = pool.step(ids, xf)
    assert y1.shape == (4, O)


def test_bad_sid_in_single_stream_methods_changes_nothing(busy_pool, rng):
    pool, live, dead = busy_pool
    good_state = pool.get_state(live[5])
    before = _snapshot(pool, live)
    bad = [
        (dead[0], ValueError),
        (40, ValueError),
        (64, ValueError),
        (-1, ValueError),
        ((3 << 32) | live[0], ValueError),
        (2**70, ValueError),
        ("1", TypeError),
        (None, TypeError),
        ([live[0]], TypeError),
    ]
    for sid, exc in bad:
        for call in (
            lambda s: pool.close(s),
            lambda s: pool.reset(s),
            lambda s: pool.get_state(s),
            lambda s: pool.set_state(s, good_state),
        ):
            with pytest.raises(exc):
                call(sid)
            _assert_unchanged(pool, before)
    assert len(pool) == len(live)


@pytest.mark.parametrize(
    "sid_of",
    [lambda s: float(s) + 0.5, float, np.float64, np.float32],
    ids=["float+0.5", "float", "np.float64", "np.float32"],
)
def test_float_sid_is_refused(busy_pool, sid_of):
    """A float is not a stream id: it must raise TypeError, not be truncated to some other stream's id."""
    pool, live, _ = busy_pool
    before = _snapshot(pool, live)
    sid = sid_of(live[1])
    for call in (
        lambda: pool.close(sid),
        lambda: pool.reset(sid),
        lambda: pool.get_state(sid),
        lambda: pool.set_state(sid, before[live[2]]),
    ):
        with pytest.raises(TypeError):
            call()
        _assert_unchanged(pool, before)


def test_numpy_integer_sids_accepted(busy_pool):
    pool, live, _ = busy_pool
    s = live[2]
    for sid in (np.int64(s), np.uint64(s), np.int32(s) if s < 2**31 else np.int64(s)):
        assert_state_equal(pool.get_state(sid), pool.get_state(s))


def test_bad_state_in_set_state_changes_nothing(busy_pool, rng):
    pool, live, _ = busy_pool
    before = _snapshot(pool, live)
    good = before[live[0]]
    nan_state = good.copy()
    nan_state.c[1][3] = np.nan
    wrong_width = fastlstm.State([np.zeros(H + 1), np.zeros(H)], [np.zeros(H), np.zeros(H)])
    batched = MODEL.stream(1).state  # (1, H) arrays: a batch, not one stream
    too_few = fastlstm.State([np.zeros(H)], [np.zeros(H)])
    for bad, exc in [
        (nan_state, ValueError),
        (wrong_width, ValueError),
        (batched, ValueError),
        (too_few, ValueError),
        (None, TypeError),
        ((good.h, good.c), TypeError),
    ]:
        with pytest.raises(exc):
            pool.set_state(live[1], bad)
        _assert_unchanged(pool, before)


# --------------------------------------------------------------------------- capacity, ids


def test_pool_full_raises_and_reserve_grows_keeping_states(rng):
    pool = MODEL.pool(5)
    assert pool.capacity == 5 and len(pool) == 0
    ids = [pool.open() for _ in range(5)]
    refs = [MODEL.stream() for _ in ids]
    for _ in range(6):
        x = rng.standard_normal((5, I)).astype(np.float32)
        pool.step(ids, x)
        for k, r in enumerate(refs):
            r.step(x[k])
    before = _snapshot(pool, ids)
    with pytest.raises(RuntimeError, match="full"):
        pool.open()
    _assert_unchanged(pool, before)
    assert pool.capacity == 5 and len(pool) == 5

    pool.close(ids[2])  # a free slot, then grow: the open ones keep their state
    del before[ids[2]]
    pool.reserve(12)
    assert pool.capacity == 12 and len(pool) == 4
    _assert_unchanged(pool, before)
    with pytest.raises(ValueError):
        pool.get_state(ids[2])  # still dead after the grow
    new = [pool.open() for _ in range(8)]
    assert len(set(new) | set(before)) == 12 and ids[2] not in new
    with pytest.raises(RuntimeError):
        pool.open()
    for sid in new:
        assert all(not a.any() for a in pool.get_state(sid).h + pool.get_state(sid).c)
    # the grown pool steps the old streams exactly like before
    keep = [s for s in ids if s != ids[2]]
    x = rng.standard_normal((4, I)).astype(np.float32)
    y = pool.step(keep, x)
    y_ref = np.stack([refs[ids.index(s)].step(x[k]) for k, s in enumerate(keep)])
    assert np.array_equal(y, y_ref)

    pool.reserve(3)  # never shrinks
    assert pool.capacity == 12 and len(pool) == 12
    for bad, exc in [(0, ValueError), (-4, ValueError), (2.5, TypeError), ("9", TypeError)]:
        with pytest.raises(exc):
            pool.reserve(bad)
    assert pool.capacity == 12
    with pytest.raises((ValueError, TypeError)):
        MODEL.pool(0)


def test_pool_never_grows_by_itself():
    pool = MODEL.pool(3)
    ids = [pool.open() for _ in range(3)]
    for _ in range(50):
        pool.step(ids, np.zeros((3, I), np.float32))
        with pytest.raises(RuntimeError):
            pool.open()
    assert pool.capacity == 3


def test_closed_ids_stay_invalid_after_their_slot_is_reused(rng):
    pool = MODEL.pool(4)
    keep = pool.open()
    seen, dead = {keep}, []
    sid = pool.open()
    for _ in range(300):
        pool.step([sid, keep], rng.standard_normal((2, I)))
        pool.close(sid)
        dead.append(sid)
        new = pool.open()  # reuses the slot just freed
        assert new not in seen
        assert (new & 0xFFFFFFFF) == (sid & 0xFFFFFFFF)
        seen.add(new)
        assert all(not a.any() for a in pool.get_state(new).h + pool.get_state(new).c)  # fresh
        sid = new
    before = _snapshot(pool, [keep, sid])
    for d in dead[::37] + dead[-2:]:
        for call in (
            lambda d=d: pool.get_state(d),
            lambda d=d: pool.close(d),
            lambda d=d: pool.reset(d),
            lambda d=d: pool.step([d], np.zeros((1, I))),
            lambda d=d: pool.step([keep, d], np.zeros((2, I))),
        ):
            with pytest.raises(ValueError):
                call()
    _assert_unchanged(pool, before)
    assert len(pool) == 2


def test_reset_and_state_copies_are_independent(rng):
    pool = MODEL.pool(4)
    a, b = pool.open(), pool.open()
    pool.step([a, b], rng.standard_normal((2, I)))
    sa = pool.get_state(a)
    sa.h[0][:] = 123.0  # a copy: editing it does not touch the pool
    assert not np.any(pool.get_state(a).h[0] == 123.0)
    sb = pool.get_state(b)
    pool.reset(a)
    assert all(not x.any() for x in pool.get_state(a).h + pool.get_state(a).c)
    assert_state_equal(pool.get_state(b), sb)
    assert pool.step([], np.zeros((0, I))).shape == (0, O)  # an empty step is legal and touches nothing
    assert_state_equal(pool.get_state(b), sb)
