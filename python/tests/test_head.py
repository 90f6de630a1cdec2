"""The fused head, amm_softmax.head_forward_backward(embeddings, weights, labels): the library
against amm_softmax.reference.head_forward_backward (the oracle) for every target x hard x
reduction in float32 and float64, over shapes that include N = 0, D = 1, C = 1 and block sizes
that do not divide C; zero-norm rows; ignored rows; every error path (library and reference);
inputs never modified; bitwise identical results for every thread count; consistency with the
cosine-logit path (forward_backward on normalize(x) normalize(W)^T); non-contiguous inputs; and
central finite differences of the library's gradients.

Tolerances. The library computes x^ and W^ rounded to the input dtype, each row's target cosine
by a dot product (in double) and every other cosine by GEMM in the input dtype, so that in float32
its cosines differ from the reference's (float64 throughout) by GEMM rounding, and in float64 by
an ulp or so (a cosine of exactly +-1 in the reference, as when D = 1, can be 1 - 1 ulp in the
library, where acos has an infinite slope). The comparisons are therefore scaled by quantities
computed in float64 from the reference's cosines (gradient_bounds, _abs_magnitude):

  K     K_ij = s |u_i| |p_ij - [j = y_i]| D_ij >= |d loss / d cos_ij|, with u_i the row's upstream
          factor (1, or 1/count for mean), p the reference's softmax and D_ij a bound on |df/dc|
          or |dg/dc| that does not depend on the mining or the branch (helpers.derivative_bound;
          the actual factor can vanish, as dg/dc at theta_j = t for amm, its rounding cannot)
  S     sum_j K_ij (per row for 'none', over all rows otherwise): to first order the loss moves
          by at most S * delta when every cosine moves by delta (near |c| = 1 the 1e-7 floor on
          sin(theta) makes D up to 1e7, which covers acos at an ulp from +-1)
  U     s * B + log C (B = helpers.logit_bound): the size of the logits, for the rounding of the
          log-sum-exp itself
  M     (G + |v^| <|v^|, G>) / max(||v||, 1e-12) row by row, with G = K |W^| for the
          embeddings (v = x) and G = K^T |x^| for the weights (v = W): the magnitude of the terms
          that the gradient sums before any cancellation (the products, and the projection of
          the normalisation backward); a zero-norm row gets M ~ G / 1e-12, like its gradient
  M1    M with every |p_ij - [j = y_i]| replaced by 1, for probabilities lost to underflow

  loss  |err| <= LOSS_ATOL (|want| + U) + LOSS_COS_ATOL S
  grad  |err| <= GRAD_ATOL M + P_FLOOR M1       (entry by entry; ignored rows: exactly 0)

The constants below were set from the largest errors measured on test_against_reference, with
about 10x headroom; the measured values are given next to each constant (the run also records
the fraction of each tolerance used in helpers.MEASURED, printed at the end: at most 0.11).
Relative to the largest entry of each gradient (D > 1), the measured errors are 1.0e-14 (float64)
and 3.2e-6 (float32).
"""
import itertools
import math

import numpy as np
import pytest

import helpers
from amm_softmax import reference as reference_impl
from amm_softmax._params import check_params
from helpers import (DTYPES, HARDS, LIB, REDUCTIONS, REF, TARGETS, full_params, logit_bound,
                     rng_for, target_threshold, unchanged)

MODULES = [pytest.param(LIB, id="library"), pytest.param(REF, id="reference")]
NORM_FLOOR = 1e-12

# --- tolerances (see the module docstring) ---------------------------------------------------
# float64 library vs the reference (both in double).
F64_LOSS_ATOL = 5e-15       # times |want| + U; measured 3.4e-16 (D > 1; 6e-9 at D = 1)
F64_LOSS_COS_ATOL = 2e-14   # times S; measured 2.1e-15 at D = 1 (a cosine of +-1 off by 1 ulp)
F64_GRAD_ATOL = 5e-13       # times M; measured 4.1e-14
F64_P_FLOOR = 0.0           # times M1; no underflow seen
# float32 library vs the float64 reference on the same float32 inputs.
F32_LOSS_ATOL = 1e-6        # times |want| + U; measured 8.4e-8
F32_LOSS_COS_ATOL = 1e-6    # times S: about the GEMM rounding of a float32 cosine at D = 64
F32_GRAD_ATOL = 2e-4        # times M; measured 1.9e-5 (the logits s g carry s B eps32 each)
# Where the library's float32 exp underflows, probabilities below float32's smallest normal
# (1.2e-38) are lost: gradient entries of ~1e-36 (C = 9000, D = 3).
F32_P_FLOOR = 1e-39         # times M1; measured 7.8e-41


def tolerances(dtype):
    if np.dtype(dtype) == np.float64:
        return F64_LOSS_ATOL, F64_LOSS_COS_ATOL, F64_GRAD_ATOL, F64_P_FLOOR
    return F32_LOSS_ATOL, F32_LOSS_COS_ATOL, F32_GRAD_ATOL, F32_P_FLOOR


# --- calls -----------------------------------------------------------------------------------
def head(module, x, w, labels, **kw):
    """module.head_forward_backward, checking that no input is modified (also on failure)."""
    with unchanged(x, w, labels):
        return module.head_forward_backward(x, w, labels, **kw)


def normalize64(v, rows_kept=None):
    """(v^, ||v||) in float64 with torch.nn.functional.normalize's floor; rows not kept are 0."""
    v = np.asarray(v, dtype=np.float64)
    if rows_kept is not None:
        v = np.where(rows_kept[:, None], v, 0.0)
    norms = np.linalg.norm(v, axis=1)
    return v / np.maximum(norms, NORM_FLOOR)[:, None], norms


def cosines64(x, w, labels, ignore_index=-100):
    kept = np.asarray(labels) != ignore_index
    xh, xr = normalize64(x, kept)
    wh, wr = normalize64(w)
    return xh @ wh.T, xh, xr, wh, wr


# --- problems --------------------------------------------------------------------------------
def mining_gap(dtype):
    """The least distance, in cosine, kept between a negative and its row's threshold f(c_y)
    (and between an arc target and the fallback boundary cos(pi - m)): far beyond the library's
    cosine rounding (GEMM in float32: ~1e-6 at D = 64), so that no mining decision is a tie."""
    return 2e-5 if np.dtype(dtype) == np.float32 else 1e-9


def near_ties(x, w, labels, params, gap):
    """The rows that are not ignored and have a negative within `gap` of f(c_y), or an arc
    target within `gap` of cos(pi - m) (computed in float64 on the given values)."""
    p = full_params(**params)
    labels = np.asarray(labels)
    n, c = x.shape[0], w.shape[0]
    if n == 0:
        return np.zeros(0, bool)
    cos = cosines64(x, w, labels, p["ignore_index"])[0]
    kept = labels != p["ignore_index"]
    y = np.where(kept, labels, 0)
    rows = np.arange(n)
    cy = cos[rows, y]
    f = target_threshold(cy, p)
    close = np.abs(cos - f[:, None]) < gap
    close[rows, y] = False
    bad = close.any(axis=1)
    if p["target"] == "arc":
        bad |= np.abs(cy - math.cos(math.pi - p["margin"])) < gap
    return bad & kept


def head_problem(rng, n, d, c, dtype, params=None, ignore_fraction=0.15):
    """Random normal embeddings and weights with varied norms (each row times a random factor
    in [e^-3, e^3]), random labels with some rows ignored; embedding rows with a near tie in the
    mining (near_ties) are drawn again."""
    p = full_params(**(params or {}))
    x = rng.normal(size=(n, d)) * np.exp(rng.uniform(-3, 3, (n, 1)))
    w = rng.normal(size=(c, d)) * np.exp(rng.uniform(-3, 3, (c, 1)))
    x, w = x.astype(dtype), w.astype(dtype)
    labels = rng.integers(0, c, n)
    labels[rng.random(n) < ignore_fraction] = p["ignore_index"]
    for _ in range(1000):
        bad = near_ties(x, w, labels, p, mining_gap(dtype))
        if not bad.any():
            return x, w, labels
        k = int(bad.sum())
        x[bad] = (rng.normal(size=(k, d)) * np.exp(rng.uniform(-3, 3, (k, 1)))).astype(dtype)
    raise AssertionError(f"could not draw a problem without mining ties ({n}, {d}, {c}) {p}")


# --- comparison ------------------------------------------------------------------------------
def _abs_magnitude(g_hat_abs, v_hat, norms):
    """(G + |v^| <|v^|, G>) / max(||v||, 1e-12) row by row."""
    a = np.abs(v_hat)
    inner = np.sum(a * g_hat_abs, axis=1, keepdims=True)
    return (g_hat_abs + a * inner) / np.maximum(norms, NORM_FLOOR)[:, None]


def gradient_bounds(cos, labels, params):
    """(K, K1) with K_ij = s |u_i| |p_ij - [j = y_i]| D_ij >= |d loss / d cos_ij| (float64, the
    reference's softmax) and K1_ij = s |u_i| D_ij, where D_ij = helpers.derivative_bound bounds
    |df/dc| or |dg/dc| whatever the mining or the branch: the actual factor can vanish (amm at
    theta_j = t, where dg/dc = 0 with slope -sin t / sin^3 theta), its rounding error does not.
    Ignored rows: 0."""
    p = full_params(**params)
    labels = np.asarray(labels)
    kept = labels != p["ignore_index"]
    k, k1 = np.zeros(cos.shape), np.zeros(cos.shape)
    if kept.any():
        z, _, is_target = reference_impl._logits(cos[kept], labels[kept],
                                                 check_params(**params))
        prob = np.exp(z - z.max(axis=1, keepdims=True))
        prob /= prob.sum(axis=1, keepdims=True)
        u = helpers.row_upstream(labels, params, 1.0)[kept]
        k1[kept] = p["scale"] * u[:, None] * helpers.derivative_bound(cos, labels, params)[kept]
        k[kept] = k1[kept] * np.abs(prob - is_target)
    return k, k1


class Expected:
    """The reference's (loss, grad_x, grad_w) for a problem, and the scales of the tolerances
    (module docstring), computed once and compared with any number of library results."""

    def __init__(self, x, w, labels, params):
        p = full_params(**params)
        self.x, self.w, self.labels, self.params, self.p = x, w, labels, params, p
        self.want = head(REF, x, w, labels, **params)
        n, c = x.shape[0], w.shape[0]
        cos, xh, xr, wh, wr = cosines64(x, w, labels, p["ignore_index"])
        bound, bound1 = gradient_bounds(cos, labels, params)
        self.unit = p["scale"] * logit_bound(p) + math.log(c)
        self.sens = bound.sum(axis=1) if p["reduction"] == "none" else bound.sum()
        self.scales = [(_abs_magnitude(k @ np.abs(wh), xh, xr),
                        _abs_magnitude(k.T @ np.abs(xh), wh, wr)) for k in (bound, bound1)]

    def check(self, got, where=""):
        """Asserts that the library's result `got` matches; records the measured errors in
        helpers.MEASURED."""
        x, w, labels, p = self.x, self.w, self.labels, self.p
        dtype = np.dtype(x.dtype)
        name = dtype.name
        loss, gx, gw = got
        loss_ref = self.want[0]
        n, d = x.shape
        c = w.shape[0]
        kept = np.asarray(labels) != p["ignore_index"]
        l_atol, l_cos, g_atol, p_floor = tolerances(dtype)
        where = f"{where} shape {x.shape} x {w.shape} {self.params}"

        # Types and shapes.
        if p["reduction"] == "none":
            assert isinstance(loss, np.ndarray) and loss.dtype == dtype and loss.shape == (n,)
        else:
            assert type(loss) is float, type(loss)
        for g, shape in ((gx, (n, d)), (gw, (c, d))):
            assert isinstance(g, np.ndarray) and g.dtype == dtype and g.shape == shape
            assert g.flags.c_contiguous
            assert np.all(np.isfinite(g)), f"non-finite gradient {where}"
        assert np.all(np.isfinite(loss)), f"non-finite loss {where}"
        assert np.all(gx[~kept] == 0), f"ignored rows of grad_embeddings not zero {where}"

        got_l = np.asarray(loss, dtype=np.float64)
        want_l = np.asarray(loss_ref, dtype=np.float64)
        err = np.abs(got_l - want_l)
        tol = l_atol * (np.abs(want_l) + self.unit) + l_cos * self.sens
        if err.size:
            helpers._record(f"head {name} loss: fraction of tolerance used",
                            (err / tol).max(), where)
            helpers._record(f"head {name} loss |err| / (|want| + U)",
                            (err / (np.abs(want_l) + self.unit)).max(), where)
            helpers._record(f"head {name} loss |err| / (|want| + U + S)",
                            (err / (np.abs(want_l) + self.unit + self.sens)).max(), where)
        bad = err > tol
        k = np.argmax(err - tol) if err.size else 0
        assert not bad.any(), (
            f"loss mismatch {where}: got {got_l.flat[k]!r} want {want_l.flat[k]!r} "
            f"(tolerance {tol.flat[k]:.3e})")

        for label, g, g_ref, m, m1 in (
                ("grad_embeddings", gx, self.want[1], self.scales[0][0], self.scales[1][0]),
                ("grad_weights", gw, self.want[2], self.scales[0][1], self.scales[1][1])):
            got64 = g.astype(np.float64)
            want64 = np.asarray(g_ref, dtype=np.float64)
            err = np.abs(got64 - want64)
            tol = g_atol * m + p_floor * m1
            small = (err > g_atol * m) & (m1 > 0)
            if small.any():
                helpers._record(f"head {name} grad: |err| / M1 where |err| > GRAD_ATOL M",
                                (err[small] / m1[small]).max(), where)
            pos = m > 0
            if pos.any():
                helpers._record(f"head {name} grad: fraction of tolerance used",
                                (err[pos] / tol[pos]).max(), where)
                helpers._record(f"head {name} grad |err| / M (where |err| > P_FLOOR M1)",
                                (err[pos] / m[pos])[(err > p_floor * m1)[pos]].max(initial=0),
                                where)
                if d > 1:   # at D = 1 the exact gradients are 0 (x^ = +-1 cannot turn)
                    helpers._record(f"head {name} grad |err| / max|want| ({label}, D > 1)",
                                    err.max() / np.abs(want64).max(), where)
            bad = err > tol
            if bad.any():
                i, k = np.unravel_index(np.argmax(err - tol), err.shape)
                raise AssertionError(
                    f"{label} mismatch {where}: {int(bad.sum())} of {err.size} entries; worst "
                    f"at [{i}, {k}]: got {got64[i, k]!r} want {want64[i, k]!r} "
                    f"(tolerance {tol[i, k]:.3e}, M {m[i, k]:.3e})")


def compare(x, w, labels, params, block_sizes=(0,), where="", **kw):
    """The library (at each block size) against the reference; returns the library's results."""
    expected = Expected(x, w, labels, params)
    results = []
    for block in block_sizes:
        got = head(LIB, x, w, labels, block_size=block, **params, **kw)
        expected.check(got, where=f"{where} block {block}")
        results.append(got)
    return results


# --- 1. library vs reference -----------------------------------------------------------------
# (N, D, C): no rows; D = 1 (every cosine +-1); one class; small; the brief's large shape; and
# C > 8192, where the automatic block (8192) does not divide C either.
SHAPES = [(0, 5, 7), (11, 1, 9), (9, 5, 1), (13, 8, 100), (40, 64, 3000), (5, 3, 9000)]
BLOCKS = (0, 16, 7, 1000)
HARD_MARGIN = {"amm": 0.2, "mv-fixed": 1.2, "mv-adaptive": 0.2, "none": 0.2, "curricular": -0.3}
MARGIN = {"arc": 0.5, "cos": 0.35}
COMBOS = list(itertools.product(DTYPES, TARGETS, HARDS, REDUCTIONS))


def params_for(target, hard, reduction="mean", scale=64.0):
    return dict(scale=scale, margin=MARGIN[target], hard_margin=HARD_MARGIN[hard],
                target=target, hard=hard, reduction=reduction)


@pytest.mark.parametrize("dtype,target,hard,reduction", COMBOS,
                         ids=[f"{np.dtype(a).name}-{b}-{c}-{d}" for a, b, c, d in COMBOS])
def test_against_reference(dtype, target, hard, reduction):
    """Every shape x scale in {16, 64} x block size (0 = automatic; 16, 7 and 1000 do not divide
    C = 100, 3000 or 9000, 1000 > C for the small shapes; 1 as well where C <= 100), the same
    problem for every block size."""
    rng = rng_for("head-vs-reference", np.dtype(dtype).name, target, hard, reduction)
    for n, d, c in SHAPES:
        for scale in (16.0, 64.0):
            params = params_for(target, hard, reduction, scale)
            x, w, labels = head_problem(rng, n, d, c, dtype, params)
            blocks = BLOCKS + ((1,) if c <= 100 else ())
            compare(x, w, labels, params, blocks, where="random")


@pytest.mark.parametrize("shape", [(13, 8, 100), (40, 64, 3000)])
def test_problems_have_hard_and_easy_negatives(shape):
    """The random problems are not degenerate: with the default margins they have both hard and
    easy negatives and both ignored and kept rows, in both dtypes (checked on the reference's
    cosines)."""
    for dtype in DTYPES:
        params = params_for("arc", "amm")
        x, w, labels = head_problem(rng_for("mix", np.dtype(dtype).name), *shape, dtype,
                                    params)
        cos = cosines64(x, w, labels)[0]
        kept = labels != -100
        rows = np.flatnonzero(kept)
        f = target_threshold(cos[rows, labels[kept]], params)
        negative = np.ones((rows.size, cos.shape[1]), bool)
        negative[np.arange(rows.size), labels[kept]] = False
        hard = (cos[rows] > f[:, None]) & negative
        assert 0 < hard.sum() < negative.sum()
        assert 0 < (~kept).sum() < len(labels)


# --- 2. zero-norm rows -----------------------------------------------------------------------
ZERO_CASES = list(itertools.product(DTYPES, TARGETS, HARDS))


@pytest.mark.parametrize("dtype,target,hard", ZERO_CASES,
                         ids=[f"{np.dtype(a).name}-{b}-{c}" for a, b, c in ZERO_CASES])
def test_zero_norm_rows(dtype, target, hard):
    """An all-zero embedding row (not ignored) and an all-zero weight row (the target of some
    rows), a row of each with a norm below the 1e-12 floor (1e-13: v^ = v / 1e-12 has norm 0.1)
    and one just above it (1e-11): torch.nn.functional.normalize's semantics, gradients
    dv^ / 1e-12 (huge) below the floor. Compared with the reference relative to M, which carries
    the same 1 / max(||v||, 1e-12); everything finite."""
    k = ZERO_CASES.index((dtype, target, hard))
    rng = rng_for("zero-norm", k)
    params = params_for(target, hard, REDUCTIONS[k % 3])
    n, d, c = 8, 5, 9
    for _ in range(100):
        x, w, labels = head_problem(rng, n, d, c, dtype, params, ignore_fraction=0.0)
        x[2] = 0
        w[4] = 0
        x[5] *= 1e-13 / np.linalg.norm(x[5].astype(np.float64))
        w[6] *= 1e-13 / np.linalg.norm(w[6].astype(np.float64))
        x[6] *= 1e-11 / np.linalg.norm(x[6].astype(np.float64))
        w[7] *= 1e-11 / np.linalg.norm(w[7].astype(np.float64))
        labels[[0, 2, 3]] = [4, 1, 6]
        labels[7] = -100
        if not near_ties(x, w, labels, params, mining_gap(dtype)).any():
            break
    else:
        raise AssertionError("no problem without ties")
    (loss, gx, gw), = compare(x, w, labels, params, (0, 4), where="zero-norm")[:1]
    for a in (np.asarray(loss), gx, gw):
        assert np.all(np.isfinite(a))
    # The zero rows are on the floor branch: their gradients are dv^ / 1e-12.
    assert np.abs(gx[2]).max() > 1e6 and np.abs(gw[4]).max() > 1e6
    assert np.abs(gx[5]).max() > 1e6 and np.abs(gw[6]).max() > 1e6


# --- 3. ignored rows -------------------------------------------------------------------------
@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_ignored_rows_are_zero_rows(module, dtype, reduction, bad):
    """A NaN or infinity in an ignored embedding row is accepted and gives bitwise the loss and
    gradients of that row being zeros; the ignored rows' grad_embeddings are exactly 0, and so
    is their loss for reduction 'none'."""
    rng = rng_for("ignored-nan", np.dtype(dtype).name, reduction)
    params = params_for("arc", "amm", reduction)
    x, w, labels = head_problem(rng, 12, 6, 20, dtype, params, ignore_fraction=0.0)
    labels[[1, 7]] = -100
    zeros = x.copy()
    zeros[[1, 7]] = 0
    poisoned = x.copy()
    poisoned[1, 3] = bad
    poisoned[7, :] = bad
    want = head(module, zeros, w, labels, block_size=8, **params)
    got = head(module, poisoned, w, labels, block_size=8, **params)
    clean = head(module, x, w, labels, block_size=8, **params)
    for a, b, c in zip(got, want, clean):
        a, b, c = np.asarray(a), np.asarray(b), np.asarray(c)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.all(np.isfinite(a))
        assert np.array_equal(a, b)
        assert np.array_equal(a, c)      # the values of an ignored row never matter
    assert np.all(got[1][[1, 7]] == 0)
    if reduction == "none":
        assert np.all(got[0][[1, 7]] == 0) and np.all(got[0][labels != -100] > 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ignored_rows_take_no_part(dtype, reduction):
    """The library's result with ignored rows is that of the problem without them (the ignored
    rows' own gradients 0), with a custom ignore_index that is also a valid class (3)."""
    rng = rng_for("ignored-take-no-part", np.dtype(dtype).name, reduction)
    params = dict(params_for("cos", "mv-fixed", reduction), ignore_index=3)
    x, w, labels = head_problem(rng, 30, 16, 50, dtype, params, ignore_fraction=0.0)
    labels[labels == 3] = 4
    ignored = np.array([0, 4, 5, 17, 29])
    labels[ignored] = 3
    kept = labels != 3
    loss, gx, gw = head(LIB, x, w, labels, block_size=16, **params)
    sub_loss, sub_gx, sub_gw = head(LIB, np.ascontiguousarray(x[kept]), w, labels[kept],
                                    block_size=16, **params)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.all(gx[ignored] == 0)
    if reduction == "none":
        assert np.all(loss[ignored] == 0)
        np.testing.assert_allclose(loss[kept], sub_loss, rtol=rtol)
    else:
        np.testing.assert_allclose(loss, sub_loss, rtol=rtol)
    np.testing.assert_allclose(gx[kept], sub_gx, rtol=rtol, atol=rtol * np.abs(sub_gx).max())
    np.testing.assert_allclose(gw, sub_gw, rtol=rtol, atol=rtol * np.abs(sub_gw).max())


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_rows_ignored(module, dtype, reduction):
    """Every row ignored (one of them NaN): loss 0 (a float 0.0 for mean and sum, zeros for
    none) and both gradients exactly zero."""
    rng = rng_for("all-ignored", np.dtype(dtype).name, reduction)
    x, w, _ = head_problem(rng, 6, 4, 10, dtype)
    x[2, 1] = np.nan
    labels = np.full(6, -100)
    loss, gx, gw = head(module, x, w, labels, reduction=reduction, block_size=3)
    if reduction == "none":
        assert loss.dtype == np.dtype(dtype) and np.array_equal(loss, np.zeros(6))
    else:
        assert type(loss) is float and loss == 0.0
    assert gx.dtype == gw.dtype == np.dtype(dtype)
    assert np.array_equal(gx, np.zeros_like(x)) and np.array_equal(gw, np.zeros_like(w))


# --- 4. errors -------------------------------------------------------------------------------
EN, ED, EC = 5, 4, 6


def error_problem(dtype=np.float64):
    rng = np.random.default_rng(4321)
    x = rng.normal(size=(EN, ED)).astype(dtype)
    w = rng.normal(size=(EC, ED)).astype(dtype)
    labels = np.array([1, 0, 5, -100, 3], dtype=np.int64)
    return x, w, labels


def case(x=None, w=None, labels=None, dtype=np.float64, **kw):
    """make() -> (x, w, labels, kw): the error problem with one part changed by a function."""
    def make():
        a, b, y = error_problem(dtype)
        return (x(a) if x else a), (w(b) if w else b), (labels(y) if labels else y), kw
    return make


def setting(changes):
    def fn(a):
        a = a.copy()
        for index, value in changes.items():
            a[index] = value
        return a
    return fn


ERROR_CASES = [
    # dtypes
    ("embeddings-float16", case(x=lambda a: a.astype(np.float16)), TypeError,
     r"embeddings must have dtype float32 or float64, got float16"),
    ("weights-float16", case(w=lambda a: a.astype(np.float16)), TypeError,
     r"weights must have dtype float32 or float64, got float16"),
    ("embeddings-int64", case(x=lambda a: (10 * a).astype(np.int64)), TypeError,
     r"embeddings must have dtype float32 or float64, got int64"),
    ("weights-int32", case(w=lambda a: (10 * a).astype(np.int32)), TypeError,
     r"weights must have dtype float32 or float64, got int32"),
    ("both-int", case(x=lambda a: (10 * a).astype(np.int64),
                      w=lambda a: (10 * a).astype(np.int64)), TypeError,
     r"embeddings must have dtype float32 or float64, got int64"),
    ("mixed-f32-f64", case(x=lambda a: a.astype(np.float32)), TypeError,
     r"weights must have the dtype of embeddings \(float32\), got float64"),
    ("mixed-f64-f32", case(w=lambda a: a.astype(np.float32)), TypeError,
     r"weights must have the dtype of embeddings \(float64\), got float32"),
    # shapes
    ("embeddings-1d", case(x=lambda a: a[0]), ValueError,
     r"embeddings must be 2-dimensional, got shape \(4,\)"),
    ("embeddings-3d", case(x=lambda a: a.reshape(1, EN, ED)), ValueError,
     r"embeddings must be 2-dimensional, got shape \(1, 5, 4\)"),
    ("weights-1d", case(w=lambda a: a.ravel()), ValueError,
     r"weights must be 2-dimensional, got shape \(24,\)"),
    ("weights-3d", case(w=lambda a: a.reshape(EC, ED, 1)), ValueError,
     r"weights must be 2-dimensional, got shape \(6, 4, 1\)"),
    ("d-mismatch", case(w=lambda a: np.hstack([a, a[:, :1]])), ValueError,
     r"weights must have D = 4 columns like embeddings, got shape \(6, 5\)"),
    ("d-mismatch-transposed", case(w=lambda a: a.T.copy()), ValueError,
     r"weights must have D = 4 columns like embeddings, got shape \(4, 6\)"),
    ("d-zero", case(x=lambda a: a[:, :0], w=lambda a: a[:, :0]), ValueError,
     r"embeddings must have at least one column \(D >= 1\), got shape \(5, 0\)"),
    ("c-zero", case(w=lambda a: a[:0], labels=lambda y: np.full(EN, -100)), ValueError,
     r"weights must have at least one class \(row\), got shape \(0, 4\)"),
    # non-finite embeddings in rows that are not ignored, and weights
    ("embeddings-nan", case(x=setting({(2, 1): np.nan})), ValueError,
     r"embeddings\[2, 1\] = nan is not finite"),
    ("embeddings-inf", case(x=setting({(0, 3): np.inf})), ValueError,
     r"embeddings\[0, 3\] = inf is not finite"),
    ("embeddings-minus-inf", case(x=setting({(4, 0): -np.inf})), ValueError,
     r"embeddings\[4, 0\] = -inf is not finite"),
    ("embeddings-lowest-named", case(x=setting({(4, 0): np.nan, (1, 3): np.inf,
                                                (1, 2): np.nan})), ValueError,
     r"embeddings\[1, 2\] = nan is not finite"),
    ("embeddings-ignored-row-skipped", case(x=setting({(3, 0): np.nan, (4, 2): np.inf})),
     ValueError, r"embeddings\[4, 2\] = inf is not finite"),
    ("embeddings-float32-nan", case(x=setting({(2, 3): np.nan}), dtype=np.float32), ValueError,
     r"embeddings\[2, 3\] = nan is not finite"),
    ("weights-nan", case(w=setting({(2, 1): np.nan})), ValueError,
     r"weights\[2, 1\] = nan is not finite"),
    ("weights-inf-unused-class", case(w=setting({(4, 3): np.inf})), ValueError,
     r"weights\[4, 3\] = inf is not finite"),
    ("weights-lowest-named", case(w=setting({(5, 0): np.nan, (2, 3): -np.inf})), ValueError,
     r"weights\[2, 3\] = -inf is not finite"),
    ("weights-float32-nan", case(w=setting({(0, 0): np.nan}), dtype=np.float32), ValueError,
     r"weights\[0, 0\] = nan is not finite"),
    # labels
    ("label-equal-C", case(labels=setting({2: 6})), ValueError,
     r"labels\[2\] = 6 is out of range: must be in \[0, 6\) or equal ignore_index \(-100\)"),
    ("label-negative", case(labels=setting({0: -1})), ValueError, r"labels\[0\] = -1 is out"),
    ("label-lowest-named", case(labels=setting({1: 60, 4: -7})), ValueError,
     r"labels\[1\] = 60 is out"),
    ("label-other-ignore-index", case(ignore_index=-1), ValueError,
     r"labels\[3\] = -100 is out of range: .* ignore_index \(-1\)"),
    ("labels-float", case(labels=lambda y: y.astype(np.float64)), TypeError,
     r"labels must have an integer dtype, got float64"),
    ("labels-short", case(labels=lambda y: y[:4]), ValueError,
     r"labels must have shape \(5,\)"),
    # block_size
    ("block-size-negative", case(block_size=-1), ValueError,
     r"^block_size = -1 is invalid: must be >= 0 \(0 = automatic\)$"),
    ("block-size-float", case(block_size=1.5), TypeError,
     r"block_size must be an integer, got 1\.5 \(float\)"),
    ("block-size-integral-float", case(block_size=16.0), TypeError,
     r"block_size must be an integer, got 16\.0"),
    ("block-size-bool", case(block_size=True), TypeError,
     r"block_size must be an integer, got True \(bool\)"),
    ("block-size-string", case(block_size="16"), TypeError, r"block_size must be an integer"),
    ("block-size-None", case(block_size=None), TypeError, r"block_size must be an integer"),
    ("block-size-too-big", case(block_size=2**63), ValueError, r"block_size = \d+ is out of range"),
    # shared parameters
    ("scale-zero", case(scale=0.0), ValueError, r"scale = 0\.0 is invalid"),
    ("hard-unknown", case(hard="mv"), ValueError, r"hard = 'mv' is unknown"),
    ("num-threads-negative", case(num_threads=-2), ValueError, r"num_threads = -2 is invalid: must be >= 0"),
    ("unknown-keyword", case(blocksize=16), TypeError, r"unexpected keyword argument 'blocksize'"),
]


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("make,exception,message", [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_bad_input(module, make, exception, message):
    """The exception type and a message naming the parameter, row and column and the value;
    no input modified by the failed call (head() checks)."""
    x, w, labels, kw = make()
    with pytest.raises(exception, match=message) as info:
        head(module, x, w, labels, **kw)
    assert type(info.value) is exception


@pytest.mark.parametrize("dtype,suffix", [(np.float32, "f32"), (np.float64, "f64")],
                         ids=["float32", "float64"])
def test_library_message_is_amm_last_error(dtype, suffix):
    """The library finds non-finite inputs itself: the exception's message is amm_last_error(),
    prefixed with the C function's name."""
    from amm_softmax import _library
    x, w, labels = error_problem(dtype)
    x[4, 1] = np.nan
    with pytest.raises(ValueError) as info:
        head(LIB, x, w, labels)
    expected = f"amm_head_forward_backward_{suffix}: embeddings[4, 1] = nan is not finite"
    assert str(info.value) == expected
    assert _library.load().amm_last_error().decode() == expected


# --- 5. inputs never modified ----------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_failures_found_late_leave_inputs_unchanged(dtype):
    """A NaN in the last embedding row or the last weight, found after the library has started
    working: every input as it was (head() compares bytes, dtype, shape and strides), also for
    strided views whose copy the wrapper makes."""
    rng = rng_for("late-failure", np.dtype(dtype).name)
    x, w, labels = head_problem(rng, 50, 16, 300, dtype)
    for where in ("embeddings", "weights"):
        a, b = x.copy(), w.copy()
        if where == "embeddings":
            labels[-1] = 0
            a[-1, -1] = np.nan
        else:
            b[-1, -1] = np.nan
        for module in (LIB, REF):
            for a_, b_ in ((a, b), (np.asfortranarray(a), _strided(b, 2, 1))):
                with pytest.raises(ValueError, match=where):
                    head(module, a_, b_, labels, block_size=32, reduction="none")


# --- 6. thread counts ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("block_size", [100, 0])
def test_bitwise_identical_for_every_thread_count(dtype, reduction, block_size):
    """num_threads in {1, 2, 3, 0 (all cores)} give bitwise the same loss and gradients (row
    work and fixed product chunks split across threads, each chunk one call of the head's
    serial OpenBLAS), and repeated calls too. block_size 100 gives products with K <= 100;
    block_size 0 is one block of all 1001 classes, so that d loss / d x^ is one product with
    K = 1001, where a threaded OpenBLAS 0.3.21 gives different bits for 1 and 2 of its own
    threads (cblas_?gemm 37 x 1001 by 1001 x 24)."""
    rng = rng_for("threads", np.dtype(dtype).name, reduction, block_size)
    params = params_for("arc", "amm", reduction)
    x, w, labels = head_problem(rng, 37, 24, 1001, dtype, params)
    results = {t: head(LIB, x, w, labels, block_size=block_size, num_threads=t, **params)
               for t in (1, 2, 3, 0)}
    results["again"] = head(LIB, x, w, labels, block_size=block_size, num_threads=1, **params)
    first = results[1]
    differences = []
    for t, got in results.items():
        for a, b, what in zip(got, first, ("loss", "grad_embeddings", "grad_weights")):
            a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
            if not np.array_equal(a, b):
                differences.append(
                    f"{what}: num_threads={t} vs 1: {int(np.sum(a != b))} of {a.size} entries "
                    f"differ, max |diff| / max |value| = "
                    f"{np.abs(a - b).max() / np.abs(b).max():.1e}")
    assert not differences, "; ".join(differences)


# --- 7. consistency with the cosine-logit path -----------------------------------------------
def chain_rule(gcos, xh, xr, wh, wr):
    """d loss / d x and d loss / d W from d loss / d cos through cos = x^ W^^T and the
    normalisation (docs/FORMULATION.md, "Head")."""
    def back(v_hat, norms, g_hat):
        inner = np.sum(v_hat * g_hat, axis=1, keepdims=True)
        projected = (g_hat - v_hat * inner) / np.maximum(norms, NORM_FLOOR)[:, None]
        return np.where((norms >= NORM_FLOOR)[:, None], projected, g_hat / NORM_FLOOR)
    return back(xh, xr, gcos @ wh), back(wh, wr, gcos.T @ xh)


CHAIN_RTOL = 1e-12   # float64; measured: loss 4.2e-16 relative, gradients 4.1e-14 of M


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("hard", HARDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_consistent_with_forward_backward_on_cosines(target, hard, reduction):
    """cos = normalize(x) normalize(W)^T computed here (float64), then the library's
    forward_backward(cos, labels): the head's loss equals its loss to 1e-12 relative, and the
    head's gradients equal the chain rule applied to its grad_cos, to 1e-12 of M (the
    magnitude of the summed terms, module docstring)."""
    rng = rng_for("chain", target, hard, reduction)
    params = params_for(target, hard, reduction)
    x, w, labels = head_problem(rng, 23, 12, 300, np.float64, params)
    loss, gx, gw = head(LIB, x, w, labels, block_size=64, **params)
    cos, xh, xr, wh, wr = cosines64(x, w, labels)
    with unchanged(cos, labels):
        loss_c, gcos = LIB.forward_backward(cos, labels, **params)
    helpers._record("head float64 vs forward_backward on cosines: loss |err| / |want|",
                    np.max(np.abs(np.asarray(loss) - loss_c)
                           / np.maximum(np.abs(loss_c), 1e-300), initial=0), f"{params}")
    np.testing.assert_allclose(loss, loss_c, rtol=CHAIN_RTOL, atol=0)
    want_x, want_w = chain_rule(gcos, xh, xr, wh, wr)
    ag = np.abs(gcos)
    for got, want, m in ((gx, want_x, _abs_magnitude(ag @ np.abs(wh), xh, xr)),
                         (gw, want_w, _abs_magnitude(ag.T @ np.abs(xh), wh, wr))):
        err = np.abs(got - want)
        helpers._record("head float64 vs chain rule on forward_backward: |err| / M",
                        (err / np.where(m > 0, m, np.inf)).max(), f"{params}")
        assert np.all(err <= CHAIN_RTOL * m), (err / np.where(m > 0, m, np.inf)).max()


# --- 8. layouts ------------------------------------------------------------------------------
def unaligned_copy(a):
    """A copy of `a` whose data starts one byte past an aligned address (flags.aligned False)."""
    buf = np.zeros(a.nbytes + 1, dtype=np.uint8)
    out = np.frombuffer(buf[1:].data, dtype=a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


LAYOUTS = {
    "fortran": lambda x, w, y: (np.asfortranarray(x), np.asfortranarray(w), y),
    "transposed-copies": lambda x, w, y: (np.ascontiguousarray(x.T).T,
                                          np.ascontiguousarray(w.T).T, y),
    "strided-slices": lambda x, w, y: (_strided(x, 2, 3), _strided(w, 3, 2), _strided1(y, 3)),
    "column-slices": lambda x, w, y: (np.hstack([x, x])[:, :x.shape[1]],
                                      np.hstack([w, w[:, :1]])[:, :w.shape[1]], y),
    "negative-strides": lambda x, w, y: (np.ascontiguousarray(x[::-1])[::-1],
                                         np.ascontiguousarray(w[::-1, ::-1])[::-1, ::-1],
                                         np.ascontiguousarray(y[::-1])[::-1]),
    "unaligned": lambda x, w, y: (unaligned_copy(x), unaligned_copy(w), y),
    "read-only": lambda x, w, y: tuple(_read_only(a) for a in (x, w, y)),
}


def _strided(a, row_step, col_step):
    """A view of a copy of `a` with row and column strides row_step and col_step elements."""
    big = np.zeros((a.shape[0] * row_step, a.shape[1] * col_step), dtype=a.dtype)
    big[::row_step, ::col_step] = a
    view = big[::row_step, ::col_step]
    assert not view.flags.c_contiguous and np.array_equal(view, a, equal_nan=True)
    return view


def _strided1(a, step):
    big = np.zeros(a.shape[0] * step, dtype=a.dtype)
    big[::step] = a
    return big[::step]


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layouts_give_the_contiguous_result(dtype, layout):
    """Non-contiguous, negatively strided, unaligned and read-only inputs give bitwise the
    result of C-contiguous copies (the wrapper copies only what it must), inputs unchanged;
    also for the reference, to 1e-12 (float64) or 1e-6 (float32) of the largest value."""
    rng = rng_for("layouts", np.dtype(dtype).name, layout)
    params = params_for("arc", "mv-adaptive", "none")
    x, w, labels = head_problem(rng, 21, 10, 77, dtype, params)
    xv, wv, yv = LAYOUTS[layout](x, w, labels)
    assert np.array_equal(xv, x) and np.array_equal(wv, w) and np.array_equal(yv, labels)
    want = head(LIB, x, w, labels, block_size=16, num_threads=1, **params)
    got = head(LIB, xv, wv, yv, block_size=16, num_threads=1, **params)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape and a.flags.c_contiguous
        assert np.array_equal(a, b)
    ref_want = head(REF, x, w, labels, **params)
    ref_got = head(REF, xv, wv, yv, **params)
    for a, b in zip(ref_got, ref_want):
        rtol = 1e-6 if dtype == np.float32 else 1e-12   # NumPy's products may take other paths
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())


def test_strided_views_really_are_strided():
    x = np.ones((4, 3))
    assert not _strided(x, 2, 3).flags.c_contiguous
    assert _strided(x, 2, 3).strides == (2 * 9 * 8, 3 * 8)
    assert _strided1(np.arange(5), 3).strides == (24,)


# --- 9. finite differences -------------------------------------------------------------------
FD_STEP = 1e-6
FD_GAP = 1e-4      # the least distance from any point where the loss is not smooth
FD_TOL = 3e-8      # times |grad| + 1; measured 3.2e-9 (step 1e-6: rounding ~ eps |loss| / step)


def smooth_head_problem(rng, params, n=3, d=4, c=5):
    """Rejection sampling (fixed seed): embeddings and weights of norms in [0.5, 2] whose
    cosines (reference normalisation) keep FD_GAP away from every mining threshold f(c_y), from
    the arc fallback boundary cos(pi - m), from theta = t (amm) and from +-1, with at least one
    hard negative; a step of FD_STEP moves a cosine by at most ~2 FD_STEP."""
    p = full_params(**params)
    for _ in range(100_000):
        x = rng.normal(size=(n, d))
        x *= rng.uniform(0.5, 2.0, (n, 1)) / np.linalg.norm(x, axis=1, keepdims=True)
        w = rng.normal(size=(c, d))
        w *= rng.uniform(0.5, 2.0, (c, 1)) / np.linalg.norm(w, axis=1, keepdims=True)
        labels = rng.integers(0, c, n)
        cos = cosines64(x, w, labels)[0]
        rows = np.arange(n)
        cy = cos[rows, labels]
        f = target_threshold(cy, p)
        neg = np.ones((n, c), bool)
        neg[rows, labels] = False
        if np.any(np.abs(cos - f[:, None])[neg] < FD_GAP):
            continue
        if not (cos > f[:, None])[neg].any():
            continue
        if np.any(1 - np.abs(cos) < FD_GAP):
            continue
        if p["target"] == "arc" and np.any(np.abs(cy - math.cos(math.pi - p["margin"])) < FD_GAP):
            continue
        if p["hard"] == "amm" and np.any(np.abs(np.arccos(cos) - p["hard_margin"]) < FD_GAP):
            continue
        return x, w, labels
    raise AssertionError("no smooth problem found")


FD_CASES = list(itertools.product(TARGETS, HARDS, REDUCTIONS))


@pytest.mark.parametrize("target,hard,reduction", FD_CASES,
                         ids=[f"{a}-{b}-{c}" for a, b, c in FD_CASES])
def test_finite_differences(target, hard, reduction):
    """Central differences of the library's loss (its sum for 'none') against its gradients,
    at every entry of the embeddings and the weights (float64, N=3, D=4, C=5, scale 4)."""
    params = dict(params_for(target, hard, reduction, scale=4.0),
                  hard_margin=0.3 if hard == "amm" else HARD_MARGIN[hard])
    rng = rng_for("fd", target, hard, reduction)
    x, w, labels = smooth_head_problem(rng, params)
    _, gx, gw = head(LIB, x, w, labels, block_size=2, **params)

    def total(a, b):
        return float(np.sum(head(LIB, a, b, labels, block_size=2, **params)[0]))

    for which, grad in (("embeddings", gx), ("weights", gw)):
        base = x if which == "embeddings" else w
        fd = np.zeros_like(base)
        for idx in np.ndindex(base.shape):
            plus, minus = base.copy(), base.copy()
            plus[idx] += FD_STEP
            minus[idx] -= FD_STEP
            if which == "embeddings":
                fd[idx] = (total(plus, w) - total(minus, w)) / (2 * FD_STEP)
            else:
                fd[idx] = (total(x, plus) - total(x, minus)) / (2 * FD_STEP)
        err = np.abs(fd - grad)
        helpers._record("head float64 finite differences |fd - grad| / (|grad| + 1)",
                        (err / (np.abs(grad) + 1)).max(), f"{which} {params}")
        assert np.all(err <= FD_TOL * (np.abs(grad) + 1)), (
            f"{which}: finite differences {fd} vs gradient {grad}")


@pytest.mark.parametrize("module", MODULES)
def test_embeddings_are_checked_before_weights(module):
    """With NaN in both, every module names the embeddings first (the header's order)."""
    x, w, labels = error_problem(np.float64)
    x[4, 1] = np.nan
    w[0, 0] = np.inf
    with pytest.raises(ValueError, match=r"embeddings\[4, 1\] = nan"):
        head(module, x, w, labels)
