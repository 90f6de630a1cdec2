"""Half-precision storage (bf16, f16) against f32 for the loss on cosine logits, in one run.

At N = 512, C = 100,000 with `out=` (no allocation in the loop): the time of forward_backward in
f32, bf16 and f16, the ratio of each 16-bit time to the f32 time, and each one's roofline ratio
(time over the time its bytes take to copy: cos read once and grad_cos written once, 2 N C b for
b-byte elements, at the memcpy bandwidth measured here on the library's thread count). Then the
cost of a new gradient array on every call (its allocation and first touch), as autograd pays it,
the loss alone (forward: the statistics pass, which reads the 16-bit row directly), and the time
on one thread. The closing line says what sets the time here: where f32 takes several times
what its bytes need at the copy bandwidth, the arithmetic does, and half the bytes cannot mean
half the time; near 1, memory does.

    python3 benchmarks/bench_half.py [--n 512] [--c 100000] [--threads 0]

bf16 arrays need ml_dtypes (pip install ml_dtypes).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loss import copy_bandwidth, make, timeit  # noqa: E402

import amm_softmax  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--c", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=0, help="0: one per core")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    args = ap.parse_args()
    import ml_dtypes
    threads = args.threads or os.cpu_count() or 1
    bandwidth = copy_bandwidth(threads=threads)
    n, c = args.n, args.c
    cos32, labels = make(n, c, np.float32)
    print(f"{datetime.date.today()}  {platform.machine()}, {os.cpu_count()} cores, "
          f"kernel build {amm_softmax.kernel_build()}, threads {threads}; copy bandwidth "
          f"{bandwidth / 1e9:.1f} GB/s")
    print(f"forward_backward, N = {n}, C = {c}, out= given; median of repeats\n")
    print(f"{'dtype':<10}{'time':>10}{'vs f32':>9}{'roofline':>10}{'x roofline':>12}"
          f"{'new grad':>11}{'x':>7}{'forward':>10}{'1 thread':>11}{'speedup':>9}")
    results = {}
    for name, dtype in (("float32", np.float32), ("bfloat16", ml_dtypes.bfloat16),
                        ("float16", np.float16)):
        cos = cos32.astype(dtype)
        out = np.empty_like(cos)
        t = timeit(lambda: amm_softmax.forward_backward(cos, labels, out=out,
                                                        num_threads=args.threads),
                   min_time=args.min_time)
        t_new = timeit(lambda: amm_softmax.forward_backward(cos, labels,
                                                            num_threads=args.threads),
                       min_time=args.min_time)
        t_forward = timeit(lambda: amm_softmax.forward(cos, labels, num_threads=args.threads),
                           min_time=args.min_time)
        t_one = timeit(lambda: amm_softmax.forward_backward(cos, labels, out=out,
                                                            num_threads=1),
                       min_time=args.min_time)
        roof = 2 * cos.nbytes / bandwidth
        results[name] = t
        print(f"{name:<10}{t * 1e3:>8.2f}ms{t / results['float32']:>9.2f}{roof * 1e3:>8.2f}ms"
              f"{t / roof:>12.2f}{t_new * 1e3:>9.2f}ms{t_new / t:>7.2f}"
              f"{t_forward * 1e3:>8.2f}ms{t_one * 1e3:>9.2f}ms{t_one / t:>9.2f}")
    print("\nvs f32: the time over the f32 time of this run; x roofline: over the time the "
          "same bytes take to copy;\nnew grad: without out= (a new gradient array each call), "
          "and its ratio to the time with out=;\nforward: the loss alone; 1 thread: "
          "forward_backward on one thread, and its ratio to the time above (speedup).")
    # The f32 call's time over the time its bytes take to copy: well above 1, the arithmetic
    # sets the time (the 16-bit path does the same arithmetic); near 1, memory does.
    f32_roofline = results["float32"] / (2 * cos32.nbytes / bandwidth)
    bound = ("arithmetic: the 16-bit path does the same arithmetic, so half the bytes cannot "
             "halve the time" if f32_roofline >= 2
             else "memory: half the bytes should come close to half the time")
    print(f"float32 takes {f32_roofline:.2f}x the time its bytes need at the copy bandwidth: "
          f"bound by {bound}.")


if __name__ == "__main__":
    main()
