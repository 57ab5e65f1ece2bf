"""Malformed layers and chains are refused with ValueError/TypeError naming what is wrong, before
anything reaches compiled code; a chain pickles with its weights."""

import pickle

import numpy as np
import pytest

import fastlstm as fl

Z = np.zeros


def _gru(I=3, H=4):
    return fl.GRULayer([fl.GRUWeights(Z((3 * H, I)), Z((3 * H, H)))])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: fl.GRUWeights(Z((8, 3)), Z((8, 4))), r"gru.weight_ih: expected 3\*hidden_size rows"),
        (lambda: fl.GRUWeights(Z((12, 3)), Z((12, 5))), r"gru.weight_hh: expected shape \(12, 4\)"),
        (lambda: fl.GRUWeights(Z((12, 3)), Z((12, 4)), Z(11)), r"gru.bias_ih: expected shape \(12,\)"),
        (lambda: fl.GRUWeights(Z((12, 3)), Z((12, 4)), weight_hr=Z((2, 4))), "no projection"),
        (lambda: fl.RNNWeights(Z((4, 3)), np.full((4, 4), np.nan)), "NaN"),
        (lambda: fl.GRULayer([fl.GRUWeights(Z((12, 3)), Z((12, 4)))], activation="gelu"), "activation: 'gelu'"),
        (lambda: fl.Dense(Z((3, 2)), activation="swishy"), "'swishy' is not supported"),
        (lambda: fl.Dense(Z((3, 2)), activation=fl.Activation("prelu", weight=Z(2))), "2 slopes for 3 features"),
        (lambda: fl.Activation("prelu"), "prelu: needs weight"),
        (lambda: fl.Activation("relu", alpha=0.1), "only elu and leaky_relu"),
        (lambda: fl.Activation("elu", alpha=np.inf), "finite"),
        (lambda: fl.Conv1D(Z((6, 2))), r"conv1d.weight: expected a 3-d array"),
        (lambda: fl.Conv1D(Z((5, 2, 3)), groups=2), "does not divide the 5 output channels"),
        (lambda: fl.Conv1D(Z((4, 2, 3)), padding="full"), "'full' is not a padding"),
        (lambda: fl.Conv1D(Z((4, 2, 3)), padding=-1), "non-negative"),
        (lambda: fl.Conv1D(Z((4, 2, 3)), stride=0), "conv1d.stride: expected a positive int"),
        (lambda: fl.MaxPool1D(0), "pool.size"),
        (lambda: fl.BatchNorm(Z(3), -np.ones(3)), "negative variances"),
        (lambda: fl.BatchNorm(Z(3), Z(2)), r"batchnorm.var: expected shape \(3,\)"),
        (lambda: fl.LayerNorm(4, np.ones(3)), r"layernorm.gamma: expected shape \(4,\)"),
        (lambda: fl.LayerNorm(4, eps=0), "positive"),
        (lambda: fl.Embedding(Z(5)), "embedding.table: expected a 2-d array"),
        (lambda: fl.RepeatVector(0), "repeatvector.n"),
    ],
)
def test_bad_layers(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


@pytest.mark.parametrize(
    "chain, match",
    [
        (lambda: [], "at least one layer"),
        (lambda: [fl.Flatten()], "input width is unknown"),
        (lambda: [fl.MaxPool1D(2), fl.Activation("relu")], "input width is unknown"),
        (lambda: [_gru(), fl.Dense(Z((2, 5)))], r"layers\[1\]: input size 5 does not match .* output size 4"),
        (lambda: [_gru(), fl.Embedding(Z((5, 4)))], "Embedding can only be the first layer"),
        (lambda: [_gru(), fl.Flatten()], "Flatten on a sequence"),
        (lambda: [_gru(), fl.RepeatVector(3)], "RepeatVector needs one vector"),
        (lambda: [_gru(), fl.LastStep(), fl.LastStep()], "time axis was dropped"),
        (lambda: [_gru(), fl.GlobalAvgPool1D(), _gru(4, 4)], "time axis was dropped"),
        (lambda: [_gru(), fl.Activation("prelu", weight=Z(3))], "3 slopes for 4 features"),
        (lambda: [_gru(), "relu"], "expected a fastlstm layer"),
    ],
)
def test_bad_chains(chain, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fl.Model(chain())


def test_too_short_sequences():
    model = fl.Model([fl.Conv1D(np.ones((2, 3, 5), np.float32)), _gru(2, 4), fl.LastStep()])
    with pytest.raises(ValueError, match="4 time steps are too few for layers\\[0\\]"):
        model.predict(Z((4, 3)))
    assert model.predict(Z((5, 3))).shape == (4,)
    with pytest.raises(ValueError, match="at least one time step"):
        fl.Model([_gru(), fl.LastStep()]).predict(Z((0, 3)))


def test_head_and_return_sequences_keep_the_older_form():
    with pytest.raises(TypeError, match="head: expected a Dense"):
        fl.Model([_gru()], head=fl.LayerNorm(4))
    with pytest.raises(ValueError, match="head: input size 3 does not match"):
        fl.Model([_gru()], head=fl.Dense(Z((2, 3))))
    m = fl.Model([_gru()], fl.Dense(Z((2, 4))), return_sequences=False)
    assert not m.return_sequences and m.head is not None and m.predict(Z((6, 3))).shape == (2,)


def test_mixed_chain_pickles_with_weights(rng):
    u = lambda *s: rng.uniform(-0.5, 0.5, s).astype(np.float32)  # noqa: E731
    model = fl.Model(
        [
            fl.Embedding(u(9, 3)),
            fl.Conv1D(u(4, 3, 2), padding="causal"),
            fl.GRULayer([fl.GRUWeights(u(12, 4), u(12, 4), u(12), u(12))], reset_after=False),
            fl.BatchNorm(u(4), u(4) + 1),
            fl.Dense(u(2, 4), activation=fl.Activation("elu", alpha=0.5)),
        ]
    )
    back = pickle.loads(pickle.dumps(model))
    ids = rng.integers(0, 9, (30, 2))
    assert np.array_equal(back.predict(ids), model.predict(ids))
    assert repr(back) == repr(model)
