"""Batcher: single steps of many streams, arriving one by one, coalesced into one ``pool.step`` per tick.

A service receives one message per client at slightly different times; a ``StreamPool`` is fastest
when it advances many streams in one call.  The batcher sits between the two, in the manner of
Triton's sequence batcher: requests name a stream id, wait in one bounded FIFO queue, and a worker
thread runs a *tick* when ``max_batch`` requests wait or the oldest has waited ``max_delay``.

Rules (each has a test in tests/test_serving_batcher.py):

- **Order.** A tick takes at most one request per stream, the oldest; a stream's second request
  stays queued, in order, for a later tick.  Nothing is dropped.
- **Back-pressure.** At most ``max_queue`` requests wait; one more raises :class:`QueueFull` at
  once, and that step never happens (the stream's state is unchanged).
- **Cancellation.** A request still queued when its ``await`` is cancelled (or ``step_sync`` times
  out) is withdrawn: the stream is *not* stepped.  Once its tick has begun it is stepped exactly
  once, and the output is discarded.  :meth:`Batcher.steps` counts the steps a stream has taken,
  so a caller can tell which happened.
- **Idle streams are closed.** With ``idle_timeout`` set, a stream with no step or state call for
  that many seconds is closed and its slot freed; a later call on it raises :class:`StreamExpired`
  saying so (the state is gone: export it first if it must survive idleness).
- **Threads.** Compute runs on the worker thread inside ``pool.step``, which releases the GIL, so
  the event loop keeps accepting requests meanwhile.  ``open``/``close``/``reset``/``get_state``/
  ``set_state`` are blocking calls that wait at most for the tick in progress.
"""

from __future__ import annotations

import asyncio
import math
import operator
import threading
import time
from collections import OrderedDict, deque

import numpy as np

from .. import _validate
from .metrics import BatcherMetrics

_QUEUED, _CLAIMED, _WITHDRAWN = 0, 1, 2
_TOMBSTONES = 1 << 16  # expired ids remembered, so a late step can say what happened
_clock = time.perf_counter


class ServingError(RuntimeError):
    """Base class of the batcher's own refusals."""


class QueueFull(ServingError):
    """The bounded queue is full: the step was refused at once and the stream's state is unchanged."""


class UnknownStream(ServingError, ValueError):
    """No open stream has this id (never opened, or closed)."""


class StreamExpired(ServingError):
    """The stream was closed by ``idle_timeout``; its state is gone."""


class StreamClosed(ServingError):
    """The stream was closed (or the batcher shut down) while this step was still queued: not stepped."""


class _Stream:
    __slots__ = ("sid", "busy", "pending", "steps", "last_used")

    def __init__(self, sid, now):
        self.sid, self.busy, self.pending, self.steps, self.last_used = sid, False, 0, 0, now


class _Request:
    __slots__ = ("rec", "x", "t", "state", "loop", "fut", "done", "result")

    def __init__(self, rec, x, t, loop, fut, done):
        self.rec, self.x, self.t, self.state = rec, x, t, _QUEUED
        self.loop, self.fut, self.done, self.result = loop, fut, done, None


def _resolve(items):
    """Runs on a request's event loop: hand each future its output (or error) unless cancelled."""
    for fut, value, is_error in items:
        if not fut.done():
            if is_error:
                fut.set_exception(value)
            else:
                fut.set_result(value)


class Batcher:
    """Coalesce ``step(sid, x)`` calls on many streams into batched ``pool.step`` calls.

    Parameters
    ----------
    pool : StreamPool or Model
        The pool whose streams are served (a model gets a new pool of ``max_batch`` streams, grown
        as streams open).  The batcher owns the pool from now on: use only the batcher's methods.
    max_batch : int
        Most streams stepped in one tick; a tick starts as soon as this many requests wait.
    max_delay : float
        Seconds the oldest waiting request may wait for company before its tick runs anyway.
        0 runs a tick as soon as the worker is free (batches then form only while it computes).
    max_queue : int, optional
        Most requests waiting at once (default ``8 * max_batch``); more raise :class:`QueueFull`.
    idle_timeout : float, optional
        Close streams idle for this many seconds (default None: never).
    max_streams : int, optional
        Most open streams (default None: the pool grows as needed).

    Use ``await batcher.step(sid, x)`` from asyncio, ``batcher.step_sync(sid, x)`` from threads;
    ``x`` is one step's input ``(I,)`` and the result is ``(O,)`` float32.
    """

    def __init__(self, pool, *, max_batch=256, max_delay=0.002, max_queue=None, idle_timeout=None, max_streams=None):
        from ..model import Model

        self.max_batch = _validate.positive_int(max_batch, "max_batch")
        self.max_delay = _nonnegative(max_delay, "max_delay")
        self.max_queue = self.max_batch * 8 if max_queue is None else _validate.positive_int(max_queue, "max_queue")
        self.idle_timeout = None if idle_timeout is None else _nonnegative(idle_timeout, "idle_timeout")
        if self.idle_timeout == 0:
            raise ValueError("idle_timeout: expected a positive number of seconds or None, got 0")
        self.max_streams = None if max_streams is None else _validate.positive_int(max_streams, "max_streams")
        if isinstance(pool, Model):
            pool = pool.pool(min(self.max_batch, self.max_streams or self.max_batch))
        self.pool = pool
        self.model = pool.model
        n_in, n_out = self.model.input_size, self.model.output_size
        self.input_size, self.output_size, self.precision = n_in, n_out, self.model.precision
        # Tick buffers, allocated once: a tick copies into them and pool.step allocates nothing.
        self._ids = np.zeros(self.max_batch, np.int64)
        self._x = np.zeros((self.max_batch, n_in), np.float32)
        self._out = np.zeros((self.max_batch, n_out), np.float32)
        self._arrivals = np.zeros(self.max_batch, np.float64)
        self.metrics = BatcherMetrics(self.max_batch)
        self._streams = {}  # sid -> _Stream, the open streams
        self._expired = OrderedDict()  # sid -> (when, idle seconds), most recent last
        self._queue = deque()
        self._live = 0  # queued requests not withdrawn
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the worker waits here for requests
        self._unbusy = threading.Condition(self._lock)  # state calls wait here for a stream's tick
        self._closed = False
        self._next_sweep = math.inf if self.idle_timeout is None else _clock() + self._sweep_every()
        self._worker = threading.Thread(target=self._run, name="fastlstm-batcher", daemon=True)
        self._worker.start()

    def __repr__(self):
        return (
            f"Batcher(streams={len(self._streams)}, queued={self._live}, max_batch={self.max_batch}, "
            f"max_delay={self.max_delay}, max_queue={self.max_queue}, idle_timeout={self.idle_timeout})"
        )

    def __len__(self):
        return len(self._streams)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()

    # -- streams -------------------------------------------------------------------------

    def open(self):
        """Open a stream with zero state; returns its id."""
        self._check_open()
        if self.max_streams is not None and len(self._streams) >= self.max_streams:
            raise ServingError(f"max_streams={self.max_streams} streams are open; close one first")
        try:
            sid = self.pool.open()
        except RuntimeError:  # the pool is full: grow it (waits for the tick in progress)
            self.pool.reserve(min(2 * self.pool.capacity, self.max_streams or 2 * self.pool.capacity))
            sid = self.pool.open()
        with self._lock:
            self._streams[sid] = _Stream(sid, _clock())
        return sid

    def close(self, sid):
        """Close a stream.  Its steps still queued fail with :class:`StreamClosed` (not stepped)."""
        with self._lock:
            rec = self._claim(sid)
            del self._streams[rec.sid]
            dropped = self._withdraw_queued(rec)
        self.pool.close(rec.sid)
        self._fail(dropped, StreamClosed(f"stream {rec.sid} was closed before this step ran (not stepped)"))

    def reset(self, sid):
        """Zero a stream's state (steps still queued run after it)."""
        self._with_stream(sid, self.pool.reset)

    def get_state(self, sid):
        """A copy of a stream's state (:class:`fastlstm.State`; ``.to_bytes()`` for a hand-off)."""
        return self._with_stream(sid, self.pool.get_state)

    def set_state(self, sid, state):
        """Replace a stream's state, e.g. with ``fastlstm.State.from_bytes(blob)`` from another process."""
        self._with_stream(sid, lambda s: self.pool.set_state(s, state))

    def steps(self, sid):
        """How many steps the stream has taken through this batcher (tells a cancelled step's fate)."""
        with self._lock:
            return self._lookup(sid).steps

    def ids(self):
        """The open stream ids."""
        with self._lock:
            return list(self._streams)

    # -- stepping ------------------------------------------------------------------------

    async def step(self, sid, x):
        """Advance stream ``sid`` by one step: ``x`` (I,) -> (O,) float32, in a batched tick.

        Raises :class:`QueueFull` at once when the queue is full, :class:`StreamExpired` for a
        stream closed by ``idle_timeout``, :class:`UnknownStream` (a ValueError) for an unknown id,
        ValueError/TypeError for a bad ``x``.  See the
        module docstring for what a cancelled ``await`` leaves behind."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        req = self._submit(sid, x, loop, fut, None)
        try:
            return await fut
        except asyncio.CancelledError:
            self._withdraw(req)
            raise

    def step_sync(self, sid, x, timeout=None):
        """Blocking :meth:`step` for threaded servers.  After ``timeout`` seconds a still-queued
        request is withdrawn (not stepped) and TimeoutError raised; one already in its tick is
        waited for, since it will be stepped anyway."""
        done = threading.Lock()
        done.acquire()
        req = self._submit(sid, x, None, None, done)
        if not done.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            if self._withdraw(req):
                raise TimeoutError(f"stream {sid}: no tick within {timeout} s; the step was withdrawn (not stepped)")
            done.acquire()
        if isinstance(req.result, BaseException):
            raise req.result
        return req.result

    async def step_many(self, sids, xs):
        """One step of each of the distinct streams ``sids`` (``xs`` (N, I)), enqueued at once so one
        tick takes them together; outputs (N, O).  All or nothing: a refusal (QueueFull, unknown id,
        bad input) enqueues none of them.  A cancelled await withdraws those still queued."""
        sids = [_as_sid(s) for s in sids]
        if len(set(sids)) != len(sids):
            raise ValueError("sids: expected distinct stream ids (a stream's steps run one per tick)")
        xs = _validate.step_input(xs, self.input_size, len(sids)) if len(sids) else xs
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in sids]
        reqs = self._enqueue([(s, self._input(x)) for s, x in zip(sids, xs)], loop, futs, [None] * len(sids))
        try:
            return np.stack(await asyncio.gather(*futs)) if futs else np.zeros((0, self.output_size), np.float32)
        except asyncio.CancelledError:
            for req in reqs:
                self._withdraw(req)
            raise

    def _input(self, x):
        if not (type(x) is np.ndarray and x.dtype == np.float32 and x.ndim == 1 and x.shape[0] == self.input_size):
            x = _validate.step_input(x, self.input_size, None)
        return x.copy()  # the caller may reuse its array before the tick reads it

    def _submit(self, sid, x, loop, fut, done):
        return self._enqueue([(_as_sid(sid), self._input(x))], loop, [fut], [done])[0]

    def _enqueue(self, items, loop, futs, dones):
        """Queue (sid, x) requests, all or none; wakes the worker when a tick may be due."""
        with self._lock:
            if self._closed:
                raise StreamClosed("the batcher is shut down")
            recs = [self._lookup(sid) for sid, _ in items]
            if self._live + len(items) > self.max_queue:
                self.metrics.rejected += len(items)
                which = f"stream {items[0][0]}" if len(items) == 1 else f"{len(items)} streams"
                raise QueueFull(
                    f"the queue is full ({self.max_queue} steps waiting); {which} not "
                    "stepped, retry later or raise max_queue"
                )
            now = _clock()
            reqs = [_Request(rec, x, now, loop, fut, done) for rec, (_, x), fut, done in zip(recs, items, futs, dones)]
            self._queue.extend(reqs)
            for rec in recs:
                rec.pending += 1
            before = self._live
            self._live += len(reqs)
            if before == 0 or before < self.max_batch <= self._live:
                self._wake.notify()
        return reqs

    def _withdraw(self, req):
        """Withdraw a still-queued request; False when its tick has already taken it."""
        with self._lock:
            if req.state != _QUEUED:
                return False
            req.state = _WITHDRAWN
            req.rec.pending -= 1
            self._live -= 1
            self.metrics.withdrawn += 1
            return True

    # -- the worker ------------------------------------------------------------------------

    def _run(self):
        while True:
            with self._lock:
                batch = self._next_batch()
            if batch is None:
                return
            self._tick(batch)

    def _next_batch(self):
        """Wait (lock held) until a tick is due, then claim its requests; None on shutdown."""
        q = self._queue
        while not self._closed:
            while q and q[0].state != _QUEUED:
                q.popleft()
            now = _clock()
            if now >= self._next_sweep:
                self._expire_idle(now)
            wait = self._next_sweep - now
            if q:
                due = q[0].t + self.max_delay - now
                if self._live >= self.max_batch or due <= 0:
                    batch = self._claim_batch()
                    if batch:
                        return batch
                    due = self.max_delay or 1e-3  # every waiting stream is in a state call
                wait = min(wait, due)
            self._wake.wait(None if wait == math.inf else wait)
        return None

    def _claim_batch(self):
        """Take the oldest request of each stream, up to max_batch, in arrival order."""
        q, batch, later = self._queue, [], []
        limit = self.max_batch
        while q and len(batch) < limit:
            req = q.popleft()
            if req.state != _QUEUED:
                continue
            rec = req.rec
            if rec.busy:  # its stream already has a step in this tick, or a state call
                later.append(req)
                continue
            rec.busy = True
            rec.pending -= 1
            req.state = _CLAIMED
            batch.append(req)
        if later:
            q.extendleft(reversed(later))
        self._live -= len(batch)
        return batch

    def _tick(self, batch):
        t0 = _clock()
        n = len(batch)
        ids, x, out, arrivals = self._ids[:n], self._x[:n], self._out[:n], self._arrivals[:n]
        ids[:] = [r.rec.sid for r in batch]
        np.stack([r.x for r in batch], out=x)
        arrivals[:] = [r.t for r in batch]
        error = None
        if not np.isfinite(x).all():
            batch, error = self._drop_nonfinite(batch)
            n = len(batch)
            ids, x, out = self._ids[:n], self._x[:n], self._out[:n]
        t1 = _clock()
        try:
            self.pool.step(ids, x, out=out)
            results, failed = out.copy(), None
        except Exception as exc:  # noqa: BLE001 - pool.step changed no state: every request fails
            results, failed = None, exc
        t2 = _clock()
        with self._lock:
            for r in batch:
                rec = r.rec
                rec.busy = False
                rec.last_used = t2
                if failed is None:
                    rec.steps += 1
            self._unbusy.notify_all()
        # Counted before the hand-off, so a caller holding its output sees its step in the metrics.
        self.metrics.record_tick(n if failed is None else 0, t0 - arrivals, t2 - t1, t2)
        if failed is None:
            self._deliver(batch, results, False)
        else:
            self._fail(batch, failed)
        if error is not None:
            self._fail(*error)
        self.metrics.overhead.observe((t1 - t0) + (_clock() - t2))

    def _drop_nonfinite(self, batch):
        """Split off requests whose input has NaN/inf (they fail alone, not their tick-mates)."""
        ok = np.isfinite(self._x[: len(batch)]).all(axis=1)
        bad = [r for r, good in zip(batch, ok) if not good]
        batch = [r for r, good in zip(batch, ok) if good]
        with self._lock:
            for r in bad:
                r.rec.busy = False
            self._unbusy.notify_all()
        n = len(batch)
        self._ids[:n] = [r.rec.sid for r in batch]
        if n:
            np.stack([r.x for r in batch], out=self._x[:n])
        return batch, (bad, ValueError("x: contains NaN or infinite values (the stream was not stepped)"))

    def _deliver(self, batch, values, is_error):
        """Hand results over: one call_soon_threadsafe per event loop per tick, a lock release per
        blocking caller."""
        per_loop = {}
        for req, value in zip(batch, values):
            if req.loop is None:
                req.result = value
                req.done.release()
            else:
                items = per_loop.get(req.loop)
                if items is None:
                    items = per_loop[req.loop] = []
                items.append((req.fut, value, is_error))
        for loop, items in per_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # that event loop is closed: nobody is waiting any more
                pass

    def _fail(self, requests, exc):
        if requests:
            self._deliver(requests, [exc] * len(requests), True)

    # -- state calls, idle streams, shutdown ------------------------------------------------

    def _with_stream(self, sid, fn):
        """Run ``fn(sid)`` on the pool between the stream's ticks (it takes no part in one meanwhile)."""
        with self._lock:
            rec = self._claim(sid)
        try:
            return fn(rec.sid)
        finally:
            with self._lock:
                rec.busy = False
                rec.last_used = _clock()
                self._unbusy.notify_all()
                if rec.pending:
                    self._wake.notify()

    def _claim(self, sid):
        """(lock held) The stream's record, marked busy once no tick or state call holds it."""
        rec = self._lookup(_as_sid(sid))
        while rec.busy:
            self._unbusy.wait()
            rec = self._lookup(rec.sid)  # it may have been closed meanwhile
        rec.busy = True
        return rec

    def _lookup(self, sid):
        rec = self._streams.get(sid)
        if rec is not None:
            return rec
        if sid in self._expired:
            when, idle = self._expired[sid]
            raise StreamExpired(
                f"stream {sid} was closed by the server after {idle:.1f} s without a step "
                f"(idle_timeout={self.idle_timeout:g} s, {_clock() - when:.1f} s ago); its state is "
                "gone: open a new stream"
            )
        raise UnknownStream(f"sid: {sid!r} is not an open stream of this batcher")

    def _withdraw_queued(self, rec):
        dropped = [r for r in self._queue if r.rec is rec and r.state == _QUEUED]
        for r in dropped:
            r.state = _WITHDRAWN
        rec.pending -= len(dropped)
        self._live -= len(dropped)
        return dropped

    def _sweep_every(self):
        return min(1.0, max(0.01, self.idle_timeout / 4))

    def _expire_idle(self, now):
        """(lock held, worker) Close the streams idle for idle_timeout seconds."""
        cutoff = now - self.idle_timeout
        stale = [r for r in self._streams.values() if not r.busy and not r.pending and r.last_used < cutoff]
        for rec in stale:
            del self._streams[rec.sid]
            self._expired[rec.sid] = (now, now - rec.last_used)
            self.pool.close(rec.sid)
            self.metrics.expired += 1
        while len(self._expired) > _TOMBSTONES:
            self._expired.popitem(last=False)
        self._next_sweep = now + self._sweep_every()

    def _check_open(self):
        if self._closed:
            raise StreamClosed("the batcher is shut down")

    def shutdown(self, timeout=5.0):
        """Stop the worker after the tick in progress; steps still queued fail with StreamClosed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            dropped = [r for r in self._queue if r.state == _QUEUED]
            for r in dropped:
                r.state = _WITHDRAWN
            self._queue.clear()
            self._live = 0
            self._wake.notify_all()
        self._fail(dropped, StreamClosed("the batcher shut down before this step ran (not stepped)"))
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout)

    def prometheus(self, prefix="fastlstm_batcher"):
        """All metrics in the Prometheus text format (what ``/metrics`` serves)."""
        return self.metrics.prometheus(
            prefix,
            gauges=(
                ("open_streams", "Streams open.", len(self._streams)),
                ("queue_depth", "Steps waiting for a tick.", self._live),
                ("pool_capacity", "Streams the pool holds state for.", self.pool.capacity),
                ("max_batch", "Configured max_batch.", self.max_batch),
                ("max_delay_seconds", "Configured max_delay.", self.max_delay),
            ),
        )


def _as_sid(sid):
    if type(sid) is int:
        return sid
    try:
        return operator.index(sid)  # refuses floats and strings
    except TypeError:
        raise TypeError(f"sid: expected an int stream id, got {type(sid).__name__}") from None


def _nonnegative(value, name):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number of seconds, got {type(value).__name__}") from None
    if not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"{name}: expected a finite number of seconds >= 0, got {value!r}")
    return v
