"""Side-by-side timing: calibrated samples, interleaved repeats, medians; the load meter and
the thread policy every driver uses.

Why it is done this way:

* Every case of a comparison is measured *interleaved*: each repeat runs every case once,
  in a rotated order, and the figure is the median over repeats.  A burst of load from
  another process then hits all engines alike instead of one.
* Each sample runs a case ``n`` times, ``n`` calibrated so a sample lasts about
  ``sample_s``: timer resolution and loop overhead stay out of the figure, and the
  calibration doubles as the warm-up.
* Streams are never reset inside the timing, like a live stream; inputs cycle through a
  fixed random sequence.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, List, Optional

from fastlstm._config import cpu_name
from fastlstm._threads import available_cores

__all__ = [
    "Case",
    "calibrate",
    "measure",
    "OtherLoad",
    "wait_for_quiet",
    "thread_policy",
    "available_cores",
    "rotations",
    "tick_latencies",
    "traced_memory",
    "cpu_name",
    "PAUSE_S",
    "REFERENCE_ENGINES",
]

#: Idle time before each sample, so worker threads the previous engine left spinning (OpenMP,
#: ORT's intra-op pool) have gone to sleep and do not eat into the next engine's sample.
PAUSE_S = 0.005

#: Engines that are yardsticks rather than competitors (a bare loop, BLAS calls): timed after
#: the engines, so an OpenBLAS pool woken by a yardstick never sits in front of an engine.
REFERENCE_ENGINES = ("python", "blas")


@dataclass
class Case:
    """One timed operation: ``run(n)`` does ``n`` units; samples hold seconds per unit."""

    workload: str
    engine: str
    run: Optional[Callable[[int], object]]
    variant: str = ""  # when an engine has several ways to do the work, which one this is
    n: int = 1
    samples: List[float] = field(default_factory=list)
    #: ``timer(n)`` -> seconds for ``n`` units, timed where the work runs (a case in another
    #: process is timed there, so no pipe is in a figure); None: timed here around ``run``.
    timer: Optional[Callable[[int], float]] = None
    unit_s: float = 0.0  # one unit's time, from calibration

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else math.nan

    def timed(self, n: int) -> float:
        """Seconds for ``n`` units."""
        if self.timer is not None:
            return self.timer(n)
        assert self.run is not None, "a Case needs run or timer"
        t0 = time.perf_counter()
        self.run(n)
        return time.perf_counter() - t0


def calibrate(case: Case, sample_s: float, max_n: int = 1_000_000) -> None:
    """Choose ``case.n`` so one sample takes about ``sample_s`` (at least one unit); warms the
    case up, and runs one more untimed sample at the final size."""
    n = 1
    while True:
        dt = case.timed(n)
        if dt >= sample_s * 0.5 or n >= max_n:
            break
        n = min(max_n, n * 2 if dt <= 0 else max(n * 2, int(n * sample_s / dt)))
    case.unit_s = dt / n
    if dt < sample_s:
        n = max(1, min(max_n, int(math.ceil(n * sample_s / max(dt, 1e-9)))))
    case.n = n
    case.timed(n)


def measure(
    cases: List[Case],
    repeats: int,
    sample_s: float,
    tick: Callable[[], None] = lambda: None,
    pause_s: float = PAUSE_S,
    settle_s: float = 0.0,
) -> None:
    """Calibrate every case, then time them interleaved: ``repeats`` x (every case once, rotated).

    ``tick()`` is called after each calibration and each sample (a progress bar).  The
    engines go first, then the :data:`REFERENCE_ENGINES` cases.  ``pause_s`` idles before
    every sample.  Whenever the next sample belongs to another engine than the last one:

    * with ``settle_s`` > 0 (worth it at more than one thread) the run first pauses that
      long: a thread pool keeps spinning after its last job (measured: numpy's OpenBLAS
      ~0.1 s, ORT ~30 ms, torch ~10 ms), and on 2 cores a pool left spinning by the previous
      case takes the core the next case's second thread needs;
    * one untimed sample of the case runs first: the previous engine has just streamed its
      own copy of the weights through the caches, so without it whichever case comes first
      after a switch pays for refilling them (fastlstm's 2-thread step at "large" measured
      1.3 ms in first position and 0.66 ms in second).  A unit over 20 ms re-reads its
      weights many times over, so the refill is already amortised and this is skipped.
    """
    engines = [c for c in cases if c.engine not in REFERENCE_ENGINES]
    reference = [c for c in cases if c.engine in REFERENCE_ENGINES]
    for group in (engines, reference):
        last: Optional[str] = None
        for c in group:
            last = _switch(last, c, settle_s, warm=False)  # calibration warms the case up itself
            calibrate(c, sample_s)
            tick()
        for order in rotations(group, repeats):
            for c in order:
                last = _switch(last, c, settle_s, warm=True)
                if pause_s > 0:
                    time.sleep(pause_s)
                c.samples.append(c.timed(c.n) / c.n)
                tick()
        if settle_s > 0 and group:
            time.sleep(settle_s)


def _switch(last: Optional[str], case: Case, settle_s: float, warm: bool) -> str:
    """Settle and warm up before ``case`` when the engine changes (see :func:`measure`)."""
    if last is not None and last != case.engine:
        if settle_s > 0:
            time.sleep(settle_s)
        if warm and case.unit_s < 0.02:
            case.timed(case.n)
    return case.engine


def tick_latencies(
    tick: Callable[[int], object],
    seconds: float,
    min_ticks: int,
    max_ticks: Optional[int] = None,
    warmup: int = 2,
    start: int = 0,
) -> List[float]:
    """Seconds each call ``tick(k)`` took (k counting up from ``start``), after ``warmup`` untimed calls.

    For latency distributions (p50, p99) rather than medians of calibrated loops: ticks go on
    for ``seconds``, past it until ``min_ticks`` are timed (for a meaningful p99), but never past
    5 x ``seconds`` nor ``max_ticks``: a slow engine then reports fewer ticks, not a longer run.
    """
    for k in range(start, start + warmup):
        tick(k)
    out: List[float] = []
    perf = time.perf_counter
    k = start + warmup
    t_begin = perf()
    stop, hard_stop = t_begin + seconds, t_begin + 5 * seconds
    while not out or (
        (max_ticks is None or len(out) < max_ticks) and (perf() < stop or (len(out) < min_ticks and perf() < hard_stop))
    ):
        t0 = perf()
        tick(k)
        out.append(perf() - t0)
        k += 1
    return out


def rotations(items: list, rounds: int) -> Iterator[list]:
    """``items`` in a rotated order per round: round r starts at item r (mod len)."""
    for r in range(rounds):
        k = r % max(1, len(items))
        yield items[k:] + items[:k]


class OtherLoad:
    """How many cores *other* processes kept busy while the block ran (Linux; NaN elsewhere).

    On a small machine a neighbour's job skews every figure, a multi-threaded one most: on 2
    cores a second process eating one core wrecks any 2-thread figure (an OpenMP barrier waits
    on a descheduled thread).  Drivers print this number next to their figures so a reader can
    judge them.  Busy time comes from /proc/stat, ours from os.times() plus the CPU time of
    ``helper_pids`` (worker processes of the benchmark itself, which are not "other").
    """

    cores = math.nan

    def __init__(self, helper_pids: Iterable[Optional[int]] = ()):
        self.helper_pids = [p for p in helper_pids if p]

    @staticmethod
    def _busy_s() -> float:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle and iowait
        return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def _own_s(self) -> float:
        t = os.times()
        total = t.user + t.system
        for pid in self.helper_pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, ValueError, IndexError):
                pass
        return total

    def __enter__(self) -> "OtherLoad":
        try:
            self._busy0: Optional[float] = self._busy_s()
        except (OSError, ValueError, IndexError):
            self._busy0 = None
        self._own0, self._t0 = self._own_s(), time.perf_counter()
        self.cores = math.nan
        return self

    def __exit__(self, *exc: object) -> None:
        if self._busy0 is not None:
            wall = time.perf_counter() - self._t0
            others = self._busy_s() - self._busy0 - (self._own_s() - self._own0)
            self.cores = max(0.0, others / wall) if wall > 0 else math.nan


def wait_for_quiet(max_load: float, timeout_s: float) -> float:
    """Sleep in 1 s windows until other processes use at most ``max_load`` cores, or ``timeout_s``
    passes; returns the last window's load.  A neighbour's job comes and goes: waiting a little
    is cheaper than publishing figures measured against it."""
    deadline = time.perf_counter() + timeout_s
    while True:
        with OtherLoad() as load:
            time.sleep(1.0)
        if not (load.cores > max_load) or time.perf_counter() >= deadline:
            return load.cores


@contextlib.contextmanager
def thread_policy(n: int) -> Iterator[int]:
    """Hold every engine to ``n`` threads; previous settings are restored on exit.

    * fastlstm: ``fastlstm.threads(n)`` (its thread pool's team across the batch);
    * BLAS: the OpenBLAS pools (scipy's and numpy's) through threadpoolctl, so a batch-1
      sgemm cannot quietly use a second core in a "1 thread" comparison;
    * PyTorch, and so Keras on the torch backend: ``torch.set_num_threads(n)``, only if a
      runner already imported torch (no import for nothing);
    * ONNX Runtime, OpenVINO: no global setting; their runners build sessions with ``n``.
    """
    import fastlstm

    with contextlib.ExitStack() as undo:
        try:
            import threadpoolctl

            limiter = threadpoolctl.threadpool_limits(limits=n, user_api="blas")
            undo.callback(limiter.restore_original_limits)
        except ImportError:  # threadpoolctl comes with the bench and test extras; without it only this is lost
            pass
        undo.enter_context(fastlstm.threads(n))
        torch = sys.modules.get("torch")
        if torch is not None:
            undo.callback(torch.set_num_threads, torch.get_num_threads())
            torch.set_num_threads(n)
        yield n


def traced_memory(loop: Callable[[int], object], n: int):
    """``(growth, peak above the start)`` of tracemalloc's traced memory over ``loop(n)``, in bytes
    (tracemalloc must be running): how an allocation-free path is shown to be one."""
    import tracemalloc

    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    loop(n)
    after, peak = tracemalloc.get_traced_memory()
    return after - before, peak - before
