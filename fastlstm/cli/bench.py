"""``fastlstm bench``: one model in fastlstm and in every framework installed, side by side.

Order of work: load the model; build a runner per framework (a missing framework
is *skipped*, with its install command, and one that cannot express the model says
why); check every runner's outputs against fastlstm's (parity); then time the
workloads users run, all engines interleaved (:mod:`.timing`), and report medians
with ratios (:mod:`.report`).
"""

from __future__ import annotations

import os
import platform
import sys
import time
import warnings

import numpy as np

from . import CommandError, load_model
from .. import compare
from ..data import MODEL_PATH
from .info import file_format
from .timing import Case, OtherLoad, measure, thread_policy

#: (repeats, sample seconds, sequence length) per mode.
FULL = (15, 0.08, 1000)
QUICK = (3, 0.01, 200)
STEP_INPUTS = 256      # distinct inputs the streaming rows cycle through
PARITY_STEPS = 64


def _left_out(args, keras_file):
    """The frameworks not to try, each with the reason (name -> reason)."""
    names = list(compare.FRAMEWORKS)
    if args.frameworks == "auto":
        out = {} if keras_file else {"keras": "runs Keras files only (--frameworks keras to include it)"}
        if not compare.is_onnx_file(args.model or ""):
            out["openvino"] = "runs ONNX files only (fastlstm bench model.onnx)"
        return out
    want = [t.strip() for t in args.frameworks.split(",") if t.strip()]
    bad = [t for t in want if t not in names]
    if bad or not want:
        raise CommandError(f"--frameworks: unknown {', '.join(bad) or '(empty)'}; choose from {','.join(names)}")
    return {n: "not requested (--frameworks)" for n in names if n not in want}


def _version(module_name):
    mod = sys.modules.get(module_name)
    return getattr(mod, "__version__", None) if mod is not None else None


def build_runners(model, left_out, threads, say, onnx_file=None):
    """Runners for the frameworks that can run ``model``; a status entry for every framework.

    ``onnx_file``: the ONNX file ``model`` came from, which ONNX Runtime and OpenVINO then run."""
    status = {"fastlstm": {"status": "ran", "version": _version("fastlstm")}}
    runners = {"fastlstm": compare.FastlstmRunner(model)}
    for name in compare.FRAMEWORKS:
        label, install = compare.FRAMEWORKS[name]
        if name in left_out:
            status[name] = {"status": "skipped", "reason": left_out[name]}
            continue
        missing = compare.missing_modules(name, onnx_file is not None)
        if missing:
            status[name] = {"status": "skipped", "reason": f"not installed ({', '.join(missing)})",
                            "install": install}
            continue
        say(f"building the {label} model")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                runners[name] = compare.make_runner(name, model, threads=threads, onnx_file=onnx_file)
        except compare.Unsupported as exc:
            status[name] = {"status": "skipped", "reason": f"cannot run this model: {exc}"}
            continue
        except Exception as exc:  # noqa: BLE001 - one framework's bug must not stop the comparison
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            status[name] = {"status": "skipped", "reason": f"failed to build: {type(exc).__name__}: {first}"}
            continue
        status[name] = {"status": "ran", "version": _version(name)}
        if getattr(runners[name], "note", None):
            status[name]["note"] = runners[name].note
    return runners, status


def _workloads(model, seq_len, streams, rng):
    """(key, label, unit, inputs, kind) for each row; streaming rows only for a model that can stream."""
    I = model.input_size
    rows = []
    if model.streamable:
        rows.append(("step", "streaming step, 1 stream", "us/step",
                     rng.standard_normal((STEP_INPUTS, 1, I), dtype=np.float32), "step"))
    rows.append(("sequence", f"whole sequence, T={seq_len}", "ms/seq",
                 rng.standard_normal((seq_len, 1, I), dtype=np.float32), "seq"))
    if model.streamable:
        for n in streams:
            rows.append((f"streams_{n}", f"{n} streams stepped together", "us/step",
                         rng.standard_normal((max(8, STEP_INPUTS // n), n, I), dtype=np.float32), "step"))
    return rows


def check_parity(runners, rows, steppers, say):
    """Max |difference| from fastlstm of each framework's outputs, per workload, before any timing.

    Returns ``(errors, scale)``: ``errors[framework][workload]``, and the largest |output|
    fastlstm produced (the tolerance scales with it)."""
    say("checking that every framework computes the same outputs")
    errors, scale = {}, 0.0
    for key, _, _, x, kind in rows:
        if kind == "seq":
            x = x[:200]
            outputs = {name: r.predict(x) for name, r in runners.items()}
        else:  # every variant of every framework
            n = min(len(x), PARITY_STEPS)
            outputs = {(name, v): s.outputs(n) for (name, k, v), s in steppers.items() if k == key}
        want = np.asarray(outputs.pop(("fastlstm", "") if kind == "step" else "fastlstm"), np.float64)
        scale = max(scale, float(np.abs(want).max()))
        for name, got in outputs.items():
            name = name[0] if kind == "step" else name
            diff = float(np.abs(np.asarray(got, np.float64).reshape(want.shape) - want).max())
            per = errors.setdefault(name, {})
            per[key] = max(per.get(key, 0.0), diff)
    return errors, scale


def _steppers(runners, rows):
    """``{(framework, row, route): stepper}`` for the streaming rows; torch has two routes."""
    out = {}
    for key, _, _, x, kind in rows:
        if kind == "step":
            for name, runner in runners.items():
                routes = runner.steppers(x) if hasattr(runner, "steppers") else {"": runner.stepper(x)}
                for route, stepper in routes.items():
                    out[(name, key, route)] = stepper
    return out


def _cases(runners, rows, steppers):
    """One timed case per (row, framework, route)."""
    cases = []
    for key, _, _, x, kind in rows:
        if kind == "seq":
            cases += [Case(key, name, runner.seq_loop(x)) for name, runner in runners.items()]
        else:
            cases += [Case(key, name, s.run, route) for (name, k, route), s in steppers.items() if k == key]
    return cases


def _model_facts(model, path, bundled):
    layers = [layer.describe() for layer in model.layers]
    return {"path": os.path.abspath(path), "bundled": bundled, "format": file_format(path), "layers": layers,
            "input_size": model.input_size, "output_size": model.output_size,
            "parameters": model.num_parameters, "streamable": model.streamable}


def _machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return {"cpu": cpu, "cores": cores, "platform": platform.platform(), "python": platform.python_version()}


def run(args):
    import fastlstm

    from . import report

    t_start = time.perf_counter()
    if args.plot and not report.have_matplotlib():
        raise CommandError("--plot needs matplotlib, which is not installed (pip install matplotlib)")
    for option, target in (("--json", args.json), ("--plot", args.plot)):
        folder = os.path.dirname(os.path.abspath(target)) if target else None
        if folder and not os.path.isdir(folder):  # fail now, not after minutes of measuring
            raise CommandError(f"{option} {target}: the folder {folder} does not exist")
    path = MODEL_PATH if args.model is None else args.model
    model = load_model(args.model, args.head_activation)
    keras_file = file_format(path).startswith("Keras")
    left_out = _left_out(args, keras_file)
    repeats, sample_s, seq_len = QUICK if args.quick else FULL
    seq_len = args.seq_len or seq_len
    threads = args.threads or fastlstm.get_num_threads()
    progress = report.Progress()
    say = progress.say

    onnx_file = path if compare.is_onnx_file(path) else None
    runners, status = build_runners(model, left_out, threads, say, onnx_file)
    rows = _workloads(model, seq_len, args.streams, np.random.default_rng(0))
    with warnings.catch_warnings(), thread_policy(threads):
        warnings.simplefilter("ignore")
        steppers = _steppers(runners, rows)
        parity, scale = check_parity(runners, rows, steppers, say)
        cases = _cases(runners, rows, steppers)
        with progress.bar(len(cases) * (repeats + 1), f"timing {len(cases)} cases x {repeats} repeats") as tick:
            with OtherLoad() as other:
                measure(cases, repeats, sample_s, tick)

    tolerance = 1e-4 * max(1.0, scale)
    worst = max((e for per in parity.values() for e in per.values()), default=0.0)
    result = {
        "fastlstm_version": fastlstm.__version__,
        "model": _model_facts(model, path, args.model is None),
        "machine": dict(_machine(), other_load_cores=other.cores),
        "settings": {"mode": "quick" if args.quick else "full", "threads": threads, "repeats": repeats,
                     "sample_ms": sample_s * 1e3, "seq_len": seq_len, "streams": list(args.streams),
                     "statistic": "median", "openmp": fastlstm.openmp_enabled()},
        "frameworks": status,
        "parity": parity, "max_parity_error": worst, "parity_tolerance": tolerance,
        "parity_ok": bool(worst <= tolerance),
        "workloads": report.collect(rows, cases, seq_len),
    }
    if not model.streamable:
        result["not_measured"] = "streaming rows: the model cannot stream (a bidirectional or go_backwards layer)"
    result["elapsed_s"] = time.perf_counter() - t_start
    print(report.render(result))
    if args.json:
        report.write_json(result, args.json)
    if args.plot:
        report.plot(result, args.plot)
    if not result["parity_ok"]:
        raise CommandError(f"parity check failed: max abs difference {worst:.3g} > tolerance {tolerance:.3g}; "
                           "the timings above compare different functions")
    return 0
