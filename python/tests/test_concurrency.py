"""Concurrent callers (issue "Hardened", part 5): eight Python threads call every function at once
with mixed parameters, and each call's result is bit for bit the result of the same call made
alone, computed first on the test's own thread; threads making failing calls at the same time
each read their own error message.

The calls mix forward, backward, forward_backward and head_forward_backward (also with class
sampling), the sharded driver on one process (_shard.cosine_forward_backward and
_shard.head_forward_backward with SingleProcess), float32 and float64, every target, hard
kind and reduction, num_threads 1, 2 and 0, with and without a hard_negatives array and an
out= destination of the call's own. Every thread reads the same input arrays, which must come
out unchanged. (The C ABI test, Tests/c/abi_test.c, has a C-level variant.)

These tests found a library defect, now fixed: the head's products run on Debian's serial
OpenBLAS 0.3.21, linked into the library, whose buffer pool was not safe for concurrent callers
(blas_memory_alloc releases its lock before it scans for a free buffer, so two threads calling
cblas_?gemm at once could be handed the same buffer: whole blocks of grad_weights off by 1e-2
and more). The link now routes the pool through a lock of the library's own
(Sources/COpenBLASGuard); test_concurrent_head_products reproduces the old race on purpose.
"""
import itertools
import random
import threading
import time

import numpy as np
import pytest

import amm_softmax
from amm_softmax import _library, _shard
from helpers import random_problem, rng_for

THREADS = 8
ROUNDS = 2          # every thread makes every call this many times, in its own order
TIME_LIMIT = 60.0   # seconds for the concurrent phase: a hang fails instead of blocking

VARIANTS = [(target, hard) for target in ("arc", "cos")
            for hard in ("amm", "mv-fixed", "mv-adaptive", "none")]
REDUCTIONS = ("mean", "sum", "none")
NUM_THREADS = (1, 2, 0)
KINDS = ("forward", "backward", "forward_backward", "head", "head_sampled", "shard_cosine",
         "shard_head")


def _problems():
    """The shared inputs, one set per dtype (read by every thread; never written)."""
    problems = {}
    for dtype in (np.float32, np.float64):
        name = np.dtype(dtype).name
        cos, labels = random_problem(rng_for("concurrency", name), 96, 1200, dtype)
        labels[::11] = -100
        rng = rng_for("concurrency-head", name)
        x = rng.standard_normal((48, 64)).astype(dtype)
        w = rng.standard_normal((900, 64)).astype(dtype)
        head_labels = rng.integers(0, 900, 48)
        head_labels[5] = -100
        g = np.linspace(-1.5, 2.5, cos.shape[0])
        for a in (cos, labels, x, w, head_labels, g):
            a.flags.writeable = False
        problems[dtype] = dict(cos=cos, labels=labels, x=x, w=w, head_labels=head_labels, g=g)
    return problems


def _cases():
    """Every kind x dtype x variant, the other options cycled so that each value of each
    appears with every kind."""
    cases = []
    for k, kind in enumerate(KINDS):
        for d, dtype in enumerate((np.float32, np.float64)):
            for i, (target, hard) in enumerate(VARIANTS):
                params = dict(target=target, hard=hard, reduction=REDUCTIONS[(i + k) % 3],
                              num_threads=NUM_THREADS[(i + d + k) % 3],
                              hard_margin=1.2 if hard == "mv-fixed" else 0.2,
                              scale=(64.0, 30.0)[(i + d) % 2], margin=(0.5, 0.35)[i % 2])
                cases.append(dict(kind=kind, dtype=dtype, params=params,
                                  counts=(i + k + d) % 2 == 0, out=(i + k) % 3 != 1,
                                  name=f"{kind}-{np.dtype(dtype).name}-{target}-{hard}-"
                                       f"{params['reduction']}-t{params['num_threads']}"))
    return cases


def run(case, data):
    """Makes the case's call; returns its outputs as a list of arrays."""
    kind, params = case["kind"], case["params"]
    p = data[case["dtype"]]
    head = kind.startswith("head") or kind == "shard_head"
    rows = (p["x"] if head else p["cos"]).shape[0]
    counts = np.full(rows, -7, np.int64) if case["counts"] else None
    outs = []
    if kind in ("forward", "backward", "forward_backward"):
        out = np.full(p["cos"].shape, np.nan, p["cos"].dtype) if case["out"] else None
        if kind == "forward":
            results = [np.asarray(amm_softmax.forward(p["cos"], p["labels"],
                                                      hard_negatives=counts, **params))]
        elif kind == "backward":
            g = p["g"] if params["reduction"] == "none" else 0.75
            grad = amm_softmax.backward(p["cos"], p["labels"], g, out=out,
                                        hard_negatives=counts, **params)
            results = [grad]
            outs = [(grad, out)]
        else:
            loss, grad = amm_softmax.forward_backward(p["cos"], p["labels"], out=out,
                                                      hard_negatives=counts, **params)
            results = [np.asarray(loss), grad]
            outs = [(grad, out)]
    elif kind in ("head", "head_sampled"):
        out = (np.full(p["x"].shape, np.nan, p["x"].dtype),
               np.full(p["w"].shape, np.nan, p["w"].dtype)) if case["out"] else None
        extra = dict(sample_rate=0.3, seed=5, step=3) if kind == "head_sampled" else {}
        loss, gx, gw = amm_softmax.head_forward_backward(p["x"], p["w"], p["head_labels"],
                                                         out=out, hard_negatives=counts,
                                                         **extra, **params)
        results = [np.asarray(loss), gx, gw]
        if out is not None:
            outs = [(gx, out[0]), (gw, out[1])]
    elif kind == "shard_cosine":
        loss, grad = _shard.cosine_forward_backward(p["cos"], p["labels"],
                                                    _shard.SingleProcess(),
                                                    hard_negatives=counts, **params)
        results = [np.asarray(loss), grad]
    else:
        loss, gx, gw = _shard.head_forward_backward(p["x"], p["w"], p["head_labels"],
                                                    _shard.SingleProcess(),
                                                    hard_negatives=counts, **params)
        results = [np.asarray(loss), gx, gw]
    for got, given in outs:
        if given is not None:
            assert got is given, "out= was not the array returned"
    if counts is not None:
        results.append(counts)
    return results


def _same_bits(got, want):
    return len(got) == len(want) and all(
        a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        for a, b in zip(got, want))


def _run_threads(target, count, limit=TIME_LIMIT):
    """Starts `count` threads on target(index), joins them within `limit` seconds in all."""
    threads = [threading.Thread(target=target, args=(k,), daemon=True) for k in range(count)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + limit
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = [t.name for t in threads if t.is_alive()]
    assert not hung, f"threads still running after {limit} s (a hang?): {hung}"


def test_eight_threads_calling_everything_get_the_bits_of_a_lone_call():
    data = _problems()
    snapshot = {d: {k: v.tobytes() for k, v in p.items()} for d, p in data.items()}
    cases = _cases()
    assert len(cases) == len(KINDS) * 2 * len(VARIANTS)
    # Each option value appears with every kind.
    for kind in KINDS:
        mine = [c for c in cases if c["kind"] == kind]
        assert {c["params"]["reduction"] for c in mine} == set(REDUCTIONS)
        assert {c["params"]["num_threads"] for c in mine} == set(NUM_THREADS)
        assert {c["counts"] for c in mine} == {True, False}
    expected = []
    for case in cases:        # alone, on this thread, twice: deterministic
        first, second = run(case, data), run(case, data)
        assert _same_bits(first, second), f"two lone calls differ: {case['name']}"
        expected.append(first)

    barrier = threading.Barrier(THREADS)
    failures, calls = [], [0] * THREADS

    def worker(k):
        order = [i for _ in range(ROUNDS) for i in range(len(cases))]
        random.Random(k).shuffle(order)
        try:
            barrier.wait(timeout=30)
            for i in order:
                got = run(cases[i], data)
                calls[k] += 1
                if not _same_bits(got, expected[i]):
                    failures.append((k, cases[i]["name"]))
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append((k, repr(e)))

    start = time.perf_counter()
    _run_threads(worker, THREADS)
    elapsed = time.perf_counter() - start
    assert not failures, failures[:10]
    assert sum(calls) == THREADS * ROUNDS * len(cases)
    for d, p in data.items():
        for name, a in p.items():
            assert a.tobytes() == snapshot[d][name], f"input {name} was modified"
    print(f"\n{THREADS} threads, {sum(calls)} calls of {len(cases)} kinds in {elapsed:.2f} s")


def test_concurrent_head_products():
    """The old race on purpose: eight threads, each head call with four workers (32 callers of
    cblas_sgemm at once, small products so that buffers are taken often), for 5 s; before the
    fix about 1 call in 300 differed from the lone one."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 32)).astype(np.float32)
    w = rng.standard_normal((2048, 32)).astype(np.float32)
    y = rng.integers(0, 2048, 16)
    want = amm_softmax.head_forward_backward(x, w, y, num_threads=1)
    deadline = time.monotonic() + 5.0
    differing, calls = [], [0]

    def worker(k):
        while time.monotonic() < deadline and not differing:
            got = amm_softmax.head_forward_backward(x, w, y, num_threads=4)
            calls[0] += 1
            if not _same_bits([np.asarray(a) for a in got], [np.asarray(b) for b in want]):
                differing.append((k, float(np.abs(got[2] - want[2]).max())))

    _run_threads(worker, THREADS)
    assert not differing, (f"after {calls[0]} calls, head results differ from the lone call's "
                           f"(largest |grad_weights| difference {differing[0][1]:.3g})")


# --- the per-thread error message --------------------------------------------------------------
def _last_error() -> str:
    return _library.load().amm_last_error().decode()


def _failing_calls():
    """One failing call per thread, each with its own message (library-detected: non-finite
    values in each function and dtype, the sharded phases, an overflow; and a parameter the
    library's amm_params_validate refuses), and a successful call to interleave."""
    rng = np.random.default_rng(11)

    def cos_with(dtype, i, j, bad, n=80, c=300):
        cos = rng.uniform(-1, 1, (n, c)).astype(dtype)
        cos[i, j] = bad
        return cos, rng.integers(0, c, n)

    c32, y32 = cos_with(np.float32, 7, 3, np.nan)
    c64, y64 = cos_with(np.float64, 41, 250, np.inf)
    c32b, y32b = cos_with(np.float32, 63, 0, -np.inf)
    c64s, y64s = cos_with(np.float64, 12, 77, np.nan)
    x32 = rng.standard_normal((30, 16)).astype(np.float32)
    w32 = rng.standard_normal((200, 16)).astype(np.float32)
    x32[9, 4] = np.nan
    x64 = rng.standard_normal((30, 16))
    w64 = rng.standard_normal((200, 16))
    w64[123, 15] = np.inf
    yh = rng.integers(0, 200, 30)
    big, ybig = rng.uniform(-1, 1, (20, 50)).astype(np.float32), rng.integers(0, 50, 20)
    return [
        lambda: amm_softmax.forward(c32, y32, num_threads=1),
        lambda: amm_softmax.backward(c64, y64, 1.0, num_threads=2),
        lambda: amm_softmax.forward_backward(c32b, y32b, num_threads=0),
        lambda: amm_softmax.head_forward_backward(x32, w32, yh, num_threads=2),
        lambda: amm_softmax.head_forward_backward(x64, w64, yh, num_threads=0),
        lambda: _shard.cosine_forward_backward(c64s, y64s, _shard.SingleProcess()),
        lambda: amm_softmax.forward(big, ybig, scale=1e38, hard="mv-fixed", hard_margin=3.0),
        lambda: amm_softmax.forward(big, ybig, scale=-3.0),
    ]


def test_failing_threads_each_read_their_own_message():
    calls = _failing_calls()
    assert len(calls) == THREADS
    rng = np.random.default_rng(3)
    ok_cos, ok_labels = rng.uniform(-1, 1, (40, 500)), rng.integers(0, 500, 40)
    ok_expected = amm_softmax.forward_backward(ok_cos, ok_labels, num_threads=2)

    expected = []
    for call in calls:   # alone, on this thread: (type, message, amm_last_error())
        with pytest.raises((ValueError, TypeError)) as info:
            call()
        expected.append((type(info.value), str(info.value), _last_error()))
    messages = [m for _, m, _ in expected]
    assert len(set(messages)) == THREADS, messages
    assert "cos[7, 3] = nan" in messages[0] and "amm_forward_f32" in messages[0]
    assert "cos[41, 250] = inf" in messages[1] and "amm_backward_f64" in messages[1]
    assert "cos[63, 0] = -inf" in messages[2]
    assert "embeddings[9, 4] = nan" in messages[3]
    assert "weights[123, 15] = inf" in messages[4]
    assert "cos[12, 77] = nan" in messages[5] and "amm_shard_" in messages[5]
    assert messages[7].startswith("scale = -3")

    barrier = threading.Barrier(THREADS)
    problems = []

    def worker(k):
        try:
            fresh = _last_error()
            if fresh != "":
                problems.append((k, f"a new thread starts with {fresh!r}"))
            barrier.wait(timeout=30)
            for round_ in range(40):
                try:
                    calls[k]()
                    problems.append((k, "no exception"))
                    return
                except Exception as e:  # noqa: BLE001 - compared below
                    got = (type(e), str(e), _last_error())
                if got != expected[k]:
                    problems.append((k, round_, got, expected[k]))
                    return
                if round_ % 4 == 0:   # a success in between leaves the message in place
                    loss, grad = amm_softmax.forward_backward(ok_cos, ok_labels, num_threads=2)
                    if loss != ok_expected[0] or not np.array_equal(grad, ok_expected[1]):
                        problems.append((k, "the successful call's result differs"))
                    if _last_error() != expected[k][2]:
                        problems.append((k, round_, "message changed by a successful call",
                                         _last_error()))
                        return
        except Exception as e:  # noqa: BLE001 - reported below
            problems.append((k, repr(e)))

    _run_threads(worker, THREADS)
    assert not problems, problems


def test_many_threads_on_one_array_each_with_num_threads_zero():
    """More callers than cores, each asking for every core: the same bits, in bounded time."""
    cos, labels = random_problem(rng_for("crowd"), 256, 4000, np.float32)
    want = amm_softmax.forward_backward(cos, labels, num_threads=0)
    results = [None] * 16

    def worker(k):
        results[k] = amm_softmax.forward_backward(cos, labels, num_threads=0)

    _run_threads(worker, 16)
    for got in results:
        assert got[0] == want[0] and np.array_equal(got[1], want[1])


def test_case_table_covers_every_function_and_option():
    combos = {(c["kind"], np.dtype(c["dtype"]).name, c["params"]["target"], c["params"]["hard"])
              for c in _cases()}
    assert combos == set(itertools.product(KINDS, ("float32", "float64"), ("arc", "cos"),
                                           ("amm", "mv-fixed", "mv-adaptive", "none")))
    assert {c["out"] for c in _cases() if c["kind"] in ("backward", "head")} == {True, False}
