"""Hostile and damaged ONNX files: fuzzed and truncated protobuf bytes, huge declared sizes (in a child
process under a memory limit), external data that escapes the model's folder, cyclic graphs.  Each must
give a clean ValueError, quickly, and never allocate what a header merely claims.
"""

import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from onnx_helpers import TOL, max_err, model_bytes, ort_session, recurrent_graph, recurrent_weights, tensor

import fastlstm
from fastlstm.loaders import build_model, read_spec

I, H = 3, 4


def _valid():
    W, R, B = recurrent_weights(np.random.default_rng(0), "LSTM", 1, I, H)
    w2 = np.random.default_rng(1).standard_normal((2, H)).astype(np.float32)
    nodes = [
        helper.make_node("Squeeze", ["Y_h", "zero"], ["h"]),
        helper.make_node("Gemm", ["h", "w2", "b2"], ["g"], transB=1),
        helper.make_node("Sigmoid", ["g"], ["out"]),
    ]
    inits = [tensor("zero", np.array([0], np.int64)), tensor("w2", w2), tensor("b2", np.zeros(2, np.float32))]
    return recurrent_graph("LSTM", W, R, B, output="custom", extra_nodes=nodes, extra_inits=inits, final_shape=["B", 2])


def _rich():
    """A graph with many op kinds (Conv, pooling, RNN, reductions, BatchNormalization, PRelu, Gemm)."""
    from test_onnx_export import CHAINS

    from fastlstm import Model
    from fastlstm.onnx_export import onnx_bytes

    return onnx_bytes(Model(CHAINS["conv_pool_rnn"]()))


VALID = _valid()
TARGETS = [VALID, _rich()]
X = np.random.default_rng(2).standard_normal((12, 2, I)).astype(np.float32)


def test_valid_base_model_loads():
    assert build_model(read_spec(io.BytesIO(VALID))).predict(X).shape == (2, 2)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target=st.sampled_from(TARGETS),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.none() | st.floats(0, 1, exclude_max=True),
)
def test_fuzzed_bytes_give_value_error_or_a_working_model(target, edits, cut):
    data = bytearray(target)
    for frac, value in edits:
        data[int(frac * len(data))] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    try:
        spec = read_spec(io.BytesIO(bytes(data)))
    except ValueError:
        return
    try:  # an edit inside a weight or a name can leave a valid model: it must then run
        model = build_model(spec)
    except (ValueError, TypeError):
        return  # a chain this engine cannot build is refused cleanly
    x = np.random.default_rng(2).standard_normal((12, 2, model.input_size)).astype(np.float32)
    try:
        y = model.predict(x)
    except ValueError as exc:  # an edited window size can outgrow the 12 steps: refused by name
        assert "too few for layers[" in str(exc), exc
        return
    assert y.shape[-1] == model.output_size


def test_every_truncation_refused():
    for n in range(0, len(VALID) - 1, 3):
        with pytest.raises(ValueError):
            read_spec(io.BytesIO(VALID[:n] + b"\x08" if n == 0 else VALID[:n]))


HUGE_CHILD = """
import io, resource, sys, time
import numpy as np
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from fastlstm.loaders import read_spec
from fastlstm.loaders.onnx_proto import read_model
cases = {cases!r}
for name in sorted(cases):
    t = time.perf_counter()
    try:
        read_spec(io.BytesIO(cases[name]))
    except ValueError as exc:
        assert time.perf_counter() - t < 20, name
        print("ok", name, "|", str(exc)[:150])
        continue
    print("LOADED", name)
"""


def _huge_cases():
    from onnx import numpy_helper

    x_in = [("x", TensorProto.FLOAT, ["T", "B", I])]
    out = [("out", TensorProto.FLOAT, None)]
    big = TensorProto(name="big", data_type=TensorProto.FLOAT, dims=[1 << 40])  # claims 4 TB, holds nothing
    wide = TensorProto(name="wide", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20])
    short = numpy_helper.from_array(np.zeros(4, np.float32), "short")
    short.dims[:] = [1000]
    return {
        "initializer_1e12_elements": model_bytes([helper.make_node("Add", ["x", "big"], ["out"])], x_in, out, [big]),
        "initializer_2d_huge": model_bytes([helper.make_node("Add", ["x", "wide"], ["out"])], x_in, out, [wide]),
        "raw_data_shorter_than_dims": model_bytes(
            [helper.make_node("Add", ["x", "short"], ["out"])], x_in, out, [short]
        ),
        "constant_of_shape_huge": model_bytes(
            [helper.make_node("ConstantOfShape", ["s"], ["z"]), helper.make_node("Add", ["x", "z"], ["out"])],
            x_in,
            out,
            [tensor("s", np.array([1 << 30, 1 << 30], np.int64))],
        ),
        "expand_huge": model_bytes(
            [helper.make_node("Expand", ["one", "s"], ["z"]), helper.make_node("Add", ["x", "z"], ["out"])],
            x_in,
            out,
            [tensor("one", np.ones(1, np.float32)), tensor("s", np.array([1 << 35], np.int64))],
        ),
        "range_huge": model_bytes(
            [helper.make_node("Range", ["a", "b", "c"], ["r"]), helper.make_node("Add", ["x", "r"], ["out"])],
            x_in,
            out,
            [
                tensor("a", np.array(0, np.int64)),
                tensor("b", np.array(1 << 40, np.int64)),
                tensor("c", np.array(1, np.int64)),
            ],
        ),
        "varint_bomb": b"\x08" + b"\xff" * 64,
        "length_claims_exabytes": b"\x08\x08\x3a" + b"\xff" * 8 + b"\x7f",
        "twenty_dims": model_bytes(
            [helper.make_node("Add", ["x", "deep"], ["out"])],
            x_in,
            out,
            [TensorProto(name="deep", data_type=TensorProto.FLOAT, dims=[1] * 20)],
        ),
    }


def test_huge_declared_sizes_refused_under_a_memory_limit(tmp_path):
    cases = _huge_cases()
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(HUGE_CHILD.format(cases=cases)))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(fastlstm.__file__)))] + [p for p in sys.path if p]
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("ok ") == len(cases), proc.stdout


# --- external data -----------------------------------------------------------------------------------


def _external_model(location, offset=0, length=None):
    """The valid base model with its W weight moved to an external file at ``location``."""
    import onnx

    m = onnx.load_from_string(VALID)
    w = next(t for t in m.graph.initializer if t.name == "W")
    raw = np.frombuffer(w.raw_data, np.uint8).copy()
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (
        ("location", location),
        ("offset", str(offset)),
        ("length", str(len(raw) if length is None else length)),
    ):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    return m.SerializeToString(), raw.tobytes()


def test_external_data_inside_the_folder_loads(tmp_path):
    data, raw = _external_model("weights/w.bin", offset=16)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.bin").write_bytes(b"\0" * 16 + raw)
    (tmp_path / "m.onnx").write_bytes(data)
    got = fastlstm.load(tmp_path / "m.onnx").predict(X)
    want = ort_session(tmp_path / "m.onnx").run(None, {"x": X})[0]
    assert max_err(got, want) <= TOL
    with pytest.raises(ValueError, match="load the model from its path"):
        fastlstm.load(io.BytesIO(data))


@pytest.mark.parametrize(
    "location, match",
    [
        ("../outside.bin", "not a plain relative path"),
        ("/etc/passwd", "not a plain relative path"),
        ("a/../../outside.bin", "not a plain relative path"),
        ("link.bin", "leaves the model's folder"),
        ("missing.bin", "cannot read external data"),
    ],
)
def test_external_data_escaping_the_folder_refused(tmp_path, location, match):
    folder = tmp_path / "model"
    folder.mkdir()
    data, raw = _external_model(location)
    (tmp_path / "outside.bin").write_bytes(raw)
    os.symlink(tmp_path / "outside.bin", folder / "link.bin")
    (folder / "m.onnx").write_bytes(data)
    with pytest.raises(ValueError, match=match):
        fastlstm.load(folder / "m.onnx")


@pytest.mark.parametrize(
    "offset, length, match", [(0, 7, "length 7 does not match"), (10**6, None, "the tensor needs")]
)
def test_external_data_bounds(tmp_path, offset, length, match):
    data, raw = _external_model("w.bin", offset, length)
    (tmp_path / "w.bin").write_bytes(raw)
    (tmp_path / "m.onnx").write_bytes(data)
    with pytest.raises(ValueError, match=match):
        fastlstm.load(tmp_path / "m.onnx")


def test_graph_defects_refused(tmp_path):
    x_in = [("x", TensorProto.FLOAT, ["T", "B", I])]
    out = [("out", TensorProto.FLOAT, None)]
    cases = {
        "reads 'nowhere'": model_bytes([helper.make_node("Relu", ["nowhere"], ["out"])], x_in, out, []),
        "already defined": model_bytes(
            [helper.make_node("Relu", ["x"], ["out"]), helper.make_node("Tanh", ["x"], ["out"])], x_in, out, []
        ),
        "cycle": model_bytes(
            [
                helper.make_node("Relu", ["b"], ["a"]),
                helper.make_node("Tanh", ["a"], ["b"]),
                helper.make_node("Identity", ["a"], ["out"]),
            ],
            x_in,
            out,
            [],
        ),
        "opset 3": model_bytes([helper.make_node("Relu", ["x"], ["out"])], x_in, out, [], opset=3),
    }
    for match, data in cases.items():
        with pytest.raises(ValueError, match=match):
            read_spec(io.BytesIO(data))
