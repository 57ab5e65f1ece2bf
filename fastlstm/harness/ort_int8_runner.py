"""ONNX Runtime's quantized LSTM: the exported graphs through ``onnxruntime.quantization.quantize_dynamic``
with ``weight_type=QuantType.QInt8``, which turns each ``LSTM`` node into ``DynamicQuantizeLSTM``
(int8 weights, one scale per tensor; activations quantized per call) and the head's ``MatMul``
into ``MatMulInteger`` between dynamic quantizations, as that call does for any user."""

from __future__ import annotations

import logging

from .ort_runner import OrtRunner


class OrtInt8Runner(OrtRunner):
    """:class:`~.ort_runner.OrtRunner` on the dynamically quantized graphs."""

    name = "onnxruntime-int8"

    def convert(self, path: str) -> str:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out = path[: -len(".onnx")] + ".int8.onnx"
        # The quantizer logs a WARNING advising shape-inference pre-processing, which a dynamic
        # quantization of fixed LSTM/MatMul weights does not need; keep it off the report.
        logging.disable(logging.WARNING)
        try:
            quantize_dynamic(path, out, weight_type=QuantType.QInt8)
        finally:
            logging.disable(logging.NOTSET)
        return out
