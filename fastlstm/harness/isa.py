"""Comparing one of fastlstm's kernel paths (``FASTLSTM_ISA``, see fastlstm/_isa.py) with peers
held to the same instruction set.

fastlstm's AVX2 path against peers that use AVX-512 says little about the kernels; the peers
that have a switch are therefore held to the same instruction set: oneDNN (under PyTorch and
OpenVINO's CPU plugin) through ``ONEDNN_MAX_CPU_ISA``, oneMKL (PyTorch's ``nn.LSTMCell`` and
``nn.Linear``: their matrix products are MKL's sgemm, not oneDNN's) through
``MKL_ENABLE_INSTRUCTIONS``, OpenBLAS through ``OPENBLAS_CORETYPE``.
ONNX Runtime and tract have no such switch and keep their best kernels.  Every one of these
variables is read when its library loads, so a driver sets them and starts itself again
(:func:`restart_held`) before anything is imported under the wrong ones.
"""

from __future__ import annotations

import os
import sys
from typing import Dict, List, Optional, Sequence

from fastlstm._isa import ENV, PATHS

#: Per kernel path, the switches that hold the peers to the same instruction set.
HOLDS: Dict[str, Dict[str, str]] = {
    "avx512": {},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "OPENBLAS_CORETYPE": "Haswell"},
    "generic": {"ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "OPENBLAS_CORETYPE": "Nehalem"},
}

#: Registry peers (fastlstm.harness.peers) whose kernels HOLDS reaches; the others are never held.
HELD_PEERS = ("torch", "openvino")


def left_out(isa: Optional[str]) -> Dict[str, str]:
    """{peer: why} for the registry peers that cannot run under the holds of ``isa``: OpenVINO's
    bfloat16 LSTM needs AVX-512 (BF16 or AMX), and oneDNN held below it has no such primitive."""
    if isa in (None, "avx512"):
        return {}
    return {
        "openvino-bf16": f"bfloat16 needs AVX-512, which ONEDNN_MAX_CPU_ISA={HOLDS[isa]['ONEDNN_MAX_CPU_ISA']} forbids"
    }


def environment(isa: str) -> Dict[str, str]:
    """The environment a run on kernel path ``isa`` needs: FASTLSTM_ISA and the peers' switches."""
    if isa not in HOLDS:
        raise ValueError(f"isa: expected one of {', '.join(p for p in PATHS if p in HOLDS)}, got {isa!r}")
    return {ENV: isa, **HOLDS[isa]}


def describe(isa: Optional[str]) -> str:
    """The holds in force for ``isa`` (None: no path asked for), for a report."""
    held = ", ".join(f"{k}={v}" for k, v in HOLDS[isa].items()) if isa else ""
    return held or "nothing (every engine at its best)"


def restart_held(isa: str, script: str, argv: Optional[Sequence[str]] = None) -> None:
    """Return when this process already runs under :func:`environment` (``isa``); otherwise set it
    and start ``script`` again in place of this process, with this process's arguments.

    Called with ``argv`` (a driver's ``main(argv)`` called from Python), it cannot restart the
    caller and raises SystemExit saying what to set instead.
    """
    wanted = environment(isa)
    if all(os.environ.get(k) == v for k, v in wanted.items()):
        return
    settings = " ".join(f"{k}={v}" for k, v in wanted.items())
    if argv is not None:
        raise SystemExit(f"--isa {isa}: set {settings} in the environment before calling main(argv)")
    os.environ.update(wanted)
    args: List[str] = [sys.executable, os.path.abspath(script), *sys.argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, args)
