"""The fastlstm service in five lines (what ``fastlstm serve MODEL --port 8000`` runs).

pip install 'fastlstm[serve]'
python examples/service/server.py model.pt        # then: python examples/service/client.py
"""

import sys

import fastlstm
from fastlstm.data import MODEL_PATH
from fastlstm.serving import Batcher, create_app
from fastlstm.serving.app import run_server

model = fastlstm.load(sys.argv[1] if len(sys.argv) > 1 else MODEL_PATH)  # default: the bundled model
batcher = Batcher(model, max_batch=256, max_delay=0.002, idle_timeout=300)
run_server(create_app(batcher), host="127.0.0.1", port=8000)
