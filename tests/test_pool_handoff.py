"""State hand-off: a stream's state moved through bytes to a new Python process continues bit-identically,
and a state from a model of another shape is refused everywhere.

"Bit-identically" is meant for the same kind of object stepping the same batch shape: the child
continues a pooled stream in a pool step of the same N rows (in another pool, other slots), and a
Stream in a Stream of the same batch size, so the arithmetic is the same and np.array_equal applies.
"""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import fastlstm
import oracle
from checks import assert_state_equal, child_env

I, H, L, O = 7, 20, 2, 4

CHILD = r"""
import pickle, sys
import numpy as np
import fastlstm

d = sys.argv[1]
with open(f"{d}/model.pkl", "rb") as f:
    model = pickle.load(f)
with open(f"{d}/states.pkl", "rb") as f:
    blobs = pickle.load(f)                      # dict of name -> bytes (or list of bytes)
xs = np.load(f"{d}/inputs.npz")
out = {}

# pooled streams: a fresh pool, other slots (open and close some first), same rows per step
pool = model.pool(32)
junk = [pool.open() for _ in range(11)]
for s in junk[::2]:
    pool.close(s)
ids = []
for blob in blobs["pool"]:
    sid = pool.open()
    pool.set_state(sid, fastlstm.State.from_bytes(blob))
    ids.append(sid)
out["pool_y"] = np.stack([pool.step(ids, x) for x in xs["pool"]])
out["pool_final"] = [pool.get_state(s).to_bytes() for s in ids]

# an unbatched Stream
st = model.stream()
st.state = fastlstm.State.from_bytes(blobs["stream"])
out["stream_y"] = np.stack([st.step(x) for x in xs["stream"]])
out["stream_final"] = st.state.to_bytes()

# a batched Stream (B=3), stepped with step_many in uneven chunks
sb = model.stream(3)
sb.state = fastlstm.State.from_bytes(blobs["batched"])
out["batched_y"] = np.concatenate([sb.step_many(xs["batched"][a:b]) for a, b in ((0, 1), (1, 6), (6, 20))])
out["batched_final"] = sb.state.to_bytes()

# a pooled stream's state continued in a Stream (unbatched)
s2 = model.stream()
s2.state = fastlstm.State.from_bytes(blobs["pool"][0])
out["pool_to_stream_y"] = np.stack([s2.step(x) for x in xs["stream"]])

out["pid"] = __import__("os").getpid()
with open(f"{d}/result.pkl", "wb") as f:
    pickle.dump(out, f)
"""


def test_state_moves_to_a_new_process_and_continues_bit_identically(tmp_path, rng):
    layers, head = oracle.random_stack(np.random.default_rng(17), I, H, L, head_size=O)
    model = fastlstm.Model(layers, head)

    # Warm up some state in this process.
    pool = model.pool(16)
    ids = [pool.open() for _ in range(6)]
    for _ in range(30):
        pool.step(ids, rng.standard_normal((6, I)))
    moved = [ids[4], ids[1], ids[3]]  # any subset, any order
    stream = model.stream()
    batched = model.stream(3)
    for _ in range(30):
        stream.step(rng.standard_normal(I))
        batched.step(rng.standard_normal((3, I)))

    blobs = {
        "pool": [pool.get_state(s).to_bytes() for s in moved],
        "stream": stream.state.to_bytes(),
        "batched": batched.state.to_bytes(),
    }
    xs = {
        "pool": rng.standard_normal((20, 3, I)).astype(np.float32),
        "stream": rng.standard_normal((20, I)).astype(np.float32),
        "batched": rng.standard_normal((20, 3, I)).astype(np.float32),
    }
    with open(tmp_path / "model.pkl", "wb") as f:
        pickle.dump(model, f)
    with open(tmp_path / "states.pkl", "wb") as f:
        pickle.dump(blobs, f)
    np.savez(tmp_path / "inputs.npz", **xs)
    pool_to_stream = model.stream()
    pool_to_stream.state = pool.get_state(moved[0])

    # cwd=tmp_path: with -c the child puts its cwd first on sys.path, where a source checkout's
    # fastlstm/ (no compiled kernels under a regular install) would shadow the installed one.
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        env=child_env(),
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "result.pkl", "rb") as f:
        child = pickle.load(f)
    assert child["pid"] != os.getpid()

    # Continue here with the same kind of object and batch shape.
    pool_y = np.stack([pool.step(moved, x) for x in xs["pool"]])
    stream_y = np.stack([stream.step(x) for x in xs["stream"]])
    batched_y = np.concatenate([batched.step_many(xs["batched"][a:b]) for a, b in ((0, 1), (1, 6), (6, 20))])
    p2s_y = np.stack([pool_to_stream.step(x) for x in xs["stream"]])

    assert np.array_equal(child["pool_y"], pool_y)
    assert np.array_equal(child["stream_y"], stream_y)
    assert np.array_equal(child["batched_y"], batched_y)
    assert np.array_equal(child["pool_to_stream_y"], p2s_y)
    for blob, sid in zip(child["pool_final"], moved):
        assert blob == pool.get_state(sid).to_bytes()
        assert_state_equal(fastlstm.State.from_bytes(blob), pool.get_state(sid))
    assert child["stream_final"] == stream.state.to_bytes()
    assert child["batched_final"] == batched.state.to_bytes()
    # and the states did move: continuing from zeros would give something else
    fresh = model.stream()
    assert not np.array_equal(np.stack([fresh.step(x) for x in xs["stream"]]), stream_y)


def test_bytes_round_trip_is_exact_and_carries_the_signature(rng):
    layers, head = oracle.random_stack(np.random.default_rng(3), I, H, L, head_size=O, proj_size=9)
    model = fastlstm.Model(layers, head)
    pool = model.pool(4)
    sid = pool.open()
    pool.step([sid], rng.standard_normal((1, I)) * 3)
    s = pool.get_state(sid)
    blob = s.to_bytes()
    back = fastlstm.State.from_bytes(blob)
    assert back == s and back.signature == s.signature and back.to_bytes() == blob
    assert [a.shape for a in back.h] == [(9,), (9,)] and [a.shape for a in back.c] == [(H,), (H,)]
    for cut in (0, 5, len(blob) // 2, len(blob) - 1):
        with pytest.raises(ValueError):
            fastlstm.State.from_bytes(blob[:cut])


def _other_models():
    rng = lambda: np.random.default_rng(5)  # noqa: E731
    return {
        "fewer layers": fastlstm.Model(*oracle.random_stack(rng(), I, H, 1, head_size=O)),
        "wider hidden": fastlstm.Model(*oracle.random_stack(rng(), I, H + 4, L, head_size=O)),
        "other input": fastlstm.Model(*oracle.random_stack(rng(), I + 1, H, L, head_size=O)),
        "projection": fastlstm.Model(*oracle.random_stack(rng(), I, H, L, head_size=O, proj_size=H // 2)),
        # same state shapes per layer, but a different input size of layer 0
        "same state shapes": fastlstm.Model(*oracle.random_stack(rng(), I + 3, H, L, head_size=O)),
    }


@pytest.mark.parametrize("name", list(_other_models()))
def test_state_from_another_model_is_refused(name, rng):
    model = fastlstm.Model(*oracle.random_stack(np.random.default_rng(5), I, H, L, head_size=O))
    other = _other_models()[name]
    foreign_pool = other.pool(2)
    fsid = foreign_pool.open()
    foreign_pool.step([fsid], rng.standard_normal((1, other.input_size)))
    foreign = foreign_pool.get_state(fsid)
    foreign_bytes = fastlstm.State.from_bytes(foreign.to_bytes())
    foreign_batched = other.stream(2).state

    pool = model.pool(4)
    sid = pool.open()
    pool.step([sid], rng.standard_normal((1, I)))
    before = pool.get_state(sid)
    stream = model.stream()
    stream.step(rng.standard_normal(I))
    stream_before = stream.state
    sb = model.stream(2)
    sb.step(rng.standard_normal((2, I)))
    sb_before = sb.state

    for st_ in (foreign, foreign_bytes):
        with pytest.raises(ValueError):
            pool.set_state(sid, st_)
        with pytest.raises(ValueError):
            stream.state = st_
    with pytest.raises(ValueError):
        sb.state = foreign_batched
    with pytest.raises(ValueError):
        model.predict(rng.standard_normal((3, I)), foreign)
    assert_state_equal(pool.get_state(sid), before)
    assert_state_equal(stream.state, stream_before)
    assert_state_equal(sb.state, sb_before)
    # the model's own states still go in
    pool.set_state(sid, stream_before)
    stream.state = before
    assert_state_equal(pool.get_state(sid), stream_before)
