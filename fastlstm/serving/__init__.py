"""Serving live streams: :class:`Batcher` coalesces concurrent steps of many streams into batched
``StreamPool.step`` calls; :func:`create_app` (needs ``pip install fastlstm[serve]``) wraps it in a
FastAPI service with WebSocket and HTTP endpoints, state hand-off and Prometheus ``/metrics``.

    >>> batcher = fastlstm.serving.Batcher(model, max_batch=256, max_delay=0.002)
    >>> sid = batcher.open()
    >>> y = await batcher.step(sid, x)          # or batcher.step_sync(sid, x) from a thread
"""

from .batcher import Batcher, QueueFull, ServingError, StreamClosed, StreamExpired, UnknownStream
from .metrics import BatcherMetrics, Histogram


def create_app(backend, **kwargs):
    """The FastAPI service over ``backend`` (a Batcher); see :mod:`fastlstm.serving.app`."""
    from .app import create_app as _create_app

    return _create_app(backend, **kwargs)


__all__ = [
    "Batcher",
    "QueueFull",
    "ServingError",
    "StreamClosed",
    "StreamExpired",
    "UnknownStream",
    "BatcherMetrics",
    "Histogram",
    "create_app",
]
