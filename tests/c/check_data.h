/* The test data of the C kernel checks (kernels_check.c, lowp_check.c): a seeded stream of
 * floats in [-1, 1), the same on every machine and compiler. */
#ifndef CHECK_DATA_H
#define CHECK_DATA_H

#include <stdlib.h>

static float *floats(long n, unsigned *seed)
{
    float *p = malloc((n > 0 ? n : 1) * sizeof(float));
    for (long i = 0; i < n; i++) {
        *seed = *seed * 1103515245u + 12345u;
        p[i] = (float)((*seed >> 8) & 0xffff) / 32768.0f - 1.0f;
    }
    return p;
}

#endif /* CHECK_DATA_H */
