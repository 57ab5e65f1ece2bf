"""pytest-benchmark suite: fastlstm vs PyTorch vs ONNX Runtime on the six engine configs.

    pytest bench                                   # 1 thread, every config
    pytest bench --bench-threads 2                 # the multi-thread figures
    pytest bench --bench-configs tiny,small -k step
    pytest bench --benchmark-disable               # run each case once: a smoke test, no timing

Benchmarks are grouped per config and kind ("tiny step", "tiny predict"), so
pytest-benchmark's table ranks the engines within a group.  Step benchmarks time
ONE step per call with the state carried from call to call (a live stream); the
input cycles through a fixed random sequence.  Predict benchmarks time one whole
sequence from zero state.

Nothing here asserts on time (the machine is shared and noisy); the side-by-side
ratios against the targets come from ``python bench/run_engine.py``.  Each case
does check its output against torch once, so a fast wrong engine cannot pass
silently.
"""

import itertools

import numpy as np
import pytest

from fastlstm.harness.configs import CONFIGS

CONFIG_NAMES = list(CONFIGS)
cfg_param = pytest.mark.parametrize("cfg_name", CONFIG_NAMES)

# float32 rounding against torch over up to 1000 recurrent steps; parity tests
# with tight tolerances live in tests/, this only catches a wrong computation.
ATOL = 1e-4


def _fl(bundles, cfg_name):
    return bundles(cfg_name)


def _ort(bundles, cfg_name):
    b = bundles(cfg_name)
    if b["ort"] is None:
        pytest.skip("onnxruntime not installed")
    return b


def _info(benchmark, b, kind):
    cfg = b["cfg"]
    benchmark.group = f"{cfg.name} {kind}"
    benchmark.extra_info.update(config=cfg.label(), unit="one step" if kind == "step" else "one sequence")


def _add_gflops(benchmark, b):
    """Record GFLOP/s of a predict benchmark (2*T*B*4H*(I+H) per layer) next to its time."""
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None and stats.stats.median > 0:
        benchmark.extra_info["gflops"] = round(b["cfg"].flops_per_sequence() / stats.stats.median / 1e9, 2)


# --------------------------------------------------------------------------- fastlstm


@cfg_param
def test_fastlstm_step_out(benchmark, bundles, cfg_name):
    """Stream.step with a preallocated ``out``: the zero-allocation streaming path."""
    b = _fl(bundles, cfg_name)
    cfg, x, model = b["cfg"], b["x"], b["fl"]
    if cfg.B == 1:
        stream, inputs, out = model.stream(), [x[t, 0] for t in range(cfg.T)], np.empty(model.output_size, np.float32)
    else:
        stream, inputs = model.stream(batch_size=cfg.B), [x[t] for t in range(cfg.T)]
        out = np.empty((cfg.B, model.output_size), np.float32)
    # parity over the first steps, from a fresh state
    first = [stream.step(inputs[t], out=out).copy() for t in range(min(cfg.T, 16))]
    np.testing.assert_allclose(np.stack(first).reshape(b["ref"][: len(first)].shape), b["ref"][: len(first)], atol=ATOL)
    it = itertools.cycle(inputs)
    step = stream.step
    _info(benchmark, b, "step")
    benchmark(lambda: step(next(it), out=out))


@cfg_param
def test_fastlstm_step(benchmark, bundles, cfg_name):
    """Stream.step returning a new array each call (what casual code does)."""
    b = _fl(bundles, cfg_name)
    cfg, x, model = b["cfg"], b["x"], b["fl"]
    if cfg.B == 1:
        stream, inputs = model.stream(), [x[t, 0] for t in range(cfg.T)]
    else:
        stream, inputs = model.stream(batch_size=cfg.B), [x[t] for t in range(cfg.T)]
    it = itertools.cycle(inputs)
    step = stream.step
    _info(benchmark, b, "step")
    benchmark(lambda: step(next(it)))


@cfg_param
def test_fastlstm_predict(benchmark, bundles, cfg_name):
    b = _fl(bundles, cfg_name)
    cfg, model = b["cfg"], b["fl"]
    seq = np.ascontiguousarray(b["x"][:, 0, :]) if cfg.B == 1 else b["x"]
    _info(benchmark, b, "predict")
    y = benchmark(model.predict, seq)
    np.testing.assert_allclose(np.asarray(y).reshape(b["ref"].shape), b["ref"], atol=ATOL)
    _add_gflops(benchmark, b)


# --------------------------------------------------------------------------- PyTorch


def _torch_step(benchmark, bundles, cfg_name, route):
    import torch

    b = bundles(cfg_name)
    stepper = b["torch"].steppers(b["x"])[route]
    it = itertools.cycle(stepper.inputs)
    _info(benchmark, b, "step")
    with torch.inference_mode():
        benchmark(lambda: stepper.step(next(it)))


@cfg_param
def test_torch_lstm_step(benchmark, bundles, cfg_name):
    """nn.LSTM on a T=1 slice, (h, c) carried by the caller."""
    _torch_step(benchmark, bundles, cfg_name, "nn.LSTM")


@cfg_param
def test_torch_cell_step(benchmark, bundles, cfg_name):
    """One nn.LSTMCell per layer, chained by hand: the other usual way to stream in PyTorch."""
    _torch_step(benchmark, bundles, cfg_name, "nn.LSTMCell")


@cfg_param
def test_torch_predict(benchmark, bundles, cfg_name):
    """nn.LSTM over the whole sequence (oneDNN path where torch takes it)."""
    b = bundles(cfg_name)
    _info(benchmark, b, "predict")
    benchmark(b["torch"].predict, b["x"])
    _add_gflops(benchmark, b)


# --------------------------------------------------------------------------- ONNX Runtime


def _ort_step(benchmark, bundles, cfg_name, stepper):
    b = _ort(bundles, cfg_name)
    first = stepper.outputs(min(b["cfg"].T, 16))
    np.testing.assert_allclose(first, b["ref"][: len(first)], atol=ATOL)
    it = itertools.cycle(stepper.inputs)
    _info(benchmark, b, "step")
    benchmark(lambda: stepper.step(next(it)))


@cfg_param
def test_ort_step(benchmark, bundles, cfg_name):
    """T=1 model, session.run with h/c fed back: the plain ORT streaming loop."""
    b = _ort(bundles, cfg_name)
    _ort_step(benchmark, bundles, cfg_name, b["ort"].run_stepper(b["x"]))


@cfg_param
def test_ort_step_iobind(benchmark, bundles, cfg_name):
    """T=1 model through prepared IOBindings (no allocation): ORT's fastest Python streaming loop."""
    b = _ort(bundles, cfg_name)
    _ort_step(benchmark, bundles, cfg_name, b["ort"].steppers(b["x"])[""])


@cfg_param
def test_ort_predict(benchmark, bundles, cfg_name):
    b = _ort(bundles, cfg_name)
    _info(benchmark, b, "predict")
    y = benchmark(b["ort"].predict, b["x"])
    np.testing.assert_allclose(y, b["ref"], atol=ATOL)
    _add_gflops(benchmark, b)
