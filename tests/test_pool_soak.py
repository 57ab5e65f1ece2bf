"""Allocation-free hot path and a bounded soak.

* With ``out=`` given, ``Stream.step`` and ``StreamPool.step`` allocate nothing traced by
  tracemalloc over 10^5 steps (2.5 * 10^4 for the multi-chunk batches, which cost more per step):
  neither growth (a leak) nor a transient (a temporary made and freed inside each call, which
  would raise the peak).  An empty loop measured the same way is the
  control, so the only slack is what tracemalloc's own bookkeeping costs.
* 10^5 pool steps with streams opening and closing keep RSS within a few MB after warm-up, and a
  sentinel stream stepped throughout still matches a lone Stream at the end.

bench/soak_pool.py runs the 10^6-step versions.
"""

import gc
import itertools
import os
import tracemalloc

import numpy as np
import pytest

import fastlstm
import oracle
from fastlstm.harness.timing import traced_memory as _measure

I, H, L, O = 16, 32, 2, 4
STEPS = 100_000
SLACK = 16  # bytes: below the size of any Python object (an int is 28)

_MODEL = fastlstm.Model(*oracle.random_stack(np.random.default_rng(2), I, H, L, head_size=O))


def _assert_allocation_free(loop, n=STEPS):
    def control(k):
        for _ in itertools.repeat(None, k):
            pass

    loop(2000)  # warm-up: lazy one-time allocations happen here
    gc_was = gc.isenabled()
    gc.disable()
    tracemalloc.start()
    try:
        _measure(control, 10)
        c_grow, c_peak = _measure(control, n)
        grow, peak = _measure(loop, n)
    finally:
        tracemalloc.stop()
        if gc_was:
            gc.enable()
    assert grow <= c_grow + SLACK, f"traced memory grew by {grow - c_grow} bytes over {n} steps"
    assert peak <= c_peak + SLACK, f"a step allocated a temporary: peak {peak - c_peak} bytes above control"


def test_stream_step_with_out_allocates_nothing():
    stream = _MODEL.stream()
    x = np.random.default_rng(0).standard_normal(I).astype(np.float32)
    out = np.empty(O, np.float32)
    step = stream.step
    assert step(x, out=out) is out

    def loop(n):
        for _ in itertools.repeat(None, n):
            step(x, out=out)

    _assert_allocation_free(loop)


def test_batched_stream_step_with_out_allocates_nothing(restore_threads):
    # 40 rows: two row chunks.  One thread: tracemalloc sees only the Python allocators, which the
    # thread team does not touch, and a 2-thread team on a busy 2-core CI box can stall for ms per step.
    fastlstm.set_num_threads(1)
    stream = _MODEL.stream(40)
    x = np.random.default_rng(0).standard_normal((40, I)).astype(np.float32)
    out = np.empty((40, O), np.float32)
    step = stream.step

    def loop(n):
        for _ in itertools.repeat(None, n):
            step(x, out=out)

    _assert_allocation_free(loop, STEPS // 4)


def test_pool_step_with_out_allocates_nothing(restore_threads):
    fastlstm.set_num_threads(1)  # see the batched Stream test
    pool = _MODEL.pool(128)
    all_ids = [pool.open() for _ in range(100)]
    rng = np.random.default_rng(1)
    ids = np.array(rng.permutation(all_ids)[:48], dtype=np.int64)  # a subset, shuffled
    x = rng.standard_normal((48, I)).astype(np.float32)
    out = np.empty((48, O), np.float32)
    step = pool.step
    assert step(ids, x, out=out) is out

    def loop(n):
        for _ in itertools.repeat(None, n):
            step(ids, x, out=out)

    _assert_allocation_free(loop, STEPS // 4)

    small = ids[:5].copy()
    xs, outs = x[:5].copy(), out[:5].copy()

    def loop_small(n):
        for _ in itertools.repeat(None, n):
            step(small, xs, out=outs)

    _assert_allocation_free(loop_small)


def test_allocation_check_can_fail():
    """The measurement catches a per-step temporary and a per-step leak (so the checks above mean something)."""
    stream = _MODEL.stream()
    x = np.zeros(I, np.float32)
    kept = []

    def temporary(n):
        for _ in itertools.repeat(None, n):
            stream.step(x)  # no out=: a fresh (O,) array per step

    def leak(n):
        for _ in itertools.repeat(None, n):
            kept.append(None)

    for loop in (temporary, leak):
        try:
            _assert_allocation_free(loop, 1000)
        except AssertionError:
            continue
        raise AssertionError(f"{loop.__name__} was not detected")


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _soak(pool, n_steps, rng_seed=3):
    """Pool steps with churn: every tick a random subset of the open streams steps, and about one
    stream in eight ticks closes and another opens.  A sentinel stream steps every tick."""
    rng = np.random.default_rng(rng_seed)
    sentinel = pool.open()
    live = [pool.open() for _ in range(150)]
    xs = rng.standard_normal((64, 160, I)).astype(np.float32)
    out = np.empty((160, O), np.float32)
    ids = np.empty(160, np.int64)
    sizes = rng.integers(1, 24, size=997)  # mostly one row chunk ...
    sizes[::200] = 119  # ... and every 200th tick several, through the thread pool
    churn = rng.integers(0, len(live), size=991)
    sentinel_x = []
    for t in range(n_steps):
        n = int(sizes[t % 997])
        ids[0] = sentinel
        ids[1 : n + 1] = live[(t % 30) : (t % 30) + n]
        pool.step(ids[: n + 1], xs[t % 64, : n + 1], out=out[: n + 1])
        sentinel_x.append(t % 64)
        if t % 8 == 0:
            k = int(churn[t % 991])
            pool.close(live[k])
            live[k] = pool.open()
    return sentinel, np.array(sentinel_x, np.int16), xs


@pytest.mark.slow
def test_pool_soak_keeps_rss_bounded():
    """10^5 pool steps with open/close churn: RSS after warm-up grows by less than 4 MB."""
    pool = _MODEL.pool(200)
    sentinel_ref = _MODEL.stream()
    _soak(_MODEL.pool(200), 3000)  # warm-up of everything the soak touches
    gc.collect()
    rss0 = _rss_bytes()
    sentinel, order, xs = _soak(pool, STEPS)
    gc.collect()
    grown = _rss_bytes() - rss0
    assert grown < 4 * 2**20, f"RSS grew by {grown / 2**20:.1f} MB over {STEPS} pool steps"
    assert len(pool) == 151
    # the sentinel (row 0 of every step) matches a lone Stream fed the same inputs
    for k in order:
        sentinel_ref.step(xs[k, 0])
    got, want = pool.get_state(sentinel), sentinel_ref.state
    for a, b in zip(got.h + got.c, want.h + want.c):
        assert np.abs(a - b).max() <= 1e-5 * max(1.0, float(np.abs(b).max()))
