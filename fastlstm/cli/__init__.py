"""The ``fastlstm`` command (also ``python -m fastlstm``).

    fastlstm bench [MODEL]      fastlstm against the frameworks installed, side by side
    fastlstm info [MODEL]       layers, sizes, parameters, weight memory, whether it streams
    fastlstm convert MODEL OUT  write fastlstm's own format
    fastlstm demo               stream the bundled CO2 record through the bundled model
    fastlstm serve MODEL        serve live streams over WebSocket and HTTP (fastlstm[serve])

Exit codes: 0 success, 2 usage error (argparse), 1 any other failure, reported as
one line on stderr (``--debug`` shows the traceback instead).  Each command lives in
its own module and is imported only when run, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from .._quantize import PRECISIONS
from ..data import MODEL_PATH
from ..layers import ACTIVATIONS

#: What --head-activation accepts: every activation that needs no weights (as fastlstm.load does).
HEAD_ACTIVATIONS = tuple(a for a in ACTIVATIONS if a != "prelu")


class CommandError(Exception):
    """A failure the user can act on; printed as one line, exit code 1."""


#: The load options a command takes, as (flag, keyword of fastlstm.load).
LOAD_OPTIONS = (
    ("--key", "key"),
    ("--layers", "layers"),
    ("--return-sequences", "return_sequences"),
    ("--head-activation", "head_activation"),
)


def load_model(path, args=None):
    """``fastlstm.load`` for the commands: the bundled model when ``path`` is None, with the load
    options and the ``--precision`` given on the command line (``args``); a loader warning (e.g. an assumed head
    activation) becomes one ``warning:`` line on stderr."""
    from ..loaders import load

    path = MODEL_PATH if path is None else path
    if not os.path.exists(path):
        raise CommandError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CommandError(f"{path}: is a directory, expected a model file")
    overrides = {kw: getattr(args, kw) for _, kw in LOAD_OPTIONS if getattr(args, kw, None) is not None}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = load(path, getattr(args, "precision", None), **overrides)
        except TypeError as exc:
            if overrides and "override" in str(exc):
                flags = ", ".join(f for f, kw in LOAD_OPTIONS if kw in overrides)
                raise CommandError(f"{path}: {flags} apply to PyTorch files only ({exc})") from None
            raise
    for w in caught:
        print(f"warning: {_one_line(str(w.message))}", file=sys.stderr)
    return model


def _one_line(text):
    return " ".join(str(text).split())


def _model_arg(p, required=False):
    if required:
        p.add_argument(
            "model",
            metavar="MODEL",
            help="a model file fastlstm.load reads (.pt/.pth, .safetensors, .keras, .h5, fastlstm's own)",
        )
    else:
        p.add_argument(
            "model",
            metavar="MODEL",
            nargs="?",
            default=None,
            help="a model file fastlstm.load reads (.pt/.pth, .safetensors, .keras, .h5, fastlstm's "
            "own); default: the bundled CO2 model",
        )
    # What a PyTorch state_dict cannot record; the same keywords as fastlstm.load.
    p.add_argument(
        "--key",
        default=None,
        metavar="NAME",
        help="the entry of a training checkpoint that holds the state_dict (e.g. model_state_dict)",
    )
    p.add_argument(
        "--layers",
        type=_layer_list,
        default=None,
        metavar="A,B,...",
        help="the order forward() runs a state_dict's modules, activations and pools, by key prefix "
        "(a Conv1d's with its settings), activation name and pool call, e.g. embedding,lstm,fc1,relu,fc2 "
        "or 'conv(padding=1),relu,maxpool1d(2),lstm,fc'",
    )
    p.add_argument(
        "--return-sequences",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="whether the model returns every step (default) or only the last one "
        "(--no-return-sequences), for PyTorch state_dict files",
    )
    p.add_argument(
        "--head-activation",
        choices=HEAD_ACTIVATIONS,
        default=None,
        help="the dense head's activation, for PyTorch state_dict files (they do not record it)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="the precision of the recurrent layers' products (default: the one a fastlstm file records, else fp32)",
    )


def _layer_list(text):
    """``a,b,c`` -> names; a comma inside parentheses belongs to a pool's call (``maxpool1d(3, stride=2)``)."""
    names, depth, start = [], 0, 0
    for k, ch in enumerate(text + ","):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth <= 0:
            names.append(text[start:k].strip())
            start = k + 1
    if not all(names) or depth:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated key prefixes, activation names and pools, got {text!r}"
        )
    return names


def _positive_int(text):
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def _stream_counts(text):
    try:
        counts = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not counts or counts[0] < 2:
        raise argparse.ArgumentTypeError(f"expected stream counts of at least 2, got {text!r}")
    return counts


def build_parser():
    from .. import __version__
    from ..harness.peers import PEERS  # the registry only: no framework is imported

    p = argparse.ArgumentParser(
        prog="fastlstm",
        description="Fast CPU inference of LSTM networks: benchmark, inspect, convert, demo.",
        epilog="Run 'fastlstm COMMAND --help' for a command's options.",
    )
    p.add_argument("--version", action="version", version=f"fastlstm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name, help_, description):
        sp = sub.add_parser(name, help=help_, description=description)
        sp.add_argument("--debug", action="store_true", help="show the full traceback on failure")
        return sp

    b = add(
        "bench",
        "time fastlstm against the frameworks installed",
        "Run MODEL in fastlstm and in every installed framework that can run it (PyTorch rebuilt from "
        "the weights; ONNX Runtime, OpenVINO f32 and bf16, and tract on the graphs exported through torch; "
        "Keras for Keras files); check that they agree, "
        "then time streaming steps, whole sequences and many streams stepped together, side by side, "
        "and print medians with ratios. Frameworks that are not installed are listed as skipped.",
    )
    _model_arg(b)
    b.add_argument("--quick", action="store_true", help="a short run (a few seconds): fewer, shorter samples")
    b.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    b.add_argument("--plot", metavar="OUT.png", help="also draw the speed-ups to OUT.png (needs matplotlib)")
    b.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="threads for every engine (default: fastlstm's default, the cores this process may use)",
    )
    b.add_argument(
        "--frameworks",
        default="auto",
        metavar="LIST",
        help=f"comma-separated from {','.join(PEERS)}; 'auto' (default) runs every installed one "
        "but keras and the PyTorch/ONNX Runtime int8 and bf16 peers, plus keras for Keras files",
    )
    b.add_argument(
        "--streams",
        type=_stream_counts,
        default=[16, 256],
        metavar="N,N",
        help="stream counts for the many-streams rows (default 16,256)",
    )
    b.add_argument(
        "--seq-len",
        type=_positive_int,
        default=None,
        metavar="T",
        help="steps in the whole-sequence row (default 1000, 200 with --quick)",
    )

    i = add(
        "info",
        "describe a model file",
        "Print MODEL's layers, sizes, parameter count, weight memory and "
        "whether it can stream, then this machine's kernel path, CPU features, BLAS and threads.",
    )
    _model_arg(i)

    c = add(
        "convert",
        "write a model in fastlstm's own format",
        "Load MODEL (any format fastlstm.load reads) and write it to OUT in fastlstm's own format "
        "(safetensors tensors + JSON config), then read OUT back to check it.",
    )
    _model_arg(c, required=True)
    c.add_argument("out", metavar="OUT", help="the file to write (e.g. model.safetensors)")

    d = add(
        "demo",
        "stream the bundled CO2 record through the bundled model",
        "Stream 44 years of weekly Mauna Loa CO2 through the bundled LSTM one step at a time, print its "
        "forecasts next to the measurements, its error against a last-value forecast, and the per-step "
        "latency.",
    )
    d.add_argument("--rows", type=_positive_int, default=12, metavar="N", help="weeks to print (default 12)")
    d.add_argument("--json", metavar="OUT", help="also write the figures as JSON to OUT")
    from .serve import add_parser as add_serve  # light: imports the server only when run

    add_serve(add)
    return p


def main(argv=None) -> int:
    """Entry point of the ``fastlstm`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with 2 on a usage error
    try:
        if args.command == "bench":
            from .bench import run
        elif args.command == "info":
            from .info import run_info as run
        elif args.command == "convert":
            from .info import run_convert as run
        elif args.command == "serve":
            from .serve import run
        else:
            from .demo import run
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print("fastlstm: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place every failure becomes one line
        if getattr(args, "debug", False):
            raise
        msg = _one_line(exc) or type(exc).__name__
        if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)) and exc.filename:
            msg = f"{exc.filename}: {exc.strerror}"
        elif not isinstance(exc, (CommandError, ValueError, TypeError, OSError)):
            msg = f"{type(exc).__name__}: {msg}"
        print(f"fastlstm {args.command}: error: {msg}", file=sys.stderr)
        return 1
