"""bf16 and int8 (issue 15; the semantics are in docs/precision.md): the float64 oracle itself
against independent facts, the engine against that oracle (tight bounds) and against fp32 PyTorch
(documented bounds), through predict, Stream, StreamPool and any thread count (bit for bit), on
every kernel path this CPU has (bit for bit), and the bundled CO2 model's forecast error."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastlstm
import oracle
import precision_outputs
from checks import child_env
from fastlstm import _isa, data
from fastlstm.harness import configs
from fastlstm.layers import GRULayer, GRUWeights, LSTMWeights, RNNWeights

HERE = os.path.dirname(os.path.abspath(__file__))
LOW = precision_outputs.LOW


def _bf16_torch(a):
    """bf16 rounding by torch (an implementation independent of oracle.bf16_round), as float64."""
    return torch.from_numpy(np.array(a, np.float32)).bfloat16().double()


def _int8_torch(a):
    """The spec's per-row fake quantization ``sa * q`` (float64) written with torch ops (not the oracle's)."""
    a = torch.from_numpy(np.array(a, np.float32))
    amax = a.abs().amax(dim=1)
    q = torch.round(a * (127 / torch.where(amax > 0, amax, 1.0))[:, None]).clamp(-127, 127)
    return q.double() * (amax / 127).double()[:, None]


def _int8_weight_torch(w):
    """Per output row, by torch.quantize_per_channel (qint8, symmetric), dequantized in float64."""
    w = torch.from_numpy(np.array(w, np.float32))
    sw = w.abs().amax(dim=1) / 127
    q = torch.quantize_per_channel(w, sw.double(), torch.zeros(len(sw), dtype=torch.long), 0, torch.qint8)
    return q.int_repr().double() * sw.double()[:, None]


ROUND = {"bf16": (_bf16_torch, _bf16_torch), "int8": (_int8_torch, _int8_weight_torch)}


# --------------------------------------------------------------------------- the oracle itself
def test_bf16_round_is_torch_bfloat16():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200_000) * 10.0 ** rng.integers(-44, 38, 200_000)
    ties = 1 + np.arange(1, 512, 2) * 2.0**-9  # exactly halfway between two bf16: even and odd lower neighbours
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 3.4e38, -3.4e38, 1e-40, -1e-45, 2.0**-126]
    x = np.concatenate([x, ties, -ties, special]).astype(np.float32)
    got = oracle.bf16_round(x)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, _bf16_torch(x).float().numpy())  # NaN == NaN here
    assert np.all(np.signbit(got) == np.signbit(x))


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_int8_weights_are_torch_per_channel_qint8():
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((96, 77)) * rng.uniform(0.01, 3, (96, 1))).astype(np.float32)
    w[5] = 0.0  # a zero row: scale 0, codes 0
    q, sw = oracle.int8_weights(w)
    assert sw[5] == 0 and not q[5].any()
    live = sw > 0
    np.testing.assert_array_equal(sw, np.abs(w).max(axis=1).astype(np.float32) / np.float32(127))
    tq = torch.quantize_per_channel(
        torch.from_numpy(w[live]),
        torch.from_numpy(sw[live]),
        torch.zeros(int(live.sum()), dtype=torch.long),
        0,
        torch.qint8,
    )
    np.testing.assert_array_equal(q[live], tq.int_repr().numpy())
    assert np.abs(q).max() == 127


def _representable(rng, shape, precision, scale=0.5):
    """float32 values the precision holds exactly: bf16 numbers, or per row s * q with integers
    |q| <= 127 and one |q| = 127 (so the row's scale comes back as s)."""
    a = rng.standard_normal(shape) * scale
    if precision == "bf16":
        return _bf16_torch(a).float().numpy()
    q = rng.integers(-127, 128, shape)
    q[:, 0] = 127 * rng.choice([-1, 1], shape[0])
    return (rng.uniform(0.2, 1.0, (shape[0], 1)) * (scale / 127) * q).astype(np.float32)


def _one_step(kind, precision, rng):
    """(reduced-precision oracle, fp32 oracle) of one step from a nonzero state, where x, h0 and
    the weights of the reduced products are exact in ``precision`` and nothing else is: biases,
    c0, a projection and a reset-before GRU's W_hn are random float32."""
    I, H, P, B = 6, 8, 5, 3
    f32 = lambda *s: rng.uniform(-0.7, 0.7, s).astype(np.float32)  # noqa: E731
    exact = lambda *s: _representable(rng, s, precision)  # noqa: E731
    x = exact(B, I)[None]
    if kind == "lstm-proj":
        w = LSTMWeights(exact(4 * H, I), exact(4 * H, P), f32(4 * H), f32(4 * H), f32(P, H))
        exact_h0, c0 = exact(B, P), f32(B, H)
        run = lambda p: oracle.run_direction(x, w, exact_h0, c0, precision=p)[0]  # noqa: E731
    elif kind == "rnn":
        w = RNNWeights(exact(H, I), exact(H, H), f32(H), f32(H))
        exact_h0 = exact(B, H)
        run = lambda p: oracle.run_rnn_direction(x, w, exact_h0, precision=p)  # noqa: E731
    else:
        after = kind == "gru-after"
        w_hh = exact(3 * H, H) if after else np.concatenate([exact(2 * H, H), f32(H, H)])
        w = GRUWeights(exact(3 * H, I), w_hh, f32(3 * H), f32(3 * H))
        exact_h0 = exact(B, H)
        run = lambda p: oracle.run_gru_direction(x, w, exact_h0, reset_after=after, precision=p)  # noqa: E731
    return run(precision), run("fp32")


@pytest.mark.parametrize("precision", LOW)
@pytest.mark.parametrize("kind", ["lstm-proj", "gru-after", "gru-before", "rnn"])
def test_oracle_exact_on_representable_operands(rng, kind, precision):
    """When the rounded operands are already exact, the reduced products are the fp32 ones: so the
    oracle rounds only x, h and the weights of the gate products, and leaves biases, the cell state,
    the projection and a reset-before GRU's W_hn alone (a random one of those would show)."""
    low, fp32 = _one_step(kind, precision, rng)
    # bf16: exact products, float64 sums; int8: sa and sw come back as s within one float32 rounding.
    np.testing.assert_allclose(low, fp32, rtol=0, atol=1e-12 if precision == "bf16" else 1e-6)


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
@pytest.mark.parametrize("precision", LOW)
@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_oracle_is_torch_cell_on_rounded_operands(rng, cell, precision):
    """Over 40 steps from random operands, the oracle equals torch's own float64 LSTMCell/RNNCell fed
    operands rounded by torch (bf16: ``.bfloat16()``; int8: quantize_per_channel weights, per-row
    codes by torch ops) each step: a second implementation of the rounding and of the cell."""
    I, H, B, T = 7, 12, 3, 40
    act_round, weight_round = ROUND[precision]
    cls, weights_cls = (torch.nn.LSTMCell, LSTMWeights) if cell == "lstm" else (torch.nn.RNNCell, RNNWeights)
    torch_cell = cls(I, H, dtype=torch.float64)
    g = weights_cls.GATES * H
    w = weights_cls(*(rng.uniform(-0.5, 0.5, s).astype(np.float32) for s in [(g, I), (g, H), (g,), (g,)]))
    with torch.no_grad():
        torch_cell.weight_ih.copy_(weight_round(w.weight_ih))
        torch_cell.weight_hh.copy_(weight_round(w.weight_hh))
        torch_cell.bias_ih.copy_(torch.from_numpy(w.bias_ih))
        torch_cell.bias_hh.copy_(torch.from_numpy(w.bias_hh))
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h, c = torch.zeros(B, H, dtype=torch.float64), torch.zeros(B, H, dtype=torch.float64)
    want = []
    with torch.no_grad():
        for t in range(T):
            h_in = act_round(h.numpy())
            if cell == "lstm":
                h, c = torch_cell(act_round(x[t]), (h_in, c))
            else:
                h = torch_cell(act_round(x[t]), h_in)
            want.append(h.numpy())
    zeros = np.zeros((B, H))
    if cell == "lstm":
        got = oracle.run_direction(x, w, zeros, zeros, precision=precision)[0]
    else:
        got = oracle.run_rnn_direction(x, w, zeros, precision=precision)
    np.testing.assert_allclose(got, np.stack(want), rtol=0, atol=1e-12)
    fp32 = oracle.run_rnn_direction(x, w, zeros) if cell == "rnn" else oracle.run_direction(x, w, zeros, zeros)[0]
    assert np.abs(got - fp32).max() > 1e-3  # the rounding is there to see
