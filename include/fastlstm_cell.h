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

/* z[0:n] += v[0:k] @ W, W row-major (k, n) with row stride ldw.
 * Used for single-row steps, where a BLAS call costs more than the arithmetic
 * at small sizes.  W is streamed row by row, four rows at a time, so every
 * weight is read once, sequentially (the prefetcher's best case), while z
 * (a few KB) stays in L1: 4 FMAs per load and store of z. */
FL_INLINE void fl_gemv_acc_body(const float *restrict v, long k, const float *restrict W, long ldw,
                                long n, float *restrict z)
{
    const long k4 = k - k % 4;
    long i = 0;
    for (; i < k4; i += 4) {
        const float v0 = v[i], v1 = v[i + 1], v2 = v[i + 2], v3 = v[i + 3];
        const float *w0 = W + i * ldw, *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;
        for (long j = 0; j < n; j++) z[j] += v0 * w0[j] + v1 * w1[j] + v2 * w2[j] + v3 * w3[j];
    }
    for (; i < k; i++) {
        const float vi = v[i];
        const float *w = W + i * ldw;
        for (long j = 0; j < n; j++) z[j] += vi * w[j];
    }
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
