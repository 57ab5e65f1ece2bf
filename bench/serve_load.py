"""Load test of the network service: open-loop WebSocket clients against three servers built the same way.

Every server is the FastAPI app of ``fastlstm.serving.app`` run by uvicorn (the settings of
``fastlstm serve``), in its own process, on 127.0.0.1, serving the medium model (I=128, H=256, 2 layers,
fastlstm/harness/configs.py).  Only the backend behind the app differs:

  batcher   fastlstm.serving.Batcher: concurrent steps coalesced into one StreamPool.step per tick
  stream    one fastlstm Stream per connection, stepped inline on the event loop: no coalescing
  ort       one ONNX Runtime call per request: the T=1 graph with state in/out that
            fastlstm/harness/onnx_export.py exports, each connection's h/c kept between calls

The client (this process, asyncio) opens N WebSocket connections, one per stream, and sends each a
binary float32 frame at a fixed rate (100 Hz by default), open loop: a frame goes out on schedule
whether or not the previous reply came back, and phases are spread evenly over the period.  Latency
is reply time minus the frame's *scheduled* send time (so a client that falls behind shows up as
latency rather than hiding it).  For each N of the sweep (1 ... 4096, about x1.4 apart past 16) it reports
p50/p99/p99.9 and the steps/s achieved; a server's sweep stops at the first N whose p99 exceeds
``--stop-ms`` or that falls short of 90% of the offered rate, since larger N only get worse.

"Served" means p99 <= 10 ms with at least 95% of the offered steps answered (a failing point is
measured a second time and the better try kept).  The summary gives, for each server, the largest N
served along with every smaller N of the sweep, and the ratios (issue 13 targets: batcher >= 10x
ort, >= 3x stream).  The client runs on the same machine as the server and takes CPU from it: on a small machine the
figures are a floor for every server alike.

    python bench/serve_load.py --quick                      # ~2 min on 2 cores
    python bench/serve_load.py --plot docs/serving_latency.png --json /tmp/serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque

import numpy as np

from fastlstm.harness.configs import CONFIGS, random_model

MODES = ("batcher", "stream", "ort")
SWEEP = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)


# ----------------------------------------------------------------------------- the servers


class StreamPerConnection:
    """Baseline backend: one fastlstm Stream per stream, stepped inline (no coalescing)."""

    def __init__(self, model):
        self.model, self.streams, self.next_id = model, {}, 0
        self.input_size, self.output_size = model.input_size, model.output_size

    def __len__(self):
        return len(self.streams)

    def open(self):
        self.next_id += 1
        self.streams[self.next_id] = self.model.stream()
        return self.next_id

    def close(self, sid):
        self._get(sid)
        del self.streams[sid]

    def _get(self, sid):
        try:
            return self.streams[sid]
        except KeyError:
            from fastlstm.serving import UnknownStream

            raise UnknownStream(f"sid: {sid} is not an open stream") from None

    async def step(self, sid, x):
        return self._get(sid).step(x)

    def reset(self, sid):
        self._get(sid).reset()

    def get_state(self, sid):
        return self._get(sid).state

    def set_state(self, sid, state):
        self._get(sid).state = state

    def prometheus(self):
        return f"open_streams {len(self.streams)}\n"


class OrtPerRequest(StreamPerConnection):
    """Baseline backend: one ONNX Runtime session.run per request, each stream's h/c carried between calls."""

    def __init__(self, model, threads):
        super().__init__(model)
        from fastlstm.harness.ort_runner import OrtRunner

        runner = OrtRunner(model, threads=threads)
        self.sess, self.graphs = runner.step_sess, runner.graphs

    def open(self):
        self.next_id += 1
        self.streams[self.next_id] = self.graphs.zero_state(1)
        return self.next_id

    async def step(self, sid, x):
        state = self._get(sid)
        feeds = dict(zip(self.graphs.state_in, state))
        feeds["x"] = x.reshape(1, 1, -1)
        y, *new = self.sess.run(None, feeds)
        self.streams[sid] = new
        return y.reshape(-1)

    def reset(self, sid):
        self.streams[sid] = self.graphs.zero_state(1)

    def get_state(self, sid):
        raise NotImplementedError("the ORT baseline does not export state")

    set_state = get_state


def serve(mode, model_path, port, max_batch, max_delay_ms, batcher_threads, baseline_threads):
    """The server process: one backend behind fastlstm.serving's app, run like ``fastlstm serve``."""
    import fastlstm
    from fastlstm.serving import Batcher
    from fastlstm.serving.app import create_app, run_server

    model = fastlstm.load(model_path)
    fastlstm.set_num_threads(batcher_threads if mode == "batcher" else baseline_threads)
    if mode == "batcher":
        backend = Batcher(model, max_batch=max_batch, max_delay=max_delay_ms / 1000)
    elif mode == "stream":
        backend = StreamPerConnection(model)
    else:
        backend = OrtPerRequest(model, threads=fastlstm.get_num_threads())
    run_server(create_app(backend), "127.0.0.1", port)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(mode, model_path, args):
    port = _free_port()
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--serve",
            mode,
            "--model",
            model_path,
            "--port",
            str(port),
            "--max-batch",
            str(args.max_batch),
            "--max-delay-ms",
            str(args.max_delay_ms),
            "--baseline-threads",
            str(args.baseline_threads),
            "--batcher-threads",
            str(args.batcher_threads),
        ],
        env=env,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the {mode} server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the {mode} server did not start")


# ----------------------------------------------------------------------------- the client


async def run_point(port, n, rate, seconds, warmup, input_size):
    """N open-loop streams at ``rate`` Hz for warmup+seconds; latencies (s) of the measured window."""
    import websockets

    url = f"ws://127.0.0.1:{port}/ws"
    sem = asyncio.Semaphore(64)

    async def connect():
        async with sem:
            ws = await websockets.connect(url, max_queue=None, compression=None, open_timeout=60)
            await ws.recv()  # the hello frame
            return ws

    conns = await asyncio.gather(*[connect() for _ in range(n)])
    frame = np.random.default_rng(0).standard_normal(input_size).astype("<f4").tobytes()
    period = 1.0 / rate
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.2
    t_measure, t_end = t0 + warmup, t0 + warmup + seconds
    lat, sent = [], [0]
    pending = [deque() for _ in range(n)]
    # Streams in G phase groups: one timer per group wakes every period and sends its frames.
    groups = min(n, 20)

    async def sender(g):
        members = range(g, n, groups)
        t = t0 + period * g / groups
        while t < t_end:
            delay = t - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            for k in members:
                pending[k].append(t)
                await conns[k].send(frame)
            if t >= t_measure:
                sent[0] += len(members)
            t += period

    async def receiver(k):
        ws, q = conns[k], pending[k]
        try:
            async for _ in ws:
                t_sched = q.popleft()
                if t_sched >= t_measure:
                    lat.append(loop.time() - t_sched)
        except websockets.ConnectionClosed:
            pass

    receivers = [asyncio.ensure_future(receiver(k)) for k in range(n)]
    await asyncio.gather(*[sender(g) for g in range(groups)])
    await asyncio.sleep(min(2.0, max(0.5, 10 * period)))  # replies still in flight
    for ws in conns:
        await ws.close()
    for r in receivers:
        r.cancel()
    return np.array(lat), sent[0]


def measure(port, n, input_size, args):
    lat, sent = asyncio.run(run_point(port, n, args.rate, args.seconds, args.warmup, input_size))
    answered = len(lat)
    q = (lambda p: float(np.percentile(lat, p)) * 1e3) if answered else (lambda p: math.inf)
    return {
        "streams": n,
        "offered_steps_s": n * args.rate,
        "achieved_steps_s": answered / args.seconds,
        "answered_frac": answered / max(sent, 1),
        "p50_ms": q(50),
        "p99_ms": q(99),
        "p999_ms": q(99.9),
    }


def passes(row, p99_ms=10.0):
    """Served: p99 within ``p99_ms`` and at least 95% of the offered steps answered in the window."""
    return row["p99_ms"] <= p99_ms and row["answered_frac"] >= 0.95


def sweep(mode, model_path, input_size, args):
    """Rows of one server's sweep.  A point that fails the 10 ms target is measured once more and the
    better try kept (a burst of load from elsewhere on a shared machine should not end a sweep); the
    sweep stops after a point whose p99 passes --stop-ms or that drops over 10% of the steps."""
    proc, port = start_server(mode, model_path, args)
    rows = []
    try:
        for n in [c for c in SWEEP if args.min_streams <= c <= args.max_streams]:
            row = measure(port, n, input_size, args)
            tries = 1
            if not passes(row):
                again = measure(port, n, input_size, args)
                tries = 2
                row = min(row, again, key=lambda r: (not passes(r), r["p99_ms"]))
            row.update(mode=mode, tries=tries)
            rows.append(row)
            print(
                f"{mode:>8} {n:>6} {row['offered_steps_s']:>10.0f} {row['achieved_steps_s']:>10.0f} "
                f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['p999_ms']:>8.2f} {tries:>6}",
                flush=True,
            )
            if row["p99_ms"] > args.stop_ms or row["answered_frac"] < 0.9:
                break
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rows


def served(rows):
    """The largest stream count N such that N and every smaller count of the sweep pass."""
    best = 0
    for r in sorted(rows, key=lambda r: r["streams"]):
        if not passes(r):
            break
        best = r["streams"]
    return best


def plot(rows, path, rate):
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {
        "batcher": "fastlstm Batcher (coalesced)",
        "stream": "fastlstm Stream per connection",
        "ort": "ONNX Runtime call per request",
    }
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for mode, color in zip(MODES, ("tab:blue", "tab:orange", "tab:green")):
        rs = [r for r in rows if r["mode"] == mode]
        if not rs:
            continue
        n = [r["streams"] for r in rs]
        ax.plot(n, [r["p99_ms"] for r in rs], "o-", color=color, label=f"{labels[mode]}, p99")
        ax.plot(n, [r["p50_ms"] for r in rs], ":", color=color, label=f"{labels[mode]}, p50")
    ax.axhline(10, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_yscale("log")
    ax.set_xlabel(f"concurrent streams (WebSocket connections), each {rate:g} steps/s")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title("fastlstm serve, medium LSTM (I=128, H=256, 2 layers), loopback")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", lw=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--rate", type=float, default=100.0, help="steps per second per stream (default 100)")
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per point (default 3)")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--min-streams", type=int, default=1)
    p.add_argument("--max-streams", type=int, default=4096)
    p.add_argument("--stop-ms", type=float, default=50.0, help="stop a sweep once p99 exceeds this")
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--max-delay-ms", type=float, default=1.0)
    p.add_argument(
        "--batcher-threads",
        type=int,
        default=1,
        help="compute threads of the batcher server (default 1: on a small machine the client "
        "and the event loop need the other cores)",
    )
    p.add_argument(
        "--baseline-threads",
        type=int,
        default=1,
        help="compute threads of the stream and ort servers (default 1: one stream's step is too "
        "small to split, and a second thread only waits for a core the client needs)",
    )
    p.add_argument("--quick", action="store_true", help="2 s points, 0.5 s warm-up")
    p.add_argument("--json", metavar="OUT")
    p.add_argument("--plot", metavar="OUT.png")
    p.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        return serve(
            args.serve,
            args.model,
            args.port,
            args.max_batch,
            args.max_delay_ms,
            args.batcher_threads,
            args.baseline_threads,
        )
    if args.quick:
        args.seconds, args.warmup = 2.0, 0.5
    cfg = CONFIGS["medium"]
    model = random_model(cfg)
    workdir = tempfile.mkdtemp(prefix="fastlstm-serve-load-")
    model_path = os.path.join(workdir, "medium.safetensors")
    model.save(model_path)
    print(
        f"medium model (I={cfg.I}, H={cfg.H}, {cfg.L} layers), {args.rate:g} Hz per stream, "
        f"{args.seconds:g} s per point; batcher max_batch={args.max_batch} max_delay={args.max_delay_ms:g} ms; "
        f"{os.cpu_count()} CPUs; threads: batcher {args.batcher_threads}, baselines {args.baseline_threads}; "
        f"{platform.processor() or platform.machine()}"
    )
    print(
        f"{'server':>8} {'streams':>6} {'offered/s':>10} {'steps/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p99.9 ms':>8} {'tries':>6}"
    )
    rows = []
    for mode in args.modes.split(","):
        rows += sweep(mode, model_path, cfg.I, args)
    best = {m: served([r for r in rows if r["mode"] == m]) for m in args.modes.split(",")}
    print("streams served at p99 <= 10 ms: " + ", ".join(f"{m} {n}" for m, n in best.items()))
    for base in ("ort", "stream"):
        if "batcher" in best and base in best:
            ratio = best["batcher"] / best[base] if best[base] else math.inf
            print(f"  batcher / {base}: {ratio:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rate_hz": args.rate, "seconds": args.seconds, "rows": rows, "served": best}, f, indent=1)
    if args.plot:
        plot(rows, args.plot, args.rate)
        print(f"plot: {args.plot}")
    os.remove(model_path)
    os.rmdir(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
