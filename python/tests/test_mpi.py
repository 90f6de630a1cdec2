"""amm_softmax.mpi: the loss and the fused head sharded by class over P MPI ranks (P = 1..4,
oversubscribed), against the single-process library on the whole problem.

One `mpirun -n P` per P runs mpi_worker.py over every case written here (a launch costs about
a second): the head and the loss on cosine logits for every target x hard x reduction in
float32 and float64, with rows split evenly or not (a rank may have no rows), class counts that
P does not divide, shards without any target, shards without any class (P > C), ignored rows
(also with an ignore_index that is a class id), hard-negative counts, class_start given or not,
a small block size; class sampling (against the single-process head on the kept classes, and
twice with the same seed for identical bits); and bad input on one rank (shards that do not
tile [0, C), a parameter that differs between ranks, a label out of range, NaN or infinity in
one rank's embeddings, weights or cosines, ...), which must raise the same exception with the
same message on every rank, and leave the ranks in step (the next case runs), within the
timeout (a deadlock fails the run instead of hanging).

Tolerances: float64 results within 1e-12 of the single-process library, relative to the
largest |value| of each result (the sums over ranks are the only reordering); float32 results
within test_head.py's tolerances (its Expected: bounds scaled by the problem's magnitudes)
of the single-process library's (head), and within helpers.py's of amm_softmax.reference
(cosine logits). At P = 1 the head is also bit-identical to amm_softmax.head_forward_backward.

The bytes of every collective (Traffic) are checked against the formula in amm_softmax.mpi's
docstring, and a head of 256 rows, D = 128, C = 10,000 in float32 at P = 2 is measured.
"""
from __future__ import annotations

import importlib.util
import itertools
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import amm_softmax
import helpers
from amm_softmax import reference
from amm_softmax._shard import shard_range
from helpers import DTYPES, HARDS, REDUCTIONS, TARGETS, rng_for
from test_head import Expected, head_problem, params_for

HERE = Path(__file__).resolve().parent
WORKER = HERE / "mpi_worker.py"
PROCESSES = (1, 2, 3, 4)
TIMEOUT = 120          # seconds for one mpirun launch; a deadlock fails the test at that point
F64_RTOL = 1e-12       # of the largest |value| of each result
WORKER_KWARGS = dict(num_threads=1)   # 4 ranks on few cores: one thread each (bits unchanged)


def _missing() -> str | None:
    if shutil.which("mpirun") is None:
        return ("mpirun is not installed (Debian: apt-get install openmpi-bin libopenmpi-dev; "
                "bash scripts/setup.sh does it)")
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install mpi4py; bash scripts/setup.sh does it)"
    return None


def test_mpi4py_is_needed_only_by_amm_softmax_mpi(monkeypatch):
    """import amm_softmax never imports mpi4py; without it, amm_softmax.mpi fails with an
    ImportError that says what to install."""
    import importlib
    code = "import sys, amm_softmax; print('mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=_environment(), text=True,
                         capture_output=True, check=True).stdout
    assert out.strip() == "False"
    monkeypatch.setitem(sys.modules, "mpi4py", None)   # as if it were not installed
    monkeypatch.delitem(sys.modules, "amm_softmax.mpi", raising=False)
    with pytest.raises(ImportError) as info:
        importlib.import_module("amm_softmax.mpi")
    for words in ("pip install mpi4py", "openmpi-bin", "libopenmpi-dev"):
        assert words in str(info.value)


# --- the cases -------------------------------------------------------------------------------
HEAD_SHAPES = [(13, 8, 7), (9, 5, 3), (20, 16, 23), (7, 4, 2), (16, 6, 11)]   # (N, D, C)
COS_SHAPES = [(10, 7), (6, 3), (12, 13), (5, 2)]                              # (N, C)


def _rows(rng, n, size, uneven):
    """Each rank's rows: an even split, or random cuts (a rank may get none)."""
    if not uneven:
        return [part for part in np.array_split(np.arange(n), size)]
    return np.split(np.arange(n), np.sort(rng.integers(0, n + 1, size - 1)))


def _shards(c, size):
    return [shard_range(c, r, size) for r in range(size)]


def _head_case(name, x, w, y, params, size, rows, check="head", kwargs=None, per_rank=None,
               repeat=1, **extra):
    return dict(kind="head", check=check, name=name, x=x, w=w, y=y, params=params,
                rows=rows, shards=_shards(w.shape[0], size),
                kwargs=dict(params, **WORKER_KWARGS, **(kwargs or {})),
                per_rank=per_rank or {}, repeat=repeat, **extra)


def _cos_case(name, cos, y, params, size, check="cos", kwargs=None, per_rank=None, **extra):
    return dict(kind="cos", check=check, name=name, cos=cos, y=y, params=params,
                rows=[None] * size, shards=_shards(cos.shape[1], size),
                kwargs=dict(params, **WORKER_KWARGS, **(kwargs or {})),
                per_rank=per_rank or {}, **extra)


def _with_starts(case, size):
    """class_start given on every rank (the right one)."""
    for r in range(size):
        case["per_rank"].setdefault(r, {}).setdefault("kwargs", {})["class_start"] = \
            case["shards"][r][0]
    return case


def head_sweep(size):
    cases = []
    combos = list(itertools.product(DTYPES, TARGETS, HARDS, REDUCTIONS))
    for i, (dtype, target, hard, reduction) in enumerate(combos):
        n, d, c = HEAD_SHAPES[i % len(HEAD_SHAPES)]
        params = params_for(target, hard, reduction)
        rng = rng_for("mpi-head", size, i)
        x, w, y = head_problem(rng, n, d, c, dtype, params)
        kwargs = {}
        if i % 3 == 0:
            kwargs["hard_negatives"] = True
        if i % 5 == 0:
            kwargs["block_size"] = 2
        case = _head_case(f"head {i} {np.dtype(dtype).name} {target} {hard} {reduction} "
                          f"N {n} D {d} C {c}", x, w, y, params, size,
                          _rows(rng, n, size, uneven=i % 2 == 1), kwargs=kwargs)
        cases.append(_with_starts(case, size) if i % 4 == 0 else case)
    for dtype in DTYPES:
        name = np.dtype(dtype).name
        # Every target in the first shard: the others hold none.
        rng = rng_for("mpi-head-first-shard", size, name)
        params = params_for("arc", "amm", "mean")
        x, w, _ = head_problem(rng, 12, 6, 11, dtype, params)
        stop = shard_range(11, 0, size)[1]
        y = rng.integers(0, stop, 12)
        cases.append(_head_case(f"targets in shard 0 only {name}", x, w, y, params, size,
                                _rows(rng, 12, size, True), kwargs=dict(hard_negatives=True)))
        # Every target in the last class; ignore_index a class id (2), some rows ignored.
        params = dict(params_for("cos", "mv-fixed", "none"), ignore_index=2)
        x, w, _ = head_problem(rng, 10, 5, 9, dtype, params)
        y = np.full(10, 8)
        y[[1, 4, 7]] = 2
        cases.append(_head_case(f"targets in the last class, ignore_index 2 {name}", x, w, y,
                                params, size, _rows(rng, 10, size, False)))
        # Every row ignored.
        params = params_for("arc", "mv-adaptive", "mean")
        x, w, _ = head_problem(rng, 6, 3, 5, dtype, params)
        cases.append(_head_case(f"every row ignored {name}", x, w, np.full(6, -100), params,
                                size, _rows(rng, 6, size, False)))
    return cases


def cos_sweep(size):
    cases = []
    combos = list(itertools.product(DTYPES, TARGETS, HARDS, REDUCTIONS))
    for i, (dtype, target, hard, reduction) in enumerate(combos):
        n, c = COS_SHAPES[i % len(COS_SHAPES)]
        params = params_for(target, hard, reduction)
        rng = rng_for("mpi-cos", size, i)
        cos, y = helpers.random_problem(rng, n, c, dtype, params, ignore_fraction=0.15)
        kwargs = dict(hard_negatives=True) if i % 3 == 0 else {}
        case = _cos_case(f"cos {i} {np.dtype(dtype).name} {target} {hard} {reduction} "
                         f"N {n} C {c}", cos, y, params, size, kwargs=kwargs)
        cases.append(_with_starts(case, size) if i % 4 == 1 else case)
    return cases


def sampled_cases(size):
    cases = []
    specs = [  # (dtype, params, sample_rate, seed, steps, N, D, C, hard negatives)
        (np.float64, params_for("arc", "amm", "mean"), 0.5, 3, (0, 1), 16, 6, 40, False),
        (np.float32, params_for("cos", "none", "sum"), 0.25, 11, (5,), 12, 8, 37, True),
        (np.float64, params_for("arc", "mv-fixed", "mean"), 0.05, 0, (2,), 10, 4, 30, False),
        (np.float64, dict(params_for("arc", "amm", "none"), ignore_index=3), 0.4, 7, (0,),
         14, 5, 25, True),
        (np.float32, params_for("arc", "amm", "mean"), 1.0, 0, (0,), 9, 4, 13, False),
    ]
    for j, (dtype, params, rate, seed, steps, n, d, c, counts) in enumerate(specs):
        rng = rng_for("mpi-sampled", size, j)
        x, w, y = head_problem(rng, n, d, c, dtype, params)
        if params.get("ignore_index") == 3:
            y[[0, 5]] = 3                        # ignored rows whose label is a kept class
        rows = _rows(rng, n, size, uneven=j % 2 == 0)
        for step in steps:
            kwargs = dict(sample_rate=rate, seed=seed, step=step, return_sampled=True)
            if counts:
                kwargs["hard_negatives"] = True
            cases.append(_head_case(f"sampled {j} rate {rate} seed {seed} step {step} "
                                    f"{np.dtype(dtype).name} {params}", x, w, y, params, size,
                                    rows, check="sampled", kwargs=kwargs, repeat=2,
                                    sample=(rate, seed, step), spec=j))
    return cases


def error_cases(size):
    """Bad input on one rank (the last unless said): (case, exception type, words of the
    message)."""
    last = size - 1
    rng = rng_for("mpi-errors", size)
    params = params_for("arc", "amm", "mean")
    n, d, c = 3 * size, 6, 2 * size + 1
    x, w, y = head_problem(rng, n, d, c, np.float64, params, ignore_fraction=0.0)
    rows = _rows(rng, n, size, False)
    start_last = shard_range(c, last, size)[0]

    def head(name, change, error, words, rank=last, **kw):
        return _head_case(f"error: {name}", x, w, y, params, size, rows, check="error",
                          per_rank={rank: change}, error=(error, words), **kw)

    cases = [
        head("shards do not tile", {"kwargs": {"class_start": start_last + 1}}, "ValueError",
             "do not tile"),
        head("label out of range", {"poison": [("y", 0, c)]}, "ValueError", "out of range"),
        head("NaN embedding", {"poison": [("x", (0, 2), np.nan)]}, "ValueError",
             "is not finite"),
        head("infinite weight", {"poison": [("w", (0, 1), np.inf)]}, "ValueError",
             "is not finite"),
        head("invalid reduction", {"kwargs": {"reduction": "avg"}}, "ValueError",
             "reduction = 'avg'"),
        head("labels of a float dtype", {"astype_y": np.float64}, "TypeError",
             "integer dtype"),
        head("bad sample_rate", {"kwargs": {"sample_rate": 0.0}}, "ValueError", "sample_rate"),
    ]
    cos, cy = helpers.random_problem(rng, 8, c, np.float64, params)
    cases.append(_cos_case("error: cos NaN", cos, cy, params, size, check="error",
                           per_rank={last: {"poison": [("x", (1, 0), np.nan)]}},
                           error=("ValueError", "is not finite")))
    cases.append(_cos_case("error: cos shards do not tile", cos, cy, params, size,
                           check="error",
                           per_rank={last: {"kwargs": {"class_start": start_last + 1}}},
                           error=("ValueError", "do not tile")))
    if size > 1:
        cases += [
            head("scale differs", {"kwargs": {"scale": 32.0}}, "ValueError",
                 "scale: not the same on every rank"),
            head("hard_negatives on one rank", {"kwargs": {"hard_negatives": True}},
                 "ValueError", "whether hard_negatives is given: not the same", rank=0),
            head("sample_rate differs", {"kwargs": {"sample_rate": 0.5}}, "ValueError",
                 "sample_rate: not the same on every rank"),
            head("float32 on one rank", {"astype": np.float32}, "ValueError",
                 "the element size: not the same on every rank"),
            head("seed differs", {"kwargs": {"seed": 1}}, "ValueError",
                 "seed: not the same on every rank", kwargs=dict(sample_rate=0.5)),
        ]
        other = cy.copy()
        other[0] = (other[0] + 1) % c
        cases.append(_cos_case("error: cos labels differ", cos, cy, params, size,
                               check="error", per_rank={last: {"poison": [("y", 0, other[0])]}},
                               error=("ValueError", "the labels: not the same on every rank")))
        cases.append(_cos_case("error: cos margin differs", cos, cy, params, size,
                               check="error", per_rank={0: {"kwargs": {"margin": 0.4}}},
                               error=("ValueError", "margin: not the same on every rank")))
    return cases


def traffic_case(size):
    """The shape whose bytes the report quotes: 256 rows (128 a rank at P = 2), D = 128,
    C = 10,000, float32."""
    rng = rng_for("mpi-traffic", size)
    params = params_for("arc", "amm", "mean")
    n, d, c = 256, 128, 10_000
    x = rng.standard_normal((n, d)).astype(np.float32)
    w = rng.standard_normal((c, d)).astype(np.float32)
    y = rng.integers(0, c, n)
    return _head_case("traffic 256 x 128 x 10000 float32", x, w, y, params, size,
                      _rows(rng, n, size, False), check="traffic")


def build_cases(size):
    good = head_sweep(size) + cos_sweep(size) + sampled_cases(size)
    errors = error_cases(size)
    # Each bad case is followed by good ones: the ranks must still be in step after it.
    cases = []
    stride = max(1, len(good) // (len(errors) + 1))
    for k, case in enumerate(good):
        cases.append(case)
        if k % stride == stride - 1 and errors:
            cases.append(errors.pop(0))
    cases += errors
    cases.append(good[0])
    if size == 2:
        cases.append(traffic_case(size))
    return cases


# --- one mpirun per P ------------------------------------------------------------------------
def _environment():
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    paths = [str(HERE.parent), str(HERE)] + [p for p in [env.get("PYTHONPATH")] if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _launch(size, folder: Path):
    """Runs the worker on `size` ranks; returns (each rank's results, seconds)."""
    cases = build_cases(size)
    with open(folder / "cases.pkl", "wb") as f:
        pickle.dump(cases, f)
    command = ["mpirun", "--oversubscribe", "--bind-to", "none", "-n", str(size),
               sys.executable, str(WORKER), str(folder / "cases.pkl"), str(folder)]
    began = time.monotonic()
    process = subprocess.Popen(command, env=_environment(), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                output, _ = process.communicate(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue
        pytest.fail(f"mpirun -n {size} did not finish within {TIMEOUT} s (a rank waiting "
                    f"in a collective?)")
    seconds = time.monotonic() - began
    assert process.returncode == 0, f"mpirun -n {size} failed ({process.returncode}):\n{output}"
    results = []
    for r in range(size):
        with open(folder / f"rank{r}.pkl", "rb") as f:
            results.append(pickle.load(f))
    return cases, results, seconds


@pytest.fixture(scope="module", params=PROCESSES, ids=lambda p: f"P{p}")
def run(request, tmp_path_factory):
    if _missing():
        pytest.skip(_missing())
    size = request.param
    cases, results, seconds = _launch(size, tmp_path_factory.mktemp(f"mpi{size}"))
    print(f"\nmpirun -n {size}: {len(cases)} cases in {seconds:.1f} s")
    return size, cases, results


def _outcomes(run, check):
    """(case, [each rank's runs]) for the cases of one kind."""
    size, cases, results = run
    for k, case in enumerate(cases):
        if case["check"] == check:
            yield case, [results[r][k] for r in range(size)]


def _good(case, per_rank, repeat=0):
    """Each rank's result of one run of a case that must succeed."""
    got = [runs[repeat] for runs in per_rank]
    for r, g in enumerate(got):
        assert "error" not in g, f"{case['name']}: rank {r} raised {g['error']}"
    return got


def _assemble(case, got):
    """The whole problem's (loss, grad_x, grad_w, counts) from the ranks' parts."""
    losses = [g["loss"] for g in got]
    if case["params"].get("reduction", "mean") == "none":
        loss = np.concatenate(losses)
        assert loss.dtype == case["x"].dtype
    else:
        assert all(type(v) is float for v in losses)
        assert len({v for v in losses}) == 1 or all(math.isnan(v) for v in losses), \
            f"{case['name']}: the loss differs between ranks: {losses}"
        loss = losses[0]
    gx = np.concatenate([g["gx"] for g in got])
    gw = np.concatenate([g["gw"] for g in got])
    counts = None if got[0]["counts"] is None else np.concatenate([g["counts"] for g in got])
    return loss, gx, gw, counts


def _close64(got, want, where):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, where
    scale = np.abs(want).max(initial=0.0)
    err = np.abs(got - want).max(initial=0.0)
    assert err <= F64_RTOL * scale, f"{where}: |err| {err:.3e} > {F64_RTOL} * {scale:.3e}"


def _check_head(case, got, want, problem):
    """The sharded head's assembled result against the single-process one, `want`, on the
    problem (x, w, labels, params) that the single process solved."""
    loss, gx, gw, counts = got
    dtype = case["x"].dtype
    for g, like in ((gx, want[1]), (gw, want[2])):
        assert g.dtype == dtype and g.shape == like.shape, case["name"]
    if dtype == np.float64:
        for label, a, b in (("loss", loss, want[0]), ("grad_x", gx, want[1]),
                            ("grad_w", gw, want[2])):
            _close64(a, b, f"{case['name']} {label}")
    else:
        # test_head's tolerances (scaled by the problem's magnitudes, from the reference),
        # around the single-process library's result: the sharded head may differ from it by
        # the head's own float32 rounding, no more. (On problems of 2 or 3 classes the library
        # itself is not always within them of the float64 reference, on entries near 1e-15.)
        expected = Expected(*problem)
        expected.want = want
        expected.check((loss, gx, gw), case["name"])


def _single_process_head(case, x, w, y, params):
    counts = np.zeros(len(y), np.int64)
    block = case["kwargs"].get("block_size", 0)
    result = amm_softmax.head_forward_backward(x, w, y, hard_negatives=counts,
                                               block_size=block, **params)
    return result, counts


# --- the tests -------------------------------------------------------------------------------
def test_head_equals_single_process(run):
    """Every variant, reduction and dtype; uneven rows and shards, shards with no target or no
    class, ignored rows, counts of hard negatives: the sharded head equals the single-process
    head on the whole batch (bit for bit at P = 1)."""
    size = run[0]
    checked = 0
    for case, per_rank in _outcomes(run, "head"):
        got = _assemble(case, _good(case, per_rank))
        want, counts = _single_process_head(case, case["x"], case["w"], case["y"],
                                            case["params"])
        _check_head(case, got, want, (case["x"], case["w"], case["y"], case["params"]))
        if got[3] is not None:
            assert np.array_equal(got[3], counts), f"{case['name']}: hard-negative counts"
        if size == 1:
            for a, b in zip(got[:3], want):
                assert np.array_equal(np.asarray(a), np.asarray(b)), \
                    f"{case['name']}: not bit-identical at P = 1"
        checked += 1
    assert checked == len(DTYPES) * len(TARGETS) * len(HARDS) * len(REDUCTIONS) + 6 + 1


def test_cosine_logits_equal_single_process(run):
    """The loss on cosine logits sharded by column equals forward_backward on the whole
    matrix: every rank has the whole loss and its columns of the gradient."""
    checked = 0
    for case, per_rank in _outcomes(run, "cos"):
        got = _good(case, per_rank)
        cos, y, params = case["cos"], case["y"], case["params"]
        if params["reduction"] == "none":
            for g in got[1:]:
                assert np.array_equal(g["loss"], got[0]["loss"]), case["name"]
        else:
            assert len({g["loss"] for g in got}) == 1, f"{case['name']}: losses differ"
        loss, grad = got[0]["loss"], np.concatenate([g["grad"] for g in got], axis=1)
        counts = np.zeros(len(y), np.int64)
        want = amm_softmax.forward_backward(cos, y, hard_negatives=counts, **params)
        if got[0]["counts"] is not None:
            for g in got:
                assert np.array_equal(g["counts"], counts), f"{case['name']}: counts"
        assert grad.dtype == cos.dtype and grad.shape == cos.shape
        if cos.dtype == np.float64:
            _close64(loss, want[0], f"{case['name']} loss")
            _close64(grad, want[1], f"{case['name']} grad")
        else:
            ref_loss, ref_grad = helpers.reference_on(cos, y, "forward_backward", **params)
            helpers.assert_loss_close(loss, ref_loss, cos.dtype, params, cos.shape[1],
                                      case["name"])
            helpers.assert_grad_close(grad, ref_grad, cos, y, params, 1.0, case["name"])
        checked += 1
    assert checked == len(DTYPES) * len(TARGETS) * len(HARDS) * len(REDUCTIONS)


def test_sampled_head_equals_head_on_kept_classes(run):
    """With class sampling, the result is the single-process head on W[kept] with the labels
    renumbered in the kept classes; the other classes' gradients are 0; each shard keeps its
    targets and max(k, their number) classes in all, k = floor(rate * shard size)."""
    size = run[0]
    for case, per_rank in _outcomes(run, "sampled"):
        got = _good(case, per_rank)
        rate = case["sample"][0]
        params = case["params"]
        ignore = params.get("ignore_index", -100)
        y = case["y"]
        active = y != ignore
        kept = np.concatenate([g["kept"] for g in got])
        assert kept.dtype == np.int64 and np.all(np.diff(kept) > 0), case["name"]
        for r, (g, (start, stop)) in enumerate(zip(got, case["shards"])):
            mine = np.unique(y[active & (y >= start) & (y < stop)])
            assert np.all((g["kept"] >= start) & (g["kept"] < stop)), case["name"]
            assert np.isin(mine, g["kept"]).all(), f"{case['name']}: rank {r} lost a target"
            k = math.floor(rate * (stop - start))
            assert g["kept"].size == max(k, mine.size), (case["name"], r)
        sub_params = dict(params, ignore_index=-100)
        sub_y = np.where(active, np.searchsorted(kept, np.where(active, y, 0)), -100)
        w_kept = np.ascontiguousarray(case["w"][kept])
        want, counts = _single_process_head(case, case["x"], w_kept, sub_y, sub_params)
        loss, gx, gw, got_counts = _assemble(case, got)
        assert np.all(np.delete(gw, kept, axis=0) == 0), case["name"]
        _check_head(case, (loss, gx, gw[kept], got_counts), want,
                    (case["x"], w_kept, sub_y, sub_params))
        if got_counts is not None:
            assert np.array_equal(got_counts, counts), case["name"]
        if rate == 1.0:
            assert np.array_equal(kept, np.arange(case["w"].shape[0]))
        if size == 1:
            plain = amm_softmax.head_forward_backward(
                case["x"], case["w"], y, sample_rate=rate, seed=case["sample"][1],
                step=case["sample"][2], return_sampled=True, **params)
            for a, b in zip(plain, (loss, gx, gw, kept)):
                assert np.array_equal(np.asarray(a), np.asarray(b)), case["name"]


def test_sampling_is_deterministic(run):
    """The same P, seed and step twice: identical bits (loss, gradients, kept classes); another
    step draws other classes."""
    by_spec = {}
    for case, per_rank in _outcomes(run, "sampled"):
        first, second = _good(case, per_rank, 0), _good(case, per_rank, 1)
        for a, b in zip(first, second):
            for key in ("loss", "gx", "gw", "kept", "counts"):
                assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), \
                    f"{case['name']}: {key} differs between two identical calls"
        by_spec.setdefault(case["spec"], []).append(
            np.concatenate([g["kept"] for g in first]))
    steps = by_spec[0]
    assert len(steps) == 2 and not np.array_equal(steps[0], steps[1])


def test_bad_input_fails_alike_on_every_rank(run):
    """Bad input on one rank: every rank raises the same exception with the same message (the
    rank that found it first), and the run goes on (the next cases pass)."""
    size = run[0]
    seen = 0
    for case, per_rank in _outcomes(run, "error"):
        errors = [runs[0].get("error") for runs in per_rank]
        kind, words = case["error"]
        assert errors[0] is not None, f"{case['name']}: no exception"
        assert all(e == errors[0] for e in errors), f"{case['name']}: {errors}"
        assert errors[0][0] == kind and words in errors[0][1], f"{case['name']}: {errors[0]}"
        if size > 1:
            assert errors[0][1].startswith("rank "), errors[0]
        seen += 1
    assert seen == (9 if size == 1 else 16)


def _small_checks(kind, size):
    """The bytes of the checks (amm_softmax.mpi's docstring): the shard layout, the parameters
    (14 values for the head, 12 for cosine logits, each as v and -v), the agreements on
    errors (8 for the head, whose ranks check their own labels first; 7 for cosine logits)."""
    values, agreements = (14, 8) if kind == "head" else (12, 7)
    return 16 * size + 8 * 2 * values + 8 * agreements


def head_bytes(n, d, element, size, counts=False, sampled=False):
    """amm_softmax.mpi's formula for one call of the head, per rank."""
    total = 2 * n * d * element + 8 * n + 3 * 8 * n + (8 * n if counts else 0)
    if sampled:
        total += 8 * n + 8 * size
    return total + _small_checks("head", size)


def test_traffic_matches_the_formula(run):
    """Every call's bytes, per rank, are those of the formula: independent of C."""
    size = run[0]
    for check in ("head", "sampled", "traffic", "cos"):
        for case, per_rank in _outcomes(run, check):
            counts = bool(case["kwargs"].get("hard_negatives"))
            for r, g in enumerate(_good(case, per_rank)):
                total = sum(b for _, b in g["traffic"])
                if case["kind"] == "cos":
                    n = case["cos"].shape[0]
                    want = 3 * 8 * n + (8 * n if counts else 0) + _small_checks("cos", size)
                else:
                    n, d = case["x"].shape
                    sampled = case["kwargs"].get("sample_rate", 1.0) < 1.0
                    want = head_bytes(n, d, case["x"].itemsize, size, counts, sampled)
                assert total == want, (case["name"], r, g["traffic"])
                if check == "traffic":
                    print(f"\n{case['name']}, P = {size}, rank {r}: {total} bytes a step "
                          f"(formula {want}; {g['seconds'] * 1e3:.1f} ms)")
                    for what, b in g["traffic"]:
                        print(f"    {what}: {b}")
