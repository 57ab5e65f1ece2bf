# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False, embedsignature=True
"""Streams: state kept between calls, nothing allocated per step.

``Stream`` steps one fixed batch; the compute is fastlstm._kernels.run_batch,
called without the GIL under a per-object lock.
"""

from cpython.pythread cimport (PyThread_type_lock, PyThread_allocate_lock, PyThread_free_lock,
                               PyThread_acquire_lock, PyThread_release_lock, WAIT_LOCK)

cimport numpy as cnp
import numpy as np

from fastlstm._kernels cimport (Network, fl_all_finite, n_chunks, num_threads, run_batch,
                                workspace_floats)
from fastlstm import _validate
from fastlstm._packing import aligned_empty

cnp.import_array()


cdef class Stream:
    """Steps one fixed batch of streams, keeping each stream's state between calls.

    Made by :meth:`fastlstm.Model.stream`.  ``step`` is the per-step hot path:
    with ``out=`` given it allocates nothing, and the compute runs without the
    GIL.  Calls on one stream from several threads are serialised by a lock
    held for the duration of each call; different streams run in parallel.
    """

    cdef Network net
    cdef readonly object model
    cdef readonly object batch_size       # None: unbatched (x is (I,))
    cdef int rows                         # batch rows per step (1 when unbatched)
    cdef cnp.ndarray h, c, ws             # state (rows, h_size), (rows, c_size); workspace
    cdef float *hp
    cdef float *cp
    cdef float *wsp
    cdef long ws_per
    cdef int ws_threads, tc, nchunks, n_in, n_out
    cdef PyThread_type_lock lock

    def __cinit__(self):
        self.lock = PyThread_allocate_lock()
        if self.lock == NULL:
            raise MemoryError()

    def __init__(self, model, Network net, batch_size):
        from fastlstm._threads import available_cores  # (_threads imports this module)
        cdef long hs, cs
        hs, cs = net.state_size
        self.model = model
        self.net = net
        self.batch_size = batch_size
        self.rows = 1 if batch_size is None else batch_size
        self.n_in = net.net.n_in
        self.n_out = net.net.n_out
        self.h = np.zeros((self.rows, hs), dtype=np.float32)
        self.c = np.zeros((self.rows, cs), dtype=np.float32)
        self.nchunks = n_chunks(&net.net, self.rows)
        self.tc = net.time_block(256, self.rows)
        self.ws_per = workspace_floats(&net.net, self.tc, (self.rows + self.nchunks - 1) // self.nchunks)
        self.ws_threads = min(self.nchunks, available_cores())
        self.ws = aligned_empty(self.ws_per * self.ws_threads)
        self.hp = <float *>cnp.PyArray_DATA(self.h)
        self.cp = <float *>cnp.PyArray_DATA(self.c)
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

    cdef object _advance(self, int T, cnp.ndarray x, cnp.ndarray y):
        """Check x is finite, then run T steps under the stream's lock, without the GIL."""
        cdef const float *xp = <const float *>cnp.PyArray_DATA(x)
        cdef float *yp = <float *>cnp.PyArray_DATA(y)
        cdef long n = cnp.PyArray_SIZE(x)
        cdef int ok
        cdef int nthreads = max(1, min(min(num_threads(), self.nchunks), self.ws_threads))
        with nogil:
            ok = fl_all_finite(xp, n)
            if ok:
                PyThread_acquire_lock(self.lock, WAIT_LOCK)
                run_batch(&self.net.net, T, self.tc, self.rows, xp, yp, self.hp, self.cp, self.wsp,
                          self.ws_per, self.nchunks, nthreads)
                PyThread_release_lock(self.lock)
        if not ok:
            raise ValueError("x: contains NaN or infinite values (the stream's state is unchanged)")
        return y

    def step(self, x, out=None):
        """Advance every stream by one time step.

        Parameters
        ----------
        x : array (I,) when the stream is unbatched, else (B, I)
        out : float32 array (O,) or (B, O), optional
            Written in place and returned; nothing is allocated when given.

        Returns
        -------
        The output of this step, (O,) or (B, O).
        """
        cdef cnp.ndarray xa, ya
        cdef int nd = 1 if self.batch_size is None else 2
        cdef cnp.npy_intp dims[2]
        if (cnp.PyArray_CheckExact(x) and cnp.PyArray_TYPE(<cnp.ndarray>x) == cnp.NPY_FLOAT32
                and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>x) and cnp.PyArray_NDIM(<cnp.ndarray>x) == nd
                and cnp.PyArray_DIMS(<cnp.ndarray>x)[nd - 1] == self.n_in
                and (nd == 1 or cnp.PyArray_DIMS(<cnp.ndarray>x)[0] == self.rows)):
            xa = <cnp.ndarray>x
        else:
            xa = _validate.step_input(x, self.n_in, self.batch_size)
        if out is None:
            dims[0] = self.rows if nd == 2 else self.n_out
            dims[1] = self.n_out
            ya = cnp.PyArray_EMPTY(nd, dims, cnp.NPY_FLOAT32, 0)
        elif (cnp.PyArray_CheckExact(out) and cnp.PyArray_TYPE(<cnp.ndarray>out) == cnp.NPY_FLOAT32
                and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>out) and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out)
                and cnp.PyArray_NDIM(<cnp.ndarray>out) == nd
                and cnp.PyArray_DIMS(<cnp.ndarray>out)[nd - 1] == self.n_out
                and (nd == 1 or cnp.PyArray_DIMS(<cnp.ndarray>out)[0] == self.rows)):
            ya = <cnp.ndarray>out
        else:
            _validate.raise_bad_out(out, self._out_shape())
        return self._advance(1, xa, ya)

    def step_many(self, x, out=None):
        """Advance by a chunk of T steps: x (T, I) or (T, B, I) -> (T, O) or (T, B, O).

        Gives the same result as calling :meth:`step` T times, and as one
        ``model.predict`` over the whole sequence (to float32 rounding)."""
        xa = _validate.chunk_input(x, self.n_in, self.batch_size)
        shape = (xa.shape[0], self.n_out) if self.batch_size is None else (xa.shape[0], self.rows, self.n_out)
        ya = _validate.output_buffer(out, shape, xa)
        if xa.shape[0] == 0:
            return ya
        return self._advance(xa.shape[0], xa, ya)

    def reset(self):
        """Zero the state of every stream."""
        with nogil:
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
        self.h.fill(0)
        self.c.fill(0)
        PyThread_release_lock(self.lock)

    @property
    def state(self):
        """A copy of the current state, as a :class:`fastlstm.State`.  Assign one to restore it."""
        with nogil:
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
        h, c = self.h.copy(), self.c.copy()
        PyThread_release_lock(self.lock)
        return self.model._state_from_buffers(h, c, self.batch_size)

    @state.setter
    def state(self, value):
        h, c = self.model._state_to_buffers(value, self.rows, self.batch_size, "state")
        with nogil:
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
        self.h[...] = h
        self.c[...] = c
        PyThread_release_lock(self.lock)
