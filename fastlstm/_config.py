"""fastlstm.show_config(): the kernel path, CPU features and thread policy in use."""

import os
import platform
import sys
from typing import Dict

from . import _isa, _kernels, _threads


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux; what the platform module says elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or "unknown"


def config() -> Dict[str, Dict[str, object]]:
    """The facts show_config() prints, as a dict of sections of {name: value}."""
    used, best, features = _isa.levels()
    request = os.environ.get(_isa.ENV) or "unset"
    return {
        "kernels": {
            "path in use": used,
            "best path of this CPU": best,
            _isa.ENV: request,
        },
        "precisions": dict[str, object](_isa.precision_kernels(used)),
        "CPU": {
            "machine": platform.machine(),
            "processor": cpu_name(),
            "features": " ".join(f for f, has in features.items() if has) or "none detected",
            "missing": " ".join(f for f, has in features.items() if not has) or "none",
        },
        "threads": {
            "fastlstm threads": _threads.get_num_threads(),
            "cores available": _threads.available_cores(),
            "thread pool": "yes" if _kernels.openmp_enabled() else "no (no POSIX threads: serial)",
        },
        "Python": {"version": sys.version.split()[0], "platform": platform.platform()},
    }


def format_config() -> str:
    """config() as the text show_config() prints."""
    lines = []
    for section, items in config().items():
        lines.append(f"{section}:")
        width = max(len(k) for k in items)
        lines += [f"  {k:<{width}}  {v}" for k, v in items.items()]
    return "\n".join(lines)


def show_config() -> None:
    """Print the kernel path in use (see FASTLSTM_ISA), the CPU features detected and the
    thread policy, for bug reports and benchmark notes."""
    print(format_config())
