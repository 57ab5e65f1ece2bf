"""PyTorch's 1-d pools as fastlstm layers: from a live module's settings, and from their spelling in
``layers=`` for state_dict files.

A pool has no weights, so a state_dict holds no trace of it; ``layers=`` places it by its constructor
call, written as in the model's ``__init__`` (case-insensitive, an ``nn.`` / ``torch.nn.`` in front is
fine; PyTorch's defaults apply to what is left out)::

    "maxpool1d(kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False)"
    "avgpool1d(kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True)"
    "adaptivemaxpool1d(1)", "adaptiveavgpool1d(1)"  (a global pool: only output_size 1)
    "globalmaxpool1d", "globalavgpool1d"  (the same, for x.amax(dim=time) / x.mean(dim=time))

The call is parsed with :mod:`ast` (never evaluated); every argument must be a literal.  What
fastlstm's pool layers cannot reproduce (``ceil_mode=True``, ``dilation`` > 1, ``return_indices``) is
refused, as is what PyTorch itself refuses (padding above half the window).
"""

from __future__ import annotations

import ast
import re

from ..layers import AvgPool1D, GlobalAvgPool1D, GlobalMaxPool1D, MaxPool1D

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


def _bad_spelling(where, text, why):
    return ValueError(f"{where}: {text!r} {why}; accepted forms: {POOL_FORMS}")


def parse_pool(text, where):
    """The pool layer ``text`` spells in ``layers=``, or None when it is not a pool's name.

    Anything with parentheses is a call (no key prefix has them), so a call that is not a pool's, or a
    pool's with bad arguments, raises ValueError naming ``where`` and the accepted forms."""
    m = _CALL.match(text)
    if m is None:
        if "(" in text:
            raise _bad_spelling(where, text, "is not a pool call fastlstm reads")
        return None
    name, call = m["name"].lower(), m["call"]
    if name not in _SIGNATURES:
        if call is None:
            return None
        raise _bad_spelling(where, text, "is not a pool fastlstm reads")
    cls, signature = _SIGNATURES[name]
    args, kwargs = _call_arguments(text, call or "()", where)
    if len(args) > len(signature):
        raise _bad_spelling(where, text, f"has {len(args)} positional arguments; {cls} takes {len(signature)}")
    options = {key: value for (key, _), value in zip(signature, args)}
    for key, value in kwargs:
        if key not in dict(signature):
            raise _bad_spelling(where, text, f"names {key!r}, which {cls} does not take")
        if key in options:
            raise _bad_spelling(where, text, f"gives {key!r} twice")
        options[key] = value
    for key, default in signature:
        if key not in options:
            if default is _REQUIRED:
                raise _bad_spelling(where, text, f"is missing {key!r}")
            options[key] = default
    return pool_layer(cls, options, f"{where} ({text!r})")


def _call_arguments(text, call, where):
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
        raise _bad_spelling(where, text, f"is not a call with literal arguments ({type(exc).__name__})") from None
    return args, kwargs
