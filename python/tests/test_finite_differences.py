"""backward against central finite differences of forward (float64), on small problems drawn
away from every point where the loss is not smooth (mining thresholds, the arc fallback boundary,
theta_j = t for amm, |c| = 1), so that a step of 1e-6 does not cross any of them."""
import math

import numpy as np
import pytest

from helpers import HARDS, LIB, REF, REDUCTIONS, call, rng_for, target_threshold

MODULES = [pytest.param(LIB, id="library"), pytest.param(REF, id="reference")]
HARD_MARGIN = {"amm": 0.3, "mv-fixed": 1.2, "mv-adaptive": 0.2, "none": 0.2, "curricular": -0.4}
TARGET_CASES = [("arc", 0.5), ("arc", 2.5), ("cos", 0.35)]
GAP = 1e-3   # the least distance from any non-smooth point
STEP = 1e-6


def smooth_problem(rng, params, n=4, c=7):
    """Rejection sampling: a problem whose loss is smooth within GAP of every entry, with at
    least one hard negative (so the hard kind matters) and, for arc, targets on both sides of
    the fallback boundary when the margin is large."""
    m, t = params["margin"], params["hard_margin"]
    for _ in range(10_000):
        cos = rng.uniform(-0.95, 0.95, (n, c))
        labels = rng.integers(0, c, n)
        rows = np.arange(n)
        cy = cos[rows, labels]
        f = target_threshold(cy, params)
        neg = np.ones((n, c), bool)
        neg[rows, labels] = False
        if np.any(np.abs(cos - f[:, None])[neg] < GAP):
            continue
        if not (cos > f[:, None])[neg].any():
            continue
        if params["target"] == "arc":
            boundary = math.cos(math.pi - m)
            if np.any(np.abs(cy - boundary) < GAP):
                continue
            if m > 2 and not (np.any(cy > boundary) and np.any(cy < boundary)):
                continue
        if params["hard"] == "amm" and np.any(np.abs(np.arccos(cos) - t) < GAP):
            continue
        return cos, labels
    raise AssertionError("no smooth problem found")


def objective(module, cos, labels, weights, params):
    loss = call(module, "forward", cos, labels, **params)
    return float(np.dot(weights, loss)) if params["reduction"] == "none" else loss


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("target,margin", TARGET_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("hard", HARDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_backward_is_the_derivative_of_forward(module, target, margin, hard, reduction):
    params = dict(target=target, margin=margin, hard=hard, hard_margin=HARD_MARGIN[hard],
                  reduction=reduction, scale=4.0)
    rng = rng_for("fd", target, margin, hard, reduction)
    cos, labels = smooth_problem(rng, params)
    n, c = cos.shape
    weights = rng.uniform(-2, 2, n)
    grad_output = weights if reduction == "none" else 1.5
    grad = call(module, "backward", cos, labels, grad_output, **params)
    scale_out = 1.0 if reduction == "none" else grad_output

    # every target entry, every hard negative, and a few easy ones
    f = target_threshold(cos[np.arange(n), labels], params)
    entries = [(i, int(labels[i])) for i in range(n)]
    entries += [tuple(ij) for ij in np.argwhere(cos > f[:, None]) if ij[1] != labels[ij[0]]]
    entries += [tuple(ij) for ij in rng.integers(0, [n, c], (4, 2))]
    for i, j in entries:
        up, down = cos.copy(), cos.copy()
        up[i, j] += STEP
        down[i, j] -= STEP
        numeric = scale_out * (objective(module, up, labels, weights, params)
                               - objective(module, down, labels, weights, params)) / (2 * STEP)
        assert grad[i, j] == pytest.approx(numeric, rel=1e-6, abs=1e-8), (i, j)
