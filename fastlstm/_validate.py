"""Argument checks shared by Model, Stream and StreamPool.

Every public entry point converts its array arguments here, once: anything
that is not C-contiguous, native-byte-order float32 is converted (never
truncated), and a wrong shape or a non-numeric input raises with a message that
names the argument, the expected shape and the shape received.  Shapes and
sizes are checked before anything is converted, so a huge broadcast view is
refused without being copied.
"""

import operator

import numpy as np

#: The largest count (time steps, batch rows, streams) the kernels take: they
#: index with 32-bit ints.  Larger counts are refused, never wrapped.
MAX_COUNT = 2**31 - 1

#: The precisions of a model's recurrent gate products (fastlstm.PRECISIONS; see Model).
PRECISIONS = ("fp32", "bf16", "int8")


def numeric_array(x, name):
    """``x`` as an ndarray of real numbers, without converting it yet; TypeError otherwise."""
    if isinstance(x, np.ndarray):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except (ValueError, TypeError) as exc:  # ragged nested lists and the like
            raise TypeError(f"{name}: expected a numeric array, got {type(x).__name__} ({exc})") from None
    kind = arr.dtype.kind
    if kind not in "fiu":  # bool, complex, object, str, bytes, void, datetime are refused
        raise TypeError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    return arr


def to_float32(arr):
    """A checked ``numeric_array`` as C-contiguous native float32 (``np.float32`` is native byte order)."""
    return np.ascontiguousarray(arr, dtype=np.float32)


def as_float32(x, name):
    """``x`` as a C-contiguous float32 array; TypeError for non-numeric input."""
    return to_float32(numeric_array(x, name))


def check_count(n, name, what):
    """ValueError when a count the kernels index with 32-bit ints is above MAX_COUNT."""
    if n > MAX_COUNT:
        raise ValueError(f"{name}: {n} {what} is more than the {MAX_COUNT} fastlstm takes in one call")


def _shape_error(name, expected, got):
    return ValueError(f"{name}: expected shape {expected}, got {tuple(got)}")


def token_ids(x, name="x"):
    """``x`` as a C-contiguous int64 array of token ids; TypeError for anything but integers.

    (Whether each id is inside the Embedding's table is checked by the kernels'
    input check, before any state changes.)"""
    arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(
            f"{name}: expected integer token ids (the model starts with an Embedding), got dtype {arr.dtype}"
        )
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name}: contains token ids out of range")
    return np.ascontiguousarray(arr, dtype=np.int64)


def input_complaint(net):
    """What is wrong with an input the kernels' check (_kernels.input_ok) refused."""
    if net.token_input:
        return f"x: token ids must be in [0, {net.vocab_size})"
    return "x: contains NaN or infinite values"


def step_input(x, n_in, batch_size, tokens=False):
    """One step's input: (I,) for an unbatched stream, (B, I) for a batch of B;
    with ``tokens``, one id (an int, () or (1,)) or (B,) ids."""
    if tokens:
        arr = token_ids(x)
        if batch_size is None and arr.shape in ((), (1,)):
            return arr.reshape(1)
        expected = "() or (1,)" if batch_size is None else (batch_size,)
        if arr.shape != expected:
            raise _shape_error("x", expected, arr.shape)
        return arr
    arr = numeric_array(x, "x")
    expected = (n_in,) if batch_size is None else (batch_size, n_in)
    if arr.shape != expected:
        raise _shape_error("x", expected, arr.shape)
    return to_float32(arr)


def chunk_input(x, n_in, batch_size, tokens=False):
    """A chunk of steps: (T, I) for an unbatched stream, (T, B, I) for a batch of B;
    with ``tokens``, (T,) or (T, B) ids."""
    if tokens:
        arr = token_ids(x)
        ok = arr.ndim == 1 if batch_size is None else (arr.ndim == 2 and arr.shape[1] == batch_size)
        if not ok:
            raise _shape_error("x", "(T,)" if batch_size is None else f"(T, {batch_size})", arr.shape)
        check_count(arr.shape[0], "x", "time steps")
        return arr.reshape(arr.shape[0], -1) if batch_size is None else arr
    arr = numeric_array(x, "x")
    if batch_size is None:
        ok, expected = arr.ndim == 2 and arr.shape[1] == n_in, f"(T, {n_in})"
    else:
        ok = arr.ndim == 3 and arr.shape[1:] == (batch_size, n_in)
        expected = f"(T, {batch_size}, {n_in})"
    if not ok:
        raise _shape_error("x", expected, arr.shape)
    check_count(arr.shape[0], "x", "time steps")
    return to_float32(arr)


def sequence_input(x, n_in, batch_first, tokens=False):
    """predict's input as (T, B, I) C-contiguous float32 (with ``tokens``: (T, B) int64 ids, from
    (T,), (T, B) or (B, T)), and whether it was batched."""
    if tokens:
        arr = token_ids(x)
        if arr.ndim in (1, 2):
            check_count(arr.shape[0], "x", "time steps" if arr.ndim == 1 or not batch_first else "batch rows")
            check_count(arr.shape[-1], "x", "batch rows" if not batch_first else "time steps")
        if arr.ndim == 1:
            return arr[:, None], False
        if arr.ndim == 2:
            return (np.ascontiguousarray(arr.T) if batch_first else arr), True
        raise _shape_error("x", "(T,) or " + ("(B, T)" if batch_first else "(T, B)") + " token ids", arr.shape)
    arr = numeric_array(x, "x")
    if arr.ndim == 2 and arr.shape[1] == n_in:
        check_count(arr.shape[0], "x", "time steps")
        return to_float32(arr)[:, None, :], False
    if arr.ndim == 3 and arr.shape[2] == n_in:
        if batch_first:
            arr = arr.transpose(1, 0, 2)
        check_count(arr.shape[0], "x", "time steps")
        check_count(arr.shape[1], "x", "batch rows")
        return to_float32(arr), True
    expected = f"(T, {n_in}) or " + (f"(B, T, {n_in})" if batch_first else f"(T, B, {n_in})")
    raise _shape_error("x", expected, arr.shape)


def raise_bad_out(out, shape):
    """Raise the error that explains why ``out`` cannot receive a result of ``shape``."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out: expected a float32 numpy array of shape {shape}, got {type(out).__name__}")
    if out.dtype != np.float32:
        raise TypeError(f"out: expected dtype float32, got {out.dtype}")
    if out.shape != tuple(shape):
        raise _shape_error("out", tuple(shape), out.shape)
    if not out.flags.c_contiguous:
        raise ValueError("out: must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError("out: is read-only")
    raise TypeError(f"out: expected a plain numpy.ndarray, got a subclass {type(out).__name__}")


def output_buffer(out, shape, x):
    """``out`` checked for a result of ``shape`` (or a new array), not overlapping the input ``x``."""
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if not (
        type(out) is np.ndarray
        and out.dtype == np.float32
        and out.shape == tuple(shape)
        and out.flags.c_contiguous
        and out.flags.writeable
    ):
        raise_bad_out(out, shape)
    if np.may_share_memory(out, x):
        raise ValueError("out: must not overlap the input x")
    return out


def positive_int(n, name, limit=None):
    """``n`` as an int >= 1 (and <= ``limit`` when given), or TypeError/ValueError naming ``name``."""
    try:
        value = operator.index(n)
    except TypeError:
        raise TypeError(f"{name}: expected an int, got {type(n).__name__}") from None
    if value < 1:
        raise ValueError(f"{name}: expected at least 1, got {value}")
    if limit is not None and value > limit:
        raise ValueError(f"{name}: expected at most {limit}, got {value}")
    return value


def precision(value, name="precision"):
    """``value`` if it is one of :data:`PRECISIONS`; TypeError for a non-str, ValueError otherwise."""
    choices = ", ".join(map(repr, PRECISIONS))
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a str, one of {choices}, got {type(value).__name__}")
    if value not in PRECISIONS:
        raise ValueError(f"{name}: expected one of {choices}, got {value[:40]!r}")
    return value


def stream_ids(ids, max_len):
    """StreamPool.step's ids as a 1-d C-contiguous int64 array; TypeError for non-integer ids,
    ValueError for more than ``max_len`` (the pool's capacity: more ids cannot all be distinct)."""
    arr = np.asarray(ids) if not isinstance(ids, np.ndarray) else ids
    if arr.dtype.kind not in "iu" and not (arr.size == 0 and arr.dtype.kind == "f"):
        raise TypeError(f"ids: expected integer stream ids, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"ids: expected shape (N,), got {arr.shape}")
    if arr.shape[0] > max_len:
        raise ValueError(f"ids: {arr.shape[0]} ids, but the pool holds only {max_len} streams")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError("ids: contains ids out of range")
    return np.ascontiguousarray(arr, dtype=np.int64)
