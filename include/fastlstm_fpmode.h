/* Flush denormals to zero inside a kernel call, then restore the caller's mode.
 *
 * A decaying cell state drifts into the denormal range, where x86 arithmetic
 * is 10-100x slower; LSTMs are known to slow down by an order of magnitude
 * from this alone.  FTZ/DAZ live in the per-thread MXCSR register, so every
 * thread that computes sets it and restores it before returning.
 */
#ifndef FASTLSTM_FPMODE_H
#define FASTLSTM_FPMODE_H

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
typedef unsigned int fl_fpmode_t;
static inline fl_fpmode_t fl_flush_denormals(void)
{
    fl_fpmode_t old = _mm_getcsr();
    _mm_setcsr(old | 0x8040u); /* FTZ (bit 15) | DAZ (bit 6) */
    return old;
}
static inline void fl_restore_fpmode(fl_fpmode_t old) { _mm_setcsr(old); }
#else
typedef int fl_fpmode_t;
static inline fl_fpmode_t fl_flush_denormals(void) { return 0; }
static inline void fl_restore_fpmode(fl_fpmode_t old) { (void)old; }
#endif

#endif /* FASTLSTM_FPMODE_H */
