"""Every error path: the exception type, and a message that names the offending parameter, row,
column and value. Each case runs against the library and the reference (they share the argument
checks of _params.py; the non-finite check of cos is the library's own), for every function,
and checks that no input was modified by the failed call."""
import math
import re
import threading

import numpy as np
import pytest

from amm_softmax import _library
from helpers import LIB, REF, call, unchanged

MODULES = [pytest.param(LIB, id="library"), pytest.param(REF, id="reference")]
FUNCTIONS = ["forward", "backward", "forward_backward"]
N, C = 5, 6


def problem(dtype=np.float64):
    rng = np.random.default_rng(1234)
    cos = rng.uniform(-0.9, 0.9, (N, C)).astype(dtype)
    labels = np.array([1, 0, 5, 2, 3], dtype=np.int64)
    return cos, labels


def with_cos(fn):
    def make():
        cos, labels = problem()
        return fn(cos), labels, {}
    return make


def with_labels(fn):
    def make():
        cos, labels = problem()
        return cos, fn(labels), {}
    return make


def with_params(**params):
    def make():
        cos, labels = problem()
        return cos, labels, params
    return make


def set_labels(changes, dtype=np.int64):
    def fn(labels):
        labels = labels.astype(dtype)
        for i, v in changes.items():
            labels[i] = v
        return labels
    return fn


def set_cos(changes):
    def fn(cos):
        for ij, v in changes.items():
            cos[ij] = v
        return cos
    return fn


# (id, make() -> (cos, labels, params), exception, regex the message must match)
CASES = [
    # dtypes and kinds of object
    ("cos-int64", with_cos(lambda c: (c * 10).astype(np.int64)), TypeError,
     r"cos must have dtype float32, float64, float16 or bfloat16 \(ml_dtypes\), got int64"),
    ("cos-int32", with_cos(lambda c: (c * 10).astype(np.int32)), TypeError,
     r"cos must have dtype float32, float64, float16 or bfloat16 \(ml_dtypes\), got int32"),
    ("cos-complex", with_cos(lambda c: c.astype(np.complex128)), TypeError,
     r"cos must have dtype float32, float64, float16 or bfloat16 \(ml_dtypes\), got complex128"),
    ("cos-bool", with_cos(lambda c: c > 0), TypeError,
     r"cos must have dtype float32, float64, float16 or bfloat16 \(ml_dtypes\), got bool"),
    ("cos-longdouble", with_cos(lambda c: c.astype(np.longdouble)), TypeError,
     r"cos must have dtype float32, float64, float16 or bfloat16 \(ml_dtypes\), got (float128|float96|longdouble)"),
    ("cos-int-list", with_cos(lambda c: [[1, 0, 0, 0, 0, 0]] * N), TypeError,
     r"cos must have dtype float32, float64, float16 or bfloat16 \(ml_dtypes\), got int64"),
    ("cos-dict", with_cos(lambda c: {"cos": c}), TypeError,
     r"cos must be a numpy.ndarray of float32, float64, float16 or bfloat16 \(ml_dtypes\), got dict"),
    ("cos-None", with_cos(lambda c: None), TypeError, r"cos must be a numpy.ndarray.*NoneType"),
    ("labels-float64", with_labels(lambda y: y.astype(np.float64)), TypeError,
     r"labels must have an integer dtype, got float64"),
    ("labels-float32", with_labels(lambda y: y.astype(np.float32)), TypeError,
     r"labels must have an integer dtype, got float32"),
    ("labels-bool", with_labels(lambda y: y > 1), TypeError,
     r"labels must have an integer dtype, got bool"),
    ("labels-float-list", with_labels(lambda y: [1.0, 0.0, 5.0, 2.0, 3.0]), TypeError,
     r"labels must have an integer dtype, got float64"),
    ("labels-strings", with_labels(lambda y: y.astype(str)), TypeError,
     r"labels must have an integer dtype, got <U"),
    # shapes
    ("cos-1d", with_cos(lambda c: c[0]), ValueError,
     r"cos must be 2-dimensional \(N, C\), got shape \(6,\)"),
    ("cos-3d", with_cos(lambda c: c.reshape(1, N, C)), ValueError,
     r"cos must be 2-dimensional \(N, C\), got shape \(1, 5, 6\)"),
    ("cos-0d", with_cos(lambda c: np.array(0.5)), ValueError,
     r"cos must be 2-dimensional \(N, C\), got shape \(\)"),
    ("cos-no-classes", with_cos(lambda c: c[:, :0]), ValueError,
     r"cos must have at least one class \(column\), got shape \(5, 0\)"),
    ("labels-short", with_labels(lambda y: y[:3]), ValueError,
     r"labels must have shape \(5,\) to match cos, got \(3,\)"),
    ("labels-long", with_labels(lambda y: np.append(y, 0)), ValueError,
     r"labels must have shape \(5,\) to match cos, got \(6,\)"),
    ("labels-2d", with_labels(lambda y: y.reshape(N, 1)), ValueError,
     r"labels must have shape \(5,\) to match cos, got \(5, 1\)"),
    ("labels-scalar", with_labels(lambda y: np.int64(1)), ValueError,
     r"labels must have shape \(5,\) to match cos, got \(\)"),
    # label values
    ("label-too-big", with_labels(set_labels({3: 7})), ValueError,
     r"labels\[3\] = 7 is out of range: must be in \[0, 6\) or equal ignore_index \(-100\)"),
    ("label-equal-C", with_labels(set_labels({2: 6})), ValueError, r"labels\[2\] = 6 is out"),
    ("label-negative", with_labels(set_labels({0: -1})), ValueError, r"labels\[0\] = -1 is out"),
    ("label-int64-min", with_labels(set_labels({4: -(2**63)})), ValueError,
     r"labels\[4\] = -9223372036854775808 is out"),
    ("label-lowest-row-named", with_labels(set_labels({1: 9, 3: -7})), ValueError,
     r"labels\[1\] = 9 is out"),
    ("label-int32", with_labels(set_labels({3: 70}, np.int32)), ValueError,
     r"labels\[3\] = 70 is out"),
    ("label-uint8", with_labels(set_labels({1: 200}, np.uint8)), ValueError,
     r"labels\[1\] = 200 is out"),
    ("label-uint64-beyond-int64", with_labels(set_labels({2: 2**63}, np.uint64)), ValueError,
     r"labels\[2\] = 9223372036854775808 is out of range"),
    ("label-uint64-max", with_labels(set_labels({4: 2**64 - 1}, np.uint64)), ValueError,
     r"labels\[4\] = 18446744073709551615 is out of range"),
    ("label-default-ignore-with-other-ignore", lambda: (
        problem()[0], set_labels({4: -100})(problem()[1]), dict(ignore_index=-1)),
     ValueError, r"labels\[4\] = -100 is out of range: .* ignore_index \(-1\)"),
    # non-finite cosines in rows that are not ignored
    ("cos-nan", with_cos(set_cos({(2, 4): np.nan})), ValueError,
     r"cos\[2, 4\] = nan is not finite \(row 2 is not ignored\)"),
    ("cos-inf", with_cos(set_cos({(2, 4): np.inf})), ValueError,
     r"cos\[2, 4\] = inf is not finite"),
    ("cos-minus-inf", with_cos(set_cos({(0, 0): -np.inf})), ValueError,
     r"cos\[0, 0\] = -inf is not finite"),
    ("cos-nan-at-target", with_cos(set_cos({(3, 2): np.nan})), ValueError,
     r"cos\[3, 2\] = nan is not finite"),
    ("cos-nan-last", with_cos(set_cos({(4, 5): np.nan})), ValueError, r"cos\[4, 5\] = nan"),
    ("cos-lowest-row-named", with_cos(set_cos({(4, 1): np.nan, (1, 4): np.inf})), ValueError,
     r"cos\[1, 4\] = inf is not finite"),
    ("cos-float32-nan", with_cos(lambda c: set_cos({(2, 3): np.nan})(c.astype(np.float32))),
     ValueError, r"cos\[2, 3\] = nan is not finite"),
    # scale
    *[(f"scale-{v}", with_params(scale=v), ValueError,
       rf"scale = {re.escape(str(float(v)))} is invalid: must be finite and > 0")
      for v in (0, -1.0, -1e-300, math.nan, math.inf, -math.inf)],
    ("scale-string", with_params(scale="64"), TypeError,
     r"scale must be a real number, got '64' \(str\)"),
    ("scale-bool", with_params(scale=True), TypeError, r"scale must be a real number, got True"),
    ("scale-None", with_params(scale=None), TypeError, r"scale must be a real number, got None"),
    ("scale-complex", with_params(scale=1j), TypeError, r"scale must be a real number, got 1j"),
    # margin
    ("margin-arc-negative", with_params(margin=-0.1), ValueError,
     r"margin = -0\.1 is invalid: must be in \[0, pi\) for target 'arc'"),
    ("margin-arc-pi", with_params(margin=math.pi), ValueError,
     r"margin = 3\.14159\d* is invalid: must be in \[0, pi\)"),
    ("margin-arc-4", with_params(margin=4.0), ValueError, r"margin = 4\.0 is invalid"),
    ("margin-arc-nan", with_params(margin=math.nan), ValueError, r"margin = nan is invalid"),
    ("margin-arc-inf", with_params(margin=math.inf), ValueError, r"margin = inf is invalid"),
    ("margin-cos-inf", with_params(margin=math.inf, target="cos"), ValueError,
     r"margin = inf is invalid: must be finite"),
    ("margin-cos-minus-inf", with_params(margin=-math.inf, target="cos"), ValueError,
     r"margin = -inf is invalid: must be finite"),
    ("margin-cos-nan", with_params(margin=math.nan, target="cos"), ValueError,
     r"margin = nan is invalid: must be finite"),
    ("margin-string", with_params(margin="0.5"), TypeError, r"margin must be a real number"),
    # hard_margin
    ("hard-margin-negative", with_params(hard_margin=-0.2), ValueError,
     r"hard_margin = -0\.2 is invalid: must be finite and >= 0"),
    ("hard-margin-nan", with_params(hard_margin=math.nan, hard="mv-fixed"), ValueError,
     r"hard_margin = nan is invalid"),
    ("hard-margin-inf", with_params(hard_margin=math.inf, hard="none"), ValueError,
     r"hard_margin = inf is invalid"),
    ("hard-margin-list", with_params(hard_margin=[0.2]), TypeError,
     r"hard_margin must be a real number, got \[0\.2\] \(list\)"),
    # choices
    ("target-unknown", with_params(target="sphere"), ValueError,
     r"target = 'sphere' is unknown: must be one of \('arc', 'cos'\)"),
    ("target-case", with_params(target="ARC"), ValueError, r"target = 'ARC' is unknown"),
    ("target-int", with_params(target=0), TypeError, r"target must be a string.*got 0"),
    ("hard-unknown", with_params(hard="mv_fixed"), ValueError,
     r"hard = 'mv_fixed' is unknown: must be one of \('amm', 'mv-fixed', 'mv-adaptive', "
     r"'none', 'curricular'\)"),
    ("hard-None", with_params(hard=None), TypeError, r"hard must be a string.*got None"),
    ("reduction-unknown", with_params(reduction="avg"), ValueError,
     r"reduction = 'avg' is unknown: must be one of \('mean', 'sum', 'none'\)"),
    ("reduction-bytes", with_params(reduction=b"mean"), TypeError,
     r"reduction must be a string.*got b'mean'"),
    # integers
    ("num-threads-negative", with_params(num_threads=-1), ValueError,
     r"^num_threads = -1 is invalid: must be >= 0$"),
    ("num-threads-huge", with_params(num_threads=2**31), ValueError,
     r"num_threads = 2147483648 is out of range"),
    ("num-threads-float", with_params(num_threads=1.5), TypeError,
     r"num_threads must be an integer, got 1\.5 \(float\)"),
    ("num-threads-integral-float", with_params(num_threads=2.0), TypeError,
     r"num_threads must be an integer, got 2\.0"),
    ("num-threads-string", with_params(num_threads="2"), TypeError,
     r"num_threads must be an integer, got '2'"),
    ("num-threads-bool", with_params(num_threads=True), TypeError,
     r"num_threads must be an integer, got True"),
    ("ignore-index-float", with_params(ignore_index=1.5), TypeError,
     r"ignore_index must be an integer, got 1\.5"),
    ("ignore-index-None", with_params(ignore_index=None), TypeError,
     r"ignore_index must be an integer, got None"),
    ("ignore-index-too-big", with_params(ignore_index=2**63), ValueError,
     r"ignore_index = 9223372036854775808 is out of range"),
    ("ignore-index-too-small", with_params(ignore_index=-(2**63) - 1), ValueError,
     r"ignore_index = -9223372036854775809 is out of range"),
    # keywords
    ("unknown-keyword", with_params(scal=30.0), TypeError, r"unexpected keyword argument 'scal'"),
]


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("make,exception,message", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input(module, function, make, exception, message):
    cos, labels, params = make()
    args = (1.0,) if function == "backward" else ()
    with pytest.raises(exception, match=message) as info:
        call(module, function, cos, labels, *args, **params)
    assert type(info.value) is exception


GRAD_OUTPUT_CASES = [
    ("nan", "mean", math.nan, ValueError, r"grad_output\[0\] = nan is not finite"),
    ("inf", "sum", math.inf, ValueError, r"grad_output\[0\] = inf is not finite"),
    ("minus-inf", "mean", -math.inf, ValueError, r"grad_output\[0\] = -inf is not finite"),
    ("nan-array-1", "sum", np.array([np.nan]), ValueError, r"grad_output\[0\] = nan"),
    ("nan-broadcast", "none", math.nan, ValueError, r"grad_output\[0\] = nan is not finite"),
    ("vector-nan", "none", np.array([1.0, 2.0, np.nan, 1.0, 1.0]), ValueError,
     r"grad_output\[2\] = nan is not finite"),
    ("vector-inf-float32", "none", np.array([1, 2, 3, 4, np.inf], np.float32), ValueError,
     r"grad_output\[4\] = inf is not finite"),
    ("none-short", "none", np.ones(4), ValueError,
     r"grad_output must be a scalar or have shape \(5,\) for reduction 'none', got shape \(4,\)"),
    ("none-2d", "none", np.ones((5, 1)), ValueError,
     r"grad_output must be a scalar or have shape \(5,\) .*got shape \(5, 1\)"),
    ("none-list-long", "none", [1.0] * 6, ValueError, r"got shape \(6,\)"),
    ("mean-vector", "mean", np.ones(3), ValueError,
     r"grad_output must be a scalar for reduction 'mean', got shape \(3,\)"),
    ("sum-vector-N", "sum", np.ones(5), ValueError,
     r"grad_output must be a scalar for reduction 'sum', got shape \(5,\)"),
    ("mean-2d", "mean", np.ones((1, 1)), ValueError,
     r"grad_output must be a scalar for reduction 'mean', got shape \(1, 1\)"),
    ("mean-empty", "mean", np.ones(0), ValueError, r"got shape \(0,\)"),
    ("string", "mean", "1", TypeError, r"grad_output must be real"),
    ("bool", "sum", True, TypeError, r"grad_output must be a real number or array, got True"),
    ("complex", "mean", 1j, TypeError, r"grad_output must be real .*complex128"),
    ("None", "mean", None, TypeError, r"grad_output must be real .*object"),
]


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("reduction,grad_output,exception,message",
                         [c[1:] for c in GRAD_OUTPUT_CASES], ids=[c[0] for c in GRAD_OUTPUT_CASES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_bad_grad_output(module, dtype, reduction, grad_output, exception, message):
    cos, labels = problem(dtype)
    with pytest.raises(exception, match=message):
        call(module, "backward", cos, labels, grad_output, reduction=reduction)


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_in_ignored_rows_are_accepted(module, function, dtype, bad):
    """Only rows that are not ignored must be finite; an ignored row gives 0 loss, 0 gradient,
    and the rest is the result without that row."""
    cos, labels = problem(dtype)
    cos[1, :] = bad
    cos[3, 2] = bad
    labels[1] = labels[3] = -100
    kept = np.array([0, 2, 4])
    args = (np.arange(1.0, N + 1),) if function == "backward" else ()
    out = call(module, function, cos, labels, *args, reduction="none")
    sub_args = (np.arange(1.0, N + 1)[kept],) if function == "backward" else ()
    sub = call(module, function, cos[kept], labels[kept], *sub_args, reduction="none")
    outs, subs = (out, sub) if function == "forward_backward" else ((out,), (sub,))
    for o, s in zip(outs, subs):
        assert np.all(np.isfinite(o))
        assert np.all(o[[1, 3]] == 0)
        assert np.array_equal(o[kept], s)


def test_lowest_column_named_when_the_target_is_also_non_finite():
    """Row 2 holds NaN at column 1 and inf at its target column 5. The reference names the lowest
    column, cos[2, 1]; so does the kernel's own contract (LossKernels.run: "the lowest row (and
    in it the lowest column)"). The library reads the target first and names cos[2, 5]."""
    cos, labels = problem()
    cos[2, 1], cos[2, 5] = np.nan, np.inf
    assert labels[2] == 5
    messages = {}
    for module in (REF, LIB):
        with pytest.raises(ValueError) as info:
            call(module, "forward", cos, labels)
        messages[module.__name__] = str(info.value)
    assert "cos[2, 1] = nan" in messages[REF.__name__]
    assert "cos[2, 1] = nan" in messages[LIB.__name__], messages


# --- the library's own messages (amm_last_error) -----------------------------------------------
def last_error() -> str:
    return _library.load().amm_last_error().decode()


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("dtype,suffix", [(np.float32, "f32"), (np.float64, "f64")],
                         ids=["float32", "float64"])
def test_library_errors_come_from_amm_last_error(function, dtype, suffix):
    """A non-finite cosine is found by the library; its message (amm_last_error(), prefixed by the
    C function's name) is the exception's, and it stays until the next failing call on the same
    thread (a successful call does not clear it)."""
    cos, labels = problem(dtype)
    cos[3, 1] = np.nan
    args = (1.0,) if function == "backward" else ()
    with pytest.raises(ValueError) as info:
        call(LIB, function, cos, labels, *args)
    expected = (f"amm_{function}_{suffix}: cos[3, 1] = nan is not finite "
                f"(row 3 is not ignored)")
    assert str(info.value) == expected
    assert last_error() == expected
    cos[3, 1] = 0.0
    call(LIB, function, cos, labels, *args)
    assert last_error() == expected


def test_last_error_is_per_thread():
    """amm_last_error() is per thread: "" on a thread that never failed; each failing thread reads
    its own message, even while other threads fail at the same time."""
    results = {}

    def fresh():
        results["fresh"] = last_error()

    t = threading.Thread(target=fresh)
    t.start()
    t.join()
    assert results["fresh"] == ""

    barrier = threading.Barrier(4)

    def failing(row):
        cos, labels = problem()
        cos = np.tile(cos, (40, 1))
        labels = np.tile(labels, 40)
        cos[row, 2] = np.inf
        barrier.wait()
        message = None
        for _ in range(20):
            try:
                LIB.forward(cos, labels, num_threads=1)
            except ValueError as e:
                message = str(e)
            if message != last_error() or f"cos[{row}, 2]" not in message:
                results[row] = (message, last_error())
                return
        results[row] = "ok"

    threads = [threading.Thread(target=failing, args=(row,)) for row in (7, 50, 101, 199)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[row] == "ok" for row in (7, 50, 101, 199)), results


@pytest.mark.parametrize("num_threads", [1, 2, 3, 0, 16])
def test_lowest_bad_row_named_whatever_the_thread_count(num_threads):
    """Several bad rows: the error names the lowest one, whatever num_threads is."""
    rng = np.random.default_rng(5)
    cos = rng.uniform(-1, 1, (257, 301))
    labels = rng.integers(0, 301, 257)
    for i, j in [(250, 3), (151, 7), (149, 300), (203, 0)]:
        cos[i, j] = np.nan
    with pytest.raises(ValueError, match=r"cos\[149, 300\] = nan"):
        call(LIB, "forward_backward", cos, labels, num_threads=num_threads)


def test_failed_call_leaves_inputs_unchanged_midway():
    """A failure found late (the last row) leaves every input as it was."""
    rng = np.random.default_rng(6)
    cos = rng.uniform(-1, 1, (300, 500)).astype(np.float32)
    labels = rng.integers(0, 500, 300)
    cos[299, 499] = np.nan
    g = rng.normal(size=300)
    with unchanged(cos, labels, g):
        for function, args in [("forward", ()), ("backward", (g,)), ("forward_backward", ())]:
            with pytest.raises(ValueError, match=r"cos\[299, 499\] = nan"):
                getattr(LIB, function)(cos, labels, *args, reduction="none")
