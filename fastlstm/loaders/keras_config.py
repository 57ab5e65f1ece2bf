"""Turn a Keras model config plus its weights into a fastlstm :class:`Spec` (a chain of layers).

Shared by the ``.keras`` reader, the legacy ``.h5`` reader and live model objects; each
supplies ``get_weights(layer_entry) -> [(name, array), ...]`` in Keras' variable order.
The config is walked in the order the model runs (Sequential: list order; Functional:
the input-to-output chain), never matched by layer name alone.

Supported (each maps to one class of :mod:`fastlstm.layers`): LSTM, GRU (``reset_after``
True and False), SimpleRNN, Bidirectional of any of them; Conv1D (channels_last, valid /
same / causal, strides, dilation, groups); Dense anywhere, TimeDistributed(any per-step
layer); Activation, ReLU, LeakyReLU, ELU, PReLU, Softmax; BatchNormalization,
LayerNormalization; Embedding first; MaxPooling1D / AveragePooling1D and the global
poolings; Flatten after the time axis is gone; RepeatVector; ``return_sequences=False``
as a LastStep; and layers that are the identity at inference (Dropout, noise layers).
Keras 1 configs and weights are rewritten to their Keras 2 form first (:mod:`.keras1`).
Everything else is refused naming the layer, because running a model without one of its
layers would silently give wrong outputs.
"""

from __future__ import annotations

import numpy as np

from ..layers import (
    Activation,
    AvgPool1D,
    BatchNorm,
    Conv1D,
    Dense,
    Embedding,
    Flatten,
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
    masked_recurrent,
)
from . import keras1
from ._common import check_steps_option, float_weight, make_spec
from ._limits import shown

#: Layers that do nothing at inference time.
IDENTITY_LAYERS = frozenset(
    {"Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization"}
)
_CELL_ACTS = {"sigmoid", "tanh", "relu", "linear"}
#: Keras activation names that need no options, and fastlstm's name for them.
_PLAIN_ACTS = {
    "linear": "linear",
    "relu": "relu",
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "softmax": "softmax",
    "elu": "elu",
    "selu": "selu",
    "softplus": "softplus",
    "softsign": "softsign",
    "swish": "silu",
    "silu": "silu",
    "gelu": "gelu",
}  # Keras' gelu defaults to approximate=False: the erf form
_REFUSED_WHY = {
    "Masking": "masking skips time steps per sample, which fastlstm does not implement",
    "Lambda": "a Lambda layer holds Python code, which fastlstm never runs",
    "CuDNNLSTM": "CuDNN weight layout is not supported; re-save the model with a plain LSTM layer",
    "CuDNNGRU": "CuDNN weight layout is not supported; re-save the model with a plain GRU layer",
    "Attention": "attention layers are not supported",
    "MultiHeadAttention": "attention layers are not supported",
    "AdditiveAttention": "attention layers are not supported",
    "Reshape": "Reshape changes the meaning of the axes; fastlstm runs chains over (time, features)",
    "Permute": "Permute swaps time and features; fastlstm runs chains over (time, features)",
    "Merge": "a Keras 1 Merge joins several branches; fastlstm runs one chain of layers",
}
_RECURRENT = {
    "LSTM": (LSTMLayer, LSTMWeights, 4),
    "GRU": (GRULayer, GRUWeights, 3),
    "SimpleRNN": (RNNLayer, RNNWeights, 1),
}
#: Layers that act on each time step alone (what TimeDistributed may wrap).
_PER_STEP = (
    frozenset(
        {
            "Dense",
            "Activation",
            "ReLU",
            "LeakyReLU",
            "ELU",
            "PReLU",
            "Softmax",
            "BatchNormalization",
            "LayerNormalization",
            "Normalization",
        }
    )
    | IDENTITY_LAYERS
)
#: keras.config.epsilon(), which Normalization divides by at least (the file does not record it).
_KERAS_EPSILON = 1e-7
_POOLS = {"MaxPooling1D": MaxPool1D, "AveragePooling1D": AvgPool1D, "MaxPool1D": MaxPool1D, "AvgPool1D": AvgPool1D}
_GLOBAL_POOLS = {
    "GlobalMaxPooling1D": GlobalMaxPool1D,
    "GlobalAveragePooling1D": GlobalAvgPool1D,
    "GlobalMaxPool1D": GlobalMaxPool1D,
    "GlobalAvgPool1D": GlobalAvgPool1D,
}


def _fail(source, entry, why):
    name = entry.get("config", {}).get("name") if isinstance(entry.get("config"), dict) else None
    raise ValueError(f"{source}: layer {shown(name)} ({str(entry.get('class_name'))[:80]}): {why}")


def _opt(source, entry, key, types, default):
    cfg = entry["config"]
    value = cfg.get(key, default)
    if value is None and default is None:
        return None
    if not isinstance(value, types) or (types in (int, (int,)) and isinstance(value, bool)):
        _fail(source, entry, f"config {key}={shown(value)} has the wrong type")
    return value


def _one_int(source, entry, key, default=None, minimum=1):
    """An int option Keras may store as ``n`` or ``[n]`` (``kernel_size``, ``strides``, ...)."""
    raw = value = entry["config"].get(key, default)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        _fail(source, entry, f"config {key}={shown(raw)} must be an integer >= {minimum}")
    return check_steps_option(value, f"layer {shown(entry['config'].get('name'))}: {key}", source)


def _axis_is_last(source, entry, key, has_time):
    """Norms and softmax must act on the feature axis: -1, or its index (2 in a sequence, 1 after LastStep)."""
    axis = entry["config"].get(key, -1)
    if isinstance(axis, list) and len(axis) == 1:
        axis = axis[0]
    if axis not in (-1, 2 if has_time else 1):
        _fail(
            source,
            entry,
            f"{key}={shown(entry['config'].get(key))} is not the feature axis; fastlstm normalizes over features only",
        )


def _channels_last(source, entry):
    fmt = entry["config"].get("data_format", "channels_last")
    if fmt not in ("channels_last", None):
        _fail(source, entry, f"data_format={shown(fmt)} is not supported (only channels_last: (time, features))")


def keras_major(version):
    """Major version from a ``keras_version`` string, or None when unknown."""
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    try:
        return int(str(version).split(".")[0])
    except (ValueError, TypeError):
        return None


def _activation_name(value):
    # Keras 3 may serialise a built-in activation as a dict naming the function.
    if isinstance(value, dict) and value.get("module") in ("keras.activations", "keras.src.activations"):
        value = value.get("config")
    if value is None:
        return "linear"
    return value if isinstance(value, str) else None


def _hard_sigmoid(source, entry, key, major):
    # Keras 1/2: clip(0.2x + 0.5); Keras 3: clip(x/6 + 0.5).  Outputs differ by ~0.14, so
    # an unknown version is refused rather than guessed.
    if major in (1, 2):
        return "hard_sigmoid_keras2"
    if major is not None and major >= 3:
        return "hard_sigmoid"
    _fail(
        source,
        entry,
        f"{key}='hard_sigmoid' means different formulas in Keras 2 and 3, and the file records no keras_version",
    )


def cell_activation(source, entry, key, major, default):
    raw = entry["config"].get(key, default)
    name = _activation_name(raw)
    if name in _CELL_ACTS:
        return name
    if name == "hard_sigmoid":
        return _hard_sigmoid(source, entry, key, major)
    _fail(source, entry, f"{key}={shown(raw)} is not supported (supported: sigmoid, tanh, hard_sigmoid, relu, linear)")


def layer_activation(source, entry, key, major, default="linear"):
    """A Dense/Conv1D/Activation ``activation`` as a fastlstm name or :class:`Activation`."""
    raw = entry["config"].get(key, default)
    name = _activation_name(raw)
    if name in _PLAIN_ACTS:
        return _PLAIN_ACTS[name]
    if name == "hard_sigmoid":
        return _hard_sigmoid(source, entry, key, major)
    if name == "leaky_relu" and major is not None and major >= 3:
        return Activation("leaky_relu", alpha=0.2)  # keras.activations.leaky_relu(negative_slope=0.2)
    _fail(
        source,
        entry,
        f"{key}={shown(raw)} is not supported (supported: {', '.join(sorted(_PLAIN_ACTS))}, hard_sigmoid, leaky_relu)",
    )


def _check_names(source, entry, weights, expected, direction=None):
    """Check weight names (when they are names, not bare indices) against the expected suffixes."""
    names = [n for n, _ in weights]
    if len(weights) != len(expected):
        _fail(source, entry, f"expected {len(expected)} weight(s) {list(expected)}, found {len(weights)}: {names}")
    for name, want in zip(names, expected):
        if name.isdigit():
            continue  # .keras files number their variables in creation order
        parts = name.split("/")
        scope = [p for p in parts if p.startswith(("forward_", "backward_"))]
        wrong_dir = direction is not None and scope and not scope[-1].startswith(direction + "_")
        if parts[-1].split(":")[0] != want or wrong_dir:
            _fail(
                source,
                entry,
                f"weight {shown(name)} found where the {direction + ' ' if direction else ''}"
                f"{shown(want)} was expected",
            )


def _weights(source, entry, weights, expected, label=None, direction=None):
    """The arrays of ``weights`` as float32, checked against the ``expected`` names."""
    _check_names(source, entry, weights, expected, direction)
    label = label or entry["config"].get("name")
    return [float_weight(a, f"{label}/{n}", source) for n, a in weights]


# --- recurrent layers ----------------------------------------------------------------------


def _rnn_options(source, entry, major):
    cls = entry.get("class_name")
    units = _opt(source, entry, "units", int, None)
    if units is None or units <= 0:
        _fail(source, entry, f"units={shown(units)} must be a positive integer")
    if _opt(source, entry, "return_state", bool, False):
        _fail(source, entry, "return_state=True makes the layer return extra tensors; not supported")
    opts = dict(
        units=units,
        activation=cell_activation(source, entry, "activation", major, "tanh"),
        use_bias=_opt(source, entry, "use_bias", bool, True),
        go_backwards=_opt(source, entry, "go_backwards", bool, False),
        return_sequences=_opt(source, entry, "return_sequences", bool, False),
    )
    if cls != "SimpleRNN":
        opts["recurrent_activation"] = cell_activation(source, entry, "recurrent_activation", major, "sigmoid")
    if cls == "GRU":
        opts["reset_after"] = _opt(source, entry, "reset_after", bool, None)
    return opts


def _gru_rows(a, units):
    """Keras GRU gate blocks z, r, h -> PyTorch's r, z, n (formats.md §0), on the last axis."""
    return np.concatenate([a[..., units : 2 * units], a[..., :units], a[..., 2 * units :]], axis=-1)


def _rnn_weights(source, entry, cls, opts, weights, direction=None, label=None):
    """One direction's weights; ``entry`` is the layer named in errors (a Bidirectional for its halves)."""
    _, weight_cls, gates = _RECURRENT[cls]
    units = opts["units"]
    expected = ("kernel", "recurrent_kernel", "bias") if opts["use_bias"] else ("kernel", "recurrent_kernel")
    if len(weights) == 3 * gates and gates > 1:
        _fail(
            source,
            entry,
            f"{len(weights)} per-gate arrays, as a Keras 1 file stores them, but the config is not a Keras 1 config",
        )
    label = label or entry["config"].get("name", cls.lower())
    arrays = _weights(source, entry, weights, expected, label, direction)
    kernel, rec = arrays[0], arrays[1]
    if kernel.ndim != 2 or kernel.shape[1] != gates * units or rec.shape != (units, gates * units):
        _fail(
            source,
            entry,
            f"kernel {kernel.shape} / recurrent_kernel {rec.shape} do not match units={units} "
            f"(expected (input, {gates * units}) and ({units}, {gates * units}))",
        )
    bias = arrays[2] if opts["use_bias"] else None
    reset_after = opts.get("reset_after")
    if cls == "GRU":
        if reset_after is None:  # Keras <= 2.1 configs lack the key: the bias shape says which
            if bias is None:
                _fail(
                    source,
                    entry,
                    "the config has no reset_after and there is no bias to tell it from; refusing "
                    "to guess between the two GRU formulas",
                )
            reset_after = bias.ndim == 2
            opts["reset_after"] = reset_after
        want = (2, 3 * units) if reset_after else (3 * units,)
        if bias is not None and bias.shape != want:
            _fail(source, entry, f"bias has shape {bias.shape}; expected {want} for reset_after={reset_after}")
        k, r = _gru_rows(kernel, units).T, _gru_rows(rec, units).T
        b_ih = b_hh = None
        if bias is not None:
            b_ih, b_hh = (
                (_gru_rows(bias[0], units), _gru_rows(bias[1], units))
                if reset_after
                else (_gru_rows(bias, units), None)
            )
        return weight_cls(k, r, b_ih, b_hh, name=label)
    if bias is not None and bias.shape != (gates * units,):
        _fail(source, entry, f"bias has shape {bias.shape}; expected ({gates * units},)")
    # Keras LSTM gate columns are [i | f | c | o], the same order as torch's rows [i; f; g; o].
    return weight_cls(kernel.T, rec.T, bias, None, name=label)


def _make_recurrent(cls, dirs, opts, merge_mode="concat"):
    layer_cls = _RECURRENT[cls][0]
    kw = dict(activation=opts["activation"], merge_mode=merge_mode, go_backwards=opts["go_backwards"])
    if "recurrent_activation" in opts:
        kw["recurrent_activation"] = opts["recurrent_activation"]
    if cls == "GRU":
        kw["reset_after"] = opts["reset_after"]
    return layer_cls(tuple(dirs), **kw)


def _recurrent_layer(source, entry, major, weights):
    opts = _rnn_options(source, entry, major)
    w = _rnn_weights(source, entry, entry["class_name"], opts, weights)
    return _make_recurrent(entry["class_name"], (w,), opts), opts["return_sequences"]


def _inner(source, entry, key):
    inner = entry["config"].get(key)
    if not isinstance(inner, dict) or not isinstance(inner.get("config"), dict):
        _fail(source, entry, f"config.{key} is missing or malformed")
    return inner


def _bidirectional_layer(source, entry, major, weights):
    fwd = _inner(source, entry, "layer")
    cls = fwd.get("class_name")
    if cls not in _RECURRENT:
        _fail(source, entry, f"wraps a {cls}; only Bidirectional(LSTM / GRU / SimpleRNN) is supported")
    merge = entry["config"].get("merge_mode", "concat")
    if merge not in ("concat", "sum", "mul", "ave"):
        _fail(source, entry, f"merge_mode={shown(merge)} is not supported (concat, sum, mul, ave are)")
    fo = _rnn_options(source, fwd, major)
    if fo["go_backwards"]:
        _fail(source, entry, f"wraps a {cls} with go_backwards=True, which swaps the directions; not supported")
    bwd = entry["config"].get("backward_layer")
    if bwd is not None:
        bwd = _inner(source, entry, "backward_layer")
        if bwd.get("class_name") != cls:
            _fail(source, entry, f"backward_layer is a {bwd.get('class_name')}; the forward layer is a {cls}")
        bo = _rnn_options(source, bwd, major)
        for k in fo:
            if k != "go_backwards" and bo[k] != fo[k]:
                _fail(
                    source,
                    entry,
                    f"backward_layer has {k}={shown(bo[k])} but the forward layer has {shown(fo[k])}; "
                    "fastlstm needs both directions alike",
                )
        if not bo["go_backwards"]:
            _fail(source, entry, "backward_layer must have go_backwards=True")
    n = len(weights) // 2 if len(weights) % 2 == 0 else -1
    if n < 0:
        _fail(source, entry, f"expected weights for two directions, found {len(weights)}")
    name = entry["config"].get("name")
    f = _rnn_weights(source, entry, cls, fo, weights[:n], "forward", f"{name}/forward")
    b = _rnn_weights(source, entry, cls, fo, weights[n:], "backward", f"{name}/backward")
    return _make_recurrent(cls, (f, b), fo, merge), fo["return_sequences"]


# --- per-step layers ----------------------------------------------------------------------


def _dense(source, entry, weights, major):
    units = _opt(source, entry, "units", int, None)
    if units is None or units <= 0:
        _fail(source, entry, f"units={shown(units)} must be a positive integer")
    act = layer_activation(source, entry, "activation", major)
    if entry["config"].get("lora_rank") or entry["config"].get("quantization_config"):
        _fail(source, entry, "LoRA or quantized Dense weights are not supported")
    use_bias = _opt(source, entry, "use_bias", bool, True)
    arrays = _weights(source, entry, weights, ("kernel", "bias") if use_bias else ("kernel",))
    kernel = arrays[0]
    if kernel.ndim != 2 or kernel.shape[1] != units:
        _fail(source, entry, f"kernel has shape {kernel.shape}; expected (input, {units})")
    bias = arrays[1] if use_bias else None
    if bias is not None and bias.shape != (units,):
        _fail(source, entry, f"bias has shape {bias.shape}; expected ({units},)")
    return [Dense(kernel.T, bias, act)]


def _activation_layer(source, entry, weights, major, has_time):
    """Activation, ReLU, LeakyReLU, ELU, PReLU and Softmax layers."""
    cls, cfg = entry["class_name"], entry["config"]
    if cls == "Activation":
        act = layer_activation(source, entry, "activation", major, None)
        return [act if isinstance(act, Activation) else Activation(act)]
    if cls == "Softmax":
        _axis_is_last(source, entry, "axis", has_time)
        return [Activation("softmax")]
    if cls == "ELU":
        return [Activation("elu", alpha=_number(source, entry, "alpha", 1.0))]
    if cls == "LeakyReLU":  # Keras 3 calls the slope negative_slope, Keras 1/2 alpha; both default to 0.3
        key = "negative_slope" if "negative_slope" in cfg else "alpha"
        return [Activation("leaky_relu", alpha=_number(source, entry, key, 0.3))]
    if cls == "ReLU":
        if cfg.get("max_value") is not None or _number(source, entry, "threshold", 0.0) != 0.0:
            _fail(source, entry, "ReLU with max_value or threshold is not supported")
        slope = _number(source, entry, "negative_slope", 0.0)
        return [Activation("leaky_relu", alpha=slope) if slope else Activation("relu")]
    # PReLU: one slope per feature, shared over time (shared_axes=[1]) when the input is a sequence.
    shared = cfg.get("shared_axes") or []
    shared = [shared] if isinstance(shared, int) else shared
    (alpha,) = _weights(source, entry, weights, ("alpha",))
    if has_time and 1 not in shared:
        _fail(source, entry, "PReLU without shared_axes=[1] has a slope per time step; fastlstm needs one per feature")
    if alpha.size != alpha.shape[-1]:
        _fail(source, entry, f"alpha has shape {alpha.shape}; expected one slope per feature")
    return [Activation("prelu", weight=alpha.reshape(-1))]


def _number(source, entry, key, default):
    value = entry["config"].get(key, default)
    if value is None:
        value = default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
        _fail(source, entry, f"config {key}={shown(value)} must be a finite number")
    return float(value)


def _batchnorm(source, entry, weights, has_time):
    cfg = entry["config"]
    if cfg.get("keras1_mode", 0) != 0:
        _fail(
            source,
            entry,
            f"Keras 1 BatchNormalization mode={cfg.get('keras1_mode')} normalizes with batch "
            "statistics; only mode 0 is supported",
        )
    if cfg.get("renorm") or cfg.get("synchronized"):
        _fail(source, entry, "batch renormalization is not supported")
    _axis_is_last(source, entry, "axis", has_time)
    names = [n for n, on in (("gamma", cfg.get("scale", True)), ("beta", cfg.get("center", True))) if on]
    arrays = dict(
        zip(
            names + ["moving_mean", "moving_variance"],
            _weights(source, entry, weights, tuple(names) + ("moving_mean", "moving_variance")),
        )
    )
    return [
        BatchNorm(
            arrays["moving_mean"],
            arrays["moving_variance"],
            arrays.get("gamma"),
            arrays.get("beta"),
            eps=_number(source, entry, "epsilon", 1e-3),
        )
    ]


def _layernorm(source, entry, weights, has_time):
    cfg = entry["config"]
    if cfg.get("rms_scaling"):
        _fail(source, entry, "rms_scaling=True is not supported")
    _axis_is_last(source, entry, "axis", has_time)
    names = [n for n, on in (("gamma", cfg.get("scale", True)), ("beta", cfg.get("center", True))) if on]
    arrays = dict(zip(names, _weights(source, entry, weights, tuple(names))))
    if not arrays:
        _fail(
            source, entry, "LayerNormalization without scale and center has no weights to tell its width; not supported"
        )
    size = next(iter(arrays.values())).shape[0]
    return [LayerNorm(size, arrays.get("gamma"), arrays.get("beta"), eps=_number(source, entry, "epsilon", 1e-3))]


def _config_vector(source, entry, key):
    """Numbers a config holds (Normalization's mean/variance given as constants), as float32."""
    try:
        values = np.ravel(np.asarray(entry["config"][key], dtype=np.float64))
    except (TypeError, ValueError, OverflowError):
        _fail(source, entry, f"config {key} is not a list of numbers")
    return float_weight(values, f"{entry['config'].get('name')}/{key}", source)


def _normalization(source, entry, weights, has_time):
    """Keras' Normalization (a preprocessing layer): (x - mean) / max(sqrt(variance), epsilon), or with
    invert=True mean + x * max(...), as an exact BatchNorm."""
    cfg = entry["config"]
    _axis_is_last(source, entry, "axis", has_time)
    if weights:
        _check_names(source, entry, weights, ("mean", "variance", "count"))  # count (an int) is not used
        mean, var = (float_weight(a, f"{cfg.get('name')}/{n}", source) for n, a in weights[:2])
    elif cfg.get("mean") is not None and cfg.get("variance") is not None:
        mean, var = _config_vector(source, entry, "mean"), _config_vector(source, entry, "variance")
    else:
        _fail(source, entry, "has neither adapted weights nor mean/variance in its config")
    mean, var = np.ravel(mean), np.ravel(var)
    if mean.shape != var.shape or np.any(var < 0):
        _fail(source, entry, f"mean {mean.shape} and variance {var.shape} must match, with variances >= 0")
    floor = np.float32(_KERAS_EPSILON) ** 2  # max(sqrt(v), e) == sqrt(max(v, e*e))
    var = np.maximum(var, floor)
    if cfg.get("invert", False):
        return [BatchNorm(np.zeros_like(mean), np.ones_like(var), np.sqrt(var), mean, eps=0.0)]
    return [BatchNorm(mean, var, eps=0.0)]


def _per_step(source, entry, weights, major, has_time):
    """A layer that acts on each step alone; returns the fastlstm layers (none for an identity)."""
    cls = entry["class_name"]
    if cls in IDENTITY_LAYERS:
        if weights:
            _fail(source, entry, f"has {len(weights)} unexpected weight(s)")
        return []
    if cls == "Dense":
        return _dense(source, entry, weights, major)
    if cls == "BatchNormalization":
        return _batchnorm(source, entry, weights, has_time)
    if cls == "LayerNormalization":
        return _layernorm(source, entry, weights, has_time)
    if cls == "Normalization":
        return _normalization(source, entry, weights, has_time)
    if weights and cls != "PReLU":
        _fail(source, entry, f"has {len(weights)} unexpected weight(s)")
    return _activation_layer(source, entry, weights, major, has_time)


# --- layers over time ---------------------------------------------------------------------


def _conv1d(source, entry, weights, major, backend):
    cfg = entry["config"]
    _channels_last(source, entry)
    filters = _opt(source, entry, "filters", int, None)
    if filters is None or filters <= 0:
        _fail(source, entry, f"filters={shown(filters)} must be a positive integer")
    size = _one_int(source, entry, "kernel_size")
    stride, dilation = _one_int(source, entry, "strides", 1), _one_int(source, entry, "dilation_rate", 1)
    groups = _one_int(source, entry, "groups", 1)
    padding = cfg.get("padding", "valid")
    if padding not in ("valid", "same", "causal"):
        _fail(source, entry, f"padding={shown(padding)} is not supported (valid, same, causal are)")
    use_bias = _opt(source, entry, "use_bias", bool, True)
    if major == 1 and weights and np.ndim(weights[0][1]) == 4:
        weights = [
            (
                weights[0][0],
                keras1.keras1_conv_kernel(weights[0][1], size, filters, lambda why: _fail(source, entry, why)),
            )
        ] + weights[1:]
    arrays = _weights(source, entry, weights, ("kernel", "bias") if use_bias else ("kernel",))
    kernel = arrays[0]
    if kernel.ndim != 3 or kernel.shape[0] != size or kernel.shape[2] != filters:
        _fail(source, entry, f"kernel has shape {kernel.shape}; expected ({size}, input/groups, {filters})")
    if backend == "theano":
        kernel = kernel[::-1]  # Theano convolved (flipped kernel); Keras' own loader flips it the same way
    bias = arrays[1] if use_bias else None
    if bias is not None and bias.shape != (filters,):
        _fail(source, entry, f"bias has shape {bias.shape}; expected ({filters},)")
    return [
        Conv1D(
            kernel.transpose(2, 1, 0),
            bias,
            stride=stride,
            dilation=dilation,
            groups=groups,
            padding=padding,
            activation=layer_activation(source, entry, "activation", major),
        )
    ]


def _pool(source, entry):
    cls = entry["class_name"]
    _channels_last(source, entry)
    size = _one_int(source, entry, "pool_size", 2)
    stride = entry["config"].get("strides")
    stride = size if stride is None or stride == [None] else _one_int(source, entry, "strides")
    padding = entry["config"].get("padding", "valid")
    if padding not in ("valid", "same"):
        _fail(source, entry, f"padding={shown(padding)} is not supported (valid, same are)")
    kw = {}
    if _POOLS[cls] is AvgPool1D:
        kw["count_include_pad"] = False  # Keras averages the real steps only
        if padding == "same" and (stride != 1 or size % 2 == 0):
            # Uneven 'same' padding: TensorFlow averages the real steps at the edge, Keras' torch
            # backend repeats the edge step; the file cannot say which one the model was meant for.
            _fail(
                source,
                entry,
                "AveragePooling1D(padding='same') with an even pool_size or strides > 1 pads "
                "unevenly, and Keras backends average such edges differently; not supported",
            )
    return [_POOLS[cls](size, stride, padding, **kw)]


def _global_pool(source, entry):
    _channels_last(source, entry)
    if entry["config"].get("keepdims"):
        _fail(source, entry, "keepdims=True keeps a time axis of length 1; not supported")
    return [_GLOBAL_POOLS[entry["class_name"]]()]


def _embedding(source, entry, weights):
    mask_zero = _opt(source, entry, "mask_zero", bool, False)
    (table,) = _weights(source, entry, weights, ("embeddings",))
    dims = (_opt(source, entry, "input_dim", int, None), _opt(source, entry, "output_dim", int, None))
    if table.shape != dims:
        _fail(source, entry, f"embeddings have shape {table.shape}; the config says {dims}")
    return [Embedding(table, mask_zero=mask_zero)]


_SUPPORTED = (
    frozenset(
        {
            "InputLayer",
            "Bidirectional",
            "TimeDistributed",
            "Conv1D",
            "Embedding",
            "Flatten",
            "RepeatVector",
            "Convolution1D",
            "AtrousConvolution1D",
            "TimeDistributedDense",
        }
    )
    | set(_RECURRENT)
    | _PER_STEP
    | set(_POOLS)
    | set(_GLOBAL_POOLS)
)


def _refuse_class(source, entry):
    why = _REFUSED_WHY.get(
        entry.get("class_name"), "this layer type is not supported (see docs/loading.md for the layers fastlstm loads)"
    )
    _fail(source, entry, why)


def _map_layer(source, entry, weights, major, backend, has_time, steps):
    """One Keras layer entry -> (fastlstm layers, whether a time axis remains).  ``steps``: the
    number of time steps reaching it when the model's input length is fixed, else None."""
    cls = entry["class_name"]
    if cls in _RECURRENT or cls == "Bidirectional":
        if not has_time:
            _fail(
                source,
                entry,
                "follows a layer that returns one step (return_sequences=False); a recurrent "
                "layer needs a sequence (add a RepeatVector)",
            )
        layer, seq = (_recurrent_layer if cls in _RECURRENT else _bidirectional_layer)(source, entry, major, weights)
        return ([layer] if seq else [layer, LastStep(final_state=True)]), seq
    if cls == "TimeDistributed":
        inner = _inner(source, entry, "layer")
        if inner.get("class_name") not in _PER_STEP:
            _fail(
                source,
                entry,
                f"wraps a {inner.get('class_name')}; TimeDistributed is supported around per-step "
                "layers (Dense, activations, norms, Dropout)",
            )
        if not has_time:
            _fail(source, entry, "TimeDistributed needs a sequence but the previous layer returns one step")
        named = dict(inner, config=dict(inner["config"], name=entry["config"].get("name")))
        return _per_step(source, named, weights, major, has_time), True
    if cls in _PER_STEP:
        return _per_step(source, entry, weights, major, has_time), has_time
    if weights and cls not in ("Conv1D", "Embedding"):
        _fail(source, entry, f"has {len(weights)} unexpected weight(s)")
    if cls == "Conv1D":
        return _conv1d(source, entry, weights, major, backend), True
    if cls in _POOLS:
        return _pool(source, entry), True
    if cls in _GLOBAL_POOLS:
        return _global_pool(source, entry), False
    if cls == "Embedding":
        return _embedding(source, entry, weights), True
    if cls == "Flatten":
        if not has_time:
            return [Flatten()], False
        if steps is None:
            _fail(
                source,
                entry,
                "flattens a whole sequence, but the model's input shape does not fix its length "
                "(the vector's width would depend on it); give the Input a fixed number of steps",
            )
        if entry["config"].get("data_format", "channels_last") != "channels_last":
            _fail(source, entry, "data_format='channels_first' would flatten features before steps; not supported")
        return [Flatten(steps=steps)], False
    if cls == "RepeatVector":
        return [RepeatVector(_one_int(source, entry, "n"))], True
    _refuse_class(source, entry)


def _upgrade_keras1(source, entry, weights):
    """A Keras 1 entry and its weights in Keras 2 form (a Bidirectional's two halves separately)."""
    entry = keras1.upgrade_entry(entry)
    cls = entry["class_name"]
    inner = entry["config"].get("layer") if cls in ("Bidirectional", "TimeDistributed") else entry
    inner_cls = inner.get("class_name") if isinstance(inner, dict) else None
    fail = lambda why: _fail(source, entry, why)  # noqa: E731
    if cls == "Bidirectional" and len(weights) % 2 == 0:
        n = len(weights) // 2
        return entry, (
            keras1.upgrade_weights(inner_cls, weights[:n], fail) + keras1.upgrade_weights(inner_cls, weights[n:], fail)
        )
    return entry, keras1.upgrade_weights(inner_cls, weights, fail)


def spec_from_chain(chain, keras_version, get_weights, source, backend=None):
    """Build a Spec from layer entries in execution order; ``get_weights(entry)`` gives their weights.

    ``backend`` is the file's ``backend`` attribute: a Theano-trained convolution kernel is flipped.
    """
    major = keras_major(keras_version)
    if any(keras1.is_keras1_entry(e) for e in chain):
        major = 1
    layers, has_time, length = [], True, None
    for entry in chain:
        if not isinstance(entry.get("config"), dict):
            _fail(source, entry, "layer config is missing")
        if not layers:
            length = _input_length(entry) or length
        if entry.get("class_name") == "InputLayer":
            continue
        if entry.get("class_name") == "Softmax" and _mask_open(layers):
            # Keras' Softmax layer applies a mask over the features (Keras 3 raises on a (batch, T) mask).
            _fail(source, entry, "a Softmax layer that receives the mask of Embedding(mask_zero=True) is not supported")
        weights = get_weights(entry)
        if major == 1:
            entry, weights = _upgrade_keras1(source, entry, weights)
        try:
            mapped, has_time = _map_layer(source, entry, weights, major, backend, has_time, _steps(layers, length))
        except (TypeError, ValueError) as exc:  # from the layer classes: add the file's name
            msg = str(exc)
            raise ValueError(msg if msg.startswith(source) else f"{source}: {msg}") from None
        layers.extend(mapped)
    if not layers:
        raise ValueError(f"{source}: the model has no layers fastlstm runs")
    _check_masked_bidirectional(layers, major, source)
    return make_spec(layers, source)


def _mask_open(layers):
    """Whether the mask of a first Embedding(mask_zero=True) reaches the next layer (no last step yet)."""
    return bool(layers) and getattr(layers[0], "mask_zero", False) and not any(isinstance(x, LastStep) for x in layers)


def _input_length(entry):
    """The fixed number of input steps an entry's input shape ((batch, T, F) or (batch, T)) gives, or None."""
    cfg = entry["config"]
    shape = cfg.get("batch_shape", cfg.get("batch_input_shape"))
    if isinstance(shape, list) and len(shape) in (2, 3) and isinstance(shape[1], int) and shape[1] > 0:
        return shape[1]
    return None


def _steps(layers, length):
    """The steps that ``length`` input steps bring through ``layers`` (None when not fixed)."""
    for layer in layers:
        if length is None:
            return None
        if hasattr(layer, "out_steps"):
            length = layer.out_steps(length)
        elif isinstance(layer, RepeatVector):
            length = layer.n
    return length


def _check_masked_bidirectional(layers, major, source):
    """Keras 3 outputs zeros at the masked steps of a Bidirectional layer that returns
    sequences; Keras 1 and 2 releases differ there, so such a file is refused."""
    try:
        zeros = masked_recurrent(layers)
    except ValueError:
        return  # make_spec reports it
    if major < 3 and any(zeros.values()):
        raise ValueError(
            f"{source}: a Bidirectional layer that returns sequences after Embedding(mask_zero=True) in a "
            f"Keras {major} file: Keras releases differ in what it outputs at masked steps (Keras 3: zeros); "
            "save the model with Keras 3 to load it"
        )


# --- the execution order of a model config ---------------------------------------------


def _history(arg):
    """The layer a Keras 3 '__keras_tensor__' argument comes from, or None."""
    if isinstance(arg, dict) and arg.get("class_name") == "__keras_tensor__" and isinstance(arg.get("config"), dict):
        hist = arg["config"].get("keras_history")
        if isinstance(hist, list) and len(hist) == 3 and isinstance(hist[0], str):
            return hist[0]
    return None


def _inbound(source, entry):
    """The single layer name feeding ``entry`` in a Functional config (Keras 2 or 3 style)."""
    nodes = entry.get("inbound_nodes")
    if not isinstance(nodes, list) or len(nodes) != 1:
        count = len(nodes) if isinstance(nodes, list) else nodes
        _fail(source, entry, f"is called {shown(count)} times; only a simple chain of layers is supported")
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        args, kwargs = node.get("args"), node.get("kwargs", {})
        if kwargs is None:
            kwargs = {}
        if not isinstance(args, list) or not isinstance(kwargs, dict) or len(args) != 1 or _history(args[0]) is None:
            _fail(source, entry, "is called with several or malformed inputs; only a simple chain is supported")
        bad = sorted(k for k, v in kwargs.items() if k not in ("training", "mask") or (k == "mask" and v is not None))
        if bad:
            _fail(source, entry, f"is called with options {bad}; only a simple chain is supported")
        return _history(args[0])
    if isinstance(node, list) and len(node) == 1 and isinstance(node[0], list) and len(node[0]) >= 3:
        name = node[0][0]  # Keras 2: [[name, node_index, tensor_index, kwargs]]
        kwargs = node[0][3] if len(node[0]) > 3 and isinstance(node[0][3], dict) else {}
        bad = sorted(str(k) for k in kwargs if k not in ("training", "mask"))
        if bad or not isinstance(name, str):
            _fail(source, entry, f"is called with options {bad} or a malformed input; only a simple chain is supported")
        return name
    _fail(source, entry, "has several or malformed inputs; only a simple chain of layers is supported")


def _endpoint(source, value, what):
    """The single layer named by a Functional config's input_layers/output_layers."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
        value = value[0]
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
        return value[0]
    raise ValueError(f"{source}: the model must have exactly one {what}; got {shown(value)}")


def chain_from_config(model_config, source):
    """Return the model's layer entries in execution order, and all entries in config order."""
    if not isinstance(model_config, dict):
        raise ValueError(f"{source}: model config must be a JSON object")
    cls = model_config.get("class_name")
    cfg = model_config.get("config")
    if cls == "Sequential":
        # Keras <= 2.2 stored a bare list of layers.
        layers = cfg if isinstance(cfg, list) else cfg.get("layers") if isinstance(cfg, dict) else None
    elif cls in ("Functional", "Model"):
        if not isinstance(cfg, dict):
            raise ValueError(f"{source}: model config has no 'config' object")
        layers = cfg.get("layers")
    else:
        raise ValueError(
            f"{source}: model class {shown(cls)} is not supported; only Sequential and Functional models "
            "have a config fastlstm can read (subclassed models do not)"
        )
    if not isinstance(layers, list) or not all(isinstance(e, dict) for e in layers):
        raise ValueError(f"{source}: model config has no layer list")
    for k, e in enumerate(layers):
        if not isinstance(e.get("class_name"), str) or not isinstance(e.get("config"), dict):
            raise ValueError(f"{source}: layer entry {k} of the model config lacks a class_name or config")
        if not isinstance(e["config"].get("name", ""), str):
            raise ValueError(
                f"{source}: layer entry {k} of the model config has a name that is not a string "
                f"({shown(e['config']['name'])})"
            )
        if e.get("class_name") in ("Sequential", "Functional", "Model"):
            _fail(source, e, "nested models are not supported; flatten the model")
        if e.get("class_name") not in _SUPPORTED:
            _refuse_class(source, e)  # before walking the graph, so the message names the real reason
    if cls == "Sequential":
        return layers, layers
    by_name = {}
    for e in layers:
        name = e.get("config", {}).get("name") if isinstance(e.get("config"), dict) else None
        if not isinstance(name, str) or name in by_name:
            raise ValueError(f"{source}: layer names in the config are missing or repeated ({shown(name)})")
        by_name[name] = e
    first = _endpoint(source, cfg.get("input_layers"), "input")
    last = _endpoint(source, cfg.get("output_layers"), "output")
    chain, name = [], last
    while name != first:
        if name not in by_name or len(chain) > len(layers):
            raise ValueError(f"{source}: layer {shown(name)} is referenced but not defined (or the graph has a cycle)")
        chain.append(by_name[name])
        name = _inbound(source, by_name[name])
    if first not in by_name:
        raise ValueError(f"{source}: input layer {shown(first)} is not defined")
    chain.append(by_name[first])
    chain.reverse()
    off = [e["config"]["name"] for e in layers if all(e is not c for c in chain)]
    if off:
        raise ValueError(
            f"{source}: layer(s) {off} are not on the path from input to output; only a simple chain is supported"
        )
    return chain, layers
