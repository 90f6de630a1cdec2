"""forward, backward and forward_backward over the compiled library (ctypes).

Each function validates its arguments in Python first (types, shapes, parameters, labels:
cheap checks, O(N)), then hands contiguous arrays to the library, which checks the one thing
that needs a full read (non-finite cosines in rows that are not ignored) during its single pass
over the matrix. A non-zero status becomes an exception carrying amm_last_error().
"""
from __future__ import annotations

import ctypes
from typing import Union

import numpy as np
from numpy.typing import ArrayLike

from . import _library as L
from ._params import (Params, abi_struct, check_block_size, check_cos, check_grad_output,
                      check_head_inputs, check_labels, check_params, is_half,
                      native_byte_order, storage_suffix)

_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}

#: A loss: a float for reduction "mean" and "sum", an (N,) array for "none".
Loss = Union[float, np.ndarray]


_TOO_HARD = getattr(np, "exceptions", np).TooHardError


def _overlap(a, b) -> bool:
    """Whether ndarrays `a` and `b` share memory (True, the safe answer, when NumPy cannot tell
    within a small budget; False when either is not an ndarray)."""
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=100_000))
    except _TOO_HARD:
        return True


def _refuse_overlap(name: str, array, others) -> None:
    """ValueError if `array` (an output called `name`) shares memory with one of `others`,
    (name, array, is_input) triples, so that an input is never written."""
    for other_name, other, is_input in others:
        if _overlap(array, other):
            why = " (inputs are never modified)" if is_input else ""
            raise ValueError(f"{name} must not overlap {other_name}{why}")


def _row_out(name: str, array, dtype, rows: int, others=()) -> np.ndarray | None:
    """`array` checked as the destination of a per-row output called `name` (dtype, (rows,));
    `others`: (name, array, is_input) triples it must not overlap."""
    if array is None:
        return None
    dtype = np.dtype(dtype)
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of {dtype}, "
                        f"got {type(array).__name__}")
    if array.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {array.dtype}")
    if array.shape != (rows,):
        raise ValueError(f"{name} must have shape ({rows},), got {array.shape}")
    _require_writeable_dense(name, "a writeable, C-contiguous array", array)
    _refuse_overlap(name, array, others)
    return array


def _counts_out(hard_negatives, rows: int, others=()) -> np.ndarray | None:
    """`hard_negatives` checked as the destination of the per-row counts of hard negatives."""
    return _row_out("hard_negatives", hard_negatives, np.int64, rows, others)


def _cosines_out(target_cosines, rows: int, others=()) -> np.ndarray | None:
    """`target_cosines` checked as the destination of the per-row target cosines (float64)."""
    return _row_out("target_cosines", target_cosines, np.float64, rows, others)


def _require_writeable_dense(name: str, what: str, a: np.ndarray) -> None:
    """ValueError naming the first of writeable, C-contiguous, aligned that `a` is not."""
    for ok, why in ((a.flags.writeable, "it is read-only"),
                    (a.flags.c_contiguous, f"it is not C-contiguous (strides {a.strides})"),
                    (a.flags.aligned, "it is not aligned to its element size")):
        if not ok:
            raise ValueError(f"{name} must be {what}: {why}")


def _check_status(lib, status: int) -> None:
    if status == L.AMM_OK:
        return
    message = lib.amm_last_error().decode("utf-8", "replace")
    if status == L.AMM_ERR_ALLOC:
        raise MemoryError(message)
    if status == L.AMM_ERR_INTERNAL:
        raise RuntimeError(message)
    raise ValueError(message)


def _prepare(cos, labels, params):
    p = check_params(**params)
    cos = check_cos(cos)
    labels = check_labels(labels, cos.shape[0], cos.shape[1], p.ignore_index)
    # The library reads dense, aligned, row-major rows: copy only what is not already that.
    return p, _dense(cos), labels


def _inputs(**arrays):
    """(name, array, True) for the inputs as the caller passed them (before any copy), which
    no output may overlap."""
    return tuple((name, a, True) for name, a in arrays.items())


def _loss_out(p: Params, cos: np.ndarray) -> np.ndarray:
    """The loss's array: of cos's dtype, float32 for the 16-bit types (computed as float32)."""
    dtype = np.float32 if is_half(cos) else cos.dtype
    return np.empty(cos.shape[0] if p.reduction == "none" else 1, dtype=dtype)


def _loss_value(p: Params, loss: np.ndarray):
    return loss if p.reduction == "none" else float(loss[0])


def forward(cos: np.ndarray, labels: np.ndarray, *, hard_negatives: np.ndarray | None = None,
            target_cosines: np.ndarray | None = None, **params) -> Loss:
    """The loss of `cos` (N, C) for `labels` (N,): a float for mean/sum, an ndarray (N,) typed
    like cos for reduction='none'. See help(amm_softmax) for the parameters.

    `hard_negatives`, if given, an int64 array (N,) that receives each row's number of negatives
    mined as hard (cos[i, j] > f(c_y), j != y; 0 for ignored rows); `target_cosines`, if given,
    a float64 array (N,) that receives each row's target cosine c_{i,y_i} (0 for ignored rows:
    e.g. for CurricularFace's t, or the mean target angle); the same for every function."""
    given = _inputs(cos=cos, labels=labels)
    p, cos, labels = _prepare(cos, labels, params)
    counts = _counts_out(hard_negatives, cos.shape[0], given)
    cosines = _cosines_out(target_cosines, cos.shape[0], given + (("hard_negatives", counts,
                                                                    False),))
    lib = L.load()
    loss = _loss_out(p, cos)
    fn = getattr(lib, f"amm_forward_{storage_suffix(cos)}")
    abi = abi_struct(p, 0, counts, cosines)
    _check_status(lib, fn(ctypes.byref(abi), cos.ctypes.data, cos.shape[0],
                          cos.shape[1], labels.ctypes.data, loss.ctypes.data))
    return _loss_value(p, loss)


def _gradient_out(out, like: np.ndarray, name: str = "cos", out_name: str = "out",
                  others=()) -> np.ndarray:
    """`out` checked as a destination for the gradient of `like` (the input called `name`, as
    passed to the library), or a new array; `others`: (name, array, is_input) triples it must
    not overlap either (the inputs as the caller gave them, before any copy)."""
    if out is None:
        return np.empty(like.shape, dtype=like.dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{out_name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != like.dtype:
        raise TypeError(f"{out_name} must have the dtype of {name} ({like.dtype}), "
                        f"got {out.dtype}")
    if out.shape != like.shape:
        raise ValueError(f"{out_name} must have the shape of {name} {like.shape}, "
                         f"got {out.shape}")
    _require_writeable_dense(out_name, "a writeable, aligned, C-contiguous array", out)
    _refuse_overlap(out_name, out, ((name, like, True),) + tuple(others))
    return out


def backward(cos: np.ndarray, labels: np.ndarray, grad_output=1.0, *,
             out: np.ndarray | None = None, hard_negatives: np.ndarray | None = None,
             target_cosines: np.ndarray | None = None, **params) -> np.ndarray:
    """d loss / d cos times grad_output (a scalar; or (N,) for reduction='none'): an ndarray
    shaped and typed like cos. `out`, if given, is a C-contiguous array of that shape and dtype
    that receives the gradient (and is returned): reusing it between steps saves allocating and
    first-touching N x C values."""
    given = _inputs(cos=cos, labels=labels, grad_output=grad_output)
    p, cos, labels = _prepare(cos, labels, params)
    upstream = check_grad_output(grad_output, cos.shape[0], p.reduction)
    # The 16-bit types take the upstream gradient in float32, as they compute.
    upstream_dtype = np.dtype(np.float32) if is_half(cos) else cos.dtype
    largest = np.finfo(upstream_dtype).max
    if np.abs(upstream).max(initial=0) > largest:
        k = int(np.argmax(np.abs(upstream) > largest))
        raise ValueError(f"grad_output[{k}] = {float(upstream[k])!r} is out of range for "
                         f"{upstream_dtype} (|value| <= {largest})")
    upstream = upstream.astype(upstream_dtype)
    grad = _gradient_out(out, cos, others=given)
    counts = _counts_out(hard_negatives, cos.shape[0], given + (("out", grad, False),))
    cosines = _cosines_out(target_cosines, cos.shape[0],
                           given + (("out", grad, False), ("hard_negatives", counts, False)))
    lib = L.load()
    fn = getattr(lib, f"amm_backward_{storage_suffix(cos)}")
    abi = abi_struct(p, 0, counts, cosines)
    _check_status(lib, fn(ctypes.byref(abi), cos.ctypes.data, cos.shape[0],
                          cos.shape[1], labels.ctypes.data, upstream.ctypes.data,
                          grad.ctypes.data))
    return grad


def forward_backward(cos: np.ndarray, labels: np.ndarray, *, out: np.ndarray | None = None,
                     hard_negatives: np.ndarray | None = None,
                     target_cosines: np.ndarray | None = None,
                     **params) -> tuple[Loss, np.ndarray]:
    """(loss, grad_cos) in one pass over the data, as forward and backward with
    grad_output = 1. `out` as for backward."""
    given = _inputs(cos=cos, labels=labels)
    p, cos, labels = _prepare(cos, labels, params)
    grad = _gradient_out(out, cos, others=given)
    counts = _counts_out(hard_negatives, cos.shape[0], given + (("out", grad, False),))
    cosines = _cosines_out(target_cosines, cos.shape[0],
                           given + (("out", grad, False), ("hard_negatives", counts, False)))
    lib = L.load()
    loss = _loss_out(p, cos)
    fn = getattr(lib, f"amm_forward_backward_{storage_suffix(cos)}")
    abi = abi_struct(p, 0, counts, cosines)
    _check_status(lib, fn(ctypes.byref(abi), cos.ctypes.data, cos.shape[0],
                          cos.shape[1], labels.ctypes.data, loss.ctypes.data, grad.ctypes.data))
    return _loss_value(p, loss), grad


def _dense(a: np.ndarray) -> np.ndarray:
    # subok: a RawBFloat16 view stays one.
    return a if a.flags.c_contiguous and a.flags.aligned else np.array(a, order="C", subok=True)


def head_forward_backward(embeddings: np.ndarray, weights: np.ndarray, labels: np.ndarray, *,
                          block_size: int = 0,
                          out: tuple[np.ndarray, np.ndarray] | None = None,
                          hard_negatives: np.ndarray | None = None,
                          target_cosines: np.ndarray | None = None,
                          sample_rate: float = 1.0, seed: int = 0, step: int = 0,
                          return_sampled: bool = False,
                          **params) -> tuple:
    """The fused head: (loss, grad_embeddings, grad_weights) for the loss on
    cos = normalize(embeddings) normalize(weights)^T, without the (N, C) matrix.

    embeddings (N, D) and weights (C, D, one row per class) are float32 or float64 of one dtype;
    labels (N,) integers. Rows are normalised as torch.nn.functional.normalize does. The classes
    go through in blocks of `block_size` (0: the library's rule, 8 MiB a block; see the C
    header for the memory bound). Gradients are
    shaped and typed like the inputs; `out=(grad_embeddings, grad_weights)` receives them in
    given arrays (C-contiguous, of those shapes and dtype), as `out` does for backward.

    Class sampling (PartialFC): with `sample_rate` < 1 the step keeps every class that is the
    target of a row that is not ignored and, when k = floor(sample_rate * C) is more than
    their number, k classes in all, the others drawn uniformly without replacement from
    (seed, step) (integers >= 0; the draw of amm_softmax.mpi on one rank). The loss,
    the mining and the gradients are those of the head on the kept classes alone; the other
    classes' rows of grad_weights are 0. `return_sampled=True` appends the kept classes (sorted
    int64 class ids; every class when sample_rate is 1) to the result. sample_rate = 1 (the
    default) is the exact loss, computed as without these arguments."""
    from ._shard import check_sampling
    sample_rate, seed, step = check_sampling(sample_rate, seed, step)
    given = _inputs(embeddings=embeddings, weights=weights, labels=labels)
    # Floats in non-native byte order are read by value (a native copy), as for cos.
    embeddings, weights = native_byte_order(embeddings), native_byte_order(weights)
    if sample_rate < 1.0:
        return _sampled_head(embeddings, weights, labels, block_size, out, hard_negatives,
                             target_cosines, sample_rate, seed, step, return_sampled, params,
                             given)
    if return_sampled:   # every class: the plain head (the sharded one gives the same bits)
        result = head_forward_backward(embeddings, weights, labels, block_size=block_size,
                                       out=out, hard_negatives=hard_negatives,
                                       target_cosines=target_cosines, **params)
        return result + (np.arange(result[2].shape[0], dtype=np.int64),)
    p = check_params(**params)
    block_size = check_block_size(block_size)
    embeddings, weights = check_head_inputs(embeddings, weights)
    n, d = embeddings.shape
    c = weights.shape[0]
    labels = check_labels(labels, n, c, p.ignore_index, "embeddings")
    embeddings, weights = _dense(embeddings), _dense(weights)
    lib = L.load()
    loss = _loss_out(p, embeddings)
    grad_embeddings, grad_weights = _head_out(out, embeddings, weights, given)
    outputs = given + (("out[0]", grad_embeddings, False), ("out[1]", grad_weights, False))
    counts = _counts_out(hard_negatives, n, outputs)
    cosines = _cosines_out(target_cosines, n, outputs + (("hard_negatives", counts, False),))
    fn = getattr(lib, f"amm_head_forward_backward_{_SUFFIX[embeddings.dtype]}")
    abi = abi_struct(p, block_size, counts, cosines)
    _check_status(lib, fn(ctypes.byref(abi), embeddings.ctypes.data,
                          weights.ctypes.data, n, d, c, labels.ctypes.data, loss.ctypes.data,
                          grad_embeddings.ctypes.data, grad_weights.ctypes.data))
    return _loss_value(p, loss), grad_embeddings, grad_weights


def _head_out(out, embeddings: np.ndarray, weights: np.ndarray, given=()):
    """The destinations of the head's gradients: `out` checked, or new arrays. `given`: the
    inputs as the caller passed them, which neither may overlap."""
    if out is None:
        return np.empty_like(embeddings), np.empty_like(weights)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError("out must be a tuple (grad_embeddings, grad_weights)")
    grad_embeddings = _gradient_out(out[0], embeddings, "embeddings", "out[0]", given)
    grad_weights = _gradient_out(out[1], weights, "weights", "out[1]", given)
    if _overlap(out[0], weights) or _overlap(out[1], embeddings) or _overlap(out[0], out[1]):
        raise ValueError("out arrays must not overlap each other or the inputs")
    return grad_embeddings, grad_weights


def _sampled_head(embeddings, weights, labels, block_size, out, hard_negatives, target_cosines,
                  sample_rate, seed, step, return_sampled, params, given=()):
    """The head with class sampling: the sharded protocol on one process (one shard)."""
    from ._shard import SingleProcess
    from ._shard import head_forward_backward as sharded
    # The checks of the plain head, in its order, so that bad input fails the same way.
    p = check_params(**params)
    check_block_size(block_size)
    embeddings, weights = check_head_inputs(embeddings, weights)
    check_labels(labels, embeddings.shape[0], weights.shape[0], p.ignore_index, "embeddings")
    destinations = None if out is None else _head_out(out, embeddings, weights, given)
    outputs = given + (() if destinations is None else (("out[0]", destinations[0], False),
                                                        ("out[1]", destinations[1], False)))
    _counts_out(hard_negatives, embeddings.shape[0], outputs)
    _cosines_out(target_cosines, embeddings.shape[0],
                 outputs + (("hard_negatives", hard_negatives, False),))
    loss, grad_embeddings, grad_weights, kept = sharded(
        embeddings, weights, labels, SingleProcess(), sample_rate=sample_rate, seed=seed,
        step=step, block_size=block_size, hard_negatives=hard_negatives,
        target_cosines=target_cosines, return_sampled=True, **params)
    if destinations is not None:
        destinations[0][...] = grad_embeddings
        destinations[1][...] = grad_weights
        grad_embeddings, grad_weights = destinations
    result = (loss, grad_embeddings, grad_weights)
    return result + (kept,) if return_sampled else result


def library_version() -> str:
    """The version string of the loaded library (amm_version())."""
    return L.load().amm_version().decode()


def kernel_build_detail() -> str:
    """How kernel_build() was chosen: one line per build considered, fastest first, saying
    why each faster build was passed over (not supported by this CPU, its library not found or
    refused by the kernel-table handshake, above the AMM_SOFTMAX_KERNELS request)."""
    return L.load().amm_kernel_build_detail().decode()


def kernel_build() -> str:
    """The build of the row kernels in use: "avx512", "avx2" or "portable" (amm_kernel_build()).
    Set AMM_SOFTMAX_KERNELS before the first call to cap it. "avx2" and "avx512" give the
    same bits; "portable" (no fused multiply-add) agrees with them to within rounding."""
    return L.load().amm_kernel_build().decode()


def curricular_t(t: float, target_cosines: ArrayLike, labels: ArrayLike | None = None,
                 ignore_index: int = -100, alpha: float = 0.01) -> float:
    """CurricularFace's moving average before a step: alpha * mean(c_y) + (1 - alpha) * t over
    the rows that are not ignored (t unchanged when there are none). `target_cosines`: the
    step's c_y, e.g. from the `target_cosines=` output of a call on the same inputs, or computed
    by the caller; pass the result as hard_margin with hard="curricular". Give `labels` when
    some rows are ignored (their target_cosines entries are 0): without them every entry is
    averaged."""
    c = np.asarray(target_cosines, dtype=np.float64).reshape(-1)
    if labels is not None:
        c = c[np.asarray(labels).reshape(-1) != ignore_index]
    if not np.isfinite(t) or not np.isfinite(c).all():
        raise ValueError("curricular_t: t and the target cosines must be finite")
    return float(t) if c.size == 0 else alpha * float(c.mean()) + (1.0 - alpha) * float(t)
