"""Find the BLAS the kernels call, and its thread-count controls, once at import.

The kernels call sgemm through scipy's ``cython_blas`` by default.  numpy's
wheels bundle their own, often newer OpenBLAS (ILP64, symbols suffixed
``64_``).  Measured on the development machine in November 2026 (numpy
2.4's OpenBLAS 0.3.31 against scipy 1.17's 0.3.30), the newer one ran the
kernels' sgemm shapes 1.6x faster, so the newest OpenBLAS that exports an
ILP64 ``sgemm`` is preferred when it is newer than scipy's.

Inside a kernel call every OpenBLAS is held to one thread (see _kernels.run_batch),
through each library's own ``openblas_{set,get}_num_threads``.
"""

import ctypes

#: What discover() chose, for fastlstm.show_config(): {"sgemm": description, "libraries": [...]}.
chosen = {"sgemm": "none found (threadpoolctl or scipy missing)", "libraries": []}


def _version(lib):
    try:
        return tuple(int(p) for p in str(lib.version).split(".")[:3])
    except (TypeError, ValueError):
        return (0,)


def _symbol(dynlib, stem, suffixes):
    for prefix in ("", "scipy_"):
        for suffix in suffixes:
            fn = getattr(dynlib, f"{prefix}{stem}{suffix}", None)
            if fn is not None:
                return ctypes.cast(fn, ctypes.c_void_p).value
    return None


def discover():
    """(thread hooks [(set, get) addresses], address of the preferred ILP64 sgemm or None)."""
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (loads scipy's OpenBLAS)
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return [], None
    libs = [lib for lib in ThreadpoolController().lib_controllers
            # An OpenMP-layer OpenBLAS already runs single-threaded inside a parallel region.
            if lib.internal_api == "openblas" and getattr(lib, "threading_layer", None) != "openmp"]
    chosen["libraries"] = [f"{lib.prefix} {lib.version} ({lib.architecture}, {lib.threading_layer}): {lib.filepath}"
                           for lib in libs]
    chosen["sgemm"] = "scipy's cython_blas"
    hooks = []
    for lib in libs:
        set_fn = _symbol(lib.dynlib, "openblas_set_num_threads", ("", "64_", "_64"))
        get_fn = _symbol(lib.dynlib, "openblas_get_num_threads", ("", "64_", "_64"))
        if set_fn and get_fn:
            hooks.append((set_fn, get_fn))
    scipy_version = max((_version(lib) for lib in libs if "scipy" in lib.filepath and "numpy" not in lib.filepath),
                        default=(0,))
    best = None
    for lib in sorted(libs, key=_version, reverse=True):
        address = _symbol(lib.dynlib, "sgemm", ("_64_", "64_"))
        if address and _version(lib) > scipy_version:
            best = address
            chosen["sgemm"] = f"ILP64 sgemm of {lib.prefix} {lib.version} ({lib.filepath})"
            break
    return hooks, best
