"""The AMM-Softmax loss family in plain NumPy: the oracle every test compares the library with.

Written for clarity from docs/FORMULATION.md, line by line; its arithmetic is independent of the
compiled library. Its argument checks are the package's (_params), which ask the library whether
the parameters are in their domains: those domains are defined once, in the library. It computes in float64 whatever the input dtype and returns results in the
input's dtype, so that the library's f32 and f64 paths are both measured against the same,
more precise, values.

Functions and signatures are those of the package: forward, backward, forward_backward,
head_forward_backward; and CurricularFace's update of t, curricular_t.
"""
from __future__ import annotations

from typing import Any, Union

import numpy as np

from ._params import (RawBFloat16, check_block_size, check_cos, check_grad_output, check_head_inputs,
                      check_labels, check_params)

SIN_FLOOR = 1e-7


def _angles(c):
    """c~ = clamp(c, -1, 1), theta = acos(c~), sin_theta = max(sqrt(1 - c~^2), 1e-7)."""
    cc = np.clip(c, -1.0, 1.0)
    theta = np.arccos(cc)
    sin_theta = np.maximum(np.sqrt(1.0 - cc * cc), SIN_FLOOR)
    return cc, theta, sin_theta


def _target_logit(cy, p):
    """f(c_y) and df/dc_y for a vector of target cosines (df = 1 for the straight-through
    margin gradient)."""
    f, df = _exact_target_logit(cy, p)
    return f, (df if p.margin_gradient == "exact" else np.ones_like(df))


def _exact_target_logit(cy, p):
    m = p.margin
    if p.target == "cos":
        return cy - m, np.ones_like(cy)
    cc, theta, sin_theta = _angles(cy)
    inside = cy > np.cos(np.pi - m)  # theta_y + m stays below pi
    f = np.where(inside, np.cos(theta + m), cy - m * np.sin(m))
    df = np.where(inside, np.cos(m) + np.sin(m) * cc / sin_theta, 1.0)
    return f, df


def _hard_negative_logit(c, p):
    """g(c) and dg/dc for negatives that were mined as hard (dg = 1 for the straight-through
    margin gradient)."""
    g, dg = _exact_hard_negative_logit(c, p)
    return g, (dg if p.margin_gradient == "exact" else np.ones_like(dg))


def _exact_hard_negative_logit(c, p):
    t = p.hard_margin
    if p.hard == "amm":
        cc, theta, sin_theta = _angles(c)
        g = np.cos(np.maximum(theta - t, 0.0))
        dg = np.where(theta > t, np.cos(t) - np.sin(t) * cc / sin_theta, 0.0)
        return g, dg
    if p.hard == "mv-fixed":
        return t * c + t - 1.0, np.full_like(c, t)
    if p.hard == "mv-adaptive":
        return (t + 1.0) * c + t, np.full_like(c, t + 1.0)
    if p.hard == "curricular":
        return c * (t + c), t + 2.0 * c
    return c, np.ones_like(c)  # "none"


def _hard_negative_counts(cos, labels, p):
    """Each row's number of negatives mined as hard: cos[i, j] > f(c_y), j != y."""
    n = cos.shape[0]
    f, _ = _target_logit(cos[np.arange(n), labels], p)
    hard = cos > f[:, None]
    hard[np.arange(n), labels] = False
    return hard.sum(axis=1)


def _write_counts(hard_negatives, cos, labels, kept, p):
    """Fills the optional `hard_negatives` output (0 for ignored rows), as the library does."""
    if hard_negatives is None:
        return
    if not isinstance(hard_negatives, np.ndarray) or hard_negatives.dtype != np.int64:
        raise TypeError("hard_negatives must be a numpy.ndarray of int64")
    if hard_negatives.shape != (kept.shape[0],):
        raise ValueError(f"hard_negatives must have shape ({kept.shape[0]},), "
                         f"got {hard_negatives.shape}")
    hard_negatives[...] = 0
    hard_negatives[kept] = _hard_negative_counts(cos, labels, p)


def _write_target_cosines(target_cosines, cos, labels, kept):
    """Fills the optional `target_cosines` output (0 for ignored rows), as the library does."""
    if target_cosines is None:
        return
    if not isinstance(target_cosines, np.ndarray) or target_cosines.dtype != np.float64:
        raise TypeError("target_cosines must be a numpy.ndarray of float64")
    if target_cosines.shape != (kept.shape[0],):
        raise ValueError(f"target_cosines must have shape ({kept.shape[0]},), "
                         f"got {target_cosines.shape}")
    target_cosines[...] = 0.0
    target_cosines[kept] = cos[np.arange(cos.shape[0]), labels]


def _logits(cos, labels, p):
    """z = s * (f at the target, g elsewhere) and dz/dcos / s, for the rows that are kept."""
    n, c = cos.shape
    rows = np.arange(n)
    cy = cos[rows, labels]
    f, df = _target_logit(cy, p)

    is_target = np.zeros((n, c), dtype=bool)
    is_target[rows, labels] = True
    hard = (cos > f[:, None]) & ~is_target           # mis-classified vectors
    g_hard, dg_hard = _hard_negative_logit(cos, p)
    g = np.where(hard, g_hard, cos)
    dg = np.where(hard, dg_hard, 1.0)

    logit = np.where(is_target, f[:, None], g)
    dlogit = np.where(is_target, df[:, None], dg)
    return p.scale * logit, dlogit, is_target


def _prepare(cos, labels, params):
    p = check_params(**params)
    cos = check_cos(cos)
    if isinstance(cos, RawBFloat16):   # bfloat16 bit patterns: their float32 values
        cos = (cos.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    labels = check_labels(labels, cos.shape[0], cos.shape[1], p.ignore_index)
    kept = labels != p.ignore_index
    x = cos.astype(np.float64)[kept]
    bad = ~np.isfinite(x)
    if bad.any():
        r, j = np.argwhere(bad)[0]
        row = int(np.flatnonzero(kept)[r])
        raise ValueError(f"cos[{row}, {j}] = {cos[row, j]} is not finite "
                         f"(row {row} is not ignored)")
    return p, cos, x, labels[kept], kept


def _row_losses(z, is_target):
    zmax = z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z - zmax).sum(axis=1)) + zmax[:, 0]
    return lse - z[is_target]


def _reduce(per_row_kept, kept, p):
    if p.reduction == "none":
        out = np.zeros(kept.shape[0])
        out[kept] = per_row_kept
        return out
    total = per_row_kept.sum()
    if p.reduction == "sum":
        return total
    return total / per_row_kept.size if per_row_kept.size else 0.0


def forward(cos: np.ndarray, labels: np.ndarray, *, hard_negatives: np.ndarray | None = None,
            target_cosines: np.ndarray | None = None,
            **params: Any) -> Union[float, np.ndarray]:
    """The loss: a float for mean/sum, an ndarray (N,) typed like cos for none."""
    p, cos, x, y, kept = _prepare(cos, labels, params)
    _write_counts(hard_negatives, x, y, kept, p)
    _write_target_cosines(target_cosines, x, y, kept)
    z, _, is_target = _logits(x, y, p)
    loss = _reduce(_row_losses(z, is_target), kept, p)
    # The 16-bit types return their loss in float32, as the library computes it.
    loss_dtype = np.float32 if cos.dtype.itemsize == 2 else cos.dtype
    return loss.astype(loss_dtype) if p.reduction == "none" else float(loss)


def backward(cos: np.ndarray, labels: np.ndarray, grad_output: Any = 1.0, *,
             out: np.ndarray | None = None, hard_negatives: np.ndarray | None = None,
             target_cosines: np.ndarray | None = None,
             **params: Any) -> np.ndarray:
    """d loss / d cos times grad_output, an ndarray shaped and typed like cos (written into
    `out` as well when given, as the library does)."""
    p, cos, x, y, kept = _prepare(cos, labels, params)
    upstream = check_grad_output(grad_output, cos.shape[0], p.reduction)
    _write_counts(hard_negatives, x, y, kept, p)
    _write_target_cosines(target_cosines, x, y, kept)
    z, dlogit, is_target = _logits(x, y, p)
    prob = np.exp(z - z.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    dz = prob - is_target                          # d loss_i / d z_ij
    if p.reduction == "none":
        weight = upstream[kept][:, None]
    elif p.reduction == "sum":
        weight = upstream[0]
    else:
        weight = upstream[0] / max(int(kept.sum()), 1)
    grad = np.zeros(cos.shape)
    grad[kept] = weight * p.scale * dz * dlogit
    if out is None:
        return grad.astype(cos.dtype)
    out[...] = grad
    return out


def forward_backward(cos: np.ndarray, labels: np.ndarray, *, out: np.ndarray | None = None,
                     hard_negatives: np.ndarray | None = None,
                     target_cosines: np.ndarray | None = None,
                     **params: Any) -> tuple[Union[float, np.ndarray], np.ndarray]:
    """(loss, grad_cos), as forward and backward with grad_output = 1."""
    return (forward(cos, labels, hard_negatives=hard_negatives, target_cosines=target_cosines,
                    **params),
            backward(cos, labels, 1.0, out=out, **params))


NORM_FLOOR = 1e-12


def _normalize(v):
    """v^ = v / max(||v||, 1e-12), row by row (torch.nn.functional.normalize), and the norms."""
    norms = np.linalg.norm(v, axis=1)
    return v / np.maximum(norms, NORM_FLOOR)[:, None], norms


def _normalize_backward(v_hat, norms, grad_v_hat):
    """dv = (dv^ - v^ <v^, dv^>) / ||v|| where ||v|| >= 1e-12, else dv^ / 1e-12."""
    inner = np.sum(v_hat * grad_v_hat, axis=1, keepdims=True)
    projected = (grad_v_hat - v_hat * inner) / np.maximum(norms, NORM_FLOOR)[:, None]
    return np.where((norms >= NORM_FLOOR)[:, None], projected, grad_v_hat / NORM_FLOOR)


def head_forward_backward(embeddings: np.ndarray, weights: np.ndarray, labels: np.ndarray, *,
                          block_size: int = 0,
                          out: tuple[np.ndarray, np.ndarray] | None = None,
                          hard_negatives: np.ndarray | None = None,
                          target_cosines: np.ndarray | None = None,
                          **params: Any) -> tuple[Union[float, np.ndarray], np.ndarray, np.ndarray]:
    """(loss, grad_embeddings, grad_weights) for the loss on
    cos = normalize(embeddings) normalize(weights)^T: normalise, multiply, the reference loss
    and its backward, then back through the products and the normalisation. `block_size` is
    accepted for the library's signature and has no effect here."""
    p = check_params(**params)
    check_block_size(block_size)
    embeddings, weights = check_head_inputs(embeddings, weights)
    n, c = embeddings.shape[0], weights.shape[0]
    labels = check_labels(labels, n, c, p.ignore_index)
    kept = labels != p.ignore_index
    for name, a, rows in (("embeddings", embeddings, kept), ("weights", weights, None)):
        bad = ~np.isfinite(a) if rows is None else ~np.isfinite(a) & rows[:, None]
        if bad.any():
            i, k = np.argwhere(bad)[0]
            raise ValueError(f"{name}[{i}, {k}] = {a[i, k]} is not finite")

    x = np.where(kept[:, None], embeddings.astype(np.float64), 0.0)  # ignored rows: no part
    x_hat, x_norms = _normalize(x)
    w_hat, w_norms = _normalize(weights.astype(np.float64))
    cos = x_hat @ w_hat.T
    loss = forward(cos, labels, hard_negatives=hard_negatives, target_cosines=target_cosines,
                   **params)
    grad_cos = backward(cos, labels, 1.0, **params)
    grad_x = _normalize_backward(x_hat, x_norms, grad_cos @ w_hat)
    grad_w = _normalize_backward(w_hat, w_norms, grad_cos.T @ x_hat)
    grad_x[~kept] = 0.0
    dtype = embeddings.dtype
    if p.reduction == "none":
        loss = loss.astype(dtype)
    if out is not None:
        out[0][...], out[1][...] = grad_x, grad_w
        return loss, out[0], out[1]
    return loss, grad_x.astype(dtype), grad_w.astype(dtype)


def curricular_t(t: float, target_cosines: Any, labels: Any = None, ignore_index: int = -100,
                 alpha: float = 0.01) -> float:
    """CurricularFace's moving average, t <- alpha * mean(c_y) + (1 - alpha) * t, over the rows
    that are not ignored (t unchanged when there are none)."""
    c = np.asarray(target_cosines, dtype=np.float64)
    if labels is not None:
        c = c[np.asarray(labels) != ignore_index]
    if not np.isfinite(t) or not np.isfinite(c).all():
        raise ValueError("curricular_t: t and the target cosines must be finite")
    return float(t) if c.size == 0 else alpha * float(c.mean()) + (1.0 - alpha) * float(t)
