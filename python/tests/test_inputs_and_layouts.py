"""What the functions accept: label dtypes, memory layouts, kinds of grad_output, outputs, the
version, determinism across thread counts and concurrent callers."""
import concurrent.futures
import re
from pathlib import Path

import numpy as np
import pytest

import amm_softmax
from helpers import LIB, REF, call, random_problem, rng_for, unchanged

MODULES = [pytest.param(LIB, id="library"), pytest.param(REF, id="reference")]
dtypes = pytest.mark.parametrize("dtype", [np.float32, np.float64],
                                 ids=["float32", "float64"])
FUNCTIONS = ["forward", "backward", "forward_backward"]


def run_all(module, cos, labels, reduction="none", grad_output=None, **params):
    """The outputs of the three functions, as a flat list of arrays."""
    n = np.shape(labels)[0]
    if grad_output is None:
        grad_output = np.linspace(-1.5, 2.0, n) if reduction == "none" else 0.75
    loss = call(module, "forward", cos, labels, reduction=reduction, **params)
    grad = call(module, "backward", cos, labels, grad_output, reduction=reduction, **params)
    loss_fb, grad_fb = call(module, "forward_backward", cos, labels, reduction=reduction,
                            **params)
    return [np.asarray(loss), grad, np.asarray(loss_fb), grad_fb]


def assert_same_results(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y)


# --- labels --------------------------------------------------------------------------------
LABEL_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                np.uint64, np.intp, np.dtype(">i8"), np.dtype(">u2"), np.longlong]


@pytest.mark.parametrize("module", MODULES)
@dtypes
@pytest.mark.parametrize("label_dtype", LABEL_DTYPES, ids=lambda d: np.dtype(d).str)
def test_label_dtypes(module, dtype, label_dtype):
    """Every integer dtype (any byte order) gives bitwise the result of int64 labels; signed ones
    with ignored rows (-100), unsigned ones with an ignore_index they can hold (255 >= C)."""
    rng = rng_for("label-dtypes", np.dtype(dtype).name, np.dtype(label_dtype).str)
    cos, labels = random_problem(rng, 40, 120, dtype)
    signed = np.dtype(label_dtype).kind == "i"
    ignore = -100 if signed else 255
    labels[::7] = ignore
    converted = labels.astype(label_dtype)
    assert np.array_equal(converted.astype(np.int64), labels)
    expected = run_all(module, cos, labels, ignore_index=ignore)
    assert_same_results(run_all(module, cos, converted, ignore_index=ignore), expected)


@pytest.mark.parametrize("module", MODULES)
def test_labels_as_python_sequences(module):
    rng = rng_for("label-lists")
    cos, labels = random_problem(rng, 12, 30, np.float64)
    labels[3] = -100
    expected = run_all(module, cos, labels)
    as_list = [int(v) for v in labels]
    assert_same_results(run_all(module, cos, as_list), expected)
    assert_same_results(run_all(module, cos, tuple(as_list)), expected)
    assert_same_results(run_all(module, cos, [np.int16(v) for v in labels]), expected)


@pytest.mark.parametrize("module", MODULES)
def test_uint64_labels_beyond_int64(module):
    """uint64 values past the int64 range are out of range (ValueError naming the row), not
    wrapped around to negative labels; Python lists NumPy cannot hold as integers are refused."""
    cos, _ = random_problem(rng_for("u64"), 4, 10, np.float64)
    for row, value in [(2, 2**63), (0, 2**64 - 1), (3, 2**64 - 100)]:
        labels = np.array([1, 2, 2, 3], dtype=np.uint64)
        labels[row] = value
        with pytest.raises(ValueError, match=rf"labels\[{row}\] = {value} is out of range"):
            call(module, "forward", cos, labels)
    with pytest.raises(ValueError, match=r"labels\[0\] = 9223372036854775813 is out of range"):
        call(module, "forward", cos[:1], [2**63 + 5])   # NumPy makes this list uint64
    with pytest.raises(TypeError, match=r"labels must have an integer dtype, got float64"):
        call(module, "forward", cos, [1, 2, 2**63 + 5, 3])   # ... and this one float64
    with pytest.raises(TypeError, match=r"labels must have an integer dtype, got object"):
        call(module, "forward", cos, [1, 2, 2**64, 3])


@pytest.mark.parametrize("module", MODULES)
@dtypes
def test_non_contiguous_labels(module, dtype):
    rng = rng_for("labels-strided", np.dtype(dtype).name)
    cos, labels = random_problem(rng, 25, 40, dtype)
    labels[5] = -100
    expected = run_all(module, cos, labels)
    big = np.zeros(75, dtype=np.int64)
    big[::3] = labels
    assert_same_results(run_all(module, cos, big[::3]), expected)
    reversed_ = labels[::-1].copy()
    assert_same_results(run_all(module, cos, reversed_[::-1]), expected)
    as_column = labels.reshape(-1, 1).copy(order="F")[:, 0]
    assert_same_results(run_all(module, cos, as_column), expected)


# --- layouts of cos ----------------------------------------------------------------------------
def layouts(base):
    """The same matrix in other memory layouts: (name, array)."""
    n, c = base.shape
    out = [("fortran", np.asfortranarray(base)),
           ("transposed-copy", np.ascontiguousarray(base.T).T)]
    big = np.zeros((n, 2 * c), base.dtype)
    big[:, ::2] = base
    out.append(("columns-step-2", big[:, ::2]))
    big = np.zeros((2 * n, c), base.dtype)
    big[::2] = base
    out.append(("rows-step-2", big[::2]))
    big = np.zeros((3 * n, 2 * c + 1), base.dtype)
    big[1::3, 1::2] = base
    out.append(("both-strided", big[1::3, 1::2]))
    out.append(("rows-reversed", base[::-1].copy()[::-1]))
    out.append(("columns-reversed", base[:, ::-1].copy()[:, ::-1]))
    out.append(("both-reversed", base[::-1, ::-1].copy()[::-1, ::-1]))
    big = np.zeros((n + 2, c + 3), base.dtype)
    big[1:-1, 2:-1] = base
    out.append(("sub-block", big[1:-1, 2:-1]))
    readonly = base.copy()
    readonly.flags.writeable = False
    out.append(("read-only", readonly))
    buffer = np.zeros(base.nbytes + 1, np.uint8)
    misaligned = np.ndarray(base.shape, base.dtype, buffer=buffer, offset=1)
    misaligned[...] = base
    out.append(("misaligned", misaligned))
    for name, a in out:
        assert np.array_equal(a, base, equal_nan=True), name
    return out


@pytest.mark.parametrize("module", MODULES)
@dtypes
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_layouts_give_the_result_of_the_contiguous_copy(module, dtype, reduction):
    rng = rng_for("layouts", np.dtype(dtype).name, reduction)
    base, labels = random_problem(rng, 31, 77, dtype)
    labels[4] = -100
    base[4, 7] = np.nan  # an ignored row may hold NaN in any layout
    expected = run_all(module, base, labels, reduction)
    for name, cos in layouts(base):
        got = run_all(module, cos, labels, reduction)
        for x, y in zip(got, expected, strict=True):
            assert x.dtype == y.dtype and x.shape == y.shape, name
            assert np.array_equal(x, y, equal_nan=True), name


@pytest.mark.parametrize("module", MODULES)
def test_cos_as_nested_lists(module):
    rng = rng_for("nested")
    cos, labels = random_problem(rng, 6, 9, np.float64)
    expected = run_all(module, cos, labels)
    assert_same_results(run_all(module, cos.tolist(), labels.tolist()), expected)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dt", [">f8", ">f4"])
def test_byte_swapped_cos_is_refused_or_correct(module, dt):
    """Non-native byte order: either a TypeError naming the dtype, or the right result (never
    the raw bytes read as native floats)."""
    rng = rng_for("byteswap", dt)
    cos, labels = random_problem(rng, 8, 20, np.float64)
    swapped = cos.astype(dt)
    try:
        got = run_all(module, swapped, labels)
    except TypeError as e:
        assert dt in str(e)
        return
    expected = run_all(module, swapped.astype(swapped.dtype.newbyteorder("=")), labels)
    assert_same_results(got, expected)


# --- grad_output ---------------------------------------------------------------------------------
@pytest.mark.parametrize("module", MODULES)
@dtypes
def test_kinds_of_scalar_grad_output(module, dtype):
    rng = rng_for("grad-output-scalar", np.dtype(dtype).name)
    cos, labels = random_problem(rng, 10, 30, dtype)
    for reduction in ("mean", "sum", "none"):
        expected = call(module, "backward", cos, labels, 2.0, reduction=reduction)
        for g in (2, np.int8(2), np.float32(2.0), np.float64(2.0), np.array(2.0),
                  np.array(2, np.uint8)):
            got = call(module, "backward", cos, labels, g, reduction=reduction)
            assert np.array_equal(got, expected), (reduction, type(g))
        if reduction != "none":
            for g in (np.array([2.0]), [2.0], (2,)):
                got = call(module, "backward", cos, labels, g, reduction=reduction)
                assert np.array_equal(got, expected), (reduction, g)


@pytest.mark.parametrize("module", MODULES)
@dtypes
def test_kinds_of_vector_grad_output(module, dtype):
    rng = rng_for("grad-output-vector", np.dtype(dtype).name)
    cos, labels = random_problem(rng, 10, 30, dtype)
    g = np.arange(-4.0, 6.0)
    expected = call(module, "backward", cos, labels, g, reduction="none")
    big = np.zeros(20)
    big[::2] = g
    for variant in (g.tolist(), tuple(g.tolist()), g.astype(np.int32), g.astype(np.float32),
                    big[::2], g[::-1].copy()[::-1], g.astype(">f8")):
        got = call(module, "backward", cos, labels, variant, reduction="none")
        assert np.array_equal(got, expected)
    # grad_output scales each row
    ones = call(module, "backward", cos, labels, np.ones(10), reduction="none")
    rtol = 1e-6 if dtype == np.float32 else 1e-15
    np.testing.assert_allclose(expected, g[:, None] * ones, rtol=rtol,
                               atol=rtol * np.abs(expected).max())
    assert np.all(expected[4] == 0)  # grad_output[4] = 0


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_f32_grad_output_beyond_the_float32_range():
    """A finite grad_output too large for float32 (1e39) is either used (the reference returns
    gradients that overflow to inf where they are large) or refused with a message naming the
    value passed. The library refuses it with 'amm_backward_f32: grad_loss[0] = inf is not
    finite', a value the caller never passed (the wrapper rounds grad_output to float32 before
    the library checks it)."""
    cos, labels = random_problem(rng_for("f32-big-upstream"), 5, 7, np.float32)
    REF.backward(cos, labels, 1e39)  # accepted by the reference
    try:
        LIB.backward(cos, labels, 1e39)
    except ValueError as e:
        assert "1e+39" in str(e), f"message names a value that was not passed: {e}"


# --- outputs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("module", MODULES)
@dtypes
def test_outputs_are_fresh_arrays(module, dtype):
    rng = rng_for("outputs", np.dtype(dtype).name)
    cos, labels = random_problem(rng, 9, 11, dtype)
    g = np.ones(9)
    for reduction in ("mean", "sum", "none"):
        loss, grad = call(module, "forward_backward", cos, labels, reduction=reduction)
        grad_b = call(module, "backward", cos, labels, g if reduction == "none" else 1.0,
                      reduction=reduction)
        loss_f = call(module, "forward", cos, labels, reduction=reduction)
        for a in (grad, grad_b):
            assert a.dtype == dtype and a.shape == cos.shape
            assert a.flags.c_contiguous and a.flags.writeable and a.flags.owndata
            assert not np.shares_memory(a, cos)
        if reduction == "none":
            for a in (loss, loss_f):
                assert isinstance(a, np.ndarray) and a.dtype == dtype and a.shape == (9,)
                assert a.flags.writeable and not np.shares_memory(a, cos)
        else:
            assert type(loss) is float and type(loss_f) is float
    # results do not alias each other between calls
    a = call(module, "backward", cos, labels)
    b = call(module, "backward", cos, labels)
    assert not np.shares_memory(a, b)


def test_version():
    version = amm_softmax.library_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert amm_softmax.__version__ == version
    header = (Path(__file__).resolve().parents[2] / "include" / "amm_softmax.h").read_text()
    parts = [re.search(rf"#define AMM_VERSION_{k}\s+(\d+)", header).group(1)
             for k in ("MAJOR", "MINOR", "PATCH")]
    assert ".".join(parts) == version
    # and against a source neither is built from: the newest heading of CHANGELOG.md
    changelog = (Path(__file__).resolve().parents[2] / "CHANGELOG.md").read_text()
    assert re.search(r"^## (\S+)", changelog, re.M).group(1) == version


def test_public_names_of_api_md():
    for module in (amm_softmax, amm_softmax.reference):
        for name in ("forward", "backward", "forward_backward", "head_forward_backward"):
            assert callable(getattr(module, name, None)), f"{module.__name__}.{name}"


def test_public_names_present():
    for module in (amm_softmax, amm_softmax.reference):
        for name in ("forward", "backward", "forward_backward"):
            assert callable(getattr(module, name))
    assert set(amm_softmax.__all__) >= {"forward", "backward", "forward_backward", "reference",
                                        "library_version", "__version__"}


# --- determinism and concurrency -------------------------------------------------------------
@dtypes
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_results_do_not_depend_on_num_threads(dtype, reduction):
    rng = rng_for("threads", np.dtype(dtype).name, reduction)
    cos, labels = random_problem(rng, 257, 3001, dtype, ignore_fraction=0.05)
    g = rng.normal(size=257) if reduction == "none" else 1.7
    results = {}
    for threads in (1, 2, 3, 0, 7):
        results[threads] = run_all(LIB, cos, labels, reduction, g, num_threads=threads)
    for threads, got in results.items():
        assert_same_results(got, results[1])


def test_concurrent_callers_get_their_own_results():
    """Calls from several Python threads at once (ctypes releases the GIL) give the results of
    the same calls made one after the other."""
    rng = rng_for("concurrent")
    jobs = []
    for k in range(8):
        dtype = (np.float32, np.float64)[k % 2]
        cos, labels = random_problem(rng, 60 + k, 900 + 37 * k, dtype, ignore_fraction=0.1)
        jobs.append((cos, labels, ("mean", "sum", "none")[k % 3]))

    def work(job):
        cos, labels, reduction = job
        return run_all(LIB, cos, labels, reduction, num_threads=2)

    serial = [work(job) for job in jobs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            parallel = list(pool.map(work, jobs))
            for got, expected in zip(parallel, serial, strict=True):
                assert_same_results(got, expected)


# --- inputs never modified --------------------------------------------------------------------
@pytest.mark.parametrize("module", MODULES)
@dtypes
def test_inputs_unchanged_with_nan_in_ignored_rows(module, dtype):
    """Byte-for-byte (NaN payloads included), for every function, in strided layouts too."""
    rng = rng_for("unchanged", np.dtype(dtype).name)
    base, labels = random_problem(rng, 20, 33, dtype)
    labels[[2, 9]] = -100
    base[2, :] = np.nan
    base[9, 4] = np.inf
    g = rng.normal(size=20)
    for name, cos in layouts(base):
        label_variants = [labels, labels.astype(np.int32), labels.tolist()]
        for lab in label_variants:
            with unchanged(cos, lab, g):
                module.forward(cos, lab, reduction="none")
                module.backward(cos, lab, g, reduction="none")
                module.forward_backward(cos, lab)


def test_the_unchanged_guard_detects_a_modification():
    """The guard every call in this suite goes through does catch a modified input."""
    cos = np.array([[0.1, np.nan], [0.3, 0.4]])
    labels = np.array([0, 1])
    with pytest.raises(AssertionError, match="input array was modified"):
        with unchanged(cos, labels):
            cos[1, 1] = 0.5
    with pytest.raises(AssertionError, match="input array was modified"):
        with unchanged(cos, labels):
            labels[0] = 1
    as_list = [0, 1]
    with pytest.raises(AssertionError, match="input list was modified"):
        with unchanged(as_list):
            as_list[0] = 1
    with unchanged(cos, labels):   # NaN compares equal to itself
        pass


def test_python_amm_params_matches_the_c_struct():
    """The ctypes mirror of amm_params has the C struct's size, and amm_params_init's defaults
    land in the fields Python reads them from (so every offset agrees)."""
    import ctypes
    from amm_softmax import _library

    lib = _library.load()
    raw = ctypes.create_string_buffer(b"\xab" * 256)
    lib.amm_params_init(ctypes.cast(raw, ctypes.POINTER(_library.AmmParams)))
    p = _library.AmmParams.from_buffer_copy(raw.raw[:ctypes.sizeof(_library.AmmParams)])
    assert p.struct_size == ctypes.sizeof(_library.AmmParams)
    assert raw.raw[ctypes.sizeof(_library.AmmParams)] == 0xAB  # nothing written past the struct
    assert (p.scale, p.margin, p.hard_margin) == (64.0, 0.5, 0.2)
    assert (p.target, p.hard, p.reduction, p.num_threads) == (0, 0, 0, 0)
    assert (p.ignore_index, p.head_block_size, p.hard_negatives) == (-100, 0, None)
    assert lib.amm_params_validate(ctypes.byref(p)) == _library.AMM_OK
    assert lib.amm_status_name(_library.AMM_ERR_PARAM) == b"AMM_ERR_PARAM"
