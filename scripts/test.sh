#!/usr/bin/env bash
# Every test: set up, then the Swift tests (kernels, finite-difference gradients, the C ABI
# through its C names), the installation as a new user would do it, then the Python tests
# (library vs the NumPy reference, errors, layouts, the fused head, and the C programs compiled
# with -Wall -Wextra -Werror against the header). The PyTorch tests need torch (5.4 GB): they
# are skipped here and run by scripts/test_torch.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
swift test
bash scripts/test_install.sh   # pip install and pip wheel, used without the Swift toolchain
PYTHONPATH=python python3 -m pytest python/tests -q
