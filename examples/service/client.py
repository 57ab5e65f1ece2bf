"""Clients of the fastlstm service (examples/service/server.py or ``fastlstm serve``).

1. A WebSocket stream: binary float32 frames in, binary float32 frames out, one connection per stream.
2. JSON frames for humans, and a state export.
3. A hand-off over HTTP: the exported state imported into a new stream that continues where the
   WebSocket stream stopped (on this server or on another one).

    python examples/service/client.py [http://127.0.0.1:8000]
"""

import asyncio
import base64
import json
import sys

import httpx
import numpy as np
import websockets

URL = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"


async def main():
    info = httpx.get(URL + "/").json()
    n_in = info["input_size"]
    xs = np.random.default_rng(0).standard_normal((10, n_in)).astype("<f4")
    async with websockets.connect(URL.replace("http", "ws", 1) + "/ws") as ws:
        hello = json.loads(await ws.recv())  # {"sid", "input_size", "output_size"}
        for x in xs[:5]:
            await ws.send(x.tobytes())  # one step: input_size float32
            print("ws  y =", np.frombuffer(await ws.recv(), "<f4"))
        await ws.send(json.dumps({"x": xs[5].tolist()}))  # the same, in JSON
        print("ws  y =", json.loads(await ws.recv())["y"])
        await ws.send(json.dumps({"op": "export"}))
        state = base64.b64decode(json.loads(await ws.recv())["state"])
    print(f"stream {hello['sid']} closed with the socket; its state ({len(state)} bytes) lives on:")
    with httpx.Client(base_url=URL) as http:
        sid = http.post("/streams", content=state, headers={"content-type": "application/octet-stream"}).json()["sid"]
        for x in xs[6:]:
            print("http y =", http.post(f"/streams/{sid}/step", json={"x": x.tolist()}).json()["y"])
        http.delete(f"/streams/{sid}")
        print(http.get("/metrics").text.splitlines()[2])  # fastlstm_batcher_steps_total ...


asyncio.run(main())
