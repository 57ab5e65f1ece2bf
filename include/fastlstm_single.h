/* One direction of one layer for a single stream (batch of one row), split
 * over the threads of a team (_kernels.pyx: run_team).
 *
 * A single stream's step is a matrix-vector product: memory-bound once the
 * weights leave one core's L2, so two cores -- each streaming its own part of
 * the weights from its own L2 -- are up to twice as fast.  Thread k owns a
 * range of hidden units: it computes those units' columns of every gate block
 * (so every thread reads the same share of the weights, whatever the blocks a
 * layer skips) and then updates their state, which needs no other thread's
 * gates.  One barrier per step then lets every thread read the whole new h.
 * Every column and unit gets the same arithmetic, in the same order, as with
 * one thread (fl_gemv_acc's chain per column), so results do not depend on
 * the thread count.
 */
#ifndef FASTLSTM_SINGLE_H
#define FASTLSTM_SINGLE_H

#include "fastlstm_barrier.h"
#include "fastlstm_cell.h"
#include "fastlstm_gemm.h"
#include "fastlstm_layers.h"

/* z[a:b] += v[0:k] @ rows k0:k0+k, columns a:b of the stacked weights W (row
 * stride ldw): from its panels Wp (ps floats apart; NULL when there are none)
 * where column a starts one, else from W.  Nothing when the range is empty. */
static inline void fl_gemv_cols(const float *v, long k, long k0, const float *W, long ldw, const float *Wp, long ps,
                                long a, long b, float *z)
{
    if (b <= a) return;
    if (Wp != NULL && a % FL_PANEL == 0)
        fl_gemv_panels(v, k, Wp + (a / FL_PANEL) * ps + k0 * FL_PANEL, ps, b - a, z + a);
    else
        fl_gemv_acc(v, k, W + k0 * ldw + a, ldw, b - a, z + a);
}

/* This thread's part (tid of nt, barrier bar) of tn steps of one direction of a layer of
 * kind FL_LAYER_LSTM, FL_LAYER_GRU (reset after the product) or FL_LAYER_RNN.
 *   gates  (tn, G): bias (+ x @ W_x when x == NULL) already in; overwritten
 *   x      (tn, n_in) input rows (row stride ldx), or NULL: then each thread adds
 *          its columns of x @ W_x itself (used for a single step, where a separate
 *          product would run on one core)
 *   W      (n_in + H, G) row-major [W_x; W_h]: LSTM G = 4H, gate blocks [i f o g];
 *          GRU G = 4H, [r z n_x n_h], whose zero blocks (x rows of n_h, h rows of n_x)
 *          are skipped; RNN G = H.  Wp, ps: the same in panels, or NULL
 *   h, c   (H,) state in/out (c: LSTM only);  hnext (H,) scratch
 *   out    step t's h goes to out + dst * ldo, dst = processing index if
 *          go_backwards else t (re-aligned to input time)
 */
static void fl_lstm_single_part(int tid, int nt, fl_spin_barrier *bar, int tn, int reverse, int go_backwards,
                                float *gates, const float *x, long ldx, long n_in, const float *W, const float *Wp,
                                long ps, long H, long G, int kind, float *h, float *c, float *hnext, float *out,
                                long ldo, int gate_act, int cell_act)
{
    const int gru = kind == FL_LAYER_GRU;
    const int blocks = (int)(G / H);
    long u0, u1;
    fl_split_range(H, tid, nt, &u0, &u1);
    float *hin = h, *hout = hnext;
    for (int s = 0; s < tn; s++) {
        const int t = reverse ? tn - 1 - s : s;
        float *g = gates + (long)t * G;
        for (int k = 0; k < blocks; k++) {
            const long a = k * H + u0, b = k * H + u1;
            if (x != NULL && !(gru && k == 3)) fl_gemv_cols(x + (long)t * ldx, n_in, 0, W, G, Wp, ps, a, b, g);
            if (!(gru && k == 2)) fl_gemv_cols(hin, H, n_in, W, G, Wp, ps, a, b, g);
        }
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
        /* Everyone has read all of hin (so it may be overwritten next step) and
         * written its units of hout (so all of it may be read). */
        fl_spin_barrier_wait(bar, nt);
        float *tmp = hin;
        hin = hout;
        hout = tmp;
    }
    if (hin != h)
        for (long j = u0; j < u1; j++) h[j] = hin[j];
}

#endif /* FASTLSTM_SINGLE_H */
