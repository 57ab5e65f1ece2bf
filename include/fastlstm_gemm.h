/* Products with the weights packed once at load into panels of 16 columns.
 *
 * BLAS packs the weights again on every call; at the 3-127 rows of one step of
 * a batch that packing costs as much as the multiply.  Panel p holds
 * W[0:k, 16p:16p+16] row-major (k x 16, zero-padded past n), panels ps floats
 * apart, so a product with rows k0.. of W starts at Wp + 16*k0 with the same
 * ps, and one with columns 16*j0.. at Wp + j0*ps.
 *
 * Two entry points:
 *   fl_gemm_apacked  one step's C = bias + A @ W, A packed first (fl_pack_a) so
 *                    the kernel broadcasts from one sequential stream; blocks of
 *                    12 rows x 2 panels (24 zmm accumulators).  The step kernels
 *                    use it for [x_t | h] @ [W_x; W_h].
 *   fl_gemm_packed   C += A @ W with a plain row-major A, 8 rows x 2 panels, for
 *                    tall products (a whole sequence's input projection).
 * Per step of k a block loads two weight vectors and broadcasts one A value per
 * row, so both FMA ports stay busy without running out of load slots (8 x 1
 * blocks ran 15-30% slower, 8 x 2 on an unpacked A 6-16% slower than 12 x 2).
 * Every output element is the same chain of FMAs over k in order, whichever
 * block shape computes it, so results do not depend on m, on n, or on how a
 * caller splits the columns over threads.
 *
 * fl_packed_gemm_available() says whether this CPU and compiler have AVX-512;
 * the caller uses BLAS otherwise.
 */
#ifndef FASTLSTM_GEMM_H
#define FASTLSTM_GEMM_H

#define FL_PANEL 16

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>

static int fl_packed_gemm_available(void)
{
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx512f") ? 1 : 0;
    }
    return known;
}

/* Weight rows a block asks for ahead of use.  A panel pair of a step's product
 * (k x 32 floats, 48 KB at k = 384) does not fit L1, so each row block streams
 * it from L2 again, and the hardware prefetcher alone left the FMAs waiting on
 * those loads: prefetching 16 rows ahead ran the step shapes 10% faster.  (A
 * prefetch past the end of a panel is harmless: prefetches never fault.) */
#define FL_PREFETCH_ROWS 16

/* R rows (<= 12) x NP panels (<= 2) over all k: c += a @ w, or with a bias
 * row c = bias + a @ w (the sums start from the bias and c is not read).  Element (r, i) of A is at
 * a[r * ars + i * ais]: ars = lda, ais = 1 for a plain row-major A; ars = 1,
 * ais = R for a packed block (fl_pack_a), whose broadcasts then come from one
 * sequential stream.  `last` masks the columns of the final panel. */
__attribute__((target("avx512f"), always_inline))
static inline void fl_gemm_block(const int R, const int NP, long k, const float *restrict a, long ars,
                                 long ais, const float *restrict w, long ps, float *restrict c, long ldc,
                                 __mmask16 last, const float *restrict bias)
{
    __m512 acc[12][2];
    for (int q = 0; q < NP; q++) {
        const __mmask16 mask = q == NP - 1 ? last : (__mmask16)0xffff;
        const __m512 b0 = bias ? _mm512_maskz_loadu_ps(mask, bias + q * FL_PANEL) : _mm512_setzero_ps();
        for (int r = 0; r < R; r++) acc[r][q] = b0;
    }
    for (long i = 0; i < k; i++) {
        __m512 wv[2];
        for (int q = 0; q < NP; q++) {
            wv[q] = _mm512_loadu_ps(w + q * ps + i * FL_PANEL);
            _mm_prefetch((const char *)(w + q * ps + (i + FL_PREFETCH_ROWS) * FL_PANEL), _MM_HINT_T0);
        }
        for (int r = 0; r < R; r++) {
            const __m512 av = _mm512_set1_ps(a[r * ars + i * ais]);
            for (int q = 0; q < NP; q++) acc[r][q] = _mm512_fmadd_ps(av, wv[q], acc[r][q]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int q = 0; q < NP; q++) {
            const __mmask16 mask = q == NP - 1 ? last : (__mmask16)0xffff;
            float *cc = c + r * ldc + q * FL_PANEL;
            const __m512 v = bias ? acc[r][q] : _mm512_add_ps(_mm512_maskz_loadu_ps(mask, cc), acc[r][q]);
            _mm512_mask_storeu_ps(cc, mask, v);
        }
}

/* Rows m0..m1 of a row-major A against one column group of NP panels: 8, 4, 1 rows at a time. */
__attribute__((target("avx512f"), always_inline))
static inline void fl_gemm_rows(const int NP, long m0, long m1, long k, const float *A, long lda,
                                const float *w, long ps, float *C, long ldc, __mmask16 last)
{
    long r = m0;
    for (; r + 8 <= m1; r += 8) fl_gemm_block(8, NP, k, A + r * lda, lda, 1, w, ps, C + r * ldc, ldc, last, NULL);
    for (; r + 4 <= m1; r += 4) fl_gemm_block(4, NP, k, A + r * lda, lda, 1, w, ps, C + r * ldc, ldc, last, NULL);
    for (; r < m1; r++) fl_gemm_block(1, NP, k, A + r * lda, lda, 1, w, ps, C + r * ldc, ldc, last, NULL);
}

#define FL_GEMM_ROW_BLOCK 128

static inline __mmask16 fl_tail_mask(long n, long np)
{
    return (__mmask16)((1u << (n - (np - 1) * FL_PANEL)) - 1u);
}

/* C[m, n] += A[m, k] @ W, A row-major: for tall products (a whole sequence's
 * input projection).  Rows go in blocks of 128 so that A stays in L2 while the
 * panels stream past it. */
__attribute__((target("avx512f")))
static void fl_gemm_packed(long m, long n, long k, const float *restrict A, long lda,
                           const float *restrict Wp, long ps, float *restrict C, long ldc)
{
    const long np = (n + FL_PANEL - 1) / FL_PANEL;
    for (long m0 = 0; m0 < m; m0 += FL_GEMM_ROW_BLOCK) {
        const long m1 = m - m0 < FL_GEMM_ROW_BLOCK ? m : m0 + FL_GEMM_ROW_BLOCK;
        long p = 0;
        for (; p + 2 <= np; p += 2)
            fl_gemm_rows(2, m0, m1, k, A, lda, Wp + p * ps, ps, C + p * FL_PANEL, ldc,
                         p + 2 == np ? fl_tail_mask(n, np) : (__mmask16)0xffff);
        if (p < np)
            fl_gemm_rows(1, m0, m1, k, A, lda, Wp + p * ps, ps, C + p * FL_PANEL, ldc, fl_tail_mask(n, np));
    }
}

/* Packed A, for the rows of one step (m <= 127 here): rows go in blocks of 12
 * (24 accumulators; 12-row blocks ran 6-16% faster than 8-row ones on the
 * step shapes), then 8, 4 and 1.  Block b of R rows starting at row r0 stores
 * element (r0 + j, i) at ap[r0 * k + i * R + j]. */
static inline int fl_pack_rows(long m, long r)
{
    const long left = m - r;
    return left >= 12 ? 12 : left >= 8 ? 8 : left >= 4 ? 4 : 1;
}

/* Columns i0..i1 of the packed A (m rows, k wide) <- src, where src[r * lds + (i - i0)]
 * is element (r, i).  Threads of a team each pack the columns they own. */
static void fl_pack_a(long m, long k, float *restrict ap, long i0, long i1, const float *restrict src,
                      long lds)
{
    for (long r0 = 0; r0 < m;) {
        const int R = fl_pack_rows(m, r0);
        const float *rows = src + r0 * lds - i0;
        float *out = ap + r0 * k + i0 * R;
        for (long i = i0; i < i1; i++, out += R)       /* writes are sequential */
            for (int j = 0; j < R; j++) out[j] = rows[j * lds + i];
        r0 += R;
    }
}

__attribute__((target("avx512f"), always_inline))
static inline void fl_gemm_apacked_group(const int NP, long m, long k, const float *ap, const float *w,
                                         long ps, float *C, long ldc, __mmask16 last, const float *bias)
{
    for (long r0 = 0; r0 < m;) {
        const int R = fl_pack_rows(m, r0);
        const float *blk = ap + r0 * k;
        float *c = C + r0 * ldc;
        if (R == 12) fl_gemm_block(12, NP, k, blk, 1, 12, w, ps, c, ldc, last, bias);
        else if (R == 8) fl_gemm_block(8, NP, k, blk, 1, 8, w, ps, c, ldc, last, bias);
        else if (R == 4) fl_gemm_block(4, NP, k, blk, 1, 4, w, ps, c, ldc, last, bias);
        else fl_gemm_block(1, NP, k, blk, 1, 1, w, ps, c, ldc, last, bias);
        r0 += R;
    }
}

/* C[m, n] = bias[n] + A[m, k] @ W, with A packed by fl_pack_a. */
__attribute__((target("avx512f")))
static void fl_gemm_apacked(long m, long n, long k, const float *restrict ap, const float *restrict Wp,
                            long ps, const float *restrict bias, float *restrict C, long ldc)
{
    const long np = (n + FL_PANEL - 1) / FL_PANEL;
    long p = 0;
    for (; p + 2 <= np; p += 2)
        fl_gemm_apacked_group(2, m, k, ap, Wp + p * ps, ps, C + p * FL_PANEL, ldc,
                              p + 2 == np ? fl_tail_mask(n, np) : (__mmask16)0xffff, bias + p * FL_PANEL);
    if (p < np)
        fl_gemm_apacked_group(1, m, k, ap, Wp + p * ps, ps, C + p * FL_PANEL, ldc, fl_tail_mask(n, np),
                              bias + p * FL_PANEL);
}
#else
/* Without AVX-512 (or GCC on x86-64) nothing is packed and BLAS does every product. */
static int fl_packed_gemm_available(void) { return 0; }
static void fl_gemm_packed(long m, long n, long k, const float *A, long lda, const float *Wp, long ps,
                           float *C, long ldc)
{
    (void)m; (void)n; (void)k; (void)A; (void)lda; (void)Wp; (void)ps; (void)C; (void)ldc;
}
static void fl_pack_a(long m, long k, float *ap, long i0, long i1, const float *src, long lds)
{
    (void)m; (void)k; (void)ap; (void)i0; (void)i1; (void)src; (void)lds;
}
static void fl_gemm_apacked(long m, long n, long k, const float *ap, const float *Wp, long ps,
                            const float *bias, float *C, long ldc)
{
    (void)m; (void)n; (void)k; (void)ap; (void)Wp; (void)ps; (void)bias; (void)C; (void)ldc;
}
#endif

#endif /* FASTLSTM_GEMM_H */
