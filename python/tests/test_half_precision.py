"""Since 0.3: cosines stored in 16 bits (numpy.float16, ml_dtypes.bfloat16): widened exactly to
float32, computed as the float32 path, each gradient entry rounded to nearest even
(docs/FORMULATION.md, "Half precision")."""
import ctypes

import numpy as np
import pytest

import amm_softmax
from amm_softmax import reference
from amm_softmax._params import RawBFloat16
from amm_softmax._shard import SingleProcess, cosine_forward_backward

from helpers import rng_for

ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes (bfloat16 arrays) not installed")
FORMATS = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))
VARIANTS = [dict(), dict(hard="mv-fixed", hard_margin=1.2, target="cos", margin=0.35),
            dict(hard="curricular", hard_margin=0.1), dict(hard="none"),
            dict(margin_gradient="straight-through")]


def problem(dtype, n=37, c=1300, seed=0):
    rng = rng_for("half", np.dtype(dtype).name, n, c, seed)
    cos = rng.uniform(-0.8, 0.95, (n, c)).astype(dtype)
    labels = rng.integers(0, c, n)
    labels[2] = -100
    return cos, labels


@pytest.mark.parametrize("dtype", FORMATS, ids=lambda d: d.name)
@pytest.mark.parametrize("variant", range(len(VARIANTS)))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_is_the_float32_path_on_the_widened_values(dtype, variant, reduction):
    """Bit for bit: the loss is the float32 path's on the same values, and every gradient
    entry is the float32 gradient rounded to nearest even (NumPy's and ml_dtypes' rounding)."""
    cos, labels = problem(dtype)
    params = dict(VARIANTS[variant], reduction=reduction, scale=32.0)
    loss, grad = amm_softmax.forward_backward(cos, labels, **params)
    loss32, grad32 = amm_softmax.forward_backward(cos.astype(np.float32), labels, **params)
    assert grad.dtype == dtype
    np.testing.assert_array_equal(np.asarray(loss), np.asarray(loss32))
    assert np.asarray(loss).dtype == np.float32 or isinstance(loss, float)
    np.testing.assert_array_equal(grad.view(np.uint16), grad32.astype(dtype).view(np.uint16))
    upstream = np.linspace(0.5, 2.0, cos.shape[0]) if reduction == "none" else 0.75
    back = amm_softmax.backward(cos, labels, upstream, **params)
    back32 = amm_softmax.backward(cos.astype(np.float32), labels, upstream, **params)
    np.testing.assert_array_equal(back.view(np.uint16), back32.astype(dtype).view(np.uint16))
    np.testing.assert_array_equal(np.asarray(amm_softmax.forward(cos, labels, **params)),
                                  np.asarray(loss32))


@pytest.mark.parametrize("dtype", FORMATS, ids=lambda d: d.name)
@pytest.mark.parametrize("columns", [1, 15, 16, 17, 63, 1024, 1025, 2047, 3000, 9000])
def test_shapes_blocks_and_alignment(dtype, columns):
    """The 16-bit row is read by the one-pass loop (stretches between the first block and the
    target's), by the blocks taken in two steps and by partial vectors, and the gradient is
    written in pieces around 32-byte boundaries (odd rows start anywhere): every path gives the
    float32 path's bits. Targets at the start, the end and inside a later block; hard
    negatives counted; a scale that keeps the exponentials far below their reference."""
    rows = 6
    rng = rng_for("half-shapes", np.dtype(dtype).name, columns)
    cos = rng.uniform(-0.9, 0.9, (rows, columns)).astype(dtype)
    labels = np.array([0, columns - 1, columns // 2, min(columns - 1, 1500),
                       rng.integers(0, columns), -100])
    for params in (dict(scale=30.0), dict(hard="curricular", hard_margin=0.3, scale=64.0)):
        counts, counts32 = np.zeros(rows, np.int64), np.zeros(rows, np.int64)
        target, target32 = np.zeros(rows), np.zeros(rows)
        loss, grad = amm_softmax.forward_backward(cos, labels, reduction="none",
                                                  hard_negatives=counts,
                                                  target_cosines=target, **params)
        loss32, grad32 = amm_softmax.forward_backward(cos.astype(np.float32), labels,
                                                      reduction="none", hard_negatives=counts32,
                                                      target_cosines=target32, **params)
        np.testing.assert_array_equal(loss, loss32)
        np.testing.assert_array_equal(grad.view(np.uint16), grad32.astype(dtype).view(np.uint16))
        np.testing.assert_array_equal(counts, counts32)
        np.testing.assert_array_equal(target, target32)
        np.testing.assert_array_equal(amm_softmax.forward(cos, labels, reduction="none",
                                                          **params), loss32)


@pytest.mark.parametrize("dtype", FORMATS, ids=lambda d: d.name)
def test_every_bit_pattern_is_widened_and_rounded_exactly(dtype):
    """Every finite 16-bit value of magnitude at most 1.5 (subnormals, signed zeros, both
    formats' whole exponent ranges there) as the cosines of one long row: the loss and every
    gradient entry are the float32 path's bits on the widened values; and gradients reaching
    into every binade, subnormals included, round as NumPy / ml_dtypes round."""
    bits = np.arange(1 << 16, dtype=np.uint16)
    values = bits.view(dtype).astype(np.float32)
    keep = np.isfinite(values) & (np.abs(values) <= 1.5)
    cos = bits[keep].view(dtype)[None, :]
    labels = np.array([cos.shape[1] // 3])
    for scale in (1.0, 30.0):
        loss, grad = amm_softmax.forward_backward(cos, labels, scale=scale, reduction="sum")
        loss32, grad32 = amm_softmax.forward_backward(cos.astype(np.float32), labels,
                                                      scale=scale, reduction="sum")
        assert loss == loss32
        np.testing.assert_array_equal(grad.view(np.uint16), grad32.astype(dtype).view(np.uint16))
    # Tiny upstream values push the gradients through the subnormal range of float16.
    for upstream in (1e-3, 1e-6, 3e-8):
        back = amm_softmax.backward(cos, labels, upstream, scale=30.0, reduction="sum")
        back32 = amm_softmax.backward(cos.astype(np.float32), labels, upstream, scale=30.0,
                                      reduction="sum")
        np.testing.assert_array_equal(back.view(np.uint16), back32.astype(dtype).view(np.uint16))


@pytest.mark.parametrize("dtype", FORMATS, ids=lambda d: d.name)
def test_target_cosines_and_error_values_widen_every_value_exactly(dtype):
    """The one-value widening (target cosines, the value an error names) on every finite value
    of magnitude at most 1.5 as a target, and on the non-finite ones in an error."""
    bits = np.arange(1 << 16, dtype=np.uint16)
    values = bits.view(dtype).astype(np.float32)
    kept = bits[np.isfinite(values) & (np.abs(values) <= 1.5)].view(dtype)
    cos = np.stack([kept, np.full(kept.size, 0.25, dtype)], axis=1)
    target = np.zeros(kept.size)
    amm_softmax.forward(cos, np.zeros(kept.size, np.int64), target_cosines=target)
    np.testing.assert_array_equal(target, kept.astype(np.float64))
    for pattern in (0x7f80, 0xff80, 0x7fc1) if dtype != np.float16 else (0x7c00, 0xfc00, 0x7e01):
        bad = cos[:3].copy()
        bad.view(np.uint16)[1, 1] = pattern
        with pytest.raises(ValueError, match=r"cos\[1, 1\] = (-?inf|nan)"):
            amm_softmax.forward(bad, np.zeros(3, np.int64))


@pytest.mark.parametrize("dtype", FORMATS, ids=lambda d: d.name)
def test_against_the_float64_oracle(dtype):
    """The contract's accuracy: the loss within the float32 path's tolerance of the f64 oracle
    on the same rounded inputs, each gradient entry within one rounding of the exact value."""
    cos, labels = problem(dtype, seed=1)
    loss, grad = amm_softmax.forward_backward(cos, labels, scale=64.0, reduction="none")
    want_loss, _ = reference.forward_backward(cos.astype(np.float64), labels, scale=64.0,
                                              reduction="none")
    _, exact = reference.forward_backward(cos.astype(np.float64), labels, scale=64.0,
                                          reduction="none")
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6, atol=64 * 1.6 * 1e-6)
    got = grad.astype(np.float64)
    # One rounding: the distance to the exact value is below the spacing of the storage type
    # at it (the value on the other side of exact is the only other candidate).
    # float32's own error (about 1e-6 of the row's largest entry) is added to the allowance.
    spacing = np.abs(np.spacing(exact.astype(dtype)).astype(np.float64))
    assert np.all(np.abs(got - exact) <= spacing + 1e-6 * np.abs(exact).max())
    # (Rounding itself, nearest even and not truncation, is checked bit for bit above.)


@pytest.mark.parametrize("dtype", FORMATS, ids=lambda d: d.name)
def test_outputs_and_ignored_rows(dtype):
    cos, labels = problem(dtype, n=9, c=40)
    counts, target = np.zeros(9, np.int64), np.full(9, np.nan)
    out = np.full(cos.shape, 7, dtype=dtype)
    _, grad = amm_softmax.forward_backward(cos, labels, out=out, hard_negatives=counts,
                                           target_cosines=target)
    assert grad is out and np.all(grad[2].astype(np.float32) == 0)
    want_counts, want_target = np.zeros(9, np.int64), np.zeros(9)
    amm_softmax.forward(cos.astype(np.float32), labels, hard_negatives=want_counts,
                        target_cosines=want_target)
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_array_equal(target, want_target)


def test_raw_bfloat16_view_is_the_ml_dtypes_path():
    """The torch module hands bfloat16 bit patterns over as a uint16 view (no ml_dtypes)."""
    cos, labels = problem(ml_dtypes.bfloat16, n=5, c=30)
    raw = cos.view(np.uint16).view(RawBFloat16)
    loss, grad = amm_softmax.forward_backward(raw, labels)
    want_loss, want_grad = amm_softmax.forward_backward(cos, labels)
    assert loss == want_loss
    np.testing.assert_array_equal(np.asarray(grad).view(np.uint16), want_grad.view(np.uint16))


def test_thread_counts_give_the_same_bits():
    cos, labels = problem(np.float16, n=300, c=700)
    one = amm_softmax.forward_backward(cos, labels, num_threads=1)
    three = amm_softmax.forward_backward(cos, labels, num_threads=3)
    assert one[0] == three[0]
    np.testing.assert_array_equal(one[1].view(np.uint16), three[1].view(np.uint16))


def test_float16_gradient_overflow_is_an_error():
    """A target at cos = 1 has df/dc of about 4.8e6 for arc: s (p_y - 1) df/dc is far beyond
    float16's 65504 -- an error naming the entry, never an infinity."""
    cos = np.array([[1.0, 0.99, 0.98, 0.97]], np.float16)
    labels = np.array([0])
    with pytest.raises(ValueError, match=r"grad_cos\[0, 0\].*float16.*65504"):
        amm_softmax.forward_backward(cos, labels, scale=64.0)
    # bfloat16 holds it (its range is float's).
    _, grad = amm_softmax.forward_backward(cos.astype(ml_dtypes.bfloat16), labels, scale=64.0)
    assert np.isfinite(grad.astype(np.float32)).all() and abs(float(grad[0, 0])) > 65504


@pytest.mark.parametrize("dtype", FORMATS, ids=lambda d: d.name)
def test_errors(dtype):
    cos, labels = problem(dtype, n=4, c=6)
    bad = cos.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"cos\[1, 3\] = nan"):
        amm_softmax.forward(bad, labels)
    with pytest.raises(TypeError, match="out must have the dtype of cos"):
        amm_softmax.backward(cos, labels, out=np.zeros(cos.shape, np.float32))
    with pytest.raises(ValueError, match="hard_margin = 1e\\+39"):
        amm_softmax.forward(cos, labels, hard="mv-fixed", hard_margin=1e39)   # f32's ranges
    with pytest.raises(TypeError, match="float32 or float64, got .*16-bit floats are taken by"):
        amm_softmax.head_forward_backward(cos, cos, labels[:4])
    with pytest.raises(TypeError, match="cos_shard must have dtype float32 or float64"):
        cosine_forward_backward(cos, labels, SingleProcess())


def test_non_native_float16_is_read_by_value():
    cos, labels = problem(np.float16, n=4, c=6)
    swapped = cos.astype(cos.dtype.newbyteorder(">"))
    assert amm_softmax.forward(swapped, labels) == amm_softmax.forward(cos, labels)


def test_the_c_functions_directly():
    """The header's bf16 functions through ctypes: storage uint16, loss float."""
    from amm_softmax import _library as L
    lib = L.load()
    cos, labels = problem(ml_dtypes.bfloat16, n=3, c=8)
    p = L.AmmParams()
    lib.amm_params_init(ctypes.byref(p))
    loss = np.zeros(1, np.float32)
    grad = np.zeros(cos.shape, np.uint16)
    status = lib.amm_forward_backward_bf16(
        ctypes.byref(p), cos.ctypes.data, 3, 8, labels.astype(np.int64).ctypes.data,
        loss.ctypes.data, grad.ctypes.data)
    assert status == L.AMM_OK
    want = amm_softmax.forward_backward(cos, labels)
    assert loss[0] == np.float32(want[0])
    np.testing.assert_array_equal(grad, want[1].view(np.uint16))
