#!/usr/bin/env bash
# The main job: set up, then compute the loss and gradient of one batch for every member of the
# family with the library and with the NumPy reference, side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 examples/python/batch_demo.py "$@"
