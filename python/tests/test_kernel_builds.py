"""The builds of the row kernels agree: AVX2 and AVX-512 bit for bit, portable x86-64 to
within rounding.

The AVX2 and AVX-512 builds compute the same operations on the same 64-byte vectors, with the
same fused multiply-adds; the portable build (baseline x86-64, no FMA) computes each a * b + c
as a product and a sum, so its results may differ in the last bits. The library picks a build
once per process, so each runs in its own subprocess with AMM_SOFTMAX_KERNELS set; builds this
CPU lacks fall back (the child reports what ran).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PYTHON_DIR = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys
import numpy as np
import amm_softmax as a
out = sys.argv[1]
rng = np.random.default_rng(20261129)
arrays = {}
for dtype in (np.float32, np.float64):
    # Shapes with partial vectors and several blocks; rows with and without hard negatives.
    for n, c in ((7, 1), (9, 37), (33, 2500)):
        cos = rng.uniform(-1, 1, (n, c)).astype(dtype)
        labels = rng.integers(0, c, n)
        labels[0] = -100
        for target in ("arc", "cos"):
            for hard in ("amm", "mv-fixed", "mv-adaptive", "none"):
                loss, grad = a.forward_backward(cos, labels, target=target, hard=hard,
                                                reduction="none")
                key = f"{np.dtype(dtype).name}-{n}x{c}-{target}-{hard}"
                arrays[key + "-loss"] = loss
                arrays[key + "-grad"] = grad
np.savez(out, **arrays)
print(json.dumps({"build": a.kernel_build()}))
"""


def run_build(request: str, tmp_path: Path):
    out = tmp_path / f"{request}.npz"
    env = dict(os.environ, AMM_SOFTMAX_KERNELS=request,
               PYTHONPATH=str(PYTHON_DIR) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", CHILD, str(out)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["build"], np.load(out)


def test_builds_agree(tmp_path):
    ran = {}
    for request in ("portable", "avx2", "avx512"):
        ran[request] = run_build(request, tmp_path)
    assert ran["portable"][0] == "portable"
    order = ["portable", "avx2", "avx512"]
    for request, (build, arrays) in ran.items():
        # A request is honoured or capped, never raised.
        assert order.index(build) <= order.index(request), (request, build)
    portable = ran["portable"][1]
    with_fma = {build: arrays for build, arrays in ran.values() if build != "portable"}
    for build, arrays in with_fma.items():
        assert sorted(arrays.files) == sorted(portable.files)
        for key in portable.files:
            a, b = arrays[key], portable[key]
            assert a.dtype == b.dtype and a.shape == b.shape
            # Rounding differences only: a few ulp of each value, relative to the row's scale.
            rtol = 2e-6 if a.dtype == np.float32 else 1e-13
            scale = np.max(np.abs(b), axis=-1, keepdims=True) if b.ndim > 1 else np.abs(b)
            assert np.all(np.abs(a - b) <= rtol * np.maximum(scale, 1e-30)), \
                f"{build} differs from portable at {key} beyond rounding"
    if len(with_fma) == 2:
        a, b = with_fma["avx2"], with_fma["avx512"]
        for key in a.files:
            assert a[key].tobytes() == b[key].tobytes(), f"avx2 and avx512 differ at {key}"
    print({request: build for request, (build, _) in ran.items()})


def test_kernel_build_is_reported():
    import amm_softmax
    assert amm_softmax.kernel_build() in ("portable", "avx2", "avx512")
