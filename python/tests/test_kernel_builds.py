"""The builds of the row kernels agree: AVX2 and AVX-512 bit for bit, portable x86-64 to
within rounding.

The AVX2 and AVX-512 builds compute the same operations on the same 64-byte vectors, with the
same fused multiply-adds; the portable build (baseline x86-64, no FMA) computes each a * b + c
as a product and a sum, so its results may differ in the last bits. The library picks a build
once per process, so each runs in its own subprocess with AMM_SOFTMAX_KERNELS set; builds this
CPU lacks fall back (the child reports what ran, and why: amm_kernel_build_detail).

A build the CPU supports but whose library is missing, unloadable or refused is a failure, not
a fallback to pass over: otherwise a broken install would test only the portable build. A build
the CPU lacks is a visible skip that says so. The handshake that refuses a stale build library
is tested with stand-in libraries compiled here.
"""
import json
import os
import shutil
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
# 16-bit storage: this build's output must be its own float32 output on the widened values,
# each gradient entry rounded once; the cosines are every finite value of magnitude <= 1.5
# (subnormals included; F16C in the AVX2 and AVX-512 builds, integer arithmetic in the
# portable one), in rows of 1,300 (stretches and partial vectors).
formats = [np.dtype(np.float16)]
try:
    import ml_dtypes
    formats.append(np.dtype(ml_dtypes.bfloat16))
except ImportError:
    pass
for fmt in formats:
    bits = np.arange(1 << 16, dtype=np.uint16)
    values = bits.view(fmt).astype(np.float32)
    kept = bits[np.isfinite(values) & (np.abs(values) <= 1.5)]
    kept = np.resize(kept, (-(-kept.size // 1300), 1300)).view(fmt)
    labels = rng.integers(0, 1300, kept.shape[0])
    target = np.zeros(kept.shape[0])
    mismatches = 0
    for scale, upstream in ((1.0, 1.0), (30.0, 1.0), (30.0, 3e-8)):
        loss, grad = a.forward_backward(kept, labels, scale=scale, reduction="none",
                                        target_cosines=target)
        loss32, grad32 = a.forward_backward(kept.astype(np.float32), labels, scale=scale,
                                            reduction="none")
        back = a.backward(kept, labels, np.full(kept.shape[0], upstream, np.float32),
                          scale=scale, reduction="none")
        back32 = a.backward(kept.astype(np.float32), labels,
                            np.full(kept.shape[0], upstream, np.float32), scale=scale,
                            reduction="none")
        mismatches += int(np.sum(loss.view(np.uint32) != loss32.view(np.uint32)))
        mismatches += int(np.sum(grad.view(np.uint16) != grad32.astype(fmt).view(np.uint16)))
        mismatches += int(np.sum(back.view(np.uint16) != back32.astype(fmt).view(np.uint16)))
        want = kept[np.arange(kept.shape[0]), labels].astype(np.float64)
        mismatches += int(np.sum(target != want))
    arrays[f"half-mismatches-{fmt.name}"] = np.array([mismatches])
np.savez(out, **arrays)
print(json.dumps({"build": a.kernel_build(), "detail": a.kernel_build_detail()}))
"""

ORDER = ["portable", "avx2", "avx512"]


def run_build(request: str, tmp_path: Path):
    """(build that ran, its detail, its arrays) for AMM_SOFTMAX_KERNELS=request."""
    out = tmp_path / f"{request}.npz"
    env = dict(os.environ, AMM_SOFTMAX_KERNELS=request,
               PYTHONPATH=str(PYTHON_DIR) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", CHILD, str(out)], env=env,
                          capture_output=True, text=True, check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report["build"], report["detail"], np.load(out)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("builds")
    return {request: run_build(request, tmp) for request in ORDER}


def cpu_lacks(detail: str, build: str) -> bool:
    return f"{build}: not supported by this CPU" in detail.splitlines()


def test_every_build_the_cpu_supports_is_installed_and_runs(builds):
    for request, (build, detail, _) in builds.items():
        # A request is honoured or capped, never raised.
        assert ORDER.index(build) <= ORDER.index(request), (request, build)
        if build != request:
            # Only the CPU may lack a build: a missing or refused library is a broken install.
            assert cpu_lacks(detail, request), \
                f"AMM_SOFTMAX_KERNELS={request} ran {build}:\n{detail}"
    print({request: build for request, (build, _, _) in builds.items()})


def test_fma_builds_agree_with_portable_to_rounding(builds):
    portable = builds["portable"][2]
    assert builds["portable"][0] == "portable"
    with_fma = {build: arrays for build, _, arrays in builds.values() if build != "portable"}
    if not with_fma:
        pytest.skip("this CPU has neither AVX2 nor AVX-512: only the portable build runs")
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


def test_avx2_and_avx512_agree_bitwise(builds):
    ran = {build: arrays for build, _, arrays in builds.values()}
    missing = [b for b in ("avx2", "avx512") if b not in ran]
    if missing:
        pytest.skip(f"this CPU lacks {', '.join(missing)} (amm_kernel_build_detail: "
                    f"{builds['avx512'][1]!r}): the AVX2 against AVX-512 bit check needs both")
    a, b = ran["avx2"], ran["avx512"]
    for key in a.files:
        assert a[key].tobytes() == b[key].tobytes(), f"avx2 and avx512 differ at {key}"


def test_kernel_build_is_reported():
    import amm_softmax
    assert amm_softmax.kernel_build() in ORDER
    assert f"{amm_softmax.kernel_build()}: selected" in amm_softmax.kernel_build_detail()


# --- the handshake ------------------------------------------------------------------------------
# Stand-ins for libAMMSoftmaxAVX2.so. The one of another table version answers the handshake
# as the protocol says (its own handshake, no table written); the one from before the handshake
# has only the old symbol, whose function aborts the process, so the test passes only if the
# library never calls it.
STAND_INS = {
    "wrong-version": """
        #include <stdint.h>
        uint64_t amm_internal_row_kernels_fill_avx2(void *table, long size, uint64_t theirs) {
            return (1ull << 32) | 96u;
        }
    """,
    "no-handshake": """
        #include <stdlib.h>
        void amm_internal_row_kernels_avx2(void *table) { abort(); }
    """,
}
EXPECTED_REASON = {
    "wrong-version": "libAMMSoftmaxAVX2.so refused: its kernel table (ABI 1, 96 bytes) does "
                     "not match this library's",
    "no-handshake": "libAMMSoftmaxAVX2.so refused: it has no kernel-table handshake",
}


@pytest.mark.parametrize("stand_in", sorted(STAND_INS))
def test_a_stale_build_library_is_refused(stand_in, tmp_path):
    import amm_softmax
    if cpu_lacks(amm_softmax.kernel_build_detail(), "avx2"):
        pytest.skip("this CPU lacks AVX2: the dispatcher never loads libAMMSoftmaxAVX2.so")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.fail("no C compiler (cc or gcc) to build the stand-in library")
    core = Path(amm_softmax._library.load()._name)
    shutil.copy(core, tmp_path / core.name)
    source = tmp_path / "stand_in.c"
    source.write_text(STAND_INS[stand_in])
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(tmp_path / "libAMMSoftmaxAVX2.so"),
                    str(source)], check=True)
    env = dict(os.environ, AMM_SOFTMAX_KERNELS="avx2",
               AMM_SOFTMAX_LIBRARY=str(tmp_path / core.name),
               PYTHONPATH=str(PYTHON_DIR) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = ("import json, numpy as np, amm_softmax as a\n"
             "loss = a.forward(np.full((2, 3), 0.5), np.array([0, 2]))\n"
             "print(json.dumps({'build': a.kernel_build(), 'detail': a.kernel_build_detail(),"
             " 'path': a._library.load()._name, 'loss': loss}))")
    done = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["path"] == str(tmp_path / core.name)
    assert report["build"] == "portable"
    assert EXPECTED_REASON[stand_in] in report["detail"], report["detail"]
    assert np.isfinite(report["loss"])


def test_16_bit_storage_is_each_builds_float32_rounded(builds):
    """Each build reads 16-bit cosines and rounds its gradients by its own means (F16C or
    integer arithmetic): every build must give its own float32 results, rounded once."""
    for request, (build, _, arrays) in builds.items():
        keys = [k for k in arrays.files if k.startswith("half-mismatches-")]
        assert keys, f"{build}: the child checked no 16-bit format"
        for key in keys:
            assert int(arrays[key][0]) == 0, f"{build} ({request}): {key} = {arrays[key][0]}"
