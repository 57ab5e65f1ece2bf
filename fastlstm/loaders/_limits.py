"""What a model file may make a loader do: the size, memory, count and time caps, in one place.

A file is untrusted input, and a few hundred bytes can describe gigabytes (a pickle memo
index, a stride-0 tensor view, a deflate bomb, an HDF5 dataset that is all fill value).  So
every loader works within a *memory budget* that grows with the file's size::

    budget = BUDGET_FLOOR_BYTES + BUDGET_PER_FILE_BYTE * file size

Everything a file makes us decode (tensor elements, decompressed zip members, HDF5 datasets)
is charged against it; the budget is spent once per load, across all tensors.  A real model
decodes to about its own size (float16/bfloat16 widen to float32: 2x; deflated ``.keras``
weights rarely shrink below half), so the ratio leaves wide room, and the floor lets tiny
models whose weights compress very well load too.  The file itself may be at most
``MAX_FILE_BYTES``, which bounds the budget in absolute terms.

README.md ("Security and limits") documents these numbers; keep the two in step.
"""

from __future__ import annotations

#: Largest file ``fastlstm.load`` reads (2 GiB: 500 M float32 weights, far beyond a CPU LSTM).
MAX_FILE_BYTES = 2 << 30
#: Memory budget for what a file decodes to: this much, plus ``BUDGET_PER_FILE_BYTE`` per file byte.
BUDGET_FLOOR_BYTES = 64 << 20
BUDGET_PER_FILE_BYTE = 8

#: Zip archives: member count, central-directory size and the expansion of one deflated member.
MAX_ZIP_MEMBERS = 65_536
MAX_ZIP_DIRECTORY_BYTES = 16 << 20
MAX_DEFLATE_RATIO = 1000

#: Cap on data.pkl: a state_dict's pickle takes about 100 bytes per tensor, so this is 160,000
#: tensors; it also bounds the opcode scan before unpickling (about 0.25 s per MiB).
MAX_PICKLE_BYTES = 16 << 20

#: The HDF5 child process: address space beyond its own start-up, and wall/CPU time.
HDF5_CHILD_BASE_BYTES = 1 << 30
HDF5_CHILD_BASE_SECONDS = 10
HDF5_CHILD_BYTES_PER_SECOND = 16 << 20
#: Chunks one HDF5 dataset may have, on top of one per 64 file bytes (libhdf5 walks each one).
HDF5_CHUNKS_FLOOR = 4096

#: Memory a JSON text may become once parsed, per byte of text (``[]`` is 2 bytes of text and a
#: 56-byte list plus an 8-byte pointer), charged to the budget before parsing.
JSON_BYTES_PER_TEXT_BYTE = 32

#: Longest repr of a file-supplied value (a key, a name) quoted in an error message.
MAX_REPR_CHARS = 120


def memory_budget(file_size: int) -> int:
    """Bytes a file of ``file_size`` bytes may decode to."""
    return BUDGET_FLOOR_BYTES + BUDGET_PER_FILE_BYTE * int(file_size)


def hdf5_child_seconds(file_size: int) -> float:
    """Wall and CPU time the HDF5 child gets for a file of ``file_size`` bytes."""
    return HDF5_CHILD_BASE_SECONDS + file_size / HDF5_CHILD_BYTES_PER_SECOND


def hdf5_max_chunks(file_size: int) -> int:
    return HDF5_CHUNKS_FLOOR + file_size // 64


class Budget:
    """The memory a load may still spend; :meth:`charge` refuses what would exceed it."""

    __slots__ = ("file_size", "limit", "used", "source")

    def __init__(self, file_size, source):
        self.file_size = int(file_size)
        self.limit = memory_budget(file_size)
        self.used = 0
        self.source = source

    @property
    def left(self) -> int:
        return self.limit - self.used

    def charge(self, nbytes, what):
        """Account for ``nbytes`` more (before allocating them); ValueError naming ``what`` if over."""
        if nbytes > self.left:
            raise ValueError(
                f"{self.source}: {what} would need {nbytes:,} bytes, beyond this file's memory budget "
                f"({self.limit:,} bytes: {BUDGET_FLOOR_BYTES >> 20} MiB + {BUDGET_PER_FILE_BYTE} x "
                "the file size); the file is corrupt or hostile"
            )
        self.used += nbytes


def shown(value, limit=MAX_REPR_CHARS, _depth=0) -> str:
    """``repr(value)`` cut to ``limit`` characters, for quoting file content in an error message.

    Never builds the whole repr of a file-supplied value: strings are cut before ``repr``,
    lists and tuples show their first items, two levels deep, and other objects their type.
    """
    if isinstance(value, (list, tuple)) and _depth < 2:
        items = [shown(v, limit, _depth + 1) for v in value[:8]] + (["..."] if len(value) > 8 else [])
        text = ("[%s]" if isinstance(value, list) else "(%s)") % ", ".join(items)
    elif isinstance(value, str):
        text = repr(value[: limit + 1])
    elif isinstance(value, (bytes, bytearray)):
        text = repr(bytes(value[: limit + 1]))
    elif value is None or isinstance(value, (bool, int, float)):
        text = repr(value) if not isinstance(value, int) or value.bit_length() < 256 else "<a huge integer>"
    else:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
