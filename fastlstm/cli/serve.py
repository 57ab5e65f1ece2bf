"""``fastlstm serve MODEL``: the network service of fastlstm.serving (FastAPI + uvicorn)."""

from __future__ import annotations

import sys

from . import CommandError, _model_arg, _positive_int, load_model


def add_parser(add):
    """The ``serve`` subcommand's arguments (``add`` is build_parser's helper)."""
    s = add(
        "serve",
        "serve live streams over WebSocket and HTTP (needs fastlstm[serve])",
        "Serve MODEL's streams: one WebSocket connection per stream (/ws), HTTP open/step/close and "
        "state export/import (/streams), Prometheus /metrics. Concurrent steps are coalesced into "
        "batched StreamPool steps (see docs/serving.md).",
    )
    _model_arg(s, required=True)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument(
        "--max-batch", type=_positive_int, default=256, metavar="N", help="most streams stepped per tick (default 256)"
    )
    s.add_argument(
        "--max-delay-ms",
        type=float,
        default=2.0,
        metavar="MS",
        help="longest a step waits for company before its tick runs (default 2)",
    )
    s.add_argument(
        "--max-queue",
        type=_positive_int,
        default=None,
        metavar="N",
        help="most steps waiting; more are refused with 503 / queue_full (default 8 x max-batch)",
    )
    s.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        metavar="S",
        help="close streams idle for S seconds (default: never)",
    )
    s.add_argument(
        "--max-streams", type=_positive_int, default=None, metavar="N", help="most open streams (default: no limit)"
    )
    s.add_argument("--threads", type=_positive_int, default=None, metavar="N", help="compute threads")
    s.add_argument(
        "--ray-replicas",
        type=_positive_int,
        default=None,
        metavar="N",
        help="shard the streams over N Ray replica actors (fastlstm.ray; needs fastlstm[ray]); "
        "connects to RAY_ADDRESS or starts a local cluster",
    )
    s.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))


def run(args):
    try:
        import uvicorn  # noqa: F401 - checked here so that a missing extra is one clear line

        from ..serving.app import create_app, run_server
    except ImportError as exc:
        raise CommandError(
            f"fastlstm serve needs the serve extra ({exc.name} is missing): pip install 'fastlstm[serve]'"
        ) from None
    from ..serving import Batcher

    model = load_model(args.model, args)
    if args.threads is not None:
        from .. import set_num_threads

        set_num_threads(args.threads)
    if args.ray_replicas:
        backend = _ray_backend(model, args)
    else:
        backend = Batcher(
            model,
            max_batch=args.max_batch,
            max_delay=args.max_delay_ms / 1000,
            max_queue=args.max_queue,
            idle_timeout=args.idle_timeout,
            max_streams=args.max_streams,
        )
    app = create_app(backend)
    where = f"{args.ray_replicas} Ray replicas, " if args.ray_replicas else ""
    print(
        f"fastlstm serve: {args.model} ({model.input_size} in, {model.output_size} out, {model.precision}) on "
        f"http://{args.host}:{args.port}  ws://{args.host}:{args.port}/ws  ({where}max_batch={args.max_batch}, "
        f"max_delay={args.max_delay_ms:g} ms)",
        file=sys.stderr,
        flush=True,
    )
    run_server(app, args.host, args.port, args.log_level)
    return 0


def _ray_backend(model, args):
    try:
        import ray

        from ..ray import RouterBackend, StreamRouter
    except ImportError as exc:
        raise CommandError(
            f"--ray-replicas needs the ray extra ({exc.name} is missing): pip install 'fastlstm[ray]'"
        ) from None
    if args.idle_timeout is not None or args.max_queue is not None or args.max_streams is not None:
        raise CommandError(
            "--idle-timeout, --max-queue and --max-streams apply to one process; "
            "they are not supported with --ray-replicas"
        )
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    return RouterBackend(
        StreamRouter(
            model,
            num_replicas=args.ray_replicas,
            max_batch=args.max_batch,
            max_delay=args.max_delay_ms / 1000,
            threads_per_replica=args.threads or 1,
        )
    )
