/* C[m, n] += A[m, k] @ W with W packed once at load into panels of 16 columns.
 *
 * BLAS packs the weights again on every call; at the 3-128 rows of one step of
 * a batch that packing costs as much as the multiply.  Panel p holds
 * W[0:k, 16p:16p+16] row-major (k x 16, zero-padded past n), panels ps floats
 * apart, so a product with rows k0.. of W starts at Wp + 16*k0 with the same
 * ps, and one with columns 16*j0.. at Wp + j0*ps.
 *
 * The register block is 8 rows x 2 panels (16 zmm accumulators): per step of k
 * it loads two weight vectors and broadcasts eight A values for 16 FMAs, which
 * keeps both FMA ports busy without running out of load slots (an 8 x 1 block
 * ran 15-30% slower).  Rows go in blocks of 128 so that A stays in L2 while the
 * panels stream past it.  Every output element is the same chain of FMAs over
 * k in order, whichever block shape computes it, so results do not depend on m,
 * on n, or on how a caller splits the columns over threads.
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

/* R rows (<= 8) x NP panels (<= 2); `last` masks the columns of the final panel. */
__attribute__((target("avx512f"), always_inline))
static inline void fl_gemm_block(const int R, const int NP, long k, const float *restrict a, long lda,
                                 const float *restrict w, long ps, float *restrict c, long ldc,
                                 __mmask16 last)
{
    __m512 acc[8][2];
    for (int r = 0; r < R; r++)
        for (int q = 0; q < NP; q++) acc[r][q] = _mm512_setzero_ps();
    for (long i = 0; i < k; i++) {
        __m512 wv[2];
        for (int q = 0; q < NP; q++) wv[q] = _mm512_loadu_ps(w + q * ps + i * FL_PANEL);
        for (int r = 0; r < R; r++) {
            const __m512 av = _mm512_set1_ps(a[r * lda + i]);
            for (int q = 0; q < NP; q++) acc[r][q] = _mm512_fmadd_ps(av, wv[q], acc[r][q]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int q = 0; q < NP; q++) {
            const __mmask16 mask = q == NP - 1 ? last : (__mmask16)0xffff;
            float *cc = c + r * ldc + q * FL_PANEL;
            _mm512_mask_storeu_ps(cc, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, cc), acc[r][q]));
        }
}

/* Rows m0..m1 of one column group of NP panels, in blocks of 8, 4 and 1 rows. */
__attribute__((target("avx512f"), always_inline))
static inline void fl_gemm_rows(const int NP, long m0, long m1, long k, const float *A, long lda,
                                const float *w, long ps, float *C, long ldc, __mmask16 last)
{
    long r = m0;
    for (; r + 8 <= m1; r += 8) fl_gemm_block(8, NP, k, A + r * lda, lda, w, ps, C + r * ldc, ldc, last);
    for (; r + 4 <= m1; r += 4) fl_gemm_block(4, NP, k, A + r * lda, lda, w, ps, C + r * ldc, ldc, last);
    for (; r < m1; r++) fl_gemm_block(1, NP, k, A + r * lda, lda, w, ps, C + r * ldc, ldc, last);
}

#define FL_GEMM_ROW_BLOCK 128

__attribute__((target("avx512f")))
static void fl_gemm_packed(long m, long n, long k, const float *restrict A, long lda,
                           const float *restrict Wp, long ps, float *restrict C, long ldc)
{
    const long np = (n + FL_PANEL - 1) / FL_PANEL;
    const long tail = n - (np - 1) * FL_PANEL;
    for (long m0 = 0; m0 < m; m0 += FL_GEMM_ROW_BLOCK) {
        const long m1 = m - m0 < FL_GEMM_ROW_BLOCK ? m : m0 + FL_GEMM_ROW_BLOCK;
        long p = 0;
        for (; p + 2 <= np; p += 2) {
            const __mmask16 last = p + 2 == np ? (__mmask16)((1u << tail) - 1u) : (__mmask16)0xffff;
            fl_gemm_rows(2, m0, m1, k, A, lda, Wp + p * ps, ps, C + p * FL_PANEL, ldc, last);
        }
        if (p < np)
            fl_gemm_rows(1, m0, m1, k, A, lda, Wp + p * ps, ps, C + p * FL_PANEL, ldc,
                         (__mmask16)((1u << tail) - 1u));
    }
}
#else
static int fl_packed_gemm_available(void) { return 0; }
static void fl_gemm_packed(long m, long n, long k, const float *A, long lda, const float *Wp, long ps,
                           float *C, long ldc)
{
    (void)m; (void)n; (void)k; (void)A; (void)lda; (void)Wp; (void)ps; (void)C; (void)ldc;
}
#endif

#endif /* FASTLSTM_GEMM_H */
