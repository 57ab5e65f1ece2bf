"""State bytes: version 3 (every layer's state, CRC-32) round-trips exactly and refuses corruption;
version-1 bytes (h and c only, no checksum) written by earlier releases still load."""

import json
import struct

import numpy as np
import pytest
from test_pool_mixed import MODEL as MIXED

import fastlstm
import oracle


def _v1_bytes(h, c, signature):
    """The version-1 layout, written out by hand: header, JSON, h then c floats."""
    meta = {"h": [list(a.shape) for a in h], "c": [list(a.shape) for a in c], "signature": [list(s) for s in signature]}
    text = json.dumps(meta, separators=(",", ":")).encode()
    body = b"".join(np.asarray(a, "<f4").tobytes() for a in h + c)
    return struct.pack("<8sHI", b"FLSTATE\0", 1, len(text)) + text + body


def test_version1_bytes_still_load(rng):
    layers, head = oracle.random_stack(rng, 4, 6, 2, head_size=2)
    model = fastlstm.Model(layers, head)
    st = model.stream()
    x = rng.standard_normal((20, 4)).astype(np.float32)
    for t in range(10):
        st.step(x[t])
    s = st.state
    old = _v1_bytes(s.h, s.c, [(4, 6, 6, 1), (6, 6, 6, 1)])
    back = fastlstm.State.from_bytes(old)
    assert back == s
    other = model.stream()
    other.state = back
    np.testing.assert_array_equal(
        np.stack([other.step(x[t]) for t in range(10, 20)]), np.stack([st.step(x[t]) for t in range(10, 20)])
    )


def test_version3_holds_every_layer(rng):
    st = MIXED.stream(2)
    for _ in range(7):
        st.step(rng.standard_normal((2, 3)).astype(np.float32))
    s = st.state
    assert len(s.buffers) == 3 and [b.shape for b in s.buffers] == [(2, 12), (2, 33), (2, 14)]
    data = s.to_bytes()
    assert struct.unpack_from("<H", data, 8)[0] == 3
    back = fastlstm.State.from_bytes(data)
    assert back == s and back.to_bytes() == data
    fresh = MIXED.stream(2)
    fresh.state = back
    x = rng.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(fresh.step(x), st.step(x))


def test_version3_refuses_corruption(rng):
    data = bytearray(MIXED.stream().state.to_bytes())
    for where in (20, len(data) // 2, len(data) - 5):
        bad = bytearray(data)
        bad[where] ^= 0x10
        with pytest.raises(ValueError, match="checksum|corrupt"):
            fastlstm.State.from_bytes(bytes(bad))
    with pytest.raises(ValueError, match="checksum|truncated"):
        fastlstm.State.from_bytes(bytes(data[:-3]))
    future = bytearray(data)
    future[8:10] = struct.pack("<H", 9)
    with pytest.raises(ValueError, match="version 9 is not supported"):
        fastlstm.State.from_bytes(bytes(future))


def test_state_of_another_layer_mix_is_refused(rng):
    gru_only = fastlstm.Model(MIXED.layers[1:2])
    with pytest.raises(ValueError, match="another shape"):
        gru_only.stream().state = MIXED.stream().state
    with pytest.raises(ValueError, match="expected 3 layer buffers"):
        MIXED.stream().state = fastlstm.State(MIXED.stream().state.h, MIXED.stream().state.c)
    s = gru_only.stream().state
    assert s.c[0].shape == (0,)
    gru_only.stream().state = fastlstm.State(h=s.h)  # c may be left out without an LSTM
