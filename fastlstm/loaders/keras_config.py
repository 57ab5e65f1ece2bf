"""Turn a Keras model config plus its weights into a fastlstm :class:`Spec`.

Shared by the ``.keras`` reader, the legacy ``.h5`` reader and live model objects; each
supplies ``get_weights(layer_entry) -> [(name, array), ...]`` in Keras' variable order.
The config is walked in the order the model runs (Sequential: list order; Functional:
the input-to-output chain), never matched by layer name alone.

Supported: InputLayer, LSTM, Bidirectional(LSTM) with merge_mode concat/sum/mul/ave, one
Dense or TimeDistributed(Dense) head (optionally followed by an Activation layer), and
layers that are the identity at inference (Dropout and the noise layers).  Everything
else is refused naming the layer, because running a model without one of its layers
would silently give wrong outputs.
"""

from __future__ import annotations

from ..layers import HEAD_ACTIVATIONS, Dense, LSTMLayer, LSTMWeights
from ._common import float_weight, make_spec
from ._limits import shown

#: Layers that do nothing at inference time.
IDENTITY_LAYERS = frozenset({"Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
                             "ActivityRegularization"})
_CELL_ACTS = {"sigmoid", "tanh", "relu", "linear"}
_REFUSED_WHY = {
    "Masking": "masking skips time steps per sample, which fastlstm does not implement",
    "Lambda": "a Lambda layer holds Python code, which fastlstm never runs",
    "GRU": "fastlstm runs LSTMs only",
    "SimpleRNN": "fastlstm runs LSTMs only",
    "CuDNNLSTM": "CuDNN weight layout is not supported; re-save the model with a plain LSTM layer",
    "RepeatVector": "only LSTM stacks with a final dense head are supported",
    "Attention": "attention layers are not supported", "MultiHeadAttention": "attention layers are not supported",
    "AdditiveAttention": "attention layers are not supported",
    "Activation": "an Activation layer is supported only right after the Dense head",
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


def cell_activation(source, entry, key, major, default):
    raw = entry["config"].get(key, default)
    name = _activation_name(raw)
    if name in _CELL_ACTS:
        return name
    if name == "hard_sigmoid":
        # Keras 1/2: clip(0.2x + 0.5); Keras 3: clip(x/6 + 0.5).  Outputs differ by ~0.14, so
        # an unknown version is refused rather than guessed.
        if major in (1, 2):
            return "hard_sigmoid_keras2"
        if major is not None and major >= 3:
            return "hard_sigmoid"
        _fail(source, entry, f"{key}='hard_sigmoid' means different formulas in Keras 2 and 3, and the file "
                             "records no keras_version")
    _fail(source, entry, f"{key}={shown(raw)} is not supported (supported: sigmoid, tanh, hard_sigmoid, relu, linear)")


def _check_names(source, entry, weights, expected, direction=None):
    """Check weight names (when they are names, not bare indices) against the expected suffixes."""
    names = [n for n, _ in weights]
    if len(weights) != len(expected):
        hint = " (a Keras 1 file: its 12-array LSTM layout is not supported)" if len(weights) == 12 else ""
        _fail(source, entry, f"expected {len(expected)} weight(s) {list(expected)}, found {len(weights)}: "
                             f"{names}{hint}")
    for name, want in zip(names, expected):
        if name.isdigit():
            continue  # .keras files number their variables in creation order
        parts = name.split("/")
        scope = [p for p in parts[1:] if p.startswith(("forward_", "backward_"))]
        wrong_dir = direction is not None and scope and not scope[-1].startswith(direction + "_")
        if parts[-1].split(":")[0] != want or wrong_dir:
            _fail(source, entry, f"weight {shown(name)} found where the {direction + ' ' if direction else ''}"
                                 f"{shown(want)} was expected")


def _lstm_weights(source, entry, units, use_bias, weights, direction=None, label=None):
    expected = ("kernel", "recurrent_kernel", "bias") if use_bias else ("kernel", "recurrent_kernel")
    _check_names(source, entry, weights, expected, direction)
    key = lambda i: f"{label or entry['config'].get('name')}/{weights[i][0]}"  # noqa: E731
    kernel = float_weight(weights[0][1], key(0), source, ndim=2)
    rec = float_weight(weights[1][1], key(1), source, ndim=2)
    if kernel.shape[1] != 4 * units or rec.shape != (units, 4 * units):
        _fail(source, entry, f"kernel {kernel.shape} / recurrent_kernel {rec.shape} do not match units={units} "
                             f"(expected (input, {4 * units}) and ({units}, {4 * units}))")
    bias = None
    if use_bias:
        bias = float_weight(weights[2][1], key(2), source, ndim=1)
        if bias.shape != (4 * units,):
            _fail(source, entry, f"bias has shape {bias.shape}; expected ({4 * units},)")
    # Keras gate columns are [i | f | c | o], the same order as torch's rows [i; f; g; o].
    return LSTMWeights(kernel.T, rec.T, bias, None, name=label or entry["config"].get("name", "lstm"))


def _lstm_options(source, entry, major):
    units = _opt(source, entry, "units", int, None)
    if units is None or units <= 0:
        _fail(source, entry, f"units={shown(units)} must be a positive integer")
    if _opt(source, entry, "return_state", bool, False):
        _fail(source, entry, "return_state=True makes the layer return extra tensors; not supported")
    return dict(units=units,
                activation=cell_activation(source, entry, "activation", major, "tanh"),
                recurrent_activation=cell_activation(source, entry, "recurrent_activation", major, "sigmoid"),
                use_bias=_opt(source, entry, "use_bias", bool, True),
                go_backwards=_opt(source, entry, "go_backwards", bool, False),
                return_sequences=_opt(source, entry, "return_sequences", bool, False))


def _lstm_layer(source, entry, major, weights):
    o = _lstm_options(source, entry, major)
    w = _lstm_weights(source, entry, o["units"], o["use_bias"], weights)
    return LSTMLayer((w,), o["activation"], o["recurrent_activation"], go_backwards=o["go_backwards"]), \
        o["return_sequences"]


def _inner(source, entry, key):
    inner = entry["config"].get(key)
    if not isinstance(inner, dict) or not isinstance(inner.get("config"), dict):
        _fail(source, entry, f"config.{key} is missing or malformed")
    return inner


def _bidirectional_layer(source, entry, major, weights):
    fwd = _inner(source, entry, "layer")
    if fwd.get("class_name") != "LSTM":
        _fail(source, entry, f"wraps a {fwd.get('class_name')}; only Bidirectional(LSTM) is supported")
    merge = entry["config"].get("merge_mode", "concat")
    if merge not in ("concat", "sum", "mul", "ave"):
        _fail(source, entry, f"merge_mode={shown(merge)} is not supported (concat, sum, mul, ave are)")
    fo = _lstm_options(source, fwd, major)
    if fo["go_backwards"]:
        _fail(source, entry, "wraps an LSTM with go_backwards=True, which swaps the directions; not supported")
    bwd = entry["config"].get("backward_layer")
    if bwd is not None:
        bwd = _inner(source, entry, "backward_layer")
        if bwd.get("class_name") != "LSTM":
            _fail(source, entry, f"backward_layer is a {bwd.get('class_name')}; only LSTM is supported")
        bo = _lstm_options(source, bwd, major)
        for k in ("units", "activation", "recurrent_activation", "use_bias", "return_sequences"):
            if bo[k] != fo[k]:
                _fail(source, entry, f"backward_layer has {k}={shown(bo[k])} but the forward layer has "
                                     f"{shown(fo[k])}; "
                                     "fastlstm needs both directions alike")
        if not bo["go_backwards"]:
            _fail(source, entry, "backward_layer must have go_backwards=True")
    n = len(weights) // 2 if len(weights) % 2 == 0 else -1
    if n < 0:
        _fail(source, entry, f"expected weights for two directions, found {len(weights)}")
    name = entry["config"].get("name")
    f = _lstm_weights(source, entry, fo["units"], fo["use_bias"], weights[:n], "forward", f"{name}/forward")
    b = _lstm_weights(source, entry, fo["units"], fo["use_bias"], weights[n:], "backward", f"{name}/backward")
    return LSTMLayer((f, b), fo["activation"], fo["recurrent_activation"], merge_mode=merge), fo["return_sequences"]


def _dense(source, entry, weights, wrapper=None):
    units = _opt(source, entry, "units", int, None)
    if units is None or units <= 0:
        _fail(source, wrapper or entry, f"units={shown(units)} must be a positive integer")
    act = _activation_name(entry["config"].get("activation", "linear"))
    if act not in HEAD_ACTIVATIONS:
        _fail(source, wrapper or entry, f"activation={shown(entry['config'].get('activation'))} is not supported "
                                        f"(supported: {', '.join(HEAD_ACTIVATIONS)})")
    if entry["config"].get("lora_rank") or entry["config"].get("quantization_config"):
        _fail(source, wrapper or entry, "LoRA or quantized Dense weights are not supported")
    use_bias = _opt(source, entry, "use_bias", bool, True)
    _check_names(source, wrapper or entry, weights, ("kernel", "bias") if use_bias else ("kernel",))
    name = (wrapper or entry)["config"].get("name")
    kernel = float_weight(weights[0][1], f"{name}/{weights[0][0]}", source, ndim=2)
    if kernel.shape[1] != units:
        _fail(source, wrapper or entry, f"kernel has shape {kernel.shape}; expected (input, {units})")
    bias = float_weight(weights[1][1], f"{name}/{weights[1][0]}", source, ndim=1) if use_bias else None
    if bias is not None and bias.shape != (units,):
        _fail(source, wrapper or entry, f"bias has shape {bias.shape}; expected ({units},)")
    return Dense(kernel.T, bias, act)


_SUPPORTED = frozenset({"InputLayer", "LSTM", "Bidirectional", "Dense", "TimeDistributed", "Activation"}) \
    | IDENTITY_LAYERS


def _refuse_class(source, entry):
    why = _REFUSED_WHY.get(entry.get("class_name"), "this layer type is not supported (fastlstm loads LSTM, "
                           "Bidirectional(LSTM), Dense, TimeDistributed(Dense), Dropout)")
    _fail(source, entry, why)


def spec_from_chain(chain, keras_version, get_weights, source):
    """Build a Spec from layer entries in execution order; ``get_weights(entry)`` gives their weights."""
    major = keras_major(keras_version)
    layers, head, seq = [], None, True
    for entry in chain:
        cls = entry.get("class_name")
        cfg = entry.get("config")
        if not isinstance(cfg, dict):
            _fail(source, entry, "layer config is missing")
        if cls == "InputLayer":
            continue
        weights = get_weights(entry)
        if cls in IDENTITY_LAYERS or (cls == "Activation" and head is not None):
            if weights:
                _fail(source, entry, f"has {len(weights)} unexpected weight(s)")
            if cls == "Activation":
                act = _activation_name(cfg.get("activation"))
                if head.activation != "linear" or act not in HEAD_ACTIVATIONS:
                    _fail(source, entry, f"activation {shown(act)} after a Dense with activation {head.activation!r} "
                                         "cannot be folded into one head")
                head = Dense(head.weight, head.bias, act)
            continue
        if head is not None:
            _fail(source, entry, "comes after the Dense head; fastlstm supports LSTM layers then one Dense head")
        if cls in ("LSTM", "Bidirectional"):
            if not seq:
                _fail(source, entry, "follows an LSTM with return_sequences=False (needs a RepeatVector); "
                                     "not supported")
            try:
                layer, seq = (_lstm_layer if cls == "LSTM" else _bidirectional_layer)(source, entry, major, weights)
            except (TypeError, ValueError) as exc:
                msg = str(exc)
                raise ValueError(msg if msg.startswith(source) else f"{source}: {msg}") from None
            layers.append(layer)
        elif cls in ("Dense", "TimeDistributed"):
            if not layers:
                _fail(source, entry, "a Dense layer before the first LSTM is not supported")
            inner = entry
            if cls == "TimeDistributed":
                inner = _inner(source, entry, "layer")
                if inner.get("class_name") != "Dense":
                    _fail(source, entry, f"wraps a {inner.get('class_name')}; only TimeDistributed(Dense) is supported")
            if cls == "TimeDistributed" and not seq:
                _fail(source, entry, "TimeDistributed needs a sequence but the previous LSTM returns one step")
            head = _dense(source, inner, weights, entry if inner is not entry else None)
        else:
            _refuse_class(source, entry)
    if not layers:
        raise ValueError(f"{source}: the model has no LSTM layer")
    return make_spec(layers, head, seq, source)


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
        raise ValueError(f"{source}: model class {shown(cls)} is not supported; only Sequential and Functional models "
                         "have a config fastlstm can read (subclassed models do not)")
    if not isinstance(layers, list) or not all(isinstance(e, dict) for e in layers):
        raise ValueError(f"{source}: model config has no layer list")
    for k, e in enumerate(layers):
        if not isinstance(e.get("class_name"), str) or not isinstance(e.get("config"), dict):
            raise ValueError(f"{source}: layer entry {k} of the model config lacks a class_name or config")
        if not isinstance(e["config"].get("name", ""), str):
            raise ValueError(f"{source}: layer entry {k} of the model config has a name that is not a string "
                             f"({shown(e['config']['name'])})")
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
        raise ValueError(f"{source}: layer(s) {off} are not on the path from input to output; only a simple chain "
                         "is supported")
    return chain, layers

