/* One direction of one layer for a single stream (batch of one row), split
 * over the threads of a team (_kernels.pyx: run_team).
 *
 * A single stream's step is a matrix-vector product: memory-bound once the
 * weights leave one core's L2, so two cores -- each streaming its own half of
 * the weights from its own L2 -- are up to twice as fast.  Each step has two
 * phases, each ended by a barrier:
 *   1. thread k computes a contiguous range of the 4H gate columns (long
 *      contiguous runs of every weight row, which the prefetchers stream well);
 *   2. thread k updates c and h of a range of hidden units (it needs all four
 *      gates of its units, written by various threads in phase 1).
 * Every column and unit gets the same arithmetic, in the same order, as with
 * one thread, so results do not depend on the thread count.
 */
#ifndef FASTLSTM_SINGLE_H
#define FASTLSTM_SINGLE_H

#include "fastlstm_cell.h"
#include "fastlstm_layers.h"
#include "fastlstm_barrier.h"

/* z[a:b] += v[0:k] @ W[:, a:b], nothing when the range is empty. */
static inline void fl_gemv_cols(const float *v, long k, const float *W, long ldw, long a, long b, float *z)
{
    if (b > a) fl_gemv_acc(v, k, W + a, ldw, b - a, z + a);
}

/* This thread's part (tid of nt, barrier bar) of tn steps of one direction of a layer of
 * kind FL_LAYER_LSTM, FL_LAYER_GRU (reset after the product) or FL_LAYER_RNN.
 *   gates  (tn, G): bias (+ x @ W_x when x == NULL) already in; overwritten
 *   x      (tn, n_in) input rows (row stride ldx), or NULL: then each thread adds
 *          its columns of x @ W_x itself (used for a single step, where a separate
 *          product would run on one core)
 *   W      (n_in + H, G) row-major [W_x; W_h]: LSTM G = 4H, gate columns [i f o g];
 *          GRU G = 4H, [r z n_x n_h], whose zero blocks (x rows of n_h, h rows of n_x)
 *          are skipped; RNN G = H
 *   h, c   (H,) state in/out (c: LSTM only);  hnext (H,) scratch
 *   out    step t's h goes to out + dst * ldo, dst = processing index if
 *          go_backwards else t (re-aligned to input time)
 */
static void fl_lstm_single_part(int tid, int nt, fl_spin_barrier *bar, int tn, int reverse, int go_backwards,
                                float *gates, const float *x, long ldx, long n_in, const float *W, long H, long G,
                                int kind, float *h, float *c, float *hnext, float *out, long ldo, int gate_act,
                                int cell_act)
{
    const float *Wh = W + n_in * G;
    const int gru = kind == FL_LAYER_GRU;
    long c0, c1, u0, u1;
    fl_split_range(G, tid, nt, &c0, &c1);
    fl_split_range(H, tid, nt, &u0, &u1);
    /* This thread's columns the x rows and the h rows are not zero in: x rows [c0, x1), h rows
     * [c0, h1) and [h2, c1) (a GRU's x rows end at n_h, its h rows skip n_x). */
    const long x1 = gru && c1 > 3 * H ? 3 * H : c1;
    const long h1 = gru && c1 > 2 * H ? 2 * H : c1;
    const long h2 = gru ? (c0 > 3 * H ? c0 : 3 * H) : c1;
    float *hin = h, *hout = hnext;
    for (int s = 0; s < tn; s++) {
        const int t = reverse ? tn - 1 - s : s;
        float *g = gates + (long)t * G;
        if (x != NULL) fl_gemv_cols(x + (long)t * ldx, n_in, W, G, c0, x1, g);
        fl_gemv_cols(hin, H, Wh, G, c0, h1, g);
        fl_gemv_cols(hin, H, Wh, G, h2, c1, g);
        fl_spin_barrier_wait(bar, nt);
        if (u1 > u0) {
            if (kind == FL_LAYER_LSTM)
                fl_cell_units(g + u0, H, c + u0, hout + u0, u1 - u0, gate_act, cell_act);
            else if (gru)
                fl_gru_rows(g + u0, G, H, hin + u0, 0, hout + u0, 0, 1, u1 - u0, gate_act, cell_act);
            else
                fl_rnn_rows(g + u0, G, hout + u0, 0, 1, u1 - u0, cell_act);
            float *o = out + (long)(go_backwards ? s : t) * ldo;
            for (long j = u0; j < u1; j++) o[j] = hout[j];
        }
        /* Everyone has read hin and written its part of hout. */
        fl_spin_barrier_wait(bar, nt);
        float *tmp = hin;
        hin = hout;
        hout = tmp;
    }
    if (hin != h)
        for (long j = u0; j < u1; j++) h[j] = hin[j];
}

#endif /* FASTLSTM_SINGLE_H */
