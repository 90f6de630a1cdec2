"""Since 0.3: CurricularFace (hard="curricular", its t and the target_cosines= output) and the
straight-through margin gradient, against the reference and against insightface's formulation
written here from its description (the margin applied to the logits, the gradient of plain
softmax cross-entropy on them)."""
import numpy as np
import pytest

import amm_softmax
from amm_softmax import reference
from amm_softmax._shard import SingleProcess, cosine_forward_backward

from helpers import rng_for

DTYPES = (np.float32, np.float64)


def tol(dtype):
    return 2e-5 if dtype == np.float32 else 1e-11


def problem(n, c, dtype, seed, ignore=True):
    rng = rng_for("curricular", n, c, seed)
    cos = rng.uniform(-0.6, 0.95, (n, c)).astype(dtype)
    labels = rng.integers(0, c, n)
    cos[np.arange(n), labels] = rng.uniform(-0.2, 0.9, n).astype(dtype)
    if ignore and n > 2:
        labels[1] = -100
    return cos, labels


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t", [-0.7, 0.0, 0.35, 2.5])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_curricular_against_the_reference(dtype, t, reduction):
    cos, labels = problem(37, 1500, dtype, 1)
    params = dict(hard="curricular", hard_margin=t, scale=32.0, reduction=reduction)
    loss, grad = amm_softmax.forward_backward(cos, labels, **params)
    want_loss, want_grad = reference.forward_backward(cos, labels, **params)
    np.testing.assert_allclose(loss, want_loss, rtol=tol(dtype), atol=tol(dtype))
    scale = np.abs(want_grad).max()
    np.testing.assert_allclose(grad, want_grad, rtol=0, atol=tol(dtype) * scale * 10)
    # Curricular's hard negatives are re-weighted: the loss differs from plain ArcFace's.
    plain = amm_softmax.forward(cos, labels, hard="none", scale=32.0, reduction=reduction)
    assert not np.allclose(loss, plain)


def test_curricular_g_and_its_derivative():
    """One hard negative, by hand: g = c (t + c), dg/dc = t + 2c."""
    t, s = 0.3, 2.0
    cos = np.array([[0.5, 0.6, -0.1]])
    labels = np.array([0])
    params = dict(target="cos", margin=0.2, hard="curricular", hard_margin=t, scale=s)
    f = 0.5 - 0.2                              # 0.6 > f is hard; -0.1 is not
    z = s * np.array([f, 0.6 * (t + 0.6), -0.1])
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    loss, grad = amm_softmax.forward_backward(cos, labels, **params)
    assert loss == pytest.approx(-np.log(p[0]), rel=1e-13)
    np.testing.assert_allclose(grad[0], s * (p - [1, 0, 0]) * [1, t + 1.2, 1], rtol=1e-12)


def insightface_gradient(cos, labels, scale, margin, hard_logit=None):
    """d loss / d cos for insightface's CombinedMarginLoss (the margin under no_grad): the
    softmax cross-entropy gradient of the margined logits, applied to cos as it is."""
    n = cos.shape[0]
    rows = np.arange(n)
    logits = cos.astype(np.float64).copy()
    cy = logits[rows, labels]
    f = np.cos(np.arccos(np.clip(cy, -1, 1)) + margin)
    f = np.where(cy > np.cos(np.pi - margin), f, cy - margin * np.sin(margin))
    if hard_logit is not None:
        hard = logits > f[:, None]
        hard[rows, labels] = False
        logits = np.where(hard, hard_logit(logits), logits)
    logits[rows, labels] = f
    z = scale * logits
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    onehot = np.zeros_like(p)
    onehot[rows, labels] = 1
    return scale * (p - onehot) / n


@pytest.mark.parametrize("dtype", DTYPES)
def test_straight_through_is_insightfaces_arcface(dtype):
    cos, labels = problem(24, 300, dtype, 2, ignore=False)
    params = dict(hard="none", margin=0.5, scale=64.0, margin_gradient="straight-through")
    loss, grad = amm_softmax.forward_backward(cos, labels, **params)
    want = insightface_gradient(cos, labels, 64.0, 0.5)
    np.testing.assert_allclose(grad, want, rtol=0, atol=tol(dtype) * np.abs(want).max() * 10)
    # The forward values do not change; the exact gradient differs at the targets.
    exact_loss, exact_grad = amm_softmax.forward_backward(cos, labels, hard="none", margin=0.5,
                                                          scale=64.0)
    assert loss == exact_loss
    assert not np.allclose(grad, exact_grad)


@pytest.mark.parametrize("hard", ["amm", "mv-fixed", "mv-adaptive", "curricular"])
@pytest.mark.parametrize("target", ["arc", "cos"])
def test_straight_through_every_variant(hard, target):
    cos, labels = problem(19, 700, np.float64, 3)
    params = dict(hard=hard, target=target, margin=0.3, scale=16.0,
                  hard_margin=1.2 if hard == "mv-fixed" else 0.2,
                  margin_gradient="straight-through")
    for fn in ("forward_backward",):
        got = getattr(amm_softmax, fn)(cos, labels, **params)
        want = getattr(reference, fn)(cos, labels, **params)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
        np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-13)
    upstream = np.float64(0.37)
    np.testing.assert_allclose(amm_softmax.backward(cos, labels, upstream, **params),
                               reference.backward(cos, labels, upstream, **params),
                               rtol=0, atol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("margin_gradient", ["exact", "straight-through"])
def test_head(dtype, margin_gradient):
    rng = rng_for("curricular head", dtype)
    x = rng.normal(size=(20, 16)).astype(dtype)
    w = rng.normal(size=(400, 16)).astype(dtype)
    labels = rng.integers(0, 400, 20)
    labels[3] = -100
    params = dict(hard="curricular", hard_margin=-0.2, scale=16.0, margin_gradient=margin_gradient)
    tc = np.full(20, np.nan)
    got = amm_softmax.head_forward_backward(x, w, labels, target_cosines=tc, **params)
    want_tc = np.full(20, np.nan)
    want = reference.head_forward_backward(x, w, labels, target_cosines=want_tc, **params)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=tol(dtype) * 10, atol=tol(dtype) * 10)
    np.testing.assert_allclose(tc, want_tc, rtol=0, atol=1e-6 if dtype == np.float32 else 1e-14)
    assert tc[3] == 0.0
    # With sampling every class kept (rate 1 path) and with the sharded protocol: the same.
    tc_sampled = np.full(20, np.nan)
    amm_softmax.head_forward_backward(x, w, labels, target_cosines=tc_sampled, sample_rate=0.5,
                                      **params)
    np.testing.assert_allclose(tc_sampled, tc, rtol=0, atol=1e-6 if dtype == np.float32 else 1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fn", ["forward", "backward", "forward_backward"])
def test_target_cosines_are_the_cosines(dtype, fn):
    cos, labels = problem(33, 50, dtype, 4)
    out = np.full(33, np.nan)
    getattr(amm_softmax, fn)(cos, labels, target_cosines=out)
    kept = labels != -100
    want = np.zeros(33)
    want[kept] = cos[np.arange(33), np.where(kept, labels, 0)][kept].astype(np.float64)
    np.testing.assert_array_equal(out, want)        # exact: widened, never rounded
    ref = np.full(33, np.nan)
    getattr(reference, fn)(cos, labels, target_cosines=ref)
    np.testing.assert_array_equal(ref, want)
    sharded = np.full(33, np.nan)
    cosine_forward_backward(cos, labels, SingleProcess(), target_cosines=sharded)
    np.testing.assert_array_equal(sharded, want)


def test_curricular_t_update():
    c = np.array([0.2, 0.9, -5.0, 0.4])
    labels = np.array([1, 2, -100, 0])
    t = amm_softmax.curricular_t(0.5, c, labels)
    assert t == pytest.approx(0.01 * 0.5 + 0.99 * 0.5)
    assert amm_softmax.curricular_t(0.5, c) == pytest.approx(0.01 * np.mean(c) + 0.99 * 0.5)
    assert amm_softmax.curricular_t(0.25, c[2:3], labels[2:3]) == 0.25   # no row: unchanged
    assert reference.curricular_t(0.5, c, labels) == t
    with pytest.raises(ValueError, match="finite"):
        amm_softmax.curricular_t(float("nan"), c)


def test_errors():
    cos, labels = problem(4, 6, np.float64, 5)
    with pytest.raises(ValueError, match="margin_gradient = 'bogus'"):
        amm_softmax.forward(cos, labels, margin_gradient="bogus")
    with pytest.raises(TypeError, match="margin_gradient must be a string"):
        amm_softmax.forward(cos, labels, margin_gradient=1)
    with pytest.raises(ValueError, match="hard_margin = -0.5"):
        amm_softmax.forward(cos, labels, hard="amm", hard_margin=-0.5)
    amm_softmax.forward(cos, labels, hard="curricular", hard_margin=-0.5)   # any finite t
    with pytest.raises(ValueError, match="hard_margin = inf"):
        amm_softmax.forward(cos, labels, hard="curricular", hard_margin=np.inf)
    with pytest.raises(TypeError, match="target_cosines must have dtype float64"):
        amm_softmax.forward(cos, labels, target_cosines=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"target_cosines must have shape \(4,\)"):
        amm_softmax.forward(cos, labels, target_cosines=np.zeros(5))
    counts = np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="target_cosines must not overlap"):
        amm_softmax.forward(cos, labels, hard_negatives=counts,
                            target_cosines=counts.view(np.float64))
