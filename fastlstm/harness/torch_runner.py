"""PyTorch: the model rebuilt as ``nn.LSTM`` + ``nn.Linear`` from its own weights, run eagerly."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from ._common import Stepper, lstm_stack_view, require_standard_cells


def _uniform(model):
    """Whether the stack maps onto one multi-layer ``nn.LSTM`` (what a torch user would have written)."""
    first = model.layers[0]
    return all(
        layer.hidden_size == first.hidden_size
        and layer.proj_size == first.proj_size
        and len(layer.directions) == len(first.directions)
        and layer.merge_mode == "concat"
        and not layer.go_backwards
        for layer in model.layers
    )


def torch_module(model):
    """An eval-mode ``nn.Module`` computing ``model``: ``forward(x (T, B, I), state=None) -> (y, state)``.

    ``y`` is every step's output ``(T, B, O)`` (the caller takes the last step when
    the model returns only that); ``state`` is a list of ``(h, c)`` pairs, one per
    ``nn.LSTM`` inside, to carry between calls.  Raises :class:`Unsupported` for
    cell activations ``nn.LSTM`` does not have.
    """
    model = require_standard_cells(model, "torch.nn")
    import torch
    from torch import nn

    def tensor(a):  # a copy: the model's arrays are read-only, which torch warns about
        return torch.from_numpy(np.array(a, dtype=np.float32))

    def lstm_for(layers):
        first = layers[0]
        m = nn.LSTM(
            first.input_size,
            first.hidden_size,
            num_layers=len(layers),
            bias=True,
            bidirectional=first.bidirectional,
            proj_size=first.proj_size,
        )
        with torch.no_grad():
            for k, layer in enumerate(layers):
                for d, w in enumerate(layer.directions):
                    sfx = f"_l{k}" + ("_reverse" if d else "")
                    getattr(m, "weight_ih" + sfx).copy_(tensor(w.weight_ih))
                    getattr(m, "weight_hh" + sfx).copy_(tensor(w.weight_hh))
                    for key in ("bias_ih", "bias_hh"):
                        b = getattr(w, key)
                        getattr(m, key + sfx).copy_(torch.zeros(4 * w.hidden_size) if b is None else tensor(b))
                    if w.weight_hr is not None:
                        getattr(m, "weight_hr" + sfx).copy_(tensor(w.weight_hr))
        return m

    groups = [list(model.layers)] if _uniform(model) else [[layer] for layer in model.layers]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstms = nn.ModuleList(lstm_for(g) for g in groups)
            self.merges = [g[-1].merge_mode if g[-1].bidirectional else None for g in groups]
            self.backwards = [g[0].go_backwards for g in groups]
            head = model.head
            self.head = None
            if head is not None:
                self.head = nn.Linear(head.input_size, head.output_size, bias=head.bias is not None)
                with torch.no_grad():
                    self.head.weight.copy_(tensor(head.weight))
                    if head.bias is not None:
                        self.head.bias.copy_(tensor(head.bias))
            act = None if head is None else head.activation
            self.act = {
                None: None,
                "linear": None,
                "sigmoid": nn.Sigmoid(),
                "tanh": nn.Tanh(),
                "relu": nn.ReLU(),
                "softmax": nn.Softmax(dim=-1),
            }[act]

        def forward(self, x, state=None):
            new_state = []
            for k, lstm in enumerate(self.lstms):
                if self.backwards[k]:  # Keras go_backwards: read reversed, outputs stay in that order
                    x = torch.flip(x, (0,))
                x, hc = lstm(x) if state is None else lstm(x, state[k])
                new_state.append(hc)
                merge = self.merges[k]
                if merge is not None and merge != "concat":
                    a, b = x.chunk(2, dim=-1)
                    x = {"sum": a + b, "mul": a * b, "ave": (a + b) * 0.5}[merge]
            if self.head is not None:
                x = self.head(x)
                if self.act is not None:
                    x = self.act(x)
            return x, new_state

    net = Net().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def last_step(model, net, x):
    """Keras' last step of the whole network (``return_sequences=False``), from a sequence run."""
    import torch

    last = model.layers[-1]
    if not last.bidirectional:
        return net(x)[0][-1]
    # A bidirectional last layer: forward half at T-1, backward half at 0.  Rerun without
    # the merge and head to get both halves, then merge and apply the head here.
    merge, head, act = net.merges[-1], net.head, net.act
    net.merges[-1], net.head = "concat", None
    try:
        seq = net(x)[0]
    finally:
        net.merges[-1], net.head = merge, head
    a, b = seq[-1].chunk(2, dim=-1)[0], seq[0].chunk(2, dim=-1)[1]
    y = {"concat": torch.cat([a, b], -1), "sum": a + b, "mul": a * b, "ave": (a + b) * 0.5}[merge]
    if head is not None:
        y = head(y)
        y = act(y) if act is not None else y
    return y


class TorchRunner:
    """PyTorch eager mode, inside ``torch.inference_mode()`` (entered once per timed sample).

    A reduced-precision variant (:mod:`.torch_lowp_runner`) overrides :meth:`convert` (what is
    done to each module once) and :meth:`mode` (the context every call runs in)."""

    name = "torch"

    def __init__(self, model):
        import torch

        self.torch, self.model = torch, lstm_stack_view(model, "torch.nn")
        self.net = self.convert(torch_module(self.model))

    def convert(self, module):
        """``module`` (the rebuilt network, or one step cell) as this runner runs it: unchanged."""
        return module

    def mode(self):
        """The context a call runs in, entered once per predict, timed sample or ``outputs``."""
        return self.torch.inference_mode()

    def _forward_seq(self, xt):
        if self.model.return_sequences:
            return self.net(xt)[0]
        return last_step(self.model, self.net, xt)

    def predict(self, x):
        with self.mode():  # .float(): a bfloat16 variant's outputs as numpy can hold them (else a no-op)
            return self._forward_seq(self.torch.from_numpy(x)).float().numpy()

    def seq_loop(self, x):
        xt = self.torch.from_numpy(x)

        def run(n):
            with self.mode():
                for _ in range(n):
                    self._forward_seq(xt)

        return run

    def steppers(self, xs):
        """Both ways to step in PyTorch, by name; ``nn.LSTM`` on T=1 is not always the faster
        (its oneDNN path costs more per call on some CPUs), so the benchmark times both."""
        out: Dict[str, Stepper] = {"nn.LSTM": TorchStepper(self, xs)}
        if not any(layer.proj_size for layer in self.model.layers):
            out["nn.LSTMCell"] = TorchCellStepper(self, xs)
        return out


class _TorchMixin(Stepper):
    """Steps inside the runner's :meth:`TorchRunner.mode` (``torch.inference_mode()``), entered
    once per call of outputs/run, as a streaming user would hold it around the loop: it is not
    charged per step."""

    torch: Any
    mode: Any

    def outputs(self, steps):
        with self.mode():
            return super().outputs(steps)

    def run(self, n):
        with self.mode():
            super().run(n)


class TorchStepper(_TorchMixin):
    """The rebuilt module on a T=1 slice, the ``(h, c)`` pairs carried by the caller."""

    def __init__(self, runner, xs):
        self.torch, self.net, self.mode, self.batch = runner.torch, runner.net, runner.mode, xs.shape[1]
        xt = self.torch.from_numpy(xs)
        self.inputs = [xt[t : t + 1] for t in range(xs.shape[0])]  # (1, B, I) views
        self.state = None

    def reset(self):
        self.state = None

    def step(self, x):
        y, self.state = self.net(x, self.state)
        return y[0]


class TorchCellStepper(_TorchMixin):
    """One ``nn.LSTMCell`` per layer (same weights) plus the head: the other usual way to step."""

    def __init__(self, runner, xs):
        torch, nn = runner.torch, runner.torch.nn
        self.torch, self.net, self.mode, self.batch = torch, runner.net, runner.mode, xs.shape[1]
        self.cells = []
        for layer in runner.model.layers:
            w = layer.directions[0]
            cell = nn.LSTMCell(w.input_size, w.hidden_size)
            with torch.no_grad():
                for key in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    v = getattr(w, key)
                    getattr(cell, key).copy_(
                        torch.zeros(4 * w.hidden_size) if v is None else torch.from_numpy(np.array(v))
                    )
            self.cells.append(runner.convert(cell.eval().requires_grad_(False)))
        self.inputs = [torch.from_numpy(xs)[t] for t in range(xs.shape[0])]  # (B, I) views
        B = xs.shape[1]
        self.zero = [(torch.zeros(B, c.hidden_size), torch.zeros(B, c.hidden_size)) for c in self.cells]
        self.state = list(self.zero)

    def reset(self):
        self.state = list(self.zero)

    def step(self, x):
        state = self.state
        for k, cell in enumerate(self.cells):
            state[k] = cell(x, state[k])
            x = state[k][0]
        if self.net.head is not None:
            x = self.net.head(x)
            if self.net.act is not None:
                x = self.net.act(x)
        return x
