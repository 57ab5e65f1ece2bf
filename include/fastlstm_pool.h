/* fastlstm's own thread pool: run fn(tid, nt, arg) on a team of nt threads
 * (the caller is tid 0) and return when every one has returned.
 *
 * Why not OpenMP: libgomp's worker threads do not survive fork().  A child
 * forked after a multi-threaded step (gunicorn --preload, celery prefork,
 * multiprocessing's 'fork' start method) blocked forever in its first
 * parallel region.  Here a pthread_atfork child handler forgets the parent's
 * teams (their threads do not exist in the child), and the child starts fresh
 * ones on its first multi-threaded call.
 *
 * Teams: a caller takes a free team for one call and gives it back after, so
 * Python threads stepping different streams at once each get their own
 * workers, and run in parallel.  Teams and their workers persist (the per-call
 * path creates nothing once warm).  A worker waits for work by spinning
 * briefly (FL_POOL_IDLE_SPIN_NS), then sleeping on a futex, so steps in a tight
 * loop pay no wake-up and an idle process burns no CPU; the caller waits for
 * its workers as the in-team barrier does (fastlstm_barrier.h).
 * Only the workers a call needs are woken; each has its own wake-up word.
 */
#ifndef FASTLSTM_POOL_H
#define FASTLSTM_POOL_H

#include "fastlstm_barrier.h"

typedef void (*fl_task_fn)(int tid, int nt, void *arg);

#if defined(__unix__) || defined(__APPLE__)
#define FL_HAVE_THREADS 1

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>

/* At most this many threads per team (fastlstm.set_num_threads is capped
 * lower, at 4x the cores), and this many teams (concurrent callers beyond it
 * run on their own thread). */
#define FL_POOL_MAX_THREADS 1024
#define FL_POOL_MAX_TEAMS   64

typedef struct fl_team fl_team;

typedef struct {
    int gen;      /* bumped by the caller to hand this worker a task */
    int sleeping; /* the worker sleeps (or is about to) on gen */
    fl_team *team;
    int tid;
    char pad[40]; /* a cache line of its own */
} fl_worker;

struct fl_team {
    fl_task_fn fn; /* the current task, written before the workers' gen */
    void *arg;
    int nt;
    int busy;      /* taken by a caller; under fl_pool_lock */
    int n_workers; /* workers started: tids 1..n_workers */
    fl_worker *workers[FL_POOL_MAX_THREADS];
    int pending;   /* workers still running the current task */
    int caller_sleeping;
};

static pthread_mutex_t fl_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t fl_pool_once = PTHREAD_ONCE_INIT;
static fl_team *fl_teams[FL_POOL_MAX_TEAMS];
static int fl_n_teams;

/* Nanoseconds a worker spins for between calls before it sleeps: enough
 * to catch a caller stepping in a tight loop, short enough that on a machine
 * with other load an idle worker does not take a core's share from the thread
 * doing the work (libgomp's spinning waiters made 2-thread steps up to 10x
 * slower there; the old fix was OMP_WAIT_POLICY=PASSIVE, no spin at all). */
#define FL_POOL_IDLE_SPIN_NS 20000

/* Spin for ns nanoseconds, then sleep, until *word != old; *sleeping tells the waker to call futex wake. */
static void fl_wait_change(int *word, int old, int *sleeping, long ns)
{
    if (fl_spin_while(word, old, ns)) return;
    /* seq_cst pairs with the waker's: either it sees *sleeping set, or this sees the change. */
    __atomic_store_n(sleeping, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(word, __ATOMIC_SEQ_CST) == old) fl_sleep_while(word, old);
    __atomic_store_n(sleeping, 0, __ATOMIC_RELAXED);
}

static void fl_signal_change(int *word, int value, int *sleeping)
{
    __atomic_store_n(word, value, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(sleeping, __ATOMIC_SEQ_CST)) fl_wake_all(word);
}

static void *fl_worker_main(void *p)
{
    fl_worker *w = (fl_worker *)p;
    fl_team *t = w->team;
    int seen = 0;
    for (;;) {
        fl_wait_change(&w->gen, seen, &w->sleeping, FL_POOL_IDLE_SPIN_NS);
        seen = __atomic_load_n(&w->gen, __ATOMIC_ACQUIRE);
        t->fn(w->tid, t->nt, t->arg);
        if (__atomic_sub_fetch(&t->pending, 1, __ATOMIC_SEQ_CST) == 0 &&
            __atomic_load_n(&t->caller_sleeping, __ATOMIC_SEQ_CST))
            fl_wake_all(&t->pending);
    }
    return NULL;
}

/* In a forked child only the forking thread exists: forget every team (their
 * memory is left behind, a few KB) so that the child builds new ones. */
static void fl_pool_prepare_fork(void) { pthread_mutex_lock(&fl_pool_lock); }
static void fl_pool_parent_after_fork(void) { pthread_mutex_unlock(&fl_pool_lock); }
static void fl_pool_child_after_fork(void)
{
    fl_n_teams = 0;
    pthread_mutex_unlock(&fl_pool_lock);
}

static void fl_pool_init(void)
{
    pthread_atfork(fl_pool_prepare_fork, fl_pool_parent_after_fork, fl_pool_child_after_fork);
}

/* Start workers until the team has want of them (or thread creation fails).
 * Workers block every signal: signals are for the caller's threads. */
static void fl_team_grow(fl_team *t, int want)
{
    sigset_t all, old;
    pthread_attr_t attr;
    if (want > FL_POOL_MAX_THREADS - 1) want = FL_POOL_MAX_THREADS - 1;
    if (t->n_workers >= want) return;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    while (t->n_workers < want) {
        fl_worker *w = (fl_worker *)calloc(1, sizeof(fl_worker));
        pthread_t th;
        if (w == NULL) break;
        w->team = t;
        w->tid = t->n_workers + 1;
        if (pthread_create(&th, &attr, fl_worker_main, w) != 0) {
            free(w);
            break;
        }
        t->workers[t->n_workers++] = w;
    }
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* A free team (made if need be), marked busy; NULL when FL_POOL_MAX_TEAMS are all busy. */
static fl_team *fl_team_acquire(void)
{
    fl_team *t = NULL;
    pthread_once(&fl_pool_once, fl_pool_init);
    pthread_mutex_lock(&fl_pool_lock);
    for (int k = 0; k < fl_n_teams && t == NULL; k++)
        if (!fl_teams[k]->busy) t = fl_teams[k];
    if (t == NULL && fl_n_teams < FL_POOL_MAX_TEAMS) {
        t = (fl_team *)calloc(1, sizeof(fl_team));
        if (t != NULL) fl_teams[fl_n_teams++] = t;
    }
    if (t != NULL) t->busy = 1;
    pthread_mutex_unlock(&fl_pool_lock);
    return t;
}

static void fl_team_release(fl_team *t)
{
    pthread_mutex_lock(&fl_pool_lock);
    t->busy = 0;
    pthread_mutex_unlock(&fl_pool_lock);
}

/* fn(tid, nt, arg) for tid 0..nt-1, the caller running tid 0.  Fewer threads
 * run when no team is free or a worker cannot be started (down to the caller
 * alone): fn must give the same results for any nt. */
static void fl_pool_run(int nt, fl_task_fn fn, void *arg)
{
    fl_team *t = nt > 1 ? fl_team_acquire() : NULL;
    if (t == NULL) {
        fn(0, 1, arg);
        return;
    }
    fl_team_grow(t, nt - 1);
    if (nt > t->n_workers + 1) nt = t->n_workers + 1;
    t->fn = fn;
    t->arg = arg;
    t->nt = nt;
    __atomic_store_n(&t->pending, nt - 1, __ATOMIC_SEQ_CST);
    for (int k = 1; k < nt; k++) {
        fl_worker *w = t->workers[k - 1];
        fl_signal_change(&w->gen, __atomic_load_n(&w->gen, __ATOMIC_RELAXED) + 1, &w->sleeping);
    }
    fn(0, nt, arg);
    for (;;) {
        int left = __atomic_load_n(&t->pending, __ATOMIC_SEQ_CST);
        if (left == 0) break;
        fl_wait_change(&t->pending, left, &t->caller_sleeping, FL_SPIN_NS);
    }
    fl_team_release(t);
}

#else /* no POSIX threads: every call runs on the caller's thread */
#define FL_HAVE_THREADS     0
#define FL_POOL_MAX_THREADS 1
static void fl_pool_run(int nt, fl_task_fn fn, void *arg)
{
    (void)nt;
    fn(0, 1, arg);
}
#endif

#endif /* FASTLSTM_POOL_H */
