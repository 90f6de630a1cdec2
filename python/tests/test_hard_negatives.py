"""The optional per-row count of hard negatives (amm_params.hard_negatives; `hard_negatives=` in
Python): equal to the reference's count, for every function, variant and dtype."""
import numpy as np
import pytest

import amm_softmax as lib
from amm_softmax import reference as ref

VARIANTS = [(t, h) for t in ("arc", "cos") for h in ("amm", "mv-fixed", "mv-adaptive", "none")]


def problem(dtype, n=23, c=1500, seed=0):
    rng = np.random.default_rng(seed)
    cos = rng.uniform(-1, 1, (n, c)).astype(dtype)
    labels = rng.integers(0, c, n)
    labels[3] = -100
    cos[5, :] = -0.99                       # no negative hard
    cos[5, labels[5]] = 0.99
    cos[7, labels[7]] = -0.99               # every negative hard
    return cos, labels


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("target,hard", VARIANTS)
def test_counts_match_the_reference(dtype, target, hard):
    cos, labels = problem(dtype)
    want = np.full(len(labels), -1, dtype=np.int64)
    ref.forward(cos, labels, target=target, hard=hard, hard_negatives=want)
    assert want[3] == 0 and want[5] == 0 and want[7] == cos.shape[1] - 1
    assert 0 < want.sum() < (len(labels) - 1) * (cos.shape[1] - 1)
    for call in (lambda h: lib.forward(cos, labels, target=target, hard=hard, hard_negatives=h),
                 lambda h: lib.backward(cos, labels, target=target, hard=hard, hard_negatives=h),
                 lambda h: lib.forward_backward(cos, labels, target=target, hard=hard,
                                                hard_negatives=h)):
        got = np.full(len(labels), -1, dtype=np.int64)
        call(got)
        np.testing.assert_array_equal(got, want)


def test_counting_changes_no_result():
    cos, labels = problem(np.float32)
    plain = lib.forward_backward(cos, labels)
    counted = lib.forward_backward(cos, labels, hard_negatives=np.zeros(len(labels), np.int64))
    assert plain[0] == counted[0] and np.array_equal(plain[1], counted[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_head_counts_match_the_reference(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((17, 12)).astype(dtype)
    w = rng.standard_normal((300, 12)).astype(dtype)
    labels = rng.integers(0, 300, 17)
    labels[2] = -100
    got = np.full(17, -1, dtype=np.int64)
    want = np.full(17, -1, dtype=np.int64)
    lib.head_forward_backward(x, w, labels, block_size=64, hard_negatives=got)
    ref.head_forward_backward(x, w, labels, hard_negatives=want)
    assert got[2] == 0 and want.sum() > 0
    # The head's cosines come from products in the element precision: a cosine within rounding
    # of its row's threshold may fall either way in f32.
    slack = 0 if dtype == np.float64 else 2
    assert np.abs(got - want).max() <= slack, (got, want)


@pytest.mark.parametrize("bad,error,match", [
    (np.zeros(23, np.int32), TypeError, "int64"),
    (np.zeros(22, np.int64), ValueError, r"shape \(23,\)"),
    (np.zeros((23, 2), np.int64)[:, 0], ValueError, "C-contiguous"),
    ([0] * 23, TypeError, "numpy.ndarray"),
])
def test_bad_destination_is_refused(bad, error, match):
    cos, labels = problem(np.float64)
    with pytest.raises(error, match=match):
        lib.forward(cos, labels, hard_negatives=bad)
