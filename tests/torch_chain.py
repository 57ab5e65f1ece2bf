"""A chain of live torch modules and the same chain as fastlstm layers, for the layer parity tests.

``TorchChain(parts)`` runs ``parts`` in order on a batch-first (B, T, F) tensor,
as a PyTorch model's ``forward`` would (convs and pools on the channels-first
transpose, recurrent modules keeping their output sequence); ``fastlstm_layers``
gives each part's weights to fastlstm's classes directly (no loader involved).
Markers stand for what is not a module in PyTorch: ``LAST`` (``out[:, -1]``),
``("repeat", n)``, ``("causal", conv)`` (left-pad the sequence, then the conv),
``GLOBAL_MAX``/``GLOBAL_AVG`` (``x.max(1)``, ``x.mean(1)``).
"""

import torch
from torch import nn

import fastlstm
from fastlstm.layers import (
    Activation,
    AvgPool1D,
    BatchNorm,
    Conv1D,
    Dense,
    Embedding,
    GlobalAvgPool1D,
    GlobalMaxPool1D,
    GRULayer,
    GRUWeights,
    LastStep,
    LayerNorm,
    LSTMLayer,
    LSTMWeights,
    MaxPool1D,
    RepeatVector,
    RNNLayer,
    RNNWeights,
)

LAST, GLOBAL_MAX, GLOBAL_AVG = "last", "global_max", "global_avg"

#: fastlstm activation name -> a torch module of it.
TORCH_ACTIVATIONS = {
    "linear": lambda C: nn.Identity(),
    "relu": lambda C: nn.ReLU(),
    "sigmoid": lambda C: nn.Sigmoid(),
    "tanh": lambda C: nn.Tanh(),
    "softmax": lambda C: nn.Softmax(dim=-1),
    "elu": lambda C: nn.ELU(alpha=0.7),
    "selu": lambda C: nn.SELU(),
    "leaky_relu": lambda C: nn.LeakyReLU(0.15),
    "gelu": lambda C: nn.GELU(),
    "gelu_tanh": lambda C: nn.GELU(approximate="tanh"),
    "silu": lambda C: nn.SiLU(),
    "softplus": lambda C: nn.Softplus(),
    "softsign": lambda C: nn.Softsign(),
    "hard_sigmoid": lambda C: nn.Hardsigmoid(),
    "prelu": lambda C: nn.PReLU(C, init=0.3),
}


def _np(t):
    return t.detach().cpu().numpy()


class TorchChain(nn.Module):
    def __init__(self, parts):
        super().__init__()
        self.parts = list(parts)
        self.mods = nn.ModuleList(
            [
                p[1] if isinstance(p, tuple) and p[0] == "causal" else p
                for p in self.parts
                if isinstance(p, nn.Module) or (isinstance(p, tuple) and p[0] == "causal")
            ]
        )

    def forward(self, x):
        for p in self.parts:
            if p == LAST:
                x = x[:, -1]
            elif p == GLOBAL_MAX:
                x = x.max(dim=1).values
            elif p == GLOBAL_AVG:
                x = x.mean(dim=1)
            elif isinstance(p, tuple) and p[0] == "repeat":
                x = x.unsqueeze(1).repeat(1, p[1], 1)
            elif isinstance(p, tuple) and p[0] == "causal":
                conv = p[1]
                pad = conv.dilation[0] * (conv.kernel_size[0] - 1)
                x = conv(nn.functional.pad(x.transpose(1, 2), (pad, 0))).transpose(1, 2)
            elif isinstance(p, (nn.LSTM, nn.GRU, nn.RNN)):
                x = p(x)[0]
            elif isinstance(p, (nn.Conv1d, nn.MaxPool1d, nn.AvgPool1d, nn.BatchNorm1d, nn.PReLU)):  # channels first
                x = p(x.transpose(1, 2)).transpose(1, 2) if x.dim() == 3 else p(x)
            else:
                x = p(x)
        return x


def _recurrent(m):
    cls, wcls = {nn.LSTM: (LSTMLayer, LSTMWeights), nn.GRU: (GRULayer, GRUWeights), nn.RNN: (RNNLayer, RNNWeights)}[
        type(m)
    ]
    kw = {"activation": m.nonlinearity} if isinstance(m, nn.RNN) else {}
    out = []
    for layer in range(m.num_layers):
        dirs = []
        for sfx in [""] + (["_reverse"] if m.bidirectional else []):
            names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") + (("weight_hr",) if wcls is LSTMWeights else ())
            dirs.append(
                wcls(
                    *(
                        _np(getattr(m, f"{n}_l{layer}{sfx}")) if hasattr(m, f"{n}_l{layer}{sfx}") else None
                        for n in names
                    )
                )
            )
        out.append(cls(dirs, **kw))
    return out


def _activation(m):
    for name, make in TORCH_ACTIVATIONS.items():
        if (
            type(make(1)) is type(m)
            and (name != "gelu" or m.approximate == "none")
            and (name != "gelu_tanh" or m.approximate == "tanh")
        ):
            if name == "elu":
                return Activation(name, alpha=m.alpha)
            if name == "leaky_relu":
                return Activation(name, alpha=m.negative_slope)
            if name == "prelu":
                return Activation(name, weight=_np(m.weight))
            return Activation(name)
    raise TypeError(type(m))


def _conv(m, padding):
    return Conv1D(
        _np(m.weight),
        None if m.bias is None else _np(m.bias),
        stride=m.stride[0],
        dilation=m.dilation[0],
        groups=m.groups,
        padding=padding,
    )


def fastlstm_layers(parts):
    out = []
    for p in parts:
        if p == LAST:
            out.append(LastStep())
        elif p == GLOBAL_MAX:
            out.append(GlobalMaxPool1D())
        elif p == GLOBAL_AVG:
            out.append(GlobalAvgPool1D())
        elif isinstance(p, tuple) and p[0] == "repeat":
            out.append(RepeatVector(p[1]))
        elif isinstance(p, tuple) and p[0] == "causal":
            out.append(_conv(p[1], "causal"))
        elif isinstance(p, (nn.LSTM, nn.GRU, nn.RNN)):
            out.extend(_recurrent(p))
        elif isinstance(p, nn.Linear):
            out.append(Dense(_np(p.weight), None if p.bias is None else _np(p.bias)))
        elif isinstance(p, nn.Conv1d):
            out.append(_conv(p, p.padding if isinstance(p.padding, str) else p.padding[0]))
        elif isinstance(p, nn.MaxPool1d):
            out.append(MaxPool1D(p.kernel_size, p.stride, p.padding))
        elif isinstance(p, nn.AvgPool1d):
            out.append(AvgPool1D(p.kernel_size[0], p.stride[0], p.padding[0], count_include_pad=p.count_include_pad))
        elif isinstance(p, nn.BatchNorm1d):
            out.append(BatchNorm(_np(p.running_mean), _np(p.running_var), _np(p.weight), _np(p.bias), p.eps))
        elif isinstance(p, nn.LayerNorm):
            out.append(LayerNorm(p.normalized_shape[0], _np(p.weight), _np(p.bias), p.eps))
        elif isinstance(p, nn.Embedding):
            out.append(Embedding(_np(p.weight)))
        else:
            out.append(_activation(p))
    return out


def randomize_norms(parts, seed=0):
    """Give BatchNorm1d layers non-trivial running statistics and affine weights (eval mode)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in parts:
            if isinstance(p, (nn.BatchNorm1d, nn.LayerNorm)):
                p.weight.copy_(torch.rand(p.weight.shape, generator=g) + 0.5)
                p.bias.copy_(torch.randn(p.bias.shape, generator=g) * 0.3)
            if isinstance(p, nn.BatchNorm1d):
                p.running_mean.copy_(torch.randn(p.running_mean.shape, generator=g) * 0.3)
                p.running_var.copy_(torch.rand(p.running_var.shape, generator=g) + 0.5)
    return parts


def build(parts, seed=0):
    """(torch module in eval mode, fastlstm.Model) of the same chain."""
    torch.manual_seed(seed)
    ref = TorchChain(randomize_norms(parts, seed)).eval()
    return ref, fastlstm.Model(fastlstm_layers(parts))


def torch_run(ref, x):
    """The torch chain on x (T, B, F) (or (T, B) token ids) -> numpy, time-major when the output
    has a time axis."""
    with torch.no_grad():
        y = _np(ref(torch.as_tensor(x).transpose(0, 1)))
    return y.transpose(1, 0, 2) if y.ndim == 3 else y
