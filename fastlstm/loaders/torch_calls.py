"""PyTorch layers whose settings a state_dict does not hold: the 1-d pools (no weights at all) and an
nn.Conv1d's stride, padding, dilation and groups.  Built here from a live module's attributes, or from
their constructor call spelled in ``layers=`` for state_dict files.

A pool is spelled as its call in the model's ``__init__`` (case-insensitive, an ``nn.`` / ``torch.nn.``
in front is fine; PyTorch's defaults apply to what is left out)::

    "maxpool1d(kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False)"
    "avgpool1d(kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True)"
    "adaptivemaxpool1d(1)", "adaptiveavgpool1d(1)"  (a global pool: only output_size 1)
    "globalmaxpool1d", "globalavgpool1d"  (the same, for x.amax(dim=time) / x.mean(dim=time))

A Conv1d is its key prefix with the rest of its call, ``"conv(4, 16, 3, padding=1)"`` or just
``"conv(padding=1)"``: nn.Conv1d's signature (in_channels, out_channels, kernel_size, stride=1,
padding=0, dilation=1, groups=1, bias=True, padding_mode='zeros'); what the weight already says is
checked against it.  ``"conv()"`` takes every default; a bare ``"conv"`` is refused, since the
weights cannot say whether it was strided or padded.

Calls are parsed with :mod:`ast` (never evaluated); every argument must be a literal.  What
fastlstm's layers cannot reproduce (``ceil_mode=True``, a pool's ``dilation`` > 1, ``return_indices``,
``padding_mode`` other than zeros) is refused, as is what PyTorch itself refuses (a pool's padding
above half its window).
"""

from __future__ import annotations

import ast
import re

from ..layers import AvgPool1D, Conv1D, GlobalAvgPool1D, GlobalMaxPool1D, MaxPool1D

_REQUIRED = object()
#: Lower-case name -> (PyTorch class, its constructor's parameters with their defaults, in order).
_SIGNATURES = {
    "maxpool1d": (
        "MaxPool1d",
        (
            ("kernel_size", _REQUIRED),
            ("stride", None),
            ("padding", 0),
            ("dilation", 1),
            ("return_indices", False),
            ("ceil_mode", False),
        ),
    ),
    "avgpool1d": (
        "AvgPool1d",
        (
            ("kernel_size", _REQUIRED),
            ("stride", None),
            ("padding", 0),
            ("ceil_mode", False),
            ("count_include_pad", True),
        ),
    ),
    "adaptivemaxpool1d": ("AdaptiveMaxPool1d", (("output_size", _REQUIRED), ("return_indices", False))),
    "adaptiveavgpool1d": ("AdaptiveAvgPool1d", (("output_size", _REQUIRED),)),
    "globalmaxpool1d": ("GlobalMaxPool1D", ()),
    "globalavgpool1d": ("GlobalAvgPool1D", ()),
}
#: The accepted forms, for error messages.
POOL_FORMS = (
    "'maxpool1d(kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False)', "
    "'avgpool1d(kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True)', "
    "'adaptivemaxpool1d(1)', 'adaptiveavgpool1d(1)', 'globalmaxpool1d', 'globalavgpool1d' "
    "(PyTorch's defaults where left out)"
)
#: nn.Conv1d's parameters (without device and dtype), all optional here: the weight says the first three.
CONV_SIGNATURE = (
    ("in_channels", None),
    ("out_channels", None),
    ("kernel_size", None),
    ("stride", 1),
    ("padding", 0),
    ("dilation", 1),
    ("groups", 1),
    ("bias", None),
    ("padding_mode", "zeros"),
)
CONV_FORM = "'PREFIX(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, ...)'"
_CALL = re.compile(r"^\s*(?:(?:torch\.)?nn\.)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<call>\(.*\))?\s*$", re.S)


def _single(value):
    """PyTorch's ``_single``: an int or a 1-tuple of one (``kernel_size=(3,)``)."""
    return value[0] if isinstance(value, (tuple, list)) and len(value) == 1 else value


def _int(where, key, value, low):
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{where}: {key}={value!r}; expected an int >= {low}")
    return value


def _flag(where, key, value):
    if not isinstance(value, bool):
        raise ValueError(f"{where}: {key}={value!r}; expected True or False")
    return value


def pool_layer(cls, options, where):
    """The fastlstm layer for PyTorch pool ``cls`` ('MaxPool1d', 'AvgPool1d', 'AdaptiveMaxPool1d',
    'AdaptiveAvgPool1d', 'GlobalMaxPool1D', 'GlobalAvgPool1D') with constructor ``options``
    (every parameter of its signature, defaults filled in).  ValueError naming ``where`` for what
    fastlstm cannot reproduce exactly."""
    o = {k: _single(v) for k, v in options.items()}
    if cls.startswith("Global"):
        return GlobalMaxPool1D() if "Max" in cls else GlobalAvgPool1D()
    if cls.startswith("Adaptive"):
        if _flag(where, "return_indices", o.get("return_indices", False)):
            raise ValueError(f"{where}: return_indices=True returns (values, indices); not supported")
        if o["output_size"] != 1:
            raise ValueError(
                f"{where}: adaptive pooling to output_size={o['output_size']!r} steps is not supported "
                "(only a global pool, output_size=1)"
            )
        return GlobalMaxPool1D() if "Max" in cls else GlobalAvgPool1D()
    size = _int(where, "kernel_size", o["kernel_size"], 1)
    stride = size if o["stride"] is None else _int(where, "stride", o["stride"], 1)
    pad = _int(where, "padding", o["padding"], 0)
    if _flag(where, "ceil_mode", o["ceil_mode"]):
        raise ValueError(
            f"{where}: ceil_mode=True (a last, partial window) is not supported; fastlstm's pools use ceil_mode=False"
        )
    if pad > size // 2:
        raise ValueError(f"{where}: padding={pad} is more than half of kernel_size={size}, which PyTorch refuses")
    if cls == "MaxPool1d":
        if _int(where, "dilation", o["dilation"], 1) != 1:
            raise ValueError(f"{where}: dilation={o['dilation']} is not supported (fastlstm's MaxPool1D has none)")
        if _flag(where, "return_indices", o["return_indices"]):
            raise ValueError(f"{where}: return_indices=True returns (values, indices); not supported")
        return MaxPool1D(size, stride, (pad, pad))
    include_pad = _flag(where, "count_include_pad", o["count_include_pad"])
    return AvgPool1D(size, stride, (pad, pad), count_include_pad=include_pad)


def module_pool_layer(module, cls, where):
    """A live ``nn.MaxPool1d`` / ``nn.AvgPool1d`` (class name ``cls``) as a fastlstm layer."""
    return pool_layer(cls, {key: getattr(module, key) for key, _ in _SIGNATURES[cls.lower()][1]}, where)


def conv1d_layer(weight, bias, options, where, extra=(0, 0)):
    """An nn.Conv1d as a :class:`Conv1D` from its weight, bias and ``options`` (the settings of
    :data:`CONV_SIGNATURE` after in/out channels and kernel_size), with ``extra`` zero steps padded
    before/after it in ``forward()``."""
    o = {k: _single(v) for k, v in options.items()}
    if o["padding_mode"] != "zeros":
        raise ValueError(f"{where}: padding_mode={o['padding_mode']!r} is not supported (only zero padding)")
    padding = o["padding"]
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"{where}: padding={padding!r}; expected 'same', 'valid' or an int >= 0")
    else:
        padding = (_int(where, "padding", padding, 0),) * 2
    if extra != (0, 0):
        if padding == "same":
            raise ValueError(f"{where}: F.pad before a Conv1d(padding='same') is not supported")
        padding = (0, 0) if padding == "valid" else padding
        padding = (padding[0] + extra[0], padding[1] + extra[1])
    settings = {k: _int(where, k, o[k], 1) for k in ("stride", "dilation", "groups")}
    return Conv1D(weight, bias, padding=padding, **settings)


def conv1d_from_call(weight, bias, settings, where):
    """:func:`conv1d_layer` for a Conv1d spelled in ``layers=``: ``settings`` has every parameter of
    :data:`CONV_SIGNATURE`; the channels, kernel_size and bias it gives must be the weights' own."""
    o = {k: _single(v) for k, v in settings.items()}
    groups = _int(where, "groups", o["groups"], 1)
    said = {
        "in_channels": weight.shape[1] * groups,
        "out_channels": weight.shape[0],
        "kernel_size": weight.shape[2],
        "bias": bias is not None,
    }
    for key, value in said.items():
        if o[key] is not None and (o[key] != value or type(o[key]) is not type(value)):
            raise ValueError(f"{where}: {key}={o[key]!r}, but the weights say {value!r}")
    return conv1d_layer(weight, bias, {k: v for k, v in settings.items() if k not in said}, where)


def prefix_call(text, is_prefix, where):
    """``(prefix, options)`` when ``text`` is a key prefix followed by its constructor's arguments
    (``"conv(padding=1)"``), else None; ValueError naming ``where`` for bad arguments."""
    m = re.match(r"^\s*(?P<prefix>[\w.]+?)\s*(?P<call>\(.*\))\s*$", text, re.S)
    if m is None or not is_prefix(m["prefix"]):
        return None
    return m["prefix"], _bind(text, m["call"], "nn.Conv1d", CONV_SIGNATURE, where, CONV_FORM)


def _bind(text, call, cls, signature, where, forms):
    """The call's arguments by parameter name, checked against ``signature`` (defaults filled in)."""
    args, kwargs = _call_arguments(text, call, where, forms)
    if len(args) > len(signature):
        raise _bad_spelling(where, text, f"has {len(args)} positional arguments; {cls} takes {len(signature)}", forms)
    options = {key: value for (key, _), value in zip(signature, args)}
    for key, value in kwargs:
        if key not in dict(signature):
            raise _bad_spelling(where, text, f"names {key!r}, which {cls} does not take", forms)
        if key in options:
            raise _bad_spelling(where, text, f"gives {key!r} twice", forms)
        options[key] = value
    for key, default in signature:
        if key not in options:
            if default is _REQUIRED:
                raise _bad_spelling(where, text, f"is missing {key!r}", forms)
            options[key] = default
    return options


def _bad_spelling(where, text, why, forms=POOL_FORMS):
    return ValueError(f"{where}: {text!r} {why}; accepted forms: {forms}")


def parse_pool(text, where):
    """The pool layer ``text`` spells in ``layers=``, or None when it is not a pool's name.

    Anything with parentheses is a call, so (once :func:`prefix_call` has taken a Conv1d's prefix with its
    settings) a call that is not a pool's, or a pool's with bad arguments, raises ValueError naming
    ``where`` and the accepted forms."""
    m = _CALL.match(text)
    if m is None:
        if "(" in text:
            raise _bad_spelling(where, text, "is not a pool call or a Conv1d's key prefix with its settings")
        return None
    name, call = m["name"].lower(), m["call"]
    if name not in _SIGNATURES:
        if call is None:
            return None
        raise _bad_spelling(where, text, f"is neither a pool nor a Conv1d's key prefix with its settings ({CONV_FORM})")
    cls, signature = _SIGNATURES[name]
    options = _bind(text, call or "()", cls, signature, where, POOL_FORMS)
    return pool_layer(cls, options, f"{where} ({text!r})")


def _call_arguments(text, call, where, forms):
    """Positional and keyword arguments of ``(...)``, each a Python literal (never evaluated as code)."""
    try:
        node = ast.parse("f" + call, mode="eval").body
        if (
            not isinstance(node, ast.Call)
            or not isinstance(node.func, ast.Name)
            or any(isinstance(a, ast.Starred) for a in node.args)
        ):
            raise ValueError("not a plain call")
        if any(k.arg is None for k in node.keywords):
            raise ValueError("**kwargs")
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = [(k.arg, ast.literal_eval(k.value)) for k in node.keywords]
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as exc:
        raise _bad_spelling(
            where, text, f"is not a call with literal arguments ({type(exc).__name__})", forms
        ) from None
    return args, kwargs
