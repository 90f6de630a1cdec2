"""Which OpenBLAS the wheel should bring (issue 15): the fused head against its three GEMMs,
with each candidate, in one run.

The candidates:
- debian: Debian's OpenBLAS (libopenblas-serial-dev), the serial static archive the library
  links privately today. Its GEMMs are timed through Debian's threaded shared build of the same
  release (libopenblas0-pthread), so that they can use the head's thread count.
- scipy: scipy-openblas32 from PyPI, the OpenBLAS build NumPy and SciPy ship. Its head is a
  build of this repository linked against libscipy_openblas.so instead (`--scipy-head PATH`:
  see benchmarks/README.md for how it was made), run with OPENBLAS_NUM_THREADS=1 so that each
  of the head's chunk products is single-threaded, as with the serial archive.

For each shape (f32, AMM defaults) it prints the head's time with each BLAS and the time of the
three products the gradient needs (x^ W^^T, G W^, G^T x^) with each, all at the same thread
count, every measurement in a fresh process (best of --repeats after one warm-up call).

    python3 benchmarks/bench_blas.py --scipy-head PATH/libAMMSoftmax.so [--threads N]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(64, 128, 10_000), (256, 512, 100_000)]
DEBIAN_THREADED = "libopenblas.so.0"  # the alternatives link: Debian's pthread build here


def make(n: int, d: int, c: int):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d)).astype(np.float32)
    w = rng.standard_normal((c, d)).astype(np.float32)
    return x, w, rng.integers(0, c, n)


def best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def blas(which: str, threads: int):
    """(sgemm, the library's core name) of one candidate, set to `threads` threads."""
    if which == "debian":
        lib, prefix = ctypes.CDLL(DEBIAN_THREADED), ""
    else:
        import scipy_openblas32
        lib = ctypes.CDLL(os.path.join(scipy_openblas32.get_lib_dir(),
                                       f"lib{scipy_openblas32.get_library()}.so"))
        prefix = "scipy_"
    getattr(lib, f"{prefix}openblas_set_num_threads")(threads)
    corename = getattr(lib, f"{prefix}openblas_get_corename")
    corename.restype = ctypes.c_char_p
    sgemm = getattr(lib, f"{prefix}cblas_sgemm")
    sgemm.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int,
                                           ctypes.c_void_p, ctypes.c_int, ctypes.c_float,
                                           ctypes.c_void_p, ctypes.c_int]
    return sgemm, corename().decode()


def child(kind: str, which: str, n: int, d: int, c: int, threads: int, repeats: int) -> dict:
    x, w, labels = make(n, d, c)
    if kind == "head":
        sys.path.insert(0, str(ROOT / "python"))
        import amm_softmax
        out = (np.empty_like(x), np.empty_like(w))
        t = best(lambda: amm_softmax.head_forward_backward(x, w, labels, out=out,
                                                           num_threads=threads), repeats)
        return {"time": t, "library": amm_softmax._library.load()._name}
    sgemm, core = blas(which, threads)
    x_hat = x / np.linalg.norm(x, axis=1, keepdims=True)
    w_hat = w / np.linalg.norm(w, axis=1, keepdims=True)
    cos, dx, dw = np.empty((n, c), np.float32), np.empty_like(x), np.empty_like(w)

    def gemm(ta: bool, tb: bool, a, b, out) -> None:
        m, k = (a.shape[1], a.shape[0]) if ta else a.shape
        sgemm(101, 112 if ta else 111, 112 if tb else 111, m, out.shape[1], k, 1.0,
              a.ctypes.data, a.shape[1], b.ctypes.data, b.shape[1], 0.0, out.ctypes.data,
              out.shape[1])

    def three() -> None:
        gemm(False, True, x_hat, w_hat, cos)
        gemm(False, False, cos, w_hat, dx)
        gemm(True, False, cos, x_hat, dw)
    return {"time": best(three, repeats), "core": core}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scipy-head", required=True, help="libAMMSoftmax.so built on scipy-openblas32")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(*json.loads(a.child))))
        return
    import scipy_openblas32
    print(f"threads {a.threads}, best of {a.repeats}; scipy-openblas32 "
          f"{scipy_openblas32.__version__}; OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    print(f"{'N':>5}{'D':>5}{'C':>8} {'head debian':>12}{'head scipy':>11}{'3 GEMMs debian':>15}"
          f"{'3 GEMMs scipy':>14}  cores")
    for n, d, c in SHAPES:
        row = {}
        for kind, which in (("head", "debian"), ("head", "scipy"), ("gemm", "debian"),
                            ("gemm", "scipy")):
            env = dict(os.environ)
            if kind == "head" and which == "scipy":
                env.update(AMM_SOFTMAX_LIBRARY=a.scipy_head, OPENBLAS_NUM_THREADS="1")
            spec = json.dumps([kind, which, n, d, c, a.threads, a.repeats])
            out = subprocess.run([sys.executable, __file__, "--scipy-head", a.scipy_head,
                                  "--child", spec], env=env, check=True, capture_output=True,
                                 text=True).stdout
            row[kind, which] = json.loads(out.splitlines()[-1])
        if row["head", "scipy"]["library"] != a.scipy_head:
            raise SystemExit(f"the scipy head ran {row['head', 'scipy']['library']}")
        ms = {k: v["time"] * 1e3 for k, v in row.items()}
        print(f"{n:>5}{d:>5}{c:>8} {ms['head', 'debian']:>10.1f}ms{ms['head', 'scipy']:>9.1f}ms"
              f"{ms['gemm', 'debian']:>13.1f}ms{ms['gemm', 'scipy']:>12.1f}ms  "
              f"{row['gemm', 'debian']['core']}/{row['gemm', 'scipy']['core']}")


if __name__ == "__main__":
    main()
