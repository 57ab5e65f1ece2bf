"""Read ``torch.save(state_dict)`` zip files without torch, and without running code from them.

A ``.pt`` file is a zip holding ``<dir>/data.pkl`` (a pickle) and one raw storage per
``<dir>/data/<key>``.  Unpickling is the dangerous part: a pickle can call any
importable function.  :class:`_RestrictedUnpickler` resolves only the handful of
globals a plain state_dict uses, and each of them maps to a harmless local stand-in
(never to torch): an ordered dict, a storage *type tag*, and a tensor *reference*
that records ``(storage, offset, size, stride)``.  Arrays are cut out of the storages
only after unpickling has finished, with every bound checked, so a hostile pickle can
neither run code nor make us read outside a storage.

Memory: before the C unpickler sees ``data.pkl``, :func:`_prescan` walks its opcodes once
(linear), refusing memo indices beyond the pickle's length (the C unpickler sizes its memo
array by the largest index: 9 bytes could cost gigabytes) and length fields that reach past
the end of the data (the C unpickler allocates the declared length before reading).  The
tensors cut out of the storages are charged to the load's :class:`~._limits.Budget`, so
stride-0 views cannot expand a tiny storage into terabytes.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from collections import OrderedDict

import numpy as np

from ._common import open_zip, read_member
from ._limits import MAX_PICKLE_BYTES, Budget, shown

#: The first bytes of the pre-1.6 (non-zip) torch format: a pickled magic number.
LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8"

#: Cap on the objects visited when converting the unpickled structure.
MAX_NODES = 200_000
#: Dimensions, and the largest size, stride or offset, of a tensor view (NumPy's own limits are
#: 32-64 dimensions and int64 byte strides: beyond them it raises OverflowError, not our error).
_MAX_DIMS = 32
_MAX_EXTENT = 1 << 48

#: torch storage class name -> NumPy dtype of its elements.  BFloat16 has no NumPy
#: dtype: it is read as uint16 and widened to float32 by hand.
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` and friends: only a name and a dtype."""

    __slots__ = ("name", "dtype")

    def __init__(self, name):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]

    def __setstate__(self, state):  # BUILD on us is never legitimate
        raise pickle.UnpicklingError("unexpected BUILD on a storage type")


class _Storage:
    """A persistent-id reference to ``<dir>/data/<key>``; bytes are read after unpickling."""

    __slots__ = ("stype", "key", "numel")

    def __init__(self, stype, key, numel):
        self.stype, self.key, self.numel = stype, key, numel

    def __setstate__(self, state):
        raise pickle.UnpicklingError("unexpected BUILD on a storage")


class _TensorRef:
    """What ``_rebuild_tensor_v2`` returns here: the view's geometry, materialised later."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __setstate__(self, state):
        raise pickle.UnpicklingError("unexpected BUILD on a tensor")


class _StateDict(OrderedDict):
    """The ``collections.OrderedDict`` torch pickles; BUILD may only attach ``_metadata``."""

    def __setstate__(self, state):
        if not (isinstance(state, dict) and set(state) <= {"_metadata"}):
            raise pickle.UnpicklingError("unexpected BUILD state on a state_dict")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("_rebuild_tensor_v2: first argument is not a storage")
    if not _is_int(storage_offset) or storage_offset < 0:
        raise pickle.UnpicklingError(f"_rebuild_tensor_v2: bad storage offset {shown(storage_offset)}")
    if not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride):
        raise pickle.UnpicklingError("_rebuild_tensor_v2: size and stride must be tuples of equal length")
    if (
        len(size) > _MAX_DIMS
        or not all(_is_int(s) and 0 <= s < _MAX_EXTENT for s in size + stride)
        or storage_offset >= _MAX_EXTENT
    ):
        raise pickle.UnpicklingError(f"_rebuild_tensor_v2: bad size {shown(size)} or stride {shown(stride)}")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    # Appears when a dict of nn.Parameter objects is saved; the parameter is just its data.
    if not isinstance(data, _TensorRef):
        raise pickle.UnpicklingError("_rebuild_parameter: argument is not a tensor")
    return data


class _Global:
    """A fresh callable per global the pickle names, so that every object the pickle can reach
    is one the unpickler created: a BUILD opcode aimed at a global hits this wrapper (and is
    refused), never fastlstm's own functions or classes."""

    __slots__ = ("_target",)

    def __init__(self, target):
        self._target = target

    def __call__(self, *args):
        return self._target(*args)

    def __setstate__(self, state):
        raise pickle.UnpicklingError("unexpected BUILD on a global")


_GLOBALS = {
    ("collections", "OrderedDict"): _StateDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolve only state_dict globals; every other global is refused before it can run."""

    def find_class(self, module, name):
        if (module, name) in _GLOBALS:
            return _Global(_GLOBALS[module, name])
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"forbidden global {str(module)[:80]}.{str(name)[:80]}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {shown(pid)}")
        _, stype, key, location, numel = pid
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not isinstance(location, str):
            raise pickle.UnpicklingError(f"malformed storage reference {shown(pid)}")
        if not _is_int(numel) or numel < 0:
            raise pickle.UnpicklingError(f"bad storage element count {shown(numel)}")
        if not key or "/" in key or "\\" in key or key in (".", ".."):
            raise pickle.UnpicklingError(f"bad storage key {shown(key)}")
        return _Storage(stype, key, numel)


def sniff(zf_names):
    """Classify a zip by its member names: 'torch', 'torchscript', or None (linear in the names)."""
    names = set(zf_names)
    for name in names:
        _, _, rest = name.partition("/")
        if rest and (rest == "constants.pkl" or rest.startswith("code/")):
            return "torchscript"
    if any(n.count("/") == 1 and n.endswith("/data.pkl") for n in names):
        return "torch"
    return None


_TWO_LINES = -100


def _arg_widths():
    """Per opcode byte: its argument's fixed width (>= 0), or how the width is given (pickletools' codes:
    -1 up to a newline, -2/-3/-4/-5 a 1/4/4/8-byte length prefix; _TWO_LINES for GLOBAL and INST's
    "module\\nname\\n"); None for bytes that are no opcode."""
    table = [None] * 256
    for op in pickletools.opcodes:
        table[ord(op.code)] = (
            0 if op.arg is None else _TWO_LINES if op.arg is pickletools.stringnl_noescape_pair else op.arg.n
        )
    return table


_ARG_WIDTHS = _arg_widths()
_LENGTH_PREFIX = {
    pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}
_PUT, _LONG_BINPUT, _STOP = ord("p"), ord("r"), ord(".")


def _prescan(pkl):
    """Walk the opcodes of ``pkl`` once, refusing what would make the C unpickler allocate memory
    the data does not hold: a memo index beyond the pickle's length (the C memo is an array sized
    by the largest index) and a length prefix that runs past the end (the C unpickler allocates
    the declared length before reading).  A plain loop over bytes: ``pickletools.genops`` decodes
    every argument and is ten times slower.  Raises ValueError: such a pickle is corrupt or hostile."""
    n, i = len(pkl), 0
    while i < n:
        code = pkl[i]
        width = _ARG_WIDTHS[code]
        i += 1
        if width is None:
            raise ValueError(f"invalid opcode {code:#04x} at byte {i - 1}")
        if width >= 0:
            if code == _LONG_BINPUT and int.from_bytes(pkl[i : i + 4], "little") > n:
                raise ValueError(f"memo index {int.from_bytes(pkl[i : i + 4], 'little')} in a {n}-byte pickle")
            i += width
        elif width in (pickletools.UP_TO_NEWLINE, _TWO_LINES):
            end = pkl.find(b"\n", i)
            if width == _TWO_LINES and end >= 0:
                end = pkl.find(b"\n", end + 1)
            if end < 0:
                break
            if code == _PUT and not (end - i <= 20 and pkl[i:end].isdigit() and int(pkl[i:end]) <= n):
                raise ValueError(f"memo index {shown(pkl[i:end])} in a {n}-byte pickle")
            i = end + 1
        else:
            size, signed = _LENGTH_PREFIX[width]
            length = int.from_bytes(pkl[i : i + size], "little", signed=signed)
            i += size + length
            if length < 0 or i > n:
                raise ValueError(
                    f"an argument of {length:,} bytes at byte {i - size - length - 1} runs past the end of the pickle"
                )
        if code == _STOP:
            return
    raise ValueError("the pickle is truncated (no STOP opcode)")


def read_torch_zip(data, source, budget=None):
    """Return the unpickled top-level object of a torch zip file, tensors as float/int NumPy arrays.

    The result is whatever the file holds (usually a ``state_dict``: an ordered mapping of
    name -> array); callers check that it is the mapping they expect.  Everything decoded is
    charged to ``budget`` (by default, the budget of a file of ``len(data)`` bytes).
    """
    budget = Budget(len(data), source) if budget is None else budget
    zf = open_zip(data, source)
    names = zf.namelist()
    kind = sniff(names)
    if kind == "torchscript":
        raise ValueError(
            f"{source}: this is a TorchScript archive (it contains code); fastlstm loads "
            "state_dict files only: save model.state_dict() with torch.save instead"
        )
    pkls = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pkls) != 1:
        raise ValueError(f"{source}: expected exactly one '<dir>/data.pkl' in the torch archive, found {len(pkls)}")
    prefix = pkls[0][: -len("data.pkl")]
    order = "little"
    if prefix + "byteorder" in set(names):
        order = read_member(zf, prefix + "byteorder", source, budget, limit=16).decode("ascii", "replace").strip()
        if order not in ("little", "big"):
            raise ValueError(f"{source}: unknown byte order {shown(order)}")

    pkl = read_member(zf, pkls[0], source, budget, limit=MAX_PICKLE_BYTES)
    try:
        _prescan(pkl)
        obj = _RestrictedUnpickler(io.BytesIO(pkl)).load()
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{source}: refused to unpickle: {exc}. Only plain state_dicts (tensors in "
            "ordered dicts) can be loaded; a whole pickled module or arbitrary objects cannot"
        ) from None
    except Exception as exc:  # noqa: BLE001 - truncated or garbled pickle stream: any error is a corrupt file
        raise ValueError(f"{source}: corrupt pickle in {pkls[0]!r} ({type(exc).__name__}: {str(exc)[:200]})") from None

    cache = {}

    def storage_bytes(storage):
        if storage.key not in cache:
            member = f"{prefix}data/{storage.key}"
            raw = read_member(zf, member, source, budget)
            want = storage.numel * storage.stype.dtype.itemsize
            if len(raw) < want:
                raise ValueError(f"{source}: storage {shown(member)} holds {len(raw)} bytes; its tensors need {want}")
            cache[storage.key] = (raw, storage.stype.name)
        raw, stype_name = cache[storage.key]
        if stype_name != storage.stype.name:
            raise ValueError(f"{source}: storage {shown(storage.key)} is referenced with two different dtypes")
        return raw

    def materialise(ref, where):
        st = ref.storage
        dtype = st.stype.dtype if order == "little" else st.stype.dtype.newbyteorder(">")
        raw = storage_bytes(st)
        count = 1
        for n in ref.size:
            count *= n
        # A stride-0 (expanded) view can hold far more elements than its storage: the budget
        # bounds them all together (float32 for bfloat16, which is widened).
        budget.charge(
            count * max(dtype.itemsize, 4 if st.stype.name == "BFloat16Storage" else 1),
            f"tensor {where} ({count:,} elements)",
        )
        if count == 0:
            arr = np.zeros(ref.size, dtype=dtype)
        else:
            last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
            if last >= st.numel:
                raise ValueError(f"{source}: tensor {where} reaches element {last} of a storage with {st.numel}")
            base = np.frombuffer(raw, dtype=dtype, count=st.numel)
            # The stride of a dimension of size 1 is never used: zero it, so an absurd one cannot overflow.
            strides = tuple(s * dtype.itemsize if n > 1 else 0 for n, s in zip(ref.size, ref.stride))
            arr = np.lib.stride_tricks.as_strided(
                base[ref.offset :], shape=ref.size, strides=strides, writeable=False
            ).copy()
        if st.stype.name == "BFloat16Storage":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        return arr.astype(arr.dtype.newbyteorder("=")) if order == "big" else arr

    visited = [0]

    def convert(value, where, depth=0):
        # Shared references let a tiny pickle describe an exponentially large tree: cap the walk.
        visited[0] += 1
        if depth > 8 or visited[0] > MAX_NODES:
            raise ValueError(f"{source}: the pickled structure is too deep or too large (at {where or 'top level'})")
        if isinstance(value, _TensorRef):
            return materialise(value, where)
        if isinstance(value, dict):
            out = OrderedDict()
            for k, v in value.items():
                out[k] = convert(v, f"{where}[{shown(k)}]" if where else shown(k), depth + 1)
            return out
        if isinstance(value, (list, tuple)):
            return type(value)(convert(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
        if isinstance(value, (_Storage, _StorageType)):
            raise ValueError(f"{source}: a bare storage at {where or 'top level'} is not a tensor")
        return value

    return convert(obj, "")
