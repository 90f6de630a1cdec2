"""PartialFC's class sampling on one process (no MPI): amm_softmax._shard.kept_classes (which
classes a shard keeps in a step) and amm_softmax.head_forward_backward(..., sample_rate, seed,
step, return_sampled).

kept_classes: the targets are always kept; k = floor(rate * size) classes when k exceeds their
number, the targets alone otherwise; sorted and distinct; the others drawn uniformly; a
function of (seed, step, shard) alone. The sampled head: bit for bit the plain head on the kept
classes with the labels renumbered in them (the other classes' gradients exactly 0), for every
variant, reduction and dtype; sample_rate = 1 bit for bit the plain head; clear errors for a
bad sample_rate, seed or step.
"""
import itertools
import math

import numpy as np
import pytest

import amm_softmax
from amm_softmax._shard import SingleProcess, check_sampling, kept_classes
from amm_softmax._shard import head_forward_backward as sharded_head
from helpers import DTYPES, HARDS, REDUCTIONS, TARGETS, rng_for, unchanged
from test_head import head_problem, params_for


# --- kept_classes ----------------------------------------------------------------------------
@pytest.mark.parametrize("size,rate,n_targets", [(50, 0.4, 5), (50, 0.1, 5), (50, 0.1, 8),
                                                 (7, 0.5, 0), (1, 0.5, 1), (1, 0.5, 0),
                                                 (0, 0.5, 0), (1000, 0.01, 3), (13, 0.99, 13)])
def test_kept_classes_keeps_targets_and_k_in_all(size, rate, n_targets):
    rng = rng_for("kept", size, rate, n_targets)
    targets = rng.choice(size, n_targets, replace=False) if n_targets else np.zeros(0, int)
    labels = np.concatenate([targets, targets[: n_targets // 2]])   # repeated targets
    for step in range(5):
        kept = kept_classes(labels, size, rate, 3, step, 0)
        assert kept.dtype == np.int64
        assert np.all(np.diff(kept) > 0), "sorted and distinct"
        assert np.all((kept >= 0) & (kept < size))
        assert np.isin(targets, kept).all(), "every target is kept"
        k = math.floor(rate * size)
        assert kept.size == max(k, np.unique(targets).size)
        if k <= np.unique(targets).size:
            assert np.array_equal(kept, np.unique(targets)), "only the targets"


def test_kept_classes_rate_one_keeps_everything():
    assert np.array_equal(kept_classes(np.array([4, 2]), 9, 1.0, 0, 0, 0), np.arange(9))


def test_kept_classes_is_uniform():
    """Over many steps every non-target class is kept with probability (k - t) / (size - t):
    each count within 6 standard deviations, and their spread like a binomial's."""
    size, rate, targets = 50, 0.4, np.array([0, 7, 19, 33, 49])
    k = math.floor(rate * size)
    steps = 600
    counts = np.zeros(size)
    for step in range(steps):
        counts[kept_classes(targets, size, rate, 5, step, 2)] += 1
    assert np.all(counts[targets] == steps)
    others = np.delete(counts, targets)
    p = (k - targets.size) / (size - targets.size)
    mean, sd = steps * p, math.sqrt(steps * p * (1 - p))
    assert np.all(np.abs(others - mean) < 6 * sd), (others, mean, sd)
    assert abs(others.mean() - mean) < 1e-9            # exactly k - t others each step
    assert 0.5 * sd < others.std() < 1.5 * sd


def test_kept_classes_is_a_function_of_seed_step_and_shard():
    labels = np.array([1, 3, 3, 10])
    args = (labels, 40, 0.3)
    base = kept_classes(*args, 7, 2, 1)
    assert np.array_equal(base, kept_classes(*args, 7, 2, 1))      # same draw again
    assert np.array_equal(base, kept_classes(labels.astype(np.int32), 40, 0.3, 7, 2, 1))
    for other in ((8, 2, 1), (7, 3, 1), (7, 2, 0)):                 # seed, step, shard
        assert not np.array_equal(base, kept_classes(*args, *other)), other
    draws = {tuple(kept_classes(*args, 7, step, 1)) for step in range(20)}
    assert len(draws) == 20, "different steps draw different classes"


# --- the sampled head ------------------------------------------------------------------------
def _renumbered(labels, kept, ignore_index):
    """The labels in the kept classes' numbering; ignored rows get -100 (never a class)."""
    active = labels != ignore_index
    return np.where(active, np.searchsorted(kept, np.where(active, labels, 0)), -100)


COMBOS = list(itertools.product(DTYPES, TARGETS, HARDS, REDUCTIONS))


@pytest.mark.parametrize("dtype,target,hard,reduction", COMBOS,
                         ids=[f"{np.dtype(a).name}-{b}-{c}-{d}" for a, b, c, d in COMBOS])
def test_sampled_head_is_the_head_on_the_kept_classes(dtype, target, hard, reduction):
    rng = rng_for("sampled-head", np.dtype(dtype).name, target, hard, reduction)
    params = params_for(target, hard, reduction)
    x, w, y = head_problem(rng, 24, 8, 60, dtype, params)
    for rate, seed, step in ((0.5, 0, 0), (0.25, 9, 4), (0.02, 1, 1)):
        counts = np.zeros(24, np.int64)
        with unchanged(x, w, y):
            loss, gx, gw, kept = amm_softmax.head_forward_backward(
                x, w, y, sample_rate=rate, seed=seed, step=step, return_sampled=True,
                hard_negatives=counts, **params)
        active = y != -100
        assert np.isin(y[active], kept).all()
        assert kept.size == max(math.floor(rate * 60), np.unique(y[active]).size)
        want_counts = np.zeros(24, np.int64)
        want = amm_softmax.head_forward_backward(
            x, np.ascontiguousarray(w[kept]), _renumbered(y, kept, -100),
            hard_negatives=want_counts, **params)
        assert type(loss) is type(want[0])
        assert np.array_equal(np.asarray(loss), np.asarray(want[0]))
        assert gx.dtype == dtype and gx.shape == x.shape and gw.shape == w.shape
        assert np.array_equal(gx, want[1])
        assert np.array_equal(gw[kept], want[2])
        assert np.all(np.delete(gw, kept, axis=0) == 0)
        assert np.array_equal(counts, want_counts)
        # Without return_sampled, the same three results.
        again = amm_softmax.head_forward_backward(x, w, y, sample_rate=rate, seed=seed,
                                                  step=step, **params)
        assert len(again) == 3
        for a, b in zip(again, (loss, gx, gw)):
            assert np.array_equal(np.asarray(a), np.asarray(b))


def test_sampled_head_with_an_ignore_index_that_is_a_class():
    """ignore_index = 3 is a class id: rows labelled 3 are ignored, while class 3 (or the one
    renumbered 3) can still be kept and be a target."""
    rng = rng_for("sampled-ignore-3")
    params = dict(params_for("arc", "amm", "mean"), ignore_index=3)
    x, w, y = head_problem(rng, 20, 6, 30, np.float64, params)
    y[[2, 9]] = 3
    y[[0, 1, 4]] = [1, 2, 4]
    loss, gx, gw, kept = amm_softmax.head_forward_backward(x, w, y, sample_rate=0.5, seed=2,
                                                           return_sampled=True, **params)
    assert np.all(gx[y == 3] == 0)
    want = amm_softmax.head_forward_backward(x, np.ascontiguousarray(w[kept]),
                                             _renumbered(y, kept, 3),
                                             **dict(params, ignore_index=-100))
    assert loss == want[0]
    assert np.array_equal(gx, want[1]) and np.array_equal(gw[kept], want[2])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sample_rate_one_is_the_plain_head(dtype, reduction):
    """sample_rate = 1: the plain head, whatever the seed and step; return_sampled adds every
    class; the sharded protocol on one process gives the same bits."""
    rng = rng_for("rate-one", np.dtype(dtype).name, reduction)
    params = params_for("arc", "amm", reduction)
    x, w, y = head_problem(rng, 17, 5, 23, dtype, params)
    plain = amm_softmax.head_forward_backward(x, w, y, block_size=4, **params)
    same = amm_softmax.head_forward_backward(x, w, y, block_size=4, sample_rate=1.0, seed=5,
                                             step=3, **params)
    *sampled, kept = amm_softmax.head_forward_backward(x, w, y, block_size=4, sample_rate=1,
                                                       return_sampled=True, **params)
    assert kept.dtype == np.int64 and np.array_equal(kept, np.arange(23))
    *sharded, kept = sharded_head(x, w, y, SingleProcess(), block_size=4, return_sampled=True,
                                  **params)
    assert np.array_equal(kept, np.arange(23))
    for a, b, c, d in zip(plain, same, sampled, sharded):
        for other in (b, c, d):
            assert type(a) is type(other)
            assert np.array_equal(np.asarray(a), np.asarray(other))


def test_sampled_head_out_and_all_rows_ignored():
    rng = rng_for("sampled-out")
    params = params_for("cos", "none", "sum")
    x, w, y = head_problem(rng, 8, 4, 20, np.float32, params)
    out = (np.full_like(x, 7.0), np.full_like(w, 7.0))
    loss, gx, gw = amm_softmax.head_forward_backward(x, w, y, sample_rate=0.3, out=out,
                                                     **params)
    assert gx is out[0] and gw is out[1]
    want = amm_softmax.head_forward_backward(x, w, y, sample_rate=0.3, **params)
    assert loss == want[0] and np.array_equal(gx, want[1]) and np.array_equal(gw, want[2])
    none = np.full(8, -100)
    loss, gx, gw, kept = amm_softmax.head_forward_backward(x, w, none, sample_rate=0.3,
                                                           return_sampled=True, **params)
    assert loss == 0.0 and not gx.any() and not gw.any() and kept.size == 6


BAD_RATES = [
    (0.0, ValueError, "sample_rate = 0.0 is invalid: must be in (0, 1]"),
    (-0.5, ValueError, "must be in (0, 1]"),
    (1.5, ValueError, "must be in (0, 1]"),
    (float("nan"), ValueError, "must be in (0, 1]"),
    (float("inf"), ValueError, "must be in (0, 1]"),
    (True, TypeError, "sample_rate must be a real number"),
    ("0.5", TypeError, "sample_rate must be a real number"),
    (None, TypeError, "sample_rate must be a real number"),
]
BAD_COUNTERS = [  # (keyword, value, ...), checked with sample_rate 1 (the plain path) and 0.5
    ("seed", -1, ValueError, "seed = -1 is invalid: must be >= 0"),
    ("seed", 1.0, TypeError, "seed must be an integer"),
    ("seed", True, TypeError, "seed must be an integer"),
    ("step", -3, ValueError, "step = -3 is invalid: must be >= 0"),
    ("step", "1", TypeError, "step must be an integer"),
]
BAD_SAMPLING = [dict(sample_rate=v, error=e, words=m) for v, e, m in BAD_RATES] + \
    [dict(sample_rate=rate, **{k: v}, error=e, words=m)
     for k, v, e, m in BAD_COUNTERS for rate in (1.0, 0.5)]


@pytest.mark.parametrize("case", BAD_SAMPLING,
                         ids=[repr({k: v for k, v in c.items() if k not in ("error", "words")})
                              for c in BAD_SAMPLING])
def test_bad_sampling_arguments(case):
    """Clear errors, whatever the sample_rate (also on the plain path, sample_rate 1)."""
    rng = rng_for("bad-sampling")
    x, w, y = head_problem(rng, 4, 3, 10, np.float64)
    kw = {k: v for k, v in case.items() if k not in ("error", "words")}
    with pytest.raises(case["error"]) as info:
        amm_softmax.head_forward_backward(x, w, y, **kw)
    assert case["words"] in str(info.value)
    with pytest.raises(case["error"]):
        check_sampling(kw["sample_rate"], kw.get("seed", 0), kw.get("step", 0))


def test_sampled_head_rejects_what_the_plain_head_rejects():
    """Bad input fails as in the plain head: same type, same message for the Python checks."""
    rng = rng_for("sampled-errors")
    x, w, y = head_problem(rng, 5, 3, 10, np.float64)
    bad_label = y.copy()
    bad_label[1] = 10
    nan_x = x.copy()
    nan_x[2, 0] = np.nan
    y[2] = 4
    for args, kw in (((x, w, bad_label), {}), ((x, w.astype(np.float32), y), {}),
                     ((x, w, y), dict(scale=-1.0)), ((x, w, y), dict(block_size=-2)),
                     ((x, w, y), dict(hard_negatives=np.zeros(5, np.int32))),
                     ((nan_x, w, y), {})):
        with pytest.raises(Exception) as plain:
            amm_softmax.head_forward_backward(*args, **kw)
        with pytest.raises(type(plain.value)) as sampled:
            amm_softmax.head_forward_backward(*args, sample_rate=0.5, **kw)
        if args[0] is not nan_x:
            assert str(sampled.value) == str(plain.value)
        else:
            assert "embeddings[2, 0] = nan is not finite" in str(sampled.value)


def test_check_sampling_normalises():
    assert check_sampling(np.float32(0.5), np.int64(3), 0) == (0.5, 3, 0)
    assert check_sampling(1, 0, 2**40) == (1.0, 0, 2**40)
