# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False, embedsignature=True
"""Streams: state kept between calls, nothing allocated per step.

``Stream`` steps one fixed batch; ``StreamPool`` steps any subset of many
streams that open and close.  The compute is fastlstm._kernels.run_batch,
called without the GIL under a per-object lock.
"""

from cpython.pythread cimport (PyThread_type_lock, PyThread_allocate_lock, PyThread_free_lock,
                               PyThread_acquire_lock, PyThread_release_lock, WAIT_LOCK)

cimport numpy as cnp
import numpy as np
import operator

from libc.string cimport memcpy

from fastlstm._kernels cimport (Network, fl_all_finite, input_ok, max_chunk_rows, n_chunks, num_threads, run_batch,
                                workspace_floats)
from fastlstm import _validate
from fastlstm._kernels import OVERFLOW_MESSAGE
from fastlstm._packing import aligned_empty
from fastlstm.state import state_from_rows, state_rows

cnp.import_array()


cdef inline bint overlaps(cnp.ndarray a, cnp.ndarray b) noexcept:
    """Whether two C-contiguous arrays share any byte."""
    cdef char *a0 = <char *>cnp.PyArray_DATA(a)
    cdef char *b0 = <char *>cnp.PyArray_DATA(b)
    return a0 < b0 + cnp.PyArray_NBYTES(b) and b0 < a0 + cnp.PyArray_NBYTES(a)


cdef inline bint is_native(object a, int typenum, int nd) noexcept:
    """Whether a is a plain C-contiguous, native-byte-order ndarray of this type and rank:
    the arrays the per-step fast paths take as they are."""
    return (cnp.PyArray_CheckExact(a) and cnp.PyArray_TYPE(<cnp.ndarray>a) == typenum
            and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>a) and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
            and cnp.PyArray_NDIM(<cnp.ndarray>a) == nd)


cdef inline bint states_finite(const float *s, long ns, const float *y, long ny) noexcept nogil:
    return fl_all_finite(s, ns) and fl_all_finite(y, ny)


cdef class Stream:
    """Steps one fixed batch of streams, keeping each stream's state between calls.

    Made by :meth:`fastlstm.Model.stream`.  ``step`` is the per-step hot path:
    with ``out=`` given it allocates nothing, and the compute runs without the
    GIL.  Calls on one stream from several threads are serialised by a lock
    held for the duration of each call; different streams run in parallel.

    A step reads its own copy of ``x`` (copied under the lock, then checked
    finite), so another thread writing into ``x`` meanwhile cannot slip a NaN
    past the check.  A step whose state or output comes out non-finite is
    undone (the state restored from a copy taken before it) and refused.
    """

    cdef Network net
    cdef readonly object model
    cdef readonly object batch_size       # None: unbatched (x is (I,))
    cdef int rows                         # batch rows per step (1 when unbatched)
    cdef cnp.ndarray s, ws                # state (rows, state_size); workspace
    cdef cnp.ndarray s_saved              # the state before the current call, to undo it
    cdef cnp.ndarray x_own                # the step's copy of x: (rows, n_in) floats, or (rows,) token ids
    cdef float *sp
    cdef float *wsp
    cdef long ws_per, s_floats
    cdef int ws_threads, nchunks, n_in, n_out
    cdef PyThread_type_lock lock

    def __cinit__(self, model=None, Network net=None, batch_size=None):
        # Everything is set up here, not in __init__: a Stream exists only fully built
        # (Stream.__new__(Stream) raises) and cannot be re-initialised while in use.
        from fastlstm._threads import available_cores  # (_threads imports this module)
        self.lock = PyThread_allocate_lock()
        if self.lock == NULL:
            raise MemoryError()
        if net is None or getattr(model, "_net", None) is not net:
            raise TypeError("Stream: made by model.stream(batch_size), not directly")
        self.model = model
        self.net = net
        self.batch_size = batch_size
        self.rows = 1 if batch_size is None else _validate.positive_int(batch_size, "batch_size",
                                                                        _validate.MAX_COUNT)
        self.n_in = net.net.n_in
        self.n_out = net.net.n_out
        self.s = np.zeros((self.rows, net.state_size), dtype=np.float32)
        self.s_saved = np.empty_like(self.s)
        self.x_own = (np.empty(self.rows, dtype=np.int64) if net.net.token_input
                      else np.empty((self.rows, self.n_in), dtype=np.float32))
        self.s_floats = cnp.PyArray_SIZE(self.s)
        self.nchunks = n_chunks(&net.net, self.rows)
        # One step per time block, also in step_many: every step is then the same
        # arithmetic, so step_many is bit-identical to calling step T times.
        self.ws_per = workspace_floats(&net.net, 1, <int>((<long>self.rows + self.nchunks - 1) // self.nchunks))
        self.ws_threads = min(self.nchunks, available_cores())
        self.ws = aligned_empty(self.ws_per * self.ws_threads)
        self.sp = <float *>cnp.PyArray_DATA(self.s)
        self.wsp = <float *>cnp.PyArray_DATA(self.ws)

    def __dealloc__(self):
        if self.lock != NULL:
            PyThread_free_lock(self.lock)

    def __repr__(self):
        return f"<fastlstm.Stream batch_size={self.batch_size} of {self.model.describe_short()}>"

    cdef tuple _out_shape(self):
        if self.batch_size is None:
            return (self.n_out,)
        return (self.rows, self.n_out)

    cdef object _advance(self, int T, cnp.ndarray x, cnp.ndarray y, bint copy_x):
        """Run T steps under the stream's lock, without the GIL: x (copied first when copy_x:
        it may be the caller's memory) checked finite (or its token ids in range), the state
        saved, the steps run, and the state restored if it or the output came out non-finite."""
        cdef const void *xp = cnp.PyArray_DATA(x)
        cdef float *yp = <float *>cnp.PyArray_DATA(y)
        cdef void *own = cnp.PyArray_DATA(self.x_own)
        cdef float *saved = <float *>cnp.PyArray_DATA(self.s_saved)
        cdef long n = cnp.PyArray_SIZE(x), ny = cnp.PyArray_SIZE(y), nbytes = cnp.PyArray_NBYTES(x)
        cdef long ns = self.s_floats
        cdef bint finite, ok = False
        cdef int nthreads = max(1, min(min(num_threads(), self.nchunks), self.ws_threads))
        with nogil:
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
            if copy_x:
                memcpy(own, xp, nbytes)
                xp = own
            finite = input_ok(&self.net.net, xp, n)
            if finite:
                memcpy(saved, self.sp, ns * sizeof(float))
                run_batch(&self.net.net, T, 1, self.rows, xp, yp, self.sp, self.wsp,
                          self.ws_per, self.nchunks, nthreads)
                ok = states_finite(self.sp, ns, yp, ny)
                if not ok:
                    memcpy(self.sp, saved, ns * sizeof(float))
            PyThread_release_lock(self.lock)
        if not finite:
            raise ValueError(f"{_validate.input_complaint(self.net)} (the stream's state is unchanged)")
        if not ok:
            raise ValueError(OVERFLOW_MESSAGE)
        return y

    def step(self, x, out=None):
        """Advance every stream by one time step.

        Parameters
        ----------
        x : array (I,) when the stream is unbatched, else (B, I)
        out : float32 array (O,) or (B, O), optional
            Written in place and returned; nothing is allocated when given.  Must not
            overlap ``x``.

        Returns
        -------
        The output of this step, (O,) or (B, O).

        Raises ValueError for NaN or infinite inputs, and for a step whose state or
        output overflows to NaN or infinity (then ``out``'s contents are unspecified);
        either way the state is unchanged.
        """
        cdef cnp.ndarray xa, ya
        cdef int nd = 1 if self.batch_size is None else 2
        cdef cnp.npy_intp dims[2]
        if (not self.net.net.token_input and is_native(x, cnp.NPY_FLOAT32, nd)
                and cnp.PyArray_DIMS(<cnp.ndarray>x)[nd - 1] == self.n_in
                and (nd == 1 or cnp.PyArray_DIMS(<cnp.ndarray>x)[0] == self.rows)):
            xa = <cnp.ndarray>x
        else:
            xa = _validate.step_input(x, self.n_in, self.batch_size, self.net.net.token_input)
        if out is None:
            dims[0] = self.rows if nd == 2 else self.n_out
            dims[1] = self.n_out
            ya = cnp.PyArray_EMPTY(nd, dims, cnp.NPY_FLOAT32, 0)
        elif (is_native(out, cnp.NPY_FLOAT32, nd) and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out)
                and cnp.PyArray_DIMS(<cnp.ndarray>out)[nd - 1] == self.n_out
                and (nd == 1 or cnp.PyArray_DIMS(<cnp.ndarray>out)[0] == self.rows)):
            ya = <cnp.ndarray>out
            if overlaps(xa, ya):
                raise ValueError("out: must not overlap the input x")
        else:
            _validate.raise_bad_out(out, self._out_shape())
        return self._advance(1, xa, ya, True)

    def step_many(self, x, out=None):
        """Advance by a chunk of T steps: x (T, I) or (T, B, I) -> (T, O) or (T, B, O).

        Bit-identical to calling :meth:`step` T times, and the same as one
        ``model.predict`` over the whole sequence (to float32 rounding).  A refused
        chunk (NaN or infinite inputs, or a step that overflowed) changes no state."""
        xa = _validate.chunk_input(x, self.n_in, self.batch_size, self.net.net.token_input)
        shape = (xa.shape[0], self.n_out) if self.batch_size is None else (xa.shape[0], self.rows, self.n_out)
        ya = _validate.output_buffer(out, shape, xa)
        if xa.shape[0] == 0:
            return ya
        if xa is x or not xa.flags.owndata:
            # The caller's memory: the steps read a private copy, checked once.
            xa = xa.copy()
        return self._advance(xa.shape[0], xa, ya, False)

    def reset(self):
        """Zero the state of every stream."""
        with nogil:
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
        self.s.fill(0)
        PyThread_release_lock(self.lock)

    @property
    def precision(self):
        """The model's precision (``model.precision``): one of :data:`fastlstm.PRECISIONS`."""
        return self.model.precision

    @property
    def state(self):
        """A copy of the current state, as a :class:`fastlstm.State`.  Assign one to restore it."""
        with nogil:
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
        rows = self.s.copy()
        PyThread_release_lock(self.lock)
        return state_from_rows(rows, self.net.state_layout, self.net.signature, self.batch_size)

    @state.setter
    def state(self, value):
        rows = state_rows(value, self.net.state_layout, self.net.signature, self.rows, self.batch_size, "state")
        with nogil:
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
        self.s[...] = rows
        PyThread_release_lock(self.lock)


# ---------------------------------------------------------------------------
# StreamPool

ctypedef unsigned long long u64

DEF SLOT_BITS = 32
cdef long long SLOT_MASK = 0xFFFFFFFF    # an id's low 32 bits: its slot
DEF BAD_NONE = 0
DEF BAD_UNKNOWN = 1
DEF BAD_DUPLICATE = 2


cdef class StreamPool:
    """Many independent streams that join and leave, stepped together in one batched call.

    Made by :meth:`fastlstm.Model.pool`.  State for ``capacity`` streams is
    allocated up front; :meth:`reserve` grows it, nothing grows it silently.
    A stream id packs a slot number and that slot's generation, so the id of
    a closed stream stays invalid even after its slot is reused.

    ``step(ids, x)`` gathers the named streams' states into one contiguous
    batch, runs one batched kernel call (threads across the rows) and scatters
    the states back.  Every id is checked before anything is touched, and the
    states are scattered back only if they (and the outputs) came out finite:
    a refused call changes no state.  All methods are serialised by one lock per pool,
    so concurrent use from several threads is safe (calls run one at a time).
    """

    cdef Network net
    cdef readonly object model
    cdef int cap, n_in, n_out, ws_threads
    cdef long s_size, ws_per
    cdef u64 stamp
    cdef cnp.ndarray s               # (cap, s_size): each slot's state
    cdef cnp.ndarray sg              # the same shape: gathered batch state
    cdef cnp.ndarray gen             # uint32 (cap,): bumped when a slot is closed
    cdef cnp.ndarray opened          # uint8 (cap,)
    cdef cnp.ndarray mark            # uint64 (cap,): duplicate detection stamps
    cdef cnp.ndarray slots           # int64 (cap,): slots of the current step's ids
    cdef cnp.ndarray free_stack      # int64 (cap,): free slots, top at n_free - 1
    cdef int n_free
    cdef cnp.ndarray ws
    cdef cnp.ndarray x_own           # the step's copy of x: (cap, n_in) floats, or (cap,) token ids
    cdef PyThread_type_lock lock

    def __cinit__(self, model=None, Network net=None, capacity=None):
        # Set up here, not in __init__, as Stream is: never half-built, never re-initialised.
        self.lock = PyThread_allocate_lock()
        if self.lock == NULL:
            raise MemoryError()
        if net is None or getattr(model, "_net", None) is not net:
            raise TypeError("StreamPool: made by model.pool(capacity), not directly")
        capacity = _validate.positive_int(capacity, "capacity", _validate.MAX_COUNT)
        self.model = model
        self.net = net
        self.n_in = net.net.n_in
        self.n_out = net.net.n_out
        self.s_size = net.state_size
        self.cap = 0
        self.n_free = 0
        self.stamp = 0
        self._grow(capacity)

    def __dealloc__(self):
        if self.lock != NULL:
            PyThread_free_lock(self.lock)

    cdef int _grow(self, int capacity) except -1:
        """Reallocate every per-slot array for ``capacity`` slots, keeping the open streams.

        Everything is allocated before anything is replaced, so a MemoryError leaves
        the pool as it was."""
        from fastlstm._threads import available_cores  # (_threads imports _kernels)
        cdef int old = self.cap

        def grown(arr, shape, dtype):
            new = np.zeros(shape, dtype=dtype)
            if arr is not None:
                new[:old] = arr[:old]
            return new
        s = grown(self.s, (capacity, self.s_size), np.float32)
        gen = grown(self.gen, capacity, np.uint32)
        opened = grown(self.opened, capacity, np.uint8)
        mark = grown(self.mark, capacity, np.uint64)
        sg = np.empty((capacity, self.s_size), dtype=np.float32)
        slots = np.empty(capacity, dtype=np.int64)
        x_own = (np.empty(capacity, dtype=np.int64) if self.net.net.token_input
                 else np.empty((capacity, self.n_in), dtype=np.float32))
        # New slots go on the free stack below the old free ones, lowest slot on top.
        stack = np.empty(capacity, dtype=np.int64)
        stack[:capacity - old] = np.arange(capacity - 1, old - 1, -1)
        if self.n_free:
            stack[capacity - old:capacity - old + self.n_free] = self.free_stack[:self.n_free]
        nchunks = n_chunks(&self.net.net, capacity)
        ws_threads = max(1, min(nchunks, available_cores()))
        ws_per = workspace_floats(&self.net.net, 1, max_chunk_rows(&self.net.net, capacity))
        ws = aligned_empty(ws_per * ws_threads)
        self.s, self.gen, self.opened, self.mark = s, gen, opened, mark
        self.sg, self.slots, self.x_own, self.free_stack = sg, slots, x_own, stack
        self.ws, self.ws_per, self.ws_threads = ws, ws_per, ws_threads
        self.n_free += capacity - old
        self.cap = capacity
        return 0

    def __repr__(self):
        return f"<fastlstm.StreamPool {len(self)}/{self.cap} open of {self.model.describe_short()}>"

    def __len__(self):
        return self.cap - self.n_free

    @property
    def capacity(self):
        """Streams the pool holds state for (open or free)."""
        return self.cap

    @property
    def precision(self):
        """The model's precision (``model.precision``): one of :data:`fastlstm.PRECISIONS`."""
        return self.model.precision

    def reserve(self, n):
        """Make room for at least ``n`` streams (never shrinks)."""
        n = _validate.positive_int(n, "n", _validate.MAX_COUNT)
        with nogil:
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
        try:
            if n > self.cap:
                self._grow(n)
        finally:
            PyThread_release_lock(self.lock)

    def open(self):
        """Open a stream with zero state; returns its id (an int)."""
        cdef long slot
        with nogil:
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
        try:
            if self.n_free == 0:
                raise RuntimeError(f"the pool is full ({self.cap} streams open); "
                                   "call pool.reserve(n) to make room, or close a stream")
            self.n_free -= 1
            slot = self.free_stack[self.n_free]
            self.s[slot] = 0
            self.opened[slot] = 1
            return (int(self.gen[slot]) << SLOT_BITS) | slot
        finally:
            PyThread_release_lock(self.lock)

    cdef long _slot(self, sid) except -1:
        """The slot of an open stream id, or ValueError (call with the lock held)."""
        cdef long long v
        try:
            v = operator.index(sid)     # refuses floats, which C conversion would truncate
        except TypeError:
            raise TypeError(f"sid: expected an int stream id, got {type(sid).__name__}") from None
        except OverflowError:
            raise ValueError(f"sid: {sid} is not an open stream of this pool") from None
        cdef long slot = v & SLOT_MASK
        if v < 0 or slot >= self.cap or not self.opened[slot] or self.gen[slot] != (v >> SLOT_BITS):
            raise ValueError(f"sid: {sid} is not an open stream of this pool")
        return slot

    def close(self, sid):
        """Close a stream; its id becomes invalid and its slot free for reuse."""
        with nogil:
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
        try:
            slot = self._slot(sid)
            self.opened[slot] = 0
            self.gen[slot] = (int(self.gen[slot]) + 1) & 0x7fffffff
            self.free_stack[self.n_free] = slot
            self.n_free += 1
        finally:
            PyThread_release_lock(self.lock)

    def reset(self, sid):
        """Zero one stream's state."""
        with nogil:
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
        try:
            slot = self._slot(sid)
            self.s[slot] = 0
        finally:
            PyThread_release_lock(self.lock)

    def get_state(self, sid):
        """A copy of one stream's state (unbatched :class:`fastlstm.State`)."""
        with nogil:
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
        try:
            slot = self._slot(sid)
            rows = self.s[slot:slot + 1].copy()
        finally:
            PyThread_release_lock(self.lock)
        return state_from_rows(rows, self.net.state_layout, self.net.signature, None)

    def set_state(self, sid, state):
        """Replace one stream's state with an unbatched :class:`fastlstm.State` (e.g. from get_state)."""
        rows = state_rows(state, self.net.state_layout, self.net.signature, 1, None, "state")
        with nogil:
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
        try:
            slot = self._slot(sid)
            self.s[slot] = rows[0]
        finally:
            PyThread_release_lock(self.lock)

    def ids(self):
        """The ids of the open streams, in slot order."""
        with nogil:
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
        try:
            open_slots = np.flatnonzero(self.opened[:self.cap])
            return [(int(self.gen[s]) << SLOT_BITS) | int(s) for s in open_slots]
        finally:
            PyThread_release_lock(self.lock)

    def step(self, ids, x, out=None):
        """Advance the streams ``ids`` by one step each: x (N, I) -> (N, O).

        ``ids`` are distinct open stream ids, in any order; row k of ``x`` is
        the input of stream ``ids[k]``.  With ``out`` given (float32 (N, O), not
        overlapping ``x``) nothing is allocated.  A bad id (unknown, closed,
        repeated), a NaN or infinite input, or a step whose states or outputs
        overflow to NaN or infinity raises ValueError, and no stream's state changes."""
        cdef cnp.ndarray ia, xa, ya
        cdef cnp.npy_intp dims[2]
        if is_native(ids, cnp.NPY_INT64, 1) and cnp.PyArray_DIMS(<cnp.ndarray>ids)[0] <= self.cap:
            ia = <cnp.ndarray>ids
        else:
            ia = _validate.stream_ids(ids, self.cap)
        cdef int N = <int>cnp.PyArray_DIMS(ia)[0]
        if (not self.net.net.token_input and is_native(x, cnp.NPY_FLOAT32, 2)
                and cnp.PyArray_DIMS(<cnp.ndarray>x)[0] == N and cnp.PyArray_DIMS(<cnp.ndarray>x)[1] == self.n_in):
            xa = <cnp.ndarray>x
        else:
            xa = _validate.step_input(x, self.n_in, N, self.net.net.token_input)
        if out is None:
            dims[0] = N
            dims[1] = self.n_out
            ya = cnp.PyArray_EMPTY(2, dims, cnp.NPY_FLOAT32, 0)
        elif (is_native(out, cnp.NPY_FLOAT32, 2) and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out)
                and cnp.PyArray_DIMS(<cnp.ndarray>out)[0] == N and cnp.PyArray_DIMS(<cnp.ndarray>out)[1] == self.n_out):
            ya = <cnp.ndarray>out
            if overlaps(xa, ya):
                raise ValueError("out: must not overlap the input x")
        else:
            _validate.raise_bad_out(out, (N, self.n_out))
        if N == 0:
            return ya
        cdef const long long *idp = <const long long *>cnp.PyArray_DATA(ia)
        cdef const void *xp = cnp.PyArray_DATA(xa)
        cdef float *yp = <float *>cnp.PyArray_DATA(ya)
        cdef void *own
        cdef long n = cnp.PyArray_SIZE(xa), nbytes = cnp.PyArray_NBYTES(xa)
        cdef int bad = BAD_NONE, bad_at = 0
        cdef bint finite, ok = True
        with nogil:
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
            # The kernel reads this copy, so the check holds even if x changes meanwhile.  Its buffer is
            # looked up under the lock: reserve() on another thread replaces (and frees) the old one.
            own = cnp.PyArray_DATA(self.x_own)
            memcpy(own, xp, nbytes)
            finite = input_ok(&self.net.net, own, n)
            if finite:
                bad = self._check_ids(idp, N, &bad_at)
                if bad == BAD_NONE:
                    ok = self._step_slots(N, own, yp)
            PyThread_release_lock(self.lock)
        if not finite:
            raise ValueError(f"{_validate.input_complaint(self.net)} (no stream's state changed)")
        if bad == BAD_UNKNOWN:
            raise ValueError(f"ids: ids[{bad_at}] = {ia[bad_at]} is not an open stream of this pool "
                             "(no stream's state changed)")
        if bad == BAD_DUPLICATE:
            raise ValueError(f"ids: ids[{bad_at}] = {ia[bad_at]} appears more than once "
                             "(no stream's state changed)")
        if not ok:
            raise ValueError(OVERFLOW_MESSAGE)
        return ya

    cdef int _check_ids(self, const long long *idp, int N, int *bad_at) noexcept nogil:
        """Map ids to slots (into self.slots); BAD_* for the first bad one. Touches no state."""
        cdef long long *slots = <long long *>cnp.PyArray_DATA(self.slots)
        cdef const unsigned char *opened = <const unsigned char *>cnp.PyArray_DATA(self.opened)
        cdef const unsigned int *gen = <const unsigned int *>cnp.PyArray_DATA(self.gen)
        cdef u64 *mark = <u64 *>cnp.PyArray_DATA(self.mark)
        cdef long long v, slot
        cdef int k
        self.stamp += 1    # marks from earlier calls are stale: no clearing needed
        for k in range(N):
            v = idp[k]
            slot = v & SLOT_MASK
            if v < 0 or slot >= self.cap or not opened[slot] or gen[slot] != (v >> SLOT_BITS):
                bad_at[0] = k
                return BAD_UNKNOWN
            if mark[slot] == self.stamp:
                bad_at[0] = k
                return BAD_DUPLICATE
            mark[slot] = self.stamp
            slots[k] = slot
        return BAD_NONE

    cdef bint _step_slots(self, int N, const void *xp, float *yp) noexcept nogil:
        """Gather the states of self.slots[:N], run one batched step on the copies, and scatter
        them back if they and the outputs are finite; whether it did."""
        cdef const long long *slots = <const long long *>cnp.PyArray_DATA(self.slots)
        cdef float *s = <float *>cnp.PyArray_DATA(self.s)
        cdef float *sg = <float *>cnp.PyArray_DATA(self.sg)
        cdef long ss = self.s_size
        cdef int k
        cdef int nchunks = n_chunks(&self.net.net, N)
        for k in range(N):
            memcpy(sg + k * ss, s + slots[k] * ss, ss * sizeof(float))
        run_batch(&self.net.net, 1, 1, N, xp, yp, sg, <float *>cnp.PyArray_DATA(self.ws), self.ws_per,
                  nchunks, max(1, min(min(num_threads(), nchunks), self.ws_threads)))
        if not states_finite(sg, N * ss, yp, <long>N * self.n_out):
            return False
        for k in range(N):
            memcpy(s + slots[k] * ss, sg + k * ss, ss * sizeof(float))
        return True
