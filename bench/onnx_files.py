"""Export the ONNX files ``fastlstm bench model.onnx`` is measured on (bench/README.md, "Your own ONNX file").

    python bench/onnx_files.py OUT_DIR

writes, for a 2-layer LSTM and a 2-layer GRU (input 32, hidden 256, Linear head to 8; seeded torch
defaults), through torch.onnx.export (TorchScript exporter, dynamic axes):

* ``{lstm,gru}_seq.onnx``: the whole-sequence graph, ``x`` (T, B, 32) -> (T, B, 8);
* ``{lstm,gru}_step.onnx``: the T=1 graph ONNX Runtime users stream with, state in and out.

Then run ``fastlstm bench OUT_DIR/lstm_step.onnx --threads 1`` (and the others).
"""

import os
import sys

import torch

from fastlstm.harness.onnx_export import export_onnx

I, H, O = 32, 256, 8


class Seq(torch.nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.rnn, self.fc = cls(I, H, 2), torch.nn.Linear(H, O)

    def forward(self, x):
        return self.fc(self.rnn(x)[0])


class Step(torch.nn.Module):
    def __init__(self, seq):
        super().__init__()
        self.rnn, self.fc = seq.rnn, seq.fc

    def forward(self, x, *state):
        y, new = self.rnn(x, state if len(state) == 2 else state[0])
        return (self.fc(y),) + (new if isinstance(new, tuple) else (new,))


def main(out):
    os.makedirs(out, exist_ok=True)
    for name, cls in (("lstm", torch.nn.LSTM), ("gru", torch.nn.GRU)):
        torch.manual_seed(0)
        seq = Seq(cls).eval()
        export_onnx(
            seq,
            (torch.randn(10, 2, I),),
            os.path.join(out, f"{name}_seq.onnx"),
            ["x"],
            ["y"],
            {"x": {0: "T", 1: "B"}, "y": {0: "T", 1: "B"}},
        )
        states = ["h0", "c0"] if name == "lstm" else ["h0"]
        outs = ["y"] + [s.replace("0", "n") for s in states]
        args = (torch.randn(1, 2, I),) + tuple(torch.zeros(2, 2, H) for _ in states)
        export_onnx(
            Step(seq).eval(),
            args,
            os.path.join(out, f"{name}_step.onnx"),
            ["x"] + states,
            outs,
            {n: {1: "B"} for n in ["x"] + states + outs},
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "onnx_bench")
