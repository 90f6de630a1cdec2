#!/usr/bin/env bash
# The PyTorch tests (python/tests/test_torch.py, and test_torch_distributed.py: the sharded head
# over torch.distributed, gloo on 127.0.0.1, worlds of 1, 2 and 3 spawned processes), which the
# main test command skips: PyPI has no CPU-only torch, and its wheel imports only with its CUDA
# packages beside it (measured here: 5.4 GB installed, torch 2.15). This makes a virtual
# environment for them once (.venv-torch/, git-ignored), then runs them against the library
# built by scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! .venv-torch/bin/python -c "import torch, numpy, pytest" 2>/dev/null; then
    python3 -m venv .venv-torch
    .venv-torch/bin/pip install --quiet --disable-pip-version-check torch numpy pytest
fi
# The main job's extras (scikit-learn's bundled digits, matplotlib's plots): test_torch.py runs
# the main job with the torch back-end.
if ! .venv-torch/bin/python -c "import sklearn, matplotlib" 2>/dev/null; then
    .venv-torch/bin/pip install --quiet --disable-pip-version-check scikit-learn matplotlib
fi
PYTHONPATH=python .venv-torch/bin/python -m pytest python/tests/test_torch.py \
    python/tests/test_torch_curricular.py python/tests/test_torch_half.py \
    python/tests/test_torch_distributed.py -q
