"""What ``fastlstm bench`` shows: progress on stderr, the results table, JSON and the optional plot.

``rich`` draws the table and the progress bar when it is installed; otherwise plain
text does the same job.  matplotlib is needed only for ``--plot``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import time

from ..harness import LABELS, PEERS, installed

UNITS = {"us/step": ("µs/step", 1e6), "ms/seq": ("ms/seq", 1e3)}


def have_rich():
    return installed("rich")


def have_matplotlib():
    return installed("matplotlib")


# --------------------------------------------------------------------------- progress


class Progress:
    """Status lines and a progress bar on stderr: a live bar on a terminal, plain lines otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()

    def say(self, msg):
        print(f"fastlstm bench: {msg}", file=self.stream, flush=True)

    @contextlib.contextmanager
    def bar(self, total, description):
        t0 = time.perf_counter()
        if self.live and have_rich():
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            with RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(),
                console=Console(file=self.stream),
                transient=True,
            ) as p:
                task = p.add_task(description, total=total)
                yield lambda: p.advance(task)
        elif self.live:
            done = [0]

            def tick():
                done[0] += 1
                filled = int(30 * done[0] / total)
                print(
                    f"\r{description} [{'#' * filled}{'.' * (30 - filled)}] {100 * done[0] // total:3d}%",
                    end="",
                    file=self.stream,
                    flush=True,
                )

            yield tick
            print("\r" + " " * (len(description) + 40) + "\r", end="", file=self.stream, flush=True)
        else:
            self.say(f"{description} ...")
            yield lambda: None
        self.say(f"timed in {time.perf_counter() - t0:.1f} s")


# --------------------------------------------------------------------------- results


def collect(rows, cases, seq_len):
    """Per-workload medians and ratios (the JSON's ``workloads``), in table order."""
    out = []
    for key, label, unit, x, kind in rows:
        # An engine with several routes (torch: nn.LSTM and nn.LSTMCell) is credited with its fastest.
        best = {}
        for c in cases:
            if c.workload == key and (c.engine not in best or c.median < best[c.engine].median):
                best[c.engine] = c
        mine = list(best.values())
        fl = best["fastlstm"].median
        entry = {
            "key": key,
            "label": label,
            "unit": unit,
            "streams": int(x.shape[1]),
            "steps": seq_len if kind == "seq" else 1,
            "median_s": {c.engine: c.median for c in mine},
            "samples": {c.engine: len(c.samples) for c in mine},
            "route": {c.engine: c.variant for c in mine if c.variant},
            "all_routes_s": {f"{c.engine}:{c.variant}": c.median for c in cases if c.workload == key and c.variant},
            "speedup": {c.engine: c.median / fl for c in mine if c.engine != "fastlstm"},
        }
        if kind == "seq":
            entry["steps_per_s"] = {c.engine: seq_len / c.median for c in mine}
        else:
            entry["stream_steps_per_s"] = {c.engine: x.shape[1] / c.median for c in mine}
        out.append(entry)
    return out


def _num(v):
    if v != v:
        return "-"
    return f"{v:.3g}" if v < 1000 else f"{v:,.0f}"


def _table_cells(result):
    """Header and rows of the results table, as strings."""
    ran = [n for n, s in result["frameworks"].items() if s["status"] == "ran" and n != "fastlstm"]
    header = ["workload", "fastlstm"] + [LABELS[n] for n in ran]
    body = []
    for w in result["workloads"]:
        unit, scale = UNITS[w["unit"]]
        cells = [f"{w['label']} ({unit})", _num(w["median_s"]["fastlstm"] * scale)]
        for n in ran:
            t = w["median_s"].get(n)
            cells.append("-" if t is None else f"{_num(t * scale)} ({w['speedup'][n]:.1f}x)")
        body.append(cells)
    return header, body


def _plain_table(header, body):
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))  # noqa: E731
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in body])


def _rich_table(header, body, title):
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAVY, title_justify="left")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
    for r in body:
        table.add_row(*r)
    buf = io.StringIO()
    Console(file=buf, width=200, force_terminal=False, color_system=None).print(table)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines())


def render(result) -> str:
    """The text report: model, machine, parity, the table with ratios, and what was skipped."""
    m, s, mach = result["model"], result["settings"], result["machine"]
    name = "bundled CO2 model" if m["bundled"] else m["path"]
    lines = [
        f"model: {name} ({m['format']} file): {', '.join(m['layers'])}; {m['parameters']:,} parameters; "
        f"fastlstm runs it in {m['precision']}",
        f"machine: {mach['cpu']}, {mach['cores']} cores; {s['threads']} thread(s) for every engine; "
        f"{s['mode']} run, {s['repeats']} interleaved repeats, medians",
    ]
    names = ", ".join(f"{LABELS[n]} {e:.1e}" for n, per in result["parity"].items() for e in [max(per.values())])
    verdict = (
        "ok"
        if result["parity_ok"]
        else "FAILED (tolerances "
        + ", ".join(f"{LABELS[n]} {t:.1e}" for n, t in result["parity_tolerances"].items())
        + ")"
    )
    lines.append(f"parity, max abs difference from fastlstm: {names or 'no other framework ran'} -> {verdict}")
    header, body = _table_cells(result)
    title = "time per call, median; (N.Nx) = that framework's time / fastlstm's"
    lines.append("")
    lines.append(_rich_table(header, body, title) if have_rich() else title + "\n\n" + _plain_table(header, body))
    lines.append("")
    lines.append(
        "fastlstm: Stream.step(x, out=) for 1 stream, StreamPool.step(ids, x, out=) for many, "
        "Model.predict for sequences."
    )
    routes = [w["route"]["torch"] for w in result["workloads"] if "torch" in w.get("route", {})]
    if routes:
        lines.append(
            "PyTorch steps: the faster of nn.LSTM on T=1 and one nn.LSTMCell per layer; used, by row: "
            + ", ".join(routes)
            + "."
        )
    for n in result["parity"]:
        # a peer that ran the user's ONNX file says how in its status; the others run the harness's graphs
        note = result["frameworks"].get(n, {}).get("note")
        if note:
            lines.append(f"{LABELS[n]} runs MODEL itself; {note}.")
        elif n != "torch" and PEERS[n].note:
            lines.append(PEERS[n].note)
    load = mach.get("other_load_cores")
    if load is not None and load == load and load > 0.25:
        lines.append(f"note: other processes kept {load:.1f} cores busy while this ran; the figures are noisy.")
    if result.get("not_measured"):
        lines.append(f"not measured: {result['not_measured']}")
    for n, st in result["frameworks"].items():
        if st["status"] != "ran":
            extra = f"; install: {st['install']}" if "install" in st else ""
            lines.append(f"skipped {LABELS[n]}: {st['reason']}{extra}")
    return "\n".join(lines)


def write_json(result, path):
    def clean(v):  # JSON has no NaN: a missing figure becomes null
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    with open(path, "w") as f:
        json.dump(clean(result), f, indent=2)
        f.write("\n")


def plot(result, path):
    """Grouped bars: how many times faster fastlstm is than each framework, per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = result["workloads"]
    others = [n for n, s in result["frameworks"].items() if s["status"] == "ran" and n != "fastlstm"]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.9 * len(ws)))
    height = 0.8 / max(1, len(others))
    for j, n in enumerate(others):
        ys = [i + (j - (len(others) - 1) / 2) * height for i in range(len(ws))]
        vals = [w["speedup"].get(n, float("nan")) for w in ws]
        bars = ax.barh(ys, vals, height=height, label=LABELS[n])
        ax.bar_label(bars, labels=[f"{v:.1f}x" for v in vals], padding=3, fontsize=8)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks(range(len(ws)), [w["label"] for w in ws])
    ax.invert_yaxis()
    ax.set_xlabel("times faster than the framework (framework time / fastlstm time, median)")
    ax.set_title(
        f"fastlstm speed-up, {result['settings']['threads']} thread(s), {result['machine']['cpu']}", fontsize=9
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
