"""The network service: a FastAPI app over a :class:`~fastlstm.serving.Batcher` (``fastlstm serve``).

WebSocket ``/ws``: one connection is one stream.  The server first sends a JSON text frame
``{"sid", "input_size", "output_size"}``; then

- a binary frame of ``input_size`` little-endian float32 is one step, answered by a binary frame of
  ``output_size`` float32;
- a text frame ``{"x": [...]}`` is one step for humans, answered by ``{"y": [...]}``;
- ``{"op": "export"}`` answers ``{"state": base64}``, ``{"op": "import", "state": base64}`` and
  ``{"op": "reset"}`` answer ``{"ok": true}``;
- a refused request is answered by ``{"error": kind, "detail": message}`` (a text frame) and the
  connection stays open, except ``expired`` (idle_timeout), after which the server closes it
  with code 4410.

``/ws`` opens a new stream and closes it at disconnect; ``/ws?sid=N`` attaches to stream N (e.g. one
imported over HTTP) and leaves it open.

HTTP, for clients that cannot hold a socket: ``POST /streams`` (an ``application/octet-stream``
body imports a state) -> ``{"sid"}``; ``POST /streams/{sid}/step`` with ``{"x": [...]}`` or raw
float32 bytes, answered in kind; ``DELETE /streams/{sid}``; ``GET``/``PUT /streams/{sid}/state``
(the bytes of ``State.to_bytes``); ``POST /streams/{sid}/reset``; ``GET /metrics`` (Prometheus
text); ``GET /`` describes the model (sizes, precision) and the batcher.  Errors: 400 bad input, 404 unknown stream,
410 expired stream, 503 queue full (with ``Retry-After``).

``create_app`` takes any *backend* with the Batcher's methods (``open``, ``close``, ``reset``,
``get_state``, ``set_state``, ``prometheus``, ``input_size``, ``output_size`` and an awaitable
``step``), which is how bench/serve_load.py serves its uncoalesced baselines through this same app.
"""

from __future__ import annotations

import base64
import binascii
import json
from contextlib import asynccontextmanager
from typing import Optional

import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ..state import State
from .batcher import QueueFull, ServingError, StreamExpired, UnknownStream
from .metrics import CONTENT_TYPE

OCTET = "application/octet-stream"
WS_CLOSE_EXPIRED = 4410
_LE_F32 = np.dtype("<f4")


class BadRequest(ValueError):
    """A malformed request body or frame."""


def _error_kind(exc):
    """(kind, HTTP status) for an exception, or None when it is not the client's to see."""
    if isinstance(exc, QueueFull):
        return "queue_full", 503
    if isinstance(exc, StreamExpired):
        return "expired", 410
    if isinstance(exc, UnknownStream):
        return "unknown_stream", 404
    if isinstance(exc, (ValueError, TypeError)):
        return "bad_request", 400
    if isinstance(exc, ServingError):  # max_streams reached, shut down
        return "unavailable", 503
    return None


def _error_body(exc, kind):
    return {"error": kind, "detail": str(exc)}


def _vector(payload, size, name):
    """A float32 vector of ``size`` from raw little-endian bytes or a JSON list."""
    if isinstance(payload, (bytes, bytearray)):
        if len(payload) != 4 * size:
            raise BadRequest(f"{name}: expected {size} float32 ({4 * size} bytes), got {len(payload)} bytes")
        return np.frombuffer(payload, dtype=_LE_F32).astype(np.float32, copy=False)
    if not isinstance(payload, list):
        raise BadRequest(f"{name}: expected a list of {size} numbers")
    try:
        arr = np.asarray(payload, dtype=np.float32)
    except (ValueError, TypeError):
        raise BadRequest(f"{name}: expected a list of {size} numbers") from None
    if arr.shape != (size,):
        raise BadRequest(f"{name}: expected shape ({size},), got {arr.shape}")
    return arr


def _json_object(text):
    try:
        msg = json.loads(text)
    except ValueError as exc:
        raise BadRequest(f"expected a JSON object ({exc})") from None
    if not isinstance(msg, dict):
        raise BadRequest("expected a JSON object")
    return msg


def _state_from_b64(text):
    try:
        return State.from_bytes(base64.b64decode(text, validate=True))
    except (binascii.Error, TypeError):
        raise BadRequest("state: expected base64 of State.to_bytes()") from None


def create_app(backend, *, title="fastlstm"):
    """A FastAPI app serving ``backend`` (usually a :class:`Batcher`); shuts it down on exit."""

    @asynccontextmanager
    async def lifespan(app):
        yield
        shutdown = getattr(backend, "shutdown", None)
        if shutdown is not None:
            await run_in_threadpool(shutdown)

    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    n_in, n_out = backend.input_size, backend.output_size

    async def refused(request, exc):
        kind = _error_kind(exc)
        headers = {"Retry-After": "1"} if kind[0] == "queue_full" else None
        return JSONResponse(_error_body(exc, kind[0]), status_code=kind[1], headers=headers)

    for cls in (ServingError, ValueError, TypeError):
        app.add_exception_handler(cls, refused)

    @app.get("/")
    async def describe():
        info = {"input_size": n_in, "output_size": n_out, "streams": len(backend)}
        for key in ("precision", "max_batch", "max_delay", "max_queue", "idle_timeout"):
            if hasattr(backend, key):
                info[key] = getattr(backend, key)
        return info

    @app.get("/metrics")
    async def metrics():
        return Response(backend.prometheus(), media_type=CONTENT_TYPE)

    @app.post("/streams", status_code=201)
    async def open_stream(request: Request):
        body = await request.body()
        state = State.from_bytes(body) if body else None
        sid = await run_in_threadpool(backend.open)
        if state is not None:
            try:
                await run_in_threadpool(backend.set_state, sid, state)
            except Exception:
                await run_in_threadpool(backend.close, sid)
                raise
        return {"sid": sid}

    @app.post("/streams/{sid}/step")
    async def step(sid: int, request: Request):
        body = await request.body()
        if request.headers.get("content-type", "").startswith(OCTET):
            y = await backend.step(sid, _vector(body, n_in, "body"))
            return Response(y.astype(_LE_F32, copy=False).tobytes(), media_type=OCTET)
        y = await backend.step(sid, _vector(_json_object(body).get("x"), n_in, "x"))
        return {"y": y.tolist()}

    @app.delete("/streams/{sid}", status_code=204)
    async def close_stream(sid: int):
        await run_in_threadpool(backend.close, sid)
        return Response(status_code=204)

    @app.post("/streams/{sid}/reset", status_code=204)
    async def reset_stream(sid: int):
        await run_in_threadpool(backend.reset, sid)
        return Response(status_code=204)

    @app.get("/streams/{sid}/state")
    async def export_state(sid: int):
        state = await run_in_threadpool(backend.get_state, sid)
        return Response(state.to_bytes(), media_type=OCTET)

    @app.put("/streams/{sid}/state", status_code=204)
    async def import_state(sid: int, request: Request):
        state = State.from_bytes(await request.body())
        await run_in_threadpool(backend.set_state, sid, state)
        return Response(status_code=204)

    @app.websocket("/ws")
    async def websocket(ws: WebSocket, sid: Optional[int] = None):
        await ws.accept()
        owned = sid is None
        try:
            if owned:
                sid = await run_in_threadpool(backend.open)
            else:
                await run_in_threadpool(backend.get_state, sid)  # refuses an unknown or expired id
        except Exception as exc:  # noqa: BLE001 - told to the client, then the socket closes
            await _ws_refuse(ws, exc)
            return
        try:
            await ws.send_text(json.dumps({"sid": sid, "input_size": n_in, "output_size": n_out}))
            await _ws_loop(ws, backend, sid, n_in)
        except WebSocketDisconnect:
            pass
        except StreamExpired as exc:
            await _ws_refuse(ws, exc)
            owned = False
        finally:
            if owned:
                try:
                    await run_in_threadpool(backend.close, sid)
                except (UnknownStream, StreamExpired):  # closed meanwhile (HTTP DELETE, idle_timeout)
                    pass

    return app


def run_server(app, host="127.0.0.1", port=8000, log_level="warning"):
    """Serve ``app`` with uvicorn (blocks): the settings ``fastlstm serve`` and the load test share."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, ws="websockets-sansio", ws_max_size=1 << 20)


async def _ws_loop(ws, backend, sid, n_in):
    """Serve one connection's frames in order: a stream's steps are answered in the order sent."""
    step = backend.step
    while True:
        msg = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(msg.get("code", 1000))
        data = msg.get("bytes")
        try:
            if data is not None:
                y = await step(sid, _vector(data, n_in, "frame"))
                await ws.send_bytes(y.astype(_LE_F32, copy=False).tobytes())
            else:
                await ws.send_text(json.dumps(await _ws_json(backend, sid, msg.get("text") or "", n_in)))
        except StreamExpired:
            raise
        except Exception as exc:  # noqa: BLE001 - a refused frame is answered, the socket stays
            kind = _error_kind(exc)
            if kind is None:
                raise
            await ws.send_text(json.dumps(_error_body(exc, kind[0])))


async def _ws_json(backend, sid, text, n_in):
    msg = _json_object(text)
    op = msg.get("op", "step" if "x" in msg else None)
    if op == "step":
        return {"y": (await backend.step(sid, _vector(msg.get("x"), n_in, "x"))).tolist()}
    if op == "export":
        state = await run_in_threadpool(backend.get_state, sid)
        return {"state": base64.b64encode(state.to_bytes()).decode("ascii")}
    if op == "import":
        await run_in_threadpool(backend.set_state, sid, _state_from_b64(msg.get("state")))
        return {"ok": True}
    if op == "reset":
        await run_in_threadpool(backend.reset, sid)
        return {"ok": True}
    raise BadRequest(f"op: expected one of step, export, import, reset (or a frame with 'x'), got {op!r}")


async def _ws_refuse(ws, exc):
    kind = _error_kind(exc) or ("internal", 500)
    try:
        await ws.send_text(json.dumps(_error_body(exc, kind[0])))
        await ws.close(code=WS_CLOSE_EXPIRED if kind[0] == "expired" else 1008)
    except Exception:  # noqa: BLE001 - the client may already be gone
        pass
