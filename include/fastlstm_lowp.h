/* Reduced-precision gate products: bf16 and int8 weights (fastlstm/_packing.py packs them).
 *
 * At batch 1 a step reads every weight once, so its time is the bytes read:
 * bf16 halves them and int8 quarters them.  Only the recurrent layers' gate
 * products [x | h] @ [W_x; W_h] run here; everything else stays fp32.
 *
 * Weights come in panels of 16 columns, as in fastlstm_gemm.h, but each panel
 * row is a group of g consecutive k (g = 2 for bf16, 4 for int8) packed in one
 * 32-bit word per column: the layout vdpbf16ps, vpdpbusd and the AMX tiles
 * read.  A panel row is 64 bytes, one cache line.  The activations (the A
 * rows) are converted per call to the same groups by fl_lp_convert:
 *
 *   bf16  a word holds bf16(a[2i]) in its high half and bf16(a[2i + 1]) in its
 *         low half (round to nearest even).  vdpbf16ps adds the high product
 *         first, so every output is the fp32 chain over k in order,
 *         c = c + a[k] * w[k], from the value already in C.  A product of two
 *         bf16 is exact in fp32, so the widening fallback (bf16 -> fp32 by a
 *         shift, then one FMA or a multiply and an add per k) computes the
 *         very same bits on every path.
 *   int8  a row is quantized symmetrically with its own scale,
 *         s = max|a| / 127, q = rint(a * (127 / max|a|)), stored as the
 *         unsigned byte q + 128 (vpdpbusd multiplies unsigned by signed
 *         bytes); weights hold signed bytes, one scale per column.  The sums
 *         are exact int32; corr[j] = 128 * (column j's weight sum) removes the
 *         offset; then c = fmaf(sum, s_row * s_col[j], c).  Exact integers and
 *         one fused multiply-add: the same bits on every path.
 *
 * Results depend on neither the row count nor the block shape, so a stream
 * gets the same bits alone as in a batch.  Denormals are flushed by the
 * caller (fastlstm_fpmode.h), as vdpbf16ps always does.
 *
 * Paths (fastlstm_isa.h): AVX512-BF16 and AVX512-VNNI / AVX-VNNI intrinsics
 * where fl_ext has them; otherwise one vector-extension body per base path
 * that widens the weights (the fallback).
 */
#ifndef FASTLSTM_LOWP_H
#define FASTLSTM_LOWP_H

#include <stdint.h>
#include <string.h>

#include "fastlstm_isa.h"

enum fl_precision { FL_PREC_FP32 = 0, FL_PREC_BF16 = 1, FL_PREC_INT8 = 2 };

#define FL_LP_PANEL 16

/* k per 32-bit group: 2 bf16 or 4 int8. */
static inline int fl_lp_group(int prec) { return prec == FL_PREC_BF16 ? 2 : 4; }

/* ---- converting the activations --------------------------------------------- */

static inline uint32_t fl_lp_f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* bf16 bits of a finite float, rounded to nearest even. */
static inline uint32_t fl_bf16_bits(float f)
{
    const uint32_t u = fl_lp_f2u(f);
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

typedef float fl_lp_v16 __attribute__((vector_size(64)));
typedef int32_t fl_lp_i16 __attribute__((vector_size(64)));
typedef uint32_t fl_lp_u16 __attribute__((vector_size(64)));
typedef uint32_t fl_lp_u16u __attribute__((vector_size(64), aligned(4))); /* unaligned access */
typedef float fl_lp_v16u __attribute__((vector_size(64), aligned(4)));

/* max |a[i]| over k floats, 16 lanes at a time (a scalar running max is one long dependency
 * chain; the maximum is the same in any order). */
FL_INLINE float fl_lp_absmax(const float *a, long k)
{
    fl_lp_v16 acc = {0.0f};
    long i = 0;
    for (; i + 16 <= k; i += 16) {
        const fl_lp_v16 v = (fl_lp_v16)((fl_lp_i16) * (const fl_lp_v16u *)(a + i) & 0x7fffffff);
        const fl_lp_i16 more = v > acc;
        acc = (fl_lp_v16)(((fl_lp_i16)v & more) | ((fl_lp_i16)acc & ~more));
    }
    float amax = 0.0f;
    for (int j = 0; j < 16; j++) amax = acc[j] > amax ? acc[j] : amax;
    for (; i < k; i++) {
        const float v = a[i] < 0 ? -a[i] : a[i];
        amax = v > amax ? v : amax;
    }
    return amax;
}

/* The words of a part of k values: groups of g, padded to a multiple of 16 words (an AMX
 * tile's 64 bytes; fastlstm/_quantize.py pads the weights the same way). */
static inline long fl_lp_words(int prec, long k)
{
    const long g = fl_lp_group(prec);
    return ((k + g - 1) / g + 15) / 16 * 16;
}

/* Row r of m rows of k floats (row stride lda) -> kq = fl_lp_words(prec, k) words at
 * qa + r * ldq (ldq >= kq: a row may hold the words of more than one part), the groups past
 * k padded with zeros (a bf16 0, an int8 byte 128 that is q = 0); int8 also sets the row's
 * scale as[r]. */
FL_INLINE void fl_lp_convert_body(int prec, long m, long k, const float *restrict A, long lda, uint32_t *restrict qa,
                                  long ldq, float *restrict as)
{
    const long kq = fl_lp_words(prec, k);
    for (long r = 0; r < m; r++) {
        const float *a = A + r * lda;
        uint32_t *q = qa + r * ldq;
        if (prec == FL_PREC_BF16) {
            for (long i = 0; i < k / 2; i++) q[i] = fl_bf16_bits(a[2 * i]) << 16 | fl_bf16_bits(a[2 * i + 1]);
            if (k % 2) q[k / 2] = fl_bf16_bits(a[k - 1]) << 16;
            for (long i = (k + 1) / 2; i < kq; i++) q[i] = 0;
            continue;
        }
        const float amax = fl_lp_absmax(a, k);
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        as[r] = amax / 127.0f;
        uint8_t *b = (uint8_t *)q;
        for (long i = 0; i < k; i++) {
            float v = __builtin_rintf(a[i] * inv);
            v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
            b[i] = (uint8_t)((int)v + 128);
        }
        for (long i = k; i < 4 * kq; i++) b[i] = 128;
    }
}
FL_ISA_VARIANTS(fl_lp_convert,
                (int prec, long m, long k, const float *restrict A, long lda, uint32_t *restrict qa, long ldq,
                 float *restrict as),
                (prec, m, k, A, lda, qa, ldq, as))

/* ---- the products ------------------------------------------------------------
 * A block is R rows x NP panels over all kq groups: acc[r][p] holds 16 columns.
 * fl_lp_load_c and fl_lp_store_bf16 move the first nc columns of C (the rest of
 * a partial panel are computed on zero weights and dropped); int8 adds its
 * accumulators to C through the scales there (fl_lp_store_int8). */

#define FL_LP_ROWS_MAX   8 /* rows of a block */
#define FL_LP_PANELS_MAX 4 /* panels of a block */

FL_INLINE void fl_lp_load_c(const float *c, int nc, float *out)
{
    for (int j = 0; j < 16; j++) out[j] = j < nc ? c[j] : 0.0f;
}

/* bf16 result of one row and panel (16 floats) -> the first nc columns of C. */
FL_INLINE void fl_lp_store_bf16(float *c, int nc, const float *v)
{
    for (int j = 0; j < nc; j++) c[j] = v[j];
}

/* int8: C[j] = fmaf(sum[j] - corr[j], s * ws[j], from[j]) for the first nc columns (from: C
 * itself, or the bias). */
FL_INLINE void fl_lp_store_int8(float *c, int nc, const int32_t *sum, const int32_t *corr, float s, const float *ws,
                                const float *from)
{
    for (int j = 0; j < nc; j++) c[j] = __builtin_fmaf((float)(sum[j] - corr[j]), s * ws[j], from[j]);
}

/* Arguments of every block kernel: R rows from qa (row stride ldq), NP panels from w (ps
 * words apart), kq groups; C at c (row stride ldc), the last panel nc columns wide; int8:
 * the row scales as, the column scales ws and corrections corr (16 per panel, from the
 * block's first column). */
#define FL_LP_BLOCK_PARAMS                                                                                             \
    const int R, const int NP, long kq, const uint32_t *restrict qa, long ldq, const uint32_t *restrict w, long ps,    \
        float *restrict c, long ldc, int nc, const float *restrict as, const float *restrict ws,                       \
        const int32_t *restrict corr, const float *restrict bias
#define FL_LP_BLOCK_ARGS R, NP, kq, qa, ldq, w, ps, c, ldc, nc, as, ws, corr, bias

/* Where row r's sums start, panel p of a block: the bias when given, else C. */
#define FL_LP_FROM(r, p) (bias ? bias + 16 * (p) : c + (r) * ldc + 16 * (p))

/* Columns of panel p of a block whose last panel has nc columns. */
#define FL_LP_COLS(p) ((p) == NP - 1 ? nc : 16)

/* bf16, the fallback: widen each word to two floats (the high half is the float with the low
 * 16 bits cleared, the low half shifted up), one multiply-add each, high first. */
FL_INLINE void fl_lp_bf16_block_body(FL_LP_BLOCK_PARAMS)
{
    fl_lp_v16 acc[FL_LP_ROWS_MAX][FL_LP_PANELS_MAX];
    (void)as, (void)ws, (void)corr;
    for (int r = 0; r < R; r++)
        for (int p = 0; p < NP; p++) fl_lp_load_c(FL_LP_FROM(r, p), FL_LP_COLS(p), (float *)&acc[r][p]);
    for (long i = 0; i < kq; i++) {
        fl_lp_v16 whi[FL_LP_PANELS_MAX], wlo[FL_LP_PANELS_MAX];
        for (int p = 0; p < NP; p++) {
            const fl_lp_u16 v = *(const fl_lp_u16u *)(w + p * ps + i * 16);
            whi[p] = (fl_lp_v16)(v & 0xffff0000u);
            wlo[p] = (fl_lp_v16)(v << 16);
        }
        for (int r = 0; r < R; r++) {
            const uint32_t word = qa[r * ldq + i];
            float ahi, alo;
            const uint32_t hi = word & 0xffff0000u, lo = word << 16;
            memcpy(&ahi, &hi, 4);
            memcpy(&alo, &lo, 4);
            for (int p = 0; p < NP; p++) {
                acc[r][p] += ahi * whi[p];
                acc[r][p] += alo * wlo[p];
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int p = 0; p < NP; p++) fl_lp_store_bf16(c + r * ldc + 16 * p, FL_LP_COLS(p), (const float *)&acc[r][p]);
}

/* int8, the fallback: sign-extend each weight byte to 32 bits and multiply-add in int32. */
FL_INLINE void fl_lp_int8_block_body(FL_LP_BLOCK_PARAMS)
{
    fl_lp_i16 acc[FL_LP_ROWS_MAX][FL_LP_PANELS_MAX];
    for (int r = 0; r < R; r++)
        for (int p = 0; p < NP; p++) acc[r][p] = (fl_lp_i16){0};
    for (long i = 0; i < kq; i++) {
        fl_lp_i16 wb[FL_LP_PANELS_MAX][4];
        for (int p = 0; p < NP; p++) {
            const fl_lp_i16 v = (fl_lp_i16) * (const fl_lp_u16u *)(w + p * ps + i * 16);
            wb[p][0] = (v << 24) >> 24;
            wb[p][1] = (v << 16) >> 24;
            wb[p][2] = (v << 8) >> 24;
            wb[p][3] = v >> 24;
        }
        for (int r = 0; r < R; r++) {
            const uint32_t word = qa[r * ldq + i];
            const int32_t a0 = word & 255, a1 = (word >> 8) & 255, a2 = (word >> 16) & 255, a3 = word >> 24;
            for (int p = 0; p < NP; p++) acc[r][p] += a0 * wb[p][0] + a1 * wb[p][1] + a2 * wb[p][2] + a3 * wb[p][3];
        }
    }
    for (int r = 0; r < R; r++)
        for (int p = 0; p < NP; p++)
            fl_lp_store_int8(c + r * ldc + 16 * p, FL_LP_COLS(p), (const int32_t *)&acc[r][p], corr + 16 * p, as[r],
                             ws + 16 * p, FL_LP_FROM(r, p));
}

#if FL_X86
/* AVX512-BF16: one vdpbf16ps per panel, row and group (32 multiply-adds). */
FL_TARGET_AVX512_BF16 FL_INLINE void fl_lp_bf16_block_dp(FL_LP_BLOCK_PARAMS)
{
    __m512 acc[FL_LP_ROWS_MAX][FL_LP_PANELS_MAX];
    (void)as, (void)ws, (void)corr;
    for (int r = 0; r < R; r++)
        for (int p = 0; p < NP; p++) {
            const int n = FL_LP_COLS(p);
            acc[r][p] = _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1u), FL_LP_FROM(r, p));
        }
    for (long i = 0; i < kq; i++) {
        __m512bh wv[FL_LP_PANELS_MAX];
        for (int p = 0; p < NP; p++) wv[p] = (__m512bh)_mm512_loadu_si512(w + p * ps + i * 16);
        for (int r = 0; r < R; r++) {
            const __m512bh av = (__m512bh)_mm512_set1_epi32((int)qa[r * ldq + i]);
            for (int p = 0; p < NP; p++) acc[r][p] = _mm512_dpbf16_ps(acc[r][p], av, wv[p]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int p = 0; p < NP; p++)
            _mm512_mask_storeu_ps(c + r * ldc + 16 * p, (__mmask16)((1u << FL_LP_COLS(p)) - 1u), acc[r][p]);
}

/* AVX512-VNNI: one vpdpbusd per panel, row and group (64 multiply-adds). */
FL_TARGET_AVX512_VNNI FL_INLINE void fl_lp_int8_block_dp(FL_LP_BLOCK_PARAMS)
{
    __m512i acc[FL_LP_ROWS_MAX][FL_LP_PANELS_MAX];
    for (int r = 0; r < R; r++)
        for (int p = 0; p < NP; p++) acc[r][p] = _mm512_setzero_si512();
    for (long i = 0; i < kq; i++) {
        __m512i wv[FL_LP_PANELS_MAX];
        for (int p = 0; p < NP; p++) wv[p] = _mm512_loadu_si512(w + p * ps + i * 16);
        for (int r = 0; r < R; r++) {
            const __m512i av = _mm512_set1_epi32((int)qa[r * ldq + i]);
            for (int p = 0; p < NP; p++) acc[r][p] = _mm512_dpbusd_epi32(acc[r][p], av, wv[p]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int p = 0; p < NP; p++) {
            int32_t sum[16];
            _mm512_storeu_si512(sum, acc[r][p]);
            fl_lp_store_int8(c + r * ldc + 16 * p, FL_LP_COLS(p), sum, corr + 16 * p, as[r], ws + 16 * p,
                             FL_LP_FROM(r, p));
        }
}

/* AVX-VNNI (AVX2 base): a panel is two ymm vectors. */
FL_TARGET_AVX2_VNNI FL_INLINE void fl_lp_int8_block_avxvnni(FL_LP_BLOCK_PARAMS)
{
    __m256i acc[FL_LP_ROWS_MAX][FL_LP_PANELS_MAX][2];
    for (int r = 0; r < R; r++)
        for (int p = 0; p < NP; p++) acc[r][p][0] = acc[r][p][1] = _mm256_setzero_si256();
    for (long i = 0; i < kq; i++) {
        __m256i wv[FL_LP_PANELS_MAX][2];
        for (int p = 0; p < NP; p++) {
            wv[p][0] = _mm256_loadu_si256((const __m256i *)(w + p * ps + i * 16));
            wv[p][1] = _mm256_loadu_si256((const __m256i *)(w + p * ps + i * 16 + 8));
        }
        for (int r = 0; r < R; r++) {
            const __m256i av = _mm256_set1_epi32((int)qa[r * ldq + i]);
            for (int p = 0; p < NP; p++) {
                acc[r][p][0] = _mm256_dpbusd_avx_epi32(acc[r][p][0], av, wv[p][0]);
                acc[r][p][1] = _mm256_dpbusd_avx_epi32(acc[r][p][1], av, wv[p][1]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int p = 0; p < NP; p++) {
            int32_t sum[16];
            _mm256_storeu_si256((__m256i *)sum, acc[r][p][0]);
            _mm256_storeu_si256((__m256i *)(sum + 8), acc[r][p][1]);
            fl_lp_store_int8(c + r * ldc + 16 * p, FL_LP_COLS(p), sum, corr + 16 * p, as[r], ws + 16 * p,
                             FL_LP_FROM(r, p));
        }
}
#endif

/* AMX: tiles of 16 rows x 64 bytes, all of one shape: C (16 rows x 16 columns of float or
 * int32), A (16 rows x 16 words) and B (16 words of k x 16 columns: 16 rows of a panel).  One
 * tile product does what 16 rows x 16 groups of vdpbf16ps or vpdpbusd do.  A tile always
 * loads 16 rows of qa, so the caller's qa has 16 rows past m that may hold anything: their
 * results are dropped.  kq must be a multiple of 16 (fastlstm/_quantize.py pads each part).
 * C moves through a 16 x 16 staging tile, so partial rows and columns need no masks.
 *
 * int8 sums are exact, as on every path.  The bf16 tile product does not round like a chain
 * of vdpbf16ps: its sums differ in the last bits (about 1e-7 relative), so the AMX path is
 * its own reference for bf16 -- still the same bits whatever the rows, columns or threads,
 * because every output is one tile element computed from the same 16-word groups in order. */
#if FL_X86
/* The A and C tile rows of this thread's tile configuration, 0 when none is loaded.  Loading
 * one costs as much as a small product, so it stays until fl_lp_done, which each kernel call
 * runs once at its end (fastlstm_fpmode.h's caller, _kernels.run_rows). */
static __thread int fl_amx_rows = 0;

FL_TARGET_AMX static void fl_lp_release_amx(void)
{
    _tile_release();
    fl_amx_rows = 0;
}

struct fl_amx_config {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

/* The 16 cache lines of the next B tile of a panel, into L1: tile loads wait on L2 otherwise
 * (a stream's step ran 17% faster, 16 rows 20%).  Past a panel's end the prefetches are
 * harmless: they never fault. */
FL_INLINE void fl_amx_prefetch(const uint32_t *tile)
{
    for (int line = 0; line < 16; line++) _mm_prefetch((const char *)(tile + 16 * line), _MM_HINT_T0);
}

/* Tile numbers.  One row block (a stream's step, or the last rows): C tiles 0-3 for up to 4
 * panels (4 chains in flight, one A load for 4 products), A tile 4, B tiles 5-7 in turn (a load
 * overlaps the products before it).  Two row blocks of 16: C tiles 0-3 for 2 x 2 blocks, A
 * tiles 4 and 5, B tiles 6 and 7, so each tile loaded feeds two products.  Tile numbers are
 * immediates, hence the macros. */
#define FL_AMX_DP(T, A, B)                                                                                             \
    do {                                                                                                               \
        if (prec == FL_PREC_BF16)                                                                                      \
            _tile_dpbf16ps(T, A, B);                                                                                   \
        else                                                                                                           \
            _tile_dpbusd(T, A, B);                                                                                     \
    } while (0)

#define FL_AMX_STEP(P, BT)                                                                                             \
    if (NP > P) {                                                                                                      \
        fl_amx_prefetch(wq + (p0 + P) * ps + 16 * (i + 16));                                                           \
        _tile_loadd(BT, wq + (p0 + P) * ps + 16 * i, 64);                                                              \
        FL_AMX_DP(P, 4, BT);                                                                                           \
    }

/* C tile T <- rows r0 + RB * 16.. and panel p0 + P of C: in place when whole (bf16), else
 * through stage[T]; int8 starts from zero. */
#define FL_AMX_C_IN(T, RB, P)                                                                                          \
    if (NT > T) {                                                                                                      \
        float *c_ = C + (r0 + (RB) * rows) * ldc + 16 * (p0 + (P));                                                    \
        const int R_ = fl_amx_left(m, r0 + (RB) * rows, rows), nc_ = fl_amx_left(n, 16 * (p0 + (P)), 16);              \
        if (prec != FL_PREC_BF16) {                                                                                    \
            _tile_zero(T);                                                                                             \
        } else if (nc_ == 16 && bias) {                                                                                \
            _tile_loadd(T, bias + 16 * (p0 + (P)), 0); /* every row the bias */                                        \
        } else if (R_ == rows && nc_ == 16) {                                                                          \
            _tile_loadd(T, c_, 4 * ldc);                                                                               \
        } else {                                                                                                       \
            memset(stage[T], 0, sizeof stage[T]);                                                                      \
            for (int r = 0; r < R_; r++)                                                                               \
                memcpy(stage[T] + 16 * r, bias ? bias + 16 * (p0 + (P)) : c_ + r * ldc, 4 * nc_);                      \
            _tile_loadd(T, stage[T], 64);                                                                              \
        }                                                                                                              \
    }

/* The results of C tile T back into C (int8: through the scales). */
#define FL_AMX_C_OUT(T, RB, P)                                                                                         \
    if (NT > T) {                                                                                                      \
        float *c_ = C + (r0 + (RB) * rows) * ldc + 16 * (p0 + (P));                                                    \
        const long row_ = r0 + (RB) * rows, col_ = 16 * (p0 + (P));                                                    \
        const int R_ = fl_amx_left(m, row_, rows), nc_ = fl_amx_left(n, col_, 16);                                     \
        if (prec == FL_PREC_BF16 && R_ == rows && nc_ == 16) {                                                         \
            _tile_stored(T, c_, 4 * ldc);                                                                              \
        } else {                                                                                                       \
            _tile_stored(T, stage[T], 64);                                                                             \
            for (int r = 0; r < R_; r++) {                                                                             \
                if (prec == FL_PREC_BF16)                                                                              \
                    memcpy(c_ + r * ldc, stage[T] + 16 * r, 4 * nc_);                                                  \
                else                                                                                                   \
                    fl_lp_store_int8(c_ + r * ldc, nc_, (const int32_t *)stage[T] + 16 * r, wcorr + col_,              \
                                     as[row_ + r], wsc + col_, bias ? bias + col_ : c_ + r * ldc);                     \
            }                                                                                                          \
        }                                                                                                              \
    }

/* min(size, total - start): the rows or columns of a tile that exist. */
static inline int fl_amx_left(long total, long start, int size)
{
    return total - start < size ? (int)(total - start) : size;
}

FL_TARGET_AMX static void fl_lp_amx(int prec, long m, long n, long kq, const uint32_t *qa, long ldq, const float *as,
                                    const uint32_t *wq, long ps, const float *wsc, const int32_t *wcorr, float *C,
                                    long ldc, const float *bias)
{
    /* Fewer than 16 rows (a stream's step): tiles of just those rows, which the tile unit
     * runs faster; otherwise 16, the last block reading the padding rows of qa. */
    const int rows = m < 16 ? (int)m : 16;
    if (fl_amx_rows != rows) {
        struct fl_amx_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.palette = 1;
        for (int t = 0; t < 8; t++) cfg.rows[t] = t < 5 ? rows : 16, cfg.colsb[t] = 64;
        _tile_loadconfig(&cfg);
        fl_amx_rows = rows;
    }
    float stage[4][256];
    const long np = (n + 15) / 16;
    const int group = m > rows ? 2 : 4; /* panels per group: 2 x 2 blocks when rows allow */
    for (long p0 = 0; p0 < np; p0 += group) {
        const int NP = np - p0 >= group ? group : (int)(np - p0);
        for (long r0 = 0; r0 < m;) {
            if (NP == 2 && m - r0 > rows) {
                const int NT = 4;
                FL_AMX_C_IN(0, 0, 0)
                FL_AMX_C_IN(1, 0, 1)
                FL_AMX_C_IN(2, 1, 0)
                FL_AMX_C_IN(3, 1, 1)
                for (long i = 0; i < kq; i += 16) {
                    fl_amx_prefetch(wq + p0 * ps + 16 * (i + 16));
                    fl_amx_prefetch(wq + (p0 + 1) * ps + 16 * (i + 16));
                    _tile_loadd(4, qa + r0 * ldq + i, 4 * ldq);
                    _tile_loadd(6, wq + p0 * ps + 16 * i, 64);
                    FL_AMX_DP(0, 4, 6);
                    _tile_loadd(7, wq + (p0 + 1) * ps + 16 * i, 64);
                    FL_AMX_DP(1, 4, 7);
                    _tile_loadd(5, qa + (r0 + 16) * ldq + i, 4 * ldq);
                    FL_AMX_DP(2, 5, 6);
                    FL_AMX_DP(3, 5, 7);
                }
                FL_AMX_C_OUT(0, 0, 0)
                FL_AMX_C_OUT(1, 0, 1)
                FL_AMX_C_OUT(2, 1, 0)
                FL_AMX_C_OUT(3, 1, 1)
                r0 += 2 * rows;
                continue;
            }
            const int NT = NP;
            FL_AMX_C_IN(0, 0, 0)
            FL_AMX_C_IN(1, 0, 1)
            FL_AMX_C_IN(2, 0, 2)
            FL_AMX_C_IN(3, 0, 3)
            for (long i = 0; i < kq; i += 16) {
                _tile_loadd(4, qa + r0 * ldq + i, 4 * ldq);
                FL_AMX_STEP(0, 5)
                FL_AMX_STEP(1, 6)
                FL_AMX_STEP(2, 7)
                FL_AMX_STEP(3, 5)
            }
            FL_AMX_C_OUT(0, 0, 0)
            FL_AMX_C_OUT(1, 0, 1)
            FL_AMX_C_OUT(2, 0, 2)
            FL_AMX_C_OUT(3, 0, 3)
            r0 += rows;
        }
    }
}
#endif

/* One kernel over all rows and panels of a product, in blocks of up to 8 rows x 2 panels
 * (16 accumulators), or 3 rows x 4 panels when there are fewer than 4 rows (a stream's
 * step: 4 independent chains hide the multiply-add latency).  Panel groups go outermost,
 * so a group's weights stay in cache while the row blocks pass.  Each case calls KERNEL
 * with constant R and NP, which keeps the accumulators in registers. */
#define FL_LP_CALL(KERNEL, R_, NP_)                                                                                    \
    KERNEL(R_, NP_, kq, qa + r0 * ldq, ldq, wq + p0 * ps, ps, C + r0 * ldc + 16 * p0, ldc, nc, as ? as + r0 : NULL,    \
           wsc ? wsc + 16 * p0 : NULL, wcorr ? wcorr + 16 * p0 : NULL, bias ? bias + 16 * p0 : NULL)
#define FL_LP_ROWS_CASES(KERNEL, NP_)                                                                                  \
    switch (R) {                                                                                                       \
    case 8:                                                                                                            \
        FL_LP_CALL(KERNEL, 8, NP_);                                                                                    \
        break;                                                                                                         \
    case 4:                                                                                                            \
        FL_LP_CALL(KERNEL, 4, NP_);                                                                                    \
        break;                                                                                                         \
    case 3:                                                                                                            \
        FL_LP_CALL(KERNEL, 3, NP_);                                                                                    \
        break;                                                                                                         \
    case 2:                                                                                                            \
        FL_LP_CALL(KERNEL, 2, NP_);                                                                                    \
        break;                                                                                                         \
    default:                                                                                                           \
        FL_LP_CALL(KERNEL, 1, NP_);                                                                                    \
        break;                                                                                                         \
    }
#define FL_LP_DRIVER(NAME, KERNEL, TARGET)                                                                             \
    TARGET static void NAME(long m, long n, long kq, const uint32_t *qa, long ldq, const float *as,                    \
                            const uint32_t *wq, long ps, const float *wsc, const int32_t *wcorr, float *C, long ldc,   \
                            const float *bias)                                                                         \
    {                                                                                                                  \
        const long np = (n + 15) / 16;                                                                                 \
        const int group = m < 4 ? 4 : 2;                                                                               \
        for (long p0 = 0; p0 < np;) {                                                                                  \
            const int NP = np - p0 >= group ? group : np - p0 >= 2 ? 2 : 1;                                            \
            const long last = p0 + NP - 1;                                                                             \
            const int nc = (int)(n - 16 * last < 16 ? n - 16 * last : 16);                                             \
            for (long r0 = 0; r0 < m;) {                                                                               \
                const int R = m - r0 >= 8 ? 8 : m - r0 >= 4 ? 4 : (int)(m - r0);                                       \
                if (NP == 4) {                                                                                         \
                    FL_LP_ROWS_CASES(KERNEL, 4)                                                                        \
                } else if (NP == 2) {                                                                                  \
                    FL_LP_ROWS_CASES(KERNEL, 2)                                                                        \
                } else {                                                                                               \
                    FL_LP_ROWS_CASES(KERNEL, 1)                                                                        \
                }                                                                                                      \
                r0 += R;                                                                                               \
            }                                                                                                          \
            p0 += NP;                                                                                                  \
        }                                                                                                              \
    }

FL_LP_DRIVER(fl_lp_bf16_generic, fl_lp_bf16_block_body, )
FL_LP_DRIVER(fl_lp_int8_generic, fl_lp_int8_block_body, )
#if FL_X86
FL_LP_DRIVER(fl_lp_bf16_avx2, fl_lp_bf16_block_body, FL_TARGET_AVX2)
FL_LP_DRIVER(fl_lp_int8_avx2, fl_lp_int8_block_body, FL_TARGET_AVX2)
FL_LP_DRIVER(fl_lp_bf16_avx512, fl_lp_bf16_block_body, FL_TARGET_AVX512)
FL_LP_DRIVER(fl_lp_int8_avx512, fl_lp_int8_block_body, FL_TARGET_AVX512)
FL_LP_DRIVER(fl_lp_bf16_avx512bf16, fl_lp_bf16_block_dp, FL_TARGET_AVX512_BF16)
FL_LP_DRIVER(fl_lp_int8_avx512vnni, fl_lp_int8_block_dp, FL_TARGET_AVX512_VNNI)
FL_LP_DRIVER(fl_lp_int8_avx2vnni, fl_lp_int8_block_avxvnni, FL_TARGET_AVX2_VNNI)
#endif

/* C[m, 0:n] += qa[m, 0:kq] @ the panels at wq (ps words apart), in precision prec: the
 * kernel of the path in use (fastlstm_isa.h); with a bias row (n floats), C = bias + the
 * product instead, and C is not read.  qa rows from fl_lp_convert (row stride ldq), with 16
 * more rows of readable memory past m (fl_lp_amx); int8 also takes the row scales as and,
 * from the first column, the column scales wsc and corrections wcorr (bf16: NULL). */
static void fl_lp_gemm(int prec, long m, long n, long kq, const uint32_t *qa, long ldq, const float *as,
                       const uint32_t *wq, long ps, const float *wsc, const int32_t *wcorr, float *C, long ldc,
                       const float *bias)
{
#define FL_LP_ARGS m, n, kq, qa, ldq, as, wq, ps, wsc, wcorr, C, ldc, bias
#if FL_X86
    /* int8 below 16 rows: vpdpbusd, faster than a tile of few rows, and exact like it.  bf16
     * always takes the tiles on this path, whose rounding is their own (see fl_lp_amx). */
    if ((fl_ext & FL_EXT_AMX) && (prec == FL_PREC_BF16 || m >= 16))
        fl_lp_amx(prec, FL_LP_ARGS);
    else if (prec == FL_PREC_BF16) {
        if (fl_ext & FL_EXT_BF16)
            fl_lp_bf16_avx512bf16(FL_LP_ARGS);
        else if (fl_isa == FL_ISA_AVX512)
            fl_lp_bf16_avx512(FL_LP_ARGS);
        else if (fl_isa == FL_ISA_AVX2)
            fl_lp_bf16_avx2(FL_LP_ARGS);
        else
            fl_lp_bf16_generic(FL_LP_ARGS);
    } else {
        if (fl_isa == FL_ISA_AVX512 && (fl_ext & FL_EXT_VNNI))
            fl_lp_int8_avx512vnni(FL_LP_ARGS);
        else if (fl_isa == FL_ISA_AVX2 && (fl_ext & FL_EXT_VNNI))
            fl_lp_int8_avx2vnni(FL_LP_ARGS);
        else if (fl_isa == FL_ISA_AVX512)
            fl_lp_int8_avx512(FL_LP_ARGS);
        else if (fl_isa == FL_ISA_AVX2)
            fl_lp_int8_avx2(FL_LP_ARGS);
        else
            fl_lp_int8_generic(FL_LP_ARGS);
    }
#else
    if (prec == FL_PREC_BF16)
        fl_lp_bf16_generic(FL_LP_ARGS);
    else
        fl_lp_int8_generic(FL_LP_ARGS);
#endif
#undef FL_LP_ARGS
}

/* The end of a kernel call on this thread: hand the AMX tile state back (a thread that holds
 * it costs the OS a larger save on every switch). */
static inline void fl_lp_done(void)
{
#if FL_X86
    if (fl_amx_rows) fl_lp_release_amx();
#endif
}

#endif /* FASTLSTM_LOWP_H */
