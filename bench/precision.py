#!/usr/bin/env python
"""fastlstm in fp32, bf16 and int8 side by side with the peers at the same precisions, on the six
engine configs (fastlstm/harness/configs.py): the figures of issue 15.

    python bench/precision.py                  # six configs, 1 thread: 6-9 min on a 2-core machine
    python bench/precision.py --quick          # smoke run, under 1 min
    python bench/precision.py --configs medium,large --threads 2 --json /tmp/precision.json

Engines, all on the same seeded weights (harness configs, no head):

* fastlstm ``precision="fp32"``, ``"bf16"``, ``"int8"`` (``model.with_precision(p)``);
* fp32: PyTorch (``torch``), ONNX Runtime (``onnxruntime``), OpenVINO f32 (``openvino``);
* int8: PyTorch dynamic quantization (``torch-int8``), ONNX Runtime's ``DynamicQuantizeLSTM``
  (``onnxruntime-int8``);
* bf16: PyTorch under CPU autocast (``torch-bf16``), OpenVINO with
  ``INFERENCE_PRECISION_HINT=bf16`` (``openvino-bf16``).

How each peer is called is in its runner (fastlstm/harness/peers.py lists them).

Workloads: the **step** (the config's ``B`` streams stepped one step per call, through each engine's
stepper: fastlstm ``Stream.step(out=)`` at B=1, ``StreamPool.step`` batched) and **predict** (the
config's whole ``(T, B, I)`` sequence).  An engine with several stepping routes (PyTorch:
``nn.LSTM`` on T=1 and ``nn.LSTMCell``) is credited with its fastest.

Method: the harness's (fastlstm.harness.timing.measure): per config, every case of every engine
interleaved in rotated order, samples calibrated to ``--sample-ms``, medians over ``--repeats``.
Before timing, each engine's outputs over the whole config (``T`` steps of ``predict``, and ``T``
stepped steps) are compared with fp32 PyTorch's: the accuracy table.  An engine off by more than its
tolerance (the peer's registry entry; fastlstm bf16/int8: the same bounds as the peers of their
precision) makes the script exit 1 after the report, as the speed figures then compare different
functions.  Everything runs in this one process (fastlstm's thread pool is its own, not torch's
libgomp); at more than one thread the run pauses ``--settle-ms`` between engines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from typing import Dict, List, Optional, Tuple

import numpy as np
from run_engine import _fmt_r, _fmt_t, environment  # bench/ is on sys.path when this runs as a script

import fastlstm
from fastlstm.harness import LABELS, PEERS, build_runners
from fastlstm.harness.compare import cases, check_parity, steppers
from fastlstm.harness.configs import CONFIGS, Config, make_inputs, random_model
from fastlstm.harness.fastlstm_runner import FastlstmRunner
from fastlstm.harness.peers import TOL_BF16, TOL_INT8
from fastlstm.harness.timing import Case, OtherLoad, available_cores, measure, thread_policy, wait_for_quiet

#: Engines by precision, fastlstm first: the table's columns, in order.
ENGINES: Dict[str, Tuple[str, ...]] = {
    "fp32": ("fastlstm", "torch", "onnxruntime", "openvino"),
    "bf16": ("fastlstm-bf16", "torch-bf16", "openvino-bf16"),
    "int8": ("fastlstm-int8", "torch-int8", "onnxruntime-int8"),
}
FL = {p: engines[0] for p, engines in ENGINES.items()}  # fastlstm's engine name per precision
LABEL = {**LABELS, "fastlstm": "fastlstm fp32", "fastlstm-bf16": "fastlstm bf16", "fastlstm-int8": "fastlstm int8"}
#: Max |difference| from fp32 PyTorch per unit of output scale, for fastlstm's reduced precisions
#: (the peers': their registry entries).
FL_TOLERANCE = {"fastlstm": 1e-4, "fastlstm-bf16": TOL_BF16, "fastlstm-int8": TOL_INT8}

#: Issue 15's targets: (precision, configs it applies to, speed-up over fastlstm fp32).
FP32_TARGETS = (
    ("bf16", ("medium", "large"), 1.7),
    ("int8", ("medium", "large"), 2.5),
    ("bf16", ("medium-batch", "large-batch"), 2.0),
)
PEER_TARGET = 1.3  # fastlstm at every config against the fastest peer at the same precision

#: (repeats, sample ms, wait-quiet s) per mode.
FULL = (13, 50.0, 10.0)
QUICK = (3, 10.0, 0.0)

WORKLOADS = (("step", "us", "µs per step"), ("predict", "ms", "ms per sequence"))


def fastlstm_precisions() -> Optional[str]:
    """None when this fastlstm has precisions (``Model.with_precision``), else why the bf16 and int8
    columns are left out."""
    if hasattr(fastlstm.Model, "with_precision"):
        return None
    return (
        f"fastlstm {fastlstm.__version__} has no precision option (Model.with_precision, issue 15): "
        "its bf16 and int8 columns are left out"
    )


def rows_for(x: np.ndarray):
    """The harness's workload rows: the config's streams stepped, and predict on the whole sequence."""
    return [("step", "step", "us/step", x, "step"), ("predict", "predict", "ms/seq", x, "seq")]


def build(cfg: Config, threads: int, want: List[str], say) -> Tuple[dict, dict]:
    """Runners of every engine wanted that can run (``{engine: runner}``), plus fp32 PyTorch (the
    accuracy reference) whether wanted or not, and every peer's status."""
    model = random_model(cfg)
    left_out = {n: "not in this comparison" for n in PEERS if n not in want and n != "torch"}
    runners, status = build_runners(model, left_out, threads, say)
    if "fastlstm" not in want:
        runners.pop("fastlstm")
    if fastlstm_precisions() is None:
        for p in ("bf16", "int8"):
            if FL[p] in want:
                runners[FL[p]] = FastlstmRunner(model.with_precision(p))
                status[FL[p]] = {"status": "ran"}
    return runners, status


def run_config(cfg: Config, args, want: List[str]) -> dict:
    """Accuracy, then interleaved timing, of every engine on ``cfg``; the config's JSON entry."""

    def say(msg):
        print(f"# {cfg.name}: {msg}", file=sys.stderr, flush=True)

    if args.wait_quiet > 0:
        wait_for_quiet(args.max_load + max(0.0, available_cores() - args.threads - 0.3), args.wait_quiet)
    with warnings.catch_warnings(), thread_policy(args.threads):
        warnings.simplefilter("ignore")
        runners, status = build(cfg, args.threads, want, say)
        x = make_inputs(cfg)
        rows = rows_for(x)
        stepper_map = steppers(runners, rows)
        steps = min(cfg.T, args.accuracy_steps)
        deviation, scale = ({}, float("nan"))
        if "torch" in runners:
            deviation, scale = check_parity(runners, rows, stepper_map, say, "torch", steps, steps)
            if "torch" not in want:  # the reference only
                deviation.pop("torch", None)
                runners.pop("torch")
                stepper_map = {k: v for k, v in stepper_map.items() if k[0] != "torch"}
        else:
            say("PyTorch is not installed: no accuracy check")
        timed = cases(runners, rows, stepper_map)
        say(f"timing {len(timed)} cases x {args.repeats} repeats")
        with OtherLoad() as load:
            measure(timed, args.repeats, args.sample_ms / 1e3, settle_s=args.settle_ms / 1e3 if args.threads > 1 else 0)
    return {
        "config": cfg.label(),
        "status": status,
        "median_s": best_routes(timed),
        "all_routes_s": {f"{c.workload}/{c.engine}:{c.variant}": c.median for c in timed if c.variant},
        "deviation_from_torch_fp32": deviation,
        "accuracy_steps": steps,
        "output_scale": scale,
        "other_load_cores": load.cores,
    }


def best_routes(timed: List[Case]) -> Dict[str, Dict[str, float]]:
    """``{workload: {engine: median seconds}}``, an engine with several routes credited with its fastest."""
    out: Dict[str, Dict[str, float]] = {}
    for c in timed:
        per = out.setdefault(c.workload, {})
        per[c.engine] = min(per.get(c.engine, float("inf")), c.median)
    return out


def tolerance(engine: str, scale: float) -> float:
    base = FL_TOLERANCE[engine] if engine in FL_TOLERANCE else max(1e-4, PEERS[engine].tolerance)
    return base * max(1.0, scale if scale == scale else 1.0)


def ratios(res: dict) -> Dict[str, Dict[str, dict]]:
    """Per workload: fastlstm bf16 and int8 against fastlstm fp32, and each fastlstm precision against
    the fastest peer at the same precision (time of the other / time of fastlstm: > 1 is faster)."""
    out: Dict[str, Dict[str, dict]] = {}
    for work, t in res["median_s"].items():
        entry = out.setdefault(work, {})
        for p in ("bf16", "int8"):
            if FL[p] in t and FL["fp32"] in t:
                entry[f"{p}_vs_fp32"] = {"ratio": t[FL["fp32"]] / t[FL[p]]}
        for p, engines in ENGINES.items():
            peers = {e: t[e] for e in engines[1:] if e in t and t[e] == t[e]}
            if FL[p] in t and peers:
                best = min(peers, key=peers.__getitem__)
                entry[f"{p}_vs_peer"] = {"ratio": peers[best] / t[FL[p]], "peer": best}
    return out


def targets(results: Dict[str, dict]) -> List[Tuple[str, Optional[float], float]]:
    """(what, measured ratio or None, target) for each of issue 15's targets the run covers."""
    out = []
    for name, res in results.items():
        rat = res["ratios"]
        for work in ("step", "predict"):
            got = rat.get(work, {})
            for p, where, goal in FP32_TARGETS:
                if name in where:
                    out.append((f"{work} {name}: fastlstm {p} vs fp32", got.get(f"{p}_vs_fp32", {}).get("ratio"), goal))
            for p in ("bf16", "int8"):
                out.append(
                    (
                        f"{work} {name}: fastlstm {p} vs fastest {p} peer",
                        got.get(f"{p}_vs_peer", {}).get("ratio"),
                        PEER_TARGET,
                    )
                )
    return out


def report(results: Dict[str, dict], args, env: Dict[str, str], missing: Optional[str]) -> str:
    lines: List[str] = []
    out = lines.append
    out("## fastlstm precision benchmark (bench/precision.py)\n")
    for k, v in env.items():
        out(f"- {k}: {v}")
    out(
        f"- mode: {'quick' if args.quick else 'full'}; {args.threads} thread{'s' if args.threads > 1 else ''}; "
        f"{args.repeats} interleaved repeats, samples of ~{args.sample_ms:g} ms; figures are medians"
    )
    if missing:
        out(f"- {missing}")
    out("")
    timed = [e for group in ENGINES.values() for e in group]
    engines = [e for e in timed if any(e in per for r in results.values() for per in r["median_s"].values())]
    for work, unit, what in WORKLOADS:
        out(f"### {work}: {what} (median)\n")
        out("| config | " + " | ".join(LABEL[e] for e in engines) + " | other load |")
        out("|---|" + "---|" * (len(engines) + 1))
        for name, res in results.items():
            t = res["median_s"].get(work, {})
            cells = [_fmt_t(t.get(e, float("nan")), unit) for e in engines]
            out(f"| {name} | " + " | ".join(cells) + f" | {res['other_load_cores']:.2f} |")
        out("")
    out("### Ratios (time of the other / time of fastlstm; > 1: fastlstm is faster)\n")
    out(
        "| config | workload | bf16 vs fp32 | int8 vs fp32 | bf16 vs fastest bf16 peer | int8 vs fastest int8 peer "
        "| fp32 vs fastest fp32 peer |"
    )
    out("|---|---|---|---|---|---|---|")
    for name, res in results.items():
        for work, _, _ in WORKLOADS:
            r = res["ratios"].get(work, {})
            cells = [_fmt_r(r.get(k, {}).get("ratio")) for k in ("bf16_vs_fp32", "int8_vs_fp32")]
            for p in ("bf16", "int8", "fp32"):
                e = r.get(f"{p}_vs_peer")
                cells.append(f"{_fmt_r(e['ratio'])} ({LABEL[e['peer']]})" if e else "-")
            out(f"| {name} | {work} | " + " | ".join(cells) + " |")
    out("")
    out("### Accuracy: max |difference| from fp32 PyTorch over the run (predict / stepped)\n")
    acc_engines = [e for e in engines if e != "torch"]
    out("| config | steps | " + " | ".join(LABEL[e] for e in acc_engines) + " |")
    out("|---|---|" + "---|" * len(acc_engines))
    for name, res in results.items():
        dev = res["deviation_from_torch_fp32"]
        cells = []
        for e in acc_engines:
            d = dev.get(e)
            if not d:
                cells.append("-")
                continue
            flag = " **over tolerance**" if max(d.values()) > tolerance(e, res["output_scale"]) else ""
            cells.append(f"{d.get('predict', float('nan')):.1e} / {d.get('step', float('nan')):.1e}{flag}")
        out(f"| {name} | {res['accuracy_steps']} | " + " | ".join(cells) + " |")
    out(
        "\nTolerances (per unit of output scale): fastlstm fp32 1e-4, bf16 engines "
        f"{TOL_BF16:g}, int8 engines {TOL_INT8:g}.\n"
    )
    skipped = sorted(
        {
            f"{LABEL.get(n, n)}: {s['reason']}"
            for r in results.values()
            for n, s in r["status"].items()
            if s["status"] != "ran" and s["reason"] != "not in this comparison"
        }
    )
    if skipped:
        out("Left out: " + "; ".join(skipped) + ".\n")
    notes = [PEERS[n].note for n in PEERS if n in engines and PEERS[n].note]
    out("\n".join(f"- {n}" for n in notes) + "\n")
    out("### Targets (issue 15)\n")
    goals = targets(results)
    missed = [(d, r, t) for d, r, t in goals if r is not None and r < t]
    unknown = [d for d, r, t in goals if r is None]
    out(
        f"{len(goals) - len(missed) - len(unknown)} of {len(goals)} met"
        + (f", {len(unknown)} not measured" if unknown else "")
        + "."
    )
    for d, r, t in missed:
        out(f"- MISSED: {d}: {r:.2f}x (target >= {t:g}x)")
    return "\n".join(lines)


def over_tolerance(results: Dict[str, dict]) -> List[str]:
    return [
        f"{name} {LABEL[e]} {max(d.values()):.3g} > {tolerance(e, res['output_scale']):.3g}"
        for name, res in results.items()
        for e, d in res["deviation_from_torch_fp32"].items()
        if max(d.values()) > tolerance(e, res["output_scale"])
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter samples: a smoke run (under 1 min)")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    p.add_argument("--threads", type=int, default=1, help="threads for every engine (default 1)")
    p.add_argument(
        "--engines",
        default=",".join(e for group in ENGINES.values() for e in group),
        help="comma-separated subset of the engines (default: all of them)",
    )
    p.add_argument(
        "--repeats", type=int, default=None, help=f"interleaved repeats (default {FULL[0]}; quick {QUICK[0]})"
    )
    p.add_argument(
        "--sample-ms", type=float, default=None, help=f"one sample's length (default {FULL[1]:g}; quick {QUICK[1]:g})"
    )
    p.add_argument(
        "--accuracy-steps",
        type=int,
        default=1000,
        help="steps compared with fp32 PyTorch, at most the config's T (default 1000)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        help=f"seconds to wait for a quiet machine before each config (default {FULL[2]:g}; quick 0)",
    )
    p.add_argument(
        "--max-load",
        type=float,
        default=0.3,
        help="other processes' cores that count as quiet, beyond the idle ones (default 0.3)",
    )
    p.add_argument(
        "--settle-ms", type=float, default=250.0, help="at more than one thread, pause between engines (default 250)"
    )
    p.add_argument("--json", default=None, help="also write the medians, ratios and accuracy to this JSON file")
    args = p.parse_args(argv)
    mode = QUICK if args.quick else FULL
    args.repeats = args.repeats or mode[0]
    args.sample_ms = args.sample_ms or mode[1]
    args.wait_quiet = mode[2] if args.wait_quiet is None else args.wait_quiet
    if args.threads < 1:
        p.error("--threads: expected a positive count")
    bad = [c for c in args.configs.split(",") if c not in CONFIGS]
    want = [e.strip() for e in args.engines.split(",") if e.strip()]
    known = {e for engines in ENGINES.values() for e in engines}
    if bad or not set(want) <= known:
        p.error(f"unknown config(s) {bad} or engine(s) {sorted(set(want) - known)}")
    missing = fastlstm_precisions()
    if missing:
        print(f"# {missing}", file=sys.stderr)
    level = fastlstm._isa.levels()[0]
    env = environment(
        [args.threads], {"version": fastlstm.__version__, "openmp": fastlstm.openmp_enabled(), "isa": level}
    )
    if missing is None:  # which instructions each of fastlstm's precisions runs on, on this path
        kernels = fastlstm._config.config()["precisions"]
        env["fastlstm instructions"] = "; ".join(f"{prec}: {what}" for prec, what in kernels.items())
    t0 = time.perf_counter()
    results = {}
    for name in args.configs.split(","):
        results[name] = run_config(CONFIGS[name], args, want)
        results[name]["ratios"] = ratios(results[name])
    env["elapsed"] = f"{time.perf_counter() - t0:.0f} s"
    print(report(results, args, env, missing))
    if args.json:
        doc = {
            "environment": env,
            "settings": {k: getattr(args, k) for k in ("quick", "threads", "repeats", "sample_ms", "accuracy_steps")},
            "fastlstm_precisions": missing or "available",
            "configs": results,
            "targets": [{"what": d, "ratio": r, "target": t} for d, r, t in targets(results)],
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1, default=float)
    bad_acc = over_tolerance(results)
    if bad_acc:
        print("accuracy check failed: " + "; ".join(bad_acc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
