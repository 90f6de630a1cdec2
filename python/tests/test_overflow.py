"""Outputs the element type cannot hold are an error (AMM_ERR_OVERFLOW, ValueError), never an
infinity: the loss reduced over rows, a gradient entry (s |upstream| df/dc beyond the type's
range), and the head's gradients (huge scales, or rows whose norm is near the 1e-12 floor)."""
import numpy as np
import pytest

import amm_softmax


def test_a_gradient_entry_beyond_float_is_an_error():
    # The target at cos = 1: df/dc = cos m + sin m / 1e-7, about 4.8e6. A hard negative at 0.95
    # takes nearly all the probability, so the target's gradient is about -s df = -4.8e39 for
    # s = 1e33: beyond float32, while every logit stays finite.
    cos = np.array([[1.0, 0.95, -0.3]], dtype=np.float32)
    labels = np.array([0])
    with pytest.raises(ValueError, match=r"grad_cos\[0, 0\] overflows Float"):
        amm_softmax.forward_backward(cos, labels, scale=1e33, reduction="sum")
    # ... while the loss alone is representable.
    assert np.isfinite(amm_softmax.forward(cos, labels, scale=1e33, reduction="sum"))
    # and f64 holds it.
    _, grad = amm_softmax.forward_backward(cos.astype(np.float64), labels, scale=1e33,
                                           reduction="sum")
    assert np.isfinite(grad).all()


def test_a_loss_sum_beyond_float_is_an_error():
    # Every row's loss is about 2 s = 2e38 (finite in float32); their sum is not.
    cos = np.tile(np.array([[-1.0, 1.0]], dtype=np.float32), (4, 1))
    labels = np.zeros(4, dtype=np.int64)
    with pytest.raises(ValueError, match=r"loss \(the sum over rows\) overflows Float"):
        amm_softmax.forward(cos, labels, scale=1e38, target="cos", margin=0.0, hard="none",
                            reduction="sum")
    per_row = amm_softmax.forward(cos, labels, scale=1e38, target="cos", margin=0.0,
                                  hard="none", reduction="none")
    assert np.isfinite(per_row).all()


def test_head_gradients_beyond_float_are_an_error():
    # The target is class 1, whose weight row has a norm below the 1e-12 floor: its gradient
    # is divided by 1e-12. Class 0 is a hard negative at cos = 1 that takes nearly all the
    # probability, so d loss / d cos_y is about -s df/dc = -0.88 s and dW_1 about 8.8e41.
    x = np.array([[1.0, 0.0]], dtype=np.float32)
    w = np.array([[1.0, 0.0], [0.0, 1e-13]], dtype=np.float32)
    with pytest.raises(ValueError, match=r"grad_weights\[1, 0\] overflows Float"):
        amm_softmax.head_forward_backward(x, w, np.array([1]), scale=1e30)
    _, gx, gw = amm_softmax.head_forward_backward(x, w, np.array([1]), scale=1e10)
    assert np.isfinite(gx).all() and np.isfinite(gw).all()


@pytest.mark.parametrize("seed", range(4))
def test_random_extreme_scales_give_finite_outputs_or_an_overflow_error(seed):
    rng = np.random.default_rng(seed)
    for _ in range(300):
        n, c = int(rng.integers(0, 6)), int(rng.integers(1, 8))
        dtype = np.float32 if rng.random() < 0.7 else np.float64
        cos = rng.uniform(-1.2, 1.2, (n, c)).astype(dtype)
        cos[rng.random((n, c)) < 0.2] = 1.0
        labels = rng.integers(0, c, n)
        top = 38.5 if dtype == np.float32 else 308.2
        params = dict(scale=float(10 ** rng.uniform(top - 8, top)),
                      target=str(rng.choice(["arc", "cos"])),
                      hard=str(rng.choice(["amm", "mv-fixed", "mv-adaptive", "none"])),
                      reduction=str(rng.choice(["mean", "sum", "none"])),
                      hard_margin=float(rng.uniform(0, 2)))
        for name in ("forward", "backward", "forward_backward"):
            try:
                result = getattr(amm_softmax, name)(cos, labels, **params)
            except ValueError as error:
                assert "overflow" in str(error) or "scale" in str(error), str(error)
                continue
            for value in (result if isinstance(result, tuple) else (result,)):
                assert np.isfinite(np.asarray(value)).all(), (name, params)
