#!/usr/bin/env python
"""Train the bundled example model: a 2-layer LSTM forecasting next week's Mauna Loa CO2.

    python examples/train_bundled.py                 # writes fastlstm/data/co2_lstm.safetensors
    python examples/train_bundled.py --out my.safetensors --steps 300

Needs PyTorch (training only; fastlstm itself runs the result without it).  Seeded
and single-threaded, so a rerun on the same torch version gives the same weights;
it takes about half a minute on one core.

The data and the input features come from :mod:`fastlstm.data`, the same code
``fastlstm demo`` uses.  Weeks before 1990 train, 1990-1993 pick the best
checkpoint, and 1994-2001 are never seen: that is the period the demo scores.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

import fastlstm
from fastlstm import data
from fastlstm.loaders import from_torch

HIDDEN = 64
LAYERS = 2
WINDOW = 156  # three years per training window
BURN_IN = 26  # the first half year of a window only warms the state up
BATCH = 32


class Forecaster(nn.Module):
    """nn.LSTM plus a linear head: the structure fastlstm.from_torch reads directly."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, HIDDEN, num_layers=LAYERS)
        self.head = nn.Linear(HIDDEN, 1)

    def forward(self, x):  # x (T, B, 3) -> (T, B, 1)
        y, _ = self.lstm(x)
        return self.head(y)


def mae(series, outputs, start, stop=None):
    """Mean absolute error in ppm of the forecasts for the measured weeks in [start, stop)."""
    t = data.scored_weeks(series, start, stop)
    return float(np.abs(data.forecast(series, outputs)[t] - series.co2[t + 1]).mean())


def naive_mae(series, start, stop=None):
    """The same score for 'next week equals this week'."""
    t = data.scored_weeks(series, start, stop)
    return float(np.abs(series.co2[t] - series.co2[t + 1]).mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=data.MODEL_PATH, help="where to write the model (default: the bundled file)")
    ap.add_argument("--steps", type=int, default=400, help="optimiser steps (default 400)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # deterministic reductions, and the figure above is for one core
    rng = np.random.default_rng(args.seed)

    series = data.load_series()
    x_all = torch.from_numpy(data.features(series))[:, None, :]  # (T, 1, 3): one long stream
    y_all = torch.from_numpy(data.targets(series))  # (T-1,)
    # Loss only where next week was measured: interpolated weeks are not truth.
    mask_all = torch.from_numpy(series.measured[1:].astype(np.float32))
    n_train = int(np.searchsorted(series.dates, data.VALID_START))  # weeks before 1990
    starts = np.arange(0, n_train - WINDOW - 1)

    model = Forecaster()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps, eta_min=1e-4)
    best = (np.inf, None, -1)
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        model.train()
        s = rng.choice(starts, BATCH)
        idx = s[None, :] + np.arange(WINDOW)[:, None]  # (WINDOW, BATCH)
        xb = x_all[idx, 0, :]
        yb, mb = y_all[idx][BURN_IN:], mask_all[idx][BURN_IN:]
        pred = model(xb)[BURN_IN:, :, 0]
        loss = ((pred - yb) ** 2 * mb).sum() / mb.sum()
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.steps:
            # Validate the way the demo runs: one stream over the whole record from zero state.
            model.eval()
            with torch.no_grad():
                out = model(x_all)[:, 0, 0].numpy()
            val = mae(series, out, data.VALID_START, data.TEST_START)
            if val < best[0]:
                best = (val, {k: v.clone() for k, v in model.state_dict().items()}, step)
            print(
                f"step {step:5d}  train loss {loss.item():.4f}  valid MAE {val:.4f} ppm  "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )

    model.load_state_dict(best[1])
    model.eval()
    fl = from_torch(model, head_activation="linear")  # nn.Linear with nothing after it
    fl.save(args.out)

    # Report on the held-out years, computed by fastlstm from the file just written.
    reloaded = fastlstm.loaders.load(args.out)
    out = reloaded.predict(data.features(series))[:, 0]
    print(f"\nbest checkpoint: step {best[2]} (valid MAE {best[0]:.4f} ppm)")
    print(
        f"valid 1990-1993: LSTM {mae(series, out, data.VALID_START, data.TEST_START):.4f} ppm, "
        f"last value {naive_mae(series, data.VALID_START, data.TEST_START):.4f} ppm"
    )
    print(
        f"test  1994-2001: LSTM {mae(series, out, data.TEST_START):.4f} ppm, "
        f"last value {naive_mae(series, data.TEST_START):.4f} ppm"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
