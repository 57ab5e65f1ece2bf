"""A whole sequence flattened into one vector in a traced PyTorch module (``fc(out.flatten(1))``,
``nn.Flatten()``, ``x.view(x.size(0), -1)``), step-major (B, T, F) and feature-major (B, F, T).  The
module does not record T; the nn.Linear the flatten feeds does.  ``predict`` must match torch; another
length, ``stream()`` and a flatten whose T cannot be read exactly are refused, naming the op."""

import numpy as np
import pytest
import torch

import fastlstm.loaders as loaders
from fastlstm.layers import Flatten
from loader_helpers import check_parity, torch_one_thread, torch_outputs  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.usefixtures("torch_one_thread")
nn = torch.nn
F = torch.nn.functional
I, H, T, B = 3, 5, 13, 4


class StepMajorLstm(nn.Module):
    """fc2(relu(fc1(out.flatten(1)))) on a batch_first LSTM: values t * H + f."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(I, H, num_layers=2, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(T * H, 7), nn.Linear(7, 2)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc2(F.relu(self.fc1(out.flatten(1))))


class TimeMajorGru(nn.Module):
    """A time-major GRU, flattened after a transpose (step-major) or a permute (feature-major)."""

    def __init__(self, feature_major, bidirectional=False):
        super().__init__()
        self.feature_major = feature_major
        self.gru = nn.GRU(I, H, bidirectional=bidirectional)
        self.fc = nn.Linear(T * H * (2 if bidirectional else 1), 3)

    def forward(self, x):
        out, _ = self.gru(x)  # (T, B, H)
        flat = out.permute(1, 2, 0).flatten(1) if self.feature_major else torch.flatten(out.transpose(0, 1), 1)
        return self.fc(flat)


class SequentialHead(nn.Module):
    """nn.Flatten and Dropout in an nn.Sequential head, after a bidirectional LSTM."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(I, H, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(T * 2 * H, 4), nn.Tanh())

    def forward(self, x):
        return self.head(self.lstm(x)[0])


class ConvFront(nn.Module):
    """Conv1d -> ReLU -> LSTM, then x.view(x.size(0), -1) into the Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(I, 6, 3, padding=1)
        self.lstm = nn.LSTM(6, H, batch_first=True)
        self.fc = nn.Linear(T * H, 2)

    def forward(self, x):
        y = F.relu(self.conv(x.permute(0, 2, 1))).permute(0, 2, 1)
        out, _ = self.lstm(y)
        return self.fc(out.contiguous().view(out.size(0), -1))


class ConvAfter(nn.Module):
    """LSTM -> Conv1d (valid: T - 2 steps) flattened as (B, channels, time), without transposing back."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(I, H, batch_first=True)
        self.conv = nn.Conv1d(H, 4, 3)
        self.fc = nn.Linear(4 * (T - 2), 2)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(self.conv(out.permute(0, 2, 1)).flatten(1))


MODULES = {
    "step_major_lstm": (StepMajorLstm, True, T),
    "time_major_gru": (lambda: TimeMajorGru(False), False, T),
    "time_major_gru_feature_major": (lambda: TimeMajorGru(True), False, T),
    "bidirectional_gru_feature_major": (lambda: TimeMajorGru(True, bidirectional=True), False, T),
    "sequential_head": (SequentialHead, True, T),
    "conv_front": (ConvFront, True, T),
    "conv_after_feature_major": (ConvAfter, True, T - 2),
}


def _module(name):
    torch.manual_seed(0)
    return MODULES[name][0]().eval()


def _x(batch_first, steps=T, seed=1):
    x = np.random.default_rng(seed).standard_normal((B, steps, I) if batch_first else (steps, B, I))
    return x.astype(np.float32)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_flattened_sequence_matches_torch(name):
    module = _module(name)
    _, batch_first, steps = MODULES[name]
    model = loaders.from_torch(module)
    assert Flatten(steps=steps) in model.layers
    x = _x(batch_first)
    expected = torch_outputs(module, x)
    check_parity(model, x, expected, batch_first=batch_first, stream=False)
    one = x[0] if batch_first else x[:, 0]  # one sequence, no batch axis
    check_parity(model, one, expected[0], stream=False)


def test_feature_major_is_not_read_as_step_major():
    """The (B, F, T) flatten's order matters: read step-major it would be a different function."""
    step, feat = TimeMajorGru(False).eval(), TimeMajorGru(True).eval()
    feat.load_state_dict(step.state_dict())
    x = _x(False)
    assert np.max(np.abs(torch_outputs(step, x) - torch_outputs(feat, x))) > 1e-2
    check_parity(loaders.from_torch(feat), x, torch_outputs(feat, x), stream=False)


def test_other_lengths_and_streaming_are_refused():
    model = loaders.from_torch(_module("step_major_lstm"))
    for steps in (T - 1, T + 1):
        with pytest.raises(ValueError, match=rf"Flatten\(steps={T}\)\) flattens exactly {T} steps"):
            model.predict(_x(True, steps), batch_first=True)
    with pytest.raises(ValueError, match=f"flattens a whole sequence of {T} steps into one vector"):
        model.stream()
    with pytest.raises(ValueError, match="flattens a whole sequence"):
        model.pool(2)


class Refused(nn.Module):
    def __init__(self, after, in_features=T * H):
        super().__init__()
        self.after = after
        self.lstm = nn.LSTM(I, H, batch_first=True)
        self.fc = nn.Linear(in_features, 2)
        self.norm = nn.LayerNorm(T * H)

    def forward(self, x):
        out, _ = self.lstm(x)
        if self.after == "linear":
            return self.fc(out.flatten(1))
        if self.after == "tanh":
            return self.fc(torch.tanh(out.flatten(1)))
        if self.after == "norm":
            return self.fc(self.norm(out.flatten(1)))
        if self.after == "end":
            return out.flatten(1)
        return self.fc(out.flatten(0, 1))  # merges the batch into time


@pytest.mark.parametrize(
    "after,in_features,match",
    [
        (
            "linear",
            T * H + 1,
            rf"the method \.flatten\(\) \(flatten\): flattens a sequence of {H} features per step into "
            rf"nn.Linear 'fc' with in_features={T * H + 1}, which is not a whole number of steps",
        ),
        ("linear", H - 1, r"in_features=4, which is not a whole number of steps \(4 / 5\)"),
        ("tanh", T * H, "reads it only from an nn.Linear right after the flatten .* followed by activation 'tanh'"),
        ("norm", T * H, "followed by module 'norm'"),
        ("end", T * H, r"followed by nothing \(forward\(\) ends there\)"),
        ("batch", T * H, r"\.flatten\(\) \(flatten\): flattening axes \('B', 'T'\) together is not supported"),
    ],
)
def test_flatten_refusals_name_the_op(after, in_features, match):
    with pytest.raises(ValueError, match=match):
        loaders.from_torch(Refused(after, in_features))
