"""Fixtures for the pytest-benchmark suite (``pytest bench``).

Models are expensive to build (ONNX export, ORT weight prepacking, a 1024-unit
LSTM), so each config is built once per session and cached; every benchmark of
that config then times the same weights.

Options:
  --bench-threads N   threads for every engine (default 1: the single-core
                      latency figures the targets are stated at; use 2 for the
                      scaling figures)
  --bench-head N      add a dense head with N outputs to every model (default: none)
  --bench-configs a,b run only these configs
"""

import pytest

from fastlstm.harness.configs import CONFIGS as _CONFIGS


def pytest_addoption(parser):
    group = parser.getgroup("fastlstm bench")
    group.addoption("--bench-threads", type=int, default=1, help="threads for every engine (default 1)")
    group.addoption("--bench-head", type=int, default=0, help="dense head outputs (default: no head)")
    group.addoption("--bench-configs", default="", help="comma-separated subset of " + ",".join(_CONFIGS))


def pytest_collection_modifyitems(config, items):
    """Drop the configs not asked for with --bench-configs (cheaper than skipping: nothing is built)."""
    wanted = config.getoption("--bench-configs")
    if not wanted:
        return
    wanted = set(wanted.split(","))
    unknown = wanted - set(_CONFIGS)
    if unknown:
        raise pytest.UsageError(f"--bench-configs: unknown {sorted(unknown)}; known {list(_CONFIGS)}")
    keep, drop = [], []
    for item in items:
        cs = getattr(item, "callspec", None)
        name = cs.params.get("cfg_name") if cs else None
        (keep if name is None or name in wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def bench_threads(request):
    """Enter the thread policy for the whole session, so every engine runs on the same count.

    The engines are imported first (thread_policy only sets engines already loaded), fastlstm
    before torch: the process has one libgomp, and the first to load it sets its
    OMP_WAIT_POLICY for both, so here torch runs with fastlstm's sleeping waiters.
    ``bench/run_engine.py`` avoids this by running fastlstm in its own process; use it for
    figures at more than one thread.
    """
    from fastlstm.harness.timing import thread_policy

    pytest.importorskip("torch")
    with thread_policy(request.config.getoption("--bench-threads")) as n:
        yield n


@pytest.fixture(scope="session")
def bundles(request, bench_threads):
    """``bundles(cfg_name)`` -> a dict with the model, its torch and ONNX Runtime rebuilds and inputs.

    Keys: cfg, x (T, B, I), fl (the fastlstm Model), torch (TorchRunner), ref (torch's output),
    ort (OrtRunner, or None without onnxruntime).
    """
    from fastlstm.harness import configs, missing_modules
    from fastlstm.harness.ort_runner import OrtRunner
    from fastlstm.harness.torch_runner import TorchRunner

    head_size = request.config.getoption("--bench-head") or None
    cache = {}

    def get(name):
        if name not in cache:
            cfg = _CONFIGS[name]
            model, x = configs.random_model(cfg, head_size), configs.make_inputs(cfg)
            torch_runner = TorchRunner(model)
            cache[name] = {
                "cfg": cfg,
                "x": x,
                "fl": model,
                "torch": torch_runner,
                "ref": torch_runner.predict(x),
                "ort": None if missing_modules("onnxruntime") else OrtRunner(model, bench_threads),
            }
        return cache[name]

    return get
