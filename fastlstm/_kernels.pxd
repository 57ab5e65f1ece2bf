# The C-level contract of fastlstm._kernels, shared with fastlstm._streams.
cimport numpy as cnp

cdef extern from "fastlstm_cell.h" nogil:
    int fl_all_finite(const float *x, long n)

cdef struct Dir:
    const float *w_x        # [W_x; W_h]: (n_in + n_out, 4H) row-major, gate columns [i f o g]
    const float *bias       # (4H,), b_ih + b_hh
    const float *w_proj     # (H, P) or NULL
    int n_stack             # rows of the stacked matrix: n_in + n_out
    const float *w_panels   # [W_x; W_h] in 16-column panels (fastlstm_gemm.h), or NULL
    int reverse             # runs from the last time step to the first
    long h_off, c_off       # offsets of this direction's h and c within a stream's state row

cdef struct Layer:
    Dir dirs[2]
    int n_dirs, n_in, hidden, n_out   # n_out: P with a projection, else H
    int gate_act, cell_act, merge, go_backwards
    int width                         # output width after merging directions

cdef struct Net:
    Layer *layers
    int n_layers, n_in, n_out         # network input and output widths
    const float *head_w               # (width, O) row-major, or NULL
    const float *head_b               # (O,)
    int head_act
    long h_size, c_size               # state floats per stream: rows of (B, h_size), (B, c_size)
    int max_gates, max_cat, max_hidden, max_stack  # workspace dimensions


cdef class Network:
    cdef Net net
    cdef list _keep              # the arrays the raw pointers point into
    cdef readonly bint streamable


cdef int num_threads() noexcept nogil
cdef int n_chunks(const Net *net, int B) noexcept nogil
cdef int max_chunk_rows(const Net *net, int B) noexcept nogil
cdef long workspace_floats(const Net *net, int Tc, int rows) noexcept nogil
cdef void run_batch(const Net *net, int T, int Tc, int B, const float *x, float *y, float *h, float *c,
                    float *ws, long per, int nchunks, int nthreads) noexcept nogil
