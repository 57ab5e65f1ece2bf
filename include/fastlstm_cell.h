/* The fused LSTM gate pass and the small dense kernels of the per-step path.
 *
 * Gate layout of a packed pre-activation row z (4H floats): [ i | f | o | g ]
 * (the three sigmoid gates first).  A thread that owns a slice of the hidden
 * units reads its four gates at stride H.  The fused pass does all activations
 * and the c/h update while the row is in cache:  c' = f*c + i*g,  h' = o*act(c').
 *
 * The hot functions are compiled for AVX-512, AVX2+FMA and baseline x86-64 in
 * one binary (GCC target_clones picks at load time), so the default build is
 * portable and still fast; no -march=native.
 */
#ifndef FASTLSTM_CELL_H
#define FASTLSTM_CELL_H

#include "fastlstm_activations.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && !defined(FASTLSTM_NO_CLONES)
#define FL_HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FL_HOT
#endif

/* n hidden units of one row.  Gate g of unit j is z[g * gs + j]: gs = H for a
 * whole row; a thread that owns a slice of the units passes z + u0 and gs = H. */

/* Sigmoid gates and tanh cell (the PyTorch cell): the fast path. */
FL_HOT static void fl_cell_units_sigmoid_tanh(const float *restrict z, long gs, float *restrict c,
                                              float *restrict h, long n)
{
    const float *zi = z, *zf = z + gs, *zo = z + 2 * gs, *zg = z + 3 * gs;
    for (long j = 0; j < n; j++) {
        float cn = fl_sigmoid(zf[j]) * c[j] + fl_sigmoid(zi[j]) * fl_tanh(zg[j]);
        c[j] = cn;
        h[j] = fl_sigmoid(zo[j]) * fl_tanh(cn);
    }
}

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
FL_HOT static void fl_gru_units_sigmoid_tanh(const float *restrict z, long gs, const float *restrict hprev,
                                             float *restrict h, long n)
{
    const float *zr = z, *zu = z + gs, *zx = z + 2 * gs, *zh = z + 3 * gs;
    for (long j = 0; j < n; j++) {
        const float nn = fl_tanh(zx[j] + fl_sigmoid(zr[j]) * zh[j]);
        h[j] = nn + fl_sigmoid(zu[j]) * (hprev[j] - nn);
    }
}

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

/* z[0:n] += v[0:k] @ W, W row-major (k, n) with row stride ldw.
 * Used for single-row steps, where a BLAS call costs more than the arithmetic
 * at small sizes.  W is streamed row by row, four rows at a time, so every
 * weight is read once, sequentially (the prefetcher's best case), while z
 * (a few KB) stays in L1: 4 FMAs per load and store of z. */
FL_HOT static void fl_gemv_acc(const float *restrict v, long k, const float *restrict W, long ldw,
                               long n, float *restrict z)
{
    long i = 0;
    for (; i + 3 < k; i += 4) {
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
