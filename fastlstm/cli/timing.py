"""Side-by-side timing: calibrated samples, interleaved repeats, medians.

Why it is done this way:

* Every case of a comparison is measured *interleaved*: each repeat runs every
  case once, in a rotated order, and the figure is the median over repeats.  A
  burst of load from another process then hits all engines alike instead of one.
* Each sample runs a case ``n`` times, ``n`` calibrated so a sample lasts about
  ``sample_s``: timer resolution and loop overhead stay out of the figure, and
  the calibration doubles as the warm-up.
* Streams are never reset inside the timing, like a live stream; inputs cycle
  through a fixed random sequence.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, List


#: Idle time before each sample, so worker threads the previous engine left spinning (OpenMP,
#: ORT's intra-op pool) have gone to sleep and do not eat into the next engine's sample.
PAUSE_S = 0.005


@dataclass
class Case:
    """One timed operation: ``run(n)`` does ``n`` units; samples hold seconds per unit."""

    workload: str
    engine: str
    run: Callable[[int], object]
    variant: str = ""  # when an engine has several ways to do the work, which one this is
    n: int = 1
    samples: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else math.nan


def calibrate(case: Case, sample_s: float, max_n: int = 1_000_000) -> None:
    """Choose ``case.n`` so one sample takes about ``sample_s`` (at least one unit)."""
    n = 1
    while True:
        t0 = time.perf_counter()
        case.run(n)
        dt = time.perf_counter() - t0
        if dt >= sample_s / 2 or n >= max_n:
            break
        n = min(max_n, n * 2 if dt <= 0 else max(n * 2, int(n * sample_s / dt)))
    case.n = max(1, min(max_n, int(math.ceil(n * sample_s / max(dt, 1e-9))))) if dt < sample_s else n


def measure(cases: List[Case], repeats: int, sample_s: float, tick=lambda: None) -> None:
    """Calibrate every case, then time them interleaved; ``tick()`` is called after each sample."""
    for c in cases:
        calibrate(c, sample_s)
        tick()
    for r in range(repeats):
        k = r % len(cases)
        for c in cases[k:] + cases[:k]:
            time.sleep(PAUSE_S)
            t0 = time.perf_counter()
            c.run(c.n)
            c.samples.append((time.perf_counter() - t0) / c.n)
            tick()


class OtherLoad:
    """How many cores *other* processes kept busy while the block ran (Linux; NaN elsewhere).

    On a small machine a neighbour's job skews every figure, a multi-threaded one
    most; the report prints this number so a reader can judge the run.
    """

    cores = math.nan

    @staticmethod
    def _busy_s():
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        return (sum(vals[:8]) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait

    def __enter__(self):
        try:
            self._busy0 = self._busy_s()
        except (OSError, ValueError, IndexError):
            self._busy0 = None
        t = os.times()
        self._own0, self._t0 = t.user + t.system, time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self._busy0 is not None:
            t = os.times()
            wall = time.perf_counter() - self._t0
            others = self._busy_s() - self._busy0 - (t.user + t.system - self._own0)
            self.cores = max(0.0, others / wall) if wall > 0 else math.nan
        return False


@contextlib.contextmanager
def thread_policy(n: int):
    """Hold every engine to ``n`` threads: fastlstm, BLAS (threadpoolctl) and torch's intra-op pool
    (and so Keras on the torch backend).

    ONNX Runtime has no global setting: its sessions are built with ``n`` threads.
    Previous settings are restored on exit.
    """
    import fastlstm

    undo = []
    try:
        import threadpoolctl

        limiter = threadpoolctl.threadpool_limits(limits=n, user_api="blas")
        undo.append(limiter.restore_original_limits)
    except ImportError:
        pass
    old = fastlstm.get_num_threads()
    fastlstm.set_num_threads(n)
    undo.append(lambda: fastlstm.set_num_threads(old))
    torch = sys.modules.get("torch")  # only if a runner already loaded it: no import for nothing
    if torch is not None:
        old_t = torch.get_num_threads()
        torch.set_num_threads(n)
        undo.append(lambda: torch.set_num_threads(old_t))
    try:
        yield
    finally:
        for fn in reversed(undo):
            fn()
