"""Bad and hostile files: each must give a clear ValueError naming the problem, never run code,
and never load part of a model."""

import io
import json
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch

import fastlstm.loaders as loaders
from fastlstm.loaders.safetensors_io import encode_safetensors

pytestmark = pytest.mark.usefixtures("torch_one_thread")


class _CreateFile:
    """A pickle payload that creates a file when unpickled (by calling builtins.open)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _lstm_sd(layers=3):
    torch.manual_seed(0)
    return torch.nn.LSTM(3, 4, num_layers=layers).state_dict()


def test_hostile_pickle_never_runs(tmp_path):
    target = tmp_path / "pwned"
    sd = _lstm_sd()
    sd["lstm.extra"] = _CreateFile(target)
    torch.save(sd, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"forbidden global (builtins|__builtin__|io)\.open"):
        loaders.load(tmp_path / "evil.pt")
    assert not target.exists()
    # The payload is real: an unrestricted unpickler does create the file.
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert target.exists()


def test_hostile_pickle_with_os_system(tmp_path):
    """A hand-written data.pkl calling os.system inside an otherwise valid torch archive."""
    target = tmp_path / "pwned2"
    torch.save(_lstm_sd(1), tmp_path / "ok.pt")
    with zipfile.ZipFile(tmp_path / "ok.pt") as z:
        members = {n: z.read(n) for n in z.namelist()}
    payload = b"cos\nsystem\n(V touch " + str(target).encode() + b"\ntR."
    members["ok/data.pkl"] = payload
    with zipfile.ZipFile(tmp_path / "evil2.pt", "w") as z:
        for n, d in members.items():
            z.writestr(n, d)
    with pytest.raises(ValueError, match=r"forbidden global os\.system"):
        loaders.load(tmp_path / "evil2.pt")
    assert not target.exists()


def test_whole_module_pickle_refused(tmp_path):
    torch.save(torch.nn.LSTM(3, 4), tmp_path / "module.pt")
    with pytest.raises(ValueError, match=r"forbidden global torch\.nn\.modules\.rnn\.LSTM"):
        loaders.load(tmp_path / "module.pt")


def test_torchscript_refused(tmp_path):
    torch.jit.script(torch.nn.LSTM(3, 4)).save(str(tmp_path / "ts.pt"))
    with pytest.raises(ValueError, match="TorchScript"):
        loaders.load(tmp_path / "ts.pt")


def test_legacy_format_refused(tmp_path):
    torch.save(_lstm_sd(), tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="pre-1.6"):
        loaders.load(tmp_path / "old.pt")


def test_bare_pickle_and_garbage_refused(tmp_path):
    (tmp_path / "p.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="bare pickle"):
        loaders.load(tmp_path / "p.pkl")
    (tmp_path / "g.bin").write_bytes(b"hello world, not a model")
    with pytest.raises(ValueError, match="unrecognised"):
        loaders.load(tmp_path / "g.bin")
    (tmp_path / "e.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        loaders.load(tmp_path / "e.pt")


def test_layer_count_trap(tmp_path):
    sd = _lstm_sd(3)
    for k in [k for k in sd if k.endswith("_l1")]:
        del sd[k]
    torch.save(sd, tmp_path / "gap.pt")
    with pytest.raises(ValueError, match=r"layer\(s\) \[1\]"):
        loaders.load(tmp_path / "gap.pt")
    sd = _lstm_sd(3)
    del sd["weight_hh_l2"]
    torch.save(sd, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="weight_hh_l2"):
        loaders.load(tmp_path / "partial.pt")


def test_extra_and_unknown_keys_listed(tmp_path):
    sd = _lstm_sd(2)
    sd["embedding.weight"] = torch.zeros(10, 3)  # a Linear-shaped tensor that does not fit as a head
    sd["norm.running_mean"] = torch.zeros(4)
    torch.save(sd, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match="embedding.weight"):
        loaders.load(tmp_path / "extra.pt")
    sd = _lstm_sd(2)
    sd["norm.running_mean"] = torch.zeros(4)
    torch.save(sd, tmp_path / "extra2.pt")
    with pytest.raises(ValueError, match="norm.running_mean"):
        loaders.load(tmp_path / "extra2.pt")


def test_nan_weight_names_the_key(tmp_path):
    sd = {"rnn." + k: v for k, v in _lstm_sd(2).items()}
    sd["rnn.weight_hh_l1"][2, 1] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match=r"'rnn\.weight_hh_l1'.*NaN"):
        loaders.load(tmp_path / "nan.pt")
    (tmp_path / "nan.safetensors").write_bytes(encode_safetensors({k: v.numpy() for k, v in sd.items()}))
    with pytest.raises(ValueError, match=r"'rnn\.weight_hh_l1'.*NaN"):
        loaders.load(tmp_path / "nan.safetensors")


def test_wrong_shapes_and_gru(tmp_path):
    sd = _lstm_sd(2)
    sd["weight_ih_l1"] = torch.zeros(16, 5)  # layer 1 must take layer 0's 4 outputs
    torch.save(sd, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match="layers\\[1\\]"):
        loaders.load(tmp_path / "shape.pt")
    sd = _lstm_sd(1)
    sd["weight_hh_l0"] = torch.zeros(10, 4)  # neither 4H, 3H nor H rows for H=4
    torch.save(sd, tmp_path / "rows.pt")
    with pytest.raises(ValueError, match="not 4H x H"):
        loaders.load(tmp_path / "rows.pt")
    sd = _lstm_sd(1)
    sd["bias_hh_l0"] = torch.zeros(15)
    torch.save(sd, tmp_path / "bias.pt")
    with pytest.raises(ValueError, match="bias_hh"):
        loaders.load(tmp_path / "bias.pt")


def test_several_lstms_refused(tmp_path):
    sd = {"a." + k: v for k, v in _lstm_sd(1).items()}
    sd.update({"b." + k: v for k, v in _lstm_sd(1).items()})
    torch.save(sd, tmp_path / "two.pt")
    with pytest.raises(ValueError, match="several prefixes"):
        loaders.load(tmp_path / "two.pt")


# --- safetensors headers ------------------------------------------------------------------


def _st(header, data=b"", raw_len=None):
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if raw_len is None else raw_len) + text + data


GOOD = {"weight_ih_l0": {"dtype": "F32", "shape": [16, 3], "data_offsets": [0, 192]}}


@pytest.mark.parametrize(
    "blob,match",
    [
        (_st(GOOD, bytes(192), raw_len=10**12), "header claims"),
        (_st(GOOD, bytes(192), raw_len=200_000_000), "limit"),
        (_st(GOOD, bytes(100)), "truncated"),
        (_st(GOOD, bytes(200)), "after the last tensor"),
        (
            _st(
                {
                    "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                    "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
                },
                bytes(24),
            ),
            "overlaps",
        ),
        (_st({"a": {"dtype": "F32", "shape": [4], "data_offsets": [4, 20]}}, bytes(20)), "gap"),
        (_st({"a": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}, bytes(16)), "needs 20"),
        (_st({"a": {"dtype": "Q7", "shape": [4], "data_offsets": [0, 16]}}, bytes(16)), "dtype"),
        (_st({"a": {"dtype": "F32", "shape": [True, 4], "data_offsets": [0, 16]}}, bytes(16)), "shape"),
        (_st({"a": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}}, bytes(16)), "data_offsets"),
        (_st({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16], "x": 1}}, bytes(16)), "exactly"),
        (_st({"__metadata__": {"a": 1}}), "__metadata__"),
        (struct.pack("<Q", 30) + b'{"a": {}, "a": {}}' + b" " * 12, "duplicate"),
        (struct.pack("<Q", 12) + b'{"a": NaN}  ', "JSON"),
        (struct.pack("<Q", 4) + b"{\xff\xfe}", "JSON"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_safetensors_header_validation(blob, match):
    with pytest.raises(ValueError, match=match):
        loaders.read_spec(io.BytesIO(blob))


def test_safetensors_header_must_be_object():
    from fastlstm.loaders.safetensors_io import read_safetensors

    with pytest.raises(ValueError, match="JSON object"):
        read_safetensors(_st([1, 2]), "t")


def test_truncated_files_of_every_kind(tmp_path):
    torch.save(_lstm_sd(2), tmp_path / "m.pt")
    (tmp_path / "m.safetensors").write_bytes(encode_safetensors({k: v.numpy() for k, v in _lstm_sd(2).items()}))
    import fastlstm

    model = loaders.load(tmp_path / "m.pt")
    loaders.save_model(model, tmp_path / "m.fastlstm")
    assert isinstance(model, fastlstm.Model)
    for name in ("m.pt", "m.safetensors", "m.fastlstm"):
        data = (tmp_path / name).read_bytes()
        for cut in (1, 8, 9, 40, len(data) // 3, len(data) // 2, len(data) - 1):
            with pytest.raises(ValueError):
                loaders.read_spec(io.BytesIO(data[:cut]))


def test_zip_of_unknown_kind(tmp_path):
    with zipfile.ZipFile(tmp_path / "z.pt", "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(ValueError, match="neither a PyTorch file nor a .keras"):
        loaders.load(tmp_path / "z.pt")


def test_storage_out_of_bounds_refused(tmp_path):
    """A data.pkl whose tensor view reaches past the end of its storage."""
    torch.save({"weight_ih_l0": torch.zeros(16, 3), "weight_hh_l0": torch.zeros(16, 4)}, tmp_path / "m.pt")
    with zipfile.ZipFile(tmp_path / "m.pt") as z:
        members = {n: z.read(n) for n in z.namelist()}
    pkl = members["m/data.pkl"]
    # Shrink the numel recorded for storage 0 (48 elements -> 40): BININT1 48 -> 40.
    assert pkl.count(b"K0") >= 1
    members["m/data.pkl"] = pkl.replace(b"K0", b"K(", 1)
    with zipfile.ZipFile(tmp_path / "oob.pt", "w") as z:
        for n, d in members.items():
            z.writestr(n, d)
    with pytest.raises(ValueError, match="reaches element"):
        loaders.load(tmp_path / "oob.pt")


def test_bfloat16_conversion_exact():
    from fastlstm.loaders.safetensors_io import read_safetensors

    vals = torch.tensor([1.0, -2.5, 3.140625, 1e-3], dtype=torch.bfloat16)
    raw = vals.view(torch.int16).numpy().tobytes()
    blob = _st({"x": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}, raw)
    tensors, _, _ = read_safetensors(blob, "t")
    assert np.array_equal(tensors["x"], vals.float().numpy())


def test_pickle_reference_bomb_refused(tmp_path):
    """A few hundred bytes of pickle describing 1000**4 list entries through shared references."""
    torch.save(_lstm_sd(1), tmp_path / "ok.pt")
    with zipfile.ZipFile(tmp_path / "ok.pt") as z:
        members = {n: z.read(n) for n in z.namelist()}
    inner = []
    for _ in range(4):
        inner = [inner] * 1000
    members["ok/data.pkl"] = pickle.dumps({"x": inner}, protocol=2)
    with zipfile.ZipFile(tmp_path / "bomb.pt", "w") as z:
        for n, d in members.items():
            z.writestr(n, d)
    with pytest.raises(ValueError, match="too deep or too large"):
        loaders.load(tmp_path / "bomb.pt")
