"""Pull the attributes and datasets fastlstm needs out of an HDF5 file, in a child process.

Why a child process: libhdf5 (under h5py) is not hardened against damaged files.  Fuzzing a
Keras ``.h5`` here crashed the interpreter with a segmentation fault (a corrupt heap behind a
string attribute), and a hostile file can make it loop or exhaust memory.  So the file is
parsed by ``python hdf5_reader.py`` (this file run as a script: it imports only numpy, h5py and
the standard library, never fastlstm or a framework), which sends back plain data: selected
string attributes as JSON and the datasets as ``.npy`` records (read with
``allow_pickle=False``).  A crash, hang or memory blow-up in the child becomes a
``ValueError`` here.  Only if no child can be started (no usable ``sys.executable``) does the
parse run in-process.

Parsing rules, the same in either place: hard links only (soft/external links could reach
other files), no external or virtual datasets, only standard compression filters (an
unknown filter would make libhdf5 load a plugin), depth and size caps.

Limits (the parent derives them from the file's size, see :mod:`._limits`, and passes them
in): the datasets read may total at most the load's memory budget (checked from each
dataset's shape before reading, so a 14 KB file whose dataset is all fill value is refused
without allocating it), a dataset may have at most ``max_chunks`` chunks, and the child
process limits its own address space (``RLIMIT_AS``) and CPU time (``RLIMIT_CPU``) as its
first act, while the parent enforces the same time on the wall clock.  Whichever limit a
file hits, the parent reports a ValueError saying which.
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys

MAX_DEPTH = 32
MAX_OBJECTS = 100_000
#: Only these attributes are read (string or string-list valued); others are never touched.
_ATTRS = ("model_config", "keras_version", "layer_names", "weight_names", "backend")
_SAFE_FILTERS = {"gzip", "shuffle", "fletcher32", "lzf", "scaleoffset", "szip"}


class HDF5Error(ValueError):
    """The file cannot be parsed safely (message says why)."""


def _text(value):
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise HDF5Error(f"attribute of unexpected type {type(value).__name__}")


def _wanted_attr(name):
    return any(name == a or (name.startswith(a) and name[len(a) :].isdigit()) for a in _ATTRS)


def parse(data, skip_data_under=(), budget=None, max_chunks=None):
    """Parse HDF5 bytes in this process: ``(attrs, datasets)``.

    ``attrs`` maps a group path ('' for the root) to {attr name: str or list of str};
    ``datasets`` maps a dataset path to a NumPy array, or to a ``(dtype str, shape)`` pair
    for datasets under ``skip_data_under`` (listed, not read) and non-float datasets.
    The arrays read may total at most ``budget`` bytes, and a dataset may have at most
    ``max_chunks`` chunks (no cap when None).
    """
    import h5py
    import numpy as np

    try:
        f = h5py.File(io.BytesIO(data), "r")
    except Exception as exc:  # noqa: BLE001 - h5py raises many types on a file that is not HDF5
        raise HDF5Error(f"not a readable HDF5 file ({type(exc).__name__}: {str(exc)[:200]})") from None
    attrs, datasets, count = {}, {}, [0]
    left = [float("inf") if budget is None else budget]

    def visit(group, prefix, depth):
        if depth > MAX_DEPTH:
            raise HDF5Error(f"groups nested deeper than {MAX_DEPTH} (a link cycle?) at {prefix[:120]!r}")
        names = [n for n in group.attrs if _wanted_attr(n)]
        if names:
            attrs[prefix.rstrip("/")] = {n: _text(group.attrs[n]) for n in names}
        for name in group:
            count[0] += 1
            if count[0] > MAX_OBJECTS:
                raise HDF5Error(f"more than {MAX_OBJECTS} objects")
            path = prefix + name
            link = group.get(name, getlink=True)
            if not isinstance(link, h5py.HardLink):
                raise HDF5Error(
                    f"entry {path[:120]!r} is a {type(link).__name__}; only plain groups and datasets are "
                    "accepted (links could reach other files)"
                )
            obj = group[name]
            if isinstance(obj, h5py.Group):
                visit(obj, path + "/", depth + 1)
            elif isinstance(obj, h5py.Dataset):
                datasets[path] = read(obj, path)

    def read(ds, path):
        if ds.is_virtual or ds.external:
            raise HDF5Error(f"dataset {path[:120]!r} stores its data outside the file; refused")
        unknown = set(ds._filters) - _SAFE_FILTERS  # noqa: SLF001 (no public listing of all filters)
        if unknown:
            raise HDF5Error(f"dataset {path[:120]!r} uses unsupported HDF5 filter(s) {sorted(unknown)}")
        shape = tuple(int(d) for d in ds.shape)
        if ds.dtype.kind != "f" or path.startswith(tuple(skip_data_under)):
            return (ds.dtype.str, shape)
        nbytes = ds.size * ds.dtype.itemsize
        if nbytes > left[0]:
            raise HDF5Error(
                f"dataset {path[:120]!r} of shape {shape} ({nbytes:,} bytes) is beyond this file's "
                f"memory budget ({budget:,} bytes in all); the file is corrupt or hostile"
            )
        if ds.chunks is not None and max_chunks is not None:
            chunks = 1
            for n, c in zip(shape, ds.chunks):
                chunks *= -(-n // max(c, 1))
            if chunks > max_chunks:
                raise HDF5Error(
                    f"dataset {path[:120]!r} is split into {chunks:,} chunks (limit {max_chunks:,} for "
                    "a file of this size); the file is corrupt or hostile"
                )
        left[0] -= nbytes
        return np.asarray(ds[()])

    try:
        visit(f, "", 0)
    except (HDF5Error, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - h5py raises many types on damaged files
        raise HDF5Error(f"corrupt HDF5 data ({type(exc).__name__}: {str(exc)[:200]})") from None
    finally:
        f.close()
    return attrs, datasets


# --- the wire format between child and parent -------------------------------------------


def _encode(attrs, datasets, out):
    import numpy as np

    listing = []
    arrays = []
    for path, value in datasets.items():
        if isinstance(value, tuple):
            listing.append({"path": path, "dtype": value[0], "shape": list(value[1]), "data": False})
        else:
            listing.append({"path": path, "data": True})
            arrays.append(np.ascontiguousarray(value))
    header = json.dumps({"attrs": attrs, "datasets": listing}).encode("utf-8")
    out.write(struct.pack("<Q", len(header)) + header)
    for arr in arrays:
        np.lib.format.write_array(out, arr, allow_pickle=False)
    out.flush()


def _decode(blob):
    import numpy as np

    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    if "error" in header:
        raise HDF5Error(header["error"])
    stream = io.BytesIO(blob)  # shares ``blob`` (no copy of the arrays' bytes)
    stream.seek(8 + n)
    datasets = {}
    for item in header["datasets"]:
        if item["data"]:
            datasets[item["path"]] = np.lib.format.read_array(stream, allow_pickle=False)
        else:
            datasets[item["path"]] = (item["dtype"], tuple(item["shape"]))
    return header["attrs"], datasets


def _limit_self(address_space, cpu_seconds):
    """Cap this (child) process's address space and CPU time, within any hard limit it inherited."""
    import resource

    for which, want in ((resource.RLIMIT_AS, address_space), (resource.RLIMIT_CPU, cpu_seconds)):
        if want is None:
            continue
        _, hard = resource.getrlimit(which)
        want = int(want) if hard == resource.RLIM_INFINITY else min(int(want), hard)
        resource.setrlimit(which, (want, hard))


def _address_space_now():
    """This process's virtual size in bytes (Linux), else 0."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def main():
    """Child entry point: HDF5 bytes on stdin, the parsed contents on stdout; limits in argv[1] (JSON)."""
    opts = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    if opts.get("address_space") is not None:
        opts["address_space"] += _address_space_now()  # on top of the bare interpreter's own mappings
    _limit_self(opts.get("address_space"), opts.get("cpu_seconds"))
    out = sys.stdout.buffer
    try:
        data = sys.stdin.buffer.read()
        attrs, datasets = parse(data, tuple(opts.get("skip", ())), opts.get("budget"), opts.get("max_chunks"))
        _encode(attrs, datasets, out)
    except (HDF5Error, MemoryError) as exc:
        why = (
            str(exc)
            if isinstance(exc, HDF5Error)
            else (
                f"reading it needs more memory than the HDF5 reader's limit of {opts.get('address_space', 0):,} "
                "bytes of address space"
            )
        )
        msg = json.dumps({"error": why}).encode("utf-8")
        out.write(struct.pack("<Q", len(msg)) + msg)


def extract(data, skip_data_under=(), budget=None, max_chunks=None, address_space=None, seconds=None):
    """Parse HDF5 bytes in a child process; return ``(attrs, datasets)`` as :func:`parse` does.

    ``budget`` and ``max_chunks`` are :func:`parse`'s; ``address_space`` (bytes, on top of the
    child interpreter's start-up size) and ``seconds`` (CPU and wall time) limit the child.
    Raises :class:`HDF5Error` (a ValueError) for bad files, including ones that crash libhdf5,
    exhaust the child's memory or run out of time.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if isinstance(p, str) and p)
    # One BLAS thread: the child does no linear algebra, and every OpenBLAS thread reserves
    # address space that would count against the child's limit.
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    opts = {
        "skip": list(skip_data_under),
        "budget": budget,
        "max_chunks": max_chunks,
        "address_space": address_space,
        "cpu_seconds": None if seconds is None else int(seconds) + 1,
    }
    cmd = [sys.executable, os.path.abspath(__file__), json.dumps(opts)]
    try:
        proc = subprocess.run(cmd, input=bytes(data), capture_output=True, timeout=seconds, env=env)
    except subprocess.TimeoutExpired:
        raise HDF5Error(
            f"the HDF5 reader did not finish within its time limit of {seconds:.3g} s for a file of this "
            "size; the file is corrupt or hostile"
        ) from None
    except OSError:
        return parse(data, skip_data_under, budget, max_chunks)  # no usable interpreter to isolate the parse in
    if proc.returncode < 0:
        if -proc.returncode == getattr(signal, "SIGXCPU", None):
            raise HDF5Error(
                f"the HDF5 reader used up its CPU time limit of {opts['cpu_seconds']} s for a file of "
                "this size; the file is corrupt or hostile"
            )
        raise HDF5Error(
            f"the HDF5 library crashed (signal {-proc.returncode}) reading this file; it is corrupt or hostile"
        )
    if proc.returncode != 0 or len(proc.stdout) < 8:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        if b"MemoryError" in proc.stderr:
            raise HDF5Error(
                "reading this HDF5 file needs more memory than the HDF5 reader's address-space limit; "
                "it is corrupt or hostile"
            )
        if b"ModuleNotFoundError" in proc.stderr or not sys.executable:
            return parse(data, skip_data_under, budget, max_chunks)  # the child cannot import h5py: parse here
        raise HDF5Error(f"reading the HDF5 file failed ({tail[0][:200]})")
    try:
        return _decode(proc.stdout)
    except HDF5Error:
        raise
    except Exception as exc:  # noqa: BLE001 - the child's output is ours, so this should not happen; still no crash
        raise HDF5Error(f"could not decode the HDF5 reader's output ({type(exc).__name__}: {exc})") from None


if __name__ == "__main__":
    # Run as a script, this file's folder is sys.path[0]; drop it so that no sibling module can
    # shadow a top-level module numpy or h5py import.
    if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    main()
