/* Checks the C kernels of every instruction-set path this CPU can run against
 * float64 references, with no Python: run by tests/test_isa.py, natively and
 * (cross-compiled for aarch64) under qemu.  Exit status 0 when all pass; each
 * failure prints a line.
 *
 * Checked per path: fl_gemm_packed and fl_pack_a + fl_gemm_apacked for shapes
 * that hit every row-block and tail-column case, fl_gemv_acc, and the fused
 * cell pass; and that every output of the packed products is bit-identical
 * whichever column range a call covers (the property thread teams rely on)
 * and to fl_matmul_acc's and fl_gemv_acc's (the one a lone stream relies on). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "fastlstm_cell.h"
#include "fastlstm_gemm.h"

#include "check_data.h"

static const char *const path_names[] = {"generic", "avx2", "avx512"};
static int failures = 0;

static void check(int ok, const char *what, long m, long n, long k, double err)
{
    if (!ok) {
        printf("FAIL %s %s m=%ld n=%ld k=%ld err=%g\n", path_names[fl_isa], what, m, n, k, err);
        failures++;
    }
}

/* W (k, n) as panels of 16 columns (fastlstm/_packing.py: pack_panels). */
static float *panels(const float *W, long k, long n)
{
    const long np = (n + FL_PANEL - 1) / FL_PANEL;
    float *p = calloc(np * k * FL_PANEL, sizeof(float));
    for (long i = 0; i < k; i++)
        for (long j = 0; j < n; j++) p[(j / FL_PANEL) * k * FL_PANEL + i * FL_PANEL + j % FL_PANEL] = W[i * n + j];
    return p;
}

static void check_gemm(long m, long n, long k, unsigned seed)
{
    float *A = floats(m * k, &seed), *W = floats(k * n, &seed), *bias = floats(n, &seed);
    float *C = floats(m * n, &seed), *C0 = malloc(m * n * sizeof(float)), *D = malloc(m * n * sizeof(float));
    float *E = malloc(m * n * sizeof(float)), *ap = malloc(m * k * sizeof(float)), *Wp = panels(W, k, n);
    const long ps = k * FL_PANEL;
    double worst = 0.0, worst_b = 0.0;
    for (long i = 0; i < m * n; i++) C0[i] = C[i];
    fl_gemm_packed(m, n, k, A, k, Wp, ps, C, n);
    fl_pack_a(m, k, ap, 0, k, A, k);
    fl_gemm_apacked(m, n, k, ap, Wp, ps, bias, D, n);
    for (long r = 0; r < m; r++)
        for (long j = 0; j < n; j++) {
            double s = 0.0;
            for (long i = 0; i < k; i++) s += (double)A[r * k + i] * W[i * n + j];
            worst = fmax(worst, fabs(C[r * n + j] - (C0[r * n + j] + s)));
            worst_b = fmax(worst_b, fabs(D[r * n + j] - (bias[j] + s)));
        }
    check(worst <= 1e-5 * k, "gemm_packed", m, n, k, worst);
    check(worst_b <= 1e-5 * k, "gemm_apacked", m, n, k, worst_b);
    /* Column ranges on 16-column boundaries, as a team's threads take them. */
    for (long j0 = 0; j0 < n; j0 += 2 * FL_PANEL) {
        const long j1 = j0 + 2 * FL_PANEL < n ? j0 + 2 * FL_PANEL : n;
        fl_gemm_apacked(m, j1 - j0, k, ap, Wp + (j0 / FL_PANEL) * ps, ps, bias + j0, E + j0, n);
    }
    int same = 1;
    for (long i = 0; i < m * n; i++) same &= E[i] == D[i];
    check(same, "gemm_apacked split by columns", m, n, k, 0.0);
    /* fl_matmul_acc (one row, or all m rows at once) is the same chain as both packed products. */
    for (long i = 0; i < m * n; i++) E[i] = C0[i];
    fl_matmul_acc(m, n, k, A, k, W, n, E, n);
    same = 1;
    for (long i = 0; i < m * n; i++) same &= E[i] == C[i];
    check(same, "matmul_acc == gemm_packed", m, n, k, 0.0);
    same = 1;
    for (long r = 0; r < m; r++) {
        for (long j = 0; j < n; j++) E[r * n + j] = bias[j];
        fl_gemv_acc(A + r * k, k, W, n, n, E + r * n);
        for (long j = 0; j < n; j++) same &= E[r * n + j] == D[r * n + j];
    }
    check(same, "gemv_acc == gemm_apacked", m, n, k, 0.0);
    free(A);
    free(W);
    free(bias);
    free(C);
    free(C0);
    free(D);
    free(E);
    free(ap);
    free(Wp);
}

static void check_gemv(long n, long k, unsigned seed)
{
    float *v = floats(k, &seed), *W = floats(k * n, &seed), *z = floats(n, &seed), *z0 = malloc(n * sizeof(float));
    double worst = 0.0;
    for (long j = 0; j < n; j++) z0[j] = z[j];
    fl_gemv_acc(v, k, W, n, n, z);
    for (long j = 0; j < n; j++) {
        double s = z0[j];
        for (long i = 0; i < k; i++) s += (double)v[i] * W[i * n + j];
        worst = fmax(worst, fabs(z[j] - s));
    }
    check(worst <= 1e-5 * k, "gemv_acc", 1, n, k, worst);
    free(v);
    free(W);
    free(z);
    free(z0);
}

static double sig(double x) { return 1.0 / (1.0 + exp(-x)); }

static void check_cell(long H, unsigned seed)
{
    float *z = floats(4 * H, &seed), *c = floats(H, &seed), *c0 = malloc(H * sizeof(float));
    float *h = malloc(H * sizeof(float));
    double worst = 0.0;
    for (long j = 0; j < 4 * H; j++) z[j] *= 8.0f; /* into the activations' tails */
    for (long j = 0; j < H; j++) c0[j] = c[j];
    fl_cell_units(z, H, c, h, H, FL_ACT_SIGMOID, FL_ACT_TANH);
    for (long j = 0; j < H; j++) {
        const double cn = sig(z[H + j]) * c0[j] + sig(z[j]) * tanh(z[3 * H + j]);
        worst = fmax(worst, fmax(fabs(c[j] - cn), fabs(h[j] - sig(z[2 * H + j]) * tanh(cn))));
    }
    check(worst <= 2e-6, "cell sigmoid/tanh", 1, H, 0, worst);
    free(z);
    free(c);
    free(c0);
    free(h);
}

int main(void)
{
    static const long shapes[][3] = {{1, 16, 1},   {2, 5, 7},     {3, 128, 48},  {5, 33, 20}, {6, 16, 9},
                                     {7, 40, 31},  {12, 64, 16},  {13, 100, 50}, {25, 17, 3}, {32, 1024, 384},
                                     {61, 48, 29}, {130, 80, 12}, {300, 128, 16}};
    const int best = fl_isa_cpu();
    for (int level = FL_ISA_GENERIC; level <= best; level++) {
        fl_isa = level;
        unsigned seed = 7;
        for (unsigned s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
            check_gemm(shapes[s][0], shapes[s][1], shapes[s][2], seed + s);
        check_gemv(128, 48, seed);
        check_gemv(37, 5, seed + 1);
        check_cell(32, seed);
        check_cell(45, seed + 1);
        printf("%s: checked\n", path_names[level]);
    }
    printf(failures ? "%d FAILURES\n" : "all passed\n", failures);
    return failures != 0;
}
