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
 *                    the kernel broadcasts from one sequential stream.  The step
 *                    kernels use it for [x_t | h] @ [W_x; W_h].
 *   fl_gemm_packed   C += A @ W with a plain row-major A, for tall products (a
 *                    whole sequence's input projection).
 * Each has a version per instruction-set path (fastlstm_isa.h), with a register
 * block sized to its registers:
 *   AVX-512  12 rows x 2 panels (24 of 32 zmm accumulators) for a packed A,
 *            8 x 2 for a plain one
 *   AVX2     6 rows x 1 panel (12 of 16 ymm accumulators)
 *   generic  5 rows (aarch64: 20 of 32 NEON registers) or 3 rows (x86-64 SSE2:
 *            12 of 16) x 1 panel, in GCC vector extensions, so one source
 *            compiles to NEON fmla (by element) or SSE mul/add
 * Per step of k a block loads a panel row and broadcasts one A value per row,
 * so the FMA units stay busy without running out of load slots (AVX-512: 8 x 1
 * blocks ran 15-30% slower, 8 x 2 on an unpacked A 6-16% slower than 12 x 2).
 * Every output element is the same chain over k in order, acc = acc + a[k] *
 * w[k][j], starting from the bias or from the value already in C (so a product
 * split in consecutive parts over k, x rows then h rows, is one chain) --
 * whichever block shape computes it.  fl_matmul_acc (fastlstm_cell.h), for a
 * single row or narrow weights, computes the same chain, so results do not
 * depend on m, on n, on how a caller splits the columns over threads, or on
 * whether a row is stepped alone or in a batch.  AVX-512 and AVX2 both fuse every multiply-add,
 * so they agree bit for bit; the generic path fuses them where the target has
 * FMA (aarch64), in every kernel alike.
 *
 * fl_packed_gemm_available() says whether the compiler builds these kernels
 * (GCC or clang); the caller uses fl_matmul_acc otherwise.
 */
#ifndef FASTLSTM_GEMM_H
#define FASTLSTM_GEMM_H

#include "fastlstm_cell.h"
#include "fastlstm_isa.h"

#define FL_PANEL 16

#if defined(__GNUC__)

static int fl_packed_gemm_available(void) { return 1; }

/* Weight rows a block asks for ahead of use.  A panel pair of a step's product
 * (k x 32 floats, 48 KB at k = 384) does not fit L1, so each row block streams
 * it from L2 again, and the hardware prefetcher alone left the FMAs waiting on
 * those loads: prefetching 16 rows ahead ran the step shapes 10% faster.  (A
 * prefetch past the end of a panel is harmless: prefetches never fault.) */
#define FL_PREFETCH_ROWS 16

/* Tall products go in blocks of 128 rows so that A stays in L2 while the
 * panels stream past it. */
#define FL_GEMM_ROW_BLOCK 128

/* Full unrolling of the small loops over a block's rows and vectors, which
 * lets the compiler keep the accumulator array in registers. */
#define FL_UNROLL _Pragma("GCC unroll 16")

/* Rows per register block of the AVX2 and generic kernels. */
#define FL_AVX2_ROWS 6
#if defined(__aarch64__)
#define FL_GENERIC_ROWS 5 /* 6 spilled an accumulator: 24 + 4 weights + 6 broadcasts > 32 */
#else
#define FL_GENERIC_ROWS 3
#endif

/* Rows of the packed-A block that starts at row r of m, for the path in use
 * (fl_pack_a and fl_gemm_apacked must agree).  AVX-512: blocks of 12 (24
 * accumulators; 12-row blocks ran 6-16% faster than 8-row ones on the step
 * shapes), then 8, 4 and 1; the one-panel kernels: their row count, then the
 * rest as one block. */
static inline int fl_pack_rows(long m, long r)
{
    const long left = m - r;
    if (fl_isa == FL_ISA_AVX512) return left >= 12 ? 12 : left >= 8 ? 8 : left >= 4 ? 4 : 1;
    const long most = fl_isa == FL_ISA_AVX2 ? FL_AVX2_ROWS : FL_GENERIC_ROWS;
    return (int)(left < most ? left : most);
}

/* Columns i0..i1 of the packed A (m rows, k wide) <- src, where src[r * lds + (i - i0)]
 * is element (r, i).  Block b of R rows starting at row r0 stores element
 * (r0 + j, i) at ap[r0 * k + i * R + j].  Threads of a team each pack the
 * columns they own. */
static void fl_pack_a(long m, long k, float *restrict ap, long i0, long i1, const float *restrict src, long lds)
{
    for (long r0 = 0; r0 < m;) {
        const int R = fl_pack_rows(m, r0);
        const float *rows = src + r0 * lds - i0;
        float *out = ap + r0 * k + i0 * R;
        for (long i = i0; i < i1; i++, out += R) /* writes are sequential */
            for (int j = 0; j < R; j++) out[j] = rows[j * lds + i];
        r0 += R;
    }
}

/* ---- AVX2 and generic kernels: one panel per block ---------------------------
 * fl_gemm_block_<isa>_body(R, k, a, ars, ais, w, c, ldc, nc, bias): R rows x
 * one panel over all k, c += a @ w, or c = bias + a @ w when bias is given (c
 * is then not read).  Element (r, i) of A is at a[r * ars + i * ais]: ars =
 * lda, ais = 1 for a plain row-major A; ars = 1, ais = R for a packed block.
 * Only the first nc (1..16) columns of c and bias are touched.
 *
 * fl_gemm_panel_<isa>(m, k, a, lda, w, c, ldc, nc, bias): all m rows against
 * one panel, in blocks of the path's row count (the last one shorter); A is
 * row-major with row stride lda, or packed by fl_pack_a when lda is 0. */
typedef void (*fl_gemm_panel_fn)(long m, long k, const float *a, long lda, const float *w, float *c, long ldc, int nc,
                                 const float *bias);

/* Block b of rows r..r+R: where it starts, and its row and column strides. */
#define FL_BLOCK_ARGS(a, lda, k, r, R)                                                                                 \
    ((lda) ? (a) + (r) * (lda) : (a) + (r) * (k)), ((lda) ? (lda) : 1), ((lda) ? 1 : (R))

/* Generic: 4-float vectors of GCC's vector extensions (fl_v4: SSE2 on x86-64,
 * NEON on aarch64, where -ffp-contract=fast turns acc + a * w into one fmla).
 * Columns 4q..4q+3 of row p, the ones past nc as zero. */
FL_INLINE fl_v4 fl_v4_load_cols(const float *p, int q, int nc)
{
    if (4 * q + 4 <= nc) return *(const fl_v4u *)(p + 4 * q);
    fl_v4 v = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int j = 0; 4 * q + j < nc && j < 4; j++) v[j] = p[4 * q + j];
    return v;
}

FL_INLINE void fl_v4_store_cols(float *p, int q, int nc, fl_v4 v)
{
    if (4 * q + 4 <= nc)
        *(fl_v4u *)(p + 4 * q) = v;
    else
        for (int j = 0; 4 * q + j < nc && j < 4; j++) p[4 * q + j] = v[j];
}

FL_INLINE void fl_gemm_block_generic_body(const int R, long k, const float *restrict a, long ars, long ais,
                                          const float *restrict w, float *restrict c, long ldc, int nc,
                                          const float *restrict bias)
{
    fl_v4 acc[FL_GENERIC_ROWS][4];
    for (int q = 0; q < 4; q++) {
        for (int r = 0; r < R; r++) acc[r][q] = fl_v4_load_cols(bias ? bias : c + r * ldc, q, nc);
    }
    for (long i = 0; i < k; i++) {
        const fl_v4u *wr = (const fl_v4u *)(w + i * FL_PANEL);
        const fl_v4 w0 = wr[0], w1 = wr[1], w2 = wr[2], w3 = wr[3];
        __builtin_prefetch(w + (i + FL_PREFETCH_ROWS) * FL_PANEL);
        for (int r = 0; r < R; r++) {
            const float x = a[r * ars + i * ais];
            const fl_v4 av = {x, x, x, x};
            acc[r][0] += av * w0;
            acc[r][1] += av * w1;
            acc[r][2] += av * w2;
            acc[r][3] += av * w3;
        }
    }
    for (int r = 0; r < R; r++)
        for (int q = 0; q < 4; q++) fl_v4_store_cols(c + r * ldc, q, nc, acc[r][q]);
}

static void fl_gemm_panel_generic(long m, long k, const float *a, long lda, const float *w, float *c, long ldc, int nc,
                                  const float *bias)
{
    for (long r = 0; r < m; r += FL_GENERIC_ROWS) {
        const int R = (int)(m - r < FL_GENERIC_ROWS ? m - r : FL_GENERIC_ROWS);
        float *cr = c + r * ldc;
        switch (R) { /* a constant R per copy keeps the accumulators in registers */
#if FL_GENERIC_ROWS == 5
        case 5:
            fl_gemm_block_generic_body(5, k, FL_BLOCK_ARGS(a, lda, k, r, 5), w, cr, ldc, nc, bias);
            break;
        case 4:
            fl_gemm_block_generic_body(4, k, FL_BLOCK_ARGS(a, lda, k, r, 4), w, cr, ldc, nc, bias);
            break;
#endif
        case 3:
            fl_gemm_block_generic_body(3, k, FL_BLOCK_ARGS(a, lda, k, r, 3), w, cr, ldc, nc, bias);
            break;
        case 2:
            fl_gemm_block_generic_body(2, k, FL_BLOCK_ARGS(a, lda, k, r, 2), w, cr, ldc, nc, bias);
            break;
        default:
            fl_gemm_block_generic_body(1, k, FL_BLOCK_ARGS(a, lda, k, r, 1), w, cr, ldc, nc, bias);
            break;
        }
    }
}

#if FL_X86
/* AVX2: R <= 6 rows x 1 panel: 12 ymm accumulators (a panel is two ymm
 * vectors), 2 weight vectors and a broadcast.  Measured in CPU time on the
 * step shapes (m = 36, k = 384-512, n = 1024) it ran at 110-117 GFLOP/s, near
 * the core's AVX2 peak, against 100-106 for 3 rows x 2 panels (also 12
 * accumulators), and 112 against 90 on a tall projection (k = 16): a panel
 * (k x 16 floats) stays in L1 while the row blocks go past it, where a pair
 * outgrows it.  Both needed FL_UNROLL: without it GCC stored every accumulator
 * to the stack on every k.  Masked loads and stores keep the columns past nc
 * untouched. */
FL_TARGET_AVX2 FL_INLINE void fl_gemm_block_avx2_body(const int R, long k, const float *restrict a, long ars, long ais,
                                                      const float *restrict w, float *restrict c, long ldc, int nc,
                                                      const float *restrict bias)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i mask[2] = {_mm256_cmpgt_epi32(_mm256_set1_epi32(nc), lane),
                             _mm256_cmpgt_epi32(_mm256_set1_epi32(nc - 8), lane)};
    __m256 acc[FL_AVX2_ROWS][2];
    FL_UNROLL for (int q = 0; q < 2; q++) FL_UNROLL for (int r = 0; r < R; r++)
    {
        const float *from = (bias ? bias : c + r * ldc) + 8 * q;
        acc[r][q] = nc == FL_PANEL ? _mm256_loadu_ps(from) : _mm256_maskload_ps(from, mask[q]);
    }
    for (long i = 0; i < k; i++) {
        const __m256 w0 = _mm256_loadu_ps(w + i * FL_PANEL), w1 = _mm256_loadu_ps(w + i * FL_PANEL + 8);
        _mm_prefetch((const char *)(w + (i + FL_PREFETCH_ROWS) * FL_PANEL), _MM_HINT_T0);
        FL_UNROLL for (int r = 0; r < R; r++)
        {
            const __m256 av = _mm256_broadcast_ss(a + r * ars + i * ais);
            acc[r][0] = _mm256_fmadd_ps(av, w0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(av, w1, acc[r][1]);
        }
    }
    FL_UNROLL for (int r = 0; r < R; r++) FL_UNROLL for (int q = 0; q < 2; q++)
    {
        float *cc = c + r * ldc + 8 * q;
        if (nc == FL_PANEL)
            _mm256_storeu_ps(cc, acc[r][q]);
        else
            _mm256_maskstore_ps(cc, mask[q], acc[r][q]);
    }
}

FL_TARGET_AVX2 static void fl_gemm_panel_avx2(long m, long k, const float *a, long lda, const float *w, float *c,
                                              long ldc, int nc, const float *bias)
{
    for (long r = 0; r < m; r += FL_AVX2_ROWS) {
        const int R = (int)(m - r < FL_AVX2_ROWS ? m - r : FL_AVX2_ROWS);
        float *cr = c + r * ldc;
        switch (R) { /* a constant R per copy keeps the accumulators in registers */
        case 6:
            fl_gemm_block_avx2_body(6, k, FL_BLOCK_ARGS(a, lda, k, r, 6), w, cr, ldc, nc, bias);
            break;
        case 5:
            fl_gemm_block_avx2_body(5, k, FL_BLOCK_ARGS(a, lda, k, r, 5), w, cr, ldc, nc, bias);
            break;
        case 4:
            fl_gemm_block_avx2_body(4, k, FL_BLOCK_ARGS(a, lda, k, r, 4), w, cr, ldc, nc, bias);
            break;
        case 3:
            fl_gemm_block_avx2_body(3, k, FL_BLOCK_ARGS(a, lda, k, r, 3), w, cr, ldc, nc, bias);
            break;
        case 2:
            fl_gemm_block_avx2_body(2, k, FL_BLOCK_ARGS(a, lda, k, r, 2), w, cr, ldc, nc, bias);
            break;
        default:
            fl_gemm_block_avx2_body(1, k, FL_BLOCK_ARGS(a, lda, k, r, 1), w, cr, ldc, nc, bias);
            break;
        }
    }
}
#endif

/* Columns of panel p that exist (the last may be partial). */
static inline int fl_panel_cols(long n, long p)
{
    const long left = n - p * FL_PANEL;
    return (int)(left < FL_PANEL ? left : FL_PANEL);
}

/* fl_gemm_packed one panel at a time: a panel (k x 16 floats, 32 KB at
 * k = 512) stays in L1 while the row blocks go past it. */
static void fl_gemm_packed_panels(fl_gemm_panel_fn panel, long m, long n, long k, const float *A, long lda,
                                  const float *Wp, long ps, float *C, long ldc)
{
    const long np = (n + FL_PANEL - 1) / FL_PANEL;
    for (long m0 = 0; m0 < m; m0 += FL_GEMM_ROW_BLOCK) {
        const long rows = m - m0 < FL_GEMM_ROW_BLOCK ? m - m0 : FL_GEMM_ROW_BLOCK;
        for (long p = 0; p < np; p++)
            panel(rows, k, A + m0 * lda, lda, Wp + p * ps, C + m0 * ldc + p * FL_PANEL, ldc, fl_panel_cols(n, p), NULL);
    }
}

/* fl_gemm_apacked one panel at a time (A packed in blocks of the path's row count). */
static void fl_gemm_apacked_panels(fl_gemm_panel_fn panel, long m, long n, long k, const float *ap, const float *Wp,
                                   long ps, const float *bias, float *C, long ldc)
{
    const long np = (n + FL_PANEL - 1) / FL_PANEL;
    for (long p = 0; p < np; p++)
        panel(m, k, ap, 0, Wp + p * ps, C + p * FL_PANEL, ldc, fl_panel_cols(n, p), bias + p * FL_PANEL);
}

#if FL_X86
/* ---- AVX-512 ---------------------------------------------------------------- */
/* R rows (<= 12) x NP panels (<= 2) over all k: c += a @ w (the sums start
 * from c), or with a bias row c = bias + a @ w (they start from the bias and c
 * is not read).  Element (r, i) of A is at
 * a[r * ars + i * ais]: ars = lda, ais = 1 for a plain row-major A; ars = 1,
 * ais = R for a packed block (fl_pack_a), whose broadcasts then come from one
 * sequential stream.  `last` masks the columns of the final panel. */
FL_TARGET_AVX512 FL_INLINE void fl_gemm_block512(const int R, const int NP, long k, const float *restrict a, long ars,
                                                 long ais, const float *restrict w, long ps, float *restrict c,
                                                 long ldc, __mmask16 last, const float *restrict bias)
{
    __m512 acc[12][2];
    for (int q = 0; q < NP; q++) {
        const __mmask16 mask = q == NP - 1 ? last : (__mmask16)0xffff;
        for (int r = 0; r < R; r++) acc[r][q] = _mm512_maskz_loadu_ps(mask, (bias ? bias : c + r * ldc) + q * FL_PANEL);
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
            _mm512_mask_storeu_ps(c + r * ldc + q * FL_PANEL, mask, acc[r][q]);
        }
}

/* Rows m0..m1 of a row-major A against one column group of NP panels: 8, 4, 1 rows at a time. */
FL_TARGET_AVX512 FL_INLINE void fl_gemm_rows512(const int NP, long m0, long m1, long k, const float *A, long lda,
                                                const float *w, long ps, float *C, long ldc, __mmask16 last)
{
    long r = m0;
    for (; r + 8 <= m1; r += 8) fl_gemm_block512(8, NP, k, A + r * lda, lda, 1, w, ps, C + r * ldc, ldc, last, NULL);
    for (; r + 4 <= m1; r += 4) fl_gemm_block512(4, NP, k, A + r * lda, lda, 1, w, ps, C + r * ldc, ldc, last, NULL);
    for (; r < m1; r++) fl_gemm_block512(1, NP, k, A + r * lda, lda, 1, w, ps, C + r * ldc, ldc, last, NULL);
}

FL_TARGET_AVX512 static inline __mmask16 fl_tail_mask(long n, long np)
{
    return (__mmask16)((1u << (n - (np - 1) * FL_PANEL)) - 1u);
}

FL_TARGET_AVX512 static void fl_gemm_packed_avx512(long m, long n, long k, const float *restrict A, long lda,
                                                   const float *restrict Wp, long ps, float *restrict C, long ldc)
{
    const long np = (n + FL_PANEL - 1) / FL_PANEL;
    for (long m0 = 0; m0 < m; m0 += FL_GEMM_ROW_BLOCK) {
        const long m1 = m - m0 < FL_GEMM_ROW_BLOCK ? m : m0 + FL_GEMM_ROW_BLOCK;
        long p = 0;
        for (; p + 2 <= np; p += 2)
            fl_gemm_rows512(2, m0, m1, k, A, lda, Wp + p * ps, ps, C + p * FL_PANEL, ldc,
                            p + 2 == np ? fl_tail_mask(n, np) : (__mmask16)0xffff);
        if (p < np) fl_gemm_rows512(1, m0, m1, k, A, lda, Wp + p * ps, ps, C + p * FL_PANEL, ldc, fl_tail_mask(n, np));
    }
}

FL_TARGET_AVX512 FL_INLINE void fl_gemm_apacked_group512(const int NP, long m, long k, const float *ap, const float *w,
                                                         long ps, float *C, long ldc, __mmask16 last, const float *bias)
{
    for (long r0 = 0; r0 < m;) {
        const int R = fl_pack_rows(m, r0);
        const float *blk = ap + r0 * k;
        float *c = C + r0 * ldc;
        if (R == 12)
            fl_gemm_block512(12, NP, k, blk, 1, 12, w, ps, c, ldc, last, bias);
        else if (R == 8)
            fl_gemm_block512(8, NP, k, blk, 1, 8, w, ps, c, ldc, last, bias);
        else if (R == 4)
            fl_gemm_block512(4, NP, k, blk, 1, 4, w, ps, c, ldc, last, bias);
        else
            fl_gemm_block512(1, NP, k, blk, 1, 1, w, ps, c, ldc, last, bias);
        r0 += R;
    }
}

FL_TARGET_AVX512 static void fl_gemm_apacked_avx512(long m, long n, long k, const float *restrict ap,
                                                    const float *restrict Wp, long ps, const float *restrict bias,
                                                    float *restrict C, long ldc)
{
    const long np = (n + FL_PANEL - 1) / FL_PANEL;
    long p = 0;
    for (; p + 2 <= np; p += 2)
        fl_gemm_apacked_group512(2, m, k, ap, Wp + p * ps, ps, C + p * FL_PANEL, ldc,
                                 p + 2 == np ? fl_tail_mask(n, np) : (__mmask16)0xffff, bias + p * FL_PANEL);
    if (p < np)
        fl_gemm_apacked_group512(1, m, k, ap, Wp + p * ps, ps, C + p * FL_PANEL, ldc, fl_tail_mask(n, np),
                                 bias + p * FL_PANEL);
}
#endif /* FL_X86 */

/* C[m, n] += A[m, k] @ W, A row-major: for tall products (a whole sequence's
 * input projection). */
static void fl_gemm_packed(long m, long n, long k, const float *restrict A, long lda, const float *restrict Wp, long ps,
                           float *restrict C, long ldc)
{
#if FL_X86
    if (fl_isa == FL_ISA_AVX512)
        fl_gemm_packed_avx512(m, n, k, A, lda, Wp, ps, C, ldc);
    else if (fl_isa == FL_ISA_AVX2)
        fl_gemm_packed_panels(fl_gemm_panel_avx2, m, n, k, A, lda, Wp, ps, C, ldc);
    else
#endif
        fl_gemm_packed_panels(fl_gemm_panel_generic, m, n, k, A, lda, Wp, ps, C, ldc);
}

/* z[0:n] += v[0:k] @ W for W in panels (Wp, ps as above): a single row's
 * product, FL_GEMV_VECS panels at a time.  Each panel is one sequential
 * stream, which the prefetchers follow; in the row-major W a column block's
 * rows are a whole gate row apart (4 KB at H = 256), which defeats them, and a
 * single stream's step was bound by that.  The same chain per column as
 * fl_matmul_acc (fastlstm_cell.h), so either gives the same bits. */
#define FL_GEMV_PANELS_BODY(W)                                                                                         \
    FL_INLINE void fl_gemv_panels_w##W(const float *restrict v, long k, const float *restrict Wp, long ps, long n,     \
                                       float *restrict z)                                                              \
    {                                                                                                                  \
        enum { S = FL_PANEL / W, NV = FL_GEMV_VECS * S };                                                              \
        long j = 0;                                                                                                    \
        for (; j + FL_PANEL * FL_GEMV_VECS <= n; j += FL_PANEL * FL_GEMV_VECS) {                                       \
            const float *w = Wp + (j / FL_PANEL) * ps;                                                                 \
            fl_v##W acc[NV];                                                                                           \
            for (int q = 0; q < NV; q++) acc[q] = *(const fl_v##W##u *)(z + j + W * q);                                \
            for (long i = 0; i < k; i++) {                                                                             \
                const float x = v[i];                                                                                  \
                for (int q = 0; q < NV; q++)                                                                           \
                    acc[q] += x * *(const fl_v##W##u *)(w + (q / S) * ps + i * FL_PANEL + (q % S) * W);                \
            }                                                                                                          \
            for (int q = 0; q < NV; q++) *(fl_v##W##u *)(z + j + W * q) = acc[q];                                      \
        }                                                                                                              \
        for (; j < n; j += FL_PANEL) {                                                                                 \
            /* One panel; the last may be partial (its padding columns are zeros, not stored). */                      \
            const float *w = Wp + (j / FL_PANEL) * ps;                                                                 \
            const long nc = n - j < FL_PANEL ? n - j : FL_PANEL;                                                       \
            float t[FL_PANEL] = {0.0f};                                                                                \
            fl_v##W acc[S];                                                                                            \
            for (long c = 0; c < nc; c++) t[c] = z[j + c];                                                             \
            for (int q = 0; q < S; q++) acc[q] = *(const fl_v##W##u *)(t + W * q);                                     \
            for (long i = 0; i < k; i++)                                                                               \
                for (int q = 0; q < S; q++) acc[q] += v[i] * *(const fl_v##W##u *)(w + i * FL_PANEL + W * q);          \
            for (int q = 0; q < S; q++) *(fl_v##W##u *)(t + W * q) = acc[q];                                           \
            for (long c = 0; c < nc; c++) z[j + c] = t[c];                                                             \
        }                                                                                                              \
    }
FL_GEMV_PANELS_BODY(16)
FL_GEMV_PANELS_BODY(8)
FL_GEMV_PANELS_BODY(4)
FL_WIDTH_VARIANTS(fl_gemv_panels,
                  (const float *restrict v, long k, const float *restrict Wp, long ps, long n, float *restrict z),
                  (v, k, Wp, ps, n, z))

/* C[m, n] = bias[n] + A[m, k] @ W, with A packed by fl_pack_a. */
static void fl_gemm_apacked(long m, long n, long k, const float *restrict ap, const float *restrict Wp, long ps,
                            const float *restrict bias, float *restrict C, long ldc)
{
#if FL_X86
    if (fl_isa == FL_ISA_AVX512)
        fl_gemm_apacked_avx512(m, n, k, ap, Wp, ps, bias, C, ldc);
    else if (fl_isa == FL_ISA_AVX2)
        fl_gemm_apacked_panels(fl_gemm_panel_avx2, m, n, k, ap, Wp, ps, bias, C, ldc);
    else
#endif
        fl_gemm_apacked_panels(fl_gemm_panel_generic, m, n, k, ap, Wp, ps, bias, C, ldc);
}
#else
/* Without GCC or clang (vector extensions) nothing is packed and BLAS does every product. */
static int fl_packed_gemm_available(void) { return 0; }
static void fl_gemm_packed(long m, long n, long k, const float *A, long lda, const float *Wp, long ps, float *C,
                           long ldc)
{
    (void)m;
    (void)n;
    (void)k;
    (void)A;
    (void)lda;
    (void)Wp;
    (void)ps;
    (void)C;
    (void)ldc;
}
static void fl_pack_a(long m, long k, float *ap, long i0, long i1, const float *src, long lds)
{
    (void)m;
    (void)k;
    (void)ap;
    (void)i0;
    (void)i1;
    (void)src;
    (void)lds;
}
static void fl_gemm_apacked(long m, long n, long k, const float *ap, const float *Wp, long ps, const float *bias,
                            float *C, long ldc)
{
    (void)m;
    (void)n;
    (void)k;
    (void)ap;
    (void)Wp;
    (void)ps;
    (void)bias;
    (void)C;
    (void)ldc;
}
#endif

#endif /* FASTLSTM_GEMM_H */
