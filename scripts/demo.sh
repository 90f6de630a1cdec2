#!/usr/bin/env bash
# The main job: set up, then train embeddings with each loss of the family (softmax, CosFace,
# ArcFace, MV-AM-Softmax, AMM-Softmax; CurricularFace where the library has it) over 3 seeds on
# the embedded data sets and compare identification and open-set verification, mean ± sd
# (amm_softmax.train; outputs in out/train/). Arguments go to it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PYTHONPATH=python python3 -m amm_softmax.train "$@"
