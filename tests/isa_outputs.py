"""Child process of tests/test_isa.py: run fixed models on the kernel path FASTLSTM_ISA
selects, at 1, 2 and 3 threads, and save every output to the .npz named on the command line.

Run as a script (a fresh process per path: the path is chosen when the kernels load)."""

import sys

import numpy as np

import fastlstm
import oracle

#: (name, I, H, layers, B (None: unbatched), T, random_stack options): one of each way the
#: kernels run -- gemv steps with a hoisted projection, packed steps with odd rows and tail
#: columns, batch chunks, a single-stream team (H >= 256), projections and two directions.
CASES = [
    ("seq", 16, 32, 1, None, 120, {}),
    ("odd-batch", 7, 37, 2, 5, 30, {}),
    ("chunks", 13, 48, 1, 70, 9, {}),
    ("single-team", 24, 256, 1, None, 20, {}),
    ("batch-team", 16, 256, 1, 40, 6, {}),
    ("proj-bidir", 9, 20, 2, 3, 15, {"proj_size": 6, "bidirectional": True}),
]


def outputs():
    """{case/threads: output}, plus each case's float64 oracle output under case/oracle."""
    out = {}
    for k, (name, I, H, L, B, T, kw) in enumerate(CASES):
        rng = np.random.default_rng(100 + k)
        layers, head = oracle.random_stack(rng, I, H, L, head_size=3, **kw)
        model = fastlstm.Model(layers, head)
        x = rng.standard_normal((T, I) if B is None else (T, B, I)).astype(np.float32)
        out[f"{name}/oracle"] = oracle.forward(layers, head, x)[0]
        for n in (1, 2, 3):
            fastlstm.set_num_threads(n)
            out[f"{name}/{n}"] = model.predict(x)
        if model.streamable and B is not None:
            stream = model.stream(batch_size=B)
            fastlstm.set_num_threads(1)
            out[f"{name}/stream"] = np.stack([stream.step(x[t]) for t in range(T)])
    return out


if __name__ == "__main__":
    np.savez(sys.argv[1], path=fastlstm._isa.levels()[0], **outputs())
