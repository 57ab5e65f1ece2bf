"""Every runner on the same inputs: the parity check, then one timed :class:`~.timing.Case` each.

A workload is ``(key, label, unit, x, kind)``: ``x`` is ``(T, B, I)``; ``kind`` "seq" runs
``predict`` on the whole of ``x``, "step" steps ``B`` streams through it.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from .timing import Case

#: Steps compared per streaming workload, and sequence steps compared per whole-sequence one.
PARITY_STEPS = 64
PARITY_SEQ_LEN = 200


def steppers(runners: dict, rows) -> Dict[Tuple[str, str, str], object]:
    """``{(framework, workload, route): stepper}`` for the streaming workloads."""
    out = {}
    for key, _, _, x, kind in rows:
        if kind == "step":
            for name, runner in runners.items():
                for route, stepper in runner.steppers(x).items():
                    out[(name, key, route)] = stepper
    return out


def cases(runners: dict, rows, stepper_map) -> List[Case]:
    """One timed case per (workload, framework, route)."""
    out = []
    for key, _, _, x, kind in rows:
        if kind == "seq":
            out += [Case(key, name, runner.seq_loop(x)) for name, runner in runners.items()]
        else:
            out += [Case(key, name, s.run, route) for (name, k, route), s in stepper_map.items() if k == key]
    return out


def check_parity(
    runners: dict,
    rows,
    stepper_map,
    say=lambda msg: None,
    reference: str = "fastlstm",
    seq_len: int = PARITY_SEQ_LEN,
    steps: int = PARITY_STEPS,
):
    """Max |difference| from ``reference`` (a key of ``runners``; its first route for the streaming
    workloads) of each framework's outputs, per workload, before any timing: ``predict`` on the
    first ``seq_len`` steps of a "seq" workload, the first ``steps`` outputs of a "step" one.

    Returns ``(errors, scale)``: ``errors[framework][workload]``, and the largest |output|
    the reference produced (tolerances scale with it)."""
    say("checking that every framework computes the same outputs")
    errors: Dict[str, Dict[str, float]] = {}
    scale = 0.0
    for key, _, _, x, kind in rows:
        if kind == "seq":
            x = x[:seq_len]
            outputs = {(name, ""): r.predict(x) for name, r in runners.items()}
        else:  # every route of every framework
            n = min(len(x), steps)
            outputs = {(name, route): s.outputs(n) for (name, k, route), s in stepper_map.items() if k == key}
        want = np.asarray(outputs.pop(next(k for k in outputs if k[0] == reference)), np.float64)
        scale = max(scale, float(np.abs(want).max()))
        for (name, _), got in outputs.items():
            diff = float(np.abs(np.asarray(got, np.float64).reshape(want.shape) - want).max())
            per = errors.setdefault(name, {})
            per[key] = max(per.get(key, 0.0), diff)
    return errors, scale
