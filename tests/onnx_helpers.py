"""Helpers for the ONNX tests: exporting live torch modules through both exporters, running ONNX
Runtime on the result (the reference every ONNX test compares against), and building graphs by hand
with ``onnx.helper``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np

TOL = 1e-5
EXPORTERS = ("torchscript", "dynamo")


def export(module, args, path, exporter, input_names, output_names, dynamic):
    """``torch.onnx.export`` with the named exporter; ``dynamic`` maps input name -> {axis: name}.

    The dynamo exporter writes weights as external data next to the file (its default)."""
    import torch

    module.eval()
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            if exporter == "torchscript":
                torch.onnx.export(
                    module,
                    args,
                    str(path),
                    dynamo=False,
                    input_names=input_names,
                    output_names=output_names,
                    dynamic_axes=dynamic,
                )
            else:
                shapes = tuple(
                    {axis: torch.export.Dim(label) for axis, label in dynamic.get(name, {}).items()} or None
                    for name in input_names
                )
                torch.onnx.export(
                    module,
                    args,
                    str(path),
                    dynamo=True,
                    input_names=input_names,
                    output_names=output_names,
                    dynamic_shapes=shapes,
                )
    finally:
        quiet.setLevel(level)


def ort_session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def fit_input_shape(sess, shape):
    """``shape`` with any axis the graph declares as fixed replaced by that size (an exporter may
    specialise an axis it was asked to keep open)."""
    declared = sess.get_inputs()[0].shape
    return tuple(d if isinstance(d, int) else s for d, s in zip(declared, shape))


def max_err(got, want):
    want = np.asarray(want).reshape(np.shape(got))
    return float(np.max(np.abs(np.asarray(got) - want)))


def stream_outputs(model, x, batch_first):
    """Step ``model`` through ``x`` one step at a time; returns the per-step outputs, (T, B, O)."""
    xt = np.swapaxes(x, 0, 1) if batch_first else x
    s = model.stream(batch_size=xt.shape[1])
    return np.stack([s.step(xt[t]) for t in range(xt.shape[0])])


# --- hand-built graphs -----------------------------------------------------------------


def tensor(name, arr):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(arr), name)


def model_bytes(nodes, inputs, outputs, initializers, opset=17, domain_opsets=()):
    """Serialize a graph; ``inputs``/``outputs`` are (name, elem_type, shape) triples."""
    from onnx import helper

    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(*i) for i in inputs],
        [helper.make_tensor_value_info(*o) for o in outputs],
        initializers,
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in domain_opsets]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()


def recurrent_weights(rng, op, ndir, input_size, hidden):
    """Random W, R, B in ONNX's layout for ``op`` (LSTM/GRU/RNN)."""
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    s = 1 / np.sqrt(hidden)
    W = rng.uniform(-s, s, (ndir, gates * hidden, input_size)).astype(np.float32)
    R = rng.uniform(-s, s, (ndir, gates * hidden, hidden)).astype(np.float32)
    B = rng.uniform(-s, s, (ndir, 2 * gates * hidden)).astype(np.float32)
    return W, R, B


def recurrent_graph(
    op,
    W,
    R,
    B,
    *,
    attrs=None,
    layout=0,
    output="Y",
    extra_nodes=(),
    extra_inits=(),
    extra_inputs=(),
    rnn_inputs=None,
    final_output=None,
    final_shape=None,
):
    """One recurrent node on input ``x``; ``output`` picks what the graph returns:

    * ``"Y"``: Y with its direction axis squeezed (unidirectional) -> (T, B, H) / (B, T, H);
    * ``"Y_h"``: Y_h squeezed -> (B, H);
    * ``"custom"``: ``extra_nodes`` produce ``final_output`` (of ``final_shape``) from ``Y``/``Y_h``.
    """
    from onnx import TensorProto, helper

    I = W.shape[2]
    H = R.shape[2]
    x_shape = ["T", "B", I] if layout == 0 else ["B", "T", I]
    inputs = rnn_inputs or ["x", "W", "R", "B"]
    rnn = helper.make_node(op, inputs, ["Y", "Y_h"], hidden_size=H, layout=layout, **(attrs or {}))
    nodes = [rnn]
    inits = [tensor("W", W), tensor("R", R), tensor("B", B)] + list(extra_inits)
    if output == "Y":
        axis = 1 if layout == 0 else 2
        nodes.append(helper.make_node("Squeeze", ["Y", "axes_sq"], ["out"]))
        inits.append(tensor("axes_sq", np.array([axis], np.int64)))
        out_shape = ["T", "B", H] if layout == 0 else ["B", "T", H]
    elif output == "Y_h":
        nodes.append(helper.make_node("Squeeze", ["Y_h", "axes_sq"], ["out"]))
        inits.append(tensor("axes_sq", np.array([0 if layout == 0 else 1], np.int64)))
        out_shape = ["B", H]
    else:
        nodes.extend(extra_nodes)
        out_shape = final_shape
    out_name = final_output or "out"
    return model_bytes(
        nodes,
        [("x", TensorProto.FLOAT, x_shape)] + list(extra_inputs),
        [(out_name, TensorProto.FLOAT, out_shape)],
        inits,
    )
