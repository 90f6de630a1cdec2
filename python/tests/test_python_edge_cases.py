"""Python edge cases of the package (issue "Hardened", part 7): each is a clear error (the
documented exception type, a message naming the argument, row or dtype) or a correct result,
and no input is ever modified.

Read-only arrays, Fortran order and other strides, non-native byte order, 0-d arrays and Python
lists, object and bool dtypes, uint64 labels past the int64 range, narrow integer labels, NaN
in grad_output, outputs that are views of an input; and, when torch imports, tensors on a
device other than the CPU, labels that require a gradient and tensors NumPy cannot view.
Run the torch part with `PYTHONPATH=python .venv-torch/bin/python -m pytest` (it is skipped
without torch).
"""
import re

import numpy as np
import pytest

import amm_softmax
from amm_softmax import _shard
from helpers import random_problem, rng_for, unchanged

dtypes = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
N, C, D = 13, 37, 8


def cos_problem(dtype=np.float64, seed="edge"):
    cos, labels = random_problem(rng_for(seed, np.dtype(dtype).name), N, C, dtype)
    labels[4] = -100
    return cos, labels


def head_problem(dtype=np.float64, seed="edge-head"):
    rng = rng_for(seed, np.dtype(dtype).name)
    x = rng.standard_normal((N, D)).astype(dtype)
    w = rng.standard_normal((C, D)).astype(dtype)
    labels = rng.integers(0, C, N)
    labels[2] = -100
    return x, w, labels


def all_cosine_results(cos, labels, grad_output=None, **params):
    """Every cosine-logit function's outputs (and the hard-negative counts) as a flat list."""
    reduction = params.setdefault("reduction", "none")
    if grad_output is None:
        grad_output = np.linspace(-1.0, 2.0, N) if reduction == "none" else 0.5
    counts = [np.zeros(np.shape(labels)[0], np.int64) for _ in range(3)]
    with unchanged(cos, labels, grad_output):
        loss = amm_softmax.forward(cos, labels, hard_negatives=counts[0], **params)
        grad = amm_softmax.backward(cos, labels, grad_output, hard_negatives=counts[1], **params)
        loss_fb, grad_fb = amm_softmax.forward_backward(cos, labels, hard_negatives=counts[2],
                                                        **params)
    return [np.asarray(loss), grad, np.asarray(loss_fb), grad_fb] + counts


def head_results(x, w, labels, **params):
    counts = np.zeros(np.shape(labels)[0], np.int64)
    with unchanged(x, w, labels):
        loss, gx, gw = amm_softmax.head_forward_backward(x, w, labels, hard_negatives=counts,
                                                         **params)
    return [np.asarray(loss), gx, gw, counts]


def assert_bits(got, want):
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, (k, a.dtype, b.dtype, a.shape, b.shape)
        assert a.dtype.isnative
        assert a.tobytes() == b.tobytes(), f"output {k} differs"


def readonly(a):
    a = np.array(a, copy=True, order="K")
    a.flags.writeable = False
    return a


# --- read-only arrays ----------------------------------------------------------------------
@dtypes
def test_read_only_inputs_are_accepted(dtype):
    cos, labels = cos_problem(dtype)
    g = np.linspace(-1.0, 2.0, N)
    expected = all_cosine_results(cos, labels, g)
    assert_bits(all_cosine_results(readonly(cos), readonly(labels), readonly(g)), expected)
    x, w, y = head_problem(dtype)
    assert_bits(head_results(readonly(x), readonly(w), readonly(y), reduction="sum"),
                head_results(x, w, y, reduction="sum"))
    # the class-sampled head and the sharded driver on one process
    for rate in (1.0, 0.5):
        want = amm_softmax.head_forward_backward(x, w, y, sample_rate=rate, seed=3)
        got = amm_softmax.head_forward_backward(readonly(x), readonly(w), readonly(y),
                                                sample_rate=rate, seed=3)
        assert_bits(got, want)
    want = _shard.cosine_forward_backward(cos, labels, _shard.SingleProcess())
    got = _shard.cosine_forward_backward(readonly(cos), readonly(labels),
                                         _shard.SingleProcess())
    assert_bits(got, want)


@dtypes
def test_read_only_outputs_are_a_clear_error(dtype):
    cos, labels = cos_problem(dtype)
    x, w, y = head_problem(dtype)
    ro_grad = readonly(np.zeros_like(cos))
    with unchanged(cos, labels, ro_grad):
        with pytest.raises(ValueError, match=r"^out must be a writeable, aligned, C-contiguous "
                                             r"array: it is read-only$"):
            amm_softmax.backward(cos, labels, out=ro_grad)
        with pytest.raises(ValueError, match=r"^out must be .*: it is read-only$"):
            amm_softmax.forward_backward(cos, labels, out=ro_grad)
    for which, out in [("out[0]", (readonly(np.zeros_like(x)), np.zeros_like(w))),
                       ("out[1]", (np.zeros_like(x), readonly(np.zeros_like(w))))]:
        for rate in (1.0, 0.5):
            with unchanged(x, w, y, *out), \
                    pytest.raises(ValueError, match=rf"^{re.escape(which)} must be .*read-only"):
                amm_softmax.head_forward_backward(x, w, y, out=out, sample_rate=rate)
    ro_counts = readonly(np.zeros(N, np.int64))
    for call in (lambda: amm_softmax.forward(cos, labels, hard_negatives=ro_counts),
                 lambda: amm_softmax.head_forward_backward(x, w, y, hard_negatives=ro_counts)):
        with unchanged(ro_counts), \
                pytest.raises(ValueError, match=r"^hard_negatives must be a writeable, "
                                                r"C-contiguous array: it is read-only$"):
            call()


def test_non_contiguous_outputs_are_named():
    cos, labels = cos_problem()
    out = np.zeros((C, N)).T
    with pytest.raises(ValueError, match=r"^out must be .*: it is not C-contiguous"):
        amm_softmax.forward_backward(cos, labels, out=out)
    counts = np.zeros(2 * N, np.int64)[::2]
    with pytest.raises(ValueError, match=r"^hard_negatives must be .*: it is not C-contiguous"):
        amm_softmax.forward(cos, labels, hard_negatives=counts)


# --- memory layouts ------------------------------------------------------------------------
def strided_copies(a):
    """`a` in other layouts, each holding the same values: (name, array)."""
    out = [("fortran", np.asfortranarray(a))]
    big = np.zeros((a.shape[0] * 2, a.shape[1] * 3), a.dtype)
    big[::2, 1::3] = a
    out.append(("strided", big[::2, 1::3]))
    out.append(("negative-strides", a[::-1, ::-1].copy()[::-1, ::-1]))
    buffer = np.zeros(a.nbytes + 1, np.uint8)
    misaligned = np.ndarray(a.shape, a.dtype, buffer=buffer, offset=1)
    misaligned[...] = a
    out.append(("misaligned", misaligned))
    for name, b in out:
        assert np.array_equal(a, b), name
    return out


@dtypes
def test_fortran_order_and_strided_inputs_give_the_contiguous_result(dtype):
    cos, labels = cos_problem(dtype)
    expected = all_cosine_results(cos, labels)
    for name, layout in strided_copies(cos):
        assert_bits(all_cosine_results(layout, labels), expected)
    x, w, y = head_problem(dtype)
    expected = head_results(x, w, y)
    for (name_x, lx), (name_w, lw) in zip(strided_copies(x), strided_copies(w)):
        assert_bits(head_results(lx, lw, y), expected)
    strided_labels = np.zeros(3 * N, np.int64)
    strided_labels[::3] = y
    assert_bits(head_results(x, w, strided_labels[::3]), expected)


# --- byte order ------------------------------------------------------------------------------
@pytest.mark.parametrize("order", [">", "<"])
@dtypes
def test_non_native_byte_order_is_read_by_value(dtype, order):
    """'>f4'/'>f8' floats and '>i8' labels (or '<' on a big-endian machine): the result of the
    native arrays, bit for bit, in native dtypes; inputs unchanged."""
    swapped = np.dtype(dtype).newbyteorder(order)
    cos, labels = cos_problem(dtype)
    expected = all_cosine_results(cos, labels)
    for label_dtype in (">i8", "<i8", ">i4", ">i2"):
        assert_bits(all_cosine_results(cos.astype(swapped), labels.astype(label_dtype)),
                    expected)
    g = np.linspace(-1.0, 2.0, N)
    assert_bits(all_cosine_results(cos, labels, g.astype(">f8")),
                all_cosine_results(cos, labels, g))
    x, w, y = head_problem(dtype)
    expected = head_results(x, w, y)
    assert_bits(head_results(x.astype(swapped), w.astype(swapped), y.astype(">i8")), expected)
    assert_bits(head_results(x.astype(swapped), w, y), expected)
    want = amm_softmax.head_forward_backward(x, w, y, sample_rate=0.5, seed=1)
    got = amm_softmax.head_forward_backward(x.astype(swapped), w.astype(swapped), y,
                                            sample_rate=0.5, seed=1)
    assert_bits(got, want)
    # the reference converts the same way
    assert amm_softmax.reference.forward(cos.astype(swapped), labels) == \
        amm_softmax.reference.forward(cos, labels)
    # the sharded driver on cosine logits too
    assert_bits(_shard.cosine_forward_backward(cos.astype(swapped), labels.astype(">i8"),
                                               _shard.SingleProcess()),
                _shard.cosine_forward_backward(cos, labels, _shard.SingleProcess()))


def test_non_native_outputs_and_sharded_head_inputs_are_type_errors():
    """Outputs are written in place, so they must be native: a TypeError naming the dtype.
    The sharded head's driver takes native floats only (a TypeError naming the dtype)."""
    swapped = np.dtype(np.float32).newbyteorder("S")
    cos, labels = cos_problem(np.float32)
    with pytest.raises(TypeError, match=rf"^out must have the dtype of cos \(float32\), got "
                                        rf"{re.escape(swapped.str)}$"):
        amm_softmax.forward_backward(cos, labels, out=np.zeros(cos.shape, swapped))
    counts = np.zeros(N, np.dtype(np.int64).newbyteorder("S"))
    with pytest.raises(TypeError, match=rf"^hard_negatives must have dtype int64, got "
                                        rf"{re.escape(counts.dtype.str)}$"):
        amm_softmax.forward(cos, labels, hard_negatives=counts)
    x, w, y = head_problem(np.float32)
    with pytest.raises(TypeError, match=rf"^embeddings must have dtype float32 or float64 in "
                                        rf"native byte order, got {re.escape(swapped.str)}$"):
        _shard.head_forward_backward(x.astype(swapped), w, y, _shard.SingleProcess())


# --- 0-d arrays and Python lists -------------------------------------------------------------
def test_zero_dimensional_arrays():
    cos, labels = cos_problem()
    x, w, y = head_problem()
    with pytest.raises(ValueError, match=r"^cos must be 2-dimensional \(N, C\), got shape \(\)$"):
        amm_softmax.forward(np.array(0.5), labels)
    with pytest.raises(ValueError, match=r"^labels must have shape \(13,\) to match cos, "
                                         r"got \(\)$"):
        amm_softmax.forward(cos, np.array(3))
    with pytest.raises(ValueError, match=r"^labels must have shape \(1,\) to match cos, "
                                         r"got \(\)$"):
        amm_softmax.forward(cos[:1], np.array(3))       # not taken as one label
    with pytest.raises(ValueError, match=r"^embeddings must be 2-dimensional, got shape \(\)$"):
        amm_softmax.head_forward_backward(np.array(1.0), w, y)
    with pytest.raises(ValueError, match=r"^labels must have shape \(1,\) to match embeddings, "
                                         r"got \(\)$"):
        amm_softmax.head_forward_backward(x[:1], w, np.array(3))
    with pytest.raises(ValueError, match=r"^labels must have shape \(1,\) to match embeddings"):
        amm_softmax.head_forward_backward(x[:1], w, np.array(3), sample_rate=0.5)
    with pytest.raises(ValueError, match=r"^hard_negatives must have shape \(13,\), got \(\)$"):
        amm_softmax.forward(cos, labels, hard_negatives=np.array(0))
    with pytest.raises(ValueError, match=r"^out must have the shape of cos"):
        amm_softmax.backward(cos, labels, out=np.array(0.0))
    # a 0-d grad_output is a scalar, as documented
    for reduction in ("mean", "none"):
        assert np.array_equal(amm_softmax.backward(cos, labels, np.array(0.5), reduction=reduction),
                              amm_softmax.backward(cos, labels, 0.5, reduction=reduction))


def test_python_lists():
    """cos, labels and grad_output may be lists (documented); embeddings, weights, out and
    hard_negatives must be arrays (TypeError); a ragged list is a ValueError naming the
    argument."""
    cos, labels = cos_problem()
    g = np.linspace(-1.0, 2.0, N)
    assert_bits(all_cosine_results(cos.tolist(), labels.tolist(), g.tolist()),
                all_cosine_results(cos, labels, g))
    assert_bits(all_cosine_results(tuple(map(tuple, cos.tolist())), tuple(labels.tolist())),
                all_cosine_results(cos, labels))
    x, w, y = head_problem()
    assert_bits(head_results(x, w, y.tolist()), head_results(x, w, y))
    with pytest.raises(TypeError, match=r"^embeddings must be a numpy.ndarray of float32 or "
                                        r"float64, got list$"):
        amm_softmax.head_forward_backward(x.tolist(), w, y)
    with pytest.raises(TypeError, match=r"^weights must be a numpy.ndarray .*got list$"):
        amm_softmax.head_forward_backward(x, w.tolist(), y)
    with pytest.raises(TypeError, match=r"^out must be a numpy.ndarray, got list$"):
        amm_softmax.backward(cos, labels, out=np.zeros_like(cos).tolist())
    with pytest.raises(TypeError, match=r"^hard_negatives must be a numpy.ndarray of int64, "
                                        r"got list$"):
        amm_softmax.forward(cos, labels, hard_negatives=[0] * N)
    with pytest.raises(ValueError, match=r"^cos cannot be converted to an array: "):
        amm_softmax.forward([[0.1, 0.2], [0.3]], [0, 1])
    with pytest.raises(ValueError, match=r"^labels cannot be converted to an array: "):
        amm_softmax.forward(cos[:2], [[0, 1], [2]])
    with pytest.raises(TypeError, match=r"^cos must have dtype float32, float64, float16 or "
                                         r"bfloat16 \(ml_dtypes\), got int64$"):
        amm_softmax.forward([[1, 0], [0, 1]], [0, 1])      # a list of ints is not cosines


# --- dtypes ------------------------------------------------------------------------------------
def test_object_dtype_is_a_type_error_naming_it():
    cos, labels = cos_problem()
    x, w, y = head_problem()
    cases = [
        (lambda: amm_softmax.forward(cos.astype(object), labels),
         r"^cos must have dtype float32, float64, float16 or bfloat16 \(ml_dtypes\), got object$"),
        (lambda: amm_softmax.forward(cos, labels.astype(object)),
         r"^labels must have an integer dtype, got object$"),
        (lambda: amm_softmax.forward(cos, [1, 2, None] + [0] * (N - 3)),
         r"^labels must have an integer dtype, got object$"),
        (lambda: amm_softmax.backward(cos, labels, np.array(1.0, dtype=object)),
         r"^grad_output must be real \(integer or float\), got dtype object$"),
        (lambda: amm_softmax.backward(cos, labels, out=np.zeros(cos.shape, object)),
         r"^out must have the dtype of cos \(float64\), got object$"),
        (lambda: amm_softmax.forward(cos, labels, hard_negatives=np.zeros(N, object)),
         r"^hard_negatives must have dtype int64, got object$"),
        (lambda: amm_softmax.head_forward_backward(x.astype(object), w, y),
         r"^embeddings must have dtype float32 or float64, got object$"),
        (lambda: amm_softmax.head_forward_backward(x, w.astype(object), y),
         r"^weights must have dtype float32 or float64, got object$"),
        (lambda: amm_softmax.head_forward_backward(x, w, y.astype(object), sample_rate=0.5),
         r"^labels must have an integer dtype, got object$"),
    ]
    for call, message in cases:
        with unchanged(cos, labels, x, w, y), pytest.raises(TypeError, match=message):
            call()


def test_bool_labels_and_cosines_are_type_errors():
    cos, labels = cos_problem()
    x, w, y = head_problem()
    with pytest.raises(TypeError, match=r"^labels must have an integer dtype, got bool$"):
        amm_softmax.forward(cos, labels > 5)
    with pytest.raises(TypeError, match=r"^labels must have an integer dtype, got bool$"):
        amm_softmax.head_forward_backward(x, w, y > 5)
    with pytest.raises(TypeError, match=r"^labels must have an integer dtype, got bool$"):
        _shard.cosine_forward_backward(cos, labels > 5, _shard.SingleProcess())
    with pytest.raises(TypeError, match=r"^cos must have dtype float32, float64, float16 or "
                                         r"bfloat16 \(ml_dtypes\), got bool$"):
        amm_softmax.forward(cos > 0, labels)


def test_uint64_labels_above_2_63_name_the_row():
    cos, _ = cos_problem()
    x, w, _ = head_problem()
    for row, value in [(0, 2**63), (5, 2**63 + 7), (12, 2**64 - 1)]:
        labels = np.arange(N, dtype=np.uint64) % C
        labels[row] = value
        message = rf"^labels\[{row}\] = {value} is out of range: must be in \[0, {C}\) or " \
                  rf"equal ignore_index \(-100\)$"
        for call in (lambda: amm_softmax.forward(cos, labels),
                     lambda: amm_softmax.backward(cos, labels, 1.0),
                     lambda: amm_softmax.forward_backward(cos, labels),
                     lambda: amm_softmax.head_forward_backward(x, w, labels),
                     lambda: amm_softmax.head_forward_backward(x, w, labels, sample_rate=0.5),
                     lambda: _shard.cosine_forward_backward(cos, labels,
                                                            _shard.SingleProcess())):
            with unchanged(labels), pytest.raises(ValueError, match=message):
                call()


@pytest.mark.parametrize("label_dtype", [np.int8, np.uint8, np.int16, np.uint16])
def test_narrow_integer_labels(label_dtype):
    cos, labels = cos_problem()
    ignore = -100 if np.dtype(label_dtype).kind == "i" else 255
    labels[4] = ignore
    expected = all_cosine_results(cos, labels, ignore_index=ignore)
    assert_bits(all_cosine_results(cos, labels.astype(label_dtype), ignore_index=ignore),
                expected)
    x, w, y = head_problem()
    assert_bits(head_results(x, w, y.astype(label_dtype) if ignore == -100 else
                             np.where(y == -100, 255, y).astype(label_dtype),
                             ignore_index=ignore),
                head_results(x, w, np.where(y == -100, ignore, y), ignore_index=ignore))


# --- grad_output ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_grad_output_names_the_index(bad):
    cos, labels = cos_problem()
    text = {"nan": "nan", "inf": "inf", "-inf": "-inf"}[repr(float(bad))]
    with pytest.raises(ValueError, match=rf"^grad_output\[0\] = {text} is not finite$"):
        amm_softmax.backward(cos, labels, bad)
    with pytest.raises(ValueError, match=rf"^grad_output\[0\] = {text} is not finite$"):
        amm_softmax.backward(cos, labels, np.float32(bad), reduction="sum")
    g = np.ones(N)
    g[7] = bad
    with unchanged(g), pytest.raises(ValueError, match=rf"^grad_output\[7\] = {text} is not "
                                                       rf"finite$"):
        amm_softmax.backward(cos, labels, g, reduction="none")
    with pytest.raises(ValueError, match=rf"^grad_output\[7\] = {text} is not finite$"):
        amm_softmax.backward(cos, labels, g.tolist(), reduction="none")


# --- outputs that alias an input -------------------------------------------------------------
def test_out_that_is_a_view_of_an_input_is_refused():
    """Every way an output can share memory with an input, including inputs that the wrapper
    copies before the call (strided, non-native), is refused before anything is written."""
    cos, labels = cos_problem()
    n, c = cos.shape
    # out is cos itself, a reshaped view of it, or overlaps a strided cos it was copied from
    buffer = np.zeros(2 * n * c)
    strided = buffer[::2].reshape(n, c)
    strided[...] = cos
    views = [("cos", cos, cos), ("cos", cos, cos.reshape(-1).reshape(n, c)),
             ("cos", strided, buffer[:n * c].reshape(n, c)),
             ("cos", strided, buffer[n * c:].reshape(n, c))]
    for name, given, out in views:
        for function, args in (("backward", (1.0,)), ("forward_backward", ())):
            with unchanged(given, labels), \
                    pytest.raises(ValueError, match=rf"^out must not overlap {name} \(inputs "
                                                    rf"are never modified\)$"):
                getattr(amm_softmax, function)(given, labels, *args, out=out)
    # out overlapping grad_output (reduction none): the upstream gradient is an input too
    out = np.zeros((n, c))
    with unchanged(cos, labels), \
            pytest.raises(ValueError, match=r"^out must not overlap grad_output"):
        amm_softmax.backward(cos, labels, out[:, 0], out=out, reduction="none")
    # hard_negatives inside labels, inside cos, or inside out
    for holder, counts, name in [
            (labels, labels, "labels"),
            (cos, cos[0].view(np.int64)[:n], "cos"),
    ]:
        for function, args in (("forward", ()), ("backward", (1.0,)), ("forward_backward", ())):
            with unchanged(cos, labels), \
                    pytest.raises(ValueError, match=rf"^hard_negatives must not overlap {name} "
                                                    rf"\(inputs are never modified\)$"):
                getattr(amm_softmax, function)(cos, labels, *args, hard_negatives=counts)
    out = np.zeros((n, c))
    with pytest.raises(ValueError, match=r"^hard_negatives must not overlap out$"):
        amm_softmax.forward_backward(cos, labels, out=out,
                                     hard_negatives=out[0].view(np.int64)[:n])


@pytest.mark.parametrize("rate", [1.0, 0.5])
def test_head_out_that_is_a_view_of_an_input_is_refused(rate):
    x, w, y = head_problem()
    n, d = x.shape
    buffer = np.zeros(2 * n * d)
    strided_x = buffer[::2].reshape(n, d)
    strided_x[...] = x
    gw = np.zeros_like(w)
    cases = [
        ((x, w, y), (x, gw), r"out\[0\] must not overlap embeddings"),
        ((x, w, y), (np.zeros_like(x), w), r"out\[1\] must not overlap weights"),
        ((strided_x, w, y), (buffer[:n * d].reshape(n, d), gw),
         r"out\[0\] must not overlap embeddings"),
    ]
    for inputs, out, message in cases:
        with unchanged(*inputs), pytest.raises(ValueError, match=rf"^{message} \(inputs are "
                                                                 rf"never modified\)$"):
            amm_softmax.head_forward_backward(*inputs, out=out, sample_rate=rate, seed=2)
    with unchanged(x, w, y), \
            pytest.raises(ValueError, match=r"^hard_negatives must not overlap labels"):
        amm_softmax.head_forward_backward(x, w, y, hard_negatives=y, sample_rate=rate)
    with unchanged(x, w, y), \
            pytest.raises(ValueError, match=r"^hard_negatives must not overlap weights"):
        amm_softmax.head_forward_backward(x, w, y, hard_negatives=w.reshape(-1).view(np.int64)[:n],
                                          sample_rate=rate)
    out = (np.zeros_like(x), np.zeros_like(w))
    with pytest.raises(ValueError, match=r"^hard_negatives must not overlap out\[1\]$"):
        amm_softmax.head_forward_backward(x, w, y, out=out, sample_rate=rate,
                                          hard_negatives=out[1].reshape(-1).view(np.int64)[:n])


def test_disjoint_views_of_one_buffer_are_accepted():
    """Outputs next to the inputs in one buffer, without sharing an element: accepted, and the
    result is that of separate arrays."""
    cos, labels = cos_problem()
    n, c = cos.shape
    buffer = np.zeros(2 * n * c + n)
    given = buffer[:n * c].reshape(n, c)
    given[...] = cos
    out = buffer[n * c:2 * n * c].reshape(n, c)
    counts = buffer[2 * n * c:].view(np.int64)
    with unchanged(given):
        loss, grad = amm_softmax.forward_backward(given, labels, out=out, hard_negatives=counts,
                                                  reduction="none")
    want_counts = np.zeros(n, np.int64)
    want_loss, want_grad = amm_softmax.forward_backward(cos, labels, hard_negatives=want_counts,
                                                        reduction="none")
    assert grad is out
    assert_bits([loss, grad, counts.copy()], [want_loss, want_grad, want_counts])


# --- torch -------------------------------------------------------------------------------------
@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.fixture
def amm_torch(torch):
    from amm_softmax import torch as module
    return module


def torch_problem(torch):
    cos, labels = cos_problem(np.float64, "torch-edge")
    return torch.from_numpy(cos), torch.from_numpy(labels)


def test_torch_tensors_off_the_cpu_are_a_value_error(torch, amm_torch):
    cos, labels = torch_problem(torch)
    crit = amm_torch.AMMSoftmaxLoss()
    meta = "meta"
    with pytest.raises(ValueError, match=r"^cos must be on the CPU, got device meta$"):
        crit(cos.to(meta), labels)
    with pytest.raises(ValueError, match=r"^labels must be on the CPU, got device meta$"):
        crit(cos, labels.to(meta))
    head = amm_torch.AMMSoftmaxHead(D, C, dtype=torch.float64)
    x = torch.randn(N, D, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^embeddings must be on the CPU, got device meta$"):
        head(x.to(meta), labels)
    with pytest.raises(ValueError, match=r"^labels must be on the CPU, got device meta$"):
        head(x, labels.to(meta))
    sampled = amm_torch.AMMSoftmaxHead(D, C, dtype=torch.float64, sample_rate=0.5)
    with pytest.raises(ValueError, match=r"must be on the CPU, got device meta$"):
        sampled(x.to(meta), labels)
    assert sampled.step == 0 and head.step == 0


def test_torch_sampled_head_labels_off_the_cpu(torch, amm_torch):
    _, labels = torch_problem(torch)
    sampled = amm_torch.AMMSoftmaxHead(D, C, dtype=torch.float64, sample_rate=0.5)
    with pytest.raises(ValueError, match=r"labels\w* must be on the CPU, got device meta$"):
        sampled(torch.randn(N, D, dtype=torch.float64), labels.to("meta"))


def test_torch_labels_that_require_grad(torch, amm_torch):
    """Integer tensors cannot require a gradient (torch refuses); float labels that do are a
    TypeError naming the dtype; labels computed from a graph (argmax) are plain integers."""
    cos, labels = torch_problem(torch)
    with pytest.raises(RuntimeError):
        labels.clone().requires_grad_()
    crit = amm_torch.AMMSoftmaxLoss()
    float_labels = labels.double().requires_grad_()
    with pytest.raises(TypeError, match=r"^labels must have an integer dtype, got float64$"):
        crit(cos.clone().requires_grad_(), float_labels)
    head = amm_torch.AMMSoftmaxHead(D, C, dtype=torch.float64)
    x = torch.randn(N, D, dtype=torch.float64, requires_grad=True)
    with pytest.raises(TypeError, match=r"^labels must have an integer dtype, got float64$"):
        head(x, float_labels)
    assert float_labels.grad is None and x.grad is None
    logits = torch.randn(N, C, dtype=torch.float64, requires_grad=True)
    derived = logits.argmax(dim=1)
    assert not derived.requires_grad
    c = cos.clone().requires_grad_()
    loss = crit(c, derived)
    loss.backward()
    expected = amm_softmax.forward_backward(cos.numpy(), derived.numpy())
    assert loss.item() == expected[0]
    assert np.array_equal(c.grad.numpy(), expected[1])


def test_torch_layouts_and_dtypes(torch, amm_torch):
    """Non-contiguous tensors give the contiguous result; int8/uint8 labels are read by value;
    complex64 and bool are TypeErrors naming the dtype (16-bit floats are taken since 0.3); the
    input tensors are unchanged."""
    cos, labels = torch_problem(torch)
    crit = amm_torch.AMMSoftmaxLoss(reduction="sum")
    want = amm_softmax.forward_backward(cos.numpy(), labels.numpy(), reduction="sum")
    before = cos.clone(), labels.clone()
    for variant in (cos.t().contiguous().t(), torch.flip(torch.flip(cos, [0, 1]).contiguous(),
                                                          [0, 1])):
        c = variant.detach().requires_grad_()
        loss = crit(c, labels)
        loss.backward()
        assert loss.item() == want[0] and np.array_equal(c.grad.numpy(), want[1])
    for narrow in (torch.int8, torch.uint8, torch.int16, torch.int32):
        y = labels.clone()
        y[4] = 3
        ref = amm_softmax.forward(cos.numpy(), y.numpy(), reduction="sum")
        assert crit(cos, y.to(narrow)).item() == ref
    with pytest.raises(TypeError, match=r"^cos must have dtype float32, float64, float16 or "
                                         r"bfloat16 \(ml_dtypes\), got complex64$"):
        crit(cos.to(torch.complex64), labels)
    with pytest.raises(TypeError, match=r"^labels must have an integer dtype, got bool$"):
        crit(cos, labels > 5)
    with pytest.raises(TypeError, match=r"^labels must be a torch.Tensor, got list$"):
        crit(cos, labels.tolist())
    assert torch.equal(cos, before[0]) and torch.equal(labels, before[1])


# Expected failures until torch.py's _numpy checks the layout, resolves lazy negation and
# conjugation, and names the argument when t.numpy() refuses the dtype, and AMMSoftmaxHead.forward
# sizes its hard-negative counts without len() on the labels (remove the markers then).
def test_torch_bfloat16_is_taken_and_the_head_names_its_dtypes(torch, amm_torch):
    """Since 0.3 bfloat16 cosines are computed (in float32); the head's weights must still be
    float32 or float64, and the message says so."""
    cos, labels = torch_problem(torch)
    loss = amm_torch.AMMSoftmaxLoss()(cos.bfloat16(), labels)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    with pytest.raises(TypeError, match=r"^embeddings must have dtype float32 or float64"):
        amm_torch.AMMSoftmaxHeadFunction.apply(cos.bfloat16(), cos, labels, {}, 0)


def test_torch_sparse_is_a_type_error_naming_the_argument(torch, amm_torch):
    cos, labels = torch_problem(torch)
    with pytest.raises(TypeError, match=r"^cos .*sparse"):
        amm_torch.AMMSoftmaxLoss()(cos.to_sparse(), labels)


def test_torch_negative_view_gives_the_value_it_shows(torch, amm_torch):
    """torch._neg_view (what some ops return lazily) holds -x with a bit set: numpy() refuses
    it; the loss of its values is expected."""
    cos, labels = torch_problem(torch)
    negated = torch._neg_view(-cos)
    assert torch.equal(negated, cos)
    assert amm_torch.AMMSoftmaxLoss()(negated, labels).item() == \
        amm_softmax.forward(cos.numpy(), labels.numpy())


def test_torch_head_zero_dimensional_labels(torch, amm_torch):
    head = amm_torch.AMMSoftmaxHead(D, C, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^labels must have shape \(1,\) to match embeddings, "
                                         r"got \(\)$"):
        head(torch.randn(1, D, dtype=torch.float64), torch.tensor(3))
