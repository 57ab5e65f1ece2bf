"""Reusable helpers for benchmarking fastlstm against PyTorch and ONNX Runtime.

Everything that builds a competitor lives here, so that the pytest-benchmark
suite (``test_bench_engine.py``) and the plain side-by-side script
(``run_engine.py``) measure exactly the same models:

* :func:`build_torch` makes an ``nn.LSTM`` (plus an optional ``nn.Linear``
  head) with PyTorch's default initialisation, so the weights have the
  magnitudes real models start from (no saturated gates, no denormals).
* :func:`to_fastlstm` converts that module to a :class:`fastlstm.Model` through
  the public model description (``LSTMWeights`` / ``LSTMLayer`` / ``Dense``),
  i.e. the same route a user takes, not a private shortcut.
* :func:`export_onnx_sequence` / :func:`export_onnx_step` export it with
  ``torch.onnx.export``; :class:`OrtStepper` carries ``h``/``c`` between T=1
  runs, since ONNX Runtime is stateless (ORT #11085).
* :func:`thread_policy` sets one thread count for every engine at once.

Frameworks are imported lazily so that importing this module never fails just
because one of them (or the compiled engine) is missing; each benchmark skips
what it cannot build.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np


# --------------------------------------------------------------------------- configs

@dataclass(frozen=True)
class Config:
    """One benchmark shape: input size, hidden size, stacked layers, batch, sequence length."""

    name: str
    I: int
    H: int
    L: int
    B: int
    T: int

    @property
    def batched(self) -> bool:
        return self.B > 1

    def layer_inputs(self):
        """Input width of each layer (the first reads x, the others read the previous h)."""
        return [self.I] + [self.H] * (self.L - 1)

    def flops_per_sequence(self) -> float:
        """Multiply-adds of the gate matmuls, counted as 2 flops each: 2*T*B*4H*(I_l+H) per layer.

        Activations and the cell update are left out on purpose: they are O(T*B*H),
        negligible next to the matmuls at the sizes where GFLOP/s is quoted.
        """
        return float(sum(2 * self.T * self.B * 4 * self.H * (i + self.H) for i in self.layer_inputs()))

    def label(self) -> str:
        return f"I={self.I} H={self.H} L={self.L} B={self.B} T={self.T}"


#: The six configurations of issue 2, smallest first.
CONFIGS: Dict[str, Config] = {
    c.name: c
    for c in (
        Config("tiny", 16, 32, 1, 1, 1000),
        Config("small", 64, 128, 1, 1, 500),
        Config("medium", 128, 256, 2, 1, 200),
        Config("medium-batch", 128, 256, 2, 32, 100),
        Config("large", 512, 1024, 1, 1, 50),
        Config("large-batch", 512, 1024, 1, 64, 50),
    )
}


def make_inputs(cfg: Config, seed: int = 1) -> np.ndarray:
    """A ``(T, B, I)`` float32 C-contiguous input sequence with unit-variance entries."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((cfg.T, cfg.B, cfg.I), dtype=np.float32)


# --------------------------------------------------------------------------- threads

def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def thread_policy(n: int):
    """Run the body with every engine held to ``n`` threads.

    * fastlstm: ``fastlstm.set_num_threads(n)`` (its OpenMP team across the batch).
    * BLAS: the OpenBLAS pools (scipy's, which the engine calls, and numpy's) are
      limited with threadpoolctl, so a batch-1 sgemm inside the engine cannot
      quietly use a second core in a "1 thread" comparison.
    * PyTorch: ``torch.set_num_threads(n)`` (intra-op pool).
    * ONNX Runtime has no global knob: sessions must be built with
      :func:`ort_session` ``(threads=n)`` inside or after entering this block.

    Previous settings are restored on exit.
    """
    restore = []
    try:
        import threadpoolctl

        limiter = threadpoolctl.threadpool_limits(limits=n, user_api="blas")
        restore.append(limiter.restore_original_limits)
    except ImportError:  # pragma: no cover - threadpoolctl is a bench dependency
        warnings.warn("threadpoolctl missing: BLAS thread count not controlled", stacklevel=2)
    # Only engines already imported are touched: importing one here would load
    # its runtime into a process meant to hold another (run_engine keeps
    # fastlstm and torch in separate processes, see there).
    torch = sys.modules.get("torch")
    if torch is not None:
        old = torch.get_num_threads()
        torch.set_num_threads(n)
        restore.append(lambda: torch.set_num_threads(old))
    fastlstm = sys.modules.get("fastlstm")
    if fastlstm is not None and hasattr(fastlstm, "set_num_threads"):
        old_fl = fastlstm.get_num_threads()
        fastlstm.set_num_threads(n)
        restore.append(lambda: fastlstm.set_num_threads(old_fl))
    try:
        yield n
    finally:
        for undo in reversed(restore):
            undo()


# --------------------------------------------------------------------------- PyTorch

def build_torch(cfg: Config, head_size: Optional[int] = None, seed: int = 0):
    """Return ``(lstm, head)``: an eval-mode ``nn.LSTM`` (time-major) and an optional ``nn.Linear``.

    PyTorch's default init (uniform in +-1/sqrt(H)) is used, seeded, so every
    engine sees the same weights run to run.
    """
    import torch

    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(cfg.I, cfg.H, num_layers=cfg.L).eval()
    head = torch.nn.Linear(cfg.H, head_size).eval() if head_size else None
    for p in lstm.parameters():
        p.requires_grad_(False)
    if head is not None:
        for p in head.parameters():
            p.requires_grad_(False)
    return lstm, head


def torch_cells(lstm):
    """One ``nn.LSTMCell`` per layer of ``lstm``, sharing its weights (for the per-step cell loop)."""
    import torch

    cells = []
    for k in range(lstm.num_layers):
        cell = torch.nn.LSTMCell(lstm.input_size if k == 0 else lstm.hidden_size, lstm.hidden_size).eval()
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, name).copy_(getattr(lstm, f"{name}_l{k}"))
        for p in cell.parameters():
            p.requires_grad_(False)
        cells.append(cell)
    return cells


def torch_forward(lstm, head, x: np.ndarray) -> np.ndarray:
    """Reference output of the torch model for a ``(T, B, I)`` input (used for parity checks)."""
    import torch

    with torch.inference_mode():
        y, _ = lstm(torch.from_numpy(x))
        if head is not None:
            y = head(y)
    return y.numpy()


# --------------------------------------------------------------------------- fastlstm

def torch_arrays(lstm, head=None):
    """The weights of ``lstm`` (+ ``head``) as plain numpy arrays: ``(state_dict, head_w, head_b)``.

    Picklable without torch, so a process that never imports torch can build
    the same fastlstm model (see :func:`fastlstm_from_arrays`).
    """
    sd = {k: v.detach().cpu().numpy().copy() for k, v in lstm.state_dict().items()}
    if head is None:
        return sd, None, None
    hb = None if head.bias is None else head.bias.detach().cpu().numpy().copy()
    return sd, head.weight.detach().cpu().numpy().copy(), hb


def random_arrays(cfg: Config, seed: int = 0):
    """An ``nn.LSTM`` state_dict of numpy arrays drawn like PyTorch's default init (U(+-1/sqrt(H))).

    For scripts that time fastlstm alone and must not import torch (its libgomp
    would then set fastlstm's OpenMP wait policy; see run_engine.FlWorker).
    """
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(cfg.H)
    sd = {}
    for k, i in enumerate(cfg.layer_inputs()):
        for name, shape in ((f"weight_ih_l{k}", (4 * cfg.H, i)), (f"weight_hh_l{k}", (4 * cfg.H, cfg.H)),
                            (f"bias_ih_l{k}", (4 * cfg.H,)), (f"bias_hh_l{k}", (4 * cfg.H,))):
            sd[name] = rng.uniform(-bound, bound, shape).astype(np.float32)
    return sd


def fastlstm_from_arrays(sd, num_layers, head_w=None, head_b=None, **model_kwargs):
    """A :class:`fastlstm.Model` from an ``nn.LSTM`` state_dict of numpy arrays (+ a Linear head's).

    Goes through the public description classes rather than ``fastlstm.from_torch``
    so the benchmark depends only on the engine, not on the loaders.
    """
    import fastlstm

    layers = []
    for k in range(num_layers):
        w = fastlstm.LSTMWeights(
            weight_ih=sd[f"weight_ih_l{k}"],
            weight_hh=sd[f"weight_hh_l{k}"],
            bias_ih=sd.get(f"bias_ih_l{k}"),
            bias_hh=sd.get(f"bias_hh_l{k}"),
            name=f"lstm.l{k}",
        )
        layers.append(fastlstm.LSTMLayer((w,)))
    dense = None if head_w is None else fastlstm.Dense(weight=head_w, bias=head_b)
    return fastlstm.Model(layers, dense, **model_kwargs)


def to_fastlstm(lstm, head=None, **model_kwargs):
    """Convert a torch ``nn.LSTM`` (+ ``nn.Linear``) into a :class:`fastlstm.Model` via its state_dict."""
    sd, hw, hb = torch_arrays(lstm, head)
    return fastlstm_from_arrays(sd, lstm.num_layers, hw, hb, **model_kwargs)


# --------------------------------------------------------------------------- ONNX export

def _wrappers():
    import torch

    class Sequence(torch.nn.Module):
        """x (T, B, I) -> y (T, B, O): the whole sequence from zero state, outputs only."""

        def __init__(self, lstm, head):
            super().__init__()
            self.lstm, self.head = lstm, head

        def forward(self, x):
            y, _ = self.lstm(x)
            return self.head(y) if self.head is not None else y

    class Step(torch.nn.Module):
        """(x (1, B, I), h0, c0 (L, B, H)) -> (y (1, B, O), hn, cn): one step, state in and out."""

        def __init__(self, lstm, head):
            super().__init__()
            self.lstm, self.head = lstm, head

        def forward(self, x, h0, c0):
            y, (h, c) = self.lstm(x, (h0, c0))
            if self.head is not None:
                y = self.head(y)
            return y, h, c

    return Sequence, Step


def _export(module, args, path, input_names, output_names):
    """``torch.onnx.export`` with everything stored inline in ``path``.

    The legacy TorchScript exporter (``dynamo=False``) is tried first: it takes
    ~0.3 s instead of ~4 s per model and, after ORT's graph optimisation, gives
    the same graph (one ``LSTM`` node per layer, a Split of h0/c0, a Squeeze);
    measured per-step time was the same within noise.  If a future torch drops
    it, the dynamo exporter is used with ``external_data=False`` (formats.md
    §3.3: it otherwise writes the weights to a side ``.onnx.data`` file).
    """
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, args, path, input_names=input_names, output_names=output_names,
                              dynamo=False)
            return path
        except Exception:  # noqa: BLE001 - fall back to the other exporter whatever the reason
            pass
        torch.onnx.export(module, args, path, input_names=input_names, output_names=output_names,
                          dynamo=True, external_data=False, verbose=False)
    return path


def export_onnx_sequence(lstm, head, cfg: Config, path: str) -> str:
    """Export the whole-sequence model, static shape ``(T, B, I) -> (T, B, O)``."""
    import torch

    Sequence, _ = _wrappers()
    x = torch.zeros(cfg.T, cfg.B, cfg.I)
    return _export(Sequence(lstm, head).eval(), (x,), path, ["x"], ["y"])


def export_onnx_step(lstm, head, cfg: Config, path: str) -> str:
    """Export the T=1 model with ``h0``/``c0`` as inputs and ``hn``/``cn`` as outputs (streaming)."""
    import torch

    _, Step = _wrappers()
    x = torch.zeros(1, cfg.B, cfg.I)
    h = torch.zeros(cfg.L, cfg.B, cfg.H)
    return _export(Step(lstm, head).eval(), (x, h, h.clone()), path, ["x", "h0", "c0"], ["y", "hn", "cn"])


# --------------------------------------------------------------------------- ONNX Runtime

def ort_session(path: str, threads: int):
    """An ORT CPU session set up for low-latency inference on ``threads`` threads.

    * ``intra_op_num_threads = threads``: the same count fastlstm and torch get.
      With 1 ORT runs the op on the calling thread (no pool at all).
    * ``inter_op_num_threads = 1`` and sequential execution: the graphs are a
      chain of LSTM nodes, so parallel node execution could only add overhead.
    * ``graph_optimization_level = ORT_ENABLE_ALL``: constant-folds the exporter's
      Slice/Concat of the weights at load, leaving one LSTM node per layer.
    * Spinning is left at ORT's default (on), which is what gives ORT its
      lowest per-call latency.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only; keeps the bench output readable
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


class OrtStepper:
    """Streams through a T=1 ONNX model by feeding its state outputs back as inputs.

    ``states`` names the state tensors: input ``{name}0``, output ``{name}n``,
    each ``(L, B, H)`` -- ``("h", "c")`` for an LSTM, ``("h",)`` for a GRU.
    Two ways, both measured because users meet both:

    * :meth:`step` - the plain ``session.run(None, feeds)``: every call converts
      the inputs and allocates fresh outputs (what most ORT code does).
    * :meth:`step_bound` - the fastest Python route ORT offers: two IOBindings
      prepared once, whose state buffers swap roles each step (A->B, then B->A),
      and a fixed input buffer; a step is one copy into that buffer plus
      ``run_with_iobinding``.  No allocation, no dict, no output conversion.
    """

    def __init__(self, session, cfg: Config, states=("h", "c"), x_shape=None):
        import onnxruntime as ort

        self.sess = session
        self.cfg = cfg
        self.names = tuple(states)
        shape_s = (cfg.L, cfg.B, cfg.H)
        self.state = {n: np.zeros(shape_s, np.float32) for n in self.names}
        out_dim = session.get_outputs()[0].shape[-1]
        # io-binding buffers: numpy arrays wrapped (not copied) by OrtValues
        self.x_buf = np.zeros(x_shape or (1, cfg.B, cfg.I), np.float32)
        self.y_buf = np.zeros((1, cfg.B, out_dim), np.float32)
        self._state = [np.zeros(shape_s, np.float32) for _ in range(2 * len(self.names))]  # A..., B...
        vals = [ort.OrtValue.ortvalue_from_numpy(a) for a in self._state]
        x_val = ort.OrtValue.ortvalue_from_numpy(self.x_buf)
        y_val = ort.OrtValue.ortvalue_from_numpy(self.y_buf)
        self._bindings = []
        k = len(self.names)
        for src, dst in ((0, k), (k, 0)):
            io = session.io_binding()
            io.bind_ortvalue_input("x", x_val)
            io.bind_ortvalue_output("y", y_val)
            for j, n in enumerate(self.names):
                io.bind_ortvalue_input(f"{n}0", vals[src + j])
                io.bind_ortvalue_output(f"{n}n", vals[dst + j])
            self._bindings.append(io)
        self._which = 0

    def reset(self):
        for a in list(self.state.values()) + self._state:
            a[...] = 0
        self._which = 0

    def step(self, x1: np.ndarray) -> np.ndarray:
        """``x1`` is ``(1, B, I)`` float32; returns ``y`` ``(1, B, O)``."""
        y, *new = self.sess.run(None, {"x": x1, **{f"{n}0": self.state[n] for n in self.names}})
        self.state = dict(zip(self.names, new))
        return y

    def step_bound(self, x1: np.ndarray) -> np.ndarray:
        """Same as :meth:`step` through the prepared IOBindings; returns a view of the output buffer."""
        self.x_buf[...] = x1
        return self.run_bound()

    def run_bound(self) -> np.ndarray:
        """One step on whatever the caller left in ``x_buf`` (e.g. a window shifted in place)."""
        self.sess.run_with_iobinding(self._bindings[self._which])
        self._which ^= 1
        return self.y_buf


# --------------------------------------------------------------------------- BLAS yardsticks

def sgemm_rowmajor(lib: str = "scipy"):
    """Return ``mm(A, B, C)``: ``C = A @ B`` for C-contiguous float32 arrays, no copies.

    ``lib="scipy"``: scipy's Fortran sgemm (``C.T = B.T @ A.T``: a C-contiguous
    matrix is the transpose of a Fortran one), i.e. the OpenBLAS scipy bundles.
    ``lib="numpy"``: ``np.matmul(..., out=C)``, i.e. the (often newer) OpenBLAS
    numpy bundles.  fastlstm calls whichever of the two it finds faster
    (fastlstm/_blas.py), so the yardsticks measure both and keep the better.
    """
    if lib == "numpy":
        matmul = np.matmul

        def mm_np(a, b, c):
            matmul(a, b, out=c)
            return c

        return mm_np
    from scipy.linalg.blas import sgemm

    def mm(a, b, c):
        sgemm(1.0, b.T, a.T, beta=0.0, c=c.T, overwrite_c=1)
        return c

    return mm


def sgemm_peak_case(cfg: Config, layer_input: Optional[int] = None, lib: str = "scipy"):
    """A callable doing one sgemm of shape ``(T*B, I+H) x (I+H, 4H)``: the peak a layer could reach.

    Returns ``(fn, flops)``.  All T steps' gate products fused into one
    well-shaped matmul is an upper bound: the recurrence forbids it, so a real
    LSTM reaches a fraction of it.
    """
    i = cfg.I if layer_input is None else layer_input
    rng = np.random.default_rng(3)
    a = rng.standard_normal((cfg.T * cfg.B, i + cfg.H), dtype=np.float32)
    b = rng.standard_normal((i + cfg.H, 4 * cfg.H), dtype=np.float32)
    c = np.empty((cfg.T * cfg.B, 4 * cfg.H), np.float32)
    mm = sgemm_rowmajor(lib)
    return (lambda: mm(a, b, c)), 2.0 * a.shape[0] * a.shape[1] * b.shape[1]


def blas_floor_case(cfg: Config, lib: str = "numpy"):
    """A callable doing only the BLAS work the engine's design needs for one ``predict``.

    Per layer: one sgemm ``(T*B, I_l) x (I_l, 4H)`` for the input projection,
    then T recurrent products ``(B, H) x (H, 4H)`` (a matrix-vector product
    when B = 1).  No activations.  Called from Python, so each of the T calls
    also pays ~1 us of wrapper overhead: at tiny sizes this overstates the floor.
    """
    rng = np.random.default_rng(4)
    H, T, B = cfg.H, cfg.T, cfg.B
    mm = sgemm_rowmajor(lib)
    parts = []
    for i in cfg.layer_inputs():
        x = rng.standard_normal((T * B, i), dtype=np.float32)
        wx = rng.standard_normal((i, 4 * H), dtype=np.float32) * 0.05
        wh = rng.standard_normal((H, 4 * H), dtype=np.float32) * 0.05
        z = np.empty((T * B, 4 * H), np.float32)
        h = rng.standard_normal((B, H), dtype=np.float32)
        zt = np.empty((B, 4 * H), np.float32)
        if B == 1 and lib == "numpy":
            h, zt = h[0], zt[0]  # (H,) @ (H, 4H): numpy calls sgemv
        parts.append((x, wx, wh, z, h, zt))

    def run():
        for x, wx, wh, z, h, zt in parts:
            mm(x, wx, z)
            for _ in range(T):
                mm(h, wh, zt)

    return run
