"""The kernels' instruction-set path (include/fastlstm_isa.h) and the FASTLSTM_ISA switch.

The compiled modules pick their path when they load: the best this CPU has, or
the one FASTLSTM_ISA names.  The C side never runs a path the CPU lacks (it
clamps the request); this module turns such a request, or a misspelt one, into
a clear error at import, so a test or benchmark meant for one path never
silently measures another.
"""

import os
from typing import Dict, Mapping, Tuple

from . import _kernels

#: Path names by level (enum fl_isa_level), lowest first.
PATHS = ("generic", "avx2", "avx512")

ENV = "FASTLSTM_ISA"


def levels() -> Tuple[str, str, Dict[str, bool]]:
    """(path in use, best path of this CPU, {CPU feature: present})."""
    used, best, features = _kernels._isa_levels()  # noqa: SLF001 - the kernels' own query, named here
    return PATHS[used], PATHS[best], features


def check_request(environ: Mapping[str, str] = os.environ) -> None:
    """Raise ValueError when FASTLSTM_ISA names no path or one this CPU cannot run."""
    want = environ.get(ENV, "")
    if want == "":
        return
    if want not in PATHS:
        raise ValueError(
            f"{ENV}={want!r}: expected one of {', '.join(PATHS)} (or unset it for the best path this CPU has)"
        )
    best = levels()[1]
    if PATHS.index(want) > PATHS.index(best):
        raise ValueError(
            f"{ENV}={want}: this CPU (or this build) has no {want}; the most it can run is {best}. "
            f"Set {ENV} to one of {', '.join(PATHS[: PATHS.index(best) + 1])}, or unset it"
        )


check_request()
