"""A user's script that calls every public function of amm_softmax, fully annotated, for mypy
--strict (python/tests/test_packaging_typing.py); it also runs, so that it stays a real program."""
from __future__ import annotations

from typing import Any

import numpy as np

import amm_softmax
import amm_softmax.mpi
import amm_softmax.reference


def losses(rng: np.random.Generator) -> list[float]:
    cos = rng.uniform(-1, 1, (8, 20)).astype(np.float32)
    labels = rng.integers(0, 20, 8)
    counts = np.empty(8, dtype=np.int64)
    out = np.empty_like(cos)
    loss = amm_softmax.forward(cos, labels, hard_negatives=counts, scale=32.0, margin=0.3)
    grad: np.ndarray = amm_softmax.backward(cos, labels, 1.0, out=out, hard="mv-fixed")
    both_loss, both_grad = amm_softmax.forward_backward(cos, labels, reduction="sum")
    target = np.empty(8)
    amm_softmax.forward(cos, labels, target_cosines=target, hard="curricular", hard_margin=0.1,
                        margin_gradient="straight-through")
    t: float = amm_softmax.curricular_t(0.0, target, labels)
    t_ref: float = amm_softmax.reference.curricular_t(t, target)
    x, w = rng.standard_normal((8, 4)), rng.standard_normal((20, 4))
    head_loss, grad_x, grad_w = amm_softmax.head_forward_backward(x, w, labels, block_size=7)
    sampled = amm_softmax.head_forward_backward(x, w, labels, sample_rate=0.5, seed=1,
                                                step=2, return_sampled=True)
    ref_loss = amm_softmax.reference.forward(cos, labels)
    ref_grad: np.ndarray = amm_softmax.reference.backward(cos, labels)
    ref_both = amm_softmax.reference.forward_backward(cos, labels)
    ref_head = amm_softmax.reference.head_forward_backward(x, w, labels)
    assert grad.shape == both_grad.shape == ref_grad.shape == cos.shape
    assert grad_x.shape == x.shape and grad_w.shape == w.shape and len(sampled) == 4
    return [float(loss), float(both_loss), float(head_loss), float(ref_loss),
            float(ref_both[0]), float(ref_head[0])]


def sharded(comm: Any, rng: np.random.Generator) -> tuple[Any, ...]:
    """The MPI entry points (called under mpirun only; here they are type-checked)."""
    x, w = rng.standard_normal((4, 3)), rng.standard_normal((10, 3))
    labels = rng.integers(0, 10, 4)
    head = amm_softmax.mpi.head_forward_backward(x, w, labels, comm, class_start=0)
    loss, grad = amm_softmax.mpi.forward_backward(rng.uniform(-1, 1, (4, 10)), labels, comm)
    return head + (loss, grad)


def main() -> None:
    version: str = amm_softmax.__version__
    library: str = amm_softmax.library_version()
    build: str = amm_softmax.kernel_build()
    detail: str = amm_softmax.kernel_build_detail()
    values = losses(np.random.default_rng(0))
    assert all(np.isfinite(values)), values
    print("user script:", version, library, build, len(detail.splitlines()), "ok")


if __name__ == "__main__":
    main()
