# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False, embedsignature=True
"""Compiled kernels: the whole network forward for a block of time steps and
batch rows, and the thread plumbing around it (streams: _streams.pyx).

Everything numeric runs without the GIL.  The Python layer (model.py and
_streams.pyx, with the checks of _validate.py) validates arguments and owns
the arrays; this module trusts the pointers it is given.

A network is a chain of layers (Layer structs, built once by Network from
the dicts of fastlstm._packing); run_rows takes a block of time steps of some
batch rows through every layer in turn, so one call runs the whole chain.

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
    int fl_pack_rows(long m, long r)

cdef extern from "fastlstm_isa.h" nogil:
    int fl_path_in_use()
    int fl_path_cpu()
    const char *fl_path_name(int p)
    int fl_path_runs(int p)
    int fl_cpu_feature(int i, const char **name)

cdef extern from "fastlstm_lowp.h" nogil:
    void fl_lp_convert(int prec, long m, long k, const float *A, long lda, unsigned int *qa, long ldq, float *as_)
    void fl_lp_gemm(int prec, long m, long n, long kq, const unsigned int *qa, long ldq, const float *as_,
                    const unsigned int *wq, long ps, const float *wsc, const int *wcorr, float *C, long ldc,
                    const float *bias)
    void fl_lp_done()

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
    void fl_gemv_cols(const float *v, long k, long k0, const float *W, long ldw, const float *Wp, long ps,
                      long a, long b, float *z)
    void fl_lstm_single_part(int tid, int nt, fl_spin_barrier *bar, int tn, int reverse, int go_backwards,
                             float *gates, const float *x, long ldx, long n_in, const float *W,
                             const float *Wp, long ps, long H, long G, int kind, float *h, float *c,
                             float *hnext, float *out, long ldo, int gate_act, int cell_act)

cdef extern from "fastlstm_cell.h" nogil:
    void fl_cell_rows(float *z, long ldz, long gs, float *c, long ldc, float *h, long ldh, long nrows,
                      long n, int gate_act, int cell_act)
    void fl_gru_rows(float *z, long ldz, long gs, const float *hprev, long ldp, float *h, long ldh,
                     long nrows, long n, int gate_act, int act)
    void fl_gru_reset_rows(float *z, long ldz, long gs, const float *hprev, long ldp, float *rh,
                           long nrows, long n, int gate_act)
    void fl_gru_update_rows(float *z, long ldz, long gs, const float *hprev, long ldp, float *h, long ldh,
                            long nrows, long n, int act)
    void fl_rnn_rows(float *z, long ldz, float *h, long ldh, long nrows, long n, int act)
    void fl_matmul_acc(long m, long n, long k, const float *A, long lda, const float *W, long ldw, float *C,
                       long ldc)
    void fl_merge_rows(const float *inp, float *out, long nrows, long n, int mode)
    void fl_activate_rows(int kind, float alpha, const float *pw, long npw, float *x, long nrows, long n)

cdef extern from "fastlstm_layers.h" nogil:
    void fl_layernorm_rows(const float *x, float *y, long nrows, long n, const float *gamma,
                           const float *beta, float eps)
    void fl_affine_rows(const float *x, float *y, long nrows, long n, const float *scale, const float *shift)
    void fl_pool_frames(int is_max, int count_pad, const float *ext, long C, long fr, long lr, long size,
                        long stride, long n_out, float *out, long ldo)
    double fl_count_get(const float *cnt)
    void fl_count_inc(float *cnt)
    void fl_global_pool_step(int is_max, float *state, const float *x, float *y, long C)

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
# Threads: fastlstm_pool.h's, across batch chunks.

cdef int g_num_threads = 1


def openmp_enabled():
    """Whether the compiled kernels run batches on several threads.

    The name is historical: the threads are fastlstm's own pool (which survives
    fork), not OpenMP's.  False only on platforms without POSIX threads."""
    return bool(FL_HAVE_THREADS)


def _max_threads():
    """The most threads one kernel call can use (the pool's team size limit)."""
    return FL_POOL_MAX_THREADS


def _isa_levels():
    """(path the kernels use, best path this CPU has, {CPU feature: present}, {path: whether
    this CPU runs it} for every path, lowest first): fl_paths of fastlstm_isa.h
    (fastlstm/_isa.py checks FASTLSTM_ISA against them)."""
    cdef const char *name = NULL
    cdef int i = 0, has
    features = {}
    while True:
        has = fl_cpu_feature(i, &name)
        if has < 0:
            break
        features[name.decode()] = bool(has)
        i += 1
    paths = []
    while fl_path_name(len(paths)) != NULL:
        paths.append(fl_path_name(len(paths)).decode())
    return (paths[fl_path_in_use()], paths[fl_path_cpu()], features,
            {path: bool(fl_path_runs(p)) for p, path in enumerate(paths)})


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
    """C[m, n] += A[m, k] @ B[k, n], all row-major.

    Not BLAS: its blocking over k rounds differently with the row count, and
    every product must be the chain over k in order that the packed GEMM also
    computes, so that a row's result does not depend on its batch."""
    fl_matmul_acc(m, n, k, A, lda, B, ldb, C, ldc)


cdef inline void matmul_w(int m, int n, int k, const float *A, int lda, const Dir *D, int k0,
                          float *C, int ldc) noexcept nogil:
    """C[m, n] += A[m, k] @ rows k0:k0+k of D's stacked [W_x; W_h] (n: all its columns)."""
    matmul_cols(m, 0, n, n, k, A, lda, D, k0, C, ldc)


cdef inline void matmul_cols(int m, int c0, int c1, int n, int k, const float *A, int lda, const Dir *D, int k0,
                             float *C, int ldc) noexcept nogil:
    """C[m, c0:c1] += A[m, k] @ rows k0:k0+k, columns c0:c1 of D's weights (n columns in all)."""
    cdef int r
    if m < 3:
        # Row by row, from the panels where they start at c0 (fl_gemv_cols).
        for r in range(m):
            fl_gemv_cols(A + <long>r * lda, k, k0, D.w_x, n, D.w_panels, <long>D.n_stack * FL_PANEL, c0, c1,
                         C + <long>r * ldc)
    elif D.w_panels != NULL and c0 % FL_PANEL == 0:
        fl_gemm_packed(m, c1 - c0, k, A, lda,
                       D.w_panels + <long>k0 * FL_PANEL + (c0 // FL_PANEL) * <long>D.n_stack * FL_PANEL,
                       <long>(D.n_stack) * FL_PANEL, C + c0, ldc)
    else:
        matmul_acc(m, c1 - c0, k, A, lda, D.w_x + <long>k0 * n + c0, n, C + c0, ldc)


cdef inline void gate_products(const Layer *L, const Dir *D, int m, const float *A, int lda, bint recurrent,
                               float *gates) noexcept nogil:
    """gates[m, G] += A @ the input rows (recurrent: the h rows) of D's [W_x; W_h].

    A reset-after GRU's input rows are zero in its n_h block and its h rows in its
    n_x block ([r | z | n_x | n_h], _packing), so those columns are skipped: a
    quarter of the weights a single stream would otherwise stream from memory."""
    cdef int G = L.gates, H = L.hidden
    if L.kind != FL_LAYER_GRU:
        matmul_w(m, G, L.n_out if recurrent else L.n_in, A, lda, D, L.n_in if recurrent else 0, gates, G)
    elif not recurrent:
        matmul_cols(m, 0, 3 * H, G, L.n_in, A, lda, D, 0, gates, G)
    else:
        matmul_cols(m, 0, 2 * H, G, H, A, lda, D, L.n_in, gates, G)
        matmul_cols(m, 3 * H, 4 * H, G, H, A, lda, D, L.n_in, gates, G)


cdef inline void matmul_units(int m, int k, const float *ap, const Dir *D, float *gates, int H, int G,
                              long u0, long u1, int kx) noexcept nogil:
    """gates[m, G] = bias + A @ [W_x; W_h] in the G/H gate blocks' columns of units u0:u1 only (A
    packed by fl_pack_a, k = n_in + n_out wide).

    kx > 0 (H a multiple of FL_PANEL): a reset-after GRU with kx input rows, whose n_x block reads only the
    x rows and whose n_h block only the h rows (the others are zero, _packing):
    those two blocks go block of packed rows by block of packed rows, each over
    its part of k, which a packed block of R rows holds contiguously.

    Every output is the same FMA chain whatever columns a call covers, so a
    thread's slice gives bit for bit what the whole product does."""
    cdef long ps = <long>(D.n_stack) * FL_PANEL
    cdef int q, k0, k1, R
    cdef long r0
    if u0 == 0 and u1 == H and kx == 0:
        fl_gemm_apacked(m, G, k, ap, D.w_panels, ps, D.bias, gates, G)
        return
    for q in range(G // H):
        if kx == 0 or q < 2:
            fl_gemm_apacked(m, u1 - u0, k, ap, D.w_panels + ((q * H + u0) // FL_PANEL) * ps, ps,
                            D.bias + q * H + u0, gates + q * H + u0, G)
            continue
        k0 = 0 if q == 2 else kx
        k1 = kx if q == 2 else k
        r0 = 0
        while r0 < m:
            R = fl_pack_rows(m, r0)
            fl_gemm_apacked(R, u1 - u0, k1 - k0, ap + r0 * k + <long>k0 * R,
                            D.w_panels + ((q * H + u0) // FL_PANEL) * ps + <long>k0 * FL_PANEL, ps,
                            D.bias + q * H + u0, gates + r0 * G + q * H + u0, G)
            r0 += R


cdef inline void fill_rows(float *dst, const float *row, int nrows, int n) noexcept nogil:
    cdef int r
    for r in range(nrows):
        memcpy(dst + <long>r * n, row, n * sizeof(float))


# ---------------------------------------------------------------------------
# The packed network.

cdef class Network:
    """Packed weights and layer descriptors; immutable, shared by streams and threads.

    Network(layers, state_layout, signature): layers are dicts from fastlstm._packing.pack_chain,
    one per Layer struct (keys named as its fields; "dirs": per direction (w, bias, w_proj,
    h_off, c_off); "product": (w, bias)); state_layout: [(label, entry, offset, width)] of the
    state row (for fastlstm.state).  Everything is set up in __cinit__, so an object exists
    only fully built (``Network.__new__(Network)`` raises) and cannot be re-initialised."""

    def __cinit__(self, list layers=None, list state_layout=None, signature=None):
        cdef int n
        cdef int li
        cdef Layer *L
        if not layers or state_layout is None:
            raise TypeError("Network: needs the packed layers and state layout; fastlstm.Model builds it")
        n = len(layers)
        self._keep = []
        self.state_layout = state_layout
        self.signature = signature
        self.net.layers = <Layer *>malloc(max(n, 1) * sizeof(Layer))
        if self.net.layers == NULL:
            raise MemoryError()
        memset(self.net.layers, 0, max(n, 1) * sizeof(Layer))
        self.net.n_layers = n
        self.net.max_gates = self.net.max_cat = self.net.max_hidden = self.net.max_stack = 0
        self.net.state_size = sum(width for _, _, _, width in state_layout)
        self.streamable = True
        for li in range(n):
            spec = layers[li]
            L = &self.net.layers[li]
            for key, value in spec.items():
                if key in _WIDTH_FIELDS and value > MAX_WIDTH:
                    raise ValueError(f"layer {li}: a width of {value} is more than the {MAX_WIDTH} fastlstm runs")
                set_int_field(L, key, value)
            L.alpha = spec.get("alpha", 0.0)
            L.eps = spec.get("eps", 0.0)
            L.act = spec.get("act", FL_ACT_LINEAR)
            L.act_w = self._pointer(spec.get("act_w"))
            L.n_act_w = 0 if spec.get("act_w") is None else spec["act_w"].shape[0]
            L.scale = self._pointer(spec.get("scale"))
            L.shift = self._pointer(spec.get("shift"))
            if "dirs" in spec:
                L.n_dirs = len(spec["dirs"])
                for d, (w, b, p, h_off, c_off, lowp) in enumerate(spec["dirs"]):
                    if lowp is None:
                        self._set_product(&L.dirs[d], w, b, 1)
                    else:
                        self._set_lowp(&L.dirs[d], lowp, b)
                    L.dirs[d].w_proj = self._pointer(p)
                    L.dirs[d].reverse = d == 1 or L.go_backwards
                    L.dirs[d].h_off = h_off
                    L.dirs[d].c_off = c_off
                self.net.max_gates = max(self.net.max_gates, L.gates)
                self.net.max_stack = max(self.net.max_stack, L.n_in + L.n_out)
                self.net.max_hidden = max(self.net.max_hidden, L.hidden)
                self.net.max_cat = max(self.net.max_cat, L.n_dirs * L.n_out)
            elif "product" in spec:
                self._set_product(&L.dirs[0], spec["product"][0], spec["product"][1], FL_PANEL)
                L.n_dirs = 1
            elif "table" in spec:
                L.dirs[0].w_x = self._pointer(spec["table"])   # rows are looked up, never multiplied
                L.dirs[0].n_stack = spec["table"].shape[0]
            if not spec["streams"]:
                self.streamable = False
            self.net.max_cat = max(self.net.max_cat, L.n_in, L.width)
        self.net.n_in = self.net.layers[0].n_in
        self.net.n_out = self.net.layers[n - 1].width
        self.net.token_input = self.net.layers[0].kind == FL_LAYER_EMBEDDING
        self.net.vocab = self.net.layers[0].dirs[0].n_stack if self.net.token_input else 0
        # A chain that cannot stream runs each sequence as one block, where layers may change
        # the number of steps; a streamable one keeps one output per input step.
        self.net.whole = not self.streamable

    cdef const float *_pointer(self, arr) except? NULL:
        if arr is None:
            return NULL
        self._keep.append(arr)
        return <const float *>cnp.PyArray_DATA(arr)

    cdef int _set_product(self, Dir *D, w, b, int min_columns) except -1:
        """D's weights w (K, N) and bias b (N,), and w in panels when the packed GEMM exists
        and N >= min_columns (a narrow Dense would compute mostly padding: fl_matmul_acc does it)."""
        D.w_x = self._pointer(w)
        D.bias = self._pointer(b)
        D.n_stack = w.shape[0]
        D.w_panels = NULL
        if fl_packed_gemm_available() and w.shape[1] >= min_columns:
            from fastlstm._packing import pack_panels  # (_packing reads this module's enums)
            D.w_panels = self._pointer(pack_panels(w))
        return 0

    cdef int _set_lowp(self, Dir *D, lowp, b) except -1:
        """D's reduced-precision weights (fastlstm._quantize.LowpWeights) and bias b.  The fp32
        weights are not kept: no product of this direction reads them."""
        D.prec = lowp.code
        D.bias = self._pointer(b)
        D.lp_words = <const unsigned int *>self._pointer(lowp.words)
        D.kqx = lowp.kqx
        D.kqh = lowp.kqh
        D.lp_scale_x = self._pointer(lowp.scale_x)
        D.lp_scale_h = self._pointer(lowp.scale_h)
        D.lp_corr_x = <const int *>self._pointer(lowp.corr_x)
        D.lp_corr_h = <const int *>self._pointer(lowp.corr_h)
        return 0

    def __dealloc__(self):
        free(self.net.layers)

    @property
    def state_size(self):
        """State floats per batch row."""
        return self.net.state_size

    @property
    def token_input(self):
        """Whether the input is int64 token ids (the first layer is an Embedding)."""
        return bool(self.net.token_input)

    @property
    def vocab_size(self):
        return self.net.vocab

    @property
    def n_in(self):
        return self.net.n_in

    @property
    def n_out(self):
        return self.net.n_out

    def time_block(self, long T, int rows):
        """Steps per time block: the whole sequence if any layer needs it, else a
        block whose gate buffer stays around 4 MB, so the hoisted input product is
        large while memory does not grow with T."""
        if not self.streamable:
            return max(T, 1)
        return max(1, min(T, (1 << 20) // max(1, <long>rows * max(self.net.max_gates, self.net.max_cat))))

    def out_steps(self, long T):
        """Output steps of a T-step sequence run in one call (T itself for a streamable chain)."""
        if T > INT_MAX:
            raise ValueError(f"x: {T} steps is more than fastlstm runs in one call")
        return chain_steps(&self.net, <int>T, self.net.n_layers)

    def chunks(self, int B):
        """Number of batch-row chunks; a function of B and the layer sizes only."""
        return n_chunks(&self.net, B)

    def plan(self, int B):
        """How a batch of B rows runs at the current thread count: "team" (all threads on
        each chunk, splitting hidden units) or "chunks" (a thread per chunk)."""
        return "team" if use_team(&self.net, B, n_chunks(&self.net, B)) else "chunks"

    def forward(self, cnp.ndarray x, cnp.ndarray y, cnp.ndarray s):
        """Run x (T, B, I) -> y (out_steps(T), B, O) from the state s (B, state_size), updated in place.

        Arrays must be C-contiguous, native byte order, of those shapes, float32 (x: int64
        (T, B) token ids for an Embedding input) (the caller checks); x must be finite, or
        ids in range (checked here).  ValueError when a step overflowed (a state or output
        that is not finite): s is then garbage, so callers pass a copy."""
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
        if T > INT_MAX or B > INT_MAX or <long>Tc * rows > INT_MAX:
            raise ValueError(f"x: {T} steps of {B} rows is more than fastlstm runs in one call; "
                             "pass fewer steps or rows per call")
        if not input_ok(&self.net, cnp.PyArray_DATA(x), cnp.PyArray_SIZE(x)):
            raise ValueError(input_error(&self.net))
        from fastlstm._packing import aligned_empty
        ws = aligned_empty(per * nthreads)
        with nogil:
            run_batch(&self.net, <int>T, Tc, <int>B, cnp.PyArray_DATA(x), <float *>cnp.PyArray_DATA(y),
                      <float *>cnp.PyArray_DATA(s), <float *>cnp.PyArray_DATA(ws), per, nchunks, nthreads)
        if not (fl_all_finite(<const float *>cnp.PyArray_DATA(s), cnp.PyArray_SIZE(s))
                and fl_all_finite(<const float *>cnp.PyArray_DATA(y), cnp.PyArray_SIZE(y))):
            raise ValueError(OVERFLOW_MESSAGE)


# Layer dict entries checked against MAX_WIDTH (32-bit fields, used in 32-bit offsets).
_WIDTH_FIELDS = frozenset(("n_in", "width", "hidden", "n_out", "gates", "steps"))


cdef int set_int_field(Layer *L, str key, value) except -1:
    """Set the int field ``key`` of L from a layer dict (fastlstm._packing); 0 when ``key`` is
    not an int field (weights, floats and flags are read by name in Network.__cinit__)."""
    if key == "kind":
        L.kind = value
    elif key == "n_in":
        L.n_in = value
    elif key == "width":
        L.width = value
    elif key == "hidden":
        L.hidden = value
    elif key == "n_out":
        L.n_out = value
    elif key == "gates":
        L.gates = value
    elif key == "gate_act":
        L.gate_act = value
    elif key == "cell_act":
        L.cell_act = value
    elif key == "merge":
        L.merge = value
    elif key == "go_backwards":
        L.go_backwards = value
    elif key == "ksize":
        L.ksize = value
    elif key == "stride":
        L.stride = value
    elif key == "dilation":
        L.dilation = value
    elif key == "groups":
        L.groups = value
    elif key == "pad_l":
        L.pad_l = value
    elif key == "pad_r":
        L.pad_r = value
    elif key == "same_pad":
        L.same_pad = value
    elif key == "count_pad":
        L.count_pad = value
    elif key == "reach":
        L.reach = value
    elif key == "repeat":
        L.repeat = value
    elif key == "steps":
        L.steps = value
    elif key == "last_half":
        L.last_half = value
    elif key == "mask":
        L.mask = value
    elif key == "s_off":
        L.s_off = value
    elif key == "s_size":
        L.s_size = value
    else:
        return 0
    return 1


cdef str input_error(const Net *net):
    if net.token_input:
        return f"x: token ids must be in [0, {net.vocab})"
    return "x: contains NaN or infinite values"


cdef int input_ok(const Net *net, const void *x, long n) noexcept nogil:
    """Whether an input may run: finite floats, or token ids inside the Embedding's table."""
    cdef const long long *ids = <const long long *>x
    cdef long j
    cdef int bad = 0
    if not net.token_input:
        return fl_all_finite(<const float *>x, n)
    for j in range(n):
        bad |= (ids[j] < 0) | (ids[j] >= net.vocab)
    return not bad


cdef inline bint is_recurrent(const Layer *L) noexcept nogil:
    return L.kind <= FL_LAYER_RNN


cdef inline void window_pads(const Layer *L, int T, int *left, int *right) noexcept nogil:
    """A conv's or pool's padding for a T-step input (Keras 'same' at stride > 1 depends on T)."""
    cdef int out, total
    if L.same_pad:
        out = (T + L.stride - 1) // L.stride
        total = max((out - 1) * L.stride + L.reach + 1 - T, 0)
        left[0] = total // 2
        right[0] = total - total // 2
    else:
        left[0] = L.pad_l
        right[0] = L.pad_r


cdef int layer_steps(const Net *net, const Layer *L, int T) noexcept nogil:
    """Steps a layer outputs for T input steps.  A streamable chain keeps every step
    (its last-step and global-pool layers then emit, each step, the value for the
    sequence so far); a whole-sequence chain applies each layer's own shape."""
    cdef int left, right
    if not net.whole:
        return T
    if L.kind == FL_LAYER_CONV or L.kind == FL_LAYER_MAXPOOL or L.kind == FL_LAYER_AVGPOOL:
        if L.s_size:                     # streaming form: causal history, one output per input
            return T
        window_pads(L, T, &left, &right)
        return max(0, (T + left + right - L.reach - 1) // L.stride + 1)
    if (L.kind == FL_LAYER_LAST_STEP or L.kind == FL_LAYER_GLOBAL_MAX or L.kind == FL_LAYER_GLOBAL_AVG
            or L.kind == FL_LAYER_FLATTEN):
        return min(T, 1)
    if L.kind == FL_LAYER_REPEAT:
        return L.repeat * T
    return T


cdef int chain_steps(const Net *net, int T, int upto) noexcept nogil:
    cdef int l
    for l in range(upto):
        T = layer_steps(net, &net.layers[l], T)
    return T


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
# The same for a layer in bf16 or int8, whose products run 3-5x faster and whose team pays a
# second barrier per step: at 32 rows of H=256 (17 Mflop) two threads were slower than one
# (int8 predict 10.8 -> 14.1 ms), at 64 rows of H=1024 (540 Mflop) faster (45 -> 33 ms).
DEF TEAM_MIN_FLOPS_LOWP = 64000000


cdef int chunk_rows(const Net *net) noexcept nogil:
    return CHUNK_ROWS_BIG if <long>net.max_stack * net.max_gates >= BIG_WEIGHTS else CHUNK_ROWS


cdef int n_chunks(const Net *net, int B) noexcept nogil:
    return max(1, B // chunk_rows(net))


cdef int max_chunk_rows(const Net *net, int B) noexcept nogil:
    """The most rows any chunk has, over every batch of at most B rows."""
    return min(B, 2 * chunk_rows(net) - 1)


cdef long workspace_floats(const Net *net, int Tc, int rows) noexcept nogil:
    return ws_layout(net, Tc, rows, NULL, NULL)


# Workspace parts of one chunk, in order.
DEF WS_XIN = 0       # the chunk's rows of x, gathered (blocks of Tc steps)
DEF WS_GATES = 1     # a recurrent layer's gate pre-activations
DEF WS_BUF0 = 2      # layer outputs, alternating between two buffers
DEF WS_BUF1 = 3
DEF WS_HFULL = 4     # a row block of h before the projection / r * h of a reset-before GRU
DEF WS_XH = 5        # two packed copies of [x | h]
DEF WS_EXT = 6       # one row's padded frames and windows of a Conv1D or pool
DEF WS_LOWP = 7      # a reduced-precision product's converted rows and their scales
DEF WS_PARTS = 8


cdef long ws_layout(const Net *net, int Tc, int nb, float *ws, float **parts) noexcept nogil:
    """Floats of workspace for chunks of nb rows and blocks of Tc steps; with ws given,
    also the start of each part (WS_*) in parts.  Layers that change the number of
    steps (a whole-sequence chain) are followed through the chain."""
    cdef long sizes[WS_PARTS]
    cdef long total = 0, act = <long>Tc * net.n_in, gates = 0, ext = 0, lp_words = 0, lp_rows = 0
    cdef int l, T = Tc, T_out, left, right
    cdef const Layer *L
    for l in range(net.n_layers):
        L = &net.layers[l]
        T_out = layer_steps(net, L, T)
        act = max(act, max(<long>T * L.n_in, <long>T_out * max(L.width, L.n_dirs * L.n_out)))
        if is_recurrent(L):
            gates = max(gates, <long>T * L.gates)
            if L.mask:
                ext = max(ext, <long>nb * L.hidden)    # the c of a step's masked rows (cell_step)
            if L.dirs[0].prec != FL_PREC_FP32:
                # run_layer_lowp's converted rows, each part with 16 rows to spare (fl_lp_gemm):
                # x of a block (hoisted) or of a step, h of a step; and their scales.
                lp_words = max(lp_words, pad16((<long>(T * nb if nb < 3 else nb) + 16) * L.dirs[0].kqx)
                               + pad16((<long>nb + 16) * L.dirs[0].kqh))
                lp_rows = max(lp_rows, pad16(<long>T * nb) + pad16(nb))
        elif L.kind == FL_LAYER_CONV or L.kind == FL_LAYER_MAXPOOL or L.kind == FL_LAYER_AVGPOOL:
            window_pads(L, T, &left, &right)
            ext = max(ext, pad16((<long>(L.reach if L.s_size else left) + T + right) * L.n_in)
                      + (<long>T_out * L.ksize * L.n_in if L.kind == FL_LAYER_CONV else 0))
        elif L.kind == FL_LAYER_LAST_STEP:
            ext = max(ext, <long>nb * 2 * L.last_half)
        T = T_out
    sizes[WS_XIN] = 0 if net.token_input else pad16(<long>Tc * nb * net.n_in)
    sizes[WS_GATES] = pad16(gates * nb)
    sizes[WS_BUF0] = sizes[WS_BUF1] = pad16(act * nb)
    sizes[WS_HFULL] = pad16(<long>nb * net.max_hidden)
    sizes[WS_XH] = 2 * pad16(<long>nb * net.max_stack)
    sizes[WS_EXT] = pad16(ext)
    sizes[WS_LOWP] = pad16(lp_words) + pad16(lp_rows)
    for l in range(WS_PARTS):
        if ws != NULL:
            parts[l] = ws + total
        total += sizes[l]
    return total


cdef inline long pad16(long n) noexcept nogil:
    """n rounded up to whole 64-byte cache lines of floats, so workspace sub-buffers stay aligned."""
    return (n + 15) & ~15


cdef bint layer_splits(const Layer *L, int nb) noexcept nogil:
    """Whether a team can split this layer's hidden units for chunks of nb rows.

    One row: a hidden size worth two barriers per step (fastlstm_single.h).
    3+ rows: the packed kernel, and gate blocks that start on a 16-column panel.
    Projection layers need every unit's h before their product, so one thread
    runs them, as it does reset-before GRUs (the same, for r * h), 2-row chunks
    (too little work to share) and the layers that are not recurrent.  Reduced
    precision splits its units on panels (run_layer_lowp)."""
    if not is_recurrent(L) or L.dirs[0].w_proj != NULL:
        return False
    if L.dirs[0].prec != FL_PREC_FP32:
        # Units split on panels (run_layer_lowp); one row's product splits when it is worth it.
        return L.hidden % FL_PANEL == 0 and (nb >= 3 or L.hidden >= SPLIT_MIN_HIDDEN)
    if nb == 1:
        return L.hidden >= SPLIT_MIN_HIDDEN
    return nb >= 3 and L.dirs[0].w_panels != NULL and L.hidden % FL_PANEL == 0


cdef bint team_pays(const Net *net, int rows) noexcept nogil:
    """Whether chunks of this many rows are worth a team of threads each."""
    cdef int l
    cdef const Layer *L
    for l in range(net.n_layers):
        L = &net.layers[l]
        if layer_splits(L, rows) and (rows == 1 or 2.0 * rows * L.n_out * L.gates >= (
                TEAM_MIN_FLOPS if L.dirs[0].prec == FL_PREC_FP32 else TEAM_MIN_FLOPS_LOWP)):
            return True
    return False


cdef bint use_team(const Net *net, int B, int nchunks) noexcept nogil:
    """Whether the threads work as one team per chunk (too few chunks to go round)."""
    return FL_HAVE_THREADS and g_num_threads > nchunks and team_pays(net, B // nchunks)


cdef struct BatchJob:
    # run_batch's arguments, for the pool's threads
    const Net *net
    int T, Tc, B, nchunks
    const void *x
    float *y
    float *s
    float *ws
    long per
    fl_spin_barrier *bar


cdef void run_batch(const Net *net, int T, int Tc, int B, const void *x, float *y, float *s,
                    float *ws, long per, int nchunks, int nthreads) noexcept nogil:
    """All rows of the batch, cut into chunks spread over the threads.

    x: (T, B, n_in) floats, or (T, B) int64 token ids; y: (out steps, B, n_out);
    s: (B, state_size), every layer's state of each stream, updated in place.
    nthreads: threads that may each run chunks (one workspace of `per` floats each).
    With fewer chunks than set_num_threads threads, the threads instead work
    as one team on each chunk in turn, each owning a slice of the hidden units.
    Either way every number is computed by the same arithmetic, so results do
    not depend on the thread count."""
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
    job.s = s
    job.ws = ws
    job.per = per
    job.bar = &bar
    if use_team(net, B, nchunks):
        fl_pool_run(team_threads, run_team, &job)
    else:
        fl_pool_run(max(1, nthreads), run_chunks, &job)


cdef void run_chunks(int tid, int nt, void *arg) noexcept nogil:
    """One thread of a chunk split: a contiguous share of the chunks, alone, on its own workspace."""
    cdef const BatchJob *J = <const BatchJob *>arg
    cdef int k, b0, b1
    for k in range(<int>(<long>J.nchunks * tid // nt), <int>(<long>J.nchunks * (tid + 1) // nt)):
        b0 = <int>((<long>k * J.B) // J.nchunks)
        b1 = <int>((<long>(k + 1) * J.B) // J.nchunks)
        run_rows(J.net, J.T, J.Tc, J.B, b0, b1 - b0, J.x, J.y, J.s, J.ws + tid * J.per, 0, 1, J.bar)


cdef void run_team(int tid, int nt, void *arg) noexcept nogil:
    """One thread of a team: every chunk in turn, on the shared workspace."""
    cdef const BatchJob *J = <const BatchJob *>arg
    cdef int k, b0, b1
    for k in range(J.nchunks):
        b0 = <int>((<long>k * J.B) // J.nchunks)
        b1 = <int>((<long>(k + 1) * J.B) // J.nchunks)
        run_rows(J.net, J.T, J.Tc, J.B, b0, b1 - b0, J.x, J.y, J.s, J.ws, tid, nt, J.bar)


cdef inline void sync(fl_spin_barrier *bar, int nt) noexcept nogil:
    fl_spin_barrier_wait(bar, nt)


cdef void run_rows(const Net *net, int T, int Tc, int B, int b0, int nb, const void *x, float *y,
                   float *s, float *ws, int tid, int nt, fl_spin_barrier *bar) noexcept nogil:
    """Rows b0:b0+nb of x through every layer of the chain, Tc steps at a time.

    tid, nt, bar: this thread's place in the team working on these rows (nt = 1: alone).
    Thread 0 of a team does the gathering, the layers that are not split, and the
    scattering; every thread follows the step counts."""
    cdef fl_fpmode_t mode = fl_flush_denormals()
    cdef float *parts[WS_PARTS]
    ws_layout(net, Tc, nb, ws, parts)
    cdef const float *xf = <const float *>x
    cdef const long long *ids = <const long long *>x
    cdef long ss = net.state_size
    cdef float *srow = s + <long>b0 * ss
    cdef const float *inp
    cdef float *out
    cdef const Layer *L
    cdef int t0 = 0, ty = 0, tn, t, l, steps
    cdef int I = net.n_in, O = net.n_out
    while t0 < T:
        tn = min(Tc, T - t0)
        steps = tn
        inp = NULL
        if net.token_input:
            pass                        # the Embedding reads the ids itself
        elif nb == B:
            inp = xf + <long>t0 * B * I
        else:
            if tid == 0:
                for t in range(tn):
                    memcpy(parts[WS_XIN] + <long>t * nb * I, xf + (<long>(t0 + t) * B + b0) * I,
                           nb * I * sizeof(float))
            inp = parts[WS_XIN]
        for l in range(net.n_layers):
            L = &net.layers[l]
            out = parts[WS_BUF0] if l % 2 == 0 else parts[WS_BUF1]
            # Every layer reads all of the previous one's output (or the gathered x).
            sync(bar, nt)
            # A masked layer (Embedding mask_zero) runs on one thread: its rows copy state at masked steps.
            if is_recurrent(L) and (nt == 1 or (layer_splits(L, nb) and not L.mask)):
                run_layer(L, steps, nb, inp, out, srow, ss, srow, ss, parts[WS_GATES], parts[WS_HFULL],
                          parts[WS_XH], parts[WS_LOWP], mask_ids(L, ids, t0, B, b0), B, parts[WS_EXT], tid, nt, bar)
            elif tid == 0 and is_recurrent(L):
                run_layer(L, steps, nb, inp, out, srow, ss, srow, ss, parts[WS_GATES], parts[WS_HFULL],
                          parts[WS_XH], parts[WS_LOWP], mask_ids(L, ids, t0, B, b0), B, parts[WS_EXT], 0, 1, bar)
            elif tid == 0:
                run_other(net, L, steps, nb, inp, out, ids + <long>t0 * B + b0, B, srow, ss, parts[WS_EXT])
            steps = layer_steps(net, L, steps)
            inp = out
        sync(bar, nt)
        if tid == 0:
            if nb == B:
                memcpy(y + <long>ty * B * O, inp, <long>steps * nb * O * sizeof(float))
            else:
                for t in range(steps):
                    memcpy(y + (<long>(ty + t) * B + b0) * O, inp + <long>t * nb * O, nb * O * sizeof(float))
        ty += steps
        t0 += tn
    fl_lp_done()
    fl_restore_fpmode(mode)


cdef inline const long long *mask_ids(const Layer *L, const long long *ids, int t0, int B, int b0) noexcept nogil:
    """A masked layer's token ids of a block's first step (step t of row r at [t * B + r]), else NULL."""
    return ids + <long>t0 * B + b0 if L.mask else NULL


cdef void run_other(const Net *net, const Layer *L, int T, int nb, const float *inp, float *out,
                    const long long *ids, long ldi, float *srow, long ss, float *ext) noexcept nogil:
    """A layer that is not recurrent over T steps of nb rows: inp (T*nb, n_in) -> out.

    ids: the Embedding's token ids, row r of step t at ids[t * ldi + r];
    srow: the state row of the first of the nb streams (stride ss); ext: scratch."""
    cdef long rows = <long>T * nb, W = L.width
    cdef const Dir *D = &L.dirs[0]
    cdef int t, r, k
    if L.kind == FL_LAYER_DENSE:
        fill_rows(out, D.bias, rows, W)
        matmul_w(rows, W, L.n_in, inp, L.n_in, D, 0, out, W)
        fl_activate_rows(L.act, L.alpha, L.act_w, L.n_act_w, out, rows, W)
    elif L.kind == FL_LAYER_ACTIVATION:
        memcpy(out, inp, rows * W * sizeof(float))
        fl_activate_rows(L.act, L.alpha, L.act_w, L.n_act_w, out, rows, W)
    elif L.kind == FL_LAYER_AFFINE:
        fl_affine_rows(inp, out, rows, W, L.scale, L.shift)
    elif L.kind == FL_LAYER_LAYERNORM:
        fl_layernorm_rows(inp, out, rows, W, L.scale, L.shift, L.eps)
    elif L.kind == FL_LAYER_EMBEDDING:
        for t in range(T):
            for r in range(nb):
                memcpy(out + (<long>t * nb + r) * W, D.w_x + ids[t * ldi + r] * W, W * sizeof(float))
    elif L.kind == FL_LAYER_CONV:
        conv_rows(net, L, T, nb, inp, out, srow, ss, ext)
    elif L.kind == FL_LAYER_MAXPOOL or L.kind == FL_LAYER_AVGPOOL:
        pool_rows(net, L, T, nb, inp, out, srow, ss, ext)
    elif L.kind == FL_LAYER_GLOBAL_MAX or L.kind == FL_LAYER_GLOBAL_AVG:
        # Running pools; a whole-sequence chain keeps only the last step's value.
        for t in range(T):
            for r in range(nb):
                fl_global_pool_step(L.kind == FL_LAYER_GLOBAL_MAX, srow + r * ss + L.s_off,
                                    inp + (<long>t * nb + r) * W, out + (<long>(0 if net.whole else t) * nb + r) * W, W)
    elif L.kind == FL_LAYER_LAST_STEP:
        if not net.whole:
            memcpy(out, inp, rows * W * sizeof(float))     # streaming: each step is the last so far
        elif L.last_half:
            # Keras' last step of a bidirectional layer: forward half at T-1, backward half at 0.
            for r in range(nb):
                memcpy(ext + <long>r * 2 * L.last_half, inp + (<long>(T - 1) * nb + r) * 2 * L.last_half,
                       L.last_half * sizeof(float))
                memcpy(ext + <long>r * 2 * L.last_half + L.last_half, inp + <long>r * 2 * L.last_half + L.last_half,
                       L.last_half * sizeof(float))
            if L.merge == FL_MERGE_CONCAT:
                memcpy(out, ext, <long>nb * W * sizeof(float))
            else:
                fl_merge_rows(ext, out, nb, L.last_half, L.merge)
        elif T > 0:
            memcpy(out, inp + <long>(T - 1) * nb * W, <long>nb * W * sizeof(float))
    elif L.kind == FL_LAYER_FLATTEN and T > 0:
        # Row r's steps side by side (Keras Flatten of (T, F)); Model.predict has checked that T is
        # L.steps (fewer would leave zeros, more are not read).
        k = L.n_in
        for r in range(nb):
            memset(out + <long>r * W, 0, W * sizeof(float))
            for t in range(min(T, L.steps)):
                memcpy(out + <long>r * W + <long>t * k, inp + (<long>t * nb + r) * k, k * sizeof(float))
    elif L.kind == FL_LAYER_REPEAT:
        for k in range(L.repeat):
            memcpy(out + k * rows * W, inp, rows * W * sizeof(float))


cdef void conv_rows(const Net *net, const Layer *L, int T, int nb, const float *inp, float *out,
                    float *srow, long ss, float *ext) noexcept nogil:
    """Conv1D over T steps of nb rows, one row at a time: the row's frames go into ext with
    their padding before (zeros, or the streaming form's history of past inputs) and after,
    then out = bias + windows @ W.  Without groups the windows are laid out whole (im2col)
    so one product covers every tap; with groups each (group, tap) is a product of its own.
    The history is a plain buffer of the last `reach` inputs, oldest first, shifted once
    per call (a ring would save that copy but scatter each window in two)."""
    cdef int C = L.n_in, O = L.width, K = L.ksize, G = L.groups
    cdef int Cg = C // G, Og = O // G
    cdef int left, right, T_out = layer_steps(net, L, T), E, r, t, j, g
    cdef long ldo = <long>nb * O
    cdef const Dir *D = &L.dirs[0]
    cdef float *cols
    cdef float *hist
    if L.s_size:
        left, right = L.reach, 0
    else:
        window_pads(L, T, &left, &right)
    E = left + T + right
    cols = ext + pad16(<long>E * C)
    fill_rows(out, D.bias, <long>T_out * nb, O)
    for r in range(nb):
        hist = srow + r * ss + L.s_off
        if L.s_size:
            memcpy(ext, hist, <long>left * C * sizeof(float))
        else:
            memset(ext, 0, <long>left * C * sizeof(float))
        for t in range(T):
            memcpy(ext + <long>(left + t) * C, inp + (<long>t * nb + r) * C, C * sizeof(float))
        memset(ext + <long>(left + T) * C, 0, <long>right * C * sizeof(float))
        if G == 1:
            for t in range(T_out):
                for j in range(K):
                    memcpy(cols + (<long>t * K + j) * C, ext + (<long>t * L.stride + j * L.dilation) * C,
                           C * sizeof(float))
            matmul_w(T_out, O, K * C, cols, K * C, D, 0, out + <long>r * O, ldo)
        else:
            for g in range(G):
                for j in range(K):
                    matmul_acc(T_out, Og, Cg, ext + <long>j * L.dilation * C + g * Cg, L.stride * C,
                               D.w_x + (<long>g * K + j) * Cg * Og, Og, out + <long>r * O + g * Og, ldo)
        if L.s_size:
            memcpy(hist, ext + <long>(E - L.reach) * C, <long>L.reach * C * sizeof(float))
    fl_activate_rows(L.act, L.alpha, L.act_w, L.n_act_w, out, <long>T_out * nb, O)


cdef void pool_rows(const Net *net, const Layer *L, int T, int nb, const float *inp, float *out,
                    float *srow, long ss, float *ext) noexcept nogil:
    """A windowed pool over T steps of nb rows, laid out per row like conv_rows.  The streaming
    form's state is [inputs seen so far, up to reach (1 float) | the last reach inputs], so
    the windows of a stream's first steps skip history it never had, as padding is skipped."""
    cdef int C = L.width, left, right, T_out = layer_steps(net, L, T), r, t
    cdef long fr
    cdef float *st
    if L.s_size:
        left, right = L.reach, 0
    else:
        window_pads(L, T, &left, &right)
    cdef int E = left + T + right
    for r in range(nb):
        st = srow + r * ss + L.s_off
        fr = left
        if L.s_size:
            memcpy(ext, st + 1, <long>left * C * sizeof(float))
            fr = left - <long>st[0]
            st[0] = min(<float>L.reach, st[0] + T)
        for t in range(T):
            memcpy(ext + <long>(left + t) * C, inp + (<long>t * nb + r) * C, C * sizeof(float))
        fl_pool_frames(L.kind == FL_LAYER_MAXPOOL, L.count_pad, ext, C, fr, left + T, L.ksize, L.stride,
                       T_out, out + <long>r * C, <long>nb * C)
        if L.s_size:
            memcpy(st + 1, ext + <long>(E - L.reach) * C, <long>L.reach * C * sizeof(float))


cdef inline void cell_step(const Layer *L, const Dir *D, int nb, float *gates, float *cs, int ldc,
                           const float *hprev, int ldprev, float *ho, int ldo, float *hfull,
                           long u0, long u1, const long long *ids, float *csave) noexcept nogil:
    """cell_update, then Keras masking (Embedding mask_zero): ids, when not NULL, are the step's
    token ids of the nb rows, and a row whose id is 0 keeps its c (saved in csave) and repeats
    its previous output, so the state carries over the step unchanged.  (Masked layers run on
    one thread: u0:u1 is every unit.)"""
    cdef int r, H = L.hidden
    cdef bint lstm = L.kind == FL_LAYER_LSTM
    if ids != NULL and lstm:
        for r in range(nb):
            if ids[r] == 0:
                memcpy(csave + <long>r * H, cs + <long>r * ldc, H * sizeof(float))
    cell_update(L, D, nb, gates, cs, ldc, hprev, ldprev, ho, ldo, hfull, u0, u1)
    if ids == NULL:
        return
    for r in range(nb):
        if ids[r] == 0:
            memcpy(ho + <long>r * ldo, hprev + <long>r * ldprev, L.n_out * sizeof(float))
            if lstm:
                memcpy(cs + <long>r * ldc, csave + <long>r * H, H * sizeof(float))


cdef inline const long long *step_ids(const long long *ids, int t, long ldi) noexcept nogil:
    return NULL if ids == NULL else ids + <long>t * ldi


cdef inline void mask_outputs(const Layer *L, int tn, int nb, const long long *ids, long ldi,
                              float *out) noexcept nogil:
    """Keras Bidirectional(return_sequences=True) outputs zeros at masked steps (L.mask == 2)."""
    cdef int t, r, cat = L.n_dirs * L.n_out
    if ids == NULL or L.mask != 2:
        return
    for t in range(tn):
        for r in range(nb):
            if ids[<long>t * ldi + r] == 0:
                memset(out + (<long>t * nb + r) * cat, 0, cat * sizeof(float))


cdef inline void cell_update(const Layer *L, const Dir *D, int nb, float *gates, float *cs, int ldc,
                             const float *hprev, int ldprev, float *ho, int ldo, float *hfull,
                             long u0, long u1) noexcept nogil:
    """The cell update of one step, units u0:u1 of nb rows: gates (nb, G) and the previous h
    (hprev, row stride ldprev) -> c (LSTM), and h into ho.

    With a projection, h = (o * tanh(c)) @ W_proj, through hfull (nb, H); one
    thread has all the units then, as for a reset-before GRU, whose candidate
    needs (r * h) @ W_hn between the gates and the update."""
    cdef int H = L.hidden, P = L.n_out, G = L.gates, r
    if L.kind == FL_LAYER_GRU:
        fl_gru_rows(gates + u0, G, H, hprev + u0, ldprev, ho + u0, ldo, nb, u1 - u0, L.gate_act, L.cell_act)
        return
    if L.kind == FL_LAYER_RNN:
        fl_rnn_rows(gates + u0, G, ho + u0, ldo, nb, u1 - u0, L.cell_act)
        return
    if L.kind == FL_LAYER_GRU_BEFORE:
        fl_gru_reset_rows(gates, G, H, hprev, ldprev, hfull, nb, H, L.gate_act)
        matmul_acc(nb, H, H, hfull, H, D.w_proj, H, gates + 2 * H, G)
        fl_gru_update_rows(gates, G, H, hprev, ldprev, ho, ldo, nb, H, L.cell_act)
        return
    if D.w_proj == NULL:
        fl_cell_rows(gates + u0, G, H, cs + u0, ldc, ho + u0, ldo, nb, u1 - u0, L.gate_act, L.cell_act)
        return
    fl_cell_rows(gates, G, H, cs, ldc, hfull, H, nb, H, L.gate_act, L.cell_act)
    for r in range(nb):
        memset(ho + <long>r * ldo, 0, P * sizeof(float))
    matmul_acc(nb, P, H, hfull, H, D.w_proj, P, ho, ldo)


cdef inline void lowp_cols(const Dir *D, bint recurrent, int m, const unsigned int *qa, long kq, const float *qs,
                           int c0, int c1, float *gates, int G, bint from_bias) noexcept nogil:
    """gates[m, c0:c1] += the converted rows qa @ D's reduced-precision x part (recurrent: h
    part), columns c0:c1 (c0 on a panel); with from_bias, gates = bias + the product."""
    cdef long ps = (D.kqx + D.kqh) * FL_PANEL
    cdef const unsigned int *w = D.lp_words + (c0 // FL_PANEL) * ps + (D.kqx * FL_PANEL if recurrent else 0)
    cdef const float *scale = D.lp_scale_h if recurrent else D.lp_scale_x
    cdef const int *corr = D.lp_corr_h if recurrent else D.lp_corr_x
    if scale != NULL:          # int8; bf16 has neither
        scale += c0
        corr += c0
    fl_lp_gemm(D.prec, m, c1 - c0, kq, qa, kq, qs, w, ps, scale, corr, gates + c0, G,
               D.bias + c0 if from_bias else NULL)


cdef inline void lowp_products(const Layer *L, const Dir *D, bint recurrent, int m, const unsigned int *qa,
                               long kq, const float *qs, long u0, long u1, float *gates) noexcept nogil:
    """The gate pre-activations of units u0:u1 in every gate block (all of them: u0 = 0, u1 = H)
    of m rows, from the converted rows qa (kq words each, fastlstm_lowp.h): the x part writes
    bias + x @ W_x, the h part (recurrent) then adds h @ W_h.  (bf16 rows of kqx + kqh words,
    x then h, do both at once: the same chain, the same bits.)

    As gate_products does, a reset-after GRU skips the blocks that part is zero in, where the
    blocks start on panels: its n_h block then starts from the bias in the h part."""
    cdef int G = L.gates, H = L.hidden, q
    cdef bint gru = L.kind == FL_LAYER_GRU and H % FL_PANEL == 0
    if u0 == 0 and u1 == H and not gru:
        lowp_cols(D, recurrent, m, qa, kq, qs, 0, G, gates, G, not recurrent)
        return
    for q in range(G // H):
        if not (gru and q == (2 if recurrent else 3)):
            lowp_cols(D, recurrent, m, qa, kq, qs, <int>(q * H + u0), <int>(q * H + u1), gates, G,
                      not recurrent or (gru and q == 3))


cdef inline void keep_last_h(const Dir *D, int nb, float *hs, int ldh, const float *hlast, int cat,
                             long u0, long u1, int P) noexcept nogil:
    """The last step's h (rows of stride cat) into the nb state rows: this thread's units u0:u1
    only, as a thread reads and writes only its own units of the state (all P with a
    projection, which one thread runs)."""
    cdef long v0 = 0 if D.w_proj != NULL else u0
    cdef long v1 = P if D.w_proj != NULL else u1
    cdef int r
    for r in range(nb):
        memcpy(hs + <long>r * ldh + v0, hlast + <long>r * cat + v0, (v1 - v0) * sizeof(float))


cdef inline void finish_layer(const Layer *L, int tn, int nb, const long long *ids, long ldi, float *out,
                              int tid, int nt, fl_spin_barrier *bar) noexcept nogil:
    """A recurrent layer's outputs after its directions: masked steps, then a bidirectional pair
    merged (Keras merge modes) by thread 0 once the team is done."""
    mask_outputs(L, tn, nb, ids, ldi, out)
    if L.n_dirs == 2 and L.merge != FL_MERGE_CONCAT:
        sync(bar, nt)
        if tid == 0:
            fl_merge_rows(out, out, tn * nb, L.n_out, L.merge)


cdef void run_layer_lowp(const Layer *L, int tn, int nb, const float *inp, float *out,
                         float *hrows, int ldh, float *crows, int ldc, float *gates, float *hfull,
                         float *lpws, const long long *ids, long ldi, float *csave,
                         int tid, int nt, fl_spin_barrier *bar) noexcept nogil:
    """run_layer for a layer in bf16 or int8 (fastlstm_lowp.h): each product's rows are first
    converted (rounded to bf16, or quantized with a scale per row) into lpws, which the whole
    team shares, split by rows over the team (int8 scales a row by its largest value, so a
    row needs all of it: one more barrier per step than fp32); then each thread computes the
    gate columns of its units and updates them.

    The x part of a block is hoisted for one or two rows (one product of tn rows instead of tn
    of one); from 3 rows it goes step by step, into a gate tile that stays in cache (a block's
    hoisted gates come back from memory, which cost more than the products).  The products
    give the same bits whatever the rows and columns of a call, so results do not depend on
    the batch or the team."""
    cdef int G = L.gates, H = L.hidden, P = L.n_out
    cdef int cat = L.n_dirs * P
    cdef int rows = tn * nb
    cdef bint hoist = nb < 3
    cdef bint fused
    cdef long kxh
    cdef int d, s, t, dst, r0, r1
    cdef long u0 = 0, u1 = H
    cdef const Dir *D
    cdef float *hs
    cdef float *cs
    cdef float *ho
    cdef float *g
    cdef const float *hprev
    cdef int ldprev
    cdef unsigned int *qx = <unsigned int *>lpws
    cdef unsigned int *qh
    cdef float *sx
    cdef float *sh
    if nt > 1:
        fl_split_range(H, tid, nt, &u0, &u1)
    for d in range(L.n_dirs):
        D = &L.dirs[d]
        hs = hrows + D.h_off
        cs = crows + D.c_off
        # Step by step, bf16 converts x and h into one row each and does both parts in one
        # product (a GRU that skips blocks cannot: its parts cover different columns).
        fused = not hoist and D.prec == FL_PREC_BF16 and not (L.kind == FL_LAYER_GRU and H % FL_PANEL == 0)
        kxh = D.kqx + D.kqh
        # lpws: [x rows' words | h rows' words | x rows' scales | h rows' scales] (ws_layout); fused,
        # the first two hold the [x | h] rows.
        qh = qx + pad16((<long>(rows if hoist else nb) + 16) * D.kqx)
        sx = <float *>(qh + pad16((<long>nb + 16) * D.kqh))
        sh = sx + pad16(rows if hoist else nb)
        if hoist:
            sync(bar, nt)        # (the team is done with lpws)
            if tid == 0:
                fl_lp_convert(D.prec, rows, L.n_in, inp, L.n_in, qx, D.kqx, sx)
            sync(bar, nt)
            lowp_products(L, D, False, rows, qx, D.kqx, sx, u0, u1, gates)
        hprev = hs
        ldprev = ldh
        for s in range(tn):
            t = tn - 1 - s if D.reverse else s
            dst = s if L.go_backwards else t
            ho = out + <long>dst * nb * cat + d * P
            g = gates + (<long>t * nb * G if hoist else 0)
            sync(bar, nt)        # every unit of hprev is written; the last products are done
            r0 = nb * tid // nt
            r1 = nb * (tid + 1) // nt
            if fused:            # rows of [x | h] words
                fl_lp_convert(D.prec, r1 - r0, L.n_in, inp + (<long>t * nb + r0) * L.n_in, L.n_in,
                              qx + <long>r0 * kxh, kxh, NULL)
                fl_lp_convert(D.prec, r1 - r0, P, hprev + <long>r0 * ldprev, ldprev, qx + <long>r0 * kxh + D.kqx,
                              kxh, NULL)
            else:
                if not hoist:
                    fl_lp_convert(D.prec, r1 - r0, L.n_in, inp + (<long>t * nb + r0) * L.n_in, L.n_in,
                                  qx + <long>r0 * D.kqx, D.kqx, sx + r0)
                fl_lp_convert(D.prec, r1 - r0, P, hprev + <long>r0 * ldprev, ldprev, qh + <long>r0 * D.kqh, D.kqh,
                              sh + r0)
            sync(bar, nt)
            if fused:
                lowp_products(L, D, False, nb, qx, kxh, NULL, u0, u1, g)
            else:
                if not hoist:
                    lowp_products(L, D, False, nb, qx, D.kqx, sx, u0, u1, g)
                lowp_products(L, D, True, nb, qh, D.kqh, sh, u0, u1, g)
            cell_step(L, D, nb, g, cs, ldc, hprev, ldprev, ho, cat, hfull, u0, u1, step_ids(ids, t, ldi), csave)
            hprev = ho
            ldprev = cat
        keep_last_h(D, nb, hs, ldh, hprev, cat, u0, u1, P)
    finish_layer(L, tn, nb, ids, ldi, out, tid, nt, bar)


cdef void run_layer(const Layer *L, int tn, int nb, const float *inp, float *out,
                    float *hrows, int ldh, float *crows, int ldc, float *gates, float *hfull,
                    float *xh, float *lpws, const long long *ids, long ldi, float *csave,
                    int tid, int nt, fl_spin_barrier *bar) noexcept nogil:
    """One recurrent layer over tn steps of nb rows: inp (tn*nb, n_in) -> out (tn*nb, width).

    hrows/crows: the state of the first of the nb rows, one row per stream
    (row strides ldh, ldc); each direction's h and c sit at its offsets in a row.
    xh: scratch for two packed copies of nb rows of [x | h]; lpws: a reduced-precision
    layer's converted rows (run_layer_lowp).  ids: a masked layer's token ids (step t of
    row r at ids[t * ldi + r], see cell_step and mask_outputs), else NULL; csave: nb * hidden
    floats of scratch for it.

    Step t's h is written straight into its output rows and the next step reads
    it from there; the state rows get the last one at the end.  A team thread
    (nt > 1) computes only the gate columns and the c, h of its slice of hidden
    units, so threads share no writes; they wait for each other only where a
    product reads every unit of h."""
    cdef int G4 = L.gates, H = L.hidden, P = L.n_out
    cdef int cat = L.n_dirs * P
    cdef int rows = tn * nb
    cdef int K = L.n_in + P
    cdef int d, s, t, dst, r, q
    cdef bint packed_steps = L.dirs[0].w_panels != NULL and nb >= 3
    # A reset-after GRU's gate blocks start on panels when H is a multiple of one (matmul_units).
    cdef int gru_kx = L.n_in if L.kind == FL_LAYER_GRU and L.hidden % FL_PANEL == 0 else 0
    cdef bint stacked = tn == 1 and nb > 2
    cdef long u0 = 0, u1 = H, v0, v1, x0, x1, c0, c1
    cdef long flip = 0
    cdef float *ap
    cdef const Dir *D
    cdef float *hs
    cdef float *cs
    cdef float *ho
    cdef const float *hprev
    cdef int ldprev
    if L.dirs[0].prec != FL_PREC_FP32:
        run_layer_lowp(L, tn, nb, inp, out, hrows, ldh, crows, ldc, gates, hfull, lpws, ids, ldi, csave,
                       tid, nt, bar)
        return
    if nt > 1:
        fl_split_range(H, tid, nt, &u0, &u1)
    for d in range(L.n_dirs):
        D = &L.dirs[d]
        hs = hrows + D.h_off
        cs = crows + D.c_off
        if nb == 1 and nt > 1:
            # One stream, big weights: each thread fills (and for a block, projects) only its
            # own units' columns of every gate block, the only ones it reads while stepping
            # them (fastlstm_single.h), so no barrier is needed first.  A single step's input
            # projection is done inside.
            for q in range(G4 // H):
                c0 = q * H + u0
                c1 = q * H + u1
                for r in range(rows):
                    memcpy(gates + <long>r * G4 + c0, D.bias + c0, (c1 - c0) * sizeof(float))
                if tn > 1 and c1 > c0 and not (L.kind == FL_LAYER_GRU and q == 3):
                    matmul_cols(rows, c0, c1, G4, L.n_in, inp, L.n_in, D, 0, gates, G4)
            fl_lstm_single_part(tid, nt, bar, tn, D.reverse, L.go_backwards, gates, inp if tn == 1 else NULL,
                                L.n_in, L.n_in, D.w_x, D.w_panels, <long>D.n_stack * FL_PANEL, H, G4, L.kind,
                                hs, cs, hfull, out + d * P, cat, L.gate_act, L.cell_act)
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
                matmul_units(nb, K, ap, D, gates, H, G4, u0, u1, gru_kx)
                cell_step(L, D, nb, gates, cs, ldc, hprev, ldprev, ho, cat, hfull, u0, u1,
                          step_ids(ids, t, ldi), csave)
                hprev = ho
                ldprev = cat
        else:
            fill_rows(gates, D.bias, rows, G4)
            if stacked:
                # One step of a batch without panels: [x | h] @ [W_x; W_h] is one call
                # instead of two (W_h is stored right after W_x), so it packs once.
                for r in range(nb):
                    memcpy(xh + <long>r * K, inp + <long>r * L.n_in, L.n_in * sizeof(float))
                    memcpy(xh + <long>r * K + L.n_in, hs + <long>r * ldh, P * sizeof(float))
                matmul_w(nb, G4, K, xh, K, D, 0, gates, G4)
            else:
                # Input projection of the whole block, hoisted out of the time loop.
                gate_products(L, D, rows, inp, L.n_in, False, gates)
            for s in range(tn):
                t = tn - 1 - s if D.reverse else s
                dst = s if L.go_backwards else t
                ho = out + <long>dst * nb * cat + d * P
                if not stacked:
                    gate_products(L, D, nb, hprev, ldprev, True, gates + <long>t * nb * G4)
                cell_step(L, D, nb, gates + <long>t * nb * G4, cs, ldc, hprev, ldprev, ho, cat, hfull, u0, u1,
                          step_ids(ids, t, ldi), csave)
                hprev = ho
                ldprev = cat
        keep_last_h(D, nb, hs, ldh, hprev, cat, u0, u1, P)
    finish_layer(L, tn, nb, ids, ldi, out, tid, nt, bar)


# ---------------------------------------------------------------------------
# Test hook: the C activations, callable from Python (model.py also applies a
# head activation through it for Keras' last step of a bidirectional layer).

def _activate(int kind, cnp.ndarray x, float alpha=0.0, cnp.ndarray slopes=None):
    """Apply activation `kind` (fl_activation) to a float32 array in place, row-wise over its
    last axis (softmax, prelu with `slopes`); `alpha` for elu and leaky_relu."""
    cdef long n = cnp.PyArray_SIZE(x)
    cdef long O = x.shape[x.ndim - 1] if x.ndim else 1
    cdef const float *pw = NULL if slopes is None else <const float *>cnp.PyArray_DATA(slopes)
    if kind == FL_ACT_PRELU and (slopes is None or slopes.shape[0] not in (1, O)):
        raise ValueError("slopes: prelu needs 1 or one per feature")
    fl_activate_rows(kind, alpha, pw, 0 if slopes is None else slopes.shape[0], <float *>cnp.PyArray_DATA(x),
                     n // max(O, 1), O)
    return x
