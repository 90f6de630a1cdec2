"""The sharded protocol (include/amm_softmax.h, "Sharding by class"), driven from Python over any
engine's collectives, and PartialFC's class sampling.

The library computes; an engine (MPI through mpi4py, torch.distributed, or a single process)
moves the data. `Collectives` is the little an engine must provide; amm_softmax.mpi and
amm_softmax.torch adapt theirs. Every collective here is entered by every rank in the same order,
and every error is agreed on before the next one (`_agree`): a rank that fails never leaves the
others waiting, and every rank raises the same exception with the same message.
"""
from __future__ import annotations

import builtins
import ctypes
import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from . import _library as L
from ._api import _check_status, _dense, _loss_value
from ._params import Params, abi_struct, check_block_size, check_params

_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def shard_range(num_classes: int, rank: int, size: int) -> tuple[int, int]:
    """(start, stop) of shard `rank` of `size`: num_classes // size classes each, plus one for
    the first num_classes % size ranks (PartialFC's split)."""
    for name, value in (("num_classes", num_classes), ("rank", rank), ("size", size)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {value!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes = {num_classes} is invalid: must be >= 1")
    if size < 1:
        raise ValueError(f"size = {size} is invalid: must be >= 1")
    if not 0 <= rank < size:
        raise ValueError(f"rank = {rank} is invalid: must be in [0, {size})")
    base, extra = divmod(int(num_classes), int(size))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class Collectives:
    """What the protocol needs of an engine. Every method is collective: all ranks call it, in
    the same order. Arrays are NumPy; `allreduce` returns a new array and never modifies its
    argument. `bytes_sent` counts the payload this rank contributes, for the reports."""

    rank: int = 0
    size: int = 1

    def __init__(self) -> None:
        self.bytes_sent = 0

    def allreduce(self, array: np.ndarray, op: str) -> np.ndarray:  # op: "sum", "max", "min"
        raise NotImplementedError

    def allgather(self, array: np.ndarray) -> list[np.ndarray]:
        """Every rank's array (their first dimensions may differ), in rank order."""
        raise NotImplementedError

    def broadcast_text(self, text: str, root: int) -> str:
        raise NotImplementedError


class SingleProcess(Collectives):
    """The collectives of one process: the protocol without an engine (class sampling on one
    process, and tests)."""

    def allreduce(self, array, op):
        return np.array(array, copy=True)

    def allgather(self, array):
        return [np.array(array, copy=True)]

    def broadcast_text(self, text, root):
        return text


@dataclass
class Traffic:
    """The collectives of one call on this rank, in order: (what, bytes), the bytes being the
    collective's payload as this rank sees it (the buffer an allreduce reduces, the whole array
    an allgather gathers; a text broadcast, only on an error, is not counted). amm_softmax.mpi's
    docstring gives the formula for each function."""

    collectives: list[tuple[str, int]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(b for _, b in self.collectives)


class _Counted:
    """Wraps an engine's collectives to count the bytes of each."""

    def __init__(self, inner: Collectives, traffic: Traffic):
        self.inner, self.traffic = inner, traffic
        self.rank, self.size = inner.rank, inner.size

    def allreduce(self, array, op, what):
        array = np.ascontiguousarray(array)
        self.traffic.collectives.append((f"allreduce {op} {what}", array.nbytes))
        return self.inner.allreduce(array, op)

    def allgather(self, array, what):
        parts = self.inner.allgather(np.ascontiguousarray(array))
        self.traffic.collectives.append((f"allgather {what}",
                                         sum(int(part.nbytes) for part in parts)))
        return parts

    def broadcast_text(self, text, root):
        return self.inner.broadcast_text(text, root)


def _agree(coll: _Counted, error: BaseException | None) -> None:
    """One small allreduce: if any rank failed, every rank raises the failure of the lowest
    failing rank (its exception type and message)."""
    flag = np.array([coll.rank if error is not None else coll.size], dtype=np.int64)
    first = int(coll.allreduce(flag, "min", "error agreement")[0])
    if first == coll.size:
        return
    if coll.rank == first:
        text = f"{type(error).__name__}\n{error}"
    else:
        text = ""
    kind, _, message = coll.broadcast_text(text, first).partition("\n")
    if coll.size > 1 and not message.startswith("rank "):
        message = f"rank {first}: {message}"
    raise _exception(kind, message) from error


def _exception(kind: str, message: str) -> Exception:
    """An exception of the built-in type named `kind` (RuntimeError naming it for any other)."""
    cls = getattr(builtins, kind, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except TypeError:  # a type whose constructor wants more than a message
            pass
    return RuntimeError(f"{kind}: {message}")


def _attempt(coll: _Counted, step):
    """Runs `step()` on this rank, then agrees on failure with the others: any exception (not
    only the expected kinds) must reach the agreement, or the other ranks would wait forever
    in the next collective."""
    try:
        result, error = step(), None
    except Exception as e:  # noqa: BLE001 - re-raised, on every rank, by _agree
        result, error = None, e
    _agree(coll, error)
    return result


_CODES = {"target": L.TARGET_CODES, "hard": L.HARD_CODES, "reduction": L.REDUCTION_CODES}


def _check_same_everywhere(coll: _Counted, values: Sequence[float], names: Sequence[str]):
    """One allreduce of [v, -v] with max: a value that differs between ranks is named."""
    v = np.asarray(values, dtype=np.float64)
    both = coll.allreduce(np.concatenate([v, -v]), "max", "parameter check")
    high, low = both[:len(v)], -both[len(v):]

    def check():
        for name, lo, hi in zip(names, low, high):
            if not (lo == hi or (np.isnan(lo) and np.isnan(hi))):
                raise ValueError(f"{name}: not the same on every rank (from {float(lo)!r} to "
                                 f"{float(hi)!r}); every rank must pass the same value")
    _attempt(coll, check)


def _param_vector(p: Params) -> tuple[list[float], list[str]]:
    return ([p.scale, p.margin, p.hard_margin, _CODES["target"][p.target],
             _CODES["hard"][p.hard], _CODES["reduction"][p.reduction], float(p.ignore_index),
             L.MARGIN_GRADIENT_CODES[p.margin_gradient]],
            ["scale", "margin", "hard_margin", "target", "hard", "reduction", "ignore_index",
             "margin_gradient"])


def _labels_digest(labels: np.ndarray) -> float:
    """A number that differs, almost surely, when two ranks' labels differ."""
    weights = (np.arange(labels.size, dtype=np.float64) % 1021.0) + 1.0
    return float(np.dot(labels.astype(np.float64) % 1_000_003.0, weights)) + labels.size * 1e12


def _shard_layout(coll: _Counted, c_local: int, class_start: int | None):
    """(class_start, c_total) of this rank, checking that the shards tile [0, c_total) in rank
    order."""
    mine = np.array([c_local, -1 if class_start is None else class_start], dtype=np.int64)
    everyone = np.concatenate(coll.allgather(mine.reshape(1, 2), "shard layout"))
    counts = everyone[:, 0]
    c_total = int(counts.sum())
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])

    def check():
        if c_total < 1:
            raise ValueError("the shards hold no class: c_total = 0")
        given = everyone[:, 1]
        for r in range(coll.size):
            if given[r] != -1 and given[r] != starts[r]:
                raise ValueError(
                    f"the shards do not tile [0, {c_total}): rank {r} starts at class "
                    f"{given[r]} but ranks 0..{r - 1} hold {starts[r]} classes before it")
    _attempt(coll, check)
    return int(starts[coll.rank]), c_total


def _call(name: str, dtype, *args):
    lib = L.load()
    fn = getattr(lib, f"amm_shard_{name}_{_SUFFIX[np.dtype(dtype)]}")
    _check_status(lib, fn(*args))


def _ptr(a):
    return None if a is None else a.ctypes.data


def _statistics_and_combine(coll, stats_call, rows, counts):
    """Phase 2 and its collectives: (global_max, global_sum)."""
    row_max, row_sum = np.empty(rows), np.empty(rows)
    _attempt(coll, lambda: stats_call(row_max, row_sum))
    global_max = coll.allreduce(row_max, "max", "row_max")
    lib = L.load()
    _check_status(lib, lib.amm_shard_rescale_sums(rows, _ptr(row_max), _ptr(global_max),
                                                  _ptr(row_sum)))
    global_sum = coll.allreduce(row_sum, "sum", "row_sum")
    if counts is not None:
        counts[:] = coll.allreduce(counts, "sum", "hard_negatives")
    return global_max, global_sum


def cosine_forward_backward(cos_shard, labels, collectives: Collectives, *,
                            class_start: int | None = None, hard_negatives=None,
                            target_cosines=None, traffic: Traffic | None = None, **params):
    """The loss on cosine logits sharded by class: every rank passes the same rows and labels
    (global class ids) and its shard's columns. Returns (loss, grad_cos_shard)."""
    from ._api import _cosines_out, _counts_out
    from ._params import check_cos, check_labels
    traffic = traffic if traffic is not None else Traffic()
    coll = _Counted(collectives, traffic)
    local = {}

    def prepare():
        p = check_params(**params)
        cos = cos_shard
        if isinstance(cos, np.ndarray) and cos.ndim == 2 and cos.shape[1] == 0:
            if cos.dtype not in (np.float32, np.float64):   # a rank may hold no class
                raise TypeError(f"cos_shard must have dtype float32 or float64, "
                                f"got {cos.dtype}")
            cos = np.ascontiguousarray(cos)
        else:
            cos = _dense(check_cos(cos, "cos_shard", half=False))
        labels_ = np.asarray(labels)
        if labels_.dtype.kind not in "iu":
            raise TypeError(f"labels must have an integer dtype, got {labels_.dtype}")
        inputs = (("cos_shard", cos_shard, True), ("labels", labels, True))
        counts = _counts_out(hard_negatives, cos.shape[0], inputs)
        local.update(p=p, cos=cos, labels=labels_, counts=counts,
                     cosines=_cosines_out(target_cosines, cos.shape[0],
                                          inputs + (("hard_negatives", counts, False),)))
        return p
    p = _attempt(coll, prepare)
    cos = local["cos"]
    rows, c_local = cos.shape
    values, names = _param_vector(p)
    _check_same_everywhere(
        coll, values + [rows, _labels_digest(local["labels"]), cos.dtype.itemsize,
                        hard_negatives is not None],
        names + ["the number of rows", "the labels", "the element size",
                 "whether hard_negatives is given"])
    start, c_total = _shard_layout(coll, c_local, class_start)
    labels_ = _attempt(coll, lambda: check_labels(local["labels"], rows, c_total,
                                                  p.ignore_index))
    counts = local["counts"]
    abi = abi_struct(p)
    args = (ctypes.byref(abi), _ptr(cos), rows, c_local, start, c_total, _ptr(labels_))

    target = np.empty(rows)
    _attempt(coll, lambda: _call("target", cos.dtype, *args, _ptr(target)))
    target = coll.allreduce(target, "sum", "target_cos")
    abi_counted = abi_struct(p, 0, counts)
    args_counted = (ctypes.byref(abi_counted),) + args[1:]
    global_max, global_sum = _statistics_and_combine(
        coll, lambda m, s: _call("statistics", cos.dtype, *args_counted, _ptr(target),
                                 _ptr(m), _ptr(s)), rows, counts)
    loss = np.empty(rows if p.reduction == "none" else 1, dtype=cos.dtype)
    grad = np.empty_like(cos)
    _attempt(coll, lambda: _call("gradient", cos.dtype, *args, _ptr(target), _ptr(global_max),
                                 _ptr(global_sum), None, _ptr(loss), _ptr(grad)))
    if local["cosines"] is not None:   # phase 1's sum: every row's target cosine, exactly
        local["cosines"][:] = target
    return _loss_value(p, loss), grad


def kept_classes(labels_in_shard: np.ndarray, shard_size: int, sample_rate: float, seed: int,
                 step: int, shard_index: int) -> np.ndarray:
    """PartialFC's sample of one shard, as sorted local indices: every class that is a target of
    the batch (`labels_in_shard`, local indices), and when k = floor(sample_rate * shard_size)
    is larger than their count, k minus that count others drawn uniformly without replacement
    by a generator keyed by (seed, step, shard_index)."""
    targets = np.unique(np.asarray(labels_in_shard, dtype=np.int64))
    k = int(np.floor(sample_rate * shard_size))
    if sample_rate >= 1.0:
        return np.arange(shard_size, dtype=np.int64)
    if k <= targets.size:
        return targets
    others = np.setdiff1d(np.arange(shard_size, dtype=np.int64), targets, assume_unique=True)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, step,
                                                                      shard_index])))
    drawn = rng.choice(others, size=k - targets.size, replace=False)
    return np.sort(np.concatenate([targets, drawn]))


def check_sampling(sample_rate, seed, step) -> tuple[float, int, int]:
    """sample_rate in (0, 1]; seed and step non-negative integers."""
    if isinstance(sample_rate, (bool, np.bool_)) or not isinstance(sample_rate,
                                                                   (int, float, np.number)):
        raise TypeError(f"sample_rate must be a real number, got {sample_rate!r}")
    sample_rate = float(sample_rate)
    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"sample_rate = {sample_rate} is invalid: must be in (0, 1]")
    for name, value in (("seed", seed), ("step", step)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {value!r}")
        if value < 0:
            raise ValueError(f"{name} = {value} is invalid: must be >= 0")
    return sample_rate, int(seed), int(step)


def head_forward_backward(x_local, w_shard, labels_local, collectives: Collectives, *,
                          class_start: int | None = None, sample_rate: float = 1.0,
                          seed: int = 0, step: int = 0, block_size: int = 0,
                          hard_negatives=None, target_cosines=None,
                          return_sampled: bool = False, traffic: Traffic | None = None,
                          curricular_update: dict | None = None, **params):
    """The fused head sharded by class, in PartialFC's data-parallel layout: each rank passes
    its own rows (labels as global class ids) and its shard of the class weights. Returns
    (loss over every rank's rows, grad_x_local, grad_w_shard), and the kept classes of this
    shard (global ids) when `return_sampled`.

    `curricular_update`, for hard="curricular" in a stateful caller: a dict whose "t" is the
    state before the step; t is updated from phase 1's target cosines (every rank's rows, the
    same on every rank) before phases 2 and 3 use it, and written back to the dict."""
    from ._api import _cosines_out, _counts_out
    from ._params import check_head_inputs, check_labels
    traffic = traffic if traffic is not None else Traffic()
    coll = _Counted(collectives, traffic)
    local = {}

    def prepare():
        p = check_params(**params)
        local["block"] = check_block_size(block_size)
        local["sampling"] = check_sampling(sample_rate, seed, step)
        x, w = x_local, w_shard
        if isinstance(w, np.ndarray) and w.ndim == 2 and w.shape[0] == 0 and \
                isinstance(x, np.ndarray) and x.ndim == 2 and w.shape[1] == x.shape[1]:
            check_head_inputs(x, np.zeros((1, x.shape[1]), w.dtype))  # a rank without classes
        else:
            check_head_inputs(x, w)
        y = np.asarray(labels_local)
        if y.dtype.kind not in "iu":
            raise TypeError(f"labels must have an integer dtype, got {y.dtype}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"labels must have shape ({x.shape[0]},) to match x_local, "
                             f"got {y.shape}")
        inputs = (("x_local", x_local, True), ("w_shard", w_shard, True),
                  ("labels_local", labels_local, True))
        counts = _counts_out(hard_negatives, x.shape[0], inputs)
        local.update(x=_dense(x), w=_dense(w), y=y.astype(np.int64), counts=counts,
                     cosines=_cosines_out(target_cosines, x.shape[0],
                                          inputs + (("hard_negatives", counts, False),)))
        return p
    p = _attempt(coll, prepare)
    x, w, y_local = local["x"], local["w"], local["y"]
    rate, seed_, step_ = local["sampling"]
    values, names = _param_vector(p)
    _check_same_everywhere(coll, values + [x.shape[1], np.dtype(x.dtype).itemsize, rate,
                                           seed_, step_, hard_negatives is not None],
                           names + ["the embedding dimension", "the element size",
                                    "sample_rate", "seed", "step",
                                    "whether hard_negatives is given"])
    start, c_total = _shard_layout(coll, w.shape[0], class_start)
    # Each rank checks its own labels first, so that an error names the row where it is.
    _attempt(coll, lambda: check_labels(y_local, y_local.size, c_total, p.ignore_index))
    x_parts = coll.allgather(x, "embeddings")
    x_all = np.concatenate(x_parts)
    y_all = np.concatenate(coll.allgather(y_local, "labels"))
    own = sum(part.shape[0] for part in x_parts[:coll.rank])
    shard_start = start
    labels = _attempt(coll, lambda: check_labels(y_all, y_all.size, c_total, p.ignore_index))

    # Class sampling: this shard's kept classes, and the labels in the compacted class space.
    c_local = w.shape[0]
    kept = None
    if rate < 1.0:
        active = labels != p.ignore_index
        mine = active & (labels >= start) & (labels < start + c_local)
        kept = kept_classes(labels[mine] - start, c_local, rate, seed_, step_, coll.rank)
        kept_counts = np.concatenate(coll.allgather(np.array([kept.size], np.int64),
                                                    "kept counts"))
        kept_start = int(kept_counts[:coll.rank].sum())
        mapped = np.full(labels.size, -1, dtype=np.int64)
        mapped[mine] = kept_start + np.searchsorted(kept, labels[mine] - start)
        mapped = coll.allreduce(mapped, "max", "sampled labels")
        # ignore_index may be a class id that a kept class now takes: the ignored rows get -1,
        # which no class is.
        labels = np.where(active, mapped, -1)
        p = dataclasses.replace(p, ignore_index=-1)
        w_used = np.ascontiguousarray(w[kept])
        start, c_total, c_used = kept_start, int(kept_counts.sum()), kept.size
        if c_total == 0:
            # No shard kept a class: every row is ignored (a row's target is always kept), so
            # the loss and every gradient are 0, as without sampling.
            return _all_ignored(p, x, w, hard_negatives, target_cosines, return_sampled, kept,
                                shard_start)
    else:
        w_used, c_used = w, c_local

    counts = None
    if hard_negatives is not None:
        counts = np.zeros(labels.size, dtype=np.int64)
    rows, d = x_all.shape
    abi = abi_struct(p, local["block"])
    args = (ctypes.byref(abi), _ptr(x_all), _ptr(w_used) if c_used else None, rows, d, c_used,
            start, c_total, _ptr(labels))
    target = np.empty(rows)
    _attempt(coll, lambda: _call("head_target", x.dtype, *args, _ptr(target)))
    target = coll.allreduce(target, "sum", "target_cos")
    if curricular_update is not None:
        active = labels != p.ignore_index
        t = float(curricular_update["t"])
        if active.any():
            t = 0.01 * float(target[active].mean()) + 0.99 * t
        curricular_update["t"] = t
        p = dataclasses.replace(p, hard_margin=t)
        _attempt(coll, lambda: check_params(**{**params, "hard_margin": t}))
        abi = abi_struct(p, local["block"])
        args = (ctypes.byref(abi),) + args[1:]
    abi_counted = abi_struct(p, local["block"], counts)
    args_counted = (ctypes.byref(abi_counted),) + args[1:]
    global_max, global_sum = _statistics_and_combine(
        coll, lambda m, s: _call("head_statistics", x.dtype, *args_counted, _ptr(target),
                                 _ptr(m), _ptr(s)), rows, counts)
    loss = np.empty(rows if p.reduction == "none" else 1, dtype=x.dtype)
    grad_x_all = np.empty_like(x_all)
    grad_w_used = np.empty_like(w_used)
    _attempt(coll, lambda: _call("head_gradient", x.dtype, *args, _ptr(target),
                                 _ptr(global_max), _ptr(global_sum), _ptr(loss),
                                 _ptr(grad_x_all), _ptr(grad_w_used) if c_used else None))
    grad_x_all = coll.allreduce(grad_x_all, "sum", "grad_embeddings")
    grad_x = np.ascontiguousarray(grad_x_all[own:own + x.shape[0]])
    if kept is not None:
        grad_w = np.zeros_like(w)
        grad_w[kept] = grad_w_used
    else:
        grad_w = grad_w_used
    if hard_negatives is not None:
        hard_negatives[:] = counts[own:own + x.shape[0]]
    if target_cosines is not None:
        target_cosines[:] = target[own:own + x.shape[0]]
    if p.reduction == "none":
        loss_value = loss[own:own + x.shape[0]].copy()
    else:
        loss_value = _loss_value(p, loss)
    result = (loss_value, grad_x, grad_w)
    if return_sampled:
        kept_local = np.arange(c_local, dtype=np.int64) if kept is None else kept
        result = result + (kept_local + shard_start,)
    return result


def _all_ignored(p: Params, x, w, hard_negatives, target_cosines, return_sampled, kept,
                 shard_start):
    """The head's result when every row of every rank is ignored."""
    loss = np.zeros(x.shape[0], dtype=x.dtype) if p.reduction == "none" else 0.0
    if hard_negatives is not None:
        hard_negatives[:] = 0
    if target_cosines is not None:
        target_cosines[:] = 0
    result = (loss, np.zeros_like(x), np.zeros_like(w))
    if return_sampled:
        result = result + (kept + shard_start,)
    return result
