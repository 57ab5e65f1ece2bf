"""Live parity with ``torch.nn.LSTM`` (+ ``nn.Linear`` head) under ``torch.inference_mode``.

The fastlstm model is built from the torch module's state_dict arrays directly with
LSTMWeights/LSTMLayer/Dense (not ``from_torch``, which is the loader's business and tested
there), so a failure here is the engine's.  Also checks the oracle against torch, so the oracle
the other test files rely on is anchored to the real framework for bidirectional/proj/state.
"""

import numpy as np
import pytest
import torch

import fastlstm
import oracle
from fastlstm.layers import Dense, LSTMLayer, LSTMWeights

TOL = 1e-5


def _layers_from_torch(lstm: torch.nn.LSTM):
    """state_dict keys (``weight_ih_l{k}[_reverse]`` ...) -> a tuple of fastlstm.LSTMLayer, PyTorch layout unchanged."""
    sd = {k: v.detach().cpu().numpy() for k, v in lstm.state_dict().items()}
    suffixes = ["", "_reverse"] if lstm.bidirectional else [""]
    layers = []
    for k in range(lstm.num_layers):
        dirs = []
        for suf in suffixes:
            get = lambda name, k=k, suf=suf: sd.get(f"{name}_l{k}{suf}")  # noqa: E731
            dirs.append(
                LSTMWeights(get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"), get("weight_hr"))
            )
        layers.append(LSTMLayer(tuple(dirs)))
    return layers


def _head_from_torch(linear):
    if linear is None:
        return None
    bias = None if linear.bias is None else linear.bias.detach().numpy()
    return Dense(linear.weight.detach().numpy(), bias)


def _torch_run(lstm, head, x, h0c0, batch_first):
    with torch.inference_mode():
        args = (torch.from_numpy(x),) if h0c0 is None else (torch.from_numpy(x), tuple(map(torch.from_numpy, h0c0)))
        y, (hn, cn) = lstm(*args)
        if head is not None:
            y = head(y)
    return y.numpy(), hn.numpy(), cn.numpy()


CASES = [
    # (num_layers, bidirectional, proj_size, bias, head_out)
    (1, False, 0, True, None),
    (1, False, 0, True, 3),
    (3, False, 0, True, 4),
    (1, True, 0, True, 2),
    (2, True, 0, True, None),
    (2, False, 5, True, 3),
    (2, True, 5, True, 3),
    (2, False, 0, False, 3),
]


@pytest.mark.parametrize("num_layers,bidirectional,proj_size,bias,head_out", CASES)
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_matches_torch(num_layers, bidirectional, proj_size, bias, head_out, batched, batch_first, with_state):
    I, H, B, T = 7, 12, 3, 40
    torch.manual_seed(num_layers * 100 + bidirectional * 10 + proj_size)
    lstm = torch.nn.LSTM(
        I,
        H,
        num_layers=num_layers,
        bidirectional=bidirectional,
        proj_size=proj_size,
        bias=bias,
        batch_first=batch_first,
    ).eval()
    linear = None
    if head_out is not None:
        linear = torch.nn.Linear((2 if bidirectional else 1) * (proj_size or H), head_out).eval()
    model = fastlstm.Model(_layers_from_torch(lstm), _head_from_torch(linear))

    rng = np.random.default_rng(17)
    if batched:
        x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(np.float32)
    else:
        x = rng.standard_normal((T, I)).astype(np.float32)
    n = num_layers * (2 if bidirectional else 1)
    lead = (n, B) if batched else (n,)
    h0c0 = None
    state = None
    if with_state:
        h0c0 = (
            rng.standard_normal(lead + (proj_size or H,)).astype(np.float32),
            rng.standard_normal(lead + (H,)).astype(np.float32),
        )
        state = fastlstm.State(h=list(h0c0[0]), c=list(h0c0[1]))

    want, hn, cn = _torch_run(lstm, linear, x, h0c0, batch_first)
    got, final = model.predict(x, state, batch_first=batch_first, return_state=True)
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() <= TOL
    # torch's h_n/c_n are (D*L, [B,] .) in layer*D + direction order: the State's own order.
    assert np.abs(np.stack([np.asarray(a) for a in final.h]) - hn).max() <= TOL
    assert np.abs(np.stack([np.asarray(a) for a in final.c]) - cn).max() <= TOL


def test_model_sizes_match_torch():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(7, 12, num_layers=2, bidirectional=True, proj_size=5)
    model = fastlstm.Model(_layers_from_torch(lstm), _head_from_torch(torch.nn.Linear(10, 3)))
    assert (model.input_size, model.output_size) == (7, 3)
    assert "LSTM" in repr(model)


@pytest.mark.parametrize("T", [1, 1000])
def test_long_sequence_default_init(T):
    """PyTorch-default init, standard normal input, 1000 steps: no drift beyond the bound."""
    torch.manual_seed(5)
    lstm = torch.nn.LSTM(16, 32).eval()
    linear = torch.nn.Linear(32, 4).eval()
    model = fastlstm.Model(_layers_from_torch(lstm), _head_from_torch(linear))
    x = np.random.default_rng(6).standard_normal((T, 2, 16)).astype(np.float32)
    want, _, _ = _torch_run(lstm, linear, x, None, False)
    assert np.abs(model.predict(x) - want).max() <= TOL


@pytest.mark.parametrize("bidirectional,proj_size", [(False, 0), (True, 0), (True, 4), (False, 4)])
def test_oracle_matches_torch(bidirectional, proj_size):
    """Anchors the oracle (used by the other files) to torch, independent of the engine."""
    torch.manual_seed(9)
    lstm = torch.nn.LSTM(5, 9, num_layers=2, bidirectional=bidirectional, proj_size=proj_size).eval()
    rng = np.random.default_rng(10)
    x = rng.standard_normal((20, 3, 5)).astype(np.float32)
    n = 2 * (2 if bidirectional else 1)
    h0 = rng.standard_normal((n, 3, proj_size or 9)).astype(np.float32)
    c0 = rng.standard_normal((n, 3, 9)).astype(np.float32)
    want, hn, cn = _torch_run(lstm, None, x, (h0, c0), False)
    got, st = oracle.forward(_layers_from_torch(lstm), None, x, oracle.OracleState(list(h0), list(c0)))
    assert np.abs(got - want).max() <= 1e-6
    assert np.abs(np.stack(st.h) - hn).max() <= 1e-6
    assert np.abs(np.stack(st.c) - cn).max() <= 1e-6
