"""``fastlstm info`` and ``fastlstm convert``, and the file-format sniffing they share with bench."""

from __future__ import annotations

import json
import os
import struct
import zipfile

import numpy as np

from ..data import MODEL_PATH
from . import CommandError, load_model


def file_format(path) -> str:
    """A human name for the format of ``path``, from its first bytes (what ``fastlstm.load`` detects)."""
    if not os.path.isfile(path):  # a FIFO or device: opening or reading it may never end
        return "unknown"
    with open(path, "rb") as f:
        head = f.read(8)
        if head.startswith(b"PK\x03\x04"):
            try:
                names = zipfile.ZipFile(f).namelist()
            except zipfile.BadZipFile:
                return "zip archive"
            return "Keras .keras" if "config.json" in names else "PyTorch state_dict (zip)"
        if head == b"\x89HDF\r\n\x1a\n":
            return "Keras .h5"
        if len(head) == 8:
            (n,) = struct.unpack("<Q", head)
            if 2 <= n < 100_000_000:  # a safetensors header: its length, then JSON
                try:
                    header = json.loads(f.read(n))
                except ValueError:
                    return "unknown"
                meta = header.get("__metadata__") or {}
                return "fastlstm" if meta.get("format") == "fastlstm" else "safetensors (PyTorch names)"
    from ..harness.onnx_file import is_onnx_file

    return "ONNX" if is_onnx_file(path) else "unknown"


def _kib(n_bytes):
    return f"{n_bytes / 1024:,.1f} KiB" if n_bytes < 1024**2 else f"{n_bytes / 1024**2:,.2f} MiB"


def describe(model, path) -> str:
    """The text ``fastlstm info`` prints."""
    shown = "bundled model (" + os.path.basename(path) + ")" if path == MODEL_PATH else path
    lines = [f"{shown}: {file_format(path)} file, {_kib(os.path.getsize(path))}"]
    rows = [
        (f"layer {k}", layer.describe(), sum(a.size for a in getattr(layer, "arrays", list)()))
        for k, layer in enumerate(model.layers)
    ]
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    for name, text, n in rows:
        lines.append(f"  {name:<{w0}}  {text:<{w1}}  {n:>11,} parameters")
    n = model.num_parameters
    lines.append(
        f"input size {model.input_size}, output size {model.output_size}; "
        f"{'returns every step' if model.return_sequences else 'returns the last step only'}"
    )
    lines.append(f"parameters: {n:,}; weight memory {_kib(4 * n)} (float32, shared by every stream)")
    lines.append(f"precision: {model.precision} (the recurrent layers' gate products; everything else float32)")
    state = model.state_size
    lines.append(f"state per stream: {state:,} floats ({_kib(4 * state)})")
    if model.streamable:
        lines.append("can stream: yes (model.stream(), model.pool())")
    else:
        lines.append(f"can stream: no ({model.stream_refusal}; use model.predict)")
    return "\n".join(lines)


def run_info(args):
    from .._config import format_config

    model = load_model(args.model, args)
    print(describe(model, MODEL_PATH if args.model is None else args.model))
    print("\nThis machine (fastlstm.show_config()):\n" + format_config())
    return 0


def run_convert(args):
    from ..loaders import load

    model = load_model(args.model, args)
    if os.path.isdir(args.out):
        raise CommandError(f"{args.out}: is a directory, expected a file name")
    if os.path.exists(args.out) and os.path.samefile(args.out, args.model):
        raise CommandError(f"{args.out}: is the input file; choose another output name")
    model.save(args.out)
    # Read it back and run both on the same input: the file must reproduce the model exactly.
    again = load(args.out)
    x = np.random.default_rng(0).standard_normal((16, model.input_size)).astype(np.float32)
    if not np.array_equal(model.predict(x), again.predict(x)):
        raise CommandError(f"{args.out}: written, but reading it back gives different outputs")
    print(
        f"wrote {args.out} ({_kib(os.path.getsize(args.out))}, fastlstm format): "
        f"{model.describe_short()}, read back and checked"
    )
    return 0
