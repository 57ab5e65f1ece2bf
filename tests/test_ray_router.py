"""fastlstm.ray on a local Ray cluster (``ray.init(num_cpus=2)``): the router against lone Streams,
rescale 1 -> 2 -> 1 and a killed replica mid-run, and offline predict over a Ray Dataset.

Every check is bit for bit against lone Streams: a ``pool.step`` tick of any number of streams
computes each one's outputs exactly as a lone Stream does (tests/test_batch_invariance.py), so a
lost or repeated step, or a state that moved inexactly, cannot hide -- also after a failover, whose
replays of different streams share ticks.
"""

import os

import numpy as np
import pytest

import fastlstm
import oracle
from checks import CHILD_CWD

ray = pytest.importorskip("ray")  # the ray extra, installed by CI's test extra
from fastlstm.ray import StreamRouter, predict_dataset  # noqa: E402

I, H, O = 4, 16, 2
MODEL = fastlstm.Model(*oracle.random_stack(np.random.default_rng(5), I, H, 2, head_size=O))


@pytest.fixture(scope="module")
def local_ray():
    # Ray puts the driver's working directory on its workers' sys.path; from the checkout that is the
    # source tree, whose fastlstm (no compiled kernels) would shadow the installed one.
    here = os.getcwd()
    os.chdir(CHILD_CWD)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    finally:
        os.chdir(here)
    yield
    ray.shutdown()


def _lone(xs):
    s = MODEL.stream()
    return np.stack([s.step(x) for x in xs]), s.state


def test_200_streams_through_two_replicas_match_lone_streams(local_ray):
    xs = np.random.default_rng(0).standard_normal((200, 5, I)).astype(np.float32)
    router = StreamRouter(MODEL, num_replicas=2, checkpoint_every=3)
    try:
        sids = [router.open() for _ in range(200)]
        assert sorted(router.placement().values()).count(0) == 100  # balanced
        got = np.stack([router.step_many(sids, xs[:, t]) for t in range(5)], axis=1)
        assert all(router.steps(s) == 5 for s in sids)
    finally:
        router.shutdown()
    for k in range(200):
        np.testing.assert_array_equal(got[k], _lone(xs[k])[0])


def _run_sequential(router, sids, xs, t0, t1):
    out = np.zeros((len(sids), t1 - t0, O), np.float32)
    for t in range(t0, t1):
        for k, s in enumerate(sids):
            out[k, t - t0] = router.step(s, xs[k, t])
    return out


def test_rescale_1_2_1_mid_run_is_bit_identical(local_ray):
    xs = np.random.default_rng(1).standard_normal((12, 9, I)).astype(np.float32)
    router = StreamRouter(MODEL, num_replicas=1, checkpoint_every=4)
    try:
        sids = [router.open() for _ in range(12)]
        parts = [_run_sequential(router, sids, xs, 0, 3)]
        router.scale(2)
        assert sorted(router.placement().values()).count(1) == 6  # half of them moved
        parts.append(_run_sequential(router, sids, xs, 3, 6))
        router.scale(1)
        assert set(router.placement().values()) == {0} and router.num_replicas == 1
        parts.append(_run_sequential(router, sids, xs, 6, 9))
        got = np.concatenate(parts, axis=1)
        states = [router.get_state(s) for s in sids]
        assert [router.steps(s) for s in sids] == [9] * 12
    finally:
        router.shutdown()
    for k in range(12):
        want, state = _lone(xs[k])
        assert np.array_equal(got[k], want), f"stream {k}"
        assert states[k] == state


def test_killed_replica_resumes_with_no_lost_or_repeated_step(local_ray):
    xs = np.random.default_rng(2).standard_normal((10, 11, I)).astype(np.float32)
    router = StreamRouter(MODEL, num_replicas=2, checkpoint_every=4)
    try:
        sids = [router.open() for _ in range(10)]
        first = _run_sequential(router, sids, xs, 0, 6)  # checkpoints at step 4, 2 steps logged
        victims = [s for s, r in router.placement().items() if r == 0]
        ray.kill(router.replica(0), no_restart=True)
        rest = _run_sequential(router, sids, xs, 6, 11)
        got = np.concatenate([first, rest], axis=1)
        states = [router.get_state(s) for s in sids]
        assert [router.steps(s) for s in sids] == [11] * 10
        assert len(router.failovers) == 1 and router.failovers[0][:2] == (0, len(victims))
        # the restored replica holds its streams at exactly 2 replayed + 5 new steps
        actor = router.replica(0)
        rsids = {s: router._entries[s].rsid for s in victims}
        assert [ray.get(actor.steps.remote(rsids[s])) for s in victims] == [7] * len(victims)
    finally:
        router.shutdown()
    for k in range(10):  # the replays of different streams shared ticks: still exact
        want, state = _lone(xs[k])
        assert np.array_equal(got[k, :6], want[:6]), f"stream {k}"
        np.testing.assert_array_equal(got[k, 6:], want[6:], err_msg=f"stream {k}")
        for a, b in zip(states[k].h + states[k].c, state.h + state.c):
            np.testing.assert_array_equal(a, b)


def test_predict_dataset_equals_predict_per_sequence(local_ray):
    rng = np.random.default_rng(3)
    seqs = [rng.standard_normal((int(rng.integers(3, 9)), I)).astype(np.float32) for _ in range(40)]
    ds = ray.data.from_items([{"id": k, "x": s} for k, s in enumerate(seqs)])
    rows = predict_dataset(MODEL, ds, num_actors=2, batch_size=16).take_all()
    assert sorted(r["id"] for r in rows) == list(range(40))
    for r in rows:
        want = MODEL.predict(seqs[r["id"]])
        np.testing.assert_array_equal(np.asarray(r["y"], np.float32), want)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_replicas_and_dataset_actors_run_the_model_precision(local_ray, precision):
    """The model pickles to the replicas and the map_batches actors with its precision: the router
    and predict_dataset give the lone low-precision Stream's and predict's bits, not fp32's."""
    model = MODEL.with_precision(precision)
    xs = np.random.default_rng(6).standard_normal((4, 6, I)).astype(np.float32)
    router = StreamRouter(model, num_replicas=2)
    try:
        sids = [router.open() for _ in range(4)]
        got = np.stack([router.step_many(sids, xs[:, t]) for t in range(6)], axis=1)
        state = router.get_state(sids[0])
    finally:
        router.shutdown()
    assert state.signature[-1] == ("precision", precision)
    want = np.stack([model.predict(x) for x in xs])
    assert np.array_equal(got, want)
    assert not np.array_equal(got, np.stack([MODEL.predict(x) for x in xs]))
    ds = ray.data.from_items([{"id": k, "x": x} for k, x in enumerate(xs)])
    for r in predict_dataset(model, ds, num_actors=1, batch_size=4).take_all():
        np.testing.assert_array_equal(np.asarray(r["y"], np.float32), want[r["id"]])


def test_the_serving_protocol_in_front_of_the_router(local_ray):
    """The WebSocket/HTTP app of ``fastlstm serve`` over RouterBackend: a client cannot tell."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from fastlstm.ray import RouterBackend
    from fastlstm.serving import create_app

    xs = np.random.default_rng(4).standard_normal((6, I)).astype(np.float32)
    router = StreamRouter(MODEL, num_replicas=2)
    with TestClient(create_app(RouterBackend(router))) as client:
        with client.websocket_connect("/ws") as ws:
            ws.receive_json()
            got = []
            for x in xs[:3]:
                ws.send_bytes(x.astype("<f4").tobytes())
                got.append(np.frombuffer(ws.receive_bytes(), "<f4"))
            ws.send_json({"op": "export"})
            blob = ws.receive_json()["state"]
        import base64

        sid = client.post("/streams").json()["sid"]
        assert client.put(f"/streams/{sid}/state", content=base64.b64decode(blob)).status_code == 204
        for x in xs[3:]:
            got.append(np.array(client.post(f"/streams/{sid}/step", json={"x": x.tolist()}).json()["y"], np.float32))
        assert client.get(f"/streams/{sid + 999}/state").status_code == 404
    assert np.array_equal(np.stack(got), _lone(xs)[0])


def test_kill_during_concurrent_steps_replays_waiting_steps_once(local_ray):
    """Steps of many streams in flight and waiting when the replica dies: each is applied once."""
    import threading
    import time

    xs = np.random.default_rng(6).standard_normal((30, 10, I)).astype(np.float32)
    router = StreamRouter(MODEL, num_replicas=2, checkpoint_every=3)
    try:
        sids = [router.open() for _ in range(30)]
        got = []
        runner = threading.Thread(target=lambda: got.extend(router.step_many(sids, xs[:, t]) for t in range(10)))
        runner.start()
        while router.steps(sids[-1]) < 4:  # kill while rounds 5..10 are still to come
            time.sleep(0.001)
        ray.kill(router.replica(1), no_restart=True)
        runner.join()
        got = np.stack(got, axis=1)
        states = [router.get_state(s) for s in sids]
        assert [router.steps(s) for s in sids] == [10] * 30
        assert len(router.failovers) == 1
    finally:
        router.shutdown()
    for k in range(30):
        want, state = _lone(xs[k])
        np.testing.assert_array_equal(got[k], want, err_msg=f"stream {k}")
        for a, b in zip(states[k].h + states[k].c, state.h + state.c):
            np.testing.assert_array_equal(a, b)
