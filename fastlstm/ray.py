"""fastlstm on Ray: live streams sharded over replica actors, and offline ``predict`` over a Ray Dataset.

``StreamRouter(model, num_replicas=n)`` keeps a routing table from stream ids to replicas.  Each
replica is a Ray actor holding the model and a :class:`fastlstm.serving.Batcher`.  The router keeps
one call in flight per replica and sends the steps that arrived meanwhile as the next call, so Ray's
per-call cost is paid per batch, and the replica's Batcher steps the batch in one ``pool.step``
tick.  A stream's state lives on exactly one replica:

- **Rescale** (``scale(n)``): a stream that must move waits for its step in flight, its state
  bytes are exported, imported on the new replica, and the old copy is closed.  Steps that arrive
  meanwhile wait for the move.  Nothing is stepped twice or skipped, and the state moves bit for bit.
- **Failure.** Every ``checkpoint_every`` steps a replica returns the stream's state bytes with the
  step's output.  The router keeps that checkpoint and the inputs sent since then.  When a call
  fails because its replica died (``ray.kill``, a killed process), the router starts a replacement
  actor and restores each of the dead replica's streams from its checkpoint, replaying the logged
  inputs in order.  The step that was in flight gets the replay's last output.  So no step is lost
  and none is applied twice, and the step counters say so.
  Cost: per stream, one state (``4 * (h + c widths)`` bytes) plus at most ``checkpoint_every``
  inputs on the router; one state export every ``checkpoint_every`` steps; on failure, a replay
  of at most ``checkpoint_every`` steps per moved stream.
- **Threads.** The router's own logic runs on one private asyncio loop (a daemon thread), so the
  table needs no locks.  ``step``/``open``/``close``/``scale`` block the caller; ``step_async`` is
  awaitable from any event loop.  ``create_app(RouterBackend(router))`` serves it with the
  WebSocket/HTTP protocol of ``fastlstm serve``.

``predict_dataset(model, ds, column="x")`` runs ``model.predict`` over a Ray Dataset with
``map_batches`` actors.  Each actor loads the model once and sets its threads, and sequences of
equal length share one ``predict`` call.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict

import numpy as np
import ray

from . import _validate
from .serving.batcher import UnknownStream


class _Replica:
    """A Ray actor: one model, one Batcher; the steps of concurrent callers coalesce into ticks."""

    def __init__(self, model, max_batch, max_delay, threads):
        from . import set_num_threads
        from .serving import Batcher

        if threads:
            set_num_threads(threads)
        self.batcher = Batcher(model, max_batch=max_batch, max_delay=max_delay)

    async def ping(self):
        return True

    async def open(self):
        return self.batcher.open()

    async def close(self, sid):
        self.batcher.close(sid)

    async def step_batch(self, sids, xs, checkpoints):
        """One step of each (distinct) stream, through the Batcher: outputs (N, O) and, where asked,
        the state bytes after the step (a checkpoint)."""
        ys = await self.batcher.step_many(sids, xs)
        states = [self.batcher.get_state(s).to_bytes() if c else None for s, c in zip(sids, checkpoints)]
        return ys, states

    async def export(self, sid):
        return self.batcher.get_state(sid).to_bytes()

    async def load(self, sid, state):
        """Set a stream's state from bytes (None: zeros)."""
        from .state import State

        if state is None:
            self.batcher.reset(sid)
        else:
            self.batcher.set_state(sid, State.from_bytes(state))

    async def restore(self, state, xs):
        """Open a stream from state bytes (None: zeros), replay ``xs`` in order; (sid, last output)."""
        from .state import State

        sid = self.batcher.open()
        if state is not None:
            self.batcher.set_state(sid, State.from_bytes(state))
        y = None
        for x in xs:
            y = await self.batcher.step(sid, x)
        return sid, y

    async def steps(self, sid):
        return self.batcher.steps(sid)


class _Shard:
    """The router's view of one replica actor."""

    def __init__(self, actor):
        self.actor = actor
        self.streams = set()  # router ids living here
        self.recovering = None  # a future while a replacement is being restored
        self.generation = 0
        self.pending = []  # (entry, x, checkpoint?, future) waiting for the next call
        self.dispatching = False
        self.last_outputs = {}  # router id -> the last replayed output of a recovery


class _Entry:
    """One stream on the router: where it lives, its last checkpoint and the inputs since then."""

    __slots__ = ("busy", "checkpoint", "log", "rsid", "shard", "sid", "steps")

    def __init__(self, sid, shard, rsid):
        self.sid, self.shard, self.rsid, self.checkpoint, self.log, self.steps = sid, shard, rsid, None, [], 0
        self.busy = None  # a future while a step or a move is in progress


class StreamRouter:
    """Streams sharded over ``num_replicas`` Ray actors, moved on rescale, replayed on failure.

    Parameters
    ----------
    model : fastlstm.Model
        Shipped to the replicas once (``ray.put``).
    num_replicas : int
    checkpoint_every : int
        Steps between a stream's state checkpoints (the replay bound on failure).
    max_batch, max_delay : the replicas' Batcher settings (the router already batches each replica's
        steps into one call, so by default a replica's tick runs as soon as a call's steps arrive).
    threads_per_replica, num_cpus_per_replica : compute threads and Ray CPUs per replica actor.
    """

    def __init__(
        self,
        model,
        num_replicas=1,
        *,
        checkpoint_every=16,
        max_batch=256,
        max_delay=0.0,
        threads_per_replica=1,
        num_cpus_per_replica=1,
    ):
        if not ray.is_initialized():
            raise RuntimeError("ray is not initialised: call ray.init() (or connect to a cluster) first")
        self.model = model
        self.input_size, self.output_size = model.input_size, model.output_size
        self.checkpoint_every = _validate.positive_int(checkpoint_every, "checkpoint_every")
        self._actor_cls = ray.remote(num_cpus=num_cpus_per_replica, max_restarts=0)(_Replica)
        self._args = (ray.put(model), _validate.positive_int(max_batch, "max_batch"), max_delay, threads_per_replica)
        self._shards = []
        self._entries = {}
        self._next_id = 0
        self.failovers = []  # (replica index, streams restored, seconds) per recovery
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fastlstm-router", daemon=True)
        self._thread.start()
        self.scale(_validate.positive_int(num_replicas, "num_replicas"))

    # -- the blocking API (each call runs on the router's loop) --------------------------------

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def open(self):
        """Open a stream on the least-loaded replica; returns its router id."""
        return self._run(self._open())

    def close(self, sid):
        """Close stream ``sid`` on its replica."""
        self._run(self._close(sid))

    def step(self, sid, x):
        """One step of stream ``sid``: ``x`` (I,) -> (O,), failing over transparently."""
        return self._run(self._step(sid, x))

    async def step_async(self, sid, x):
        """Awaitable :meth:`step`, from any event loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._step(sid, x), self._loop))

    def step_many(self, sids, xs):
        """One step of each of the distinct streams ``sids`` concurrently; outputs (N, O)."""

        async def all_():
            return await asyncio.gather(*[self._step(s, x) for s, x in zip(sids, xs)])

        if len(set(sids)) != len(sids):
            raise ValueError("sids: expected distinct stream ids (a stream's steps are sequential)")
        return np.stack(self._run(all_())) if len(sids) else np.zeros((0, self.output_size), np.float32)

    def scale(self, num_replicas):
        """Grow or shrink to ``num_replicas`` replicas, moving streams with their state."""
        self._run(self._scale(_validate.positive_int(num_replicas, "num_replicas")))

    def steps(self, sid):
        """Steps stream ``sid`` has taken (each counted once, across moves and failovers)."""
        return self._entry(sid).steps

    def get_state(self, sid):
        """A copy of stream ``sid``'s state (a :class:`fastlstm.State`)."""
        from .state import State

        return State.from_bytes(self._run(self._export(sid)))

    def set_state(self, sid, state):
        """Replace stream ``sid``'s state (a :class:`fastlstm.State`, e.g. from another process)."""
        from .state import State

        if not isinstance(state, State):
            raise TypeError(f"state: expected a fastlstm.State, got {type(state).__name__}")
        self._run(self._load(sid, state.to_bytes()))

    def reset(self, sid):
        """Zero stream ``sid``'s state."""
        self._run(self._load(sid, None))

    def placement(self):
        """Router id -> replica index, for every open stream."""
        return {sid: self._shards.index(e.shard) for sid, e in self._entries.items()}

    @property
    def num_replicas(self):
        return len(self._shards)

    def replica(self, k):
        """The actor handle of replica ``k`` (e.g. to ``ray.kill`` it in a test)."""
        return self._shards[k].actor

    def shutdown(self):
        """Kill the replica actors and stop the router's loop (the streams are gone)."""
        for shard in self._shards:
            ray.kill(shard.actor)
        self._shards, self._entries = [], {}
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __len__(self):
        return len(self._entries)

    # -- the router's loop ------------------------------------------------------------------

    def _entry(self, sid):
        e = self._entries.get(sid)
        if e is None:
            raise UnknownStream(f"sid: {sid!r} is not an open stream of this router")
        return e

    def _new_shard(self):
        return _Shard(self._actor_cls.remote(*self._args))

    async def _call(self, shard, method, args=tuple):
        """``await actor.method(*args())``, on the replacement if the replica died.  ``args`` is read
        again after a recovery: the restored streams have new replica-side ids."""
        while True:
            if shard.recovering is not None:
                await shard.recovering
            generation = shard.generation
            try:
                return await getattr(shard.actor, method).remote(*args())
            except ray.exceptions.RayActorError:
                await self._recover(shard, generation)

    async def _open(self):
        shard = min(self._shards, key=lambda s: len(s.streams))
        rsid = await self._call(shard, "open")
        sid = self._next_id
        self._next_id += 1
        self._entries[sid] = _Entry(sid, shard, rsid)
        shard.streams.add(sid)
        return sid

    async def _settle(self, e):
        """Wait until no step or move of this stream is in progress."""
        while e.busy is not None:
            await e.busy

    async def _close(self, sid):
        e = self._entry(sid)
        await self._settle(e)
        del self._entries[sid]
        e.shard.streams.discard(sid)
        await self._call(e.shard, "close", lambda: (e.rsid,))

    async def _step(self, sid, x):
        e = self._entry(sid)
        x = np.array(_validate.step_input(x, self.input_size, None), copy=True)
        await self._settle(e)
        e.busy = self._loop.create_future()
        try:
            while e.shard.recovering is not None:
                await e.shard.recovering
            e.log.append(x)  # before it is sent: a recovery from now on replays it
            shard, done = e.shard, self._loop.create_future()
            shard.pending.append((e, x, len(e.log) >= self.checkpoint_every, done))
            if not shard.dispatching:
                shard.dispatching = True
                self._loop.create_task(self._dispatch(shard))
            y, state = await done
            if state is not None:
                e.checkpoint, e.log = state, []
            e.steps += 1
            return y
        finally:
            busy, e.busy = e.busy, None
            busy.set_result(None)

    async def _dispatch(self, shard):
        """Send a replica its waiting steps as one call; steps arriving meanwhile form the next call
        (one call in flight per replica: Ray's per-call cost is paid per batch, not per step)."""
        try:
            while shard.pending:
                if shard.recovering is not None:
                    await shard.recovering
                    continue
                batch, shard.pending = shard.pending, []
                generation = shard.generation
                try:
                    ys, states = await shard.actor.step_batch.remote(
                        [e.rsid for e, _, _, _ in batch],
                        np.stack([x for _, x, _, _ in batch]),
                        [c for _, _, c, _ in batch],
                    )
                except ray.exceptions.RayActorError:
                    await self._recover(shard, generation)
                    for e, _, _, done in batch:  # replayed by the recovery: its last output
                        done.set_result((shard.last_outputs[e.sid], None))
                    continue
                for (_, _, _, done), y, state in zip(batch, ys, states):
                    done.set_result((y, state))
        finally:
            shard.dispatching = False

    async def _recover(self, shard, generation):
        """Replace a dead replica and restore its streams: checkpoint + replay of the logged inputs.
        Steps waiting to be sent to it were logged, so the replay applies them: they are answered
        with their replayed outputs here and not sent again."""
        if shard.generation == generation and shard.recovering is None:
            shard.recovering = self._loop.create_future()
            t0 = self._loop.time()
            try:
                shard.actor = self._actor_cls.remote(*self._args)
                shard.generation += 1
                entries = [self._entries[s] for s in sorted(shard.streams)]
                restored = await asyncio.gather(*[shard.actor.restore.remote(e.checkpoint, e.log) for e in entries])
                shard.last_outputs = {}
                for e, (rsid, y) in zip(entries, restored):
                    e.rsid = rsid
                    shard.last_outputs[e.sid] = y
                waiting, shard.pending = shard.pending, []
                for e, _, _, done in waiting:
                    done.set_result((shard.last_outputs[e.sid], None))
                where = self._shards.index(shard) if shard in self._shards else -1  # -1: a leaving replica
                self.failovers.append((where, len(entries), self._loop.time() - t0))
            finally:
                done, shard.recovering = shard.recovering, None
                done.set_result(None)
        elif shard.recovering is not None:
            await shard.recovering

    async def _export(self, sid):
        e = self._entry(sid)
        await self._settle(e)
        return await self._call(e.shard, "export", lambda: (e.rsid,))

    async def _load(self, sid, state):
        e = self._entry(sid)
        await self._settle(e)
        e.busy = self._loop.create_future()
        try:
            # (a replica that died is restored first, then the new state applies)
            await self._call(e.shard, "load", lambda: (e.rsid, state))
            e.checkpoint, e.log = state, []
        finally:
            busy, e.busy = e.busy, None
            busy.set_result(None)

    async def _move(self, sid, target):
        e = self._entries[sid]
        await self._settle(e)
        e.busy = self._loop.create_future()
        try:
            state = await self._call(e.shard, "export", lambda: (e.rsid,))
            await self._call(e.shard, "close", lambda: (e.rsid,))
            rsid, _ = await target.actor.restore.remote(state, [])
            e.shard.streams.discard(sid)
            e.shard, e.rsid, e.checkpoint, e.log = target, rsid, state, []
            target.streams.add(sid)
        finally:
            busy, e.busy = e.busy, None
            busy.set_result(None)

    async def _scale(self, n):
        while len(self._shards) < n:
            shard = self._new_shard()
            await shard.actor.ping.remote()
            self._shards.append(shard)
        leaving = self._shards[n:]
        staying = self._shards[:n]
        moves = [(sid, None) for shard in leaving for sid in sorted(shard.streams)]
        # Balance: streams over the even share of a staying replica move to the emptiest ones.
        share = -(-len(self._entries) // n)
        for shard in staying:
            extra = len(shard.streams) - share
            if extra > 0:
                moves += [(sid, None) for sid in sorted(shard.streams)[-extra:]]
        self._shards = staying
        counts = defaultdict(int, {id(s): len(s.streams) for s in staying})
        for sid, _ in moves:
            counts[id(self._entries[sid].shard)] -= 1
        plan = []
        for sid, _ in moves:
            target = min(staying, key=lambda s: counts[id(s)])
            counts[id(target)] += 1
            plan.append((sid, target))
        await asyncio.gather(*[self._move(sid, target) for sid, target in plan])
        for shard in leaving:
            ray.kill(shard.actor)


class RouterBackend:
    """The ``fastlstm.serving.create_app`` backend of a :class:`StreamRouter`: one machine's
    WebSocket/HTTP protocol in front of many replicas."""

    def __init__(self, router):
        self.router = router
        self.input_size, self.output_size = router.input_size, router.output_size
        self.precision = router.model.precision

    def __len__(self):
        return len(self.router)

    def open(self):
        return self.router.open()

    def close(self, sid):
        self.router.close(sid)

    async def step(self, sid, x):
        return await self.router.step_async(sid, x)

    def get_state(self, sid):
        return self.router.get_state(sid)

    def set_state(self, sid, state):
        self.router.set_state(sid, state)

    def reset(self, sid):
        self.router.reset(sid)

    def shutdown(self):
        self.router.shutdown()

    def prometheus(self):
        lines = [
            "# TYPE fastlstm_router_streams gauge",
            f"fastlstm_router_streams {len(self.router)}",
            "# TYPE fastlstm_router_replicas gauge",
            f"fastlstm_router_replicas {self.router.num_replicas}",
            "# TYPE fastlstm_router_failovers_total counter",
            f"fastlstm_router_failovers_total {len(self.router.failovers)}",
        ]
        return "\n".join(lines) + "\n"


# -- offline -------------------------------------------------------------------------------


class _Predictor:
    """A map_batches actor: loads the model once, sets its threads, predicts grouped by length."""

    def __init__(self, model, column, output_column, threads):
        from . import set_num_threads

        if threads:
            set_num_threads(threads)
        self.model, self.column, self.output_column = model, column, output_column

    def __call__(self, batch):
        arrays = [
            np.asarray(np.stack(s) if isinstance(s, np.ndarray) and s.dtype == object else s, dtype=np.float32)
            for s in batch[self.column]
        ]
        outputs = [None] * len(arrays)
        by_length = defaultdict(list)
        for k, a in enumerate(arrays):
            if a.ndim != 2 or a.shape[1] != self.model.input_size:
                raise ValueError(f"{self.column}: expected (T, {self.model.input_size}) sequences, got {a.shape}")
            by_length[a.shape[0]].append(k)
        for idx in by_length.values():
            y = self.model.predict(np.stack([arrays[k] for k in idx]), batch_first=True)
            for k, row in zip(idx, y):
                outputs[k] = row
        out = dict(batch)
        out[self.output_column] = _column(outputs)
        return out


def _column(values):
    """A numpy column: a regular array when every value has one shape, else an object array."""
    if values and all(v.shape == values[0].shape for v in values):
        return np.stack(values)
    col = np.empty(len(values), dtype=object)
    col[:] = values
    return col


def predict_dataset(model, ds, column="x", *, output_column="y", num_actors=1, threads_per_actor=1, batch_size=256):
    """``model.predict`` over every sequence of ``ds[column]`` (each ``(T, I)``; lengths may differ).

    Runs ``map_batches`` with ``num_actors`` actors, each loading the model once and using
    ``threads_per_actor`` threads; sequences of equal length share one batched ``predict``.
    Returns the dataset with ``output_column`` added (lazy, like every Ray Data transform)."""
    return ds.map_batches(
        _Predictor,
        fn_constructor_kwargs={
            "model": model,
            "column": column,
            "output_column": output_column,
            "threads": threads_per_actor,
        },
        batch_size=batch_size,
        concurrency=num_actors,
        num_cpus=threads_per_actor,
        batch_format="numpy",
    )
