"""Adversarial rows: the edges of every formula in docs/FORMULATION.md, compared with the reference
and, where the answer is known in closed form, with that."""
import itertools
import math

import numpy as np
import pytest

from helpers import (DTYPES, HARDS, LIB, REDUCTIONS, REF, TARGETS, call, compare_all,
                     random_problem, rng_for, target_threshold)

MODULES = [pytest.param(LIB, id="library"), pytest.param(REF, id="reference")]
DTYPE_IDS = {np.float32: "float32", np.float64: "float64"}
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)

# Parameter sets for the hand-built rows: margins that keep every target in the arc branch,
# push all of them into the fallback (3.0), or are zero; hard margins small and large.
EDGE_PARAMS = [
    dict(target="arc", margin=0.5, hard_margin=0.2),
    dict(target="arc", margin=3.0, hard_margin=1.2),
    dict(target="arc", margin=0.0, hard_margin=0.0),
    dict(target="cos", margin=0.35, hard_margin=0.2),
    dict(target="cos", margin=0.0, hard_margin=1.2),
    dict(target="cos", margin=-0.2, hard_margin=0.5),
]


def all_variants(base_params):
    """base_params x every hard kind x every reduction."""
    for hard, reduction in itertools.product(HARDS, REDUCTIONS):
        yield dict(base_params, hard=hard, reduction=reduction, scale=64.0)


def check_rows(rows, labels, dtype, base_params, seed):
    cos = np.array(rows, dtype=np.float64).astype(dtype)
    labels = np.array(labels, dtype=np.int64)
    rng = rng_for("rows", seed)
    for params in all_variants(base_params):
        compare_all(cos, labels, params, rng, where=f"{params}")


# --- exactly +-1, and just outside ---------------------------------------------------------
PM1_ROWS = [
    [1.0, 1.0, -1.0, 0.5, -0.3, 0.0],     # target +1, negatives at +1 and -1
    [-1.0, 1.0, -1.0, 0.2, 0.9, -0.7],    # target -1
    [1.0, -1.0, -1.0, -1.0, -1.0, -1.0],  # target +1, every negative -1
    [-1.0, -1.0, -1.0, -1.0, -1.0, -1.0],  # everything -1
    [0.3, 1.0, -1.0, 1.0, -1.0, 0.1],     # target inside, negatives at both ends
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],       # everything +1
]


@dtypes
@pytest.mark.parametrize("base", EDGE_PARAMS, ids=lambda p: f"{p['target']}-m{p['margin']}")
def test_cosines_exactly_plus_minus_one(dtype, base):
    check_rows(PM1_ROWS, [0] * len(PM1_ROWS), dtype, base, ("pm1", str(dtype), str(base)))


def just_outside(dtype):
    """The first values past +1 and -1 (1 + 1e-7 and -1 - 1e-7 rounded to dtype; for float32
    those are one ulp away)."""
    if dtype == np.float32:
        return (float(np.nextafter(np.float32(1), np.float32(2))),
                float(np.nextafter(np.float32(-1), np.float32(-2))))
    return 1.0 + 1e-7, -1.0 - 1e-7


@dtypes
@pytest.mark.parametrize("base", EDGE_PARAMS, ids=lambda p: f"{p['target']}-m{p['margin']}")
def test_cosines_just_outside_the_unit_interval(dtype, base):
    hi, lo = just_outside(dtype)
    rows = [
        [hi, hi, lo, 0.5, -0.3],
        [lo, hi, lo, 0.2, 0.9],
        [0.4, hi, hi, lo, lo],
        [hi, lo, lo, lo, lo],
        [lo, lo, lo, lo, lo],
    ]
    check_rows(rows, [0] * len(rows), dtype, base, ("outside", str(dtype), str(base)))


@dtypes
@pytest.mark.parametrize("margin", [0.2, 0.5, 1.5])
@pytest.mark.parametrize("hard_margin", [0.0, 0.2, 1.2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_values_above_one_are_clamped_for_arc_and_amm(dtype, margin, hard_margin, reduction):
    """With target arc (m > 0) and hard amm, every value above 1 enters only through an angle
    (targets in the arc branch; negatives above 1 are always hard), so the result is bitwise that
    of the clamped input."""
    hi, _ = just_outside(dtype)
    cos = np.array([[hi, hi, 0.1, -0.5],
                    [0.3, hi, hi, 0.9],
                    [hi, 0.99, 1.0, -1.0]], dtype=dtype)
    labels = np.array([0, 0, 1])
    clipped = np.clip(cos, -1, 1)
    params = dict(target="arc", hard="amm", margin=margin, hard_margin=hard_margin,
                  reduction=reduction)
    loss, grad = call(LIB, "forward_backward", cos, labels, **params)
    loss_c, grad_c = call(LIB, "forward_backward", clipped, labels, **params)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
    assert np.array_equal(loss, loss_c)
    assert np.array_equal(grad, grad_c)


# --- the arc fallback boundary c_y = cos(pi - m) -------------------------------------------
def boundary_values(m, dtype):
    """cos(pi - m) in dtype and one ulp either side, with the branch each falls in:
    arc (theta + m < pi) exactly when c_y > cos(pi - m), compared in double."""
    b = math.cos(math.pi - m)
    centre = dtype(b)
    values = [np.nextafter(centre, dtype(-2)), centre, np.nextafter(centre, dtype(2))]
    return [(float(v), float(v) > b) for v in values]


@dtypes
@pytest.mark.parametrize("margin", [0.35, 0.5, 1.0, 2.0, 3.0])
def test_arc_fallback_boundary(dtype, margin):
    """At c_y = cos(pi - m) and one ulp either side, the branch is the one the formulation gives
    (f jumps there, so the wrong branch is a large error): the loss matches the closed form
    log(e^{s f} + e^{s c1} + e^{s c2}) - s f and the target's gradient uses df/dc = 1 in the
    fallback and cos m + sin m c / sin(theta) ~ 0 just inside the arc branch."""
    s = 8.0
    negatives = [-0.999, -0.5]
    rows, expected_loss, in_arc = [], [], []
    for cy, arc in boundary_values(margin, dtype):
        rows.append([cy] + negatives)
        f = math.cos(math.acos(cy) + margin) if arc else cy - margin * math.sin(margin)
        assert math.isclose(f, float(target_threshold(cy, dict(margin=margin))), abs_tol=1e-12)
        # hard='none': g = c; loss = log(1 + sum_j e^{s (c_j - f)}), accurate for tiny losses
        expected_loss.append(math.log1p(sum(math.exp(s * (c - f)) for c in negatives)))
        in_arc.append(arc)
    assert in_arc.count(True) >= 1 and in_arc.count(False) >= 1
    cos = np.array(rows, dtype=dtype)
    labels = np.zeros(3, dtype=np.int64)
    params = dict(target="arc", hard="none", margin=margin, scale=s, reduction="none")
    rtol, atol = (1e-5, 1e-6 * s) if dtype == np.float32 else (1e-12, 1e-15 * s)
    for module in (LIB, REF):
        loss, grad = call(module, "forward_backward", cos, labels, **params)
        np.testing.assert_allclose(loss, expected_loss, rtol=rtol, atol=atol,
                                   err_msg=module.__name__)
        for i, arc in enumerate(in_arc):
            if arc:   # df/dc = cos m + sin m * c / sin(theta) = 0 up to rounding here
                assert abs(grad[i, 0]) < 1e-3 * abs(grad[i, 1:]).sum() + 1e-4
            else:     # df/dc = 1: grad = s (p_y - 1)
                p = np.exp(np.array([s * rows[i][0] - s * margin * math.sin(margin)]
                                    + [s * c for c in negatives], dtype=np.float64))
                p /= p.sum()
                np.testing.assert_allclose(grad[i, 0], s * (p[0] - 1), rtol=1e-4)
    compare_all(cos, labels, params, rng_for("boundary", margin), where=f"{params}")


# --- amm: negatives with theta_j around t -------------------------------------------------
@dtypes
@pytest.mark.parametrize("hard_margin", [0.2, 0.5, 1.2])
@pytest.mark.parametrize("target", TARGETS)
def test_amm_negatives_around_the_hard_margin(dtype, hard_margin, target):
    """Hard negatives at cos(t) +- 1e-6: theta_j < t gives g = 1 and dg/dc = 0 (an exact zero
    gradient), theta_j > t gives cos(theta_j - t) and a small positive derivative."""
    ct = math.cos(hard_margin)
    above, below = ct + 1e-6, ct - 1e-6   # theta < t, theta > t
    cos = np.array([[-0.6, above, below, above, below, 0.0],
                    [-0.2, below, above, -0.9, 0.1, above]], dtype=dtype)
    labels = np.array([0, 0])
    params = dict(target=target, hard="amm", hard_margin=hard_margin, margin=0.3, scale=30.0,
                  reduction="sum")
    # the negatives around cos(t) are hard in both rows
    assert np.all(target_threshold(cos[:, 0], params) < ct - 1e-3)
    for module in (LIB, REF):
        grad = call(module, "backward", cos, labels, 1.0, **params)
        theta_below_t = cos.astype(np.float64) > ct
        theta_below_t[:, 0] = False
        assert np.all(grad[theta_below_t] == 0), module.__name__
        theta_above_t = cos.astype(np.float64) < ct   # hard with dg > 0, or easy (dg = 1)
        theta_above_t[:, 0] = False
        assert np.all(grad[theta_above_t] > 0), module.__name__
    compare_all(cos, labels, params, rng_for("amm-t", hard_margin), where=f"{params}")


# --- every negative hard, no negative hard ---------------------------------------------------
def mining_rows(rng, dtype, all_hard):
    n, c = 12, 40
    labels = rng.integers(0, c, n)
    if all_hard:   # c_y small, negatives large: f(c_y) < every negative
        cos = rng.uniform(0.2, 0.9, (n, c))
        cos[np.arange(n), labels] = rng.uniform(-0.6, -0.3, n)
    else:          # c_y close to 1, negatives well below f(c_y)
        cos = rng.uniform(-0.6, 0.5, (n, c))
        cos[np.arange(n), labels] = rng.uniform(0.985, 0.999, n)
    return cos.astype(dtype), labels


@dtypes
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_every_negative_hard(dtype, target, reduction):
    rng = rng_for("all-hard", DTYPE_IDS[dtype], target, reduction)
    cos, labels = mining_rows(rng, dtype, all_hard=True)
    base = dict(target=target, margin=0.5, reduction=reduction, scale=30.0)
    f = target_threshold(cos[np.arange(len(labels)), labels], base)
    negatives = np.ones(cos.shape, bool)
    negatives[np.arange(len(labels)), labels] = False
    assert (cos > f[:, None])[negatives].all()
    plain = call(LIB, "forward", cos, labels, hard="none", hard_margin=0.3, **base)
    for hard in HARDS:
        params = dict(base, hard=hard, hard_margin=1.2 if hard.startswith("mv") else 0.3)
        compare_all(cos, labels, params, rng, where=f"{params}")
        if hard != "none":  # every negative logit is raised by the hard margin
            loss = call(LIB, "forward", cos, labels, **params)
            assert np.all(np.asarray(loss) > np.asarray(plain))


@dtypes
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_no_negative_hard_means_every_hard_kind_agrees(dtype, target, reduction):
    """Easy negatives always have g = c, so with no hard negative every hard kind gives bitwise
    the same loss and gradient."""
    rng = rng_for("none-hard", DTYPE_IDS[dtype], target, reduction)
    cos, labels = mining_rows(rng, dtype, all_hard=False)
    base = dict(target=target, margin=0.5 if target == "arc" else 0.35, reduction=reduction,
                hard_margin=0.7, scale=64.0)
    results = [call(LIB, "forward_backward", cos, labels, hard=h, **base) for h in HARDS]
    for loss, grad in results[1:]:
        assert np.array_equal(loss, results[0][0])
        assert np.array_equal(grad, results[0][1])
    compare_all(cos, labels, dict(base, hard="amm"), rng, where="no hard negatives")


@dtypes
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("hard,t", [("amm", 0.0), ("mv-fixed", 1.0), ("mv-adaptive", 0.0)])
def test_degenerate_hard_margins_reduce_to_plain(dtype, target, hard, t):
    """amm with t = 0, mv-fixed with t = 1 and mv-adaptive with t = 0 all give g(c) = c and
    dg/dc = 1 for cosines in [-1, 1) (for amm at c = 1 exactly, theta = 0 <= t and dg/dc = 0):
    the loss and gradient are bitwise those of hard='none'."""
    rng = rng_for("degenerate", DTYPE_IDS[dtype], target, hard)
    cos, labels = random_problem(rng, 50, 300, dtype, dict(target=target))
    cos = np.clip(cos, -1, 0.999).astype(dtype)
    params = dict(target=target, reduction="none", scale=30.0)
    loss, grad = call(LIB, "forward_backward", cos, labels, hard=hard, hard_margin=t, **params)
    loss0, grad0 = call(LIB, "forward_backward", cos, labels, hard="none", hard_margin=t, **params)
    assert np.array_equal(loss, loss0)
    assert np.array_equal(grad, grad0)


# --- degenerate shapes ------------------------------------------------------------------------
@pytest.mark.parametrize("module", MODULES)
@dtypes
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("hard", HARDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_one_class_gives_zero_loss_and_gradient(module, dtype, target, hard, reduction):
    cos = np.array([[0.3], [1.0], [-1.0], [1.0 + 1e-7], [-1 - 1e-7], [0.0]], dtype=dtype)
    labels = np.zeros(len(cos), dtype=np.int64)
    params = dict(target=target, hard=hard, reduction=reduction, scale=64.0, margin=0.5)
    loss, grad = call(module, "forward_backward", cos, labels, **params)
    assert np.all(np.asarray(loss) == 0)
    assert grad.shape == (len(cos), 1) and grad.dtype == dtype and np.all(grad == 0)
    g = np.linspace(-2, 2, len(cos)) if reduction == "none" else 3.0
    assert np.all(call(module, "backward", cos, labels, g, **params) == 0)


@pytest.mark.parametrize("module", MODULES)
@dtypes
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("classes", [1, 7])
def test_no_rows(module, dtype, reduction, classes):
    cos = np.zeros((0, classes), dtype=dtype)
    labels = np.zeros(0, dtype=np.int64)
    loss = call(module, "forward", cos, labels, reduction=reduction)
    loss_fb, grad = call(module, "forward_backward", cos, labels, reduction=reduction)
    upstreams = [np.zeros(0), 2.0] if reduction == "none" else [2.0]
    for g in upstreams:
        grad_b = call(module, "backward", cos, labels, g, reduction=reduction)
        assert grad_b.shape == (0, classes) and grad_b.dtype == dtype
    assert grad.shape == (0, classes) and grad.dtype == dtype
    for value in (loss, loss_fb):
        if reduction == "none":
            assert isinstance(value, np.ndarray)
            assert value.shape == (0,) and value.dtype == dtype
        else:
            assert type(value) is float and value == 0.0


@pytest.mark.parametrize("module", MODULES)
@dtypes
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_index", [-100, -1, 2])
def test_every_row_ignored(module, dtype, reduction, ignore_index):
    """Loss 0 (mean too: no division by zero), gradient all zero, even when the ignored rows hold
    NaN or infinities."""
    rng = rng_for("all-ignored", DTYPE_IDS[dtype], reduction, ignore_index)
    cos = rng.uniform(-1, 1, (9, 5)).astype(dtype)
    cos[1, 2], cos[4, 0], cos[7, 4] = np.nan, np.inf, -np.inf
    labels = np.full(9, ignore_index)
    params = dict(reduction=reduction, ignore_index=ignore_index)
    loss, grad = call(module, "forward_backward", cos, labels, **params)
    assert np.array_equal(loss, call(module, "forward", cos, labels, **params))
    if reduction == "none":
        assert loss.dtype == dtype and np.array_equal(loss, np.zeros(9))
    else:
        assert type(loss) is float and loss == 0.0
    assert grad.dtype == dtype and np.array_equal(grad, np.zeros((9, 5)))
    g = rng.normal(size=9) if reduction == "none" else 5.0
    assert np.array_equal(call(module, "backward", cos, labels, g, **params), np.zeros((9, 5)))


IGNORE_VALUES = [-100, -1, 0, 3, 10**12, -(2**63), 2**63 - 1]


@dtypes
@pytest.mark.parametrize("ignore_index", IGNORE_VALUES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_some_rows_ignored(dtype, ignore_index, reduction):
    """Ignored rows give exactly 0 loss (none) and an all-zero gradient row, may hold NaN, and
    the other rows are bitwise those of the problem without the ignored rows. An ignore_index
    inside [0, C) makes that class label mean 'ignore' (the class still counts as a negative
    in the other rows)."""
    rng = rng_for("some-ignored", DTYPE_IDS[dtype], ignore_index, reduction)
    n, c = 60, 25
    params = dict(reduction=reduction, ignore_index=ignore_index, scale=30.0)
    cos, labels = random_problem(rng, n, c, dtype, params)
    if 0 <= ignore_index < c:
        ignored = labels == ignore_index
        extra = rng.random(n) < 0.2
        labels[extra] = ignore_index
        ignored |= extra
    else:
        ignored = rng.random(n) < 0.3
        labels[ignored] = ignore_index
    assert 0 < ignored.sum() < n
    cos[np.flatnonzero(ignored)[0], 3] = np.nan
    cos[np.flatnonzero(ignored)[-1], 0] = -np.inf
    kept = ~ignored

    loss, grad = call(LIB, "forward_backward", cos, labels, **params)
    assert np.all(grad[ignored] == 0)
    sub_loss, sub_grad = call(LIB, "forward_backward", cos[kept], labels[kept], **params)
    assert np.array_equal(grad[kept], sub_grad)
    if reduction == "none":
        assert np.all(loss[ignored] == 0)
        assert np.array_equal(loss[kept], sub_loss)
    else:
        assert loss == sub_loss
    g = rng.normal(size=n) if reduction == "none" else -2.5
    grad_g = call(LIB, "backward", cos, labels, g, **params)
    assert np.all(grad_g[ignored] == 0)
    compare_all(cos, labels, params, rng, where=f"{params}")


# --- sizes and scales -------------------------------------------------------------------------
@dtypes
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_huge_number_of_classes(dtype, reduction):
    rng = rng_for("huge-C", DTYPE_IDS[dtype], reduction)
    params = dict(reduction=reduction, target="arc", hard="amm")
    cos, labels = random_problem(rng, 3, 200_000, dtype, params)
    compare_all(cos, labels, params, rng, where="C=200000")


@dtypes
@pytest.mark.parametrize("scale", [1000.0, 1e4])
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("hard", HARDS)
def test_large_scale(dtype, scale, target, hard):
    """Logits in the thousands: exp overflows unless every row is shifted by its maximum."""
    rng = rng_for("large-scale", DTYPE_IDS[dtype], scale, target, hard)
    params = dict(scale=scale, target=target, hard=hard, reduction="none", hard_margin=0.4)
    cos, labels = random_problem(rng, 40, 300, dtype, params)
    loss, _ = compare_all(cos, labels, params, rng, where=f"{params}")
    assert np.all(loss >= 0)


@dtypes
@pytest.mark.parametrize("target", TARGETS)
def test_tiny_losses_keep_relative_precision(dtype, target):
    """A well-classified row (c_y = 1, negatives -1) has loss log1p((C-1) e^{s(g - f)}), far
    below the rounding error of the logits; the library keeps it to relative precision (the
    header: 'computed as log1p when the target holds the maximum')."""
    s, m, c = 30.0, 0.35, 9
    cos = np.full((2, c), -1.0, dtype=dtype)
    cos[:, 0] = 1.0
    labels = np.zeros(2, dtype=np.int64)
    params = dict(scale=s, margin=m, target=target, hard="none", reduction="none")
    f = math.cos(m) if target == "arc" else 1.0 - m
    # df/dc at c_y = 1: sin(theta) = 0 is floored at 1e-7 (docs/FORMULATION.md, "Angles")
    df = math.cos(m) + math.sin(m) * 1.0 / 1e-7 if target == "arc" else 1.0
    e = (c - 1) * math.exp(s * (-1.0 - f))
    want_loss = math.log1p(e)
    want_grad_target = -s * (e / (1 + e)) * df
    loss, grad = call(LIB, "forward_backward", cos, labels, **params)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss, [want_loss] * 2, rtol=rtol)
    np.testing.assert_allclose(grad[:, 0], [want_grad_target] * 2, rtol=rtol)
    np.testing.assert_allclose(grad[:, 1:], s * e / (1 + e) / (c - 1), rtol=rtol)


@dtypes
@pytest.mark.parametrize("classes", [2, 50, 10_000])
@pytest.mark.parametrize("value", [-1.0, 0.3, 1.0])
def test_all_values_identical_closed_form(dtype, classes, value):
    """Every cosine equal, CosFace with m = 0, no re-weighting: every logit equal, so the loss is
    log C and the gradient s (1/C - [j == y])."""
    cos = np.full((3, classes), value, dtype=dtype)
    labels = np.array([0, classes - 1, classes // 2])
    s = 64.0
    params = dict(target="cos", margin=0.0, hard="none", scale=s, reduction="none")
    loss, grad = call(LIB, "forward_backward", cos, labels, **params)
    want = np.full((3, classes), s / classes)
    want[np.arange(3), labels] -= s
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss, [math.log(classes)] * 3, rtol=rtol)
    np.testing.assert_allclose(grad, want, rtol=rtol, atol=rtol * s)


@dtypes
@pytest.mark.parametrize("base", [p for p in EDGE_PARAMS if p["margin"] > 0],
                         ids=lambda p: f"{p['target']}-m{p['margin']}")
def test_many_identical_values(dtype, base):
    """Rows of repeated values (negatives equal to each other, to the target or to +-1). Only
    margins > 0: with m = 0 a negative equal to c_y would tie with f(c_y), and for arc the two
    sides compute f(c_y) = c_y by different formulas (a rounding-dependent mining decision)."""
    rows = [
        [0.3] * 8,
        [0.7] + [0.2] * 7,
        [0.2] + [0.7] * 7,
        [0.5, 0.5, 0.5, -0.5, -0.5, -0.5, 0.5, -0.5],
        [0.9] * 4 + [1.0] * 4,
    ]
    check_rows(rows, [0, 0, 0, 1, 5], dtype, base, ("identical", str(dtype), str(base)))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("scale,hard", [(1e39, "amm"), (2e38, "mv-adaptive")])
def test_float32_logits_beyond_the_float32_range_are_not_silent_nan(scale, hard):
    """Parameters that pass validation (scale finite and > 0) but whose logits s * g overflow
    float32 (s = 1e39 is not even a float32; s = 2e38 with g up to 2t + 1 = 3.4) must not give a
    silent NaN: either a ValueError naming scale, or a loss and gradient without NaN (the
    reference returns a finite mean loss, ~1e39, and inf for the per-row losses)."""
    cos, labels = random_problem(rng_for("f32-overflow", scale), 5, 7, np.float32)
    params = dict(scale=scale, hard=hard, hard_margin=1.2)
    assert math.isfinite(call(REF, "forward", cos, labels, **params))
    try:
        loss, grad = call(LIB, "forward_backward", cos, labels, **params)
    except ValueError as e:
        assert "scale" in str(e)
        return
    assert not math.isnan(loss), "NaN loss for valid parameters"
    assert not np.isnan(grad).any(), f"{int(np.isnan(grad).sum())} NaN gradient entries"
