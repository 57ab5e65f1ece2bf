"""``fastlstm bench``: one model in fastlstm and in every framework installed, side by side.

Order of work: load the model; build a runner per framework (a missing framework
is *skipped*, with its install command, and one that cannot express the model says
why); check every runner's outputs against fastlstm's (parity); then time the
workloads users run, all engines interleaved, and report medians with ratios
(:mod:`.report`).  The runners, the parity check and the timing are the comparison
harness's (:mod:`fastlstm.harness`); this module only chooses the workloads.
"""

from __future__ import annotations

import os
import platform
import time
import warnings

import numpy as np

from ..data import MODEL_PATH
from ..harness import PEERS, build_runners
from ..harness.compare import cases, check_parity, steppers
from ..harness.onnx_file import is_onnx_file
from ..harness.peers import TOL_BF16, TOL_INT8
from ..harness.timing import OtherLoad, available_cores, cpu_name, measure, thread_policy
from . import CommandError, load_model
from .info import file_format

#: (repeats, sample seconds, sequence length) per mode.
FULL = (15, 0.08, 1000)
QUICK = (3, 0.01, 200)
STEP_INPUTS = 256  # distinct inputs the streaming rows cycle through
#: How far fastlstm's own reduced precision (``--precision``) may move its outputs from a peer's, per
#: unit of output scale, on top of the peer's tolerance: the bounds of the reduced-precision peers,
#: whose rounding is of the same kind.
OWN_TOLERANCE = {"fp32": 0.0, "bf16": TOL_BF16, "int8": TOL_INT8}


def _left_out(args, keras_file):
    """The frameworks not to try, each with the reason (name -> reason)."""
    if args.frameworks == "auto":
        return {
            name: ("runs Keras files only" if name == "keras" else "reduced precision")
            + f" (--frameworks {name} to include it)"
            for name, peer in PEERS.items()
            if not peer.auto and not (name == "keras" and keras_file)
        }
    want = [t.strip() for t in args.frameworks.split(",") if t.strip()]
    bad = [t for t in want if t not in PEERS]
    if bad or not want:
        raise CommandError(f"--frameworks: unknown {', '.join(bad) or '(empty)'}; choose from {','.join(PEERS)}")
    return {n: "not requested (--frameworks)" for n in PEERS if n not in want}


def _workloads(model, seq_len, streams, rng):
    """(key, label, unit, inputs, kind) for each row; streaming rows only for a model that can stream."""
    I = model.input_size
    rows = []
    if model.streamable:
        rows.append(
            (
                "step",
                "streaming step, 1 stream",
                "us/step",
                rng.standard_normal((STEP_INPUTS, 1, I), dtype=np.float32),
                "step",
            )
        )
    rows.append(
        (
            "sequence",
            f"whole sequence, T={seq_len}",
            "ms/seq",
            rng.standard_normal((seq_len, 1, I), dtype=np.float32),
            "seq",
        )
    )
    if model.streamable:
        for n in streams:
            rows.append(
                (
                    f"streams_{n}",
                    f"{n} streams stepped together",
                    "us/step",
                    rng.standard_normal((max(8, STEP_INPUTS // n), n, I), dtype=np.float32),
                    "step",
                )
            )
    return rows


def _model_facts(model, path, bundled):
    layers = [layer.describe() for layer in model.layers]
    return {
        "path": os.path.abspath(path),
        "bundled": bundled,
        "format": file_format(path),
        "layers": layers,
        "input_size": model.input_size,
        "output_size": model.output_size,
        "parameters": model.num_parameters,
        "precision": model.precision,
        "streamable": model.streamable,
    }


def _machine():
    return {
        "cpu": cpu_name(),
        "cores": available_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


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
    model = load_model(args.model, args)
    keras_file = file_format(path).startswith("Keras")
    left_out = _left_out(args, keras_file)
    repeats, sample_s, seq_len = QUICK if args.quick else FULL
    seq_len = args.seq_len or seq_len
    threads = args.threads or fastlstm.get_num_threads()
    progress = report.Progress()
    say = progress.say

    onnx_file = path if is_onnx_file(path) else None
    runners, status = build_runners(model, left_out, threads, say, onnx_file)
    rows = _workloads(model, seq_len, args.streams, np.random.default_rng(0))
    with warnings.catch_warnings(), thread_policy(threads):
        warnings.simplefilter("ignore")
        stepper_map = steppers(runners, rows)
        parity, scale = check_parity(runners, rows, stepper_map, say)
        timed = cases(runners, rows, stepper_map)
        with progress.bar(len(timed) * (repeats + 1), f"timing {len(timed)} cases x {repeats} repeats") as tick:
            with OtherLoad() as other:
                measure(timed, repeats, sample_s, tick)

    # float32 rounding over long sequences, or a peer's own reduced precision, plus fastlstm's, scaled by the outputs
    own = OWN_TOLERANCE[model.precision]
    tolerances = {name: (max(1e-4, PEERS[name].tolerance) + own) * max(1.0, scale) for name in parity}
    failed = {name: max(per.values()) for name, per in parity.items() if max(per.values()) > tolerances[name]}
    worst = max((e for per in parity.values() for e in per.values()), default=0.0)
    tolerance = (1e-4 + own) * max(1.0, scale)
    result = {
        "fastlstm_version": fastlstm.__version__,
        "model": _model_facts(model, path, args.model is None),
        "machine": dict(_machine(), other_load_cores=other.cores),
        "settings": {
            "mode": "quick" if args.quick else "full",
            "threads": threads,
            "repeats": repeats,
            "sample_ms": sample_s * 1e3,
            "seq_len": seq_len,
            "streams": list(args.streams),
            "statistic": "median",
            "openmp": fastlstm.openmp_enabled(),
        },
        "frameworks": status,
        "parity": parity,
        "max_parity_error": worst,
        "parity_tolerance": tolerance,
        "parity_tolerances": tolerances,
        "parity_ok": not failed,
        "workloads": report.collect(rows, timed, seq_len),
    }
    if not model.streamable:
        result["not_measured"] = "streaming rows: the model cannot stream (a bidirectional or go_backwards layer)"
    result["elapsed_s"] = time.perf_counter() - t_start
    print(report.render(result))
    if args.json:
        report.write_json(result, args.json)
    if args.plot:
        report.plot(result, args.plot)
    if failed:
        what = ", ".join(f"{name} {err:.3g} > {tolerances[name]:.3g}" for name, err in failed.items())
        raise CommandError(
            f"parity check failed: max abs difference {what}; the timings above compare different functions"
        )
    return 0
