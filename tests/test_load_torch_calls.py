"""Pools and Conv1d settings in ``layers=`` for PyTorch state_dict files: ``"maxpool1d(3, stride=2,
padding=1)"``, ``"avgpool1d(...)"``, the global pools and ``"conv(padding=2)"``, spelled as their
constructor calls.  Real torch modules are
saved with ``torch.save(model.state_dict())`` and loaded with ``layers=[...]``; ``predict`` must match
the module (and ``step`` must match it on every prefix where the pool streams).  Bad spellings and
options fastlstm's pools cannot reproduce are refused naming ``layers[i]``."""

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastlstm.loaders as loaders
from fastlstm import cli
from fastlstm.layers import AvgPool1D, GlobalAvgPool1D, GlobalMaxPool1D, MaxPool1D
from fastlstm.loaders.torch_calls import parse_pool
from loader_helpers import TOL, check_parity, torch_one_thread, torch_outputs  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.usefixtures("torch_one_thread")
nn = torch.nn
I, B, T = 5, 3, 301  # odd sizes: windows that do not tile the sequence


class PoolFirst(nn.Module):
    """A pool over the raw input, then an LSTM and a per-step Linear."""

    def __init__(self, pool):
        super().__init__()
        self.pool, self.lstm, self.fc = pool, nn.LSTM(I, 7, batch_first=True), nn.Linear(7, 3)

    def forward(self, x):
        out, _ = self.lstm(self.pool(x.transpose(1, 2)).transpose(1, 2))
        return self.fc(out)


class PoolBetween(nn.Module):
    """GRU -> pool over its outputs -> bidirectional GRU -> Linear, time-major."""

    def __init__(self, pool):
        super().__init__()
        self.gru1, self.pool = nn.GRU(I, 6), pool
        self.gru2, self.fc = nn.GRU(6, 5, bidirectional=True), nn.Linear(10, 2)

    def forward(self, x):
        out, _ = self.gru1(x)
        out, _ = self.gru2(self.pool(out.permute(1, 2, 0)).permute(2, 0, 1))
        return self.fc(out)


class GlobalPoolHead(nn.Module):
    """LSTM -> mean or max over time -> fc2(relu(fc1(.))); ``prefix_outputs`` is the same head on the
    running pool of every prefix, which is what a stream returns step by step."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.lstm = nn.LSTM(I, 9, num_layers=2, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(9, 4), nn.Linear(4, 3)

    def head(self, pooled):
        return self.fc2(torch.relu(self.fc1(pooled)))

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out.mean(dim=1) if self.kind == "avg" else out.amax(dim=1))

    def prefix_outputs(self, x):
        with torch.no_grad():
            out, _ = self.lstm(torch.from_numpy(x))
            if self.kind == "avg":
                pooled = out.cumsum(1) / torch.arange(1, out.shape[1] + 1).view(1, -1, 1)
            else:
                pooled = out.cummax(1).values
            return self.head(pooled).numpy()  # (B, T, 3)


def _pt(module):
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    buf.seek(0)
    return buf


def _x(seed, batch_first):
    x = np.random.default_rng(seed).standard_normal((B, T, I) if batch_first else (T, B, I)).astype(np.float32)
    return x


@pytest.mark.parametrize(
    "pool,spelling,layer",
    [
        (nn.MaxPool1d(3, stride=2, padding=1), "maxpool1d(3, stride=2, padding=1)", MaxPool1D(3, 2, 1)),
        (nn.MaxPool1d(4), "MaxPool1d(kernel_size=4)", MaxPool1D(4)),
        (nn.MaxPool1d(2), "nn.MaxPool1d(2, None, 0, 1, False, False)", MaxPool1D(2)),
        (nn.AvgPool1d(5, stride=3, padding=2), "avgpool1d(5, 3, 2)", AvgPool1D(5, 3, 2)),
        (
            nn.AvgPool1d(4, stride=3, padding=2, count_include_pad=False),
            "torch.nn.AvgPool1d((4,), stride=(3,), padding=2, count_include_pad=False)",
            AvgPool1D(4, 3, 2, count_include_pad=False),
        ),
        (nn.AvgPool1d(2), "avgpool1d(2)", AvgPool1D(2)),
    ],
)
def test_pool_first_matches_torch(pool, spelling, layer):
    torch.manual_seed(1)
    module = PoolFirst(pool).eval()
    x = _x(1, batch_first=True)
    model = loaders.load(_pt(module), layers=[spelling, "lstm", "fc"])
    assert model.layers[0] == layer
    check_parity(model, x, torch_outputs(module, x), batch_first=True, stream=False)
    with pytest.raises(ValueError, match="layer 0 is a"):
        model.stream()


@pytest.mark.parametrize(
    "pool,spelling",
    [
        (nn.AvgPool1d(3, stride=2, padding=1), "avgpool1d(3, stride=2, padding=1)"),
        (nn.AvgPool1d(5, stride=1, padding=2, count_include_pad=False), "avgpool1d(5, 1, 2, False, False)"),
        (nn.MaxPool1d(3, stride=1, padding=1), "maxpool1d(3, 1, 1)"),
    ],
)
def test_pool_between_recurrent_layers_matches_torch(pool, spelling):
    torch.manual_seed(2)
    module = PoolBetween(pool).eval()
    x = _x(2, batch_first=False)
    model = loaders.from_torch(module.state_dict(), layers=["gru1", spelling, "gru2", "fc"])
    check_parity(model, x, torch_outputs(module, x), stream=False)
    # The live module's own pool reads the same (one conversion for both).
    assert [type(la) for la in loaders.from_torch(module).layers] == [type(la) for la in model.layers]
    assert loaders.from_torch(module).layers[1] == model.layers[1]


@pytest.mark.parametrize(
    "kind,spelling,layer",
    [
        ("avg", "globalavgpool1d", GlobalAvgPool1D()),
        ("avg", "AdaptiveAvgPool1d(output_size=1)", GlobalAvgPool1D()),
        ("max", "GlobalMaxPool1d()", GlobalMaxPool1D()),
        ("max", "adaptivemaxpool1d(1, return_indices=False)", GlobalMaxPool1D()),
    ],
)
def test_global_pool_head_matches_torch_and_streams(kind, spelling, layer):
    torch.manual_seed(3)
    module = GlobalPoolHead(kind).eval()
    x = _x(3, batch_first=True)
    model = loaders.load(_pt(module), layers=["lstm", spelling, "fc1", "relu", "fc2"])
    assert model.layers[2] == layer
    check_parity(model, x, torch_outputs(module, x), batch_first=True, stream=True)
    # Every step of a stream is the head on the running pool of the steps so far.
    s = model.stream(batch_size=B)
    steps = np.stack([s.step(x[:, t]) for t in range(T)], axis=1)
    err = float(np.max(np.abs(steps - module.prefix_outputs(x))))
    assert err <= TOL, err


class ConvFront(nn.Module):
    """The published sensor/audio pattern: Conv1d -> ReLU -> pool -> LSTM -> Linear, the front end in an
    nn.Sequential (keys 'front.0.weight', ...)."""

    def __init__(self, conv, pool):
        super().__init__()
        self.front = nn.Sequential(conv, nn.ReLU(), pool)
        self.lstm = nn.LSTM(conv.out_channels, 7, batch_first=True)
        self.fc = nn.Linear(7, 2)

    def forward(self, x):
        out, _ = self.lstm(self.front(x.permute(0, 2, 1)).permute(0, 2, 1))
        return self.fc(out)


@pytest.mark.parametrize(
    "conv,conv_spelling,pool,pool_spelling",
    [
        (nn.Conv1d(I, 8, 5, padding=2), "front.0(5, 8, 5, padding=2)", nn.MaxPool1d(2), "maxpool1d(2)"),
        (nn.Conv1d(I, 6, 3), "front.0()", nn.MaxPool1d(3, 2, 1), "maxpool1d(3, 2, 1)"),
        (
            nn.Conv1d(I, 4, 4, stride=2, dilation=3, bias=False),
            "front.0(stride=2, dilation=3, bias=False)",
            nn.AvgPool1d(3, 1, 1, count_include_pad=False),
            "avgpool1d(3, 1, 1, count_include_pad=False)",
        ),
        (
            nn.Conv1d(I, 10, 3, groups=I, padding="same"),
            "front.0(groups=5, padding='same')",
            nn.AvgPool1d(2),
            "avgpool1d(2)",
        ),
        (nn.Conv1d(I, 6, 4, padding="valid"), "front.0(kernel_size=(4,), padding='valid')", nn.Identity(), None),
        (nn.Conv1d(I, 6, 4, padding="same", dilation=2), "front.0(padding='same', dilation=2)", nn.Identity(), None),
    ],
)
def test_conv_front_with_a_pool_matches_torch(conv, conv_spelling, pool, pool_spelling):
    torch.manual_seed(6)
    module = ConvFront(conv, pool).eval()
    x = _x(6, batch_first=True)
    layers = [conv_spelling, "relu", pool_spelling, "lstm", "fc"]
    model = loaders.load(_pt(module), layers=[n for n in layers if n is not None])
    check_parity(model, x, torch_outputs(module, x), batch_first=True, stream=False)


@pytest.mark.parametrize(
    "spelling,match",
    [
        (
            "front.0",
            r"'front.0.bias', 'front.0.weight': a 3-d weight \(8, 5, 5\), an nn.Conv1d .*; its stride, "
            r"padding, dilation and groups are not in a state_dict: name it with them in layers=, e.g. "
            r"'front.0\(stride=1, padding=0\)' \('front.0\(\)' for nn.Conv1d's defaults\)",
        ),
        ("front.0(4, 8, 5)", r"layers\[0\] \('front.0\(4, 8, 5\)'\): in_channels=4, but the weights say 5"),
        ("front.0(kernel_size=3)", "kernel_size=3, but the weights say 5"),
        ("front.0(out_channels=8.0)", r"out_channels=8\.0, but the weights say 8"),
        ("front.0(bias=False)", "bias=False, but the weights say True"),
        ("front.0(padding_mode='reflect')", "padding_mode='reflect' is not supported"),
        ("front.0(padding='causal')", "padding='causal'; expected 'same', 'valid' or an int >= 0"),
        ("front.0(stride=0)", "stride=0; expected an int >= 1"),
        ("front.0(groups=0)", "groups=0; expected an int >= 1"),
        ("front.0(pad=1)", r"names 'pad', which nn.Conv1d does not take; accepted forms: 'PREFIX\(in_channels"),
        ("front.0(padding=p)", r"is not a call with literal arguments \(ValueError\); accepted forms: 'PREFIX"),
        ("lstm(padding=1)", "'lstm' is a recurrent module; only an nn.Conv1d takes settings"),
        ("fc(padding=1)", r"an nn.Linear; only an nn.Conv1d \(a 3-d weight\) takes its settings in layers="),
    ],
)
def test_bad_conv_spellings_are_refused(spelling, match):
    module = ConvFront(nn.Conv1d(I, 8, 5), nn.MaxPool1d(2))
    order = [spelling, "relu", "maxpool1d(2)", "lstm", "fc"]
    if spelling.startswith(("lstm", "fc")):
        order = ["front.0()", "relu", "maxpool1d(2)", "lstm", "fc"]
        order[3 if spelling.startswith("lstm") else 4] = spelling
    with pytest.raises(ValueError, match=match):
        loaders.read_spec(_pt(module), layers=order)


def test_grouped_conv_settings_must_fit_the_chain():
    """groups is not in the weights: a wrong one gives another input width, which the chain refuses
    (first in the chain, the model's input width, which predict checks)."""
    module = ConvFront(nn.Conv1d(I, 10, 3, groups=I), nn.MaxPool1d(2))
    sd = {"pre.weight": torch.randn(I, 4), "pre.bias": torch.randn(I), **module.state_dict()}
    with pytest.raises(
        ValueError, match=r"layers\[1\]: input size 1 does not match the previous layer's output size 5"
    ):
        loaders.from_torch(sd, layers=["pre", "front.0(groups=1)", "relu", "maxpool1d(2)", "lstm", "fc"])


def test_cli_layers_take_pools(tmp_path, capsys):
    """--layers splits at top-level commas only, so a pool's arguments stay together."""
    torch.manual_seed(4)
    module = PoolFirst(nn.MaxPool1d(3, stride=2, padding=1)).eval()
    path, out = tmp_path / "m.pt", tmp_path / "m.fastlstm"
    torch.save(module.state_dict(), path)
    layers = "maxpool1d(3, stride=2, padding=1), lstm, fc"
    assert cli.main(["convert", str(path), str(out), "--layers", layers]) == 0
    assert cli.main(["info", str(path), "--layers", layers]) == 0
    assert "MaxPool1D(size=3, stride=2, padding=(1, 1))" in capsys.readouterr().out
    x = _x(4, batch_first=True)
    check_parity(loaders.load(out), x, torch_outputs(module, x), batch_first=True, stream=False)
    with pytest.raises(SystemExit):
        cli.main(["info", str(path), "--layers", "maxpool1d(3, stride=2,lstm,fc"])
    assert "comma-separated" in capsys.readouterr().err


_FORMS = r"accepted forms: 'maxpool1d\(kernel_size"


@pytest.mark.parametrize(
    "spelling,match",
    [
        ("maxpool1d", r"'maxpool1d' is missing 'kernel_size'; " + _FORMS),
        ("avgpool1d()", "is missing 'kernel_size'; " + _FORMS),
        (
            "minpool1d(2)",
            r"is neither a pool nor a Conv1d's key prefix with its settings \('PREFIX\(in_ch.*\); " + _FORMS,
        ),
        ("maxpool1d(2", "is not a pool call or a Conv1d's key prefix with its settings; " + _FORMS),
        ("maxpool1d(k)", r"is not a call with literal arguments \(ValueError\); " + _FORMS),
        ("maxpool1d(2)(3)", "is not a call with literal arguments"),
        ("maxpool1d(2, stride=2, stride=3)", "gives 'stride' twice; " + _FORMS),
        ("maxpool1d(2, **{})", r"is not a call with literal arguments \(ValueError\)"),
        ("maxpool1d(2,,)", r"is not a call with literal arguments \(SyntaxError\)"),
        ("maxpool1d(2, kernel_size=2)", "gives 'kernel_size' twice; " + _FORMS),
        ("avgpool1d(3, divisor_override=2)", "names 'divisor_override', which AvgPool1d does not take; " + _FORMS),
        ("maxpool1d(1, 2, 0, 1, False, False, 7)", "has 7 positional arguments; MaxPool1d takes 6"),
        ("globalavgpool1d(1)", "has 1 positional arguments; GlobalAvgPool1D takes 0"),
        ("maxpool1d(0)", "kernel_size=0; expected an int >= 1"),
        ("maxpool1d(2.0)", r"kernel_size=2\.0; expected an int >= 1"),
        ("maxpool1d(True)", "kernel_size=True; expected an int >= 1"),
        ("maxpool1d(3, stride=0)", "stride=0; expected an int >= 1"),
        ("maxpool1d(3, padding=-1)", "padding=-1; expected an int >= 0"),
        ("avgpool1d(3, padding=2)", "padding=2 is more than half of kernel_size=3, which PyTorch refuses"),
        ("maxpool1d(3, ceil_mode=True)", r"ceil_mode=True \(a last, partial window\) is not supported"),
        ("avgpool1d(3, ceil_mode=1)", "ceil_mode=1; expected True or False"),
        ("maxpool1d(3, dilation=2)", "dilation=2 is not supported"),
        ("maxpool1d(3, return_indices=True)", r"return_indices=True returns \(values, indices\)"),
        ("adaptiveavgpool1d(2)", "adaptive pooling to output_size=2 steps is not supported"),
        ("adaptivemaxpool1d(1, True)", "return_indices=True"),
    ],
)
def test_bad_pool_spellings_are_refused(spelling, match):
    module = PoolFirst(nn.MaxPool1d(2))
    with pytest.raises(ValueError, match=r"layers\[0\]") as info:
        loaders.read_spec(_pt(module), layers=[spelling, "lstm", "fc"])
    assert info.match(match)


def test_torch_refuses_what_fastlstm_refuses():
    """The padding rule is PyTorch's own: such a pool fails in torch, so no trained model has one."""
    with pytest.raises(RuntimeError, match="pad should be at most half"):
        nn.AvgPool1d(3, padding=2)(torch.zeros(1, 2, 8))


def test_a_prefix_named_like_a_pool_is_the_module():
    """A key prefix wins over a pool's bare name, as it does over an activation's."""
    torch.manual_seed(5)
    module = nn.Sequential()
    module.add_module("lstm", nn.LSTM(I, 4))
    sd = {**{f"lstm.{k}": v for k, v in module.lstm.state_dict().items()}}
    sd.update({"globalmaxpool1d.weight": torch.randn(2, 4), "globalmaxpool1d.bias": torch.randn(2)})
    model = loaders.from_torch(sd, layers=["lstm", "globalmaxpool1d"])
    assert model.layers[-1].output_size == 2
    unknown = "is neither a key prefix .* nor a pool \\('maxpool1d"
    with pytest.raises(ValueError, match=r"layers\[1\]: 'fc' " + unknown):
        loaders.from_torch(sd, layers=["lstm", "fc"])


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=40),
        st.builds(
            "{}({})".format,
            st.sampled_from(["maxpool1d", "AvgPool1d", "nn.adaptiveavgpool1d", "globalmaxpool1d", "pool"]),
            st.text(alphabet="0123456789-=,.()[]{}*'\" abcdeFgiklnoprstuxyTN_\x00", max_size=30),
        ),
    )
)
def test_any_text_is_a_pool_none_or_a_value_error(text):
    """Whatever is typed into layers=, the pool parser answers a layer, "not a pool" or a ValueError."""
    try:
        layer = parse_pool(text, "layers[0]")
    except ValueError as exc:
        assert str(exc).startswith("layers[0]")
        return
    assert layer is None or isinstance(layer, (MaxPool1D, AvgPool1D, GlobalMaxPool1D, GlobalAvgPool1D))
