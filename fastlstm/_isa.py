"""The kernels' instruction-set path (include/fastlstm_isa.h) and the FASTLSTM_ISA switch.

The compiled modules pick their path when they load: the best this CPU has, or
the one FASTLSTM_ISA names.  A path is a base (generic, avx2, avx512) and the
extensions that the reduced precisions use (VNNI, BF16, AMX); the plain base
names are the fallbacks that machines without those instructions run.  The C
side never runs a path the CPU lacks (it clamps the request); this module turns
such a request, or a misspelt one, into a clear error at import, so a test or
benchmark meant for one path never silently measures another.
"""

import os
from typing import Dict, Mapping, Tuple

from . import _kernels

ENV = "FASTLSTM_ISA"

_USED, _BEST, _FEATURES, _RUNS = _kernels._isa_levels()  # noqa: SLF001 - the kernels' own query, named here

#: Every path name, lowest first.
PATHS = tuple(_RUNS)

#: The base paths (the fp32 kernels; the other paths add instructions to one of them).
BASES = ("generic", "avx2", "avx512")


def base(path: str) -> str:
    """The base path of ``path``: "avx512-bf16" -> "avx512"."""
    return path.split("-")[0] if path != "amx" else "avx512"


def levels() -> Tuple[str, str, Dict[str, bool]]:
    """(path in use, best path of this CPU, {CPU feature: present})."""
    return _USED, _BEST, dict(_FEATURES)


def runnable() -> Tuple[str, ...]:
    """The paths this CPU (and this build) can run, lowest first."""
    return tuple(p for p in PATHS if _RUNS[p])


def check_request(environ: Mapping[str, str] = os.environ) -> None:
    """Raise ValueError when FASTLSTM_ISA names no path or one this CPU cannot run."""
    want = environ.get(ENV, "")
    if want == "":
        return
    if want not in PATHS:
        raise ValueError(
            f"{ENV}={want!r}: expected one of {', '.join(PATHS)} (or unset it for the best path this CPU has)"
        )
    if not _RUNS[want]:
        raise ValueError(
            f"{ENV}={want}: this CPU (or this build) cannot run {want}; the best it runs is {_BEST}. "
            f"Set {ENV} to one of {', '.join(runnable())}, or unset it"
        )


check_request()
