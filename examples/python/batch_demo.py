"""The main job, for now: one batch through every member of the loss family.

Makes a batch the way a face-recognition head would (L2-normalised embeddings against
L2-normalised class weights, so `cos` holds true cosines), then, for each configuration
(AMM-Softmax, ArcFace, CosFace, MV-Arc-Softmax, MV-AM-Softmax, plain normalised softmax), computes
the loss and its gradient with the library and with the NumPy reference and prints both side by
side: the loss from each, the largest gradient difference, the share of negatives mined as hard,
and the time each took. Trains nothing.

    python3 examples/python/batch_demo.py [--rows N] [--classes C] [--dtype float32|float64]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))
import amm_softmax  # noqa: E402
from amm_softmax import reference  # noqa: E402

CONFIGS = [
    ("AMM-Softmax", dict(target="arc", hard="amm", hard_margin=0.2)),
    ("ArcFace", dict(target="arc", hard="none")),
    ("CosFace", dict(target="cos", hard="none", margin=0.35)),
    ("MV-Arc-Softmax", dict(target="arc", hard="mv-fixed", hard_margin=1.2)),
    ("MV-AM-Softmax", dict(target="cos", hard="mv-fixed", margin=0.35, hard_margin=1.2)),
    ("normalised softmax", dict(target="cos", hard="none", margin=0.0)),
]


def make_batch(rows: int, classes: int, dim: int, dtype, seed: int = 0):
    """Embeddings near their class centre (so the targets are mostly, not always, nearest)."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((classes, dim))
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    labels = rng.integers(0, classes, rows)
    x = weights[labels] + 1.2 * rng.standard_normal((rows, dim)) / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return (x @ weights.T).astype(dtype), labels


def hard_fraction(cos: np.ndarray, labels: np.ndarray, params: dict) -> float:
    """The share of negatives with cos > f(c_y), the mined (mis-classified) vectors."""
    rows = np.arange(len(labels))
    cy = cos[rows, labels].astype(np.float64)
    m = params.get("margin", 0.5)
    if params["target"] == "arc":
        f = np.where(cy > np.cos(np.pi - m), np.cos(np.arccos(np.clip(cy, -1, 1)) + m),
                     cy - m * np.sin(m))
    else:
        f = cy - m
    hard = cos > f[:, None]
    hard[rows, labels] = False
    return hard.sum() / (cos.size - len(labels))


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--classes", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = ap.parse_args()

    cos, labels = make_batch(args.rows, args.classes, args.dim, np.dtype(args.dtype))
    print(f"amm-softmax {amm_softmax.__version__} (library {amm_softmax.library_version()}): "
          f"batch N={args.rows}, C={args.classes}, {args.dtype}, s=64, m=0.5 unless noted")
    head = (f"{'configuration':<20}{'loss (library)':>16}{'loss (reference)':>18}"
            f"{'max |dgrad|':>13}{'max |grad|':>12}{'hard negs':>11}{'library':>10}"
            f"{'reference':>11}{'speed-up':>10}")
    print(head)
    print("-" * len(head))
    worst = 0.0
    for name, params in CONFIGS:
        (loss, grad), t_lib = timed(amm_softmax.forward_backward, cos, labels, **params)
        (ref_loss, ref_grad), t_ref = timed(reference.forward_backward, cos, labels, **params)
        gdiff = float(np.max(np.abs(grad.astype(np.float64) - ref_grad)))
        gmax = float(np.max(np.abs(ref_grad)))
        worst = max(worst, abs(loss - ref_loss) / max(abs(ref_loss), 1e-30), gdiff / gmax)
        print(f"{name:<20}{loss:>16.8f}{ref_loss:>18.8f}{gdiff:>13.2e}{gmax:>12.2e}"
              f"{hard_fraction(cos, labels, params):>10.2%}{t_lib * 1e3:>8.1f}ms"
              f"{t_ref * 1e3:>9.1f}ms{t_ref / t_lib:>9.1f}x")
    tolerance = 1e-4 if args.dtype == "float32" else 1e-10
    verdict = "agree" if worst <= tolerance else "DISAGREE"
    print(f"\nlibrary and reference {verdict}: largest relative difference {worst:.2e} "
          f"(tolerance {tolerance:g} for {args.dtype})")
    return 0 if worst <= tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
