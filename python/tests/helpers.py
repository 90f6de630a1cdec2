"""Helpers shared by the amm_softmax tests: problem generators, tolerance checks against the
reference, and a guard that inputs are never modified.

Tolerances. They were set from the errors measured on this suite (printed at the end of every
run, see `measured_summary()`), with roughly 10x headroom: the largest "fraction of tolerance
used" is about 0.1 for float32 losses, float32 gradients and float64 gradients (0.02 for float64
losses, whose rtol 1e-10 is a floor rather than a measurement).

  B = logit_bound(params) is the largest |f| or |g| the parameters allow; a logit z = s g carries
  a rounding error of about eps * s * B.

  float64 library vs reference (both in double):
      loss  |err| <= 1e-10 |want| + 5e-15 (s B + log C)
            measured: |err| / |want| <= 1.3e-15, |err| / (s B + log C) <= 1.4e-15
      grad  |err| <= 1e-10 |want| + 4e-15 s |u_i| D_ij
            measured: |err| / |want| <= 1.5e-12 (targets with c_y near 1, where the reference's
            sqrt(1 - c^2) loses digits); the absolute term covers p_y - 1 in well-classified rows,
            which the reference computes with cancellation (relative errors up to 1e-6 there,
            the library is the accurate one)
  float32 library vs the float64 reference on the same float32 values:
      loss  |err| <= 1e-6 |want| + 1e-6 (s B + log C)
            measured: |err| / |want| <= 1.3e-7, |err| / (s B + log C) <= 1.5e-7
      grad  |err| <= 1e-6 max(s B, 4) |want| + 1e-6 s |u_i| D_ij
            measured: |err| / |want| / max(s B, 4) <= 1.9e-7 (the element logits are rounded to
            float32, so the relative error of exp(z_j - max z) grows with s B)

  u_i is the upstream factor of row i (grad_output, divided by the count for mean) and D_ij a
  bound on |df/dc| or |dg/dc| at the entry (derivative_bound).
"""
from __future__ import annotations

import contextlib
import copy
import math
import zlib

import numpy as np

import amm_softmax
from amm_softmax import reference

LIB = amm_softmax
REF = reference

TARGETS = ("arc", "cos")
HARDS = ("amm", "mv-fixed", "mv-adaptive", "none", "curricular")
REDUCTIONS = ("mean", "sum", "none")
DTYPES = (np.float32, np.float64)

# --- tolerances (see the module docstring) -----------------------------------------------------
F64_LOSS_RTOL = 1e-10
F64_LOSS_ATOL = 5e-15       # times s B + log C
F64_GRAD_RTOL = 1e-10
F64_GRAD_ATOL = 4e-15       # times s |u_i| D_ij
F32_LOSS_RTOL = 1e-6
F32_LOSS_ATOL = 1e-6        # times s B + log C
F32_GRAD_RTOL_PER_LOGIT = 1e-6   # times max(s B, 4)
F32_GRAD_ATOL = 1e-6        # times s |u_i| D_ij

# The largest errors seen in this run, normalised as in the docstring: {key: (value, where)}.
MEASURED: dict = {}


def _record(key, value, where):
    if key not in MEASURED or value > MEASURED[key][0]:
        MEASURED[key] = (float(value), where)


def measured_summary() -> list[str]:
    return [f"{k:<40s} {v:.3e}   ({w})" for k, (v, w) in sorted(MEASURED.items())]


def rng_for(*parts) -> np.random.Generator:
    """A generator with a fixed seed derived from the test's identity (stable across runs)."""
    return np.random.default_rng(zlib.crc32(repr(parts).encode()))


# --- parameters ------------------------------------------------------------------------------
DEFAULTS = dict(scale=64.0, margin=0.5, hard_margin=0.2, target="arc", hard="amm",
                reduction="mean", ignore_index=-100)


def full_params(**kw) -> dict:
    p = dict(DEFAULTS)
    p.update(kw)
    return p


def logit_bound(params: dict) -> float:
    """The largest |f| or |g| the parameters allow (cosines in [-1, 1])."""
    p = full_params(**params)
    m, t = abs(p["margin"]), p["hard_margin"]
    bound = 1.0 + m
    if p["hard"] in ("mv-fixed", "mv-adaptive"):
        bound = max(bound, 2.0 * t + 1.0)
    if p["hard"] == "curricular":
        bound = max(bound, abs(t) + 1.0)
    return bound


def target_threshold(cy: np.ndarray, params: dict) -> np.ndarray:
    """f(c_y) from docs/FORMULATION.md, written independently of the reference (float64)."""
    p = full_params(**params)
    cy = np.asarray(cy, dtype=np.float64)
    m = p["margin"]
    if p["target"] == "cos":
        return cy - m
    cc = np.clip(cy, -1.0, 1.0)
    inside = cy > math.cos(math.pi - m)
    return np.where(inside, np.cos(np.arccos(cc) + m), cy - m * math.sin(m))


# --- problems --------------------------------------------------------------------------------
def random_problem(rng: np.random.Generator, n: int, c: int, dtype=np.float64,
                   params: dict | None = None, ignore_fraction: float = 0.0):
    """A random (cos, labels) with a mix of easy and hard negatives, targets in both arc branches,
    negatives close to +1 (theta_j <= t for amm) and values at +-1.

    No negative lies within 1e-5 of its row's mining threshold f(c_y): such near-ties are decided
    by rounding (the reference and the library compute f with different formulas)."""
    params = params or {}
    cos = rng.uniform(-0.35, 0.35, (n, c))
    pick = rng.random((n, c))
    wide = pick < 0.05
    cos[wide] = rng.uniform(-1.0, 1.0, wide.sum())
    near_one = pick > 0.995
    cos[near_one] = rng.uniform(0.95, 1.0, near_one.sum())
    labels = rng.integers(0, c, n)
    rows = np.arange(n)
    kind = rng.integers(0, 4, n)
    cy = np.where(kind == 0, rng.uniform(-1.0, 1.0, n),
                  np.where(kind == 1, rng.uniform(0.2, 0.95, n),
                           np.where(kind == 2, rng.uniform(0.97, 1.0, n),
                                    rng.uniform(-0.3, 0.5, n))))
    cos[rows, labels] = cy
    cos = cos.astype(dtype)
    if n and c > 1:
        cos = _move_off_threshold(cos, labels, params)
    if ignore_fraction:
        labels[rng.random(n) < ignore_fraction] = full_params(**params)["ignore_index"]
    return cos, labels


def _move_off_threshold(cos, labels, params, gap=1e-5):
    rows = np.arange(cos.shape[0])
    f = target_threshold(cos[rows, labels], params)[:, None]
    near = np.abs(cos.astype(np.float64) - f) < gap
    near[rows, labels] = False
    if near.any():
        moved = np.where(cos.astype(np.float64) >= f, f + 2 * gap, f - 2 * gap)
        cos = cos.copy()
        cos[near] = moved[near].astype(cos.dtype)
    return cos


# --- inputs are never modified ---------------------------------------------------------------
@contextlib.contextmanager
def unchanged(*objects):
    """Asserts on exit (also when an exception leaves the block) that every ndarray or list given
    still holds exactly the same bytes (NaN compares equal to itself), dtype, shape and strides."""
    saved = []
    for obj in objects:
        if isinstance(obj, np.ndarray):
            saved.append((obj, obj.copy(order="K"), obj.strides, obj.dtype, obj.shape))
        elif isinstance(obj, (list, tuple)):
            saved.append((obj, copy.deepcopy(obj), None, None, None))
    try:
        yield
    finally:
        for obj, before, strides, dtype, shape in saved:
            if isinstance(obj, np.ndarray):
                assert obj.dtype == dtype and obj.shape == shape and obj.strides == strides
                assert obj.tobytes() == before.tobytes(), "an input array was modified"
            else:
                assert repr(obj) == repr(before), "an input list was modified"


def call(module, name, cos, labels, *args, **params):
    """module.name(cos, labels, *args, **params), checking that no input is modified."""
    with unchanged(cos, labels, *args):
        return getattr(module, name)(cos, labels, *args, **params)


def reference_on(cos, labels, name, *args, **params):
    """The reference computed on the float64 values of `cos` (the oracle for both dtypes)."""
    return call(REF, name, np.asarray(cos, dtype=np.float64), labels, *args, **params)


# --- comparisons -----------------------------------------------------------------------------
def grad_unit(params):
    """s * B, but at least 4: below that, float32 rounding of exp and of the derivatives (a few
    eps) dominates the rounding of the logits."""
    return max(full_params(**params)["scale"] * logit_bound(params), 4.0)


def _derivative_factor_bound(c, angle_margin):
    """1 + sin(margin) |c~| / max(sqrt(1 - c~^2), 1e-7): bounds |cos m + sin m c~ / sin(theta)|
    and |cos t - sin t c~ / sin(theta)| without deciding a branch."""
    cc = np.clip(c, -1.0, 1.0)
    return 1.0 + abs(math.sin(angle_margin)) * np.abs(cc) / np.maximum(np.sqrt(1.0 - cc * cc), 1e-7)


def derivative_bound(cos, labels, params) -> np.ndarray:
    """D_ij >= |dlogit_ij / dcos_ij| (df/dc at the target, dg/dc elsewhere), independent of the
    mining; rows that are ignored get 0."""
    p = full_params(**params)
    x = np.asarray(cos, dtype=np.float64)
    x = np.where(np.isfinite(x), x, 0.0)
    t = p["hard_margin"]
    if p["hard"] == "amm":
        d = np.maximum(_derivative_factor_bound(x, t), 1.0)
    elif p["hard"] in ("mv-fixed", "mv-adaptive"):
        d = np.full(x.shape, max(1.0, t + 1.0))
    elif p["hard"] == "curricular":
        d = np.maximum(abs(t) + 2.0 * np.abs(x), 1.0)
    else:
        d = np.ones(x.shape)
    if p.get("margin_gradient", "exact") == "straight-through":
        d = np.ones(x.shape)
    labels = np.asarray(labels, dtype=np.int64)
    kept = np.flatnonzero(labels != p["ignore_index"])
    cy = x[kept, labels[kept]]
    if p["target"] == "arc" and p.get("margin_gradient", "exact") == "exact":
        d[kept, labels[kept]] = _derivative_factor_bound(cy, p["margin"])
    else:
        d[kept, labels[kept]] = 1.0
    d[labels == p["ignore_index"]] = 0.0
    return d


def row_upstream(labels, params, grad_output) -> np.ndarray:
    """|u_i|: the factor the gradient of row i is multiplied by (grad_output, / count for mean)."""
    p = full_params(**params)
    labels = np.asarray(labels, dtype=np.int64)
    g = np.abs(np.asarray(grad_output, dtype=np.float64))
    if p["reduction"] == "none":
        return np.broadcast_to(g, labels.shape).astype(np.float64)
    u = float(g.reshape(-1)[0])
    if p["reduction"] == "mean":
        u /= max(int((labels != p["ignore_index"]).sum()), 1)
    return np.full(labels.shape, u)


def assert_loss_close(got, want, dtype, params, classes, where=""):
    """Compares a loss (float or (N,) array) with the reference's, with the tolerance above."""
    p = full_params(**params)
    if p["reduction"] == "none":
        assert isinstance(got, np.ndarray) and got.dtype == np.dtype(dtype), type(got)
        assert got.shape == np.shape(want)
    else:
        assert type(got) is float, f"loss for {p['reduction']!r} must be a Python float"
    got64 = np.asarray(got, dtype=np.float64)
    want64 = np.asarray(want, dtype=np.float64)
    assert np.all(np.isfinite(got64)), f"non-finite loss {got} {where}"
    if np.dtype(dtype) == np.float64:
        rtol, atol = F64_LOSS_RTOL, F64_LOSS_ATOL
    else:
        rtol, atol = F32_LOSS_RTOL, F32_LOSS_ATOL
    unit = p["scale"] * logit_bound(p) + math.log(classes)
    err = np.abs(got64 - want64)
    name = np.dtype(dtype).name
    tol = rtol * np.abs(want64) + atol * unit
    if err.size:
        _record(f"{name} loss: fraction of tolerance used", (err / tol).max(), where)
        if p["reduction"] != "sum":
            _record(f"{name} loss |err| / (s*B + log C) (mean, none)", err.max() / unit, where)
        big = np.abs(want64) >= unit
        if big.any():
            _record(f"{name} loss |err| / |want| (|want| >= s*B + log C)",
                    (err[big] / np.abs(want64[big])).max(), where)
    bad = err > tol
    assert not bad.any(), (
        f"loss mismatch {where}: {int(bad.sum())} of {err.size}; worst got "
        f"{got64.flat[np.argmax(err - tol)]!r} want {want64.flat[np.argmax(err - tol)]!r}")


def assert_grad_close(got, want, cos, labels, params, grad_output=1.0, where=""):
    """Compares a gradient with the reference's, with the tolerance above."""
    dtype = np.asarray(cos).dtype
    assert isinstance(got, np.ndarray)
    assert got.dtype == dtype and got.shape == np.shape(want)
    assert got.flags.c_contiguous
    got64 = got.astype(np.float64)
    want64 = np.asarray(want, dtype=np.float64)
    assert np.all(np.isfinite(got64)), f"non-finite gradient {where}"
    if not want64.size:
        return
    name = dtype.name
    s = full_params(**params)["scale"]
    scale_ij = s * row_upstream(labels, params, grad_output)[:, None] * \
        derivative_bound(cos, labels, params)
    if dtype == np.float64:
        rtol, atol = F64_GRAD_RTOL, F64_GRAD_ATOL
    else:
        rtol, atol = F32_GRAD_RTOL_PER_LOGIT * grad_unit(params), F32_GRAD_ATOL
    err = np.abs(got64 - want64)
    tol = rtol * np.abs(want64) + atol * scale_ij
    nonzero = scale_ij > 0
    if nonzero.any():
        _record(f"{name} grad: fraction of tolerance used",
                (err[nonzero] / tol[nonzero]).max(), where)
        _record(f"{name} grad |err| / (s |u_i| D_ij)",
                (err[nonzero] / scale_ij[nonzero]).max(), where)
        big = (np.abs(want64) >= 1e-3 * scale_ij) & nonzero & (want64 != 0)
        if big.any():
            _record(f"{name} grad |err| / |want| (|want| >= 1e-3 s |u_i| D_ij)",
                    (err[big] / np.abs(want64[big])).max(), where)
            if dtype == np.float32:
                _record(f"{name} grad |err| / |want| / max(s*B, 4) (same entries)",
                        (err[big] / np.abs(want64[big])).max() / grad_unit(params), where)
    bad = err > tol
    if bad.any():
        i, j = np.unravel_index(np.argmax(err - tol), err.shape)
        raise AssertionError(
            f"gradient mismatch {where}: {int(bad.sum())} of {err.size} entries; worst at "
            f"[{i}, {j}]: got {got64[i, j]!r} want {want64[i, j]!r} "
            f"(tolerance {tol[i, j]:.3e})")


def compare_all(cos, labels, params, rng, where=""):
    """forward, backward (non-trivial upstream gradients) and forward_backward of the library
    against the reference, on the same values. Returns the library's (loss, grad)."""
    dtype = cos.dtype
    p = full_params(**params)
    n = cos.shape[0]

    loss_ref = reference_on(cos, labels, "forward", **params)
    loss = call(LIB, "forward", cos, labels, **params)
    assert_loss_close(loss, loss_ref, dtype, p, cos.shape[1], f"forward {where}")

    if p["reduction"] == "none":
        upstreams = [rng.normal(size=n), float(rng.uniform(0.5, 2.0))]
    else:
        upstreams = [float(rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 3.0))]
    for g in upstreams:
        grad_ref = reference_on(cos, labels, "backward", g, **params)
        grad = call(LIB, "backward", cos, labels, g, **params)
        assert_grad_close(grad, grad_ref, cos, labels, p, g,
                          f"backward(grad_output {np.shape(g)}) {where}")

    loss_fb, grad_fb = call(LIB, "forward_backward", cos, labels, **params)
    grad_ref1 = reference_on(cos, labels, "backward", 1.0, **params)
    assert_loss_close(loss_fb, loss_ref, dtype, p, cos.shape[1], f"forward_backward loss {where}")
    assert_grad_close(grad_fb, grad_ref1, cos, labels, p, 1.0,
                      f"forward_backward grad {where}")
    return loss_fb, grad_fb
