"""Live parity: PyTorch models saved as .pt / safetensors, or handed over as objects, must load
into fastlstm models whose outputs match torch's own over 1000 steps (predict and step)."""

import warnings

import numpy as np
import pytest
import safetensors.torch as safetensors_torch
import torch

import fastlstm.loaders as loaders
from fastlstm.loaders import LoadWarning, read_spec
from loader_helpers import STEPS, check_parity, torch_cell_outputs, torch_outputs

pytestmark = pytest.mark.usefixtures("torch_one_thread")

nn = torch.nn

I, B = 5, 2


class LstmFc(nn.Module):
    """The usual custom module: self.lstm then self.fc on every step."""

    def __init__(self, lstm, out, act=None):
        super().__init__()
        self.lstm, self.fc = (
            lstm,
            nn.Linear(
                lstm.hidden_size * (2 if lstm.bidirectional else 1) if not lstm.proj_size else lstm.proj_size, out
            ),
        )
        self.act = act

    def forward(self, x):
        y = self.fc(self.lstm(x)[0])
        return self.act(y) if self.act is not None else y


class TakeOutput(nn.Module):
    """Parameter-free helper that lets nn.LSTM sit inside nn.Sequential."""

    def forward(self, out):
        return out[0]


def _lstm(**kw):
    torch.manual_seed(0)
    return nn.LSTM(I, 7, **kw)


VARIANTS = {
    "one_layer": lambda: _lstm(),
    "three_layers": lambda: _lstm(num_layers=3),
    "bidirectional_2": lambda: _lstm(num_layers=2, bidirectional=True),
    "proj": lambda: _lstm(num_layers=2, proj_size=3),
    "proj_bidirectional": lambda: _lstm(num_layers=2, proj_size=3, bidirectional=True),
    "no_bias": lambda: _lstm(num_layers=2, bias=False),
    "batch_first": lambda: _lstm(num_layers=2, batch_first=True),
    "with_head": lambda: LstmFc(_lstm(num_layers=2), 3),
    "bidirectional_head": lambda: LstmFc(_lstm(bidirectional=True), 4),
}


def _inputs(batch_first=False, seed=1):
    x = np.random.default_rng(seed).standard_normal((STEPS, B, I)).astype(np.float32)
    return np.ascontiguousarray(np.swapaxes(x, 0, 1)) if batch_first else x


def _save(module, kind, path):
    sd = module.state_dict()
    if kind == "pt":
        torch.save(sd, path)
    else:
        safetensors_torch.save_file({k: v.contiguous() for k, v in sd.items()}, path)


def _streamable(module):
    lstm = module.lstm if isinstance(module, LstmFc) else module
    return not lstm.bidirectional


@pytest.mark.parametrize("source", ["pt", "safetensors", "module", "state_dict"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_parity(variant, source, tmp_path):
    module = VARIANTS[variant]().eval()
    bf = getattr(module, "batch_first", False)
    x = _inputs(bf)
    expected = torch_outputs(module, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LoadWarning)  # heads are linear here: the default is right
        if source in ("pt", "safetensors"):
            path = tmp_path / f"m.{source}"
            _save(module, source, path)
            model = loaders.load(path)
        elif source == "module":
            model = loaders.from_torch(module)
        else:
            model = loaders.from_torch(module.state_dict())
    check_parity(model, x, expected, batch_first=bf, stream=_streamable(module))


def test_unbatched_predict_matches(tmp_path):
    module = _lstm(num_layers=2, proj_size=2).eval()
    x = _inputs()[:, 0]
    torch.save(module.state_dict(), tmp_path / "m.pt")
    model = loaders.load(tmp_path / "m.pt")
    y = model.predict(x)
    assert np.max(np.abs(y - torch_outputs(module, x))) <= 1e-5


def test_lstm_cell(tmp_path):
    torch.manual_seed(3)
    cell = nn.LSTMCell(I, 6)
    x = _inputs()
    expected = torch_cell_outputs(cell, x)
    for model in (loaders.from_torch(cell), _via_pt(cell, tmp_path)):
        check_parity(model, x, expected)


def _via_pt(module, tmp_path):
    torch.save(module.state_dict(), tmp_path / "cell.pt")
    return loaders.load(tmp_path / "cell.pt")


@pytest.mark.parametrize(
    "act_module,name",
    [(nn.Sigmoid(), "sigmoid"), (nn.Tanh(), "tanh"), (nn.ReLU(), "relu"), (nn.Softmax(dim=-1), "softmax")],
)
def test_sequential_detects_head_activation(act_module, name):
    torch.manual_seed(4)
    seq = nn.Sequential(nn.LSTM(I, 6), TakeOutput(), nn.Dropout(0.3), nn.Linear(6, 3), act_module).eval()
    x = _inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoadWarning)  # traced, so no warning
        model = loaders.from_torch(seq)
    assert model.layers[-1].name == name  # the activation layer after the Linear
    check_parity(model, x, torch_outputs(seq, x))


def test_custom_module_activation_and_override(tmp_path):
    module = LstmFc(_lstm(), 3, act=nn.Sigmoid()).eval()
    x = _inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoadWarning)  # forward() is traced: nothing assumed
        model = loaders.from_torch(module)
    check_parity(model, x, torch_outputs(module, x))
    torch.save(module.state_dict(), tmp_path / "m.pt")
    with pytest.warns(LoadWarning, match="head_activation"):
        plain = loaders.load(tmp_path / "m.pt")  # a state_dict cannot say: linear + warning
    assert plain.layers[-1].activation == "linear"
    model = loaders.load(tmp_path / "m.pt", head_activation="sigmoid")
    check_parity(model, x, torch_outputs(module, x))


def test_return_sequences_override_last_step(tmp_path):
    """A state_dict whose module keeps out[-1]: the user says so with return_sequences=False."""
    module = LstmFc(_lstm(num_layers=2), 3).eval()
    x = _inputs()
    expected = torch_outputs(module, x)[-1]
    model = loaders.from_torch(module.state_dict(), head_activation="linear", return_sequences=False)
    check_parity(model, x, expected)


class FcFirst(nn.Module):
    """Registers the head before the LSTM; forward still runs the LSTM first."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(7, 2)
        self.lstm = _lstm(num_layers=2)

    def forward(self, x):
        return torch.tanh(self.fc(self.lstm(x)[0]))


def test_custom_module_registration_order_does_not_matter():
    module = FcFirst().eval()
    x = _inputs()
    model = loaders.from_torch(module)
    check_parity(model, x, torch_outputs(module, x))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_storage_dtypes(dtype, tmp_path):
    module = _lstm(num_layers=2).eval()
    tdtype = getattr(torch, dtype)
    sd = {k: v.to(tdtype) for k, v in module.state_dict().items()}
    ref = _lstm(num_layers=2).eval()
    ref.load_state_dict({k: v.float() for k, v in sd.items()})  # the weights fastlstm gets: rounded, float32
    if dtype == "float64":
        ref = ref.double()
        ref.load_state_dict(sd)
    x = _inputs()
    expected = torch_outputs(ref, x.astype(np.float64) if dtype == "float64" else x)
    torch.save(sd, tmp_path / "m.pt")
    safetensors_torch.save_file(sd, tmp_path / "m.safetensors")
    for path in ("m.pt", "m.safetensors"):
        check_parity(loaders.load(tmp_path / path), x, expected)


def test_views_strides_offsets_and_prefix(tmp_path):
    """Tensors that are views (transposed, offset into a shared storage) must be read by stride."""
    module = LstmFc(_lstm(num_layers=2), 3).eval()
    sd = module.state_dict()
    big = torch.zeros(4000)
    views = {}
    pos = 17
    for k, v in sd.items():  # pack every tensor into one storage, some stored transposed
        n = v.numel()
        if v.ndim == 2 and k.endswith("weight_hh_l1"):
            chunk = big[pos : pos + n].view(v.shape[1], v.shape[0])
            chunk.copy_(v.t())
            views[k] = chunk.t()
        else:
            chunk = big[pos : pos + n].view(v.shape)
            chunk.copy_(v)
            views[k] = chunk
        pos += n + 3
    torch.save({"model." + k: v for k, v in views.items()}, tmp_path / "m.pt")
    x = _inputs()
    model = loaders.load(tmp_path / "m.pt", head_activation="linear")
    check_parity(model, x, torch_outputs(module, x))


def test_parameters_dict_and_checkpoint_key(tmp_path):
    module = _lstm(num_layers=2).eval()
    torch.save(dict(module.named_parameters()), tmp_path / "params.pt")  # nn.Parameter pickles
    torch.save({"epoch": 3, "model_state_dict": module.state_dict(), "lr": 0.1}, tmp_path / "ckpt.pt")
    x = _inputs()
    expected = torch_outputs(module, x)
    check_parity(loaders.load(tmp_path / "params.pt"), x, expected)
    with pytest.raises(ValueError, match="key='model_state_dict'"):
        loaders.load(tmp_path / "ckpt.pt")
    check_parity(loaders.load(tmp_path / "ckpt.pt", key="model_state_dict"), x, expected)


def test_structure_is_inferred_completely(tmp_path):
    """The layer-count trap: a 3-layer bidirectional projected LSTM loads as exactly that."""
    module = _lstm(num_layers=3, bidirectional=True, proj_size=2)
    torch.save(module.state_dict(), tmp_path / "m.pt")
    spec = read_spec(tmp_path / "m.pt")
    assert len(spec.layers) == 3
    assert all(layer.bidirectional and layer.proj_size == 2 and layer.hidden_size == 7 for layer in spec.layers)


def test_from_torch_refusals():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="Hardtanh"):
        loaders.from_torch(nn.Sequential(nn.LSTM(3, 4), TakeOutput(), nn.Linear(4, 2), nn.Hardtanh()))
    with pytest.raises(ValueError, match="not a tensor"):
        loaders.from_torch(nn.Sequential(nn.Linear(3, 3), nn.LSTM(3, 4)))  # returns the (output, state) tuple
    with pytest.raises(ValueError, match="dim=0"):
        loaders.from_torch(nn.Sequential(nn.LSTM(3, 4), TakeOutput(), nn.Linear(4, 2), nn.Softmax(dim=0)))
    with pytest.raises(TypeError, match="head_activaton"):
        loaders.from_torch(nn.LSTM(3, 4).state_dict(), head_activaton="sigmoid")
    with pytest.raises(ValueError, match="head_activation"):
        loaders.from_torch(nn.LSTM(3, 4).state_dict(), head_activation="gelu_fast")
    with pytest.raises(TypeError, match="forward"):
        loaders.from_torch(nn.LSTM(3, 4), head_activation="sigmoid")
    with pytest.raises(TypeError, match="obj"):
        loaders.from_torch(42)
    with pytest.raises(TypeError, match="fastlstm.load"):
        loaders.from_torch("model.pt")
