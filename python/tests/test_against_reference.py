"""The compiled library against amm_softmax.reference, for every target x hard x reduction, in
float32 and float64, for forward, backward (non-trivial upstream gradients) and
forward_backward. Tolerances: helpers.py."""
import itertools

import numpy as np
import pytest

from helpers import (DTYPES, HARDS, LIB, REDUCTIONS, TARGETS, call, compare_all, full_params,
                     random_problem, rng_for)

# (scale, margin, hard_margin). For arc, margin 3.0 sends theta + m past pi for almost every
# target (the fallback branch), 1.5 for about half of them.
PARAMS = {
    "arc": [(1.0, 0.0, 0.0), (30.0, 0.35, 0.2), (64.0, 0.5, 1.2), (64.0, 3.0, 0.2),
            (30.0, 1.5, 0.0), (64.0, 0.5, 0.2)],
    "cos": [(1.0, 0.0, 0.0), (30.0, 0.35, 0.2), (64.0, 0.5, 1.2), (64.0, -0.2, 0.2),
            (30.0, 1.5, 0.0), (64.0, 0.35, 1.2)],
}

COMBOS = list(itertools.product(DTYPES, TARGETS, HARDS, REDUCTIONS))


def combo_id(dtype, target, hard, reduction):
    return f"{np.dtype(dtype).name}-{target}-{hard}-{reduction}"


def params_for(target, hard, reduction, smt):
    s, m, t = smt
    return dict(scale=s, margin=m, hard_margin=t, target=target, hard=hard,
                reduction=reduction)


@pytest.mark.parametrize("dtype,target,hard,reduction", COMBOS,
                         ids=[combo_id(*c) for c in COMBOS])
def test_big_problem(dtype, target, hard, reduction):
    """One large problem per combination: N >= 300, C >= 5000, some rows ignored."""
    k = COMBOS.index((dtype, target, hard, reduction))
    smt = PARAMS[target][k % len(PARAMS[target])]
    params = params_for(target, hard, reduction, smt)
    rng = rng_for("big", k)
    n, c = 300 + k % 7, 5000 + 13 * k
    cos, labels = random_problem(rng, n, c, dtype, params, ignore_fraction=0.05)
    compare_all(cos, labels, params, rng, where=f"N={n} C={c} {params}")


SMALL = [(*combo, smt) for combo in COMBOS for smt in PARAMS[combo[1]]]


@pytest.mark.parametrize("dtype,target,hard,reduction,smt", SMALL,
                         ids=[f"{combo_id(*c[:4])}-s{c[4][0]:g}-m{c[4][1]:g}-t{c[4][2]:g}"
                              for c in SMALL])
def test_small_problems(dtype, target, hard, reduction, smt):
    """Random shapes (N 1..80, C 2..500) over a grid of scale, margin and hard_margin."""
    params = params_for(target, hard, reduction, smt)
    rng = rng_for("small", np.dtype(dtype).name, target, hard, reduction, smt)
    for _ in range(2):
        n, c = int(rng.integers(1, 81)), int(rng.integers(2, 501))
        cos, labels = random_problem(rng, n, c, dtype, params, ignore_fraction=0.1)
        compare_all(cos, labels, params, rng, where=f"N={n} C={c} {params}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("hard", HARDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_forward_backward_is_forward_and_backward(dtype, target, hard, reduction):
    """forward_backward gives bitwise the loss of forward and the gradient of backward with
    grad_output = 1 (the same kernel, the same upstream factor)."""
    params = dict(target=target, hard=hard, reduction=reduction, scale=30.0, margin=0.4,
                  hard_margin=0.3)
    rng = rng_for("fb", np.dtype(dtype).name, target, hard, reduction)
    cos, labels = random_problem(rng, 37, 211, dtype, params, ignore_fraction=0.2)
    loss, grad = call(LIB, "forward_backward", cos, labels, **params)
    assert np.array_equal(loss, call(LIB, "forward", cos, labels, **params))
    assert np.array_equal(grad, call(LIB, "backward", cos, labels, 1.0, **params))
    assert np.array_equal(grad, call(LIB, "backward", cos, labels, **params))  # default 1.0


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("hard", HARDS)
def test_reductions_agree(dtype, target, hard):
    """sum = sum of the per-row losses, mean = sum / (rows not ignored); the gradients of mean and
    sum differ by exactly that count; ignored rows give 0 in 'none'."""
    rng = rng_for("reductions", np.dtype(dtype).name, target, hard)
    params = dict(target=target, hard=hard, scale=64.0)
    cos, labels = random_problem(rng, 90, 333, dtype, params, ignore_fraction=0.3)
    kept = labels != -100
    count = int(kept.sum())
    per_row = call(LIB, "forward", cos, labels, reduction="none", **params)
    total = call(LIB, "forward", cos, labels, reduction="sum", **params)
    mean = call(LIB, "forward", cos, labels, reduction="mean", **params)
    assert np.all(per_row[~kept] == 0)
    assert np.all(per_row[kept] > 0)
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(total, per_row.astype(np.float64).sum(), rtol=rtol)
    np.testing.assert_allclose(mean, total / count, rtol=rtol)
    g_sum = call(LIB, "backward", cos, labels, 1.0, reduction="sum", **params)
    g_mean = call(LIB, "backward", cos, labels, 1.0, reduction="mean", **params)
    g_none = call(LIB, "backward", cos, labels, np.ones(len(labels)), reduction="none", **params)
    np.testing.assert_allclose(g_mean * count, g_sum, rtol=10 * rtol,
                               atol=10 * rtol * np.abs(g_sum).max())
    assert np.array_equal(g_none, g_sum)


def test_defaults_are_those_of_the_formulation():
    """No keyword = scale 64, margin 0.5, hard_margin 0.2, arc, amm, mean, ignore_index -100."""
    rng = rng_for("defaults")
    cos, labels = random_problem(rng, 20, 50, np.float64)
    labels[3] = -100
    explicit = full_params()
    loss = call(LIB, "forward", cos, labels, **explicit)
    assert call(LIB, "forward", cos, labels) == loss
    assert call(LIB, "forward", cos, labels, num_threads=0) == loss
    grad = call(LIB, "backward", cos, labels, **explicit)
    assert np.array_equal(call(LIB, "backward", cos, labels), grad)
