"""bf16 and int8 (issue 15; the semantics are in docs/precision.md): the float64 oracle itself
against independent facts, the engine against that oracle (tight bounds) and against fp32 PyTorch
(documented bounds), through predict, Stream, StreamPool and any thread count (bit for bit), on
every kernel path this CPU has (bit for bit), and the bundled CO2 model's forecast error."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import precision_outputs
import pytest
import torch

import fastlstm
import oracle
from checks import child_env
from fastlstm import _isa, data
from fastlstm.harness import configs
from fastlstm.layers import GRULayer, GRUWeights, LSTMWeights, RNNWeights

HERE = os.path.dirname(os.path.abspath(__file__))
LOW = precision_outputs.LOW

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # torch's spinning OpenMP workers stall a busy CI box


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
        torch_cell.bias_ih.copy_(torch.tensor(w.bias_ih))
        torch_cell.bias_hh.copy_(torch.tensor(w.bias_hh))
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


# --------------------------------------------------------------------------- the engine against the oracle
#: Engine vs the float64 oracle that applies the same rounding, per stream (batch row) of a case.
#: What is left is float32 against float64: the accumulation order (bf16's fp32 chain over k; int8's
#: sums are exact integers), the float32 state and the approximate activations -- measured at most
#: 1.6e-6 (bf16, over 280 terms) and 1.4e-7 (int8), relative to the output scale.  TIGHT bounds that.
#: One more effect comes from the rounding itself: a 1-ulp float32 difference in h can move it across
#: a bf16 rounding boundary or an int8 bucket boundary, which changes that operand by a whole bf16
#: ulp (2^-8 relative) or int8 step (max|h| / 127) in one of the two computations.  Such a flip is
#: rare (about 1e-5 per operand and step), hits one stream, and fades with the state: measured
#: 2 of the 70 streams of "lstm-chunks" in bf16 (largest error 2.2e-5) and 1 in int8 (1.1e-4), none
#: elsewhere.  So: at most 5% of a case's streams may exceed TIGHT, and none FLIP, about 4x the
#: largest flip measured; a kernel that rounds anything else, or differently, is off on every stream.
TIGHT = {"bf16": 3e-6, "int8": 1e-6}
FLIP = {"bf16": 1e-4, "int8": 5e-4}

CASES = list(precision_outputs.CASES)


def _err(got, want):
    """Largest deviation relative to the reference's scale (absolute where |values| <= 1)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    return float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))


def _stream_errors(name, got, want):
    """``_err`` of each stream (batch row) of case ``name``'s output, as a list."""
    B, last_step = precision_outputs.CASES[name][1], precision_outputs.CASES[name][4]
    if B is None:
        return [_err(got, want)]
    axis = 0 if last_step else 1
    return [_err(np.take(got, b, axis), np.take(want, b, axis)) for b in range(B)]


def _check_oracle(name, precision, got, want):
    errs = np.array(_stream_errors(name, got, want))
    assert errs.max() <= FLIP[precision], (name, precision, errs.max())
    off = int((errs > TIGHT[precision]).sum())
    assert off <= 0.05 * len(errs), (name, precision, off, len(errs), errs.max())


@pytest.fixture(scope="module")
def references():
    """{(case, precision): float64 oracle output} for every case at fp32, bf16 and int8."""
    return {(n, p): precision_outputs.reference(n, p) for n in CASES for p in ("fp32", *LOW)}


@pytest.fixture(scope="module")
def default_outputs():
    """precision_outputs.outputs() on this process's (default) kernel path."""
    return precision_outputs.outputs()


@pytest.mark.parametrize("precision", LOW)
@pytest.mark.parametrize("name", CASES)
def test_predict_matches_oracle(references, name, precision):
    model, _, _, x, _ = precision_outputs.case(name, precision)
    assert model.precision == precision
    got = model.predict(x)
    _check_oracle(name, precision, got, references[name, precision])
    # The bound tells the precisions apart: fp32 results, or the other rounding, are off on every stream.
    for other in {"fp32", *LOW} - {precision}:
        assert min(_stream_errors(name, got, references[name, other])) > 5 * TIGHT[precision], other


@pytest.mark.parametrize("precision", LOW)
def test_state_in_and_out_match_oracle(rng, precision):
    """From a random initial state, the output and the final (h, c) of every direction, with a
    projection and a head (oracle.forward, the LSTM reference that carries state)."""
    layers, head = oracle.random_stack(rng, 5, 18, 2, proj_size=7, bidirectional=True, head_size=2)
    model = fastlstm.Model(layers, head, precision=precision)
    init = oracle.random_state(rng, layers, 4)
    x = rng.standard_normal((30, 4, 5)).astype(np.float32)
    got, state = model.predict(x, fastlstm.State(h=init.h, c=init.c), return_state=True)
    want, want_state = oracle.forward(layers, head, x, init, precision=precision)
    for a, b in [(got, want), *zip(state.h, want_state.h), *zip(state.c, want_state.c)]:
        assert _err(a, b) <= TIGHT[precision], _err(a, b)
    assert _err(got, oracle.forward(layers, head, x, init)[0]) > 5 * TIGHT[precision]


# --------------------------------------------------------------------------- the same bits every way
@pytest.mark.parametrize("precision", LOW)
def test_with_precision_is_the_keyword(precision):
    base, _, _, x, _ = precision_outputs.case("lstm-proj-bidir")
    before = base.predict(x)
    derived = base.with_precision(precision)
    assert derived.precision == precision and base.precision == "fp32"
    np.testing.assert_array_equal(
        derived.predict(x), precision_outputs.case("lstm-proj-bidir", precision)[0].predict(x)
    )
    np.testing.assert_array_equal(base.predict(x), before)  # the old model is unchanged
    np.testing.assert_array_equal(derived.with_precision("fp32").predict(x), before)


@pytest.mark.parametrize("precision", LOW)
@pytest.mark.parametrize("name", [n for n in CASES if precision_outputs.streamed(n)])
def test_stream_equals_predict_bit_for_bit(default_outputs, name, precision):
    """Batch invariance: stepping one step at a time gives predict's bits."""
    stream = default_outputs[f"{name}/{precision}/stream"]
    np.testing.assert_array_equal(stream, default_outputs[f"{name}/{precision}/predict"])


@pytest.mark.parametrize("precision", LOW)
@pytest.mark.parametrize("name", ["lstm-head", "lstm-team", "gru-after-stack"])
def test_lone_stream_equals_pooled_stream(name, precision):
    """A stream alone and the same stream among 7 others in a StreamPool (which steps the rows
    together, in shuffled order, some steps skipping some rows): the same bits."""
    model, _, _, x, _ = precision_outputs.case(name, precision)
    x = x if x.ndim == 3 else x[:, None]
    T, I = x.shape[0], x.shape[2]
    rng = np.random.default_rng(3)
    others = rng.standard_normal((T, 7, I)).astype(np.float32)
    lone = model.stream()
    pool = model.pool(8)
    assert pool.precision == precision and lone.precision == precision
    ids = np.array([pool.open() for _ in range(8)])
    for t in range(T):
        want = lone.step(x[t, 0])
        rows = np.concatenate([[0], 1 + np.flatnonzero(rng.random(7) < 0.7)])
        rng.shuffle(rows)
        inputs = np.concatenate([x[t, :1], others[t]])[rows]
        got = pool.step(ids[rows], inputs)
        np.testing.assert_array_equal(got[np.flatnonzero(rows == 0)[0]], want)


@pytest.mark.parametrize("precision", LOW)
@pytest.mark.parametrize("name", ["lstm-head", "lstm-chunks", "lstm-team", "lstm-proj-bidir", "gru-after-stack"])
def test_thread_count_changes_no_bit(restore_threads, name, precision):
    model, _, _, x, _ = precision_outputs.case(name, precision)
    runs = {}
    for n in (1, 2, 3):
        fastlstm.set_num_threads(n)
        runs[n] = [model.predict(x)]
        if x.ndim == 3 and model.streamable:
            pool = model.pool(x.shape[1])
            ids = np.array([pool.open() for _ in range(x.shape[1])])
            runs[n].append(np.stack([pool.step(ids, v) for v in x]))
    for n in (2, 3):
        for got, want in zip(runs[n], runs[1]):
            np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------- every kernel path
#: Every path this CPU runs: the extension paths (VNNI, BF16, AMX) and the fallbacks of machines
#: without them (avx512, avx2, generic: bf16 by widening loads, int8 by widening integer multiplies).
PATHS = _isa.runnable()


@pytest.fixture(scope="module")
def path_outputs(tmp_path_factory, default_outputs):
    """{path: precision_outputs.outputs() on that path}, each from a child Python with FASTLSTM_ISA set."""
    out = {}
    for path in PATHS:
        if path == _isa.levels()[0]:
            out[path] = default_outputs
            continue
        target = tmp_path_factory.mktemp("precision") / f"{path}.npz"
        env = child_env(FASTLSTM_ISA=path)
        env["PYTHONPATH"] = os.pathsep.join([HERE, env["PYTHONPATH"]])
        script = os.path.join(HERE, "precision_outputs.py")
        subprocess.run([sys.executable, script, str(target)], env=env, check=True, timeout=300)
        with np.load(target) as f:
            got = {k: f[k] for k in f.files}
        assert str(got.pop("path")) == path
        out[path] = got
    return out


@pytest.mark.parametrize("path", PATHS)
def test_every_path_within_oracle_bounds(path_outputs, references, path):
    """Machines without the instructions (simulated with FASTLSTM_ISA) run bf16 and int8 through the
    fallback within the same bounds."""
    assert sorted(path_outputs[path]) == sorted(path_outputs[PATHS[0]])
    for key, value in path_outputs[path].items():
        name, precision, _ = key.split("/")
        _check_oracle(name, precision, value, references[name, precision])


@pytest.mark.parametrize("path", [p for p in PATHS if _isa.base(p) != p])
def test_extension_path_has_its_fallbacks_bits(path_outputs, path):
    """The reduced products are exact-order fp32 chains (bf16) or exact integer sums then one fmaf
    (int8), so VNNI and AVX512-BF16 give their base path's fallback the very same bits, and AMX does
    for int8.  AMX's bf16 tiles round their sums their own way (include/fastlstm_lowp.h), so there
    only the oracle bounds apply (test_every_path_within_oracle_bounds).  (Paths of different bases
    differ by an ulp, as fp32 does, in what stays fp32: the activations and the narrow products -- a
    head, a projection -- which tests/test_isa.py bounds.)"""
    fallback = path_outputs[_isa.base(path)]
    for key, value in path_outputs[path].items():
        if path == "amx" and key.split("/")[1] == "bf16":
            continue
        np.testing.assert_array_equal(value, fallback[key], err_msg=f"{path} {key}")


# --------------------------------------------------------------------------- against fp32 PyTorch
#: Largest |fastlstm - torch.nn.LSTM / nn.GRU in fp32| over every output (h in [-1, 1]) in 1000 steps
#: of the benchmark configs' shapes, weights drawn as fastlstm/harness/configs.py draws them and unit
#: normal inputs.  This is the cost of the precision itself (the rounding of weights and activations,
#: carried through the recurrence), not an implementation error.  Measured (docs/precision.md):
#: bf16 3.8e-4 to 2.1e-3 (LSTM), 1.4e-3 to 3.3e-3 (GRU); int8 1.3e-3 to 8.6e-3 (LSTM), 4.7e-3 to
#: 1.1e-2 (GRU); fp32 itself at most 8.5e-7.  bf16 keeps 8 significant bits of each operand; int8
#: about 7 bits of the largest value of its row, so smaller entries keep fewer and int8 deviates about
#: 3x more.  bf16's bound is the issue's (1e-2, 3x the largest measured), int8's 2.3x its largest.
TORCH_TOL = {"fp32": 1e-5, "bf16": 1e-2, "int8": 2.5e-2}

#: Steps per config in the default run (the slow test runs 1000 everywhere): the batched large
#: shapes cost the most, and their deviation saturates within tens of steps.
CI_STEPS = {"tiny": 1000, "small": 1000, "medium": 1000, "medium-batch": 200, "large": 200, "large-batch": 30}
GRU_CONFIGS = ("tiny", "small", "medium")


def _gru_pair(cfg, seed=0):
    """(fastlstm GRU stack, torch.nn.GRU) with the same weights, drawn like configs.random_arrays."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(cfg.H)
    module = torch.nn.GRU(cfg.I, cfg.H, cfg.L)
    layers, state = [], {}
    for k, i in enumerate(cfg.layer_inputs()):
        shapes = [(3 * cfg.H, i), (3 * cfg.H, cfg.H), (3 * cfg.H,), (3 * cfg.H,)]
        arrays = [rng.uniform(-bound, bound, s).astype(np.float32) for s in shapes]
        layers.append(GRULayer([GRUWeights(*arrays)]))
        for name, a in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), arrays):
            state[f"{name}_l{k}"] = torch.tensor(a)
    module.load_state_dict(state)
    return fastlstm.Model(layers), module


def _torch_deviations(name, steps, kind):
    """{precision: max |fastlstm - torch fp32|} over ``steps`` steps of config ``name``."""
    cfg = dataclasses.replace(configs.CONFIGS[name], T=steps)
    x = configs.make_inputs(cfg)
    if kind == "lstm":
        arrays = configs.random_arrays(cfg)
        model = configs.model_from_arrays(arrays, cfg.L)
        module = torch.nn.LSTM(cfg.I, cfg.H, cfg.L)
        module.load_state_dict({k: torch.tensor(v) for k, v in arrays.items()})
    else:
        model, module = _gru_pair(cfg)
    with torch.inference_mode():
        want = module(torch.from_numpy(x))[0].numpy().astype(np.float64)
    return {p: float(np.abs(model.with_precision(p).predict(x) - want).max()) for p in ("fp32", *LOW)}


def _check_torch(name, steps, kind):
    dev = _torch_deviations(name, steps, kind)
    print(f"\n{kind} {name} {steps} steps: " + "  ".join(f"{p} {d:.2e}" for p, d in dev.items()))
    for p, d in dev.items():
        assert d <= TORCH_TOL[p], (kind, name, p, d)
    assert dev["int8"] > dev["bf16"] > 10 * dev["fp32"]  # each precision is what it says


@pytest.mark.parametrize("name", list(configs.CONFIGS))
def test_lstm_vs_torch_fp32(name):
    _check_torch(name, CI_STEPS[name], "lstm")


@pytest.mark.parametrize("name", GRU_CONFIGS)
def test_gru_vs_torch_fp32(name):
    _check_torch(name, CI_STEPS[name], "gru")


@pytest.mark.slow
@pytest.mark.parametrize("kind, name", [("lstm", n) for n in configs.CONFIGS] + [("gru", n) for n in GRU_CONFIGS])
def test_vs_torch_fp32_1000_steps(kind, name):
    _check_torch(name, 1000, kind)


# --------------------------------------------------------------------------- the bundled CO2 model
#: The forecast error (ppm) may differ from fp32's by at most this much: 1.7% of the model's error.
#: Measured on the held-out weeks: fp32 0.28972, bf16 0.28967, int8 0.28989 (docs/precision.md),
#: differences 100x and 30x below the margin; the naive "last value" forecast scores 0.403.
CO2_MARGIN = {"bf16": 0.005, "int8": 0.005}


def test_co2_forecast_error_per_precision():
    """``fastlstm demo``'s score (MAE of the one-week forecast over the held-out weeks) per precision."""
    series = data.load_series()
    x = data.features(series)
    weeks = data.scored_weeks(series)
    base = fastlstm.load(data.MODEL_PATH)
    mae = {}
    for p in fastlstm.PRECISIONS:
        pred = data.forecast(series, base.with_precision(p).predict(x))
        mae[p] = float(np.abs(pred[weeks] - series.co2[weeks + 1]).mean())
    print("\nCO2 held-out MAE (ppm): " + "  ".join(f"{p} {m:.5f}" for p, m in mae.items()))
    naive = float(np.abs(series.co2[weeks] - series.co2[weeks + 1]).mean())
    assert mae["fp32"] < 0.9 * naive  # the model is worth scoring at all
    for p in LOW:
        assert abs(mae[p] - mae["fp32"]) <= CO2_MARGIN[p], (p, mae)
