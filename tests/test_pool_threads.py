"""Threads: pools, Streams and one shared model stepped from several Python threads at once.

Documented behaviour (README "Threads", StreamPool docstring): compute runs without the GIL, so
different pools and streams run in parallel; calls on one Stream or one StreamPool are serialised
by a lock inside it, each call atomic.  So:

* work on different objects gives exactly the bits of the same work run serially;
* threads sharing one pool but stepping disjoint ids give exactly the serial result per stream;
* threads racing on the same Stream (or the same pool ids) produce *some* serial order of whole
  calls: the test recovers that order from the outputs and replays it on a reference.
"""

import sys
import threading

import numpy as np
import pytest

import fastlstm
import oracle
from checks import assert_state_equal

I, H, L, O = 8, 40, 2, 3
N_THREADS = 4

_LAYERS, _HEAD = oracle.random_stack(np.random.default_rng(11), I, H, L, head_size=O)
MODEL = fastlstm.Model(_LAYERS, _HEAD)


def _run_threads(fns, switch_interval=None):
    """Run each fn in its own thread, all released at once; re-raise the first error.

    A short ``switch_interval`` makes the interpreter hand the GIL around often, so short calls
    from different threads really interleave (the default 5 ms lets one thread run a whole loop)."""
    barrier = threading.Barrier(len(fns))
    results, errors = [None] * len(fns), []

    def wrap(k, fn):
        try:
            barrier.wait()
            results[k] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(k, fn)) for k, fn in enumerate(fns)]
    old = sys.getswitchinterval()
    if switch_interval is not None:
        sys.setswitchinterval(switch_interval)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    if errors:
        raise errors[0]
    return results


# --------------------------------------------------------------------------- different objects


def _own_objects_worker(w, ticks=300, rounds=None):
    """A worker with its own pool (with churn), its own Stream and batched Stream, on the shared model.

    ``rounds``: a barrier waited on every tick, so the threads' calls really overlap."""
    rng = np.random.default_rng(100 + w)
    pool = MODEL.pool(64 + 16 * w)
    live = [pool.open() for _ in range(20 + 12 * w)]
    stream, batched = MODEL.stream(), MODEL.stream(5 + w)
    outs = []
    for t in range(ticks):
        if rounds is not None:
            rounds.wait()
        n = int(rng.integers(1, len(live) + 1))
        sel = rng.permutation(live)[:n]
        outs.append(pool.step(sel, rng.standard_normal((n, I)).astype(np.float32)).copy())
        outs.append(stream.step(rng.standard_normal(I)).copy())
        outs.append(batched.step(rng.standard_normal((5 + w, I))).copy())
        if t % 10 == 0:
            outs.append(batched.step_many(rng.standard_normal((4, 5 + w, I))).copy())
            outs.append(MODEL.predict(rng.standard_normal((6, 2, I))).copy())
        if t % 7 == 3:  # churn: close one, open one
            k = int(rng.integers(len(live)))
            pool.close(live[k])
            live[k] = pool.open()
    finals = [pool.get_state(s).to_bytes() for s in live] + [stream.state.to_bytes(), batched.state.to_bytes()]
    return outs, finals


def test_threads_on_different_pools_and_streams_match_serial():
    serial = [_own_objects_worker(w) for w in range(N_THREADS)]
    for _ in range(2):
        rounds = threading.Barrier(N_THREADS, timeout=60)
        threaded = _run_threads(
            [lambda w=w, r=rounds: _own_objects_worker(w, rounds=r) for w in range(N_THREADS)], switch_interval=1e-5
        )
        for (outs_s, fin_s), (outs_t, fin_t) in zip(serial, threaded):
            assert len(outs_s) == len(outs_t)
            assert all(np.array_equal(a, b) for a, b in zip(outs_s, outs_t))
            assert fin_s == fin_t


@pytest.mark.parametrize("n_threads", [1, 2])
def test_threads_match_serial_at_any_thread_count(n_threads, restore_threads):
    """The thread team size inside each call does not change the bits either."""
    serial = [_own_objects_worker(w, ticks=60) for w in range(N_THREADS)]
    fastlstm.set_num_threads(n_threads)
    rounds = threading.Barrier(N_THREADS, timeout=60)
    threaded = _run_threads([lambda w=w: _own_objects_worker(w, ticks=60, rounds=rounds) for w in range(N_THREADS)])
    for (outs_s, fin_s), (outs_t, fin_t) in zip(serial, threaded):
        assert all(np.array_equal(a, b) for a, b in zip(outs_s, outs_t))
        assert fin_s == fin_t


# --------------------------------------------------------------------------- one pool, disjoint ids


def _shared_pool_worker(pool, w, ticks=250, rounds=None):
    """Opens its own streams in ``pool`` and works only on them: step, close/reopen, reset, set_state.

    Returns the outputs and the final state of each of its logical streams (ids differ from run
    to run, since other threads open streams in the same pool concurrently)."""
    rng = np.random.default_rng(500 + w)
    live = [pool.open() for _ in range(40 + 10 * w)]
    outs = []
    for t in range(ticks):
        if rounds is not None:
            rounds.wait()
        n = int(rng.integers(1, len(live) + 1))
        order = rng.permutation(len(live))[:n]
        x = rng.standard_normal((n, I)).astype(np.float32)
        if t % 3 == 0:
            y = np.empty((n, O), np.float32)
            pool.step(np.array([live[k] for k in order], np.int64), x, out=y)
        else:
            y = pool.step([live[k] for k in order], x)
        outs.append(y.copy())
        if t % 11 == 5:
            k = int(rng.integers(len(live)))
            pool.close(live[k])
            live[k] = pool.open()
        if t % 13 == 7:
            pool.reset(live[int(rng.integers(len(live)))])
        if t % 17 == 2:
            a, b = (int(v) for v in rng.integers(len(live), size=2))
            pool.set_state(live[a], fastlstm.State.from_bytes(pool.get_state(live[b]).to_bytes()))
        if t % 19 == 0:
            with pytest.raises(ValueError):  # a refused call in the middle of the race
                pool.step([live[0], live[0]], np.zeros((2, I), np.float32))
    return outs, [pool.get_state(s).to_bytes() for s in live]


def test_threads_sharing_one_pool_with_disjoint_ids_match_serial():
    ref_pool = MODEL.pool(1000)
    serial = [_shared_pool_worker(ref_pool, w) for w in range(N_THREADS)]
    for _ in range(2):
        pool = MODEL.pool(1000)
        rounds = threading.Barrier(N_THREADS, timeout=60)
        threaded = _run_threads(
            [lambda w=w, p=pool, r=rounds: _shared_pool_worker(p, w, rounds=r) for w in range(N_THREADS)],
            switch_interval=1e-5,
        )
        for (outs_s, fin_s), (outs_t, fin_t) in zip(serial, threaded):
            assert all(np.array_equal(a, b) for a, b in zip(outs_s, outs_t))
            assert fin_s == fin_t
        assert len(pool) == sum(40 + 10 * w for w in range(N_THREADS))


# --------------------------------------------------------------------------- the same object, racing


def _replay(calls_per_thread, try_step):
    """Recover a serial order of whole calls from their outputs.

    ``calls_per_thread[w]`` is thread w's list of (x, y) in its own order.  ``try_step(x, y)`` steps
    the reference with x and returns True when it gave y (else restores the reference and returns
    False).  Each recorded call must be explained as one whole step from the reference's current
    state; a torn or lost update would make that impossible."""
    pos = [0] * len(calls_per_thread)
    total = sum(len(c) for c in calls_per_thread)
    for _ in range(total):
        for w, calls in enumerate(calls_per_thread):
            if pos[w] < len(calls) and try_step(*calls[pos[w]]):
                pos[w] += 1
                break
        else:
            pytest.fail(
                f"no thread's next call matches a whole step at position {sum(pos)}: the calls were not serialised"
            )


def test_one_stream_from_several_threads_is_serialised():
    stream = MODEL.stream(3)
    per = 150
    rounds = threading.Barrier(N_THREADS, timeout=60)  # all threads call at once, every round

    def worker(w):
        rng = np.random.default_rng(900 + w)
        calls = []
        for _ in range(per):
            x = rng.standard_normal((3, I)).astype(np.float32)
            rounds.wait()
            calls.append((x, stream.step(x).copy()))
        return calls

    calls = _run_threads([lambda w=w: worker(w) for w in range(N_THREADS)], switch_interval=1e-5)
    ref = MODEL.stream(3)

    def try_step(x, y):
        saved = ref.state
        if np.array_equal(ref.step(x), y):
            return True
        ref.state = saved
        return False

    _replay(calls, try_step)
    assert_state_equal(ref.state, stream.state)


def test_one_pool_same_ids_from_several_threads_is_serialised():
    # 24 rows: one row chunk, so the reference replay below stays cheap on a busy machine
    pool = MODEL.pool(128)
    ids = np.array([pool.open() for _ in range(24)])
    per = 100
    rounds = threading.Barrier(N_THREADS, timeout=60)

    def worker(w):
        rng = np.random.default_rng(700 + w)
        calls = []
        for _ in range(per):
            x = rng.standard_normal((len(ids), I)).astype(np.float32)
            rounds.wait()
            calls.append((x, pool.step(ids, x).copy()))
        return calls

    calls = _run_threads([lambda w=w: worker(w) for w in range(N_THREADS)], switch_interval=1e-5)
    ref = MODEL.pool(128)
    rids = np.array([ref.open() for _ in range(24)])

    def try_step(x, y):
        saved = [ref.get_state(int(s)) for s in rids]
        if np.array_equal(ref.step(rids, x), y):
            return True
        for s, st_ in zip(rids, saved):
            ref.set_state(int(s), st_)
        return False

    _replay(calls, try_step)
    for a, b in zip(ids, rids):
        assert_state_equal(pool.get_state(int(a)), ref.get_state(int(b)))
