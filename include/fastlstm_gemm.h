/* C[m, n] += A[m, k] @ W for small m (a chunk of batch rows), with W packed
 * once at load into panels of 16 columns.
 *
 * BLAS packs the weights again on every call; at the 3-64 rows of one step of
 * a batch that packing is as costly as the multiply (OpenBLAS ran 32x1536x4096
 * at 43 GFLOP/s here, this kernel at 64-70).  Panel p holds W[0:k, 16p:16p+16]
 * row-major (k x 16, zero-padded past n), panels ps floats apart, so a
 * product with rows k0.. of W starts at Wp + 16*k0 with the same ps.
 *
 * The kernel is AVX-512 (eight rows x one zmm of 16 columns per pass over k,
 * so eight FMA chains are in flight); fl_packed_gemm_available() says whether
 * this CPU and compiler have it, and the caller uses BLAS otherwise.
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

__attribute__((target("avx512f")))
static void fl_gemm_packed(long m, long n, long k, const float *restrict A, long lda,
                           const float *restrict Wp, long ps, float *restrict C, long ldc)
{
    const long np = (n + FL_PANEL - 1) / FL_PANEL;
    for (long p = 0; p < np; p++) {
        const float *w = Wp + p * ps;
        const long j0 = p * FL_PANEL, nw = n - j0 < FL_PANEL ? n - j0 : FL_PANEL;
        const __mmask16 mask = (__mmask16)((1u << nw) - 1u);
        long r = 0;
        for (; r + 8 <= m; r += 8) {
            __m512 acc[8];
            const float *a = A + r * lda;
            for (int q = 0; q < 8; q++) acc[q] = _mm512_setzero_ps();
            for (long i = 0; i < k; i++) {
                const __m512 wv = _mm512_loadu_ps(w + i * FL_PANEL);
                for (int q = 0; q < 8; q++)
                    acc[q] = _mm512_fmadd_ps(_mm512_set1_ps(a[q * lda + i]), wv, acc[q]);
            }
            for (int q = 0; q < 8; q++) {
                float *c = C + (r + q) * ldc + j0;
                _mm512_mask_storeu_ps(c, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, c), acc[q]));
            }
        }
        for (; r < m; r++) {
            __m512 acc = _mm512_setzero_ps();
            const float *a = A + r * lda;
            for (long i = 0; i < k; i++)
                acc = _mm512_fmadd_ps(_mm512_set1_ps(a[i]), _mm512_loadu_ps(w + i * FL_PANEL), acc);
            float *c = C + r * ldc + j0;
            _mm512_mask_storeu_ps(c, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, c), acc));
        }
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
