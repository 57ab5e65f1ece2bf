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

import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # works under --import-mode=importlib too
    sys.path.insert(0, _HERE)

import frameworks as fw  # noqa: E402


def pytest_addoption(parser):
    group = parser.getgroup("fastlstm bench")
    group.addoption("--bench-threads", type=int, default=1, help="threads for every engine (default 1)")
    group.addoption("--bench-head", type=int, default=0, help="dense head outputs (default: no head)")
    group.addoption("--bench-configs", default="", help="comma-separated subset of " + ",".join(fw.CONFIGS))


def pytest_collection_modifyitems(config, items):
    """Drop the configs not asked for with --bench-configs (cheaper than skipping: nothing is built)."""
    wanted = config.getoption("--bench-configs")
    if not wanted:
        return
    wanted = set(wanted.split(","))
    unknown = wanted - set(fw.CONFIGS)
    if unknown:
        raise pytest.UsageError(f"--bench-configs: unknown {sorted(unknown)}; known {list(fw.CONFIGS)}")
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

    The engines are imported first (thread_policy only sets engines already
    loaded), fastlstm before torch: the process has one libgomp, and the first
    to load it sets its OMP_WAIT_POLICY for both, so here torch runs with
    fastlstm's sleeping waiters.  ``bench/run_engine.py`` avoids this by running
    fastlstm in its own process; use it for figures at more than one thread.
    """
    for mod in ("fastlstm", "torch"):
        try:
            __import__(mod)
        except ImportError:
            pass
    n = request.config.getoption("--bench-threads")
    with fw.thread_policy(n):
        yield n


@pytest.fixture(scope="session")
def bundles(request, tmp_path_factory, bench_threads):
    """``bundles(cfg_name)`` -> a dict with the torch model, its fastlstm and ONNX twins and inputs.

    Keys: cfg, x (T, B, I), lstm, head, cells, ref (torch output), fl (Model or None),
    ort_seq (session or None), ort_step (OrtStepper or None).
    """
    pytest.importorskip("torch")
    head_size = request.config.getoption("--bench-head") or None
    cache = {}
    tmp = tmp_path_factory.mktemp("onnx")

    def get(name):
        if name in cache:
            return cache[name]
        cfg = fw.CONFIGS[name]
        lstm, head = fw.build_torch(cfg, head_size)
        x = fw.make_inputs(cfg)
        b = {"cfg": cfg, "x": x, "lstm": lstm, "head": head, "cells": fw.torch_cells(lstm),
             "ref": fw.torch_forward(lstm, head, x), "fl": None, "ort_seq": None, "ort_step": None}
        try:
            b["fl"] = fw.to_fastlstm(lstm, head)
        except ImportError:
            pass
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            pass
        else:
            seq = fw.export_onnx_sequence(lstm, head, cfg, str(tmp / f"{name}-seq.onnx"))
            step = fw.export_onnx_step(lstm, head, cfg, str(tmp / f"{name}-step.onnx"))
            b["ort_seq"] = fw.ort_session(seq, bench_threads)
            b["ort_step"] = fw.OrtStepper(fw.ort_session(step, bench_threads), cfg)
        cache[name] = b
        return b

    return get
