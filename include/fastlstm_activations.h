/* Vectorizable float32 activations for the recurrent cells and the dense layers.
 *
 * Every function here is branch-free straight-line arithmetic (mul, add,
 * divide, compare-select and bit operations), so GCC vectorizes a loop that
 * calls them without -ffast-math and without libm.
 *
 * Method: exp(-a) for a >= 0 by range reduction a = n*ln2 - r, |r| <= ln2/2,
 * with a two-constant Cody-Waite split of ln2 (the high part has 9 significant
 * bits, so n*ln2_hi is exact), a degree-7 Taylor polynomial for e^r (truncation
 * error < 1e-8 relative) and 2^n built in the exponent bits.
 *   sigmoid(x) = 1/(1+e) for x > 0 and e/(1+e) otherwise, e = exp(-|x|)
 *   tanh(x)    = sign(x) * (1-e)/(1+e), e = exp(-2|x|); tanh(x) = x for |x| < 4e-4
 *
 * Accuracy (tests/test_activations.py checks it densely against float64):
 *   max abs error <= 5e-7 for both (measured about 1.2e-7 for sigmoid, 2.4e-7 for tanh).
 *
 * The layer activations build on these:
 *   elu, selu      exp(x) - 1 = exp_neg(-x) - 1 for x <= 0: abs error <= 2e-7 * alpha (scale)
 *   gelu (erf)     x * erfc(-x/sqrt2) / 2, erfc(a) = poly(t) * exp(-a^2), t = 1/(1 + p a)
 *                  (Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7), computed on |x| and
 *                  reflected, so negative x keep their small values: abs error <= 5e-7 * max(1, |x|)
 *   gelu_tanh      x * sigmoid(2u) (= x (1 + tanh u) / 2 without the cancellation at x << 0)
 *   silu           x * sigmoid(x)
 *   softplus       max(x, 0) + log1p(exp(-|x|)); log1p(e) for e in (0, 1] = 2 atanh(s) with
 *                  s = e/(2+e), or ln2 + 2 atanh((e-1)/(e+3)) above sqrt2 - 1, |s| <= 0.172,
 *                  atanh's series to s^9 (truncation < 1e-9): abs error <= 5e-7
 *   softsign       x / (1 + |x|)
 * Their bound (tests/test_activations.py): abs error <= 5e-7 * max(1, |x|).
 * Special values: NaN -> NaN; sigmoid(-inf) = 0 (to within 2e-35), sigmoid(+inf) = 1,
 *   sigmoid(+-0) = 0.5; tanh(+-inf) = +-1, tanh(+-0) = +-0 (sign kept).
 * The argument of exp is clamped to 80 so 2^n stays a normal float.
 */
#ifndef FASTLSTM_ACTIVATIONS_H
#define FASTLSTM_ACTIVATIONS_H

#include <stdint.h>
#include <string.h>

/* Activation kinds shared with Cython (fastlstm/_kernels.pyx) and Python. */
enum fl_activation {
    FL_ACT_SIGMOID = 0,
    FL_ACT_TANH = 1,
    FL_ACT_HARD_SIGMOID = 2,        /* Keras 3: clip(x/6 + 0.5, 0, 1) */
    FL_ACT_HARD_SIGMOID_KERAS2 = 3, /* Keras 1/2: clip(0.2x + 0.5, 0, 1) */
    FL_ACT_RELU = 4,
    FL_ACT_LINEAR = 5,
    FL_ACT_SOFTMAX = 6,             /* layers only: row-wise */
    FL_ACT_ELU = 7,                 /* layers only: alpha */
    FL_ACT_SELU = 8,
    FL_ACT_LEAKY_RELU = 9,          /* layers only: alpha = negative slope */
    FL_ACT_GELU = 10,
    FL_ACT_GELU_TANH = 11,
    FL_ACT_SILU = 12,
    FL_ACT_SOFTPLUS = 13,
    FL_ACT_SOFTSIGN = 14,
    FL_ACT_PRELU = 15 /* layers only: per-feature slopes */
};

static inline uint32_t fl_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float fl_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* exp(-a) for a in [0, 80] (NaN propagates). */
static inline float fl_exp_neg(float a)
{
    const float magic = 12582912.0f;            /* 1.5 * 2^23: rounds to an integer in the low bits */
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693359375f;          /* 9 significant bits */
    const float ln2_lo = -2.12194440e-4f;
    float kf = (-a) * log2e + magic;            /* n = round(-a / ln2), |n| <= 116 */
    uint32_t nbits = fl_bits(kf);
    kf -= magic;
    float r = (-a) - kf * ln2_hi - kf * ln2_lo; /* |r| <= ln2/2 */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* 2^n: n sits in the low bits of nbits (offset by the magic's bit pattern). */
    float scale = fl_float((uint32_t)((int32_t)(nbits - fl_bits(magic)) + 127) << 23);
    return p * scale;
}

static inline float fl_clamp_exp_arg(float a) { return a > 80.0f ? 80.0f : a; }

static inline float fl_sigmoid(float x)
{
    float a = fl_float(fl_bits(x) & 0x7fffffffu);
    float e = fl_exp_neg(fl_clamp_exp_arg(a));
    float r = 1.0f / (1.0f + e);
    return x > 0.0f ? r : e * r;
}

static inline float fl_tanh(float x)
{
    float a = fl_float(fl_bits(x) & 0x7fffffffu);
    float e = fl_exp_neg(fl_clamp_exp_arg(a + a));
    float t = (1.0f - e) / (1.0f + e);
    t = a < 4e-4f ? a : t; /* tanh(a) = a - a^3/3: keeps relative accuracy near 0 */
    return fl_float(fl_bits(t) | (fl_bits(x) & 0x80000000u));
}

static inline float fl_clip01(float v)
{
    v = v < 0.0f ? 0.0f : v;
    return v > 1.0f ? 1.0f : v;
}
static inline float fl_hard_sigmoid(float x) { return fl_clip01(x * (1.0f / 6.0f) + 0.5f); }
static inline float fl_hard_sigmoid_keras2(float x) { return fl_clip01(0.2f * x + 0.5f); }
static inline float fl_relu(float x) { return x < 0.0f ? 0.0f : x; }

/* exp(x) - 1 for x <= 0 (the negative side of elu and selu). */
static inline float fl_expm1_neg(float x) { return fl_exp_neg(fl_clamp_exp_arg(-x)) - 1.0f; }

static inline float fl_selu(float x)
{
    const float scale = 1.0507009873554805f, alpha = 1.6732632423543772f;
    return scale * (x > 0.0f ? x : alpha * fl_expm1_neg(x > 0.0f ? 0.0f : x)); /* NaN propagates */
}

/* erfc(a) for a >= 0 (Abramowitz & Stegun 7.1.26). */
static inline float fl_erfc_pos(float a)
{
    const float t = 1.0f / (1.0f + 0.3275911f * a);
    float p = 1.061405429f;
    p = p * t - 1.453152027f;
    p = p * t + 1.421413741f;
    p = p * t - 0.284496736f;
    p = p * t + 0.254829592f;
    return p * t * fl_exp_neg(fl_clamp_exp_arg(a * a));
}

static inline float fl_gelu(float x)
{
    const float a = fl_float(fl_bits(x) & 0x7fffffffu) * 0.70710678118654752f;
    const float half_erfc = 0.5f * fl_erfc_pos(a); /* P(N > |x|) */
    return x * (x > 0.0f ? 1.0f - half_erfc : half_erfc);
}

/* x * sigmoid(v), exactly 0 where sigmoid(v) underflows (fl_sigmoid stops at e^-80, which
 * times a huge negative x would not be small). */
static inline float fl_times_sigmoid(float x, float v) { return v < -87.0f ? 0.0f * x : x * fl_sigmoid(v); }

static inline float fl_gelu_tanh(float x)
{
    const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return fl_times_sigmoid(x, 2.0f * u);
}

/* log(1 + e) for e in [0, 1]. */
static inline float fl_log1p_unit(float e)
{
    const int high = e > 0.41421356f;
    const float s = high ? (e - 1.0f) / (e + 3.0f) : e / (2.0f + e);
    const float s2 = s * s;
    float p = 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return (high ? 0.69314718055994531f : 0.0f) + 2.0f * s * p;
}

static inline float fl_softplus(float x)
{
    const float a = fl_float(fl_bits(x) & 0x7fffffffu);
    return (x > 0.0f ? x : 0.0f) + fl_log1p_unit(fl_exp_neg(fl_clamp_exp_arg(a)));
}

static inline float fl_softsign(float x) { return x / (1.0f + fl_float(fl_bits(x) & 0x7fffffffu)); }

/* Apply an element-wise activation in place (not the row-wise or parameterised ones:
 * FL_ACT_SOFTMAX, FL_ACT_ELU, FL_ACT_LEAKY_RELU, FL_ACT_PRELU; see fl_activate_rows). */
static void fl_activate(int kind, float *x, long n)
{
    long j;
    switch (kind) {
    case FL_ACT_SELU:
        for (j = 0; j < n; j++) x[j] = fl_selu(x[j]);
        break;
    case FL_ACT_GELU:
        for (j = 0; j < n; j++) x[j] = fl_gelu(x[j]);
        break;
    case FL_ACT_GELU_TANH:
        for (j = 0; j < n; j++) x[j] = fl_gelu_tanh(x[j]);
        break;
    case FL_ACT_SILU:
        for (j = 0; j < n; j++) x[j] = fl_times_sigmoid(x[j], x[j]);
        break;
    case FL_ACT_SOFTPLUS:
        for (j = 0; j < n; j++) x[j] = fl_softplus(x[j]);
        break;
    case FL_ACT_SOFTSIGN:
        for (j = 0; j < n; j++) x[j] = fl_softsign(x[j]);
        break;
    case FL_ACT_SIGMOID:
        for (j = 0; j < n; j++) x[j] = fl_sigmoid(x[j]);
        break;
    case FL_ACT_TANH:
        for (j = 0; j < n; j++) x[j] = fl_tanh(x[j]);
        break;
    case FL_ACT_HARD_SIGMOID:
        for (j = 0; j < n; j++) x[j] = fl_hard_sigmoid(x[j]);
        break;
    case FL_ACT_HARD_SIGMOID_KERAS2:
        for (j = 0; j < n; j++) x[j] = fl_hard_sigmoid_keras2(x[j]);
        break;
    case FL_ACT_RELU:
        for (j = 0; j < n; j++) x[j] = fl_relu(x[j]);
        break;
    default:
        break; /* linear */
    }
}

/* Numerically stable softmax of one row, in place (exp of x - max <= 0). */
static void fl_softmax_row(float *x, long n)
{
    long j;
    float m = x[0], s = 0.0f;
    for (j = 1; j < n; j++) m = x[j] > m ? x[j] : m;
    for (j = 0; j < n; j++) {
        x[j] = fl_exp_neg(fl_clamp_exp_arg(m - x[j]));
        s += x[j];
    }
    s = 1.0f / s;
    for (j = 0; j < n; j++) x[j] *= s;
}

/* Any activation over nrows rows of n features, in place.  alpha: elu's alpha or
 * leaky_relu's slope; pw: prelu's slopes, npw of them (1: shared, else one per feature). */
static void fl_activate_rows(int kind, float alpha, const float *pw, long npw, float *x, long nrows, long n)
{
    long r, j;
    switch (kind) {
    case FL_ACT_SOFTMAX:
        for (r = 0; r < nrows; r++) fl_softmax_row(x + r * n, n);
        break;
    case FL_ACT_ELU:
        for (j = 0; j < nrows * n; j++) x[j] = x[j] > 0.0f ? x[j] : alpha * fl_expm1_neg(x[j] > 0.0f ? 0.0f : x[j]);
        break;
    case FL_ACT_LEAKY_RELU:
        for (j = 0; j < nrows * n; j++) x[j] = x[j] >= 0.0f ? x[j] : alpha * x[j];
        break;
    case FL_ACT_PRELU:
        for (r = 0; r < nrows; r++) {
            float *row = x + r * n;
            for (j = 0; j < n; j++) {
                const float a = pw[npw == 1 ? 0 : j];
                row[j] = row[j] >= 0.0f ? row[j] : a * row[j];
            }
        }
        break;
    default:
        fl_activate(kind, x, nrows * n);
    }
}

#endif /* FASTLSTM_ACTIVATIONS_H */
