"""Read live PyTorch objects: ``nn.LSTM``, ``nn.LSTMCell``, a module holding one of them plus an
``nn.Linear`` head, or a state_dict-like mapping.

Modules are inspected by their registered submodules, which is how we learn what a
state_dict cannot say: an activation module (``nn.Sigmoid``, ``nn.Tanh``, ``nn.ReLU``,
``nn.Softmax(dim=-1)``) after the Linear of an ``nn.Sequential`` becomes the head's
activation; in a custom module it is assumed to be, with a :class:`LoadWarning`, because
registration order says nothing about what ``forward`` does.  Built-in modules that would
change the outputs and that fastlstm cannot run (``nn.GRU``, ``nn.LayerNorm``, ``nn.GELU``,
...) are refused by name.  ``forward()`` itself is invisible, so a custom module's extra
logic (e.g. taking ``out[:, -1]``) must be stated with the overrides
``return_sequences=False`` / ``head_activation=...``.

torch is never imported: a module is recognised by its class name in ``torch.nn``.
"""

from __future__ import annotations

import numpy as np

from ._common import warn
from .torch_state import check_overrides, spec_from_state_dict

_IGNORED = {"Dropout", "Dropout1d", "Dropout2d", "AlphaDropout", "Identity", "Sequential", "ModuleList",
            "ModuleDict"}
_HEAD_ACTS = {"Sigmoid": "sigmoid", "Tanh": "tanh", "ReLU": "relu"}


def _torch_class(module):
    """The class name if ``module`` is a built-in ``torch.nn`` module, else None."""
    cls = type(module)
    return cls.__name__ if cls.__module__.startswith("torch.nn.") else None


def is_torch_module(obj) -> bool:
    return any(c.__module__ == "torch.nn.modules.module" and c.__name__ == "Module" for c in type(obj).__mro__)


def tensor_to_numpy(value):
    """torch tensor -> NumPy, without importing torch (bfloat16 has no NumPy dtype: widen it)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        if str(getattr(value, "dtype", "")) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _activation_of(name, module, where):
    if name in _HEAD_ACTS:
        return _HEAD_ACTS[name]
    if name == "Softmax":
        dim = getattr(module, "dim", None)
        if dim in (-1, 2):
            return "softmax"
        raise ValueError(f"{where}: nn.Softmax(dim={dim}) is not over the feature axis; only dim=-1 is supported")
    return None


def _is_ordered(module):
    """True when registration order is execution order: nn.Sequential all the way down."""
    return all(_torch_class(m) in ("Sequential", "LSTM", "LSTMCell") or not any(True for _ in m.children())
               for m in module.modules())


def _inspect(module, source):
    """Walk the leaf modules, refuse what fastlstm cannot run, and return ``(activation, ordered)``.

    ``activation`` is the head activation found from an activation module (or None);
    ``ordered`` says whether module order is execution order (nn.Sequential).  In a custom
    module, order of registration says nothing about ``forward``, so only an nn.Sequential
    may be refused for putting the Linear first; elsewhere the shapes decide.
    """
    ordered = _is_ordered(module)
    recurrent, linear, act = None, None, None
    for path, sub in module.named_modules():
        if any(True for _ in sub.children()):
            continue  # a container: its leaves are visited on their own
        name = _torch_class(sub)
        where = f"{source}: module {path or '<root>'!r} ({type(sub).__name__})"
        if name in ("LSTM", "LSTMCell"):
            if recurrent is not None:
                raise ValueError(f"{where}: a second recurrent module besides {recurrent!r}; fastlstm loads one "
                                 "nn.LSTM (use num_layers for a stack)")
            if ordered and linear is not None:
                raise ValueError(f"{where}: comes after the Linear {linear!r}; only a head after the LSTM is "
                                 "supported")
            recurrent = path
        elif name in ("GRU", "RNN", "GRUCell", "RNNCell"):
            raise ValueError(f"{where}: fastlstm runs LSTMs only")
        elif name == "Linear":
            if linear is not None:
                raise ValueError(f"{where}: a second Linear besides {linear!r}; fastlstm supports one dense head")
            linear = path
        elif name in _IGNORED:
            continue
        elif name is not None and (_activation_of(name, sub, where) is not None):
            if act is not None or (ordered and linear is None):
                raise ValueError(f"{where}: an activation is supported only once, right after the Linear head")
            act = _activation_of(name, sub, where)
        elif name is not None:
            raise ValueError(f"{where}: torch.nn.{name} is not supported by fastlstm")
        elif any(True for _ in sub.parameters(recurse=False)) or any(True for _ in sub.buffers(recurse=False)):
            raise ValueError(f"{where}: a custom module with its own weights is not supported")
        # else: a custom parameter-free helper (e.g. one that picks the LSTM's output tensor).
    if recurrent is None:
        raise ValueError(f"{source}: no nn.LSTM or nn.LSTMCell inside the module")
    if act is not None and linear is None:
        raise ValueError(f"{source}: an activation module without a Linear head cannot be represented")
    return act, ordered


def spec_from_torch_object(obj, **overrides):
    check_overrides(overrides)
    if is_torch_module(obj):
        source = f"torch module {type(obj).__name__}"
        name = _torch_class(obj)
        if name in ("GRU", "RNN", "GRUCell", "RNNCell"):
            raise ValueError(f"{source}: fastlstm runs LSTMs only (got nn.{name})")
        detected, ordered = _inspect(obj, source)
        state = {k: tensor_to_numpy(v) for k, v in obj.state_dict().items()}
        act = overrides.get("head_activation")
        if act is None and detected is not None:
            act = detected
            if not ordered:
                warn(f"{source}: assuming the registered activation module ({detected}) is applied to the Linear "
                     "head's output (forward() is not visible); pass head_activation=... to say so explicitly")
        spec = spec_from_state_dict(state, source, head_activation=act,
                                    return_sequences=overrides.get("return_sequences"))
        if name == "LSTM":
            _cross_check(obj, spec, source)
        return spec
    if hasattr(obj, "keys") and hasattr(obj, "__getitem__"):
        state = {k: tensor_to_numpy(obj[k]) if hasattr(obj[k], "shape") else obj[k] for k in obj.keys()}
        return spec_from_state_dict(state, "state_dict", head_activation=overrides.get("head_activation"),
                                    return_sequences=overrides.get("return_sequences"))
    raise TypeError(f"obj: expected an nn.LSTM, nn.LSTMCell, nn.Module or a state_dict mapping, "
                    f"got {type(obj).__name__}")


def _cross_check(lstm, spec, source):
    """The keys told us the structure; make sure it agrees with the module's own settings."""
    layers = spec.layers
    got = (len(layers), layers[0].bidirectional, layers[0].proj_size, layers[0].hidden_size)
    want = (lstm.num_layers, bool(lstm.bidirectional), int(lstm.proj_size), lstm.hidden_size)
    if got != want:
        raise ValueError(f"{source}: weights describe (layers, bidirectional, proj_size, hidden) = {got} but the "
                         f"module says {want}")
