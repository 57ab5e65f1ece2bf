/* The layer kinds of a network chain, and the small kernels of the layers that are not
 * recurrent (norms, pools, the shape layers).  The products of Dense and Conv1D go
 * through the same packed GEMM / BLAS wrapper as the recurrent layers (_kernels.pyx).
 *
 * Activations of a layer's rows: fl_activate_rows (fastlstm_activations.h).
 */
#ifndef FASTLSTM_LAYERS_H
#define FASTLSTM_LAYERS_H

#include <math.h>
#include "fastlstm_activations.h"

/* Layer kinds, shared with Cython (fastlstm/_kernels.pxd) and Python (fastlstm._packing).
 * The recurrent kinds come first: _kernels.is_recurrent is kind <= FL_LAYER_RNN. */
enum fl_layer_kind {
    FL_LAYER_LSTM = 0,
    FL_LAYER_GRU = 1,        /* reset gate after the recurrent product (PyTorch) */
    FL_LAYER_GRU_BEFORE = 2, /* reset gate before it (Keras reset_after=False) */
    FL_LAYER_RNN = 3,
    FL_LAYER_DENSE = 4,
    FL_LAYER_ACTIVATION = 5,
    FL_LAYER_AFFINE = 6, /* y = x * scale + shift per feature (an unfolded BatchNorm) */
    FL_LAYER_LAYERNORM = 7,
    FL_LAYER_EMBEDDING = 8,
    FL_LAYER_CONV = 9,
    FL_LAYER_MAXPOOL = 10,
    FL_LAYER_AVGPOOL = 11,
    FL_LAYER_GLOBAL_MAX = 12,
    FL_LAYER_GLOBAL_AVG = 13,
    FL_LAYER_LAST_STEP = 14,
    FL_LAYER_REPEAT = 15,
    FL_LAYER_FLATTEN = 16 /* a whole sequence of a fixed length as one vector, steps in order */
};

/* y = (x - mean) / sqrt(var + eps) * gamma + beta per row of n features (two passes, biased var). */
static void fl_layernorm_rows(const float *x, float *y, long nrows, long n, const float *gamma, const float *beta,
                              float eps)
{
    for (long r = 0; r < nrows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        float mean = 0.0f, var = 0.0f;
        for (long j = 0; j < n; j++) mean += xr[j];
        mean /= (float)n;
        for (long j = 0; j < n; j++) {
            const float d = xr[j] - mean;
            var += d * d;
        }
        const float inv = 1.0f / sqrtf(var / (float)n + eps);
        for (long j = 0; j < n; j++) yr[j] = (xr[j] - mean) * inv * gamma[j] + beta[j];
    }
}

/* y = x * scale + shift per feature. */
static void fl_affine_rows(const float *x, float *y, long nrows, long n, const float *scale, const float *shift)
{
    for (long r = 0; r < nrows; r++)
        for (long j = 0; j < n; j++) y[r * n + j] = x[r * n + j] * scale[j] + shift[j];
}

/* Windowed pool over one stream's frames ext (E frames of C features, contiguous); only
 * frames fr..lr-1 are real (the rest is padding or not-yet-seen history).  Output t covers
 * frames t*stride .. t*stride+size-1 and goes to out + t*ldo.  Padding never wins a max; an
 * average divides by size when count_pad, else by the real frames in the window. */
static void fl_pool_frames(int is_max, int count_pad, const float *ext, long C, long fr, long lr, long size,
                           long stride, long n_out, float *out, long ldo)
{
    for (long t = 0; t < n_out; t++) {
        const long s = t * stride;
        const long a = s > fr ? s : fr;
        const long b = s + size < lr ? s + size : lr;
        float *o = out + t * ldo;
        if (b <= a) { /* a window of padding only */
            for (long c = 0; c < C; c++) o[c] = 0.0f;
            continue;
        }
        for (long c = 0; c < C; c++) o[c] = ext[a * C + c];
        for (long f = a + 1; f < b; f++) {
            const float *e = ext + f * C;
            if (is_max)
                for (long c = 0; c < C; c++) o[c] = e[c] > o[c] ? e[c] : o[c];
            else
                for (long c = 0; c < C; c++) o[c] += e[c];
        }
        if (!is_max) {
            const float inv = 1.0f / (float)(count_pad ? size : b - a);
            for (long c = 0; c < C; c++) o[c] *= inv;
        }
    }
}

/* A step counter kept exactly in two floats of a state row (hi * 2^24 + lo), so the state
 * stays plain finite floats however long a stream runs. */
static inline double fl_count_get(const float *cnt) { return (double)cnt[0] * 16777216.0 + (double)cnt[1]; }
static inline void fl_count_inc(float *cnt)
{
    cnt[1] += 1.0f;
    if (cnt[1] >= 16777216.0f) {
        cnt[1] = 0.0f;
        cnt[0] += 1.0f;
    }
}

/* One step of a global pool's running state for one stream: state = [count (2 floats) | acc (C)];
 * y = the pool over every step so far. */
static void fl_global_pool_step(int is_max, float *state, const float *x, float *y, long C)
{
    float *acc = state + 2;
    const int first = fl_count_get(state) == 0.0;
    fl_count_inc(state);
    if (is_max) {
        for (long c = 0; c < C; c++) acc[c] = first || x[c] > acc[c] ? x[c] : acc[c];
        for (long c = 0; c < C; c++) y[c] = acc[c];
    } else {
        const float inv = (float)(1.0 / fl_count_get(state));
        for (long c = 0; c < C; c++) acc[c] += x[c];
        for (long c = 0; c < C; c++) y[c] = acc[c] * inv;
    }
}

#endif /* FASTLSTM_LAYERS_H */
