"""The caps of fastlstm.loaders._limits and the LoadError boundary, one regression test per hole of issue 9.

The hostile corpus (test_hostile_files.py) checks every attack file under a memory limit in a
subprocess; these tests check the individual mechanisms in-process, with messages."""

import functools
import io
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib

import hostile_corpus as hc
import numpy as np
import pytest

import fastlstm
import fastlstm.loaders as loaders
from checks import CHILD_CWD, child_env
from fastlstm.loaders import _common, _limits, torch_zip
from fastlstm.loaders.hdf5_reader import HDF5Error, extract


@functools.lru_cache(maxsize=None)
def _cases():
    return {c.name: c for c in hc.hostile()}


def _case(name):
    return _cases()[name]


def _load_case(name, tmp_path):
    path = tmp_path / name
    path.write_bytes(_case(name).data)
    with pytest.raises(fastlstm.LoadError) as info:
        fastlstm.load(path)
    assert str(info.value).startswith(str(path))
    return str(info.value)


def test_load_error_is_a_public_value_error():
    assert fastlstm.LoadError is loaders.LoadError
    assert issubclass(fastlstm.LoadError, ValueError)
    assert "LoadError" in fastlstm.__all__


def test_budget_derives_from_file_size():
    b = _limits.Budget(1000, "f")
    assert b.limit == (64 << 20) + 8 * 1000
    b.charge(b.limit - 10, "most")
    with pytest.raises(ValueError, match=r"f: the rest would need 11 bytes, beyond this file's memory budget"):
        b.charge(11, "the rest")


@pytest.mark.parametrize(
    "name, match",
    [
        ("huge_stride.pt", "bad size"),  # was OverflowError
        ("deep_config.fastlstm", "not valid JSON"),  # was RecursionError
        ("dropout_name_list.h5", "name that is not a string"),  # was TypeError
        ("dropout_name_list.keras", "name that is not a string"),  # loaded a malformed config
        ("superscript_var.keras", "expected 3 weight(s)"),  # was "invalid literal for int(): '²'", no file name
    ],
)
def test_former_non_value_errors_are_load_errors(name, match, tmp_path):
    assert match in _load_case(name, tmp_path)


def test_memo_bomb_refused_before_unpickling(tmp_path):
    data = _case("memo_bomb.pt").data
    assert len(data) < 1024
    assert "memo index 268435456" in _load_case("memo_bomb.pt", tmp_path)


def test_stride0_views_share_one_budget(tmp_path):
    # Each view is 16 MiB, under any per-tensor cap; 40 of them exceed the file's budget.
    assert "memory budget" in _load_case("stride0_many.pt", tmp_path)


def test_huge_keys_are_cut_in_messages(tmp_path):
    for name in ("huge_key.pt", "huge_name.safetensors"):
        msg = _load_case(name, tmp_path)
        assert len(msg) < 1000 and "..." in msg


def test_build_cannot_touch_fastlstm_functions(tmp_path):
    before = torch_zip._rebuild_tensor_v2.__name__, dict(torch_zip._rebuild_tensor_v2.__dict__)
    assert "BUILD on a global" in _load_case("build_on_global.pt", tmp_path)
    assert (torch_zip._rebuild_tensor_v2.__name__, dict(torch_zip._rebuild_tensor_v2.__dict__)) == before


def test_real_torch_file_still_loads_and_matches_torch(tmp_path):
    """The corpus's hand-written .pt is what torch reads too (so the attack files are realistic)."""
    torch = pytest.importorskip("torch")
    (tmp_path / "v.pt").write_bytes(hc.valid_pt())
    sd = torch.load(tmp_path / "v.pt", weights_only=True)
    assert all(np.array_equal(sd[k].numpy(), v) for k, v in hc.WEIGHTS.items())
    model = fastlstm.load(tmp_path / "v.pt", head_activation="linear")
    assert np.array_equal(model.layers[0].directions[0].weight_ih, hc.WEIGHTS["lstm.weight_ih_l0"])


def test_zip_directory_cap_checked_before_parsing(monkeypatch):
    data = hc._zip([(f"d{k}/x", b"") for k in range(100)])
    monkeypatch.setattr(_common, "MAX_ZIP_DIRECTORY_BYTES", 1000)
    with pytest.raises(ValueError, match=r"zip directory takes [0-9,]+ bytes \(limit 1,000\)"):
        _common.open_zip(data, "z")


def test_zip_member_declared_size_charged_before_reading():
    noise = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()  # incompressible
    data = hc.torch_zip(b"x", {"0": noise}, zipfile.ZIP_DEFLATED)
    zf = _common.open_zip(data, "z")
    budget = _limits.Budget(0, "z")
    budget.used = budget.limit - 1000
    with pytest.raises(ValueError, match="archive member 'archive/data/0' would need 1,048,576 bytes"):
        _common.read_member(zf, "archive/data/0", "z", budget)


@pytest.mark.parametrize(
    "make",
    [lambda tmp: "/dev/zero", lambda tmp: str(tmp), lambda tmp: (os.mkfifo(tmp / "fifo"), str(tmp / "fifo"))[1]],
    ids=["dev-zero", "directory", "fifo"],
)
def test_non_regular_files_refused(make, tmp_path):
    path = make(tmp_path)
    with pytest.raises(fastlstm.LoadError, match="not a regular file"):
        fastlstm.load(path)


def test_file_size_cap(monkeypatch, tmp_path):
    monkeypatch.setattr(loaders, "MAX_FILE_BYTES", 1000)
    (tmp_path / "big.pt").write_bytes(bytes(1001))
    with pytest.raises(fastlstm.LoadError, match="more than 1,000 bytes"):
        fastlstm.load(tmp_path / "big.pt")
    with pytest.raises(fastlstm.LoadError, match="more than 1,000 bytes"):
        fastlstm.load(io.BytesIO(bytes(5000)))
    (tmp_path / "ok.pt").write_bytes(hc.valid_pt()[:900])
    with pytest.raises(fastlstm.LoadError, match="zip"):  # under the cap: read, and refused for its content
        fastlstm.load(tmp_path / "ok.pt")


def test_cli_info_dev_zero():
    out = subprocess.run(
        [sys.executable, "-m", "fastlstm", "info", "/dev/zero"],
        capture_output=True,
        timeout=60,
        env=child_env(),
        cwd=CHILD_CWD,
    )
    assert out.returncode == 1
    assert b"/dev/zero: not a regular file" in out.stderr


def test_argument_errors_stay_type_errors(tmp_path):
    (tmp_path / "v.pt").write_bytes(hc.valid_pt())
    (tmp_path / "v.keras").write_bytes(hc.dot_keras())
    with pytest.raises(TypeError, match="bogus"):
        fastlstm.load(tmp_path / "v.pt", bogus=1)
    with pytest.raises(TypeError, match="only PyTorch state_dict files take overrides"):
        fastlstm.load(tmp_path / "v.keras", head_activation="tanh")
    with pytest.raises(TypeError, match="key"):
        fastlstm.load(tmp_path / "v.pt", key=["unhashable"])


# --- the HDF5 child's own limits ---------------------------------------------------------------


def _h5_with_fill(n):
    return hc._h5(lambda f: f.create_dataset("x", shape=(n,), dtype="f4"))


def test_hdf5_child_address_space_limit_is_a_clean_error():
    # 200 MB of fill value, within the budget passed but not within a 100 MB address-space limit.
    with pytest.raises(HDF5Error, match="more memory than the HDF5 reader's limit"):
        extract(_h5_with_fill(50_000_000), budget=1 << 30, address_space=100 << 20)


def test_hdf5_child_time_limit_is_a_clean_error():
    with pytest.raises(HDF5Error, match="did not finish within its time limit"):
        extract(_h5_with_fill(10), seconds=0.01)


@pytest.mark.parametrize(
    "name, match",
    [("fill_value_bomb.h5", "memory budget"), ("chunk_bomb.h5", "chunks"), ("fill_value_bomb.keras", "memory budget")],
)
def test_hdf5_bombs_refused_by_their_caps(name, match, tmp_path):
    assert len(_case(name).data) < 20_000
    assert match in _load_case(name, tmp_path)


# --- State.from_bytes -----------------------------------------------------------------------


def _state():
    rng = np.random.default_rng(0)
    return fastlstm.State(
        [rng.standard_normal((2, 4)), rng.standard_normal(3)],
        [rng.standard_normal((2, 4)), rng.standard_normal(3)],
        ((3, 4), (4, 3)),
    )


def _v1(blob):
    """The version-1 form of a current blob of a model without layer buffers: no CRC trailer, version 1."""
    out = bytearray(blob[:-4])
    struct.pack_into("<H", out, 8, 1)
    return bytes(out)


def _v2(blob):
    """The version-2 form (h and c, CRC-32 trailer) of a current blob of a model without layer buffers."""
    out = bytearray(blob[:-4])
    struct.pack_into("<H", out, 8, 2)
    return bytes(out) + struct.pack("<I", zlib.crc32(out))


def test_state_refuses_every_corruption():
    blob = _state().to_bytes()
    assert struct.unpack_from("<H", blob, 8)[0] == 3
    loaded = 0
    for pos in range(len(blob)):
        for flip in (0x01, 0x80, 0xFF):
            bad = bytearray(blob)
            bad[pos] ^= flip
            try:
                fastlstm.State.from_bytes(bytes(bad))
                loaded += 1
            except ValueError:
                pass
    assert loaded == 0
    for cut in range(len(blob)):
        with pytest.raises(ValueError):
            fastlstm.State.from_bytes(blob[:cut])


def test_state_v1_and_v2_still_read():
    state = _state()
    assert fastlstm.State.from_bytes(_v1(state.to_bytes())) == state
    v2 = _v2(state.to_bytes())
    assert fastlstm.State.from_bytes(v2) == state
    bad = bytearray(v2)
    bad[-5] ^= 1
    with pytest.raises(ValueError, match="checksum"):
        fastlstm.State.from_bytes(bytes(bad))
    future = bytearray(state.to_bytes())
    struct.pack_into("<H", future, 8, 4)
    with pytest.raises(ValueError, match="version 4 is not supported"):
        fastlstm.State.from_bytes(bytes(future))


def _v1_with_header(text):
    return b"FLSTATE\0" + struct.pack("<HI", 1, len(text)) + text


@pytest.mark.parametrize(
    "header",
    [
        b"[" * 100_000 + b"]" * 100_000,  # RecursionError before
        json.dumps({"h": [[1e300]], "c": [[1]], "signature": None}).encode(),
        json.dumps({"h": [["4"]], "c": [["4"]], "signature": None}).encode(),
        json.dumps({"h": [[2**62, 2**62]], "c": [[1]], "signature": None}).encode(),
    ],
)
def test_state_header_errors_are_value_errors(header):
    with pytest.raises(ValueError, match="corrupt State header"):
        fastlstm.State.from_bytes(_v1_with_header(header))


def test_state_sizes_do_not_wrap_around():
    # 2**39 x 2**39 floats: np.prod wraps this product around to 0, so the size check passed.
    header = json.dumps({"h": [[2**39, 2**39]], "c": [[2**39, 2**39]], "signature": None}).encode()
    with pytest.raises(ValueError, match="describes [0-9]+ bytes of arrays, the data holds 0"):
        fastlstm.State.from_bytes(_v1_with_header(header))
