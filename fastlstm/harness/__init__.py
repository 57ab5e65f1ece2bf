"""The comparison harness: fastlstm side by side with other frameworks, for parity and timing.

Not part of the runtime: ``import fastlstm`` never imports this package (a test checks it),
and it imports each framework only when a runner for it is built.  ``fastlstm bench`` and
the scripts in ``bench/`` are thin drivers over it.

Where things are:

* :mod:`.peers`: the registry of frameworks (:data:`~.peers.PEERS`) and :func:`~.peers.make_runner`.
  **To add a peer**, write a runner module beside the others and add one ``Peer`` entry
  there; ``fastlstm bench``, ``bench/run_engine.py`` and the harness tests pick it up.
* one runner module per framework: :mod:`.fastlstm_runner`, :mod:`.torch_runner`,
  :mod:`.ort_runner`, :mod:`.openvino_runner`, :mod:`.tract_runner`, :mod:`.keras_runner`;
  :mod:`.onnx_export` exports the graphs the ONNX-based ones run.
* :mod:`.timing`: calibrated interleaved samples, the load meter, the thread policy.
* :mod:`.isa`: one of fastlstm's kernel paths against peers held to the same instruction set
  (``bench/run_engine.py --isa``).
* :mod:`.compare`: every runner on the same inputs, parity first, then timed cases.
* :mod:`.configs`: the benchmark shapes and the models timed on them.  **To add a config**,
  add one ``Config`` to :data:`~.configs.CONFIGS`.
* :mod:`.yardsticks`: the BLAS products an LSTM cannot avoid, timed beside it.
"""

from __future__ import annotations

from ._common import Stepper, Unsupported, installed
from .peers import LABELS, PEERS, Peer, build_runners, make_runner, missing_modules

__all__ = [
    "PEERS",
    "LABELS",
    "Peer",
    "Stepper",
    "Unsupported",
    "build_runners",
    "installed",
    "make_runner",
    "missing_modules",
]
