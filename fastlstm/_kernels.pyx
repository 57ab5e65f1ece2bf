# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False, embedsignature=True
"""Compiled kernels: the whole network forward for a block of time steps and
batch rows, and the thread/BLAS plumbing around it (streams: _streams.pyx).

Everything numeric runs without the GIL.  The Python layer (model.py and
_streams.pyx, with the checks of _validate.py) validates arguments and owns
the arrays; this module trusts the pointers it is given.

Parallel scheme: batch rows are independent through the whole network, so
the batch is cut into row chunks and each thread runs every layer and
every time step of its chunks on its own workspace -- no barrier per step.
When there are fewer chunks than threads (a batch of 32 is one chunk), the
threads instead work as a team on each chunk, each owning a slice of the
hidden units, with a barrier per step.  A single stream with big weights
splits its units the same way (fastlstm_single.h).  The chunking depends only
on the batch and layer sizes, and every output element is the same chain of
operations however the work is split, so results are bit-identical whatever
the thread count.  The threads are fastlstm's own (fastlstm_pool.h), which
survive fork().
"""

from fastlstm._packing import aligned_empty, pack_panels
from libc.limits cimport INT_MAX
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from scipy.linalg.cython_blas cimport sgemm

cimport numpy as cnp

cnp.import_array()

cdef extern from "fastlstm_gemm.h" nogil:
    int FL_PANEL
    int fl_packed_gemm_available()
    void fl_gemm_packed(long m, long n, long k, const float *A, long lda, const float *Wp, long ps,
                        float *C, long ldc)
    void fl_pack_a(long m, long k, float *ap, long i0, long i1, const float *src, long lds)
    void fl_gemm_apacked(long m, long n, long k, const float *ap, const float *Wp, long ps, const float *bias,
                         float *C, long ldc)

cdef extern from "fastlstm_isa.h" nogil:
    int fl_isa_level()
    int fl_isa_cpu()
    int fl_cpu_feature(int i, const char **name)

cdef extern from "fastlstm_barrier.h" nogil:
    ctypedef struct fl_spin_barrier:
        pass
    void fl_spin_barrier_wait(fl_spin_barrier *b, int nt)
    void fl_split_range(long n, int k, int nt, long *lo, long *hi)

cdef extern from "fastlstm_pool.h" nogil:
    int FL_HAVE_THREADS
    int FL_POOL_MAX_THREADS
    ctypedef void (*fl_task_fn)(int tid, int nt, void *arg) noexcept nogil
    void fl_pool_run(int nt, fl_task_fn fn, void *arg)

cdef extern from "fastlstm_single.h" nogil:
    void fl_lstm_single_part(int tid, int nt, fl_spin_barrier *bar, int tn, int reverse, int go_backwards,
                             float *gates, const float *x, long ldx, long n_in, const float *W, long H,
                             float *h, float *c, float *hnext, float *out, long ldo, int gate_act,
                             int cell_act)

cdef extern from "fastlstm_cell.h" nogil:
    void fl_cell_rows(float *z, long ldz, long gs, float *c, long ldc, float *h, long ldh, long nrows,
                      long n, int gate_act, int cell_act)
    void fl_gemv_acc(const float *v, long k, const float *W, long ldw, long n, float *z)
    void fl_merge_rows(const float *inp, float *out, long nrows, long n, int mode)
    void fl_activate(int kind, float *x, long n)
    void fl_softmax_row(float *x, long n)
    int FL_ACT_SOFTMAX, FL_ACT_LINEAR, FL_MERGE_CONCAT

cdef extern from "fastlstm_fpmode.h" nogil:
    ctypedef unsigned int fl_fpmode_t
    fl_fpmode_t fl_flush_denormals()
    void fl_restore_fpmode(fl_fpmode_t old)


# ---------------------------------------------------------------------------
# Limits

# The widest layer (inputs, units, outputs) the kernels take: row offsets such as
# 127 rows x width are computed in 32-bit ints.
DEF MAX_WIDTH = 1 << 24

# Why a call was refused after running: see the glitch guarantee in README "Security and limits".
OVERFLOW_MESSAGE = ("x: a step overflowed float32: a state or output became NaN or infinite, from finite "
                    "but huge inputs (no state changed)")


# ---------------------------------------------------------------------------
# Threads: ours (fastlstm_pool.h, across batch chunks) and the BLAS library's.

cdef int g_num_threads = 1

# openblas_{set,get}_num_threads of every OpenBLAS in the process, found by
# _blas.discover (and handed over by _threads.py).  Inside our parallel region BLAS must run on one thread, or the
# two thread pools multiply (oversubscription).
ctypedef void (*blas_set_fn)(int) noexcept nogil
ctypedef int (*blas_get_fn)() noexcept nogil
DEF MAX_BLAS_LIBS = 4
cdef blas_set_fn g_blas_set[MAX_BLAS_LIBS]
cdef blas_get_fn g_blas_get[MAX_BLAS_LIBS]
cdef int g_n_blas = 0


# An ILP64 Fortran sgemm (numpy's bundled OpenBLAS), used instead of scipy's when set.
ctypedef void (*sgemm64_fn)(const char *ta, const char *tb, const long long *m, const long long *n,
                            const long long *k, const float *alpha, const float *a, const long long *lda,
                            const float *b, const long long *ldb, const float *beta, float *c,
                            const long long *ldc) noexcept nogil
cdef sgemm64_fn g_sgemm64 = NULL


def _set_blas_hooks(list pairs, sgemm64):
    """Register (set_address, get_address) of each BLAS library's thread-count functions,
    and the address of a preferred ILP64 sgemm (or None for scipy's)."""
    global g_n_blas, g_sgemm64
    g_sgemm64 = <sgemm64_fn><size_t>sgemm64 if sgemm64 else NULL
    g_n_blas = 0
    for set_addr, get_addr in pairs[:MAX_BLAS_LIBS]:
        g_blas_set[g_n_blas] = <blas_set_fn><size_t>set_addr
        g_blas_get[g_n_blas] = <blas_get_fn><size_t>get_addr
        g_n_blas += 1


cdef inline void blas_threads_push(int n, int *saved) noexcept nogil:
    cdef int i
    for i in range(g_n_blas):
        saved[i] = g_blas_get[i]()
        if saved[i] != n:
            g_blas_set[i](n)


cdef inline void blas_threads_pop(int n, const int *saved) noexcept nogil:
    cdef int i
    for i in range(g_n_blas):
        if saved[i] != n:
            g_blas_set[i](saved[i])


def openmp_enabled():
    """Whether the compiled kernels run batches on several threads.

    The name is historical: the threads are fastlstm's own pool (which survives
    fork), not OpenMP's.  False only on platforms without POSIX threads."""
    return bool(FL_HAVE_THREADS)


def _max_threads():
    """The most threads one kernel call can use (the pool's team size limit)."""
    return FL_POOL_MAX_THREADS


def _isa_levels():
    """(path the kernels use, best path this CPU has, {CPU feature: present}); levels of
    enum fl_isa_level (fastlstm/_isa.py names them)."""
    cdef const char *name = NULL
    cdef int i = 0, has
    features = {}
    while True:
        has = fl_cpu_feature(i, &name)
        if has < 0:
            break
        features[name.decode()] = bool(has)
        i += 1
    return fl_isa_level(), fl_isa_cpu(), features


def _set_num_threads(int n):
    """(fastlstm.set_num_threads checks n first.)"""
    global g_num_threads
    g_num_threads = n


def _get_num_threads():
    return g_num_threads


cdef int num_threads() noexcept nogil:
    return g_num_threads


# ---------------------------------------------------------------------------
# Dense algebra, row-major.

cdef inline void matmul_acc(int m, int n, int k, const float *A, int lda, const float *B, int ldb,
                            float *C, int ldc) noexcept nogil:
    """C[m, n] += A[m, k] @ B[k, n], all row-major."""
    cdef int r
    cdef char tr = b'N'
    cdef float one = 1.0
    cdef long long m8 = m, n8 = n, k8 = k, lda8 = lda, ldb8 = ldb, ldc8 = ldc
    if m <= 2:
        # A BLAS call costs more than a few small rows of arithmetic.
        for r in range(m):
            fl_gemv_acc(A + r * lda, k, B, ldb, n, C + r * ldc)
    elif g_sgemm64 != NULL:
        g_sgemm64(&tr, &tr, &n8, &m8, &k8, &one, B, &ldb8, A, &lda8, &one, C, &ldc8)
    else:
        # Row-major C = A B is column-major C^T = B^T A^T: swap the operands.
        sgemm(&tr, &tr, &n, &m, &k, &one, <float *>B, &ldb, <float *>A, &lda, &one, C, &ldc)


cdef inline void matmul_w(int m, int n, int k, const float *A, int lda, const Dir *D, int k0,
                          float *C, int ldc) noexcept nogil:
    """C[m, n] += A[m, k] @ rows k0:k0+k of D's stacked [W_x; W_h] (n = 4H columns)."""
    if D.w_panels != NULL and m >= 3:
        fl_gemm_packed(m, n, k, A, lda, D.w_panels + <long>k0 * FL_PANEL, <long>(D.n_stack) * FL_PANEL, C, ldc)
    else:
        matmul_acc(m, n, k, A, lda, D.w_x + <long>k0 * n, n, C, ldc)


cdef inline void matmul_units(int m, int k, const float *ap, const Dir *D, float *gates, int H,
                              long u0, long u1) noexcept nogil:
    """gates[m, 4H] = bias + A @ [W_x; W_h] in the four gate columns of units u0:u1 only (A
    packed by fl_pack_a, k = n_in + n_out wide).

    Every output is the same FMA chain whatever columns a call covers, so a
    thread's slice gives bit for bit what the whole product does."""
    cdef long ps = <long>(D.n_stack) * FL_PANEL
    cdef int q
    if u0 == 0 and u1 == H:
        fl_gemm_apacked(m, 4 * H, k, ap, D.w_panels, ps, D.bias, gates, 4 * H)
        return
    for q in range(4):
        fl_gemm_apacked(m, u1 - u0, k, ap, D.w_panels + ((q * H + u0) // FL_PANEL) * ps, ps,
                        D.bias + q * H + u0, gates + q * H + u0, 4 * H)


cdef inline void fill_rows(float *dst, const float *row, int nrows, int n) noexcept nogil:
    cdef int r
    for r in range(nrows):
        memcpy(dst + <long>r * n, row, n * sizeof(float))


# ---------------------------------------------------------------------------
# The packed network.

cdef class Network:
    """Packed weights and layer descriptors; immutable, shared by streams and threads.

    Network(layers, head): layers are dicts from fastlstm._packing.pack_layer, head is
    (w (In, O), b (O,), act) or None.  Everything is set up in __cinit__, so an object
    exists only fully built (``Network.__new__(Network)`` raises) and cannot be re-initialised."""

    def __cinit__(self, list layers=None, head=None):
        cdef int n
        cdef int li, d
        cdef Layer *L
        cdef cnp.ndarray w, b, p
        cdef long h_off = 0, c_off = 0
        if not layers:
            raise TypeError("Network: needs the packed layers; fastlstm.Model builds it")
        n = len(layers)
        self._keep = []
        self.net.layers = <Layer *>malloc(max(n, 1) * sizeof(Layer))
        if self.net.layers == NULL:
            raise MemoryError()
        self.net.n_layers = n
        self.net.max_gates = self.net.max_cat = self.net.max_hidden = self.net.max_stack = 0
        self.streamable = True
        for li in range(n):
            spec = layers[li]
            L = &self.net.layers[li]
            L.n_dirs = len(spec["dirs"])
            L.gate_act = spec["gate_act"]
            L.cell_act = spec["cell_act"]
            L.merge = spec["merge"]
            L.go_backwards = spec["go_backwards"]
            L.n_in = spec["n_in"]
            L.hidden = spec["hidden"]
            L.n_out = spec["n_out"]
            L.width = spec["width"]
            for size in (L.n_in, L.hidden, L.n_out, L.width):
                if size > MAX_WIDTH:
                    raise ValueError(f"layer {li}: a width of {size} is more than the {MAX_WIDTH} fastlstm runs")
            if L.n_dirs > 1 or L.go_backwards:
                self.streamable = False
            for d in range(L.n_dirs):
                w, b, p = spec["dirs"][d]
                self._keep.extend((w, b, p))
                L.dirs[d].w_x = <const float *>cnp.PyArray_DATA(w)
                L.dirs[d].bias = <const float *>cnp.PyArray_DATA(b)
                L.dirs[d].w_proj = <const float *>cnp.PyArray_DATA(p) if p is not None else NULL
                L.dirs[d].n_stack = L.n_in + L.n_out
                L.dirs[d].w_panels = NULL
                if fl_packed_gemm_available():
                    panels = pack_panels(w)
                    self._keep.append(panels)
                    L.dirs[d].w_panels = <const float *>cnp.PyArray_DATA(panels)
                L.dirs[d].reverse = d == 1 or L.go_backwards
                L.dirs[d].h_off = h_off
                L.dirs[d].c_off = c_off
                h_off += L.n_out
                c_off += L.hidden
            self.net.max_gates = max(self.net.max_gates, 4 * L.hidden)
            self.net.max_cat = max(self.net.max_cat, L.n_dirs * L.n_out)
            self.net.max_stack = max(self.net.max_stack, L.n_in + L.n_out)
            self.net.max_hidden = max(self.net.max_hidden, L.hidden)
        self.net.h_size = h_off
        self.net.c_size = c_off
        self.net.n_in = self.net.layers[0].n_in
        self.net.n_out = self.net.layers[n - 1].width
        self.net.head_w = NULL
        self.net.head_b = NULL
        self.net.head_act = FL_ACT_LINEAR
        if head is not None:
            w, b, act = head
            self._keep.extend((w, b))
            self.net.head_w = <const float *>cnp.PyArray_DATA(w)
            self.net.head_b = <const float *>cnp.PyArray_DATA(b)
            self.net.head_act = act
            self.net.n_out = w.shape[1]

    def __dealloc__(self):
        free(self.net.layers)

    @property
    def state_size(self):
        """(floats of h, floats of c) per batch row."""
        return self.net.h_size, self.net.c_size

    def time_block(self, long T, int rows):
        """Steps per time block: the whole sequence if any layer needs it, else a
        block whose gate buffer stays around 4 MB, so the hoisted input sgemm is
        large while memory does not grow with T."""
        if not self.streamable:
            return max(T, 1)
        return max(1, min(T, (1 << 20) // max(1, <long>rows * self.net.max_gates)))

    def chunks(self, int B):
        """Number of batch-row chunks; a function of B and the layer sizes only."""
        return n_chunks(&self.net, B)

    def plan(self, int B):
        """How a batch of B rows runs at the current thread count: "team" (all threads on
        each chunk, splitting hidden units) or "chunks" (a thread per chunk)."""
        return "team" if use_team(&self.net, B, n_chunks(&self.net, B)) else "chunks"

    def forward(self, cnp.ndarray x, cnp.ndarray y, cnp.ndarray h, cnp.ndarray c):
        """Run x (T, B, I) -> y (T, B, O) from the state (h (B, h_size), c (B, c_size)), updated in place.

        Arrays must be C-contiguous native float32 of those shapes (the caller checks);
        x must be finite (checked here).  ValueError when a step overflowed (a state or
        output that is not finite): h and c are then garbage, so callers pass copies."""
        cdef Py_ssize_t T = x.shape[0], B = x.shape[1]
        if T == 0 or B == 0:
            return
        if T > INT_MAX or B > INT_MAX:
            raise ValueError(f"x: {T} steps of {B} rows is more than fastlstm runs in one call")
        cdef int nchunks = n_chunks(&self.net, <int>B)
        cdef int rows = <int>((B + nchunks - 1) // nchunks)
        cdef int Tc = self.time_block(T, rows)
        cdef int nthreads = min(g_num_threads, nchunks)
        cdef long per = workspace_floats(&self.net, Tc, rows)
        cdef cnp.ndarray ws
        if <long>Tc * rows > INT_MAX:
            raise ValueError(f"x: {T} steps of {B} rows is more than fastlstm runs in one call for a "
                             "bidirectional model; pass fewer rows per call")
        if not fl_all_finite(<const float *>cnp.PyArray_DATA(x), cnp.PyArray_SIZE(x)):
            raise ValueError("x: contains NaN or infinite values")
        ws = aligned_empty(per * nthreads)
        with nogil:
            run_batch(&self.net, <int>T, Tc, <int>B, <const float *>cnp.PyArray_DATA(x),
                      <float *>cnp.PyArray_DATA(y), <float *>cnp.PyArray_DATA(h), <float *>cnp.PyArray_DATA(c),
                      <float *>cnp.PyArray_DATA(ws), per, nchunks, nthreads)
        if not (fl_all_finite(<const float *>cnp.PyArray_DATA(h), cnp.PyArray_SIZE(h))
                and fl_all_finite(<const float *>cnp.PyArray_DATA(c), cnp.PyArray_SIZE(c))
                and fl_all_finite(<const float *>cnp.PyArray_DATA(y), cnp.PyArray_SIZE(y))):
            raise ValueError(OVERFLOW_MESSAGE)


# A single stream's layer is split over a team from this hidden size on: its
# weights then outgrow one core's L2, and the split streams half from each.
# (At H=256, 2 threads: a 200-step predict 10.7 -> 6.8 ms, a step 158 -> 69 us;
# at H=128 the weights fit one L2 and the two barriers per step ate the gain.)
DEF SPLIT_MIN_HIDDEN = 256

# Rows per batch chunk.  Each chunk re-reads every weight once per step, so
# chunks of layers whose weights leave L2 are taller (64 rows ran the packed
# kernel at 92 GFLOP/s where 32 ran at 79, for 4 MB of weights); small layers
# keep short chunks, so that more of them spread over the threads.
DEF CHUNK_ROWS = 32
DEF CHUNK_ROWS_BIG = 64
DEF BIG_WEIGHTS = 1 << 18      # floats of one stacked [W_x; W_h]: 1 MB

# A team of threads shares one chunk (splitting its hidden units) only when a
# step's product is at least this many flops: each step then waits at a barrier,
# which costs a few microseconds on an idle machine and more on a busy one.
DEF TEAM_MIN_FLOPS = 4000000


cdef int chunk_rows(const Net *net) noexcept nogil:
    return CHUNK_ROWS_BIG if <long>net.max_stack * net.max_gates >= BIG_WEIGHTS else CHUNK_ROWS


cdef int n_chunks(const Net *net, int B) noexcept nogil:
    return max(1, B // chunk_rows(net))


cdef int max_chunk_rows(const Net *net, int B) noexcept nogil:
    """The most rows any chunk has, over every batch of at most B rows."""
    return min(B, 2 * chunk_rows(net) - 1)


cdef long workspace_floats(const Net *net, int Tc, int rows) noexcept nogil:
    cdef long blk = <long>Tc * rows
    return (pad16(blk * net.n_in) + pad16(blk * net.max_gates) + 2 * pad16(blk * net.max_cat)
            + pad16(blk * net.n_out) + pad16(<long>rows * net.max_hidden) + 2 * pad16(<long>rows * net.max_stack))


cdef inline long pad16(long n) noexcept nogil:
    """n rounded up to whole 64-byte cache lines of floats, so workspace sub-buffers stay aligned."""
    return (n + 15) & ~15


cdef bint layer_splits(const Layer *L, int nb) noexcept nogil:
    """Whether a team can split this layer's hidden units for chunks of nb rows.

    One row: a hidden size worth two barriers per step (fastlstm_single.h).
    3+ rows: the packed kernel, and gate blocks that start on a 16-column panel.
    Projection layers need every unit's h before their product, so one thread
    runs them, as it does 2-row chunks (too little work to share)."""
    if L.dirs[0].w_proj != NULL:
        return False
    if nb == 1:
        return L.hidden >= SPLIT_MIN_HIDDEN
    return nb >= 3 and L.dirs[0].w_panels != NULL and L.hidden % FL_PANEL == 0


cdef bint team_pays(const Net *net, int rows) noexcept nogil:
    """Whether chunks of this many rows are worth a team of threads each."""
    cdef int l
    cdef const Layer *L
    for l in range(net.n_layers):
        L = &net.layers[l]
        if layer_splits(L, rows) and (rows == 1 or 2.0 * rows * L.n_out * 4 * L.hidden >= TEAM_MIN_FLOPS):
            return True
    return False


cdef bint use_team(const Net *net, int B, int nchunks) noexcept nogil:
    """Whether the threads work as one team per chunk (too few chunks to go round)."""
    return FL_HAVE_THREADS and g_num_threads > nchunks and team_pays(net, B // nchunks)


cdef struct BatchJob:
    # run_batch's arguments, for the pool's threads
    const Net *net
    int T, Tc, B, nchunks
    const float *x
    float *y
    float *h
    float *c
    float *ws
    long per
    fl_spin_barrier *bar


cdef void run_batch(const Net *net, int T, int Tc, int B, const float *x, float *y, float *h, float *c,
                    float *ws, long per, int nchunks, int nthreads) noexcept nogil:
    """All rows of the batch, cut into chunks spread over the threads.

    nthreads: threads that may each run chunks (one workspace of `per` floats each).
    With fewer chunks than set_num_threads threads, the threads instead work
    as one team on each chunk in turn, each owning a slice of the hidden units.
    Either way every number is computed by the same arithmetic, so results do
    not depend on the thread count.

    BLAS runs on one thread throughout: OpenBLAS's own threading changes the
    rounding of some products with its thread count (seen at M=3, N=1040)."""
    cdef int saved[MAX_BLAS_LIBS]
    cdef int team_threads = g_num_threads
    cdef fl_spin_barrier bar
    cdef BatchJob job
    memset(&bar, 0, sizeof(bar))
    job.net = net
    job.T = T
    job.Tc = Tc
    job.B = B
    job.nchunks = nchunks
    job.x = x
    job.y = y
    job.h = h
    job.c = c
    job.ws = ws
    job.per = per
    job.bar = &bar
    blas_threads_push(1, saved)
    if use_team(net, B, nchunks):
        fl_pool_run(team_threads, run_team, &job)
    else:
        fl_pool_run(max(1, nthreads), run_chunks, &job)
    blas_threads_pop(1, saved)


cdef void run_chunks(int tid, int nt, void *arg) noexcept nogil:
    """One thread of a chunk split: a contiguous share of the chunks, alone, on its own workspace."""
    cdef const BatchJob *J = <const BatchJob *>arg
    cdef int k, b0, b1
    for k in range(<int>(<long>J.nchunks * tid // nt), <int>(<long>J.nchunks * (tid + 1) // nt)):
        b0 = <int>((<long>k * J.B) // J.nchunks)
        b1 = <int>((<long>(k + 1) * J.B) // J.nchunks)
        run_rows(J.net, J.T, J.Tc, J.B, b0, b1 - b0, J.x, J.y, J.h, J.c, J.ws + tid * J.per, 0, 1, J.bar)


cdef void run_team(int tid, int nt, void *arg) noexcept nogil:
    """One thread of a team: every chunk in turn, on the shared workspace."""
    cdef const BatchJob *J = <const BatchJob *>arg
    cdef int k, b0, b1
    for k in range(J.nchunks):
        b0 = <int>((<long>k * J.B) // J.nchunks)
        b1 = <int>((<long>(k + 1) * J.B) // J.nchunks)
        run_rows(J.net, J.T, J.Tc, J.B, b0, b1 - b0, J.x, J.y, J.h, J.c, J.ws, tid, nt, J.bar)


cdef inline void sync(fl_spin_barrier *bar, int nt) noexcept nogil:
    fl_spin_barrier_wait(bar, nt)


cdef void run_rows(const Net *net, int T, int Tc, int B, int b0, int nb, const float *x, float *y,
                   float *h, float *c, float *ws, int tid, int nt, fl_spin_barrier *bar) noexcept nogil:
    """Rows b0:b0+nb of x (T, B, I) through every layer and the head, Tc steps at a time.

    tid, nt, bar: this thread's place in the team working on these rows (nt = 1: alone).
    Thread 0 of a team does the gathering, the head and the scattering."""
    cdef fl_fpmode_t mode = fl_flush_denormals()
    cdef long blk = <long>Tc * nb
    cdef float *xin = ws
    cdef float *gates = xin + pad16(blk * net.n_in)
    cdef float *buf0 = gates + pad16(blk * net.max_gates)
    cdef float *buf1 = buf0 + pad16(blk * net.max_cat)
    cdef float *yc = buf1 + pad16(blk * net.max_cat)
    cdef float *hfull = yc + pad16(blk * net.n_out)
    cdef float *xh = hfull + pad16(<long>nb * net.max_hidden)
    cdef const float *inp
    cdef float *out
    cdef const float *res
    cdef const Layer *L
    cdef int t0, tn, t, l, r, rows
    cdef int I = net.n_in, O = net.n_out
    t0 = 0
    while t0 < T:
        tn = min(Tc, T - t0)
        rows = tn * nb
        if nb == B:
            inp = x + <long>t0 * B * I
        else:
            if tid == 0:
                for t in range(tn):
                    memcpy(xin + <long>t * nb * I, x + (<long>(t0 + t) * B + b0) * I, nb * I * sizeof(float))
            inp = xin
        for l in range(net.n_layers):
            L = &net.layers[l]
            out = buf0 if l % 2 == 0 else buf1
            # Every layer reads all of the previous one's output (or the gathered x).
            sync(bar, nt)
            if nt == 1 or layer_splits(L, nb):
                run_layer(L, tn, nb, inp, out, h + <long>b0 * net.h_size, net.h_size,
                          c + <long>b0 * net.c_size, net.c_size, gates, hfull, xh, tid, nt, bar)
            elif tid == 0:
                run_layer(L, tn, nb, inp, out, h + <long>b0 * net.h_size, net.h_size,
                          c + <long>b0 * net.c_size, net.c_size, gates, hfull, xh, 0, 1, bar)
            inp = out
        sync(bar, nt)
        if tid == 0:
            res = inp
            if net.head_w != NULL:
                L = &net.layers[net.n_layers - 1]
                fill_rows(yc, net.head_b, rows, O)
                matmul_acc(rows, O, L.width, inp, L.width, net.head_w, O, yc, O)
                if net.head_act == FL_ACT_SOFTMAX:
                    for r in range(rows):
                        fl_softmax_row(yc + <long>r * O, O)
                else:
                    fl_activate(net.head_act, yc, <long>rows * O)
                res = yc
            if nb == B:
                memcpy(y + <long>t0 * B * O, res, <long>rows * O * sizeof(float))
            else:
                for t in range(tn):
                    memcpy(y + (<long>(t0 + t) * B + b0) * O, res + <long>t * nb * O, nb * O * sizeof(float))
        t0 += tn
    fl_restore_fpmode(mode)


cdef inline void cell_step(const Layer *L, const Dir *D, int nb, float *gates, float *cs, int ldc,
                           float *ho, int ldo, float *hfull, long u0, long u1) noexcept nogil:
    """The cell update of one step, units u0:u1 of nb rows: gates (nb, 4H) -> c, and h into ho.

    With a projection, h = (o * tanh(c)) @ W_proj, through hfull (nb, H); one
    thread has all the units then."""
    cdef int H = L.hidden, P = L.n_out, r
    if D.w_proj == NULL:
        fl_cell_rows(gates + u0, 4 * H, H, cs + u0, ldc, ho + u0, ldo, nb, u1 - u0, L.gate_act, L.cell_act)
        return
    fl_cell_rows(gates, 4 * H, H, cs, ldc, hfull, H, nb, H, L.gate_act, L.cell_act)
    for r in range(nb):
        memset(ho + <long>r * ldo, 0, P * sizeof(float))
    matmul_acc(nb, P, H, hfull, H, D.w_proj, P, ho, ldo)


cdef void run_layer(const Layer *L, int tn, int nb, const float *inp, float *out,
                    float *hrows, int ldh, float *crows, int ldc, float *gates, float *hfull,
                    float *xh, int tid, int nt, fl_spin_barrier *bar) noexcept nogil:
    """One layer over tn steps of nb rows: inp (tn*nb, n_in) -> out (tn*nb, width).

    hrows/crows: the state of the first of the nb rows, one row per stream
    (row strides ldh, ldc); each direction's h and c sit at its offsets in a row.
    xh: scratch for two packed copies of nb rows of [x | h].

    Step t's h is written straight into its output rows and the next step reads
    it from there; the state rows get the last one at the end.  A team thread
    (nt > 1) computes only the gate columns and the c, h of its slice of hidden
    units, so threads share no writes; they wait for each other only where a
    product reads every unit of h."""
    cdef int G4 = 4 * L.hidden, H = L.hidden, P = L.n_out
    cdef int cat = L.n_dirs * P
    cdef int rows = tn * nb
    cdef int K = L.n_in + P
    cdef int d, s, t, dst, r
    cdef bint packed_steps = L.dirs[0].w_panels != NULL and nb >= 3
    cdef bint stacked = tn == 1 and nb > 2
    cdef long u0 = 0, u1 = H, v0, v1, x0, x1, c0, c1
    cdef long ps = <long>(L.n_in + L.n_out) * FL_PANEL
    cdef long flip = 0
    cdef float *ap
    cdef const Dir *D
    cdef float *hs
    cdef float *cs
    cdef float *ho
    cdef const float *hprev
    cdef int ldprev
    if nt > 1:
        fl_split_range(H, tid, nt, &u0, &u1)
    for d in range(L.n_dirs):
        D = &L.dirs[d]
        hs = hrows + D.h_off
        cs = crows + D.c_off
        if nb == 1 and nt > 1:
            # One stream, big weights: the team splits the gemv's columns, then the
            # units (fastlstm_single.h).  A single step's input projection is done
            # inside; a block's is hoisted, split by columns when matmul_w would use
            # the packed kernel (whose outputs do not depend on the split), else by
            # one thread.
            if D.w_panels != NULL and rows >= 3:
                fl_split_range(G4, tid, nt, &c0, &c1)
                for r in range(rows):
                    memcpy(gates + <long>r * G4 + c0, D.bias + c0, (c1 - c0) * sizeof(float))
                if c1 > c0:
                    fl_gemm_packed(rows, c1 - c0, L.n_in, inp, L.n_in, D.w_panels + (c0 // FL_PANEL) * ps,
                                   ps, gates + c0, G4)
            elif tid == 0:
                fill_rows(gates, D.bias, rows, G4)
                if tn > 1:
                    matmul_w(rows, G4, L.n_in, inp, L.n_in, D, 0, gates, G4)
            sync(bar, nt)
            fl_lstm_single_part(tid, nt, bar, tn, D.reverse, L.go_backwards, gates, inp if tn == 1 else NULL,
                                L.n_in, L.n_in, D.w_x, H, hs, cs, hfull, out + d * P, cat, L.gate_act,
                                L.cell_act)
            continue
        hprev = hs
        ldprev = ldh
        if packed_steps:
            # Both products every step as one, [x_t | h] @ [W_x; W_h], into a gate
            # tile that stays in cache (hoisting the input projection wrote a whole
            # block of gates that each step then fetched back from L3).  A is packed
            # for the kernel; each thread packs its share of x_t's columns and the
            # columns of its own h units, which it wrote itself, so one barrier per
            # step suffices.  The packed A alternates between two buffers so a thread
            # may pack the next step while the others still read this one.
            v0 = 0 if D.w_proj != NULL else u0
            v1 = P if D.w_proj != NULL else u1
            x0 = L.n_in * tid // nt
            x1 = L.n_in * (tid + 1) // nt
            for s in range(tn):
                t = tn - 1 - s if D.reverse else s
                dst = s if L.go_backwards else t
                ho = out + <long>dst * nb * cat + d * P
                ap = xh + (flip % 2) * pad16(<long>nb * K)
                flip += 1
                fl_pack_a(nb, K, ap, x0, x1, inp + <long>t * nb * L.n_in + x0, L.n_in)
                fl_pack_a(nb, K, ap, L.n_in + v0, L.n_in + v1, hprev + v0, ldprev)
                sync(bar, nt)
                matmul_units(nb, K, ap, D, gates, H, u0, u1)
                cell_step(L, D, nb, gates, cs, ldc, ho, cat, hfull, u0, u1)
                hprev = ho
                ldprev = cat
        else:
            fill_rows(gates, D.bias, rows, G4)
            if stacked:
                # One step of a batch through BLAS: [x | h] @ [W_x; W_h] is one call
                # instead of two (W_h is stored right after W_x), so it packs once.
                for r in range(nb):
                    memcpy(xh + <long>r * K, inp + <long>r * L.n_in, L.n_in * sizeof(float))
                    memcpy(xh + <long>r * K + L.n_in, hs + <long>r * ldh, P * sizeof(float))
                matmul_w(nb, G4, K, xh, K, D, 0, gates, G4)
            else:
                # Input projection of the whole block, hoisted out of the time loop.
                matmul_w(rows, G4, L.n_in, inp, L.n_in, D, 0, gates, G4)
            for s in range(tn):
                t = tn - 1 - s if D.reverse else s
                dst = s if L.go_backwards else t
                ho = out + <long>dst * nb * cat + d * P
                if not stacked:
                    matmul_w(nb, G4, P, hprev, ldprev, D, L.n_in, gates + <long>t * nb * G4, G4)
                cell_step(L, D, nb, gates + <long>t * nb * G4, cs, ldc, ho, cat, hfull, u0, u1)
                hprev = ho
                ldprev = cat
        # A thread reads and writes only its own units of the state (packing above).
        v0 = 0 if D.w_proj != NULL else u0
        v1 = P if D.w_proj != NULL else u1
        for r in range(nb):
            memcpy(hs + <long>r * ldh + v0, hprev + <long>r * cat + v0, (v1 - v0) * sizeof(float))
    if L.n_dirs == 2 and L.merge != FL_MERGE_CONCAT:
        sync(bar, nt)
        if tid == 0:
            fl_merge_rows(out, out, rows, P, L.merge)


# ---------------------------------------------------------------------------
# Test hook: the C activations, callable from Python (model.py also applies a
# head activation through it for Keras' last step of a bidirectional layer).

def _activate(int kind, cnp.ndarray x):
    """Apply activation `kind` (fl_activation) to a float32 array in place."""
    cdef float *p = <float *>cnp.PyArray_DATA(x)
    cdef long n = cnp.PyArray_SIZE(x)
    cdef long r, O
    if kind == FL_ACT_SOFTMAX:
        O = x.shape[x.ndim - 1]
        for r in range(n // O):
            fl_softmax_row(p + r * O, O)
    else:
        fl_activate(kind, p, n)
    return x
