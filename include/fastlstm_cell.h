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
FL_INLINE void fl_cell_units_sigmoid_tanh_body(const float *restrict z, long gs, float *restrict c,
                                               float *restrict h, long n)
{
    const float *zi = z, *zf = z + gs, *zo = z + 2 * gs, *zg = z + 3 * gs;
    for (long j = 0; j < n; j++) {
        float cn = fl_sigmoid(zf[j]) * c[j] + fl_sigmoid(zi[j]) * fl_tanh(zg[j]);
        c[j] = cn;
        h[j] = fl_sigmoid(zo[j]) * fl_tanh(cn);
    }
}
FL_ISA_VARIANTS(fl_cell_units_sigmoid_tanh, (const float *restrict z, long gs, float *restrict c,
                                            float *restrict h, long n), (z, gs, c, h, n))

/* Any gate/cell activation (Keras options).  The n used gates of z are overwritten. */
static void fl_cell_units_generic(float *restrict z, long gs, float *restrict c, float *restrict h,
                                  long n, int gate_act, int cell_act)
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
    if (gate_act == FL_ACT_SIGMOID && cell_act == FL_ACT_TANH) fl_cell_units_sigmoid_tanh(z, gs, c, h, n);
    else fl_cell_units_generic(z, gs, c, h, n, gate_act, cell_act);
}

/* nrows rows of gates (row stride ldz, gate stride gs) -> c rows (stride ldc), h rows
 * (stride ldh); n units per row (a thread's slice passes pointers offset to it). */
static inline void fl_cell_rows(float *z, long ldz, long gs, float *c, long ldc, float *h, long ldh,
                                long nrows, long n, int gate_act, int cell_act)
{
    for (long r = 0; r < nrows; r++)
        fl_cell_units(z + r * ldz, gs, c + r * ldc, h + r * ldh, n, gate_act, cell_act);
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
FL_ISA_VARIANTS(fl_gru_units_sigmoid_tanh, (const float *restrict z, long gs, const float *restrict hprev,
                                          float *restrict h, long n), (z, gs, hprev, h, n))

static void fl_gru_units_generic(float *restrict z, long gs, const float *restrict hprev, float *restrict h,
                                 long n, int gate_act, int act)
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
static void fl_gru_rows(float *z, long ldz, long gs, const float *hprev, long ldp, float *h, long ldh,
                        long nrows, long n, int gate_act, int act)
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
static void fl_gru_reset_rows(float *z, long ldz, long gs, const float *hprev, long ldp, float *rh,
                              long nrows, long n, int gate_act)
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

/* z[0:n] += v[0:k] @ W, W row-major (k, n) with row stride ldw: the one-row
 * product (a BLAS call or a packed block costs more than the arithmetic).
 * Each z[j] is the chain z[j] = z[j] + v[i] * W[i][j] over i in order, the
 * same arithmetic as the packed GEMM (fastlstm_gemm.h) does for a row of a
 * batch, so a stream's results do not depend on whether it is stepped alone.
 * Columns go in blocks of FL_GEMV_VECS vectors of 16 held in registers over
 * all of k: independent accumulators hide the FMA latency (a single chain per
 * vector would wait on it), and z is read and written once.  The 16-float
 * vectors are GCC vector extensions: one zmm (AVX-512), two ymm (AVX2) or four
 * xmm (generic) per vector, and -ffp-contract=fast fuses acc + v * w wherever
 * the target has FMA, as in the GEMM kernels, and in the scalar tail. */
typedef float fl_v16 __attribute__((vector_size(64)));
typedef float fl_v16u __attribute__((vector_size(64), aligned(4)));  /* unaligned access */
#define FL_GEMV_VECS 4

FL_INLINE void fl_gemv_cols_body(const int NV, const float *restrict v, long k, const float *restrict W, long ldw,
                                 float *restrict z)
{
    fl_v16 acc[FL_GEMV_VECS];
    for (int q = 0; q < NV; q++) acc[q] = *(const fl_v16u *)(z + 16 * q);
    for (long i = 0; i < k; i++) {
        const float *w = W + i * ldw;
        const float x = v[i];
        for (int q = 0; q < NV; q++) acc[q] += x * *(const fl_v16u *)(w + 16 * q);
    }
    for (int q = 0; q < NV; q++) *(fl_v16u *)(z + 16 * q) = acc[q];
}

FL_INLINE void fl_gemv_acc_body(const float *restrict v, long k, const float *restrict W, long ldw,
                                long n, float *restrict z)
{
    long j = 0;
    for (; j + 16 * FL_GEMV_VECS <= n; j += 16 * FL_GEMV_VECS)
        fl_gemv_cols_body(FL_GEMV_VECS, v, k, W + j, ldw, z + j);
    for (; j + 16 <= n; j += 16) fl_gemv_cols_body(1, v, k, W + j, ldw, z + j);
    /* The last n % 16 columns, k outermost as above: a loop over k innermost would be a
     * reduction, which GCC vectorizes as products then in-order adds, never fused. */
    const int nt = (int)(n - j);
    float acc[16];
    for (int q = 0; q < nt; q++) acc[q] = z[j + q];
    for (long i = 0; i < k; i++)
        for (int q = 0; q < nt; q++) acc[q] += v[i] * W[i * ldw + j + q];
    for (int q = 0; q < nt; q++) z[j + q] = acc[q];
}
FL_ISA_VARIANTS(fl_gemv_acc, (const float *restrict v, long k, const float *restrict W, long ldw, long n,
                              float *restrict z), (v, k, W, ldw, n, z))

/* Merge a bidirectional row pair [a | b] (each n wide) into a, for Keras merge modes. */
enum fl_merge { FL_MERGE_CONCAT = 0, FL_MERGE_SUM = 1, FL_MERGE_MUL = 2, FL_MERGE_AVE = 3 };
static void fl_merge_rows(const float *in, float *out, long nrows, long n, int mode)
{
    for (long r = 0; r < nrows; r++) {
        const float *a = in + r * 2 * n, *b = a + n;
        float *o = out + r * n;
        for (long j = 0; j < n; j++) {
            float v;
            if (mode == FL_MERGE_SUM) v = a[j] + b[j];
            else if (mode == FL_MERGE_MUL) v = a[j] * b[j];
            else v = 0.5f * (a[j] + b[j]);
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
