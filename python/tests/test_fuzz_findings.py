"""Each defect the C ABI fuzzer found (Tests/fuzz/README.md, "Defects found"), as its reduced
reproducer through the C interface (ctypes), so that a regression fails here by name even
where the random run would take long to meet it again."""
import ctypes
import sys

import numpy as np
import pytest

from amm_softmax import _library as L

INT64_MAX = 2**63 - 1
DBL_MAX = sys.float_info.max


def ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


def params(**fields):
    p = L.AmmParams()
    lib = L.load()
    lib.amm_params_init(ctypes.byref(p))
    for name, value in fields.items():
        setattr(p, name, value)
    return p


def last_error():
    return L.load().amm_last_error().decode()


@pytest.mark.parametrize("struct_size", [65, 68, 71])
def test_a_partly_covered_pointer_keeps_its_default(struct_size):
    """Defect 1: struct_size 65..71 does not cover hard_negatives (offset 64): the library must
    not write counts through the caller's low bytes spliced over the default's high bytes."""
    lib = L.load()
    counts = np.full(2, -7, np.int64)
    p = params(struct_size=struct_size, hard_negatives=counts.ctypes.data)
    cos = np.array([[0.1, 0.9], [0.8, 0.2]])
    labels = np.array([0, 1], np.int64)
    loss = np.zeros(1)
    status = lib.amm_forward_f64(ctypes.byref(p), ptr(cos), 2, 2, ptr(labels), ptr(loss))
    assert status == L.AMM_OK, last_error()
    np.testing.assert_array_equal(counts, [-7, -7])   # not covered: not written


@pytest.mark.parametrize("c", [INT64_MAX, 2**62])
@pytest.mark.parametrize("function", ["amm_backward_f64", "amm_forward_backward_f64"])
def test_no_rows_with_a_huge_class_count(function, c):
    """Defect 2: n = 0 with any c is a valid problem without rows: no per-row scratch sized
    from c (it overflowed at INT64_MAX and could not be allocated at 2^62)."""
    lib = L.load()
    p = params()
    cos, grad, labels = np.zeros(1), np.zeros(1), np.zeros(1, np.int64)
    one = np.ones(1)
    last = ptr(one) if function == "amm_backward_f64" else ptr(np.zeros(1))
    args = [ctypes.byref(p), ptr(cos), 0, c, ptr(labels), last, ptr(grad)]
    assert getattr(lib, function)(*args) == L.AMM_OK, last_error()


def test_a_shard_at_the_top_of_the_class_range():
    """Defect 3: row i >= 1 whose target lies in a shard ending at INT64_MAX: the index
    i * c_local + label - class_start overflowed when formed left to right."""
    lib = L.load()
    p = params()
    cos = np.array([[0.1, 0.2], [0.3, 0.4]])
    labels = np.array([0, INT64_MAX - 1], np.int64)
    target = np.zeros(2)
    status = lib.amm_shard_target_f64(ctypes.byref(p), ptr(cos), 2, 2, INT64_MAX - 2, INT64_MAX,
                                      ptr(labels), ptr(target))
    assert status == L.AMM_OK, last_error()
    np.testing.assert_array_equal(target, [0.0, 0.4])


@pytest.mark.parametrize("hard", [1, 2])
def test_f32_hard_margin_beyond_float(hard):
    """Defect 4: in f32 a weight t beyond float's range made t c + t - 1 NaN for c < 0 and the
    NaN logit was dropped (AMM_OK, loss 0). t must be finite as a float, as the scale is."""
    lib = L.load()
    p = params(scale=1, target=1, margin=2, hard=hard, hard_margin=1e300)
    cos = np.array([[-0.85, -0.92]], np.float32)
    labels = np.array([0], np.int64)
    loss, grad = np.zeros(1, np.float32), np.zeros((1, 2), np.float32)
    status = lib.amm_forward_backward_f32(ctypes.byref(p), ptr(cos), 1, 2, ptr(labels),
                                          ptr(loss), ptr(grad))
    assert status == L.AMM_ERR_PARAM
    assert "hard_margin = 1e+300" in last_error() and "Float" in last_error()
    # The f64 functions take it (the loss is 8e298 there).
    cos64 = cos.astype(np.float64)
    loss64, grad64 = np.zeros(1), np.zeros((1, 2))
    status = lib.amm_forward_backward_f64(ctypes.byref(p), ptr(cos64), 1, 2, ptr(labels),
                                          ptr(loss64), ptr(grad64))
    assert status == L.AMM_OK, last_error()
    assert 1e298 < loss64[0] < 1e300 and np.isfinite(grad64).all()


def test_f32_scale_that_rounds_to_zero():
    """Defect 4's sibling: a scale that rounds to 0 in float would make 0 * inf = NaN of a
    logit beyond float (t c + t with t near FLT_MAX), a NaN dropped as above."""
    lib = L.load()
    p = params(scale=1e-300, hard=1, hard_margin=2.0**127)
    cos = np.array([[0.2, 0.98]], np.float32)
    labels = np.array([0], np.int64)
    loss = np.zeros(1, np.float32)
    status = lib.amm_forward_f32(ctypes.byref(p), ptr(cos), 1, 2, ptr(labels), ptr(loss))
    assert status == L.AMM_ERR_PARAM
    assert "scale = 1e-300" in last_error()


@pytest.mark.parametrize("margin,classes", [(-1e308, 2), (1e308, 1), (1e308, 3)])
def test_target_logit_beyond_double(margin, classes):
    """Defect 5: s f(c_y) beyond double's range gave NaN gradients with AMM_OK; it is an
    overflow of the row's logits."""
    lib = L.load()
    p = params(target=1, margin=margin, hard=3)
    cos = np.linspace(0.5, 0.1, classes)[None, :].copy()
    labels = np.array([0], np.int64)
    loss, grad = np.zeros(1), np.zeros((1, classes))
    status = lib.amm_forward_backward_f64(ctypes.byref(p), ptr(cos), 1, classes, ptr(labels),
                                          ptr(loss), ptr(grad))
    assert status == L.AMM_ERR_OVERFLOW, (status, grad)
    assert "row 0" in last_error() and "f(cos_y)" in last_error()


def test_phase_3_does_not_trust_the_global_statistics():
    """Defect 6: global statistics that do not bound the shard's logits (a sum of 0 for a row
    with negatives) gave an infinite gradient with AMM_OK."""
    lib = L.load()
    p = params(scale=400)
    cos = np.array([[-0.9, 0.9]])
    target, gmax, gsum = np.array([-0.9]), np.array([-100.0]), np.array([0.0])
    labels = np.array([0], np.int64)
    loss, grad = np.zeros(1), np.zeros((1, 2))
    status = lib.amm_shard_gradient_f64(
        ctypes.byref(p), ptr(cos), 1, 2, 0, 2, ptr(labels), ptr(target), ptr(gmax), ptr(gsum),
        None, ptr(loss), ptr(grad))
    assert status == L.AMM_ERR_OVERFLOW, (status, grad)
    assert "grad_cos[0, 1]" in last_error()


def test_head_target_row_near_the_largest_double():
    """Defect 7: a target weight row near DBL_MAX made <x^, W_y> overflow (a spurious
    AMM_ERR_OVERFLOW); the cosine is that of normalize(W_y), whose norm overflows to inf, so
    the row normalises to 0 and the target cosine is 0."""
    lib = L.load()
    p = params()
    x = np.array([[0.6, 0.8]])
    w = np.array([[1.0, 0.0], [DBL_MAX, DBL_MAX]])
    labels = np.array([1], np.int64)
    loss, gx, gw = np.zeros(1), np.zeros((1, 2)), np.zeros((2, 2))
    status = lib.amm_head_forward_backward_f64(ctypes.byref(p), ptr(x), ptr(w), 1, 2, 2,
                                               ptr(labels), ptr(loss), ptr(gx), ptr(gw))
    assert status == L.AMM_OK, last_error()
    assert np.isfinite(loss).all() and np.isfinite(gx).all() and np.isfinite(gw).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("t", [np.pi, 3.5, 1e30])
def test_amm_margin_beyond_pi(t, dtype):
    """Found by a long fuzz run: for t >= pi, g = cos(max(theta - t, 0)) is 1 for every hard
    negative (theta <= pi), but the identity c cos t + sin(theta) sin t, taken where
    c < cos t, gave cos(theta - t) for the negatives below cos t."""
    import amm_softmax
    from amm_softmax import reference
    cos = np.array([[0.5, -0.95, -0.99, -0.2, 0.3]], dtype)
    labels = np.array([0])
    params = dict(target="cos", margin=1.5, hard="amm", hard_margin=t, scale=8.0)
    loss, grad = amm_softmax.forward_backward(cos, labels, **params)
    want_loss, want_grad = reference.forward_backward(cos, labels, **params)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss, want_loss, rtol=tol)
    np.testing.assert_allclose(grad, want_grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("function", ["amm_shard_gradient_f64", "amm_shard_gradient_f32"])
def test_phase_3_loss_is_never_negative(function):
    """Found by the half-precision fuzz run (defect 8): global_sum = 0 with a finite
    global_max far above the target logit; the loss, logsumexp(z_y, M + log 0) - z_y = 0, came
    out as -0.001 (exp(z_y - M) underflowing) with AMM_OK."""
    lib = L.load()
    dtype = np.float64 if function.endswith("f64") else np.float32
    p = params(scale=669.7744982762282 if dtype == np.float64 else 60.0, target=1, margin=0.35,
               hard=3, reduction=2)
    cos = np.array([[-0.683781393]], dtype)
    tc, gmax, gsum = np.array([-0.683781393]), np.array([46.0176301]), np.array([0.0])
    labels = np.array([0], np.int64)
    loss, grad = np.zeros(1, dtype), np.zeros((1, 1), dtype)
    status = getattr(lib, function)(ctypes.byref(p), ptr(cos), 1, 1, 0, 2, ptr(labels), ptr(tc),
                                    ptr(gmax), ptr(gsum), None, ptr(loss), ptr(grad))
    assert status == L.AMM_OK, last_error()
    assert loss[0] == 0.0 and grad[0, 0] == 0.0
