/* The one place that touches OpenMP: builds without it get serial fallbacks. */
#ifndef FASTLSTM_OMP_H
#define FASTLSTM_OMP_H

#ifdef _OPENMP
#include <omp.h>
#define FL_HAVE_OPENMP 1
static inline int fl_omp_thread_num(void) { return omp_get_thread_num(); }
static inline int fl_omp_num_threads(void) { return omp_get_num_threads(); }
#else
#define FL_HAVE_OPENMP 0
static inline int fl_omp_thread_num(void) { return 0; }
static inline int fl_omp_num_threads(void) { return 1; }
#endif

/* A barrier of the enclosing parallel region.  Only for threads working as one
 * team on the same rows; every thread of the team must reach the same barriers. */
static inline void fl_barrier(void)
{
#ifdef _OPENMP
#pragma omp barrier
#endif
}

/* Units per slice are a multiple of this, so slices start on cache lines and
 * on the 16-column weight panels (fastlstm_gemm.h). */
#define FL_UNIT_ALIGN 16

/* Slice k of nt of n units: [*lo, *hi), whole multiples of FL_UNIT_ALIGN but the last. */
static inline void fl_split_range(long n, int k, int nt, long *lo, long *hi)
{
    const long blocks = (n + FL_UNIT_ALIGN - 1) / FL_UNIT_ALIGN;
    *lo = (blocks * k / nt) * FL_UNIT_ALIGN;
    *hi = (blocks * (k + 1) / nt) * FL_UNIT_ALIGN;
    if (*hi > n) *hi = n;
    if (*lo > n) *lo = n;
}

#endif /* FASTLSTM_OMP_H */
