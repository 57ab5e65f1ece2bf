"""Reduced-precision weights: bf16 rounding, int8 quantization, and their packing for
include/fastlstm_lowp.h.

Only the recurrent layers' stacked gate weights ``[W_x; W_h]`` are reduced; the x
part and the h part are packed (and, for int8, scaled) separately, because each is
multiplied by its own activations, which the kernels convert per row and per step.
The exact arithmetic is documented in docs/precision.md and in the header.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from . import _kernels as K

#: The precisions a model can run in, default first.
PRECISIONS = ("fp32", "bf16", "int8")

#: Codes of include/fastlstm_lowp.h (enum fl_precision), by name.
CODES = {name: K.fl_precision["FL_PREC_" + name.upper()] for name in PRECISIONS}

_PANEL = 16
_GROUP = {"bf16": 2, "int8": 4}  # k per 32-bit word


def check_precision(precision) -> str:
    """``precision`` itself, or TypeError/ValueError naming the argument."""
    if not isinstance(precision, str):
        raise TypeError(f"precision: expected a str, one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    return precision


def bf16_bits(a) -> np.ndarray:
    """The bfloat16 bit patterns (uint16) of float32 ``a``, rounded to nearest even (finite values)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_round(a) -> np.ndarray:
    """float32 ``a`` rounded to the nearest bfloat16 (nearest even), as float32 values."""
    return (bf16_bits(a).astype(np.uint32) << 16).view(np.float32)


def int8_columns(w) -> tuple:
    """Symmetric int8 quantization of each column of ``w`` (k, n): (q int8 (k, n), scale float32 (n,)),
    scale = max|column| / 127 and q = rint(w / scale) (a zero column: scale 0, q 0)."""
    w = np.asarray(w, dtype=np.float32)
    scale = (np.abs(w).max(axis=0, initial=0.0) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(scale > 0, np.rint(w / scale), 0.0)
    return np.clip(q, -127, 127).astype(np.int8), scale


class LowpWeights(NamedTuple):
    """One direction's gate weights packed for fastlstm_lowp.h (see the header)."""

    code: int  #: enum fl_precision
    words: np.ndarray  #: uint32 (panels, kqx + kqh, 16)
    kqx: int  #: word rows of the x part
    kqh: int  #: word rows of the h part
    scale_x: Optional[np.ndarray]  #: int8: float32 column scales of the x part (panels * 16), else None
    scale_h: Optional[np.ndarray]
    corr_x: Optional[np.ndarray]  #: int8: int32 128 * column sums of q (panels * 16), else None
    corr_h: Optional[np.ndarray]


def _words(part, precision):
    """A (k, n) part as (ceil(k / g), n) 32-bit words of g consecutive k each, and int8's
    (scale, correction) per column."""
    g = _GROUP[precision]
    k, n = part.shape
    kq = -(-k // g)
    if precision == "bf16":
        bits = np.zeros((2 * kq, n), np.uint32)
        bits[:k] = bf16_bits(part)
        # The even k in the high half: vdpbf16ps multiplies that one first.
        return bits[0::2] << 16 | bits[1::2], None
    q, scale = int8_columns(part)
    qb = np.zeros((4 * kq, n), np.uint32)
    qb[:k] = q.view(np.uint8)
    words = qb[0::4] | qb[1::4] << 8 | qb[2::4] << 16 | qb[3::4] << 24
    return words, (scale, 128 * q.astype(np.int32).sum(axis=0, dtype=np.int32))


def _padded(v, n, dtype):
    out = np.zeros(n, dtype)
    out[: v.shape[0]] = v
    out.setflags(write=False)
    return out


def pack_lowp(stacked, n_in: int, precision: str) -> LowpWeights:
    """``stacked`` [W_x; W_h] (n_in + n_out, G) for the kernels of ``precision`` ("bf16"/"int8")."""
    G = stacked.shape[1]
    n_panels = -(-G // _PANEL)
    (wx, sx), (wh, sh) = _words(stacked[:n_in], precision), _words(stacked[n_in:], precision)
    words = np.zeros((wx.shape[0] + wh.shape[0], n_panels * _PANEL), np.uint32)
    words[:, :G] = np.concatenate([wx, wh])
    words = np.ascontiguousarray(words.reshape(-1, n_panels, _PANEL).transpose(1, 0, 2))
    words.setflags(write=False)
    kqx, kqh, code = wx.shape[0], wh.shape[0], CODES[precision]
    if sx is None:
        return LowpWeights(code, words, kqx, kqh, None, None, None, None)
    width = n_panels * _PANEL
    scales = [_padded(s[0], width, np.float32) for s in (sx, sh)]
    corrs = [_padded(s[1], width, np.int32) for s in (sx, sh)]
    return LowpWeights(code, words, kqx, kqh, *scales, *corrs)
