"""Hardening of the run-time API (issue 9): what a hostile caller or an unlucky operator can do to a
model, a Stream or a StreamPool, and what must happen instead of a hang, a crash or a poisoned state.

* fork: children of a process that stepped with 2 threads (gunicorn --preload, celery prefork,
  multiprocessing's 'fork') step with 2 threads themselves, bit-identically to the parent;
* set_num_threads refuses absurd counts; ``fastlstm.threads(n)`` restores the count;
* Stream, StreamPool and Network exist only fully built: ``__new__`` without the arguments raises;
* big-endian arrays are read by value on every path, never as native bytes;
* counts past 32 bits are refused with ValueError before anything is converted or allocated;
* a finite glitch (|x| = 3e38) cannot poison a state: a step that overflows is undone and refused;
* ``out=`` overlapping ``x`` is refused; a NaN written into ``x`` by another thread during a step
  never reaches the state;
* ``step_many`` is bit-identical to T calls of ``step``.

Crash-prone and memory-heavy cases run in child processes (a regression then fails one test instead
of killing the run), the size cases under an address-space limit, so nothing here allocates much.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastlstm
import oracle
from checks import assert_state_equal, child_env

I, H, O = 6, 16, 3
TOL = 2e-5  # fastlstm (float32, approximate activations) vs the float64 oracle over a few steps


def _run_child(code, *args, timeout=120, limit_bytes=None):
    """Run ``code`` in a fresh interpreter; returns its stdout (the test fails on a non-zero exit)."""
    pre = ""
    if limit_bytes:
        pre = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({limit_bytes}, {limit_bytes}))\n"
    proc = subprocess.run(
        [sys.executable, "-c", pre + code, *map(str, args)],
        env=child_env(),
        cwd=os.path.dirname(os.path.abspath(__file__)),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"child exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stdout


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(1.0, float(np.abs(b).max())))


@pytest.fixture(scope="module")
def small():
    layers, head = oracle.random_stack(np.random.default_rng(3), I, H, 2, head_size=O)
    return fastlstm.Model(layers, head), layers, head


# --------------------------------------------------------------------------- fork
# Two models, so that both ways of splitting work over threads are forked: a single stream of
# H=256 (a team per step) and a batch of 64 rows (a thread per 32-row chunk).
FORK_SETUP = """
import json, os, sys, time
import numpy as np
import fastlstm, oracle
layers, head = oracle.random_stack(np.random.default_rng(1), 8, 256, 2, head_size=3)
big = fastlstm.Model(layers, head)
layers2, head2 = oracle.random_stack(np.random.default_rng(2), 8, 32, 1, head_size=3)
wide = fastlstm.Model(layers2, head2)
rng = np.random.default_rng(5)
x1 = rng.standard_normal((12, 8)).astype(np.float32)
x64 = rng.standard_normal((12, 64, 8)).astype(np.float32)

def run_both():
    fastlstm.set_num_threads(2)
    s, b = big.stream(), wide.stream(64)
    return np.stack([s.step(v) for v in x1]), np.stack([b.step(v) for v in x64])

ref1, ref64 = run_both()          # the parent uses its threads first, as a preloading server does
assert big._net.plan(1) == "team" and wide._net.plan(64) == "chunks"
np.save(sys.argv[1] + "/ref1.npy", ref1)
np.save(sys.argv[1] + "/ref64.npy", ref64)
"""

PREFORK = (
    FORK_SETUP
    + """
pids = []
for k in range(4):
    pid = os.fork()
    if pid == 0:
        y1, y64 = run_both()
        os._exit(0 if np.array_equal(y1, ref1) and np.array_equal(y64, ref64) else 3)
    pids.append(pid)
deadline, status = time.time() + 60, {}
while len(status) < len(pids) and time.time() < deadline:
    for pid in pids:
        if pid not in status:
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                status[pid] = os.waitstatus_to_exitcode(code)
    time.sleep(0.02)
for pid in pids:
    if pid not in status:
        os.kill(pid, 9)
        status[pid] = "hung"
print(json.dumps(sorted(map(str, status.values()))))
"""
)

MP_POOL = (
    FORK_SETUP
    + """
import multiprocessing as mp

def child(_):
    y1, y64 = run_both()
    return bool(np.array_equal(y1, ref1) and np.array_equal(y64, ref64))

with mp.get_context("fork").Pool(3) as p:
    try:
        result = p.map_async(child, range(6)).get(timeout=60)
    except mp.TimeoutError:
        result = "hung"
    p.terminate()
print(json.dumps(result))
"""
)


def _check_fork_reference(tmp_path):
    """The parent's outputs are right (against the oracle), so equal children are right too."""
    layers, head = oracle.random_stack(np.random.default_rng(1), 8, 256, 2, head_size=3)
    rng = np.random.default_rng(5)
    x1 = rng.standard_normal((12, 8)).astype(np.float32)
    want, _ = oracle.forward(layers, head, x1)
    assert _rel(np.load(tmp_path / "ref1.npy"), want) < TOL


def test_prefork_children_step_with_threads(tmp_path):
    """gunicorn --preload style: the parent steps with 2 threads, then forks 4 workers that each step
    with 2 threads; all must finish, with the parent's outputs bit for bit."""
    out = _run_child(PREFORK, tmp_path, timeout=180)
    assert json.loads(out.splitlines()[-1]) == ["0"] * 4
    _check_fork_reference(tmp_path)


def test_multiprocessing_fork_pool(tmp_path):
    out = _run_child(MP_POOL, tmp_path, timeout=180)
    assert json.loads(out.splitlines()[-1]) == [True] * 6
    _check_fork_reference(tmp_path)


def test_concurrent_callers_each_get_a_team(restore_threads):
    """Three Python threads step their own H=256 streams (a team of 2 threads per step) at once: the
    pool hands each caller its own team, and every output equals the serial run's."""
    from concurrent.futures import ThreadPoolExecutor

    layers, head = oracle.random_stack(np.random.default_rng(1), 8, 256, 1, head_size=3)
    model = fastlstm.Model(layers, head)
    fastlstm.set_num_threads(2)
    assert model._net.plan(1) == "team"
    xs = [np.random.default_rng(k).standard_normal((40, 8)).astype(np.float32) for k in range(3)]

    def run(x):
        s = model.stream()
        return np.stack([s.step(v) for v in x])

    serial = [run(x) for x in xs]
    with ThreadPoolExecutor(3) as ex:
        for _ in range(3):
            assert all(np.array_equal(a, b) for a, b in zip(ex.map(run, xs), serial))
    want, _ = oracle.forward(layers, head, xs[0])
    assert _rel(serial[0], want) < TOL


# --------------------------------------------------------------------------- thread count
@pytest.mark.parametrize("n", [10**4, 10**6, 2**31, 2**64])
def test_set_num_threads_refuses_absurd_counts(n, restore_threads):
    before = fastlstm.get_num_threads()
    with pytest.raises(ValueError, match=r"\bn\b.*at most"):
        fastlstm.set_num_threads(n)
    assert fastlstm.get_num_threads() == before


def test_set_num_threads_cap_is_four_per_core(small, restore_threads):
    cores = len(os.sched_getaffinity(0))
    fastlstm.set_num_threads(4 * cores)  # the cap itself is allowed, and steps fine
    s = small[0].stream()
    s.step(np.ones(I, np.float32))
    with pytest.raises(ValueError):
        fastlstm.set_num_threads(4 * cores + 1)


def test_threads_context_manager(restore_threads):
    fastlstm.set_num_threads(2)
    with fastlstm.threads(1):
        assert fastlstm.get_num_threads() == 1
    assert fastlstm.get_num_threads() == 2
    with pytest.raises(KeyError):
        with fastlstm.threads(1):
            raise KeyError("inside")
    assert fastlstm.get_num_threads() == 2
    with pytest.raises(ValueError):
        with fastlstm.threads(0):
            pass
    assert fastlstm.get_num_threads() == 2


# --------------------------------------------------------------------------- half-built objects
HALF_BUILT = """
import json
import numpy as np
import fastlstm, oracle
from fastlstm import _kernels
layers, head = oracle.random_stack(np.random.default_rng(3), 4, 8, 1, head_size=2)
model = fastlstm.Model(layers, head)
x = np.ones(4, np.float32)

class LazyStream(fastlstm.Stream):
    def __init__(self):        # never calls the base class's set-up
        pass

cases = {
    "Stream.__new__": lambda: fastlstm.Stream.__new__(fastlstm.Stream).step(x),
    "Stream subclass": lambda: LazyStream().step(x),
    "StreamPool.__new__": lambda: fastlstm.StreamPool.__new__(fastlstm.StreamPool).step([0], x[None]),
    "StreamPool.__new__ open": lambda: fastlstm.StreamPool.__new__(fastlstm.StreamPool).open(),
    "Network.__new__": lambda: _kernels.Network.__new__(_kernels.Network).forward(
        np.ones((1, 1, 4), np.float32), np.ones((1, 1, 2), np.float32),
        np.zeros((1, 8), np.float32), np.zeros((1, 8), np.float32)),
    "Stream over a bare Network": lambda: fastlstm.Stream(model, _kernels.Network.__new__(_kernels.Network),
                                                          None).step(x),
}
out = {}
for name, call in cases.items():
    try:
        call()
        out[name] = "no error"
    except Exception as exc:
        out[name] = type(exc).__name__
# Built through __new__ with the arguments, the object is whole; re-running __init__ changes nothing.
s = fastlstm.Stream.__new__(fastlstm.Stream, model, model._net, None)
y = s.step(x)
s.__init__(model, model._net, 5)
out["whole"] = [float(v) for v in y] + [s.batch_size is None, s.step(x).shape == (2,)]
print(json.dumps(out))
"""


def test_objects_cannot_be_half_built():
    out = json.loads(_run_child(HALF_BUILT).splitlines()[-1])
    whole = out.pop("whole")
    assert out == {name: "TypeError" for name in out}, out
    layers, head = oracle.random_stack(np.random.default_rng(3), 4, 8, 1, head_size=2)
    want, _ = oracle.forward(layers, head, np.ones((1, 4)))
    assert _rel(whole[:2], want[0]) < TOL
    assert whole[2:] == [True, True]


NEW_ARGS = {
    "nothing": lambda m: (),
    "model only": lambda m: (m,),
    "a string for the network": lambda m: (m, "net", None),
    "another model's network": lambda m: (fastlstm.Model(m.layers), fastlstm.Model(m.layers)._net, 2),
    "no model": lambda m: (None, m._net, 2),
    "size 0": lambda m: (m, m._net, 0),
    "size -1": lambda m: (m, m._net, -1),
    "size 2**31": lambda m: (m, m._net, 2**31),
    "size 2**70": lambda m: (m, m._net, 2**70),
    "size 2.5": lambda m: (m, m._net, 2.5),
    "size '3'": lambda m: (m, m._net, "3"),
    "right": lambda m: (m, m._net, 3),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cls=st.sampled_from(["Stream", "StreamPool"]),
    args=st.sampled_from(sorted(NEW_ARGS)),
    how=st.sampled_from(["__new__", "call"]),
)
def test_api_fuzz_construction(small, cls, args, how):
    """Built through ``__new__`` or called directly, with any arguments: either a clean TypeError or
    ValueError, or an object that steps correctly."""
    model, layers, head = small
    klass = getattr(fastlstm, cls)
    a = NEW_ARGS[args](model)
    try:
        obj = klass.__new__(klass, *a) if how == "__new__" else klass(*a)
    except (TypeError, ValueError):
        assert args != "right"
        return
    assert args == "right"
    x = np.full((3, I), 0.5, np.float32)
    if cls == "Stream":
        y = obj.step(x)
    else:
        y = obj.step([obj.open() for _ in range(3)], x)
    want, _ = oracle.forward(layers, head, x[None])
    assert _rel(y, want[0]) < TOL


# --------------------------------------------------------------------------- byte order
def test_big_endian_inputs_are_read_by_value(small, rng):
    model, layers, head = small
    x = rng.standard_normal((5, 4, I)).astype(np.float32)
    want, _ = oracle.forward(layers, head, x)

    s = model.stream()
    got = np.stack([s.step(v.astype(">f4")) for v in x[:, 0]])
    assert _rel(got, want[:, 0]) < TOL

    s = model.stream(4)
    out = np.empty((4, O), np.float32)
    got = np.stack([s.step(v.astype(">f4"), out=out).copy() for v in x])
    assert _rel(got, want) < TOL

    pool = model.pool(4)
    ids = np.array([pool.open() for _ in range(4)], np.int64)
    got = np.stack([pool.step(ids.astype(">i8"), v.astype(">f4"), out=out).copy() for v in x])
    assert _rel(got, want) < TOL

    assert _rel(model.predict(x.astype(">f8")), want) < TOL
    assert _rel(model.stream(4).step_many(x.astype(">f4")), want) < TOL


@pytest.mark.parametrize("where", ["stream", "pool"])
def test_big_endian_out_is_refused(small, where, state_equal):
    model = small[0]
    out = np.empty((1, O), ">f4")
    if where == "stream":
        s = model.stream(1)
        s.step(np.ones((1, I), np.float32))
        before = s.state
        with pytest.raises(TypeError, match=r"\bout\b"):
            s.step(np.ones((1, I), np.float32), out=out)
        state_equal(s.state, before)
    else:
        pool = model.pool(2)
        sid = pool.open()
        with pytest.raises(TypeError, match=r"\bout\b"):
            pool.step([sid], np.ones((1, I), np.float32), out=out)


def test_big_endian_ids_are_valid_ids(small):
    model = small[0]
    pool = model.pool(3)
    ids = np.array([pool.open() for _ in range(3)], np.int64)
    pool.close(int(ids[1]))
    pool.open()  # slot 1 again, under a new generation: ids have high bits set
    ids = np.array(pool.ids(), np.int64)
    assert ids.max() >= 2**32
    pool.step(ids.astype(">i8"), np.ones((3, I), np.float32))


# --------------------------------------------------------------------------- sizes past 32 bits
SIZES = """
import json
import numpy as np
import fastlstm, oracle
layers, head = oracle.random_stack(np.random.default_rng(3), 2, 4, 1, head_size=1)
model = fastlstm.Model(layers, head)
zero = np.zeros((1, 1, 1), np.float32)
stream, pool = model.stream(), model.pool(4)
sid = pool.open()
cases = {
    "predict T=2**31": lambda: model.predict(np.broadcast_to(zero[0], (2 ** 31, 2))),
    "predict B=2**31": lambda: model.predict(np.broadcast_to(zero, (1, 2 ** 31, 2))),
    "predict B=2**31 batch_first": lambda: model.predict(np.broadcast_to(zero, (2 ** 31, 1, 2)), batch_first=True),
    "predict T=2**32+1": lambda: model.predict(np.broadcast_to(zero[0], (2 ** 32 + 1, 2))),
    "step_many T=2**31": lambda: stream.step_many(np.broadcast_to(zero[0], (2 ** 31, 2))),
    "step x of 2**33 rows": lambda: stream.step(np.broadcast_to(zero[0], (2 ** 33, 2))),
    "stream(2**31)": lambda: model.stream(2 ** 31),
    "pool(2**40)": lambda: model.pool(2 ** 40),
    "pool(2**31)": lambda: model.pool(2 ** 31),
    "reserve(2**31)": lambda: pool.reserve(2 ** 31),
    "reserve(2**64)": lambda: pool.reserve(2 ** 64),
    "set_num_threads(2**31)": lambda: fastlstm.set_num_threads(2 ** 31),
    "pool.step 2**32+1 ids": lambda: pool.step(np.broadcast_to(np.int64(sid), (2 ** 32 + 1,)),
                                               np.broadcast_to(zero[0], (2 ** 32 + 1, 2))),
}
out = {}
for name, call in cases.items():
    try:
        call()
        out[name] = "no error"
    except Exception as exc:
        out[name] = type(exc).__name__
out["pool still works"] = pool.step([sid], np.ones((1, 2), np.float32)).shape == (1, 1)
print(json.dumps(out))
"""


def test_sizes_past_32_bits_are_refused_before_allocating():
    """Each case would need gigabytes if converted first; the child may map only 3 GiB (not under
    AddressSanitizer, whose shadow memory alone is far more address space)."""
    asan = "asan" in os.environ.get("LD_PRELOAD", "")
    out = json.loads(_run_child(SIZES, limit_bytes=None if asan else 3 << 30).splitlines()[-1])
    assert out.pop("pool still works") is True
    assert out == {name: "ValueError" for name in out}, out


def test_widest_layer_is_refused():
    """Row offsets are 32-bit: a layer wider than 2**24 is refused at build (not run with wrapped offsets)."""
    from fastlstm import _kernels

    spec = {
        "kind": _kernels.fl_layer_kind.FL_LAYER_LSTM,
        "dirs": [(np.zeros((2, 4), np.float32), np.zeros(4, np.float32), None, 0, 0)],
        "gate_act": 0,
        "cell_act": 1,
        "merge": 0,
        "go_backwards": False,
        "n_in": 2**24 + 1,
        "hidden": 1,
        "n_out": 1,
        "gates": 4,
        "width": 1,
        "streams": True,
    }
    with pytest.raises(ValueError, match="layer 0"):
        _kernels.Network([spec], [("h", 0, 0, 1), ("c", 0, 1, 1)], ())


# --------------------------------------------------------------------------- finite glitches
GLITCH = 3e38


def _models_for_glitches():
    for seed in range(8):
        kw = {}
        if seed % 4 == 2:
            kw = {"activation": "relu", "recurrent_activation": "hard_sigmoid"}  # unbounded c and h
        if seed % 4 == 3:
            kw = {"proj_size": 5}
        layers, head = oracle.random_stack(np.random.default_rng(100 + seed), I, 24, 2, head_size=O, **kw)
        yield seed, layers, head


def _assert_finite_state(state):
    for a in list(state.h) + list(state.c):
        assert np.all(np.isfinite(a))


@pytest.mark.parametrize("seed,layers,head", list(_models_for_glitches()), ids=lambda v: str(v)[:12])
def test_a_finite_glitch_cannot_poison_a_stream(seed, layers, head, state_equal):
    """Steps of |x| = 3e38 are either run (and then state and output are finite) or refused with the
    state exactly as before; the steps after them match the oracle run from that state."""
    model = fastlstm.Model(layers, head)
    rng = np.random.default_rng(seed)
    s = model.stream()
    s.step_many(rng.standard_normal((4, I)).astype(np.float32))
    for _ in range(6):
        before = s.state
        glitch = (GLITCH * rng.choice([-1.0, 1.0], I)).astype(np.float32)
        try:
            y = s.step(glitch)
            assert np.all(np.isfinite(y))
        except ValueError as exc:
            assert "overflow" in str(exc)
            state_equal(s.state, before)
        _assert_finite_state(s.state)
    start = s.state
    x = rng.standard_normal((10, I)).astype(np.float32)
    got = np.stack([s.step(v) for v in x])
    want, _ = oracle.forward(layers, head, x, start)
    assert _rel(got, want) < TOL


def _overflowing_model():
    """A Keras-style relu LSTM with positive weights: x = 3e38 makes every pre-activation +inf, so c = inf
    and h = inf for certain (a relu cell does not saturate), while x = 1 runs normally."""
    w = fastlstm.LSTMWeights(np.full((4 * 4, I), 2.0, np.float32), np.full((4 * 4, 4), 0.1, np.float32), None, None)
    layer = fastlstm.LSTMLayer([w], activation="relu", recurrent_activation="hard_sigmoid")
    return fastlstm.Model([layer]), [layer]


def test_an_overflowing_step_is_refused_and_undone(state_equal):
    model, layers = _overflowing_model()
    s = model.stream(2)
    s.step(np.full((2, I), 0.01, np.float32))
    before = s.state
    out = np.zeros((2, 4), np.float32)
    x = np.full((2, I), 0.01, np.float32)
    x[1] = GLITCH
    with pytest.raises(ValueError, match="overflow"):
        s.step(x, out=out)
    state_equal(s.state, before)
    x = np.full((5, 2, I), 0.01, np.float32)
    got = s.step_many(x)  # carries on from the state before the glitch
    want, _ = oracle.forward(layers, None, x, before)
    assert _rel(got, want) < TOL


def test_step_many_overflow_undoes_the_whole_chunk(state_equal):
    model, _ = _overflowing_model()
    s = model.stream()
    s.step(np.full(I, 0.01, np.float32))
    before = s.state
    x = np.full((6, I), 0.01, np.float32)
    x[4] = GLITCH
    with pytest.raises(ValueError, match="overflow"):
        s.step_many(x)
    state_equal(s.state, before)


def test_a_finite_glitch_cannot_poison_a_pool(state_equal):
    model, _ = _overflowing_model()
    pool = model.pool(8)
    ids = [pool.open() for _ in range(8)]
    rng = np.random.default_rng(9)
    pool.step(ids, rng.uniform(0, 0.01, (8, I)).astype(np.float32))
    before = {sid: pool.get_state(sid) for sid in ids}
    x = rng.uniform(0, 0.01, (8, I)).astype(np.float32)
    x[3] = GLITCH
    with pytest.raises(ValueError, match="overflow"):
        pool.step(ids, x)
    for sid in ids:  # every stream, not only the glitched one, is untouched
        state_equal(pool.get_state(sid), before[sid])


def test_predict_refuses_an_overflowing_sequence():
    model, _ = _overflowing_model()
    x = np.full((5, I), 0.01, np.float32)
    x[2] = GLITCH
    with pytest.raises(ValueError, match="overflow"):
        model.predict(x)


def _overflowing_chain():
    """The overflowing LSTM behind a causal Conv1D (whose state is its last input) and before a
    running global pool and a Dense: every kind of layer state a glitch could leave behind."""
    _, (lstm,) = _overflowing_model()
    conv = fastlstm.Conv1D(np.full((I, I, 2), 0.5, np.float32), np.zeros(I, np.float32), padding="causal")
    head = fastlstm.Dense(np.full((3, 4), 0.1, np.float32), np.zeros(3, np.float32))
    return fastlstm.Model([conv, lstm, fastlstm.GlobalMaxPool1D(), head])


@pytest.mark.parametrize("where", ["stream", "pool"])
def test_an_overflowing_step_of_a_layer_chain_is_undone(where, state_equal):
    """Every layer's state (conv history, recurrent h/c, pool buffer) is as before a refused step."""
    model = _overflowing_chain()
    x = np.full((2, I), 0.01, np.float32)
    glitch = x.copy()
    glitch[1] = GLITCH
    if where == "stream":
        s = model.stream(2)
        s.step(x)
        before = s.state
        assert before.buffers, "the chain keeps layer buffers"
        with pytest.raises(ValueError, match="overflow"):
            s.step(glitch)
        state_equal(s.state, before)
        ok = s.step(x)
    else:
        pool = model.pool(2)
        ids = [pool.open(), pool.open()]
        pool.step(ids, x)
        before = [pool.get_state(sid) for sid in ids]
        with pytest.raises(ValueError, match="overflow"):
            pool.step(ids, glitch)
        for sid, b in zip(ids, before):
            state_equal(pool.get_state(sid), b)
        ok = pool.step(ids, x)
    lone = model.stream(2)
    assert np.array_equal(np.stack([lone.step(x), lone.step(x)])[1], ok)  # carries on as if never glitched


def test_token_ids_are_read_by_value_and_checked_on_a_copy(state_equal):
    """An Embedding chain: big-endian ids give the native ids' outputs; an id out of range is refused
    with the state unchanged."""
    rng = np.random.default_rng(5)
    table = rng.standard_normal((10, I)).astype(np.float32)
    layers, _ = oracle.random_stack(rng, I, 8, 1)
    model = fastlstm.Model([fastlstm.Embedding(table), *layers])
    ids = np.array([3, 7, 1], np.int64)
    a, b = model.stream(3), model.stream(3)
    assert np.array_equal(a.step(ids), b.step(ids.astype(">i8")))
    before = a.state
    with pytest.raises(ValueError, match="token ids"):
        a.step(np.array([3, 10, 1]))
    state_equal(a.state, before)


# --------------------------------------------------------------------------- overlapping out= and x
def test_step_refuses_out_overlapping_x(small, state_equal):
    model = small[0]
    s = model.stream(2)
    s.step(np.ones((2, I), np.float32))
    before = s.state
    buf = np.zeros(4 * I, np.float32)
    x = buf[: 2 * I].reshape(2, I)
    out = buf[2 * I - 2 : 2 * I - 2 + 2 * O].reshape(2, O)  # shares x's last two floats
    with pytest.raises(ValueError, match=r"\bout\b.*overlap"):
        s.step(x, out=out)
    state_equal(s.state, before)


def test_pool_step_refuses_out_overlapping_x(small, state_equal):
    model = small[0]
    pool = model.pool(2)
    ids = [pool.open(), pool.open()]
    pool.step(ids, np.ones((2, I), np.float32))
    before = [pool.get_state(sid) for sid in ids]
    buf = np.zeros(4 * I, np.float32)
    x = buf[: 2 * I].reshape(2, I)
    with pytest.raises(ValueError, match=r"\bout\b.*overlap"):
        pool.step(ids, x, out=buf[I : I + 2 * O].reshape(2, O))
    for sid, b in zip(ids, before):
        state_equal(pool.get_state(sid), b)


# --------------------------------------------------------------------------- x changed during a step
FLIPPER = """
import mmap, sys
import numpy as np
with open(sys.argv[1], "r+b") as f:
    mm = mmap.mmap(f.fileno(), 0)
a = np.frombuffer(mm, np.float32)
a[65] = 1                                  # started
while a[64] == 0:
    a[0] = np.nan
    a[0] = 1.0
"""


@pytest.mark.parametrize("where", ["stream", "pool"])
def test_nan_written_during_step_never_reaches_the_state(where, tmp_path, restore_threads):
    """Another process flips x[0] between 1 and NaN as fast as it can, through shared memory, while
    steps run: every step must either be refused or leave a finite state (the finite check and the
    kernel read the same copy of x)."""
    import mmap
    import time

    layers, head = oracle.random_stack(np.random.default_rng(2), 64, 128, 1, head_size=2)
    model = fastlstm.Model(layers, head)
    fastlstm.set_num_threads(1)
    path = tmp_path / "x.bin"
    path.write_bytes(np.r_[np.ones(64), 0, 0].astype(np.float32).tobytes())
    with open(path, "r+b") as f:
        mm = mmap.mmap(f.fileno(), 0)
    shared = np.frombuffer(mm, np.float32)
    x = shared[:64]
    if where == "stream":
        target = model.stream()
        step = lambda: target.step(x)  # noqa: E731
        state = lambda: target.state  # noqa: E731
    else:
        target = model.pool(1)
        sid = target.open()
        ids, xs = np.array([sid], np.int64), x[None]
        step = lambda: target.step(ids, xs)  # noqa: E731
        state = lambda: target.get_state(sid)  # noqa: E731
    flipper = subprocess.Popen([sys.executable, "-c", FLIPPER, str(path)], env=child_env())
    try:
        deadline = time.time() + 30
        while shared[65] == 0 and time.time() < deadline:
            time.sleep(0.01)
        assert shared[65] == 1, "the flipping process did not start"
        ran = refused = 0
        for _ in range(5000):
            try:
                step()
                ran += 1
            except ValueError as exc:
                assert "NaN" in str(exc)
                refused += 1
            _assert_finite_state(state())
    finally:
        shared[64] = 1
        flipper.wait(timeout=30)
    assert refused > 0 and ran > 0  # both outcomes happened: the race was really on


# --------------------------------------------------------------------------- step_many vs step
STEP_CASES = {
    "single small": (8, 16, 1, None),
    "single H=256 (team)": (8, 256, 2, None),
    "batch 3": (8, 32, 2, 3),
    "batch 40 H=256 (team)": (8, 256, 1, 40),
    "batch 70 (chunks)": (8, 32, 2, 70),
    "projection": (8, 48, 2, 5),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", list(STEP_CASES))
def test_step_many_is_bit_identical_to_steps(case, threads, restore_threads, state_equal):
    n_in, hidden, n_layers, B = STEP_CASES[case]
    kw = {"proj_size": 16} if case == "projection" else {}
    layers, head = oracle.random_stack(np.random.default_rng(11), n_in, hidden, n_layers, head_size=3, **kw)
    model = fastlstm.Model(layers, head)
    fastlstm.set_num_threads(threads)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((9, n_in) if B is None else (9, B, n_in)).astype(np.float32)
    a, b = model.stream(B), model.stream(B)
    stepped = np.stack([a.step(v) for v in x])
    chunked = np.concatenate([b.step_many(x[:4]), b.step_many(x[4:])])
    assert np.array_equal(stepped, chunked)
    state_equal(a.state, b.state)
    want, _ = oracle.forward(layers, head, x)
    assert _rel(chunked, want) < TOL


# --------------------------------------------------------------------------- API fuzzer
KINDS = ["native", "big-endian x", "float64 big-endian x", "big-endian out", "overlapping out", "huge x", "strided x"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(KINDS), where=st.sampled_from(["stream", "batched", "pool"]), seed=st.integers(0, 2**32 - 1)
)
def test_api_fuzz_byte_orders_overlaps_and_sizes(small, kind, where, seed):
    """Every call either matches the oracle or raises ValueError/TypeError leaving the state exactly
    as it was; which of the two is fixed by the kind of input."""
    model, layers, head = small
    rng = np.random.default_rng(seed)
    B = None if where == "stream" else 3
    x = rng.standard_normal((I,) if B is None else (B, I)).astype(np.float32)
    init = oracle.random_state(rng, layers, B)
    if where == "pool":
        target = model.pool(4)
        ids = np.array([target.open() for _ in range(3)], np.int64)
        for k, sid in enumerate(ids):
            target.set_state(int(sid), fastlstm.State([h[k] for h in init.h], [c[k] for c in init.c]))
        call = lambda xx, out=None: target.step(ids, xx, out=out)  # noqa: E731
        snapshot = lambda: [target.get_state(int(sid)) for sid in ids]  # noqa: E731
    else:
        target = model.stream(B)
        target.state = fastlstm.State(init.h, init.c)
        call = target.step
        snapshot = lambda: [target.state]  # noqa: E731
    before = snapshot()
    shape = (B, O) if B is not None else (O,)
    expect_error, arg, out = None, x, None
    if kind == "big-endian x":
        arg = x.astype(">f4")
    elif kind == "float64 big-endian x":
        arg = x.astype(">f8")
    elif kind == "big-endian out":
        out, expect_error = np.empty(shape, ">f4"), TypeError
    elif kind == "overlapping out":
        buf = np.empty(x.size + int(np.prod(shape)), np.float32)
        arg = buf[: x.size].reshape(x.shape)
        arg[...] = x
        lo = int(rng.integers(0, x.size))
        out, expect_error = buf[lo : lo + int(np.prod(shape))].reshape(shape), ValueError
    elif kind == "huge x":
        arg, expect_error = np.broadcast_to(x.reshape(-1)[:1], (2**40,) + x.shape[1:]), ValueError
    elif kind == "strided x":
        arg = np.repeat(x, 2, axis=-1)[..., ::2]
    if expect_error is not None:
        with pytest.raises(expect_error):
            call(arg, out=out)
        for got, want in zip(snapshot(), before):
            assert_state_equal(got, want)
        return
    y = call(arg, out=out)
    want, _ = oracle.forward(layers, head, x[None], init)
    assert _rel(y, want[0]) < TOL
