"""Offline scoring on Ray: every window of the bundled Mauna Loa CO2 record, forecast by the bundled
LSTM through ``fastlstm.ray.predict_dataset``, checked against ``model.predict``, scored in ppm.

    pip install 'fastlstm[ray]'
    python examples/ray_offline_co2.py            # a local Ray cluster; RAY_ADDRESS for a real one
"""

import time

import numpy as np
import ray

import fastlstm
from fastlstm import data
from fastlstm.ray import predict_dataset

model = fastlstm.load(data.MODEL_PATH)
series = data.load_series()
x, target = data.features(series).astype(np.float32), data.targets(series)

# Windows of 1 to 2 years ending at every week: variable lengths, grouped by length inside predict_dataset.
rng = np.random.default_rng(0)
rows = []
for end in range(104, len(x)):
    n = int(rng.integers(52, 105))
    rows.append({"end": end, "x": x[end - n : end]})

ray.init(include_dashboard=False, log_to_driver=False)
t = time.perf_counter()
scored = predict_dataset(model, ray.data.from_items(rows), num_actors=2).take_all()
print(f"{len(scored)} windows scored in {time.perf_counter() - t:.1f} s with 2 actors")

err, worst = [], 0.0
for r in scored:
    y = np.asarray(r["y"], np.float32)
    worst = max(worst, float(np.abs(y - model.predict(r["x"])).max()))
    last = r["end"] - 1  # the window's last week forecasts week `end`
    if series.measured[r["end"]]:
        err.append(data.DIFF_SCALE * (y[-1, 0] - target[last]))
print(f"largest difference from model.predict: {worst:.2e}")
print(f"one-week-ahead forecast error over {len(err)} windows: RMS {np.sqrt(np.mean(np.square(err))):.3f} ppm")
ray.shutdown()
