/* The fused LSTM gate pass and the small dense kernels of the per-step path.
 *
 * Gate layout of a packed pre-activation row z (4H floats): [ i | f | o | g ]
 * (the three sigmoid gates first).  A thread that owns a slice of the hidden
 * units reads its four gates at stride H.  The fused pass does all activations
 * and the c/h update while the row is in cache:  c' = f*c + i*g,  h' = o*act(c').
 *
 * The hot functions come in one copy per instruction-set path (AVX-512,
 * AVX2+FMA, generic; fastlstm_isa.h), compiled from one body, so the default
 * build is portable and still fast (no -march=native), and FASTLSTM_ISA can
 * force any path the CPU has.
 */
#ifndef FASTLSTM_CELL_H
#define FASTLSTM_CELL_H

#include "fastlstm_activations.h"
#include "fastlstm_isa.h"

/* n hidden units of one row.  Gate g of unit j is z[g * gs + j]: gs = H for a
 * whole row; a thread that owns a slice of the units passes z + u0 and gs = H. */

/* Sigmoid gates and tanh cell (the PyTorch cell): the fast path. */
FL_INLINE void fl_cell_units_sigmoid_tanh_body(const float *restrict z, long gs, float *restrict c, float *restrict h,
                                               long n)
{
    const float *zi = z, *zf = z + gs, *zo = z + 2 * gs, *zg = z + 3 * gs;
    for (long j = 0; j < n; j++) {
        float cn = fl_sigmoid(zf[j]) * c[j] + fl_sigmoid(zi[j]) * fl_tanh(zg[j]);
        c[j] = cn;
        h[j] = fl_sigmoid(zo[j]) * fl_tanh(cn);
    }
}
FL_ISA_VARIANTS(fl_cell_units_sigmoid_tanh,
                (const float *restrict z, long gs, float *restrict c, float *restrict h, long n), (z, gs, c, h, n))

/* Any gate/cell activation (Keras options).  The n used gates of z are overwritten. */
static void fl_cell_units_generic(float *restrict z, long gs, float *restrict c, float *restrict h, long n,
                                  int gate_act, int cell_act)
{
    float *zi = z, *zf = z + gs, *zo = z + 2 * gs, *zg = z + 3 * gs;
    fl_activate(gate_act, zi, n);
    fl_activate(gate_act, zf, n);
    fl_activate(gate_act, zo, n);
    fl_activate(cell_act, zg, n);
    for (long j = 0; j < n; j++) {
        c[j] = zf[j] * c[j] + zi[j] * zg[j];
        h[j] = c[j];
    }
    fl_activate(cell_act, h, n);
    for (long j = 0; j < n; j++) h[j] *= zo[j];
}

static inline void fl_cell_units(float *z, long gs, float *c, float *h, long n, int gate_act, int cell_act)
{
    if (gate_act == FL_ACT_SIGMOID && cell_act == FL_ACT_TANH)
        fl_cell_units_sigmoid_tanh(z, gs, c, h, n);
    else
        fl_cell_units_generic(z, gs, c, h, n, gate_act, cell_act);
}

/* nrows rows of gates (row stride ldz, gate stride gs) -> c rows (stride ldc), h rows
 * (stride ldh); n units per row (a thread's slice passes pointers offset to it). */
static inline void fl_cell_rows(float *z, long ldz, long gs, float *c, long ldc, float *h, long ldh, long nrows, long n,
                                int gate_act, int cell_act)
{
    for (long r = 0; r < nrows; r++) fl_cell_units(z + r * ldz, gs, c + r * ldc, h + r * ldh, n, gate_act, cell_act);
}

/* The GRU with the reset gate after the recurrent product (PyTorch, Keras reset_after=True).
 * Gate blocks of z at stride gs: [ r | z | n_x | n_h ], n_x = x W_in + b_in and n_h = h W_hn + b_hn
 * kept apart so that r multiplies only n_h:  n = act(n_x + r * n_h),  h' = n + u * (h - n)
 * (u the update gate; PyTorch's own form of (1 - u) n + u h).  The used gates are overwritten. */
FL_INLINE void fl_gru_units_sigmoid_tanh_body(const float *restrict z, long gs, const float *restrict hprev,
                                              float *restrict h, long n)
{
    const float *zr = z, *zu = z + gs, *zx = z + 2 * gs, *zh = z + 3 * gs;
    for (long j = 0; j < n; j++) {
        const float nn = fl_tanh(zx[j] + fl_sigmoid(zr[j]) * zh[j]);
        h[j] = nn + fl_sigmoid(zu[j]) * (hprev[j] - nn);
    }
}
FL_ISA_VARIANTS(fl_gru_units_sigmoid_tanh,
                (const float *restrict z, long gs, const float *restrict hprev, float *restrict h, long n),
                (z, gs, hprev, h, n))

static void fl_gru_units_generic(float *restrict z, long gs, const float *restrict hprev, float *restrict h, long n,
                                 int gate_act, int act)
{
    float *zr = z, *zu = z + gs, *zx = z + 2 * gs, *zh = z + 3 * gs;
    fl_activate(gate_act, zr, n);
    fl_activate(gate_act, zu, n);
    for (long j = 0; j < n; j++) zx[j] += zr[j] * zh[j];
    fl_activate(act, zx, n);
    for (long j = 0; j < n; j++) h[j] = zx[j] + zu[j] * (hprev[j] - zx[j]);
}

/* nrows rows of a reset-after GRU: gates (row stride ldz, gate stride gs), the previous h
 * rows (stride ldp) -> h rows (stride ldh); n units per row. */
static void fl_gru_rows(float *z, long ldz, long gs, const float *hprev, long ldp, float *h, long ldh, long nrows,
                        long n, int gate_act, int act)
{
    for (long r = 0; r < nrows; r++) {
        if (gate_act == FL_ACT_SIGMOID && act == FL_ACT_TANH)
            fl_gru_units_sigmoid_tanh(z + r * ldz, gs, hprev + r * ldp, h + r * ldh, n);
        else
            fl_gru_units_generic(z + r * ldz, gs, hprev + r * ldp, h + r * ldh, n, gate_act, act);
    }
}

/* The GRU with the reset gate before the recurrent product (Keras reset_after=False), in two
 * halves around the product (r * h) @ W_hn, which the caller adds into the n block:
 *   fl_gru_reset_rows   r, u = gate_act(...) in place;  rh = r * h   (rh rows of n floats)
 *   fl_gru_update_rows  n = act(n block);  h' = n + u * (h - n)
 * Gate blocks [ r | u | n ] at stride gs. */
static void fl_gru_reset_rows(float *z, long ldz, long gs, const float *hprev, long ldp, float *rh, long nrows, long n,
                              int gate_act)
{
    for (long r = 0; r < nrows; r++) {
        float *zr = z + r * ldz;
        const float *hp = hprev + r * ldp;
        fl_activate(gate_act, zr, n);
        fl_activate(gate_act, zr + gs, n);
        for (long j = 0; j < n; j++) rh[r * n + j] = zr[j] * hp[j];
    }
}

static void fl_gru_update_rows(float *z, long ldz, long gs, const float *hprev, long ldp, float *h, long ldh,
                               long nrows, long n, int act)
{
    for (long r = 0; r < nrows; r++) {
        float *zu = z + r * ldz + gs, *zn = zu + gs;
        const float *hp = hprev + r * ldp;
        float *ho = h + r * ldh;
        fl_activate(act, zn, n);
        for (long j = 0; j < n; j++) ho[j] = zn[j] + zu[j] * (hp[j] - zn[j]);
    }
}

/* The Elman RNN: h' = act(z), nrows rows of n units. */
static void fl_rnn_rows(float *z, long ldz, float *h, long ldh, long nrows, long n, int act)
{
    for (long r = 0; r < nrows; r++) {
        float *zr = z + r * ldz;
        float *ho = h + r * ldh;
        if (act == FL_ACT_TANH) {
            for (long j = 0; j < n; j++) ho[j] = fl_tanh(zr[j]);
        } else {
            fl_activate(act, zr, n);
            for (long j = 0; j < n; j++) ho[j] = zr[j];
        }
    }
}

/* C[0:m, 0:n] += A[0:m, 0:k] @ W, all row-major (row strides lda, ldw, ldc):
 * the products the packed GEMM (fastlstm_gemm.h) does not take -- a single
 * row (a BLAS call or a packed block costs more than the arithmetic), weights
 * narrower than a panel (a small Dense, a Conv1D).  Each C[r][j] is the chain
 * C[r][j] = C[r][j] + A[r][i] * W[i][j] over i in order, the same arithmetic
 * as the packed GEMM does, so a row's result depends neither on the kernel
 * nor on the other rows: a stream stepped alone gets the bits it gets in a
 * batch.  Full 16-column blocks go one row at a time, FL_GEMV_VECS vectors of
 * 16 held in registers over all of k: independent accumulators hide the FMA
 * latency, and C is read and written once.  The last n % 16 columns go one
 * at a time, 8 rows at once, for the same reason (one row of one
 * column would be a single chain waiting on every FMA).  The vectors are GCC
 * vector extensions of the path's register width (FL_WIDTH_VARIANTS);
 * -ffp-contract=fast fuses acc + a * w wherever the
 * target has FMA, as the GEMM kernels' intrinsics do (GCC forms FMAs from -O2
 * up: an -O1 build would round these apart; setup.py builds at -O3, and
 * tests/c/kernels_check.c compares the two bit for bit). */
#define FL_GEMV_VECS 4

/* fl_gemv_vecs_wW: z[0:16 NV] += v[0:k] @ W[:, 0:16 NV] (row stride ldw), NV <= FL_GEMV_VECS
 * blocks of 16 columns, in vectors of W floats. */
#define FL_GEMV_VECS_BODY(W)                                                                                           \
    FL_INLINE void fl_gemv_vecs_w##W(const int NV, const float *restrict v, long k, const float *restrict Wt,          \
                                     long ldw, float *restrict z)                                                      \
    {                                                                                                                  \
        fl_v##W acc[FL_GEMV_VECS * (16 / W)];                                                                          \
        const int nv = NV * (16 / W);                                                                                  \
        for (int q = 0; q < nv; q++) acc[q] = *(const fl_v##W##u *)(z + W * q);                                        \
        for (long i = 0; i < k; i++) {                                                                                 \
            const float *w = Wt + i * ldw;                                                                             \
            const float x = v[i];                                                                                      \
            for (int q = 0; q < nv; q++) acc[q] += x * *(const fl_v##W##u *)(w + W * q);                               \
        }                                                                                                              \
        for (int q = 0; q < nv; q++) *(fl_v##W##u *)(z + W * q) = acc[q];                                              \
    }
FL_GEMV_VECS_BODY(16)
FL_GEMV_VECS_BODY(8)
FL_GEMV_VECS_BODY(4)

/* One column w (stride ldw) for R <= 8 rows: the rows' chains are the lanes of
 * one 8-float vector, k outermost as above.  Not a scalar accumulator per row:
 * a loop over k into a scalar is a reduction, which GCC vectorizes as products
 * then in-order adds, never fused.  Lanes past R read zeros, not a repeat of a
 * row: with equal lanes (one row) GCC folds the broadcast product to one
 * scalar multiply and a vector add, again never fused. */
FL_INLINE void fl_tail_rows_body(long R, const float *restrict A, long lda, long k, const float *restrict w, long ldw,
                                 float *restrict c, long ldc)
{
    fl_v8 acc = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    for (int r = 0; r < R; r++) acc[r] = c[r * ldc];
    for (long i = 0; i < k; i++) {
        fl_v8 a = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        for (int r = 0; r < R; r++) a[r] = A[r * lda + i];
        acc += a * w[i * ldw];
    }
    for (int r = 0; r < R; r++) c[r * ldc] = acc[r];
}

#define FL_MATMUL_ACC_BODY(W)                                                                                          \
    FL_INLINE void fl_matmul_acc_w##W(long m, long n, long k, const float *restrict A, long lda,                       \
                                      const float *restrict Wt, long ldw, float *restrict C, long ldc)                 \
    {                                                                                                                  \
        const long n16 = n - n % 16;                                                                                   \
        for (long r = 0; r < m; r++) {                                                                                 \
            long j = 0;                                                                                                \
            for (; j + 16 * FL_GEMV_VECS <= n16; j += 16 * FL_GEMV_VECS)                                               \
                fl_gemv_vecs_w##W(FL_GEMV_VECS, A + r * lda, k, Wt + j, ldw, C + r * ldc + j);                         \
            for (; j < n16; j += 16) fl_gemv_vecs_w##W(1, A + r * lda, k, Wt + j, ldw, C + r * ldc + j);               \
        }                                                                                                              \
        for (long j = n16; j < n; j++)                                                                                 \
            for (long r = 0; r < m; r += 8)                                                                            \
                fl_tail_rows_body(m - r < 8 ? m - r : 8, A + r * lda, lda, k, Wt + j, ldw, C + r * ldc + j, ldc);      \
    }
FL_MATMUL_ACC_BODY(16)
FL_MATMUL_ACC_BODY(8)
FL_MATMUL_ACC_BODY(4)
FL_WIDTH_VARIANTS(fl_matmul_acc,
                  (long m, long n, long k, const float *restrict A, long lda, const float *restrict W, long ldw,
                   float *restrict C, long ldc),
                  (m, n, k, A, lda, W, ldw, C, ldc))

/* z[0:n] += v[0:k] @ W (row stride ldw): fl_matmul_acc of one row. */
static inline void fl_gemv_acc(const float *v, long k, const float *W, long ldw, long n, float *z)
{
    fl_matmul_acc(1, n, k, v, 0, W, ldw, z, 0);
}

/* Merge a bidirectional row pair [a | b] (each n wide) into a, for Keras merge modes. */
enum fl_merge { FL_MERGE_CONCAT = 0, FL_MERGE_SUM = 1, FL_MERGE_MUL = 2, FL_MERGE_AVE = 3 };
static void fl_merge_rows(const float *in, float *out, long nrows, long n, int mode)
{
    for (long r = 0; r < nrows; r++) {
        const float *a = in + r * 2 * n, *b = a + n;
        float *o = out + r * n;
        for (long j = 0; j < n; j++) {
            float v;
            if (mode == FL_MERGE_SUM)
                v = a[j] + b[j];
            else if (mode == FL_MERGE_MUL)
                v = a[j] * b[j];
            else
                v = 0.5f * (a[j] + b[j]);
            o[j] = v;
        }
    }
}

/* Whether all n floats are finite (inputs are checked before any state changes). */
static int fl_all_finite(const float *x, long n)
{
    uint32_t bad = 0;
    for (long j = 0; j < n; j++) bad |= (uint32_t)((fl_bits(x[j]) & 0x7f800000u) == 0x7f800000u);
    return !bad;
}

#endif /* FASTLSTM_CELL_H */
