"""Speed and memory of the fused head against its GEMMs and PyTorch.

For a grid of shapes (N in {64, 256}, D in {128, 512}, C in {1e4, 1e5, 1e6}), f32, AMM
defaults, prints the time of head_forward_backward, the time of the three matrix products the
gradient needs (x^ W^^T, G W^ and G^T x^, by cblas_sgemm from the same OpenBLAS the library
links, in this process), their ratio, the speed-up over the same head in PyTorch (CPU,
normalize + linear + the loss + autograd backward; when torch is importable), and the peak extra
memory of each (resident memory above inputs and outputs). Then the memory curve as C grows,
and a PNG plot of both.

    python3 benchmarks/bench_head.py [--quick] [--out benchmarks/results]

Peak extra memory: the process's peak resident set (VmHWM) is reset before each call by
writing 5 to /proc/self/clear_refs, and read after; the extra is that peak minus the resident
set just before the call, with inputs and outputs already allocated and touched.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
import amm_softmax  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report_paths import repository_relative  # noqa: E402
from torch_probe import load_torch_peer  # noqa: E402

_TORCH_PEER, TORCH_WHY = load_torch_peer()
HAVE_TORCH = _TORCH_PEER is not None
if HAVE_TORCH:
    import torch
    torch_loss = _TORCH_PEER.torch_loss

MB = 1 << 20


# ------------------------------------------------------------------------------------------------
# Memory


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_extra(fn) -> tuple[object, int]:
    """fn()'s result and the peak resident memory it added (bytes)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    before = _status("VmRSS")
    out = fn()
    return out, _status("VmHWM") - before


def timeit(fn, repeats: int = 3) -> float:
    fn()
    return statistics.median(_once(fn) for _ in range(repeats))


def _once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# The peers


class OpenBLAS:
    """cblas_sgemm from the system's (threaded) OpenBLAS: the same 0.3.21 kernels the head runs
    in its private serial copy, here on as many of OpenBLAS's own threads as the head uses."""

    def __init__(self):
        self.lib = ctypes.CDLL("libopenblas.so.0")
        self.lib.cblas_sgemm.argtypes = [ctypes.c_int] * 6 + [
            ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
            ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
        self.lib.openblas_set_num_threads.argtypes = [ctypes.c_int]

    def gemm(self, ta: bool, tb: bool, a, b, c):
        """c = op(a) op(b), row-major float32 arrays."""
        m, n = c.shape
        k = a.shape[0] if ta else a.shape[1]
        self.lib.cblas_sgemm(101, 112 if ta else 111, 112 if tb else 111, m, n, k, 1.0,
                             a.ctypes.data, a.shape[1], b.ctypes.data, b.shape[1], 0.0,
                             c.ctypes.data, c.shape[1])

    def three_products(self, x_hat, w_hat, threads: int) -> float:
        """Time of cos = x^ W^^T, dx^ = G W^, dW^ = G^T x^ (G of cos's shape)."""
        self.lib.openblas_set_num_threads(threads)
        n, c = x_hat.shape[0], w_hat.shape[0]
        cos = np.empty((n, c), np.float32)
        dx = np.empty_like(x_hat)
        dw = np.empty_like(w_hat)

        def run():
            self.gemm(False, True, x_hat, w_hat, cos)
            self.gemm(False, False, cos, w_hat, dx)
            self.gemm(True, False, cos, x_hat, dw)
        return timeit(run)


def torch_head(x, w, labels, threads: int):
    torch.set_num_threads(threads)
    xt = torch.from_numpy(x).requires_grad_(True)
    wt = torch.from_numpy(w).requires_grad_(True)
    lt = torch.from_numpy(labels)
    cos = torch.nn.functional.linear(torch.nn.functional.normalize(xt),
                                     torch.nn.functional.normalize(wt))
    loss = torch_loss(cos, lt)
    loss.backward()
    return float(loss.detach()), xt.grad, wt.grad


# ------------------------------------------------------------------------------------------------


def make(n, d, c, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((c, d), dtype=np.float32)
    labels = rng.integers(0, c, n)
    x = (w[labels] + rng.standard_normal((n, d), dtype=np.float32) * 1.2).astype(np.float32)
    return x, w, labels


def fmt(t):
    return f"{t * 1e3:.1f}ms" if t < 10 else f"{t:.2f}s"


def measure(which: str, n: int, d: int, c: int, threads: int) -> dict:
    """One measurement, in this (fresh) process: time and peak extra memory of `which`."""
    x, w, labels = make(n, d, c)
    outputs = 0  # bytes of outputs the call allocates (not extra memory)
    if which == "head":
        # Gradient arrays reused between steps, as a training loop does (PyTorch keeps .grad).
        out = (np.zeros_like(x), np.zeros_like(w))
        fn = lambda: amm_softmax.head_forward_backward(x, w, labels, num_threads=threads,
                                                       out=out)
    elif which == "torch":
        outputs = x.nbytes + w.nbytes  # the .grad tensors it allocates
        fn = lambda: torch_head(x, w, labels, threads)
    else:  # the three products, on normalised copies (made outside the timing)
        blas = OpenBLAS()
        x_hat = x / np.linalg.norm(x, axis=1, keepdims=True)
        w_hat = w / np.linalg.norm(w, axis=1, keepdims=True)
        return dict(time=blas.three_products(x_hat, w_hat, threads), memory=0)
    # The first call's peak: nothing of an earlier call is cached by the allocator yet.
    _, extra = peak_extra(fn)
    extra -= outputs
    return dict(time=timeit(fn, repeats=2 if which == "torch" else 3), memory=max(extra, 0))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--one", nargs=4, metavar=("WHICH", "N", "D", "C"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        which, n, d, c = args.one[0], *map(int, args.one[1:])
        print(json.dumps(measure(which, n, d, c, args.threads)))
        return
    print(f"amm-softmax {amm_softmax.library_version()}, {args.threads} threads, f32, AMM "
          f"defaults; torch: {'yes' if HAVE_TORCH else 'no (' + TORCH_WHY + ')'}; each "
          f"measurement in a fresh process")
    grid = [(n, d, c) for n in (64, 256) for d in (128, 512) for c in (10_000, 100_000, 1_000_000)]
    if args.quick:
        grid = [(64, 128, 10_000), (256, 512, 100_000)]
    head = (f"{'N':>5}{'D':>5}{'C':>9} {'head':>9}{'3 GEMMs':>9}{'ratio':>7}{'torch':>9}"
            f"{'speed-up':>9}{'head MB':>9}{'torch MB':>9}{'mem ratio':>10}")
    print(head)
    print("-" * len(head))
    rows = []
    for n, d, c in grid:
        def child(which):
            out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads),
                                  "--one", which, str(n), str(d), str(c)],
                                 capture_output=True, text=True, check=True).stdout
            return json.loads(out.strip().splitlines()[-1])
        h, g = child("head"), child("gemm")
        row = dict(n=n, d=d, c=c, t_head=h["time"], t_gemm=g["time"], mem=h["memory"])
        if HAVE_TORCH:
            t = child("torch")
            row.update(t_torch=t["time"], mem_torch=t["memory"])
        rows.append(row)
        tt, mt = row.get("t_torch"), row.get("mem_torch")
        speedup = f"{tt / row['t_head']:.1f}x" if tt else "-"
        torch_mb = f"{mt / MB:.0f}" if tt else "-"
        mem_ratio = f"{mt / max(row['mem'], 1):.0f}x" if tt else "-"
        print(f"{n:>5}{d:>5}{c:>9} {fmt(row['t_head']):>9}{fmt(row['t_gemm']):>9}"
              f"{row['t_head'] / row['t_gemm']:>6.2f}x{fmt(tt) if tt else '-':>9}{speedup:>9}"
              f"{row['mem'] / MB:>9.1f}{torch_mb:>9}{mem_ratio:>10}", flush=True)
    plot(rows, args.out / ("head" + ("_quick" if args.quick else "") + ".png"))


def plot(rows, path: Path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no plot: matplotlib is not installed)")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 5))
    for (n, d) in sorted({(r["n"], r["d"]) for r in rows}):
        sel = sorted((r for r in rows if (r["n"], r["d"]) == (n, d)), key=lambda r: r["c"])
        cs = [r["c"] for r in sel]
        line, = a1.loglog(cs, [r["t_head"] for r in sel], "o-", label=f"head N={n} D={d}")
        a1.loglog(cs, [r["t_gemm"] for r in sel], "--", color=line.get_color(), alpha=0.6,
                  label=f"3 GEMMs N={n} D={d}")
        if "t_torch" in sel[0]:
            a1.loglog(cs, [r["t_torch"] for r in sel], ":", color=line.get_color(),
                      label=f"PyTorch N={n} D={d}")
        a2.semilogx(cs, [r["mem"] / MB for r in sel], "o-", color=line.get_color(),
                    label=f"head N={n} D={d}")
        if "mem_torch" in sel[0]:
            a2.semilogx(cs, [r["mem_torch"] / MB for r in sel], ":", color=line.get_color(),
                        label=f"PyTorch N={n} D={d}")
    a1.set(xlabel="classes C", ylabel="forward + backward time (s)",
           title="Fused head, f32, 2 threads")
    a2.set(xlabel="classes C", ylabel="peak extra memory (MiB)", yscale="log",
           title="Memory above inputs and outputs")
    for a in (a1, a2):
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {repository_relative(path)}")


if __name__ == "__main__":
    main()
