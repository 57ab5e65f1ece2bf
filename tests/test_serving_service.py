"""``fastlstm serve`` end to end: the real server in a subprocess on a free loopback port, real
WebSocket (websockets) and HTTP (httpx) clients.

- 200 concurrent streams (100 WebSocket, 100 HTTP, binary and JSON frames) each equal a lone
  ``Stream`` fed the same inputs, bit for bit (a pool tick is batch invariant).
- A hand-off: a stream's state exported from one server process and imported into another continues
  bit-identically (each server steps one stream at a time, so every tick is the single-row kernel
  a lone Stream runs); then the second server's idle_timeout closes it and the next step says so.
- Refused requests (bad frames, queue full) get clear errors and the connection stays usable.
"""

import asyncio
import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import fastlstm
import oracle
from checks import CHILD_CWD, child_env

httpx = pytest.importorskip("httpx")  # the serve extra, installed by CI's test extra
websockets = pytest.importorskip("websockets")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

I, H, O = 6, 24, 4
OCTET = {"content-type": "application/octet-stream"}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    layers, head = oracle.random_stack(np.random.default_rng(11), I, H, 2, head_size=O)
    path = str(tmp_path_factory.mktemp("serve") / "model.safetensors")
    fastlstm.Model(layers, head).save(path)
    return path


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m fastlstm serve`` in a subprocess; waits until it answers."""

    def __init__(self, model_path, *args):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastlstm", "serve", model_path, "--port", str(self.port), *map(str, args)],
            env=child_env(),
            cwd=CHILD_CWD,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(self.url + "/", timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"server did not start: {self.proc.stdout.read()}") from None
                time.sleep(0.1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _lone(model, xs, state=None):
    s = model.stream()
    if state is not None:
        s.state = state
    return np.stack([s.step(x) for x in xs])


async def _ws_stream(url, xs, as_json):
    async with websockets.connect(url) as ws:
        hello = json.loads(await ws.recv())
        assert (hello["input_size"], hello["output_size"]) == (I, O)
        ys = []
        for x in xs:
            if as_json:
                await ws.send(json.dumps({"x": x.tolist()}))
                ys.append(json.loads(await ws.recv())["y"])
            else:
                await ws.send(x.astype("<f4").tobytes())
                ys.append(np.frombuffer(await ws.recv(), "<f4"))
        return np.array(ys, np.float32)


async def _http_stream(client, xs, as_json):
    sid = (await client.post("/streams")).json()["sid"]
    ys = []
    for x in xs:
        if as_json:
            r = await client.post(f"/streams/{sid}/step", json={"x": x.tolist()})
            r.raise_for_status()
            ys.append(r.json()["y"])
        else:
            r = await client.post(f"/streams/{sid}/step", content=x.astype("<f4").tobytes(), headers=OCTET)
            r.raise_for_status()
            ys.append(np.frombuffer(r.content, "<f4"))
    assert (await client.delete(f"/streams/{sid}")).status_code == 204
    return np.array(ys, np.float32)


def test_200_concurrent_websocket_and_http_streams_match_lone_streams(model_path):
    model = fastlstm.load(model_path)
    xs = np.random.default_rng(3).standard_normal((200, 8, I)).astype(np.float32)
    with Server(model_path, "--max-batch", 64, "--max-delay-ms", 2) as srv:

        async def main():
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
            async with httpx.AsyncClient(base_url=srv.url, limits=limits, timeout=30) as client:
                jobs = [_ws_stream(srv.ws_url, xs[k], as_json=k % 4 == 0) for k in range(100)]
                jobs += [_http_stream(client, xs[k], as_json=k % 4 == 1) for k in range(100, 200)]
                return await asyncio.gather(*jobs)

        got = asyncio.run(main())
        metrics = httpx.get(srv.url + "/metrics").text
    for k in range(200):
        np.testing.assert_array_equal(got[k], _lone(model, xs[k]), err_msg=f"stream {k}")
    values = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line and not line.startswith("#"))
    assert float(values["fastlstm_batcher_steps_total"]) == 1600
    ticks = float(values["fastlstm_batcher_ticks_total"])
    assert ticks < 1600 and float(values['fastlstm_batcher_batch_size_bucket{le="4"}']) < ticks, (
        "the server never stepped more than 4 streams in one tick"
    )
    assert float(values["fastlstm_batcher_open_streams"]) == 0


def test_hand_off_between_server_processes_continues_bit_identically(model_path):
    model = fastlstm.load(model_path)
    xs = np.random.default_rng(4).standard_normal((12, I)).astype(np.float32)
    with Server(model_path) as a, Server(model_path, "--idle-timeout", 1) as b:

        async def on_a():
            async with websockets.connect(a.ws_url) as ws:
                await ws.recv()
                ys = []
                for x in xs[:7]:
                    await ws.send(x.astype("<f4").tobytes())
                    ys.append(np.frombuffer(await ws.recv(), "<f4"))
                await ws.send(json.dumps({"op": "export"}))
                return ys, json.loads(await ws.recv())["state"]

        first, blob_b64 = asyncio.run(on_a())
        import base64

        blob = base64.b64decode(blob_b64)
        r = httpx.post(b.url + "/streams", content=blob, headers=OCTET)
        assert r.status_code == 201
        sid = r.json()["sid"]
        assert httpx.get(f"{b.url}/streams/{sid}/state").content == blob  # the bytes arrived intact
        rest = []
        for x in xs[7:]:
            r = httpx.post(f"{b.url}/streams/{sid}/step", content=x.astype("<f4").tobytes(), headers=OCTET)
            rest.append(np.frombuffer(r.content, "<f4"))
        assert np.array_equal(np.stack(first + rest), _lone(model, xs))

        time.sleep(1.6)  # idle_timeout=1 on b
        r = httpx.post(f"{b.url}/streams/{sid}/step", json={"x": xs[0].tolist()})
        assert r.status_code == 410 and r.json()["error"] == "expired"
        assert "idle_timeout=1 s" in r.json()["detail"]


def test_refused_requests_get_clear_errors_and_the_socket_stays_open(model_path):
    x = np.ones(I, np.float32)
    with Server(model_path, "--max-batch", 8, "--max-delay-ms", 400, "--max-queue", 2) as srv:

        async def main():
            async with websockets.connect(srv.ws_url) as ws:
                await ws.recv()
                await ws.send(b"\0" * 5)
                bad = json.loads(await ws.recv())
                await ws.send(json.dumps({"op": "nope"}))
                bad_op = json.loads(await ws.recv())
                await ws.send(x.tobytes())
                ok = np.frombuffer(await ws.recv(), "<f4")
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
                sids = [(await client.post("/streams")).json()["sid"] for _ in range(3)]
                queued = [
                    asyncio.ensure_future(client.post(f"/streams/{s}/step", json={"x": x.tolist()})) for s in sids[:2]
                ]
                await asyncio.sleep(0.15)  # both wait out max_delay in the queue
                full = await client.post(f"/streams/{sids[2]}/step", json={"x": x.tolist()})
                done = await asyncio.gather(*queued)
                state = (await client.get(f"/streams/{sids[2]}/state")).content
                missing = await client.post("/streams/999999/step", json={"x": x.tolist()})
            return bad, bad_op, ok, full, done, state, missing

        bad, bad_op, ok, full, done, state, missing = asyncio.run(main())
    assert bad == {"error": "bad_request", "detail": f"frame: expected {I} float32 ({4 * I} bytes), got 5 bytes"}
    assert bad_op["error"] == "bad_request" and "op" in bad_op["detail"]
    model = fastlstm.load(model_path)
    assert np.array_equal(ok, _lone(model, x[None])[0])
    assert full.status_code == 503 and full.json()["error"] == "queue_full" and full.headers["retry-after"]
    assert [r.status_code for r in done] == [200, 200]
    assert fastlstm.State.from_bytes(state) == model.stream().state  # the refused step changed nothing
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_stream"
