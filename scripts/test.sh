#!/usr/bin/env bash
# Every test: set up, then the Swift tests (kernels, finite-difference gradients, the C ABI
# through its C names), then the Python tests (library vs the NumPy reference, errors, layouts,
# and the C programs compiled with -Wall -Wextra -Werror against the header).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
swift test
PYTHONPATH=python python3 -m pytest python/tests -q
