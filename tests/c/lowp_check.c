/* Checks the reduced-precision products (fastlstm_lowp.h) on every path this CPU
 * runs, with no Python: run by tests/test_isa.py, natively and (cross-compiled for
 * aarch64) under qemu.  Exit status 0 when all pass; each failure prints a line.
 *
 * The reference is written from the definitions in fastlstm_lowp.h, in scalar C:
 * bf16, the fp32 chain over k in order of bf16-rounded operands (fmaf); int8, the
 * exact integer sum of the quantized values, then one fmaf.  Every path must give
 * exactly those bits, for shapes that hit every block and tail case, and whichever
 * rows or columns a call covers. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "fastlstm_fpmode.h"
#include "fastlstm_lowp.h"

#include "check_data.h"

static int failures = 0;

static float bf16_value(float f)
{
    const uint32_t u = fl_bf16_bits(f) << 16;
    float v;
    memcpy(&v, &u, 4);
    return v;
}

/* Weights W (k, n) -> words (n panels of kq x 16), as fastlstm/_packing.py packs them; int8
 * also the column scales and corrections (16 per panel). */
static uint32_t *pack(int prec, const float *W, long k, long n, float *ws, int32_t *corr, signed char *qw)
{
    const long g = fl_lp_group(prec), kq = fl_lp_words(prec, k), np = (n + 15) / 16;
    uint32_t *p = calloc(np * kq * 16, 4);
    for (long j = 0; j < n; j++) {
        float amax = 0.0f;
        for (long i = 0; i < k; i++) amax = fmaxf(amax, fabsf(W[i * n + j]));
        if (prec == FL_PREC_INT8) ws[j] = amax / 127.0f, corr[j] = 0;
        for (long i = 0; i < k; i++) {
            uint32_t *word = p + (j / 16) * kq * 16 + (i / g) * 16 + j % 16;
            if (prec == FL_PREC_BF16) {
                *word |= fl_bf16_bits(W[i * n + j]) << (i % 2 ? 0 : 16);
            } else {
                const float q = amax > 0 ? fmaxf(-127.0f, fminf(127.0f, rintf(W[i * n + j] / ws[j]))) : 0.0f;
                qw[i * n + j] = (signed char)q;
                corr[j] += 128 * (int)q;
                *word |= (uint32_t)(uint8_t)(signed char)q << (8 * (i % 4));
            }
        }
    }
    return p;
}

static void check_product(int prec, long m, long n, long k, unsigned seed)
{
    const long kq = fl_lp_words(prec, k), np = (n + 15) / 16;
    /* AMX's bf16 tiles round their sums their own way: near the chain, not on it. */
    const int own_rounding = prec == FL_PREC_BF16 && (fl_ext & FL_EXT_AMX);
    float *A = floats(m * k, &seed), *W = floats(k * n, &seed), *C = floats(m * n, &seed);
    float *C0 = malloc(m * n * 4), *D = malloc(m * n * 4), *as = malloc(m * 4), *ws = calloc(np * 16, 4);
    int32_t *corr = calloc(np * 16, 4);
    signed char *qw = malloc(k * n);
    uint32_t *qa = malloc((m + 16) * kq * 4), *wq = pack(prec, W, k, n, ws, corr, qw);
    for (long i = 0; i < m * n; i++) C0[i] = D[i] = C[i];
    fl_lp_convert(prec, m, k, A, k, qa, kq, as);
    fl_lp_gemm(prec, m, n, kq, qa, kq, as, wq, kq * 16, ws, corr, C, n, NULL);
    int exact = 1;
    double worst = 0.0;
    for (long r = 0; r < m; r++) {
        float amax = 0.0f;
        for (long i = 0; i < k; i++) amax = fmaxf(amax, fabsf(A[r * k + i]));
        for (long j = 0; j < n; j++) {
            float want = C0[r * n + j];
            double exact_sum = 0.0;
            if (prec == FL_PREC_BF16) {
                for (long i = 0; i < k; i++) want = fmaf(bf16_value(A[r * k + i]), bf16_value(W[i * n + j]), want);
            } else {
                long sum = 0;
                for (long i = 0; i < k; i++) {
                    const float q = fmaxf(-127.0f, fminf(127.0f, rintf(A[r * k + i] * (127.0f / amax))));
                    sum += (long)q * qw[i * n + j];
                }
                want = fmaf((float)sum, amax / 127.0f * ws[j], want);
            }
            for (long i = 0; i < k; i++) exact_sum += (double)A[r * k + i] * W[i * n + j];
            exact &=
                own_rounding ? fabsf(C[r * n + j] - want) <= 1e-6f * (1.0f + fabsf(want)) * k : C[r * n + j] == want;
            worst = fmax(worst, fabs(C[r * n + j] - (C0[r * n + j] + exact_sum)));
        }
    }
    /* The rounding of the operands alone: bf16 about 2^-8 relative, int8 about 1/127 of
     * the row's and column's largest values, per term. */
    const double bound = (prec == FL_PREC_BF16 ? 8e-3 : 2e-2) * k;
    /* Rows one at a time, and columns in single panels: the same bits. */
    int same = 1;
    for (long r = 0; r < m; r++)
        for (long p = 0; p < np; p++)
            fl_lp_gemm(prec, 1, n - 16 * p < 16 ? n - 16 * p : 16, kq, qa + r * kq, kq, as + r, wq + p * kq * 16,
                       kq * 16, ws + 16 * p, corr + 16 * p, D + r * n + 16 * p, n, NULL);
    for (long i = 0; i < m * n; i++) same &= D[i] == C[i];
    /* With a bias row: the bits of the same product onto C rows holding the bias, C unread. */
    float *bias = floats(n, &seed);
    for (long i = 0; i < m * n; i++) D[i] = bias[i % n], C0[i] = NAN;
    fl_lp_gemm(prec, m, n, kq, qa, kq, as, wq, kq * 16, ws, corr, D, n, NULL);
    fl_lp_gemm(prec, m, n, kq, qa, kq, as, wq, kq * 16, ws, corr, C0, n, bias);
    int biased = 1;
    for (long i = 0; i < m * n; i++) biased &= D[i] == C0[i];
    if (!exact || !same || !biased || worst > bound) {
        printf("FAIL %s %s m=%ld n=%ld k=%ld: exact %d, split %d, bias %d, err %g\n", fl_path_name(fl_path),
               prec == FL_PREC_BF16 ? "bf16" : "int8", m, n, k, exact, same, biased, worst);
        failures++;
    }
    free(bias);
    free(A);
    free(W);
    free(C);
    free(C0);
    free(D);
    free(as);
    free(ws);
    free(corr);
    free(qw);
    free(qa);
    free(wq);
}

int main(void)
{
    static const long shapes[][3] = {{1, 16, 1},  {1, 1024, 256}, {2, 5, 7},   {3, 128, 48},   {4, 33, 20}, {5, 17, 9},
                                     {8, 64, 16}, {9, 100, 50},   {13, 40, 3}, {32, 512, 131}, {61, 48, 29}};
    const fl_fpmode_t mode = fl_flush_denormals();
    for (int p = 0; p < FL_N_PATHS; p++) {
        if (!fl_path_runs(p)) continue;
        fl_path = p, fl_isa = fl_paths[p].isa, fl_ext = fl_paths[p].ext;
        for (int prec = FL_PREC_BF16; prec <= FL_PREC_INT8; prec++)
            for (unsigned s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
                check_product(prec, shapes[s][0], shapes[s][1], shapes[s][2], 11 + s);
        fl_lp_done();
        printf("%s: checked\n", fl_path_name(p));
    }
    fl_restore_fpmode(mode);
    printf(failures ? "%d FAILURES\n" : "all passed\n", failures);
    return failures != 0;
}
