"""Embedding(mask_zero=True): Keras' masking of token id 0 against the float64 oracle (a masked step
keeps a recurrent layer's state and repeats its output; a Bidirectional layer that returns sequences
outputs zeros there), per row in a batch and per stream in a StreamPool, step-by-step equal to
predict bit for bit, in every precision and thread count; and the chains whose mask would reach a
layer fastlstm does not mask are refused."""

import numpy as np
import pytest

import fastlstm
import oracle
from fastlstm.layers import (
    Activation,
    Conv1D,
    Dense,
    Embedding,
    GlobalAvgPool1D,
    GRULayer,
    GRUWeights,
    LastStep,
    LayerNorm,
    LSTMLayer,
    LSTMWeights,
    RNNLayer,
    RNNWeights,
)

V, E, T, B = 11, 5, 120, 4
TOL = 1e-5


def _u(rng, *shape):
    return rng.uniform(-0.6, 0.6, shape).astype(np.float32)


def _ids(rng, B=B, T=T):
    """Token ids with about a third zeros, a row that starts padded and one that ends padded."""
    ids = rng.integers(1, V, (T, B))
    ids[rng.random((T, B)) < 0.3] = 0
    ids[:25, 0] = 0
    ids[-30:, 1 % B] = 0
    return ids


def _chain(rng, bidirectional=False, last=False):
    """Embedding(mask_zero) -> LSTM (projected) -> LayerNorm/Dense -> GRU (reset-before) -> RNN -> Dense."""
    lstm = [LSTMWeights(_u(rng, 28, E), _u(rng, 28, 5), _u(rng, 28), _u(rng, 28), weight_hr=_u(rng, 5, 7))]
    gru_in = 5 * (2 if bidirectional else 1)
    gru = [
        GRUWeights(_u(rng, 18, 6), _u(rng, 18, 6), _u(rng, 18), _u(rng, 18)) for _ in range(2 if bidirectional else 1)
    ]
    layers = [
        Embedding(_u(rng, V, E), mask_zero=True),
        LSTMLayer(lstm * (2 if bidirectional else 1)),
        LayerNorm(gru_in, _u(rng, gru_in) + 1, _u(rng, gru_in)),
        Dense(_u(rng, 6, gru_in), _u(rng, 6), activation="tanh"),
        GRULayer(gru, reset_after=False, recurrent_activation="hard_sigmoid"),
        Activation("relu"),
        RNNLayer([RNNWeights(_u(rng, 4, 6 * len(gru)), _u(rng, 4, 4), _u(rng, 4), _u(rng, 4))]),
    ]
    return layers + ([LastStep(final_state=True)] if last else []) + [Dense(_u(rng, 3, 4), _u(rng, 3))]


def _oracle(layers, ids, precision="fp32"):
    """The chain in float64, layer by layer, with Keras' mask."""
    mask = ids != 0
    h = layers[0].table.astype(np.float64)[ids]
    for k, layer in enumerate(layers[1:], 1):
        if isinstance(layer, (LSTMLayer, GRULayer, RNNLayer)):
            last = k + 1 < len(layers) and isinstance(layers[k + 1], LastStep)
            h = oracle.forward_recurrent([layer], h, last_step=last, precision=precision, mask=mask)
        elif isinstance(layer, LayerNorm):
            h = oracle.layernorm(h, layer.gamma, layer.beta, layer.eps)
        elif isinstance(layer, Dense):
            h = oracle.dense(layer, h)
        elif isinstance(layer, Activation):
            h = oracle.ACTIVATIONS[layer.name](h)
    return h


def _steps(stream, ids):
    return np.stack([stream.step(ids[t]) for t in range(ids.shape[0])])


@pytest.mark.parametrize("last", [False, True])
def test_predict_and_stream_match_the_oracle(rng, last):
    layers = _chain(rng, last=last)
    model = fastlstm.Model(layers)
    ids = _ids(rng)
    want = _oracle(layers, ids)
    y = model.predict(ids)
    np.testing.assert_allclose(y, want, atol=TOL, rtol=0)
    steps = _steps(model.stream(B), ids)
    np.testing.assert_array_equal(steps[-1] if last else steps, y)  # bit for bit
    # A masked step of a row repeats its previous output (zeros before its first token).
    if not last:
        assert np.all(y[:25, 0] == y[0, 0])


@pytest.mark.parametrize("last", [False, True])
def test_bidirectional(rng, last):
    layers = _chain(rng, bidirectional=True, last=last)
    model = fastlstm.Model(layers)
    ids = _ids(rng)
    np.testing.assert_allclose(model.predict(ids), _oracle(layers, ids), atol=TOL, rtol=0)


@pytest.mark.parametrize("merge", ["concat", "sum", "ave"])
@pytest.mark.parametrize("last", [False, True])
def test_bidirectional_outputs_at_masked_steps(rng, merge, last):
    """Keras: zeros at the masked steps of a Bidirectional layer that returns sequences, the last
    unmasked outputs of both directions when it does not."""
    gru = [GRUWeights(_u(rng, 18, E), _u(rng, 18, 6), _u(rng, 18), _u(rng, 18)) for _ in range(2)]
    width = 6 if merge != "concat" else 12
    layers = [Embedding(_u(rng, V, E), mask_zero=True), GRULayer(gru, merge_mode=merge)]
    layers += [LastStep(final_state=True)] * last + [Dense(_u(rng, 3, width), _u(rng, 3))]
    ids = _ids(rng)
    y = fastlstm.Model(layers).predict(ids)
    np.testing.assert_allclose(y, _oracle(layers, ids), atol=TOL, rtol=0)
    if not last:
        np.testing.assert_allclose(y[ids == 0], np.broadcast_to(layers[-1].bias, y[ids == 0].shape), atol=1e-7)


def test_masked_row_is_the_row_without_its_zeros(rng):
    """Row by row: the outputs at a row's tokens are those of its tokens alone, zeros removed."""
    layers = _chain(rng, last=False)
    model = fastlstm.Model(layers)
    ids = _ids(rng)
    y = model.predict(ids)
    for b in range(B):
        kept = ids[:, b] != 0
        np.testing.assert_allclose(y[kept, b], model.predict(ids[kept, b]), atol=1e-6, rtol=0)


def test_pool_streams_at_different_positions_equal_predict(rng):
    layers = _chain(rng)
    model = fastlstm.Model(layers)
    ids = _ids(rng, B=3)
    want = model.predict(ids)
    pool = model.pool(8)
    sids = [pool.open() for _ in range(3)]
    # Stream k starts k*7 steps late, so one pool step mixes masked and unmasked rows at different t.
    start = [0, 7, 14]
    got = [[] for _ in sids]
    for tick in range(T + 14):
        live = [k for k in range(3) if 0 <= tick - start[k] < T]
        ys = pool.step([sids[k] for k in live], np.array([ids[tick - start[k], k] for k in live]))
        for j, k in enumerate(live):
            got[k].append(ys[j])
    for k in range(3):
        np.testing.assert_array_equal(np.stack(got[k]), want[:, k])


def test_state_round_trip_mid_sequence(rng):
    layers = _chain(rng)
    model = fastlstm.Model(layers)
    ids = _ids(rng, B=2)
    want = model.predict(ids)
    s = model.stream(2)
    first = _steps(s, ids[:60])
    s2 = model.stream(2)
    s2.state = fastlstm.State.from_bytes(s.state.to_bytes())
    np.testing.assert_array_equal(np.concatenate([first, _steps(s2, ids[60:])]), want)
    y, st = model.predict(ids[:60], return_state=True)
    np.testing.assert_array_equal(model.predict(ids[60:], st), want[60:])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_give_the_same_bits(rng, threads):
    layers = [
        Embedding(_u(rng, V, 8), mask_zero=True),
        LSTMLayer([LSTMWeights(_u(rng, 1024, 8), _u(rng, 1024, 256), _u(rng, 1024), None)]),
        Dense(_u(rng, 2, 256), None),
    ]
    model = fastlstm.Model(layers)
    ids = _ids(rng, B=70, T=12)
    with fastlstm.threads(1):
        ref, ref1 = model.predict(ids), model.predict(ids[:, :1])
    with fastlstm.threads(threads):
        np.testing.assert_array_equal(model.predict(ids), ref)
        np.testing.assert_array_equal(model.predict(ids[:, :1]), ref1)
    np.testing.assert_allclose(ref, _oracle(layers, ids), atol=TOL, rtol=0)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precisions_keep_masked_state(rng, precision):
    layers = [
        Embedding(_u(rng, V, 16), mask_zero=True),
        LSTMLayer([LSTMWeights(_u(rng, 128, 16), _u(rng, 128, 32), _u(rng, 128), _u(rng, 128))]),
        GRULayer([GRUWeights(_u(rng, 96, 32), _u(rng, 96, 32), _u(rng, 96), _u(rng, 96))]),
        Dense(_u(rng, 3, 32), _u(rng, 3)),
    ]
    model = fastlstm.Model(layers, precision=precision)
    ids = _ids(rng)
    y = model.predict(ids)
    np.testing.assert_allclose(y, _oracle(layers, ids, precision), atol=2e-4, rtol=0)
    np.testing.assert_array_equal(_steps(model.stream(B), ids), y)
    masked = np.nonzero(ids[1:] == 0)
    np.testing.assert_array_equal(y[1:][masked], y[:-1][masked])  # a masked step repeats the last output


@pytest.mark.parametrize(
    "after,match",
    [
        (lambda rng: [Conv1D(_u(rng, 4, E, 2), None, padding="causal")], "Conv1D.*mask"),
        (lambda rng: [_lstm(rng), GlobalAvgPool1D()], "GlobalAvgPool1D.*mask"),
        (lambda rng: [Dense(_u(rng, 4, E), None), LastStep()], "LastStep.*mask"),
        (lambda rng: [LSTMLayer([_w(rng)], go_backwards=True)], "go_backwards"),
        (lambda rng: [LSTMLayer([_w(rng), _w(rng)]), LastStep()], "final_state=True"),
    ],
)
def test_refusals(rng, after, match):
    with pytest.raises(ValueError, match=match):
        fastlstm.Model([Embedding(_u(rng, V, E), mask_zero=True)] + after(rng))


def test_mask_ends_at_the_last_step(rng):
    """After a recurrent layer's last step there is no mask: any layer may follow, and a GlobalAvgPool1D
    on an unmasked Embedding is fine."""
    fastlstm.Model([Embedding(_u(rng, V, E), mask_zero=True), _lstm(rng), LastStep(), Dense(_u(rng, 2, 4), None)])
    fastlstm.Model([Embedding(_u(rng, V, E)), GlobalAvgPool1D()])
    with pytest.raises(TypeError, match="mask_zero"):
        Embedding(_u(rng, V, E), mask_zero="yes")


def test_onnx_export_refuses_a_mask(rng):
    from fastlstm.onnx_export import onnx_bytes

    model = fastlstm.Model([Embedding(_u(rng, V, E), mask_zero=True), _lstm(rng)])
    with pytest.raises(ValueError, match="mask_zero"):
        onnx_bytes(model)


def test_native_file_keeps_the_mask(rng, tmp_path):
    layers = _chain(rng)
    model = fastlstm.Model(layers)
    model.save(tmp_path / "m.fastlstm")
    loaded = fastlstm.load(tmp_path / "m.fastlstm")
    assert loaded.layers[0].mask_zero
    ids = _ids(rng)
    np.testing.assert_array_equal(loaded.predict(ids), model.predict(ids))


def _w(rng):
    return LSTMWeights(_u(rng, 16, E), _u(rng, 16, 4), _u(rng, 16), None)


def _lstm(rng):
    return LSTMLayer([_w(rng)])
