"""``fastlstm demo``: stream 44 years of weekly Mauna Loa CO2 through the bundled LSTM.

The model sees one week per ``Stream.step`` call, as a live feed would deliver it,
and forecasts the next week.  It is scored on 1994-2001, weeks it never saw in
training, against the naive forecast "next week = this week".
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np

from .. import data
from . import load_model

PASSES = 7  # latency: median over this many full passes of the record


def _stream_all(model, x):
    """One pass: every week through ``stream.step`` with ``out=``; returns (outputs, seconds)."""
    stream = model.stream()
    ys = np.empty((len(x), model.output_size), np.float32)
    step = stream.step
    t0 = time.perf_counter()
    for t in range(len(x)):
        step(x[t], out=ys[t])
    return ys, time.perf_counter() - t0


def _date(d):
    return f"{d // 10000:04d}-{d // 100 % 100:02d}-{d % 100:02d}"


def run(args):
    series = data.load_series()
    x = data.features(series)
    model = load_model(None)
    rows = [_stream_all(model, x) for _ in range(PASSES)]
    ys = rows[0][0]
    step_us = statistics.median(dt for _, dt in rows) / len(x) * 1e6

    pred = data.forecast(series, ys)  # pred[t]: the forecast of week t + 1
    t = data.scored_weeks(series)
    truth = series.co2[t + 1]
    mae_model = float(np.abs(pred[t] - truth).mean())
    mae_naive = float(np.abs(series.co2[t] - truth).mean())

    shown = t[-args.rows :]
    parts = [layer.describe() for layer in model.layers]
    print(
        f"Weekly CO2 at Mauna Loa (ppm), {_date(series.dates[0])} to {_date(series.dates[-1])}: "
        f"{len(x)} weeks streamed one step at a time through the bundled LSTM "
        f"({', '.join(parts)})."
    )
    print(f"Each row: the forecast made the week before, from the weeks up to then.  Last {len(shown)} weeks:\n")
    print(f"{'week of':<12}{'measured':>10}{'LSTM':>10}{'error':>8}{'last value':>12}{'error':>8}")
    for i in shown:
        m, f, n = series.co2[i + 1], pred[i], series.co2[i]
        print(f"{_date(series.dates[i + 1]):<12}{m:>10.2f}{f:>10.2f}{f - m:>+8.2f}{n:>12.2f}{n - m:>+8.2f}")
    gain = 100.0 * (1.0 - mae_model / mae_naive)
    first, last = _date(series.dates[t[0] + 1]), _date(series.dates[t[-1] + 1])
    print(f"\nForecast error, {first} to {last} ({len(t)} measured weeks the model never saw in training):")
    print(f"  LSTM        mean abs error {mae_model:.3f} ppm")
    print(f"  last value  mean abs error {mae_naive:.3f} ppm   (the LSTM's error is {gain:.0f}% lower)")
    print(
        f"Latency: {step_us:.2f} µs per step (Stream.step with out=, median of {PASSES} passes over "
        f"{len(x)} weeks; one stream runs on one thread)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "weeks": len(x),
                    "scored_weeks": int(len(t)),
                    "scored_from": int(series.dates[t[0] + 1]),
                    "scored_to": int(series.dates[t[-1] + 1]),
                    "mae_model_ppm": mae_model,
                    "mae_last_value_ppm": mae_naive,
                    "step_us": step_us,
                    "rows": [
                        {
                            "date": int(series.dates[i + 1]),
                            "measured": float(series.co2[i + 1]),
                            "forecast": float(pred[i]),
                            "last_value": float(series.co2[i]),
                        }
                        for i in shown
                    ],
                },
                f,
                indent=2,
            )
            f.write("\n")
    return 0
