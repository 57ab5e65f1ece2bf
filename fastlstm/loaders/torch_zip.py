"""Read ``torch.save(state_dict)`` zip files without torch, and without running code from them.

A ``.pt`` file is a zip holding ``<dir>/data.pkl`` (a pickle) and one raw storage per
``<dir>/data/<key>``.  Unpickling is the dangerous part: a pickle can call any
importable function.  :class:`_RestrictedUnpickler` resolves only the handful of
globals a plain state_dict uses, and each of them maps to a harmless local stand-in
(never to torch): an ordered dict, a storage *type tag*, and a tensor *reference*
that records ``(storage, offset, size, stride)``.  Arrays are cut out of the storages
only after unpickling has finished, with every bound checked, so a hostile pickle can
neither run code nor make us read outside a storage.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict

import numpy as np

from ._common import open_zip, read_member

#: The first bytes of the pre-1.6 (non-zip) torch format: a pickled magic number.
LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8"

#: Cap on data.pkl: a state_dict's pickle is a few hundred bytes per tensor.
MAX_PICKLE_BYTES = 64 << 20
#: Cap on the objects visited when converting the unpickled structure.
MAX_NODES = 200_000

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


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("_rebuild_tensor_v2: first argument is not a storage")
    if not _is_int(storage_offset) or storage_offset < 0:
        raise pickle.UnpicklingError(f"_rebuild_tensor_v2: bad storage offset {storage_offset!r}")
    if not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride):
        raise pickle.UnpicklingError("_rebuild_tensor_v2: size and stride must be tuples of equal length")
    if not all(_is_int(s) and s >= 0 for s in size) or not all(_is_int(s) and s >= 0 for s in stride):
        raise pickle.UnpicklingError(f"_rebuild_tensor_v2: bad size {size!r} or stride {stride!r}")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    # Appears when a dict of nn.Parameter objects is saved; the parameter is just its data.
    if not isinstance(data, _TensorRef):
        raise pickle.UnpicklingError("_rebuild_parameter: argument is not a tensor")
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolve only state_dict globals; every other global is refused before it can run."""

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return _StateDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        _, stype, key, location, numel = pid
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not isinstance(location, str):
            raise pickle.UnpicklingError(f"malformed storage reference {pid!r:.80}")
        if not _is_int(numel) or numel < 0:
            raise pickle.UnpicklingError(f"bad storage element count {numel!r}")
        if not key or "/" in key or "\\" in key or key in (".", ".."):
            raise pickle.UnpicklingError(f"bad storage key {key!r}")
        return _Storage(stype, key, numel)


def sniff(zf_names):
    """Classify a zip by its member names: 'torch', 'torchscript', or None."""
    tops = {n.split("/", 1)[0] for n in zf_names if "/" in n}
    for top in tops:
        if f"{top}/constants.pkl" in zf_names or any(n.startswith(f"{top}/code/") for n in zf_names):
            return "torchscript"
    if any(n.count("/") == 1 and n.endswith("/data.pkl") for n in zf_names):
        return "torch"
    return None


def read_torch_zip(data, source):
    """Return the unpickled top-level object of a torch zip file, tensors as float/int NumPy arrays.

    The result is whatever the file holds (usually a ``state_dict``: an ordered mapping of
    name -> array); callers check that it is the mapping they expect.
    """
    zf = open_zip(io.BytesIO(data), source)
    names = zf.namelist()
    kind = sniff(names)
    if kind == "torchscript":
        raise ValueError(f"{source}: this is a TorchScript archive (it contains code); fastlstm loads "
                         "state_dict files only: save model.state_dict() with torch.save instead")
    pkls = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pkls) != 1:
        raise ValueError(f"{source}: expected exactly one '<dir>/data.pkl' in the torch archive, found {len(pkls)}")
    prefix = pkls[0][: -len("data.pkl")]
    order = "little"
    if prefix + "byteorder" in names:
        order = read_member(zf, prefix + "byteorder", source, limit=16).decode("ascii", "replace").strip()
        if order not in ("little", "big"):
            raise ValueError(f"{source}: unknown byte order {order!r}")

    pkl = read_member(zf, pkls[0], source, limit=MAX_PICKLE_BYTES)
    try:
        obj = _RestrictedUnpickler(io.BytesIO(pkl)).load()
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{source}: refused to unpickle: {exc}. Only plain state_dicts (tensors in "
                         "ordered dicts) can be loaded; a whole pickled module or arbitrary objects cannot") from None
    except Exception as exc:  # noqa: BLE001 - truncated or garbled pickle stream: any error is a corrupt file
        raise ValueError(f"{source}: corrupt pickle in {pkls[0]!r} ({type(exc).__name__}: {exc})") from None

    cache = {}

    def storage_bytes(storage):
        if storage.key not in cache:
            member = f"{prefix}data/{storage.key}"
            raw = read_member(zf, member, source)
            want = storage.numel * storage.stype.dtype.itemsize
            if len(raw) < want:
                raise ValueError(f"{source}: storage {member!r} holds {len(raw)} bytes; its tensors need {want}")
            cache[storage.key] = (raw, storage.stype.name)
        raw, stype_name = cache[storage.key]
        if stype_name != storage.stype.name:
            raise ValueError(f"{source}: storage {storage.key!r} is referenced with two different dtypes")
        return raw

    def materialise(ref, where):
        st = ref.storage
        dtype = st.stype.dtype if order == "little" else st.stype.dtype.newbyteorder(">")
        raw = storage_bytes(st)
        count = 1
        for n in ref.size:
            count *= n
        if count > max(st.numel, (64 << 20) // dtype.itemsize):
            # Only a stride-0 (expanded) view can hold more elements than its storage; cap it so a
            # hostile header cannot make us allocate terabytes.
            raise ValueError(f"{source}: tensor {where} claims {count} elements from a storage of {st.numel}")
        if count == 0:
            arr = np.zeros(ref.size, dtype=dtype)
        else:
            last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
            if last >= st.numel:
                raise ValueError(f"{source}: tensor {where} reaches element {last} of a storage with {st.numel}")
            base = np.frombuffer(raw, dtype=dtype, count=st.numel)
            arr = np.lib.stride_tricks.as_strided(
                base[ref.offset:], shape=ref.size, strides=tuple(s * dtype.itemsize for s in ref.stride),
                writeable=False).copy()
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
                out[k] = convert(v, f"{where}[{k!r}]" if where else repr(k), depth + 1)
            return out
        if isinstance(value, (list, tuple)):
            return type(value)(convert(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
        if isinstance(value, (_Storage, _StorageType)):
            raise ValueError(f"{source}: a bare storage at {where or 'top level'} is not a tensor")
        return value

    return convert(obj, "")
