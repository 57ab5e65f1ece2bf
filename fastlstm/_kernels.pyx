# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False, embedsignature=True
"""Compiled kernels: the whole network forward for a block of time steps and
batch rows, and the thread/BLAS plumbing around it (streams: _streams.pyx).

Everything numeric runs without the GIL.  The Python layer (model.py,
stream.py) validates arguments and owns the arrays; this module trusts the
pointers it is given.

Parallel scheme: batch rows are independent through the whole network, so
the batch is cut into row chunks and each OpenMP thread runs every layer and
every time step of its chunks on its own workspace -- no barrier per step.
The chunking depends only on the batch and layer sizes, never on the thread
count, so results are bit-identical whatever the thread count.
"""

from cython.parallel cimport prange, threadid

from fastlstm._packing import aligned_empty, pack_panels
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from scipy.linalg.cython_blas cimport sgemm

cimport numpy as cnp
import numpy as np

cnp.import_array()

cdef extern from "fastlstm_gemm.h" nogil:
    int FL_PANEL
    int fl_packed_gemm_available()
    void fl_gemm_packed(long m, long n, long k, const float *A, long lda, const float *Wp, long ps,
                        float *C, long ldc)

cdef extern from "fastlstm_single.h" nogil:
    void fl_lstm_single(int tn, int reverse, int go_backwards, float *gates, const float *x, long ldx,
                        long n_in, const float *W, long H, float *h, float *c, float *hnext,
                        float *out, long ldo, int gate_act, int cell_act, int nthreads)

cdef extern from "fastlstm_cell.h" nogil:
    void fl_cell_rows(float *z, long ldz, float *c, long ldc, float *h, long ldh, long nrows, long H,
                      int gate_act, int cell_act)
    void fl_gemv_acc(const float *v, long k, const float *W, long ldw, long n, float *z)
    void fl_merge_rows(const float *inp, float *out, long nrows, long n, int mode)
    void fl_activate(int kind, float *x, long n)
    void fl_softmax_row(float *x, long n)
    int FL_ACT_SOFTMAX, FL_ACT_LINEAR, FL_MERGE_CONCAT

cdef extern from "fastlstm_fpmode.h" nogil:
    ctypedef unsigned int fl_fpmode_t
    fl_fpmode_t fl_flush_denormals()
    void fl_restore_fpmode(fl_fpmode_t old)

cdef extern from "fastlstm_omp.h" nogil:
    int FL_HAVE_OPENMP


# ---------------------------------------------------------------------------
# Threads: ours (OpenMP across batch chunks) and the BLAS library's.

cdef int g_num_threads = 1

# openblas_{set,get}_num_threads of every OpenBLAS in the process, found by
# _threads.py.  Inside our parallel region BLAS must run on one thread, or the
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
    """Whether the compiled kernels were built with OpenMP."""
    return bool(FL_HAVE_OPENMP)


def _set_num_threads(int n):
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


# Up to this many rows a product uses the pre-packed kernel; above it BLAS's
# packing is amortised and its sgemm is as fast.
DEF PACKED_MAX_ROWS = 128

cdef inline void matmul_w(int m, int n, int k, const float *A, int lda, const Dir *D, int k0,
                          float *C, int ldc) noexcept nogil:
    """C[m, n] += A[m, k] @ rows k0:k0+k of D's stacked [W_x; W_h] (n = 4H columns)."""
    cdef long ps = <long>(D.n_stack) * FL_PANEL
    if D.w_panels != NULL and 3 <= m <= PACKED_MAX_ROWS:
        fl_gemm_packed(m, n, k, A, lda, D.w_panels + <long>k0 * FL_PANEL, ps, C, ldc)
    else:
        matmul_acc(m, n, k, A, lda, D.w_x + <long>k0 * n, n, C, ldc)


cdef inline void fill_rows(float *dst, const float *row, int nrows, int n) noexcept nogil:
    cdef int r
    for r in range(nrows):
        memcpy(dst + <long>r * n, row, n * sizeof(float))


# ---------------------------------------------------------------------------
# The packed network.

cdef class Network:
    """Packed weights and layer descriptors; immutable, shared by streams and threads."""

    def __cinit__(self):
        self.net.layers = NULL

    def __init__(self, list layers, head):
        """layers: dicts from fastlstm._packing.pack_layer; head: (w (In, O), b (O,), act) or None."""
        cdef int n = len(layers)
        cdef int li, d
        cdef Layer *L
        cdef cnp.ndarray w, b, p
        cdef long h_off = 0, c_off = 0
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

    def time_block(self, int T, int rows):
        """Steps per time block: the whole sequence if any layer needs it, else a
        block whose gate buffer stays around 4 MB, so the hoisted input sgemm is
        large while memory does not grow with T."""
        if not self.streamable:
            return max(T, 1)
        return max(1, min(T, (1 << 20) // max(1, rows * self.net.max_gates)))

    def chunks(self, int B):
        """Number of batch-row chunks; a function of B and the layer sizes only."""
        return n_chunks(&self.net, B)

    def forward(self, cnp.ndarray x, cnp.ndarray y, cnp.ndarray h, cnp.ndarray c):
        """Run x (T, B, I) -> y (T, B, O) from the state (h (B, h_size), c (B, c_size)), updated in place.

        Arrays must be C-contiguous float32 of those shapes (the caller checks);
        x must be finite (checked here)."""
        cdef int T = x.shape[0], B = x.shape[1]
        cdef int nchunks = n_chunks(&self.net, B)
        cdef int rows = (B + nchunks - 1) // nchunks
        cdef int Tc = self.time_block(T, rows)
        cdef int nthreads = min(g_num_threads, nchunks)
        cdef long per = workspace_floats(&self.net, Tc, rows)
        cdef cnp.ndarray ws
        if T == 0 or B == 0:
            return
        if not fl_all_finite(<const float *>cnp.PyArray_DATA(x), cnp.PyArray_SIZE(x)):
            raise ValueError("x: contains NaN or infinite values")
        ws = aligned_empty(per * nthreads)
        with nogil:
            run_batch(&self.net, T, Tc, B, <const float *>cnp.PyArray_DATA(x), <float *>cnp.PyArray_DATA(y),
                      <float *>cnp.PyArray_DATA(h), <float *>cnp.PyArray_DATA(c),
                      <float *>cnp.PyArray_DATA(ws), per, nchunks, nthreads)


# A single stream's layer is split over threads from this hidden size on.  Below
# it the two barriers per step (waking sleeping threads) cost about what the split
# saves: at H=256 a step went 158 -> 136 us but a 200-step predict 11.8 -> 13.8 ms,
# while at H=1024 both ran 2.4x faster.
DEF SPLIT_MIN_HIDDEN = 512
DEF CHUNK_ROWS = 32

cdef int n_chunks(const Net *net, int B) noexcept nogil:
    # BLAS re-packs the weights on every call, so a chunk must be tall enough to
    # amortise that (a 16-row sgemm ran at 40 GFLOP/s here, 32 rows at 58).
    return max(1, B // CHUNK_ROWS)


cdef int max_chunk_rows(const Net *net, int B) noexcept nogil:
    """The most rows any chunk has, over every batch of at most B rows."""
    return min(B, 2 * CHUNK_ROWS - 1)


cdef long workspace_floats(const Net *net, int Tc, int rows) noexcept nogil:
    cdef long blk = <long>Tc * rows
    return (pad16(blk * net.n_in) + pad16(blk * net.max_gates) + 2 * pad16(blk * net.max_cat)
            + pad16(blk * net.n_out) + pad16(<long>rows * net.max_hidden) + pad16(<long>rows * net.max_stack))


cdef inline long pad16(long n) noexcept nogil:
    """n rounded up to whole 64-byte cache lines of floats, so workspace sub-buffers stay aligned."""
    return (n + 15) & ~15


cdef void run_batch(const Net *net, int T, int Tc, int B, const float *x, float *y, float *h, float *c,
                    float *ws, long per, int nchunks, int nthreads) noexcept nogil:
    """All rows of the batch, cut into chunks spread over the threads.

    BLAS runs on one thread throughout: OpenBLAS's own threading changes the
    rounding of some products with its thread count (seen at M=3, N=1040), and
    results must not depend on set_num_threads.  Our threads go to chunks, or
    for a single stream to slices of its hidden units."""
    cdef int k, b0, b1
    cdef int saved[MAX_BLAS_LIBS]
    blas_threads_push(1, saved)
    if nthreads <= 1:
        for k in range(nchunks):
            b0 = <int>((<long>k * B) // nchunks)
            b1 = <int>((<long>(k + 1) * B) // nchunks)
            run_rows(net, T, Tc, B, b0, b1 - b0, x, y, h, c, ws, g_num_threads if B == 1 else 1)
    else:
        for k in prange(nchunks, num_threads=nthreads, schedule='static'):
            b0 = <int>((<long>k * B) // nchunks)
            b1 = <int>((<long>(k + 1) * B) // nchunks)
            run_rows(net, T, Tc, B, b0, b1 - b0, x, y, h, c, ws + threadid() * per, 1)
    blas_threads_pop(1, saved)


cdef void run_rows(const Net *net, int T, int Tc, int B, int b0, int nb, const float *x, float *y,
                   float *h, float *c, float *ws, int inner) noexcept nogil:
    """Rows b0:b0+nb of x (T, B, I) through every layer and the head, Tc steps at a time.

    inner: threads a single stream (B = 1) may split its hidden units over."""
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
    cdef int t0, tn, t, l, r, rows
    cdef int I = net.n_in, O = net.n_out
    t0 = 0
    while t0 < T:
        tn = min(Tc, T - t0)
        rows = tn * nb
        if nb == B:
            inp = x + <long>t0 * B * I
        else:
            for t in range(tn):
                memcpy(xin + <long>t * nb * I, x + (<long>(t0 + t) * B + b0) * I, nb * I * sizeof(float))
            inp = xin
        for l in range(net.n_layers):
            out = buf0 if l % 2 == 0 else buf1
            run_layer(&net.layers[l], tn, nb, inp, out, h + <long>b0 * net.h_size, net.h_size,
                      c + <long>b0 * net.c_size, net.c_size, gates, hfull, xh, inner)
            inp = out
        res = inp
        if net.head_w != NULL:
            fill_rows(yc, net.head_b, rows, O)
            matmul_acc(rows, O, net.layers[net.n_layers - 1].width, inp,
                       net.layers[net.n_layers - 1].width, net.head_w, O, yc, O)
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


cdef void run_layer(const Layer *L, int tn, int nb, const float *inp, float *out,
                    float *hrows, int ldh, float *crows, int ldc, float *gates, float *hfull,
                    float *xh, int inner) noexcept nogil:
    """One layer over tn steps of nb rows: inp (tn*nb, n_in) -> out (tn*nb, width).

    hrows/crows: the state of the first of the nb rows, one row per stream
    (row strides ldh, ldc); each direction's h and c sit at its offsets in a row.
    xh: scratch for nb rows of [x | h]."""
    cdef int G4 = 4 * L.hidden, H = L.hidden, P = L.n_out
    cdef int cat = L.n_dirs * P
    cdef int rows = tn * nb
    cdef int K = L.n_in + P
    cdef int d, s, t, dst, r
    cdef bint stacked = tn == 1 and nb > 2
    cdef const Dir *D
    cdef float *hs
    cdef float *cs
    cdef float *hcell
    cdef float *g
    for d in range(L.n_dirs):
        D = &L.dirs[d]
        hs = hrows + D.h_off
        cs = crows + D.c_off
        fill_rows(gates, D.bias, rows, G4)
        if nb == 1 and inner > 1 and D.w_proj == NULL and H >= SPLIT_MIN_HIDDEN:
            # One stream, big weights: split the hidden units over the threads.  A single
            # step's input projection is done inside (a BLAS call would run on one core).
            if tn > 1:
                matmul_w(rows, G4, L.n_in, inp, L.n_in, D, 0, gates, G4)
            fl_lstm_single(tn, D.reverse, L.go_backwards, gates, inp if tn == 1 else NULL, L.n_in, L.n_in,
                           D.w_x, H, hs, cs, hfull, out + d * P, cat, L.gate_act, L.cell_act, inner)
            continue
        if stacked:
            # One step of a batch: [x | h] @ [W_x; W_h] is one BLAS call instead of
            # two (W_h is stored right after W_x), so the weights are packed once.
            for r in range(nb):
                memcpy(xh + <long>r * K, inp + <long>r * L.n_in, L.n_in * sizeof(float))
                memcpy(xh + <long>r * K + L.n_in, hs + <long>r * ldh, P * sizeof(float))
            matmul_w(nb, G4, K, xh, K, D, 0, gates, G4)
        else:
            # Input projection of the whole block, hoisted out of the time loop.
            matmul_w(rows, G4, L.n_in, inp, L.n_in, D, 0, gates, G4)
        hcell = hfull if D.w_proj != NULL else hs
        for s in range(tn):
            t = tn - 1 - s if D.reverse else s
            g = gates + <long>t * nb * G4
            if not stacked:
                matmul_w(nb, G4, P, hs, ldh, D, L.n_in, g, G4)
            fl_cell_rows(g, G4, cs, ldc, hcell, H if D.w_proj != NULL else ldh, nb, H, L.gate_act, L.cell_act)
            if D.w_proj != NULL:
                for r in range(nb):
                    memset(hs + <long>r * ldh, 0, P * sizeof(float))
                matmul_acc(nb, P, H, hfull, H, D.w_proj, P, hs, ldh)
            # go_backwards layers emit in processing order (Keras); others re-align to input time.
            dst = s if L.go_backwards else t
            for r in range(nb):
                memcpy(out + (<long>dst * nb + r) * cat + d * P, hs + <long>r * ldh, P * sizeof(float))
    if L.n_dirs == 2 and L.merge != FL_MERGE_CONCAT:
        fl_merge_rows(out, out, rows, P, L.merge)


# ---------------------------------------------------------------------------
# Test hooks: the C activations and the fp-mode guard, callable from Python.

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
