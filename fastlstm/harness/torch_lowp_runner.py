"""PyTorch in reduced precision: the :class:`~.torch_runner.TorchRunner` rebuild, quantized to int8
or run in bfloat16, the way a PyTorch user asks for either.

* int8: ``torch.ao.quantization.quantize_dynamic`` with ``{nn.LSTM, nn.LSTMCell, nn.Linear}`` and
  ``torch.qint8``: weights quantized once per tensor (symmetric), activations quantized per call
  (dynamic), int8 products through FBGEMM; the gate nonlinearities and the cell state stay fp32.
  The head is quantized too (``nn.Linear``), as that call does.
* bf16: the modules cast to bfloat16 once (``module.to(torch.bfloat16)``), called under
  ``torch.autocast("cpu", dtype=torch.bfloat16)``, which takes the float32 inputs.  Autocast alone
  (fp32 weights) computes the same bits, but casts every weight again on every call: slower.
  On CPU, autocast covers ``nn.LSTM`` (the whole layer runs as oneDNN's bfloat16 RNN primitive,
  ``aten::mkldnn_rnn_layer``; its outputs and ``(h, c)`` are bfloat16, so the cell state is
  rounded to bfloat16 between calls) and ``nn.Linear``, but not ``nn.LSTMCell``, which would
  silently run fp32: so this runner steps through ``nn.LSTM`` on T=1 only.  Its outputs come back
  as float32, as fastlstm's do.
"""

from __future__ import annotations

import contextlib
import warnings

from ._common import Unsupported, lstm_stack_view
from .torch_runner import TorchRunner, TorchStepper


class TorchInt8Runner(TorchRunner):
    """PyTorch dynamic int8 quantization (``quantize_dynamic``) of the rebuilt modules."""

    name = "torch-int8"

    def __init__(self, model):
        view = lstm_stack_view(model, "torch.nn")
        for k, layer in enumerate(view.layers):
            if layer.proj_size:  # torch.quantized_lstm fails on the projected state's shape
                raise Unsupported(
                    "PyTorch's dynamically quantized LSTM has no projection "
                    f"(layer {k} has proj_size={layer.proj_size})"
                )
        super().__init__(view)

    def convert(self, module):
        torch = self.torch
        nn = torch.nn
        # quantize_dynamic swaps children, never the module it is given: wrap it to have it swapped.
        with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
            warnings.simplefilter("ignore")
            quantized = torch.ao.quantization.quantize_dynamic(
                nn.Sequential(module), {nn.LSTM, nn.LSTMCell, nn.Linear}, dtype=torch.qint8
            )
        return quantized[0]


class TorchBf16Runner(TorchRunner):
    """PyTorch in bfloat16: modules cast to bfloat16, called under CPU autocast (fp32 inputs)."""

    name = "torch-bf16"

    def convert(self, module):
        # Stored in bfloat16 once, as a bf16 deployment (and fastlstm) does: autocast alone would
        # cast every weight again on every call.
        return module.to(self.torch.bfloat16)

    @contextlib.contextmanager
    def mode(self):
        with self.torch.inference_mode(), self.torch.autocast("cpu", dtype=self.torch.bfloat16):
            yield

    def steppers(self, xs):
        """``nn.LSTM`` on T=1 only: autocast leaves ``nn.LSTMCell`` in fp32."""
        return {"nn.LSTM": _Float32Stepper(self, xs)}


class _Float32Stepper(TorchStepper):
    """:class:`TorchStepper` returning float32 outputs (a user needs them; numpy has no bfloat16)."""

    def step(self, x):
        return super().step(x).float()
