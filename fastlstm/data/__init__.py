"""The bundled example: weekly Mauna Loa CO2 and a small LSTM trained to forecast it.

The data (``co2_weekly.csv``, public domain, see ``DATA_SOURCE.md``) and the weights
(``co2_lstm.safetensors``, fastlstm's own format, written by ``examples/train_bundled.py``)
ship inside the package, so ``fastlstm demo`` and ``fastlstm bench`` work offline.

The task is a one-week-ahead forecast.  At week ``t`` the model reads three features
(:func:`features`) and outputs the expected change to week ``t + 1``, in units of
:data:`DIFF_SCALE` ppm; the forecast is ``co2[t] + DIFF_SCALE * y[t]``.  Training and
the demo both build their inputs here, so they cannot drift apart.
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
from typing import NamedTuple, Optional

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))

#: The data file: ``date`` (YYYYMMDD, Saturdays, one row per week) and ``co2`` (ppmv; empty when missing).
CSV_PATH = os.path.join(_HERE, "co2_weekly.csv")

#: The trained model, in fastlstm's own format.
MODEL_PATH = os.path.join(_HERE, "co2_lstm.safetensors")

#: ppm per unit of the model's first input and of its output.  About one standard
#: deviation of the weekly change, so the network sees inputs of order 1.
DIFF_SCALE = 0.5

#: Weeks before this date train the model; ``VALID_START`` onwards picks the best epoch;
#: ``TEST_START`` onwards is never seen in training and is what ``fastlstm demo`` scores.
VALID_START = 19900101
TEST_START = 19940101


class Series(NamedTuple):
    """The weekly record: ``dates`` (int YYYYMMDD), ``co2`` with missing weeks filled, ``measured`` mask."""

    dates: np.ndarray
    co2: np.ndarray
    measured: np.ndarray


def load_series(path: str = CSV_PATH) -> Series:
    """Read the CSV; fill the missing weeks (59 of 2284) by linear interpolation.

    The filled values only feed the model's inputs: every score uses ``measured``
    weeks as targets, so interpolation never flatters a forecast.
    """
    dates, values = [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != ["date", "co2"]:
            raise ValueError(f"{path}: expected columns date,co2, got {reader.fieldnames}")
        for row in reader:
            dates.append(int(row["date"]))
            values.append(float(row["co2"]) if row["co2"].strip() else np.nan)
    co2 = np.array(values, dtype=np.float64)
    measured = ~np.isnan(co2)
    idx = np.arange(len(co2))
    co2 = np.interp(idx, idx[measured], co2[measured])
    return Series(np.array(dates, dtype=np.int64), co2, measured)


def _day_of_year(dates: np.ndarray) -> np.ndarray:
    return np.array(
        [_dt.date(d // 10000, d // 100 % 100, d % 100).timetuple().tm_yday for d in dates.tolist()], dtype=np.float64
    )


def features(series: Series) -> np.ndarray:
    """Model inputs, ``(T, 3)`` float32: this week's change / DIFF_SCALE, and the season as sin/cos.

    The season is given explicitly because the yearly cycle (about 6 ppm peak to
    peak) is the main thing a one-week forecast can exploit, and it is hard to
    infer from noisy weekly changes alone.
    """
    change = np.diff(series.co2, prepend=series.co2[0]) / DIFF_SCALE
    angle = 2.0 * np.pi * _day_of_year(series.dates) / 365.25
    return np.stack([change, np.sin(angle), np.cos(angle)], axis=1).astype(np.float32)


def targets(series: Series) -> np.ndarray:
    """What the model should output at week t: (co2[t+1] - co2[t]) / DIFF_SCALE, ``(T-1,)``."""
    return (np.diff(series.co2) / DIFF_SCALE).astype(np.float32)


def forecast(series: Series, outputs: np.ndarray) -> np.ndarray:
    """Turn model outputs ``(T, 1)`` into forecasts of next week's CO2 in ppm, ``(T,)``."""
    return series.co2 + DIFF_SCALE * np.asarray(outputs, dtype=np.float64).reshape(-1)


def scored_weeks(series: Series, start: int = TEST_START, stop: Optional[int] = None) -> np.ndarray:
    """Indices ``t`` whose forecast of week ``t + 1`` is scored: ``start <= date[t+1] < stop``,
    with week ``t + 1`` actually measured."""
    nxt = series.dates[1:]
    keep = (nxt >= start) & series.measured[1:]
    if stop is not None:
        keep &= nxt < stop
    return np.flatnonzero(keep)
