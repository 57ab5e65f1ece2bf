"""Load files under a memory and CPU limit and report each outcome as one JSON line (run as a script).

    python hostile_worker.py LIMIT_MB CPU_SECONDS LISTFILE

LISTFILE names one file per line.  The limits are set with ``resource.setrlimit`` before
fastlstm is imported, so a memory bomb fails here (MemoryError or death) instead of swapping
the machine; the parent (tests/test_hostile_files.py) blames the first file without a line.
"""

import json
import resource
import sys
import time
import warnings


def main():
    limit_mb, cpu_s, listing = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    resource.setrlimit(resource.RLIMIT_AS, (limit_mb << 20, limit_mb << 20))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    import fastlstm

    warnings.simplefilter("ignore")  # LoadWarning for the assumed head activation of valid .pt files

    with open(listing) as f:
        paths = f.read().splitlines()
    for path in paths:
        start, cpu_start = time.perf_counter(), _cpu()
        try:
            fastlstm.load(path)
            status, kind, msg = "ok", None, ""
        except fastlstm.LoadError as exc:
            status, kind, msg = "LoadError", type(exc).__name__, str(exc)
        except BaseException as exc:  # noqa: BLE001 - anything else is what the test reports
            status, kind, msg = "other", type(exc).__name__, str(exc)[:2000]
        print(
            json.dumps(
                {
                    "path": path,
                    "status": status,
                    "type": kind,
                    "msg": msg[:2000],
                    "msg_len": len(msg),
                    "seconds": time.perf_counter() - start,
                    "cpu_seconds": _cpu() - cpu_start,
                }
            ),
            flush=True,
        )


def _cpu():
    """CPU seconds used by this process and its finished children (the HDF5 reader runs in one).

    Timing in CPU rather than wall-clock seconds keeps the 2 s bound meaningful on a busy machine."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
