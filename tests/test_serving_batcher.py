"""fastlstm.serving.Batcher in one process: coalescing, per-stream order, back-pressure, cancellation,
idle timeout, closing with steps queued, bad input and the Prometheus text.

References are lone ``model.stream()`` streams fed the same inputs, matched bit for bit: a tick of
any number of streams computes each stream's outputs exactly as a lone stream does
(tests/test_batch_invariance.py).  A refused or withdrawn step must change nothing.
"""

import asyncio
import threading
import time

import numpy as np
import pytest

import fastlstm
import oracle
from checks import assert_state_equal
from fastlstm.serving import Batcher, QueueFull, StreamClosed, StreamExpired, UnknownStream

I, H, O = 5, 12, 3
_LAYERS, _HEAD = oracle.random_stack(np.random.default_rng(7), I, H, 2, head_size=O)
MODEL = fastlstm.Model(_LAYERS, _HEAD)


def _lone_outputs(xs):
    s = MODEL.stream()
    return np.stack([s.step(x) for x in xs])


def _zero_state():
    return MODEL.stream().state


def test_concurrent_streams_coalesce_and_match_lone_streams(rng):
    xs = rng.standard_normal((40, 6, I)).astype(np.float32)
    with Batcher(MODEL, max_batch=16, max_delay=0.005) as b:
        sids = [b.open() for _ in range(40)]

        async def run(sid, seq):
            return np.stack([await b.step(sid, x) for x in seq])

        async def main():
            return await asyncio.gather(*[run(s, xs[k]) for k, s in enumerate(sids)])

        got = asyncio.run(main())
    # (after shutdown, which joins the worker: a tick's figures are recorded just after its hand-off)
    assert b.metrics.steps == 240
    assert b.metrics.ticks < 240 / 4, "steps of different streams were not coalesced"
    assert b.metrics.batch_size.counts[-2:].sum() > 0  # some ticks reached 16 streams
    for k in range(40):
        np.testing.assert_array_equal(got[k], _lone_outputs(xs[k]))


def test_same_stream_steps_run_in_arrival_order_one_per_tick(rng):
    xs = rng.standard_normal((3, 25, I)).astype(np.float32)
    with Batcher(MODEL, max_batch=64, max_delay=0.002) as b:
        sids = [b.open() for _ in range(3)]

        async def main():  # all 75 steps submitted before any tick can run
            return await asyncio.gather(*[b.step(s, xs[k, t]) for t in range(25) for k, s in enumerate(sids)])

        got = np.array(asyncio.run(main())).reshape(25, 3, O)
        assert [b.steps(s) for s in sids] == [25, 25, 25]
    assert b.metrics.ticks >= 25  # never two steps of one stream in a tick
    for k in range(3):
        np.testing.assert_array_equal(got[:, k], _lone_outputs(xs[k]))


def test_single_stream_ticks_match_a_lone_stream_bit_for_bit(rng):
    xs = rng.standard_normal((12, I)).astype(np.float32)
    with Batcher(MODEL, max_batch=8, max_delay=0) as b:
        sid = b.open()
        got = np.stack([b.step_sync(sid, x) for x in xs])
    assert np.array_equal(got, _lone_outputs(xs))


def test_full_queue_fails_fast_and_leaves_state_unchanged(rng):
    x = rng.standard_normal(I).astype(np.float32)
    with Batcher(MODEL, max_batch=8, max_delay=0.3, max_queue=3) as b:
        sids = [b.open() for _ in range(4)]

        async def main():
            queued = [asyncio.ensure_future(b.step(s, x)) for s in sids[:3]]
            await asyncio.sleep(0)  # the three are queued, waiting for max_delay
            t0 = time.perf_counter()
            with pytest.raises(QueueFull, match="queue is full"):
                await b.step(sids[3], x)
            refused_after = time.perf_counter() - t0
            return await asyncio.gather(*queued), refused_after

        outs, refused_after = asyncio.run(main())
        assert refused_after < 0.1  # failed at once, not after the 0.3 s max_delay
        assert b.steps(sids[3]) == 0 and b.metrics.rejected == 1
        assert_state_equal(b.get_state(sids[3]), _zero_state())
        lone = _lone_outputs(x[None])[0]
        for y in outs:
            np.testing.assert_array_equal(y, lone)


def test_cancelled_while_queued_is_not_stepped(rng):
    x = rng.standard_normal(I).astype(np.float32)
    with Batcher(MODEL, max_batch=8, max_delay=5.0) as b:
        sid = b.open()

        async def main():
            task = asyncio.ensure_future(b.step(sid, x))
            await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        assert b.steps(sid) == 0 and b.metrics.withdrawn == 1
        assert_state_equal(b.get_state(sid), _zero_state())
        with pytest.raises(TimeoutError, match="withdrawn"):
            b.step_sync(sid, x, timeout=0.02)
        assert b.steps(sid) == 0
        assert_state_equal(b.get_state(sid), _zero_state())


class _GatedPool:
    """A StreamPool whose step waits for ``gate`` after signalling ``entered`` (to cancel mid-tick)."""

    def __init__(self, pool):
        self._pool, self.entered, self.gate = pool, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self._pool, name)

    def step(self, ids, x, out=None):
        self.entered.set()
        self.gate.wait(10)
        return self._pool.step(ids, x, out=out)


def test_cancelled_during_its_tick_is_stepped_exactly_once(rng):
    xs = rng.standard_normal((2, I)).astype(np.float32)
    pool = _GatedPool(MODEL.pool(4))
    with Batcher(pool, max_batch=4, max_delay=0) as b:
        sid = b.open()

        async def main():
            task = asyncio.ensure_future(b.step(sid, xs[0]))
            while not pool.entered.is_set():
                await asyncio.sleep(0.001)
            task.cancel()  # the tick has the request: too late to withdraw
            with pytest.raises(asyncio.CancelledError):
                await task
            pool.gate.set()
            return await b.step(sid, xs[1])  # the next step sees the state after exactly one step

        y1 = asyncio.run(main())
        assert b.steps(sid) == 2
    assert np.array_equal(y1, _lone_outputs(xs)[1])


def test_idle_stream_is_closed_and_a_later_step_says_so(rng):
    x = rng.standard_normal(I).astype(np.float32)
    with Batcher(MODEL, max_batch=4, max_delay=0, idle_timeout=0.15) as b:
        idle, busy = b.open(), b.open()
        b.step_sync(idle, x)
        deadline = time.perf_counter() + 0.6
        while time.perf_counter() < deadline:  # keep one stream active
            b.step_sync(busy, x)
            time.sleep(0.02)
        with pytest.raises(StreamExpired, match=r"idle_timeout=0.15 s.*open a new stream"):
            b.step_sync(idle, x)
        with pytest.raises(StreamExpired):
            b.get_state(idle)
        assert b.ids() == [busy] and b.metrics.expired == 1
        assert b.steps(busy) > 5


def test_close_fails_queued_steps_and_frees_the_id(rng):
    x = rng.standard_normal(I).astype(np.float32)
    with Batcher(MODEL, max_batch=8, max_delay=5.0) as b:
        sid = b.open()

        async def main():
            task = asyncio.ensure_future(b.step(sid, x))
            await asyncio.sleep(0.01)
            b.close(sid)
            with pytest.raises(StreamClosed, match="not stepped"):
                await task

        asyncio.run(main())
        with pytest.raises(UnknownStream, match="not an open stream"):
            b.step_sync(sid, x)
        assert len(b) == 0 and len(b.pool) == 0


def test_nonfinite_input_fails_alone_not_its_tick_mates(rng):
    xs = rng.standard_normal((3, I)).astype(np.float32)
    xs[1, 2] = np.nan
    with Batcher(MODEL, max_batch=3, max_delay=1.0) as b:
        sids = [b.open() for _ in range(3)]

        async def main():
            return await asyncio.gather(*[b.step(s, x) for s, x in zip(sids, xs)], return_exceptions=True)

        res = asyncio.run(main())
        assert isinstance(res[1], ValueError) and "NaN" in str(res[1])
        assert [b.steps(s) for s in sids] == [1, 0, 1]
        assert_state_equal(b.get_state(sids[1]), _zero_state())
    for k in (0, 2):
        np.testing.assert_array_equal(res[k], _lone_outputs(xs[k : k + 1])[0])


def test_state_hand_off_between_batchers_continues_bit_identically(rng):
    xs = rng.standard_normal((10, I)).astype(np.float32)
    with Batcher(MODEL, max_batch=4, max_delay=0) as a, Batcher(MODEL.pool(2), max_batch=4, max_delay=0) as b:
        sa, sb = a.open(), b.open()
        first = [a.step_sync(sa, x) for x in xs[:6]]
        b.set_state(sb, fastlstm.State.from_bytes(a.get_state(sa).to_bytes()))
        rest = [b.step_sync(sb, x) for x in xs[6:]]
    assert np.array_equal(np.stack(first + rest), _lone_outputs(xs))


def test_bad_arguments_are_refused_with_their_names():
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(MODEL, max_batch=0)
    with pytest.raises(ValueError, match="max_delay"):
        Batcher(MODEL, max_delay=-1)
    with pytest.raises(ValueError, match="idle_timeout"):
        Batcher(MODEL, idle_timeout=0)
    with Batcher(MODEL, max_batch=2) as b:
        sid = b.open()
        with pytest.raises(ValueError, match=r"x: expected shape \(5,\)"):
            b.step_sync(sid, np.zeros(4, np.float32))
        with pytest.raises(TypeError, match="sid"):
            b.step_sync(float(sid), np.zeros(I, np.float32))
        with pytest.raises(UnknownStream):
            b.close(sid + 12345)
        assert b.steps(sid) == 0


def test_metrics_render_as_prometheus_text(rng):
    xs = rng.standard_normal((8, I)).astype(np.float32)
    with Batcher(MODEL, max_batch=4, max_delay=0.001) as b:
        sids = [b.open() for _ in range(8)]

        async def main():
            await asyncio.gather(*[b.step(s, x) for s, x in zip(sids, xs)])

        asyncio.run(main())
    text = b.prometheus()  # after shutdown: every tick recorded
    ticks = b.metrics.ticks
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    assert values["fastlstm_batcher_steps_total"] == 8
    assert values["fastlstm_batcher_open_streams"] == 8
    assert values["fastlstm_batcher_batch_size_count"] == ticks == values["fastlstm_batcher_ticks_total"]
    assert values["fastlstm_batcher_batch_size_sum"] == 8
    assert values["fastlstm_batcher_queue_delay_seconds_count"] == 8
    buckets = [v for k, v in values.items() if k.startswith("fastlstm_batcher_batch_size_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == ticks
    assert 'fastlstm_batcher_batch_size_bucket{le="4"}' in values  # max_batch is a bucket bound


def test_step_many_enqueues_all_or_nothing(rng):
    xs = rng.standard_normal((3, 4, I)).astype(np.float32)
    with Batcher(MODEL, max_batch=8, max_delay=0, max_queue=3) as b:
        sids = [b.open() for _ in range(4)]

        async def main():
            got = [await b.step_many(sids[:3], xs[:, t]) for t in range(4)]
            with pytest.raises(QueueFull):  # 4 steps do not fit a queue of 3
                await b.step_many(sids, np.zeros((4, I), np.float32))
            with pytest.raises(ValueError, match="distinct"):
                await b.step_many([sids[0], sids[0]], xs[:2, 0])
            return np.stack(got, axis=1)

        got = asyncio.run(main())
        assert [b.steps(s) for s in sids] == [4, 4, 4, 0]
        assert b.metrics.ticks == 4  # each call was one tick
    for k in range(3):
        np.testing.assert_array_equal(got[k], _lone_outputs(xs[k]))
