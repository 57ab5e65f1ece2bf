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

#endif /* FASTLSTM_OMP_H */
