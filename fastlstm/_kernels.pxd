# The C-level contract of fastlstm._kernels, shared with fastlstm._streams.
cimport numpy as cnp

cdef extern from "fastlstm_cell.h" nogil:
    int fl_all_finite(const float *x, long n)

# The enums are declared once, in the C headers; `cpdef` makes _kernels export
# each constant to Python (fastlstm._packing reads them from there).
cdef extern from "fastlstm_activations.h":
    cpdef enum fl_activation:
        FL_ACT_SIGMOID, FL_ACT_TANH, FL_ACT_HARD_SIGMOID, FL_ACT_HARD_SIGMOID_KERAS2, FL_ACT_RELU,
        FL_ACT_LINEAR, FL_ACT_SOFTMAX, FL_ACT_ELU, FL_ACT_SELU, FL_ACT_LEAKY_RELU, FL_ACT_GELU,
        FL_ACT_GELU_TANH, FL_ACT_SILU, FL_ACT_SOFTPLUS, FL_ACT_SOFTSIGN, FL_ACT_PRELU

cdef extern from "fastlstm_cell.h":
    cpdef enum fl_merge:
        FL_MERGE_CONCAT, FL_MERGE_SUM, FL_MERGE_MUL, FL_MERGE_AVE

cdef extern from "fastlstm_lowp.h":
    cpdef enum fl_precision:
        FL_PREC_FP32, FL_PREC_BF16, FL_PREC_INT8

cdef extern from "fastlstm_layers.h":
    cpdef enum fl_layer_kind:
        FL_LAYER_LSTM, FL_LAYER_GRU, FL_LAYER_GRU_BEFORE, FL_LAYER_RNN, FL_LAYER_DENSE, FL_LAYER_ACTIVATION,
        FL_LAYER_AFFINE, FL_LAYER_LAYERNORM, FL_LAYER_EMBEDDING, FL_LAYER_CONV, FL_LAYER_MAXPOOL,
        FL_LAYER_AVGPOOL, FL_LAYER_GLOBAL_MAX, FL_LAYER_GLOBAL_AVG, FL_LAYER_LAST_STEP, FL_LAYER_REPEAT,
        FL_LAYER_FLATTEN

cdef struct Dir:
    # w_x: a product's weights, row-major (n_stack, columns): for a recurrent direction
    # [W_x; W_h] (n_in + n_out, gates), gate columns in the cell's order
    const float *w_x
    const float *bias       # (columns,): the biases summed
    const float *w_proj     # LSTM: the projection (H, P); reset-before GRU: W_hn (H, H); else NULL
    int n_stack             # rows of w_x
    const float *w_panels   # w_x in 16-column panels (fastlstm_gemm.h), or NULL
    int reverse             # runs from the last time step to the first
    long h_off, c_off       # offsets of this direction's h and c within a stream's state row
    # Reduced precision (fastlstm_lowp.h, packed by fastlstm._quantize; prec FL_PREC_FP32: unused):
    # [W_x; W_h] as words in panels of 16 columns, kqx word rows of the x part then kqh of the
    # h part; int8: the parts' column scales and offset corrections.  w_x and w_panels are NULL.
    int prec
    const unsigned int *lp_words
    long kqx, kqh
    const float *lp_scale_x
    const float *lp_scale_h
    const int *lp_corr_x
    const int *lp_corr_h

cdef struct Layer:
    # Every layer: its kind (fl_layer_kind) and its widths per step.
    int kind, n_in, width
    # Recurrent layers (Dense and Conv1D keep their product in dirs[0] too).
    Dir dirs[2]
    int n_dirs, hidden, n_out         # n_out: P with a projection, else H
    int gates                         # gate columns of a direction's product: 4H, 4H (GRU), 3H, H
    int gate_act, cell_act, merge, go_backwards
    # The activation of Dense, Conv1D and Activation (fl_activation), its alpha and prelu slopes.
    int act, n_act_w
    float alpha
    const float *act_w
    # Norms: the affine's scale and shift, or LayerNorm's gamma and beta; eps.
    const float *scale
    const float *shift
    float eps
    # Conv1D and the windowed pools: window, stride, dilation, groups, padding (same_pad:
    # Keras 'same' at stride > 1, resolved per sequence), reach = dilation * (size - 1).
    int ksize, stride, dilation, groups, pad_l, pad_r, same_pad, count_pad, reach
    int repeat                        # RepeatVector's n
    int steps                         # Flatten over a whole sequence: the steps it flattens (width = steps * n_in)
    int last_half                     # LastStep after a bidirectional layer (Keras): the forward half's width
    # A recurrent layer after Embedding(mask_zero=True): 1 a row keeps its state at a step whose
    # token id is 0; 2 also outputs zeros there (Keras Bidirectional returning sequences)
    int mask
    long s_off, s_size                # a streaming layer's state within a stream's row (not recurrent ones)

cdef struct Net:
    Layer *layers
    int n_layers, n_in, n_out         # network input width (1 for token ids) and output width
    int token_input                   # the first layer is an Embedding: x holds int64 ids
    long vocab                        # its rows
    int whole                         # some layer needs the whole sequence: one block, steps may change
    long state_size                   # state floats per stream
    int max_gates, max_cat, max_hidden, max_stack  # workspace dimensions


cdef class Network:
    cdef Net net
    cdef list _keep              # the arrays the raw pointers point into
    cdef readonly bint streamable
    cdef readonly object state_layout    # [(label, entry, offset, width)], see _kernels.Network
    cdef readonly object signature
    cdef const float *_pointer(self, arr) except? NULL
    cdef int _set_product(self, Dir *D, w, b, int min_columns) except -1
    cdef int _set_lowp(self, Dir *D, lowp, b) except -1


cdef int num_threads() noexcept nogil
cdef int n_chunks(const Net *net, int B) noexcept nogil
cdef int max_chunk_rows(const Net *net, int B) noexcept nogil
cdef long workspace_floats(const Net *net, int Tc, int rows) noexcept nogil
cdef int input_ok(const Net *net, const void *x, long n) noexcept nogil
cdef void run_batch(const Net *net, int T, int Tc, int B, const void *x, float *y, float *s,
                    float *ws, long per, int nchunks, int nthreads) noexcept nogil
