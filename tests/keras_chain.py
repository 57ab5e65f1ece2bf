"""Keras 3 layer objects (torch backend) as fastlstm layers, written from Keras' documented weight
layouts, for the layer parity tests (the loaders have their own mapping; this one checks the engine)."""

import numpy as np

from fastlstm.layers import (
    Activation,
    AvgPool1D,
    BatchNorm,
    Conv1D,
    Dense,
    Embedding,
    GlobalAvgPool1D,
    GlobalMaxPool1D,
    GRULayer,
    GRUWeights,
    LastStep,
    LayerNorm,
    LSTMLayer,
    LSTMWeights,
    MaxPool1D,
    RepeatVector,
    RNNLayer,
    RNNWeights,
)

KERAS_ACT = {
    "linear": "linear",
    "relu": "relu",
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "softmax": "softmax",
    "hard_sigmoid": "hard_sigmoid",
    "elu": "elu",
    "selu": "selu",
    "gelu": "gelu_tanh",
    "silu": "silu",
    "swish": "silu",
    "softplus": "softplus",
    "softsign": "softsign",
}


def _act(layer):
    name = layer.activation.__name__ if hasattr(layer, "activation") else "linear"
    return KERAS_ACT[name]


def _cell_weights(cell, gates):
    """(weight_ih, weight_hh, bias_ih, bias_hh) in PyTorch gate order from a Keras cell."""
    w = [np.asarray(v) for v in cell.get_weights()]
    kernel, rec = w[0], w[1]
    bias = w[2] if len(w) > 2 else None
    H = rec.shape[0]
    if gates == 3:  # Keras z, r, h -> PyTorch r, z, n
        perm = np.r_[H : 2 * H, 0:H, 2 * H : 3 * H]
    else:
        perm = np.arange(gates * H)
    b_ih = b_hh = None
    if bias is not None:
        bias = bias[..., perm]
        b_ih, b_hh = (bias[0], bias[1]) if bias.ndim == 2 else (bias, None)
    return kernel[:, perm].T, rec[:, perm].T, b_ih, b_hh


def _recurrent(layer, backward=None):
    import keras

    rnn = layer.forward_layer if isinstance(layer, keras.layers.Bidirectional) else layer
    layers = [rnn] + ([layer.backward_layer] if rnn is not layer else [])
    cell_kind = type(rnn).__name__
    gates = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}[cell_kind]
    wcls = {"LSTM": LSTMWeights, "GRU": GRUWeights, "SimpleRNN": RNNWeights}[cell_kind]
    dirs = [wcls(*_cell_weights(r.cell, gates)) for r in layers]
    kw = {"activation": KERAS_ACT[rnn.cell.activation.__name__]}
    if cell_kind != "SimpleRNN":
        kw["recurrent_activation"] = KERAS_ACT[rnn.cell.recurrent_activation.__name__]
    if cell_kind == "GRU":
        kw["reset_after"] = rnn.cell.reset_after
    if rnn is not layer:
        kw["merge_mode"] = layer.merge_mode
    else:
        kw["go_backwards"] = rnn.go_backwards
    cls = {"LSTM": LSTMLayer, "GRU": GRULayer, "SimpleRNN": RNNLayer}[cell_kind]
    out = [cls(dirs, **kw)]
    if not rnn.return_sequences:
        out.append(LastStep(final_state=True))
    return out


def fastlstm_layers(model):
    out = []
    for layer in model.layers:
        name = type(layer).__name__
        w = [np.asarray(v) for v in layer.get_weights()]
        if name in ("LSTM", "GRU", "SimpleRNN", "Bidirectional"):
            out.extend(_recurrent(layer))
        elif name == "Dense":
            out.append(Dense(w[0].T, w[1] if len(w) > 1 else None, activation=_act(layer)))
        elif name == "Conv1D":
            pad = layer.padding
            out.append(
                Conv1D(
                    w[0].transpose(2, 1, 0),
                    w[1] if len(w) > 1 else None,
                    stride=layer.strides[0],
                    dilation=layer.dilation_rate[0],
                    groups=layer.groups,
                    padding=pad,
                    activation=_act(layer),
                )
            )
        elif name == "MaxPooling1D":
            out.append(MaxPool1D(layer.pool_size[0], layer.strides[0], layer.padding))
        elif name == "AveragePooling1D":
            out.append(AvgPool1D(layer.pool_size[0], layer.strides[0], layer.padding, count_include_pad=False))
        elif name == "GlobalMaxPooling1D":
            out.append(GlobalMaxPool1D())
        elif name == "GlobalAveragePooling1D":
            out.append(GlobalAvgPool1D())
        elif name == "LayerNormalization":
            out.append(LayerNorm(w[0].shape[0], w[0], w[1], layer.epsilon))
        elif name == "BatchNormalization":
            out.append(BatchNorm(w[2], w[3], w[0], w[1], layer.epsilon))
        elif name == "Embedding":
            out.append(Embedding(w[0]))
        elif name == "RepeatVector":
            out.append(RepeatVector(layer.n))
        elif name == "Activation":
            out.append(Activation(KERAS_ACT[layer.activation.__name__]))
        elif name in ("Dropout", "Flatten"):
            continue
        else:
            raise TypeError(name)
    return out


def randomize(model, seed=0):
    """Random weights of a moderate scale (BatchNorm variances positive)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        ws = layer.get_weights()
        new = [rng.normal(0, 0.4, w.shape).astype(np.float32) for w in ws]
        if type(layer).__name__ == "BatchNormalization":
            new[3] = rng.uniform(0.5, 1.5, ws[3].shape).astype(np.float32)
        layer.set_weights(new)
    return model
