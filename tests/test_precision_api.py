"""The precision option around the kernels (issue 15): ``Model(precision=)``, ``with_precision``,
the loaders' ``precision=``, streams and pools, ``State`` signatures, the native file format, pickling
and the command line.

What a bf16 or int8 model computes is checked against the float64 oracle elsewhere
(tests/test_precision_*.py); here each entry point must carry the precision it was given: a model
of another precision must give other outputs than fp32 (within the bf16/int8 error of a small
model), and the same outputs, bit for bit, wherever the same model travels (pickle, file, stream).
Stored bf16 weights are checked against torch's own bfloat16 rounding.
"""

import json
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

import fastlstm
import fastlstm.loaders as loaders
import oracle
from checks import CHILD_CWD, child_env
from fastlstm import layers as L
from fastlstm.data import MODEL_PATH
from fastlstm.loaders.native import _digest
from fastlstm.loaders.safetensors_io import bf16_bits, encode_safetensors

torch = pytest.importorskip("torch")

I, H, O = 4, 32, 3
LOWP = ("bf16", "int8")
#: How far a small bf16/int8 model's outputs may move from fp32 (bounded tanh-scale outputs, 30 steps).
LOWP_BOUND = 5e-2


def _layers(seed=0):
    layers, head = oracle.random_stack(np.random.default_rng(seed), I, H, 2, head_size=O)
    return layers, head


FP32 = fastlstm.Model(*_layers())
X = np.random.default_rng(1).standard_normal((30, 2, I)).astype(np.float32)


def _model(precision):
    return fastlstm.Model(*_layers(), precision=precision)


def _assert_other_precision(model, precision):
    """``model`` computes at ``precision``: not fp32's outputs, but close to them."""
    assert model.precision == precision
    y, ref = model.predict(X), FP32.predict(X)
    assert not np.array_equal(y, ref), f"a {precision} model gave fp32's outputs"
    assert np.max(np.abs(y - ref)) < LOWP_BOUND


# --------------------------------------------------------------------------- Model


def test_precisions_are_exported():
    assert fastlstm.PRECISIONS == ("fp32", "bf16", "int8")
    assert "PRECISIONS" in fastlstm.__all__


def test_default_is_fp32_and_unchanged():
    assert FP32.precision == "fp32"
    explicit = fastlstm.Model(*_layers(), precision="fp32")
    assert explicit.precision == "fp32"
    assert np.array_equal(explicit.predict(X), FP32.predict(X))
    # fp32 is the float64 forward to float32 rounding (the oracle shares no code with the kernels)
    layers, head = _layers()
    np.testing.assert_allclose(FP32.predict(X), oracle.forward(layers, head, X)[0], atol=1e-5)


@pytest.mark.parametrize("precision", LOWP)
def test_model_precision(precision):
    _assert_other_precision(_model(precision), precision)


@pytest.mark.parametrize(
    "bad, exc, match",
    [
        ("x", ValueError, "precision: expected one of 'fp32', 'bf16', 'int8', got 'x'"),
        ("BF16", ValueError, "precision: expected one of"),
        ("fp16", ValueError, "got 'fp16'"),
        ("", ValueError, "got ''"),
        (None, TypeError, "precision: expected a str"),
        (16, TypeError, "precision: expected a str, one of 'fp32', 'bf16', 'int8', got int"),
        (b"bf16", TypeError, "got bytes"),
        (["bf16"], TypeError, "got list"),
    ],
)
def test_bad_precision_is_refused_everywhere(bad, exc, match, tmp_path):
    path = tmp_path / "m.fastlstm"
    FP32.save(path)
    calls = [
        lambda: fastlstm.Model(*_layers(), precision=bad),
        lambda: FP32.with_precision(bad),
        lambda: fastlstm.from_torch(torch.nn.LSTM(I, H), precision=bad),
    ]
    if bad is not None:  # load's default: the precision the file records
        calls.append(lambda: fastlstm.load(path, precision=bad))
    for call in calls:
        with pytest.raises(exc, match=match):
            call()


def test_a_long_bad_precision_is_cut_in_the_message():
    with pytest.raises(ValueError) as info:
        fastlstm.Model(*_layers(), precision="x" * 10_000)
    assert len(str(info.value)) < 200


def test_precision_is_keyword_only():
    layers, head = _layers()
    with pytest.raises(TypeError):
        fastlstm.Model(layers, head, True, "bf16")  # type: ignore[misc]


@pytest.mark.parametrize("precision", LOWP)
def test_with_precision_makes_a_new_model(precision):
    model = FP32.with_precision(precision)
    assert model is not FP32 and FP32.precision == "fp32"
    assert model.layers == FP32.layers  # the same chain, the same weights
    _assert_other_precision(model, precision)
    assert np.array_equal(model.predict(X), _model(precision).predict(X))
    # and back: exactly the fp32 model again
    assert np.array_equal(model.with_precision("fp32").predict(X), FP32.predict(X))
    assert model.with_precision(precision).precision == precision


def test_repr_and_description_show_a_precision_other_than_fp32():
    assert "precision" not in repr(FP32) and "fp32" not in FP32.describe_short()
    model = _model("int8")
    assert "precision='int8'" in repr(model)
    assert model.describe_short().endswith(", int8)")
    assert "int8" in repr(model.stream()) and "int8" in repr(model.pool(2))


@pytest.mark.parametrize("precision", fastlstm.PRECISIONS)
def test_pickle_carries_the_precision(precision):
    model = _model(precision)
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        back = pickle.loads(pickle.dumps(model, protocol=protocol))
        assert back.precision == precision
        assert np.array_equal(back.predict(X), model.predict(X))


def test_an_old_model_pickle_still_loads():
    """Before precisions a model pickled as ``Model(layers)``; such bytes give an fp32 model."""

    class Old:
        def __reduce__(self):
            return (fastlstm.Model, (FP32.layers,))

    back = pickle.loads(pickle.dumps(Old()))
    assert back.precision == "fp32" and np.array_equal(back.predict(X), FP32.predict(X))


# --------------------------------------------------------------------------- streams and pools


@pytest.mark.parametrize("precision", fastlstm.PRECISIONS)
def test_streams_and_pools_carry_the_model_precision(precision):
    model = _model(precision)
    stream, pool = model.stream(2), model.pool(2)
    assert stream.precision == precision and pool.precision == precision
    for obj in (stream, pool):
        with pytest.raises(AttributeError):
            obj.precision = "fp32"
    ids = [pool.open(), pool.open()]
    steps = np.stack([stream.step(X[t]) for t in range(X.shape[0])])
    pooled = np.stack([pool.step(ids, X[t]) for t in range(X.shape[0])])
    # the streams run the model's precision: what predict gives, not fp32's
    assert np.array_equal(steps, model.predict(X)) and np.array_equal(pooled, steps)


# --------------------------------------------------------------------------- State


def _stepped_state(model, steps=5):
    stream = model.stream()
    for t in range(steps):
        stream.step(X[t, 0])
    return stream.state


def test_fp32_state_signature_is_unchanged():
    """An fp32 model's signature is the shape signature alone: state bytes written before
    precisions existed (and the states fp32 models write now) load in both directions."""
    state = _stepped_state(FP32)
    assert state.signature == ((I, H, H, 1), (H, H, H, 1))
    assert fastlstm.State.from_bytes(state.to_bytes()).signature == state.signature


@pytest.mark.parametrize("precision", LOWP)
def test_state_signature_names_the_precision(precision):
    model = _model(precision)
    state = _stepped_state(model)
    assert state.signature[-1] == ("precision", precision)
    back = fastlstm.State.from_bytes(state.to_bytes())
    assert back == state
    # the bytes continue the stream exactly, in the same precision
    a, b = model.stream(), model.stream()
    a.state, b.state = state, back
    assert np.array_equal(a.step(X[5, 0]), b.step(X[5, 0]))
    pool = model.pool(1)
    sid = pool.open()
    pool.set_state(sid, back)
    assert pool.get_state(sid) == state


@pytest.mark.parametrize("theirs, mine", [("bf16", "fp32"), ("fp32", "bf16"), ("int8", "bf16"), ("bf16", "int8")])
def test_a_state_of_another_precision_is_refused(theirs, mine):
    state = fastlstm.State.from_bytes(_stepped_state(_model(theirs)).to_bytes())
    model = _model(mine)
    message = f"belongs to a {theirs} model and this model is {mine}.*with_precision\\('{theirs}'\\)"
    stream = model.stream()
    with pytest.raises(ValueError, match=message):
        stream.state = state
    with pytest.raises(ValueError, match=message):
        model.predict(X[:, 0], state)
    pool = model.pool(1)
    sid = pool.open()
    with pytest.raises(ValueError, match=message):
        pool.set_state(sid, state)
    # what the message says to do works: the model of the state's precision, or no signature
    model.with_precision(theirs).stream().state = state
    stream.state = fastlstm.State(state.h, state.c, buffers=state.buffers)


def test_a_state_of_another_shape_is_still_refused_by_shape():
    other = fastlstm.Model(*oracle.random_stack(np.random.default_rng(0), I, H + 1, 2, head_size=O))
    with pytest.raises(ValueError, match="another shape"):
        other.with_precision("bf16").stream().state = _stepped_state(_model("bf16"))


# --------------------------------------------------------------------------- loaders


@pytest.fixture(scope="module")
def torch_net():
    torch.manual_seed(3)
    net = torch.nn.LSTM(I, H, num_layers=2).eval()
    return net


@pytest.mark.parametrize("precision", LOWP)
def test_from_torch_module_and_state_dict(torch_net, precision):
    fp32 = fastlstm.from_torch(torch_net)
    x = X[:, 0]
    for model in (
        fastlstm.from_torch(torch_net, precision=precision),
        fastlstm.from_torch(torch_net.state_dict(), precision=precision),
        fastlstm.from_torch(torch_net.state_dict(), precision=precision, return_sequences=False),
    ):
        assert model.precision == precision
        y = model.predict(x)
        ref = fp32.predict(x)[-1] if y.ndim == 1 else fp32.predict(x)
        assert not np.array_equal(y, ref) and np.max(np.abs(y - ref)) < LOWP_BOUND
    assert fastlstm.from_torch(torch_net).precision == "fp32"


def test_precision_is_not_an_override(torch_net, tmp_path):
    """``precision`` is the model's keyword, never passed on as a state_dict override, and the
    overrides' own refusals stay as they were."""
    path = tmp_path / "net.pt"
    torch.save(torch_net.state_dict(), path)
    model = fastlstm.load(path, precision="bf16", return_sequences=False)
    assert model.precision == "bf16" and not model.return_sequences
    with pytest.raises(TypeError, match="nonsense"):
        fastlstm.load(path, precision="bf16", nonsense=1)
    native = tmp_path / "m.fastlstm"
    FP32.save(native)
    with pytest.raises(TypeError, match="head_activation: only PyTorch state_dict files take overrides"):
        fastlstm.load(native, precision="bf16", head_activation="tanh")
    # the precision is checked as an argument, before the file is even opened
    with pytest.raises(ValueError, match="precision"):
        fastlstm.load(tmp_path / "missing.pt", precision="fp64")


@pytest.mark.parametrize("precision", LOWP)
def test_load_gives_every_format_the_precision(torch_net, precision, tmp_path):
    pt = tmp_path / "net.pt"
    torch.save(torch_net.state_dict(), pt)
    onnx = tmp_path / "m.onnx"
    FP32.to_onnx(onnx)
    for path, fp32 in ((pt, fastlstm.load(pt)), (onnx, FP32)):
        assert fastlstm.load(path).precision == "fp32"
        model = fastlstm.load(path, precision=precision)
        assert model.precision == precision
        y, ref = model.predict(X), fp32.predict(X)
        assert not np.array_equal(y, ref) and np.max(np.abs(y - ref)) < LOWP_BOUND
        assert np.array_equal(y, fp32.with_precision(precision).predict(X))


def test_from_keras(tmp_path):
    keras = pytest.importorskip("keras")
    km = keras.Sequential([keras.Input((None, I)), keras.layers.LSTM(H, return_sequences=True), keras.layers.Dense(O)])
    path = tmp_path / "m.keras"
    km.save(str(path))
    fp32 = fastlstm.from_keras(km)
    assert fp32.precision == "fp32"
    x = X.transpose(1, 0, 2)
    for obj in (km, path):
        model = fastlstm.from_keras(obj, precision="bf16")
        assert model.precision == "bf16"
        assert np.array_equal(
            model.predict(x, batch_first=True), fp32.with_precision("bf16").predict(x, batch_first=True)
        )
        assert not np.array_equal(model.predict(x, batch_first=True), fp32.predict(x, batch_first=True))
    with pytest.raises(ValueError, match="precision"):
        fastlstm.from_keras(km, precision="fp8")
    assert fastlstm.load(path, precision="int8").precision == "int8"


# --------------------------------------------------------------------------- the native file


def _header(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    return header, json.loads(header["__metadata__"]["fastlstm_config"])


def _torch_bf16(arr):
    return torch.from_numpy(np.ascontiguousarray(arr, np.float32)).to(torch.bfloat16).float().numpy()


def test_bf16_file_is_smaller_and_reloads_bit_for_bit(tmp_path):
    model = _model("bf16")
    model.save(tmp_path / "b.fastlstm")
    FP32.save(tmp_path / "f.fastlstm")
    size_b, size_f = os.path.getsize(tmp_path / "b.fastlstm"), os.path.getsize(tmp_path / "f.fastlstm")
    assert size_b < 0.6 * size_f, (size_b, size_f)
    header, config = _header(tmp_path / "b.fastlstm")
    assert config["precision"] == "bf16"
    for k in range(2):
        for field in ("weight_ih", "weight_hh"):
            assert header[f"layers.{k}.forward.{field}"]["dtype"] == "BF16"
        assert header[f"layers.{k}.forward.bias_ih"]["dtype"] == "F32"  # biases stay fp32
    assert header["layers.2.weight"]["dtype"] == "F32"  # so does the head
    back = fastlstm.load(tmp_path / "b.fastlstm")
    assert back.precision == "bf16"
    assert np.array_equal(back.predict(X), model.predict(X))
    # the stored weights are torch's bfloat16 rounding of the model's
    w = model.layers[0].directions[0]
    stored = back.layers[0].directions[0]
    assert np.array_equal(stored.weight_ih, _torch_bf16(w.weight_ih))
    assert np.array_equal(stored.weight_hh, _torch_bf16(w.weight_hh))
    assert np.array_equal(stored.bias_ih, w.bias_ih)
    # saving the reloaded model writes the same bytes: nothing drifts on repeated round trips
    back.save(tmp_path / "again.fastlstm")
    assert (tmp_path / "again.fastlstm").read_bytes() == (tmp_path / "b.fastlstm").read_bytes()
    # any safetensors reader sees BF16 tensors holding those values
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "b.fastlstm"))
    assert tensors["layers.0.forward.weight_ih"].dtype == torch.bfloat16
    assert np.array_equal(tensors["layers.0.forward.weight_ih"].float().numpy(), _torch_bf16(w.weight_ih))


def test_bf16_file_of_every_recurrent_kind(tmp_path):
    """LSTM with projection (W_hr stays fp32), GRU of both kinds (a reset-before GRU's weight_hh holds
    W_hn, which stays fp32), RNN: each reloads to the same bf16 model."""
    rng = np.random.default_rng(4)
    u = lambda *shape: rng.uniform(-0.5, 0.5, shape).astype(np.float32)  # noqa: E731
    chain = [
        L.LSTMLayer((L.LSTMWeights(u(16, 3), u(16, 2), u(16), u(16), u(2, 4)),)),
        L.GRULayer((L.GRUWeights(u(15, 2), u(15, 5), u(15), u(15)),), reset_after=False),
        L.GRULayer((L.GRUWeights(u(12, 5), u(12, 4), u(12), u(12)),), reset_after=True),
        L.RNNLayer((L.RNNWeights(u(4, 4), u(4, 4), u(4), None),)),
        L.Dense(u(2, 4), u(2)),
    ]
    model = fastlstm.Model(chain, precision="bf16")
    model.save(tmp_path / "m.fastlstm")
    header, _ = _header(tmp_path / "m.fastlstm")
    dtypes = {name: info["dtype"] for name, info in header.items() if name != "__metadata__"}
    assert dtypes["layers.0.forward.weight_hr"] == "F32"
    assert dtypes["layers.1.forward.weight_ih"] == "BF16" and dtypes["layers.1.forward.weight_hh"] == "F32"
    assert dtypes["layers.2.forward.weight_hh"] == "BF16" and dtypes["layers.3.forward.weight_hh"] == "BF16"
    back = fastlstm.load(tmp_path / "m.fastlstm")
    x = np.random.default_rng(0).standard_normal((20, 3, 3)).astype(np.float32)
    assert back.precision == "bf16" and np.array_equal(back.predict(x), model.predict(x))
    assert np.array_equal(back.layers[1].directions[0].weight_hh, chain[1].directions[0].weight_hh)
    fp32 = fastlstm.Model(chain)
    assert not np.array_equal(model.predict(x), fp32.predict(x))


def test_int8_file_stores_float32(tmp_path):
    model = _model("int8")
    model.save(tmp_path / "q.fastlstm")
    FP32.save(tmp_path / "f.fastlstm")
    header, config = _header(tmp_path / "q.fastlstm")
    assert config["precision"] == "int8"
    assert {info["dtype"] for name, info in header.items() if name != "__metadata__"} == {"F32"}
    assert os.path.getsize(tmp_path / "q.fastlstm") - os.path.getsize(tmp_path / "f.fastlstm") < 64
    back = fastlstm.load(tmp_path / "q.fastlstm")
    assert back.precision == "int8" and np.array_equal(back.predict(X), model.predict(X))
    assert np.array_equal(back.with_precision("fp32").predict(X), FP32.predict(X))


def test_fp32_file_has_no_precision_key(tmp_path):
    FP32.save(tmp_path / "f.fastlstm")
    _, config = _header(tmp_path / "f.fastlstm")
    assert set(config) == {"version", "layers"}
    assert fastlstm.load(tmp_path / "f.fastlstm").precision == "fp32"
    # the bundled model, written before precisions existed
    assert fastlstm.load(MODEL_PATH).precision == "fp32"


def test_explicit_precision_wins_over_the_file(tmp_path):
    model = _model("bf16")
    model.save(tmp_path / "b.fastlstm")
    as_fp32 = fastlstm.load(tmp_path / "b.fastlstm", precision="fp32")
    assert as_fp32.precision == "fp32"
    # an fp32 model of the rounded weights the file holds
    w = model.layers[0].directions[0]
    assert np.array_equal(as_fp32.layers[0].directions[0].weight_ih, _torch_bf16(w.weight_ih))
    assert fastlstm.load(tmp_path / "b.fastlstm", precision="int8").precision == "int8"
    # rounding is idempotent: the file's weights at bf16 are the original model exactly
    assert np.array_equal(as_fp32.with_precision("bf16").predict(X), model.predict(X))


def _rewrite_config(src, dst, edit):
    """``src`` with its config edited by ``edit(config)`` and the digest recomputed (a well-formed file)."""
    data = open(src, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    from fastlstm.loaders.safetensors_io import read_safetensors

    tensors, meta, start = read_safetensors(data, "x")
    config = json.loads(meta["fastlstm_config"])
    edit(config)
    text = json.dumps(config)
    bf16 = {k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "BF16"}
    body = encode_safetensors(tensors, bf16=bf16)
    (m,) = struct.unpack("<Q", body[:8])
    meta = {"format": "fastlstm", "fastlstm_config": text, "sha256": _digest(text, body[8 + m :])}
    open(dst, "wb").write(encode_safetensors(tensors, meta, bf16=bf16))


@pytest.mark.parametrize("value", ["fp16", "BF16", "", 16, None, ["bf16"], {"p": "bf16"}, True, "x" * 5000])
def test_hostile_precision_in_a_file_is_refused(value, tmp_path):
    _model("bf16").save(tmp_path / "b.fastlstm")
    _rewrite_config(tmp_path / "b.fastlstm", tmp_path / "bad.fastlstm", lambda c: c.update(precision=value))
    with pytest.raises(fastlstm.LoadError, match="precision") as info:
        fastlstm.load(tmp_path / "bad.fastlstm")
    assert len(str(info.value)) < 400
    # an explicit precision does not skip the file's check
    with pytest.raises(fastlstm.LoadError, match="precision"):
        fastlstm.load(tmp_path / "bad.fastlstm", precision="fp32")


def test_precision_key_round_trips_through_a_rewritten_file(tmp_path):
    """The test's own rewriter keeps a valid file valid (so the refusals above are the value's)."""
    _model("bf16").save(tmp_path / "b.fastlstm")
    _rewrite_config(tmp_path / "b.fastlstm", tmp_path / "same.fastlstm", lambda c: None)
    assert fastlstm.load(tmp_path / "same.fastlstm").precision == "bf16"
    _rewrite_config(tmp_path / "b.fastlstm", tmp_path / "int8.fastlstm", lambda c: c.update(precision="int8"))
    assert fastlstm.load(tmp_path / "int8.fastlstm").precision == "int8"
    _rewrite_config(tmp_path / "b.fastlstm", tmp_path / "none.fastlstm", lambda c: c.pop("precision"))
    assert fastlstm.load(tmp_path / "none.fastlstm").precision == "fp32"


def test_bf16_bits_is_round_to_nearest_even():
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.standard_normal(10_000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 10_000),
            # exact ties (the low 16 bits 0x8000) on both sides of an even and an odd last bit
            (np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x00008000, 0x7F7F0000], np.uint32)).view(np.float32),
            np.array([0.0, -0.0, 1e-42, -1e-42], np.float32),
        ]
    )
    got = (bf16_bits(x).astype(np.uint32) << 16).view(np.float32)
    assert np.array_equal(got.view(np.uint32), _torch_bf16(x).view(np.uint32))
    with pytest.raises(ValueError, match="too large for bfloat16"):
        bf16_bits(np.array([3.4e38], np.float32))


def test_a_weight_beyond_bfloat16_cannot_be_saved_as_bf16(tmp_path):
    layers, head = _layers()
    w = layers[0].directions[0]
    big = w.weight_hh.copy()
    big[0, 0] = 3.4e38
    layers[0] = L.LSTMLayer((L.LSTMWeights(w.weight_ih, big, w.bias_ih, w.bias_hh),))
    model = fastlstm.Model(layers, head)
    with pytest.raises(ValueError, match="layers.0.forward.weight_hh.*too large for bfloat16"):
        loaders.native.encode_model(model.layers, "bf16")


# --------------------------------------------------------------------------- command line


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "fastlstm", *map(str, args)],
        cwd=CHILD_CWD,
        env=child_env(KERAS_BACKEND="torch"),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_info_and_convert(tmp_path):
    src = tmp_path / "m.fastlstm"
    _model("bf16").save(src)
    proc = _cli("info", src)
    assert proc.returncode == 0, proc.stderr
    assert "precision: bf16" in proc.stdout
    proc = _cli("info", src, "--precision", "int8")
    assert proc.returncode == 0 and "precision: int8" in proc.stdout
    proc = _cli("info")  # the bundled model
    assert proc.returncode == 0 and "precision: fp32" in proc.stdout
    FP32.save(tmp_path / "f.fastlstm")
    out = tmp_path / "out.fastlstm"
    proc = _cli("convert", tmp_path / "f.fastlstm", out, "--precision", "bf16")
    assert proc.returncode == 0, proc.stderr
    assert "bf16" in proc.stdout
    back = fastlstm.load(out)
    assert back.precision == "bf16" and np.array_equal(back.predict(X), _model("bf16").predict(X))
    assert os.path.getsize(out) < 0.6 * os.path.getsize(tmp_path / "f.fastlstm")
    proc = _cli("info", src, "--precision", "fp64")
    assert proc.returncode == 2 and "--precision" in proc.stderr and "bf16" in proc.stderr


def test_cli_serve_uses_the_precision(tmp_path):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from test_serving_service import Server

    src = tmp_path / "m.fastlstm"
    FP32.save(src)
    server = Server(src, "--precision", "int8")
    try:
        assert httpx.get(server.url + "/", timeout=10).json()["precision"] == "int8"
        sid = httpx.post(server.url + "/streams", timeout=10).json()["sid"]
        got = [
            httpx.post(f"{server.url}/streams/{sid}/step", json={"x": X[t, 0].tolist()}, timeout=10) for t in range(3)
        ]
        y = np.array([r.json()["y"] for r in got], np.float32)
    finally:
        server.stop()
    assert np.array_equal(y, _model("int8").predict(X[:3, 0]))
