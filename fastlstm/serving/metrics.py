"""The batcher's counters and histograms, and their Prometheus text exposition.

No prometheus_client dependency: the text format (version 0.0.4) is a few lines per
metric, and keeping the numbers here lets a service publish them under any framework.
Only the batcher's worker thread writes the tick figures; readers take plain copies, so
a scrape may see one tick more in one histogram than in another, never torn numbers.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

#: Upper bounds (seconds) shared by the queue-delay and per-tick time histograms.
SECONDS_BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1.0)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    """Cumulative-bucket histogram in the Prometheus sense: counts per upper bound, a sum and a count."""

    def __init__(self, bounds):
        self.bounds = np.asarray(sorted(bounds), dtype=np.float64)
        self.counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value):
        self.counts[int(np.searchsorted(self.bounds, value, side="left"))] += 1
        self.sum += float(value)

    def observe_many(self, values):
        """Record an array of values with one searchsorted + bincount (the per-tick path)."""
        idx = np.searchsorted(self.bounds, values, side="left")
        self.counts += np.bincount(idx, minlength=len(self.counts))
        self.sum += float(values.sum())

    @property
    def count(self):
        return int(self.counts.sum())

    def quantile(self, q):
        """The upper bound of the bucket holding quantile ``q`` (inf past the last bound), or nan if empty."""
        total = self.counts.sum()
        if total == 0:
            return float("nan")
        k = int(np.searchsorted(np.cumsum(self.counts), q * total, side="left"))
        return float(self.bounds[k]) if k < len(self.bounds) else float("inf")

    def lines(self, name, help_):
        out = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
        cum = np.cumsum(self.counts)
        for bound, n in zip(self.bounds, cum[:-1]):
            out.append(f'{name}_bucket{{le="{bound:g}"}} {int(n)}')
        out += [
            f'{name}_bucket{{le="+Inf"}} {int(cum[-1])}',
            f"{name}_sum {self.sum:.9g}",
            f"{name}_count {int(cum[-1])}",
        ]
        return out


class BatcherMetrics:
    """What a :class:`~fastlstm.serving.Batcher` has done: steps, ticks, batch sizes, queue delay,
    compute and overhead time per tick, refusals.  ``prometheus()`` renders them as text."""

    def __init__(self, max_batch):
        self.steps = 0
        self.ticks = 0
        self.rejected = 0  # QueueFull
        self.expired = 0  # streams closed by idle_timeout
        self.withdrawn = 0  # cancelled or timed out while still queued: not stepped
        bounds = sorted({1 << k for k in range(max(1, int(max_batch)).bit_length())} | {int(max_batch)})
        self.batch_size = Histogram(bounds)
        self.queue_delay = Histogram(SECONDS_BUCKETS)
        self.compute = Histogram(SECONDS_BUCKETS)
        self.overhead = Histogram(SECONDS_BUCKETS)
        self._rate = deque(maxlen=64)  # (time, steps) samples for steps_per_second
        self._rate_lock = threading.Lock()

    def record_tick(self, n, delays, compute_s, now):
        """One tick of ``n`` steps (worker thread): ``delays`` are the requests' seconds in the queue.
        The batcher adds the tick's ``overhead`` once it has handed the outputs over."""
        self.steps += n
        self.ticks += 1
        self.batch_size.observe(n)
        self.queue_delay.observe_many(delays)
        self.compute.observe(compute_s)
        rate = self._rate
        if not rate or now - rate[-1][0] >= 0.25:
            with self._rate_lock:
                rate.append((now, self.steps))

    def steps_per_second(self, window=5.0):
        """Steps per second over about the last ``window`` seconds (0.0 before two samples)."""
        now = time.perf_counter()
        with self._rate_lock:
            samples = [s for s in self._rate if now - s[0] <= window]
        if not samples:
            return 0.0
        t0, s0 = samples[0]
        dt = now - t0
        return (self.steps - s0) / dt if dt > 0 else 0.0

    def prometheus(self, prefix="fastlstm_batcher", gauges=()):
        """The Prometheus text exposition; ``gauges`` adds (name, help, value) triples (open streams...)."""
        out = []

        def counter(name, help_, value):
            out.extend(
                [f"# HELP {prefix}_{name} {help_}", f"# TYPE {prefix}_{name} counter", f"{prefix}_{name} {value}"]
            )

        def gauge(name, help_, value):
            out.extend(
                [f"# HELP {prefix}_{name} {help_}", f"# TYPE {prefix}_{name} gauge", f"{prefix}_{name} {value:.9g}"]
            )

        counter("steps_total", "Stream steps completed.", self.steps)
        counter("ticks_total", "Batched pool.step calls (ticks).", self.ticks)
        counter("rejected_total", "Steps refused because the queue was full (QueueFull).", self.rejected)
        counter("expired_total", "Streams closed by idle_timeout.", self.expired)
        counter("withdrawn_total", "Steps cancelled or timed out while queued (not stepped).", self.withdrawn)
        gauge("steps_per_second", "Steps per second over the last 5 seconds.", self.steps_per_second())
        for name, help_, value in gauges:
            gauge(name, help_, value)
        out += self.batch_size.lines(f"{prefix}_batch_size", "Streams stepped per tick.")
        out += self.queue_delay.lines(
            f"{prefix}_queue_delay_seconds", "Time a step waited in the queue before its tick began."
        )
        out += self.compute.lines(f"{prefix}_compute_seconds", "Time in pool.step per tick.")
        out += self.overhead.lines(
            f"{prefix}_overhead_seconds",
            "The batcher's own time per tick outside pool.step (gather, scatter, hand-off).",
        )
        return "\n".join(out) + "\n"
