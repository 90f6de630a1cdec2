"""The loss and the fused head sharded by class over MPI (needs mpi4py; the rest of the package
does not). PartialFC's layout: every rank holds its own rows of the batch and one shard of the
classes, [start, stop) = shard_range(C, rank, size).

    from mpi4py import MPI
    from amm_softmax import mpi as amm_mpi

    comm = MPI.COMM_WORLD
    start, stop = amm_mpi.shard_range(num_classes, comm.rank, comm.size)
    loss, grad_x, grad_w = amm_mpi.head_forward_backward(x_local, W[start:stop], y_local, comm)

Every rank must call each function, in the same order, with the same keyword parameters; the
labels are global class ids. Bad input on any rank raises the same exception, with the same
message, on every rank (the message starts with the rank that found it): no rank is left
waiting in a collective. The results equal the single-process ones (amm_softmax.forward_backward
and amm_softmax.head_forward_backward on the whole batch and every class) up to the order of
floating-point sums over ranks; the loss is bit-identical on every rank.

Traffic (`traffic=amm_softmax.mpi.Traffic()` receives it, one entry per collective). The bytes
counted are each collective's payload as this rank sees it: the buffer reduced by an allreduce,
the whole gathered array of an allgather (a ring algorithm puts about (P - 1) / P of an
allgather's payload and 2 (P - 1) / P of an allreduce's on each rank's link). With N rows in
the global batch (every rank's), D the embedding dimension, e the element size (4 or 8) and P
ranks, one call of the head moves, per rank:

    embeddings allgather                    N D e
    labels allgather                        8 N
    target, row max, row sum allreduces     3 * 8 N
    grad_embeddings allreduce               N D e
    hard-negative counts (if asked)         8 N
    class sampling (sample_rate < 1)        8 N (the labels in the kept classes) + 8 P
    small checks                            16 P (shard layout) + 8 * 2 * 14 (parameters)
                                            + 8 per agreement on errors (8 of them)

that is 2 N D e + 32 N (+ 8 N) + O(P), independent of the number of classes: at N = 256,
D = 128, float32, P = 2, 270,656 bytes a step (measured by python/tests/test_mpi.py). The loss
on cosine logits (forward_backward: every rank passes the same N rows) moves 3 * 8 N (+ 8 N
for the counts) and its small checks (16 P + 8 * 2 * 12 + 8 * 7), and no gradient: each
rank's grad_cos_shard is complete for its columns. Not counted: the few bytes of shapes that
MPICollectives exchanges before each Allgatherv, and the text of an error (only on failure).

Cost: the sharded head makes two passes over the cosines (statistics, then gradient), where
the single-process head makes one; on one core it takes about twice as long for the same
classes.
"""
from __future__ import annotations

from typing import Any

import numpy as np

try:
    from mpi4py import MPI
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "amm_softmax.mpi needs mpi4py and an MPI library: pip install mpi4py (on Debian, the "
        "MPI library and its compiler wrapper first: apt-get install openmpi-bin "
        f"libopenmpi-dev). The import failed with: {e}") from e

from . import _shard
from ._shard import Collectives, Traffic, shard_range

__all__ = ["head_forward_backward", "forward_backward", "shard_range", "MPICollectives",
           "Traffic"]

_OPS = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}


class MPICollectives(Collectives):
    """The driver's collectives over an mpi4py communicator: Allreduce and Allgatherv on NumPy
    buffers (no pickling of arrays), bcast of text."""

    def __init__(self, comm) -> None:
        super().__init__()
        if not isinstance(comm, MPI.Comm):
            raise TypeError(f"comm must be an mpi4py.MPI.Comm, got {type(comm).__name__}")
        if comm.Is_inter():
            raise ValueError("comm must be an intracommunicator")
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    def allreduce(self, array, op):
        send = np.ascontiguousarray(array)
        result = np.empty_like(send)
        self.comm.Allreduce(send, result, op=_OPS[op])
        self.bytes_sent += send.nbytes
        return result

    def allgather(self, array):
        send = np.ascontiguousarray(array)
        # The shapes first (small), so that every rank sizes the same receive buffer and sees
        # the same mismatch, if any, and fails the same way.
        shapes = self.comm.allgather((send.shape, send.dtype.str))
        tails = {(shape[1:], dtype) for shape, dtype in shapes}
        if len(tails) != 1:
            raise ValueError(f"allgather: the ranks' arrays differ beyond their first "
                             f"dimension: {[s for s, _ in shapes]}, {[d for _, d in shapes]}")
        rows = [shape[0] if shape else 1 for shape, _ in shapes]
        tail = shapes[0][0][1:]
        per_row = int(np.prod(tail, dtype=np.int64))
        counts = [r * per_row for r in rows]
        displacements = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
        gathered = np.empty((sum(rows),) + tuple(tail), dtype=send.dtype)
        self.comm.Allgatherv(send, [gathered, (counts, displacements)])
        self.bytes_sent += send.nbytes
        bounds = np.concatenate([[0], np.cumsum(rows)])
        parts = [gathered[bounds[r]:bounds[r + 1]] for r in range(self.size)]
        if not send.shape:
            parts = [part.reshape(()) for part in parts]
        return parts

    def broadcast_text(self, text, root):
        return self.comm.bcast(text, root=root)


def head_forward_backward(x_local: np.ndarray, w_shard: np.ndarray, labels_local: np.ndarray,
                          comm: Any, *, class_start: int | None = None,
                          sample_rate: float = 1.0, seed: int = 0, step: int = 0,
                          block_size: int = 0, hard_negatives: np.ndarray | None = None,
                          return_sampled: bool = False, traffic: Traffic | None = None,
                          **params: Any) -> tuple[Any, ...]:
    """The fused head sharded by class over `comm` (an mpi4py communicator).

    x_local (n_r, D): this rank's embeddings; w_shard (c_r, D): the class weights of this
    rank's shard (c_r may be 0), of the embeddings' dtype; labels_local (n_r,): global class
    ids in [0, C), or ignore_index. The shards must tile [0, C) in rank order; `class_start`,
    if given, is checked against that (shard_range gives PartialFC's split).

    Returns (loss, grad_x_local, grad_w_shard): the loss over every rank's rows (a float for
    mean and sum, the same on every rank; this rank's n_r values for 'none'), the gradient of
    this rank's embeddings and of its shard's weights. With `return_sampled`, also the kept
    classes of this shard (sorted global ids).

    sample_rate < 1 is PartialFC's class sampling: each step keeps, in every shard, the targets
    of the global batch and floor(sample_rate * c_r) classes in all when that is more, drawn
    from (seed, step, rank); the other classes get a zero gradient. block_size, hard_negatives
    (int64, (n_r,): this rank's rows' counts over every shard) and the keyword parameters as
    for amm_softmax.head_forward_backward; `traffic` (a Traffic) receives the bytes of each
    collective (the module docstring gives them)."""
    return _shard.head_forward_backward(
        x_local, w_shard, labels_local, MPICollectives(comm), class_start=class_start,
        sample_rate=sample_rate, seed=seed, step=step, block_size=block_size,
        hard_negatives=hard_negatives, return_sampled=return_sampled, traffic=traffic,
        **params)


def forward_backward(cos_shard: np.ndarray, labels: np.ndarray, comm: Any, *,
                     class_start: int | None = None, hard_negatives: np.ndarray | None = None,
                     traffic: Traffic | None = None, **params: Any) -> tuple[Any, np.ndarray]:
    """The loss on cosine logits sharded by class over `comm`: every rank passes the same N
    rows and labels (global class ids) and its shard's columns, cos_shard (N, c_r) with c_r
    possibly 0. Returns (loss, grad_cos_shard): the loss of the whole problem (the same on
    every rank) and the gradient of this rank's columns. hard_negatives (int64, (N,)) receives
    each row's count over every shard. Other keywords as for amm_softmax.forward_backward."""
    return _shard.cosine_forward_backward(
        cos_shard, labels, MPICollectives(comm), class_start=class_start,
        hard_negatives=hard_negatives, traffic=traffic, **params)
