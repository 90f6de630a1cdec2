"""The `out=` destination of backward and forward_backward (an addition to docs/API.md)."""
import numpy as np
import pytest

import amm_softmax as lib


def problem(dtype=np.float32):
    rng = np.random.default_rng(7)
    return rng.uniform(-1, 1, (6, 50)).astype(dtype), rng.integers(0, 50, 6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_receives_the_same_gradient(dtype):
    cos, labels = problem(dtype)
    loss, grad = lib.forward_backward(cos, labels)
    out = np.full_like(cos, np.nan)
    loss2, grad2 = lib.forward_backward(cos, labels, out=out)
    assert grad2 is out and loss2 == loss and np.array_equal(out, grad)
    out[:] = np.nan
    assert lib.backward(cos, labels, 2.0, out=out) is out
    assert np.array_equal(out, lib.backward(cos, labels, 2.0))


@pytest.mark.parametrize("bad, error, match", [
    (np.empty((6, 50), np.float64), TypeError, "dtype of cos"),
    (np.empty((6, 49), np.float32), ValueError, "shape of cos"),
    (np.empty((50, 6), np.float32).T, ValueError, "C-contiguous"),
    ([[0.0] * 50] * 6, TypeError, "numpy.ndarray"),
])
def test_bad_out_is_refused(bad, error, match):
    cos, labels = problem()
    with pytest.raises(error, match=match):
        lib.forward_backward(cos, labels, out=bad)
    with pytest.raises(error, match=match):
        lib.backward(cos, labels, out=bad)


def test_out_may_not_overlap_cos():
    cos, labels = problem()
    before = cos.copy()
    with pytest.raises(ValueError, match="overlap"):
        lib.forward_backward(cos, labels, out=cos)
    assert np.array_equal(cos, before)
    readonly = np.empty_like(cos)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        lib.backward(cos, labels, out=readonly)
