/* The in-team synchronisation of the kernels' thread teams (fastlstm_pool.h):
 * a spin-then-sleep barrier and the split of hidden units over a team. */
#ifndef FASTLSTM_BARRIER_H
#define FASTLSTM_BARRIER_H

#include <sched.h>
#include <stddef.h>
#include <time.h>

/* A barrier for the threads of one team that expect to wait only
 * briefly (a step's work is split evenly): spin on a shared generation counter
 * for FL_SPIN_NS nanoseconds, then sleep on it (a futex) until the last thread
 * arrives.
 *
 * A barrier that sleeps at once (libgomp's under OMP_WAIT_POLICY=PASSIVE)
 * pays 10-50 us per wake-up, more than a whole step of a 256-unit layer; one
 * that spins without end (ACTIVE) starves other work.  On a loaded machine a
 * spinning (or yielding) waiter is worse than a sleeping one: an idle core is
 * what lets the scheduler move the thread being waited for onto it.  Zero the
 * struct before the team starts; every thread of the team must pass the same
 * barriers. */
#define FL_SPIN_NS 50000

typedef struct {
    int count, gen, sleepers;
    char pad[52]; /* a cache line of its own */
} fl_spin_barrier;

static inline void fl_cpu_relax(void)
{
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_ia32_pause();
#endif
}

#ifdef __linux__
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
static void fl_sleep_while(int *addr, int val) { syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0); }
static void fl_wake_all(int *addr) { syscall(SYS_futex, addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0); }
#else
static void fl_sleep_while(int *addr, int val)
{
    (void)addr;
    (void)val;
    sched_yield();
}
static void fl_wake_all(int *addr) { (void)addr; }
#endif

/* Spin for up to ns nanoseconds while *word == val; whether it changed.  Timed
 * by the clock (read every 16 pauses, through the vDSO: no system call), not by
 * a count of pauses: a pause takes 10 ns on some x86 CPUs and 140 on others. */
static int fl_spin_while(int *word, int val, long ns)
{
    struct timespec now;
    long long end = 0;
    for (int k = 0;; k++) {
        if (__atomic_load_n(word, __ATOMIC_ACQUIRE) != val) return 1;
        if ((k & 15) == 0) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            const long long t = (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
            if (k == 0)
                end = t + ns;
            else if (t >= end)
                return 0;
        }
        fl_cpu_relax();
    }
}

static void fl_spin_barrier_wait(fl_spin_barrier *b, int nt)
{
    if (nt <= 1) return;
    const int gen = __atomic_load_n(&b->gen, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == nt) {
        __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED);
        /* seq_cst pairs with the sleepers' increment: either a sleeper sees the
         * new generation before it sleeps, or this sees the sleeper. */
        __atomic_store_n(&b->gen, gen + 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&b->sleepers, __ATOMIC_SEQ_CST) > 0) fl_wake_all(&b->gen);
        return;
    }
    if (fl_spin_while(&b->gen, gen, FL_SPIN_NS)) return;
    __atomic_add_fetch(&b->sleepers, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&b->gen, __ATOMIC_SEQ_CST) == gen) fl_sleep_while(&b->gen, gen);
    __atomic_sub_fetch(&b->sleepers, 1, __ATOMIC_RELAXED);
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

#endif /* FASTLSTM_BARRIER_H */
