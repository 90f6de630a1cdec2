"""fork() after the library has run (issue "Hardened", part 6), as PyTorch's DataLoader workers
and multiprocessing's 'fork' start method do: the child's calls must work, finish, and give
the parent's results bit for bit; every child runs under a timeout, so a hang (a lock or a
thread pool carried across fork) fails the test instead of blocking it.

The parent has called every kind of function with num_threads=2 (so worker threads have run)
and the fused head before it forks; one test forks while another thread of the parent is
inside a long library call, another forks repeatedly while a thread keeps calling.

The head's calls here use block_size=128 with D <= 128, so that each of its products is one
cblas_?gemm call at a time, and some a fork in the middle of another thread's head call: the
lock around the private OpenBLAS's buffer pool (Sources/COpenBLASGuard) is taken across fork,
so the child never inherits it locked.
"""
import multiprocessing
import os
import signal
import threading
import time

import numpy as np
import pytest

import amm_softmax
from amm_softmax import _library, _shard
from helpers import random_problem, rng_for

CHILD_TIMEOUT = 60.0   # seconds a child may take before it counts as hung
ONE_PRODUCT_AT_A_TIME = dict(block_size=128)   # with D <= 128; see the module docstring

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _inputs():
    cos32, y32 = random_problem(rng_for("fork", "f32"), 64, 900, np.float32)
    cos64, y64 = random_problem(rng_for("fork", "f64"), 48, 700, np.float64)
    y32[3] = -100
    rng = rng_for("fork-head")
    x32 = rng.standard_normal((40, 32)).astype(np.float32)
    w32 = rng.standard_normal((600, 32)).astype(np.float32)
    yh = rng.integers(0, 600, 40)
    bad = cos64.copy()
    bad[17, 5] = np.nan
    return dict(cos32=cos32, y32=y32, cos64=cos64, y64=y64, x32=x32, w32=w32, x64=x32.astype(
        np.float64), w64=w32.astype(np.float64), yh=yh, bad=bad)


def _calls(d):
    """A fixed set of calls (every function, both dtypes, num_threads 2 and 0, the head plain,
    sampled and sharded on one process, a failing call): their outputs as a list of arrays and
    strings."""
    out = []
    counts = np.zeros(64, np.int64)
    loss, grad = amm_softmax.forward_backward(d["cos32"], d["y32"], num_threads=2,
                                              hard_negatives=counts)
    out += [np.asarray(loss), grad, counts]
    out.append(amm_softmax.backward(d["cos64"], d["y64"], np.linspace(-1, 1, 48),
                                    reduction="none", num_threads=0, hard="mv-fixed",
                                    hard_margin=1.2))
    out.append(np.asarray(amm_softmax.forward(d["cos64"], d["y64"], target="cos",
                                              reduction="sum", num_threads=2)))
    for dtype, threads in (("32", 2), ("64", 0)):
        loss, gx, gw = amm_softmax.head_forward_backward(d["x" + dtype], d["w" + dtype],
                                                         d["yh"], num_threads=threads,
                                                         **ONE_PRODUCT_AT_A_TIME)
        out += [np.asarray(loss), gx, gw]
    loss, gx, gw = amm_softmax.head_forward_backward(d["x32"], d["w32"], d["yh"],
                                                     sample_rate=0.25, seed=1, step=2,
                                                     num_threads=2, **ONE_PRODUCT_AT_A_TIME)
    out += [np.asarray(loss), gx, gw]
    loss, gx, gw = _shard.head_forward_backward(d["x64"], d["w64"], d["yh"],
                                                _shard.SingleProcess(), num_threads=2,
                                                **ONE_PRODUCT_AT_A_TIME)
    out += [np.asarray(loss), gx, gw]
    try:
        amm_softmax.forward(d["bad"], d["y64"], num_threads=2)
        out.append("no error")
    except ValueError as e:
        out.append(str(e))
        out.append(_library.load().amm_last_error().decode())
    return out


def _same(got, want) -> str:
    """'' if equal bit for bit, else what differs."""
    if len(got) != len(want):
        return f"{len(got)} outputs, expected {len(want)}"
    for k, (a, b) in enumerate(zip(got, want)):
        if isinstance(b, str):
            if a != b:
                return f"output {k}: {a!r} != {b!r}"
        elif not (a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()):
            return f"output {k} differs"
    return ""


def _in_child(job, timeout=CHILD_TIMEOUT) -> str:
    """Runs job() -> str ('' for success, else the problem) in a child made by os.fork, and
    returns what it reported; fails the test if the child does not finish within `timeout`
    (it is then killed) or dies."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: never returns into pytest
        code = 3
        try:
            os.close(read_end)
            report = job()
            os.write(write_end, (report or "ok").encode()[:4000])
            code = 0
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            try:
                os.write(write_end, f"exception in the child: {e!r}".encode()[:4000])
            finally:
                code = 2
        finally:
            os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_end)
        pytest.fail(f"the forked child did not finish within {timeout} s (a hang after fork)")
    with os.fdopen(read_end, "rb") as f:
        report = f.read().decode()
    assert os.WIFEXITED(status), f"the child died: status {status}, report {report!r}"
    assert os.WEXITSTATUS(status) == 0, report
    return "" if report == "ok" else report


@pytest.fixture(scope="module")
def parent():
    """The inputs and the parent's results (computed before any fork: worker threads of
    num_threads=2 and the head have run)."""
    d = _inputs()
    expected = _calls(d)
    assert _same(_calls(d), expected) == ""
    assert "cos[17, 5] = nan" in expected[-2]
    return d, expected


def test_os_fork_child_computes_the_parents_results(parent):
    d, expected = parent
    assert _in_child(lambda: _same(_calls(d), expected)) == ""
    # and again, from a parent that has forked before, twice in a row in the child
    assert _in_child(lambda: _same(_calls(d), expected) + _same(_calls(d), expected)) == ""
    assert _same(_calls(d), expected) == ""     # the parent is unaffected


def test_grandchild_after_fork_in_the_child(parent):
    """A forked child that calls the library and forks again (nested DataLoader workers)."""
    d, expected = parent

    def child():
        problem = _same(_calls(d), expected)
        return problem or _in_child(lambda: _same(_calls(d), expected))
    assert _in_child(child) == ""


def _pool_job(k):
    """A multiprocessing worker's job (module-level, so that the pool can name it)."""
    return _calls(_POOL_INPUTS)


_POOL_INPUTS = None


@pytest.mark.parametrize("method", ["pool", "process"])
def test_multiprocessing_fork_start_method(parent, method):
    global _POOL_INPUTS
    d, expected = parent
    _POOL_INPUTS = d
    ctx = multiprocessing.get_context("fork")
    if method == "pool":
        pool = ctx.Pool(2)
        try:
            pending = pool.map_async(_pool_job, range(4))
            try:
                results = pending.get(timeout=CHILD_TIMEOUT)
            except multiprocessing.TimeoutError:
                pytest.fail(f"the pool's workers did not finish within {CHILD_TIMEOUT} s")
        finally:
            pool.terminate()
            pool.join()
        for result in results:
            assert _same(result, expected) == ""
    else:
        queue = ctx.Queue()
        workers = [ctx.Process(target=_process_job, args=(queue, k)) for k in range(2)]
        for w in workers:
            w.start()
        try:
            results = [queue.get(timeout=CHILD_TIMEOUT) for _ in workers]
        finally:
            for w in workers:
                w.join(CHILD_TIMEOUT)
                if w.is_alive():
                    w.kill()
                    w.join()
        assert all(w.exitcode == 0 for w in workers), [w.exitcode for w in workers]
        for k, result in results:
            assert _same(result, expected) == "", k


def _process_job(queue, k):
    queue.put((k, _calls(_POOL_INPUTS)))


def _long_head(dtype=np.float32):
    rng = np.random.default_rng(21)
    x = rng.standard_normal((128, 128)).astype(dtype)
    w = rng.standard_normal((40_000, 128)).astype(dtype)
    return x, w, rng.integers(0, 40_000, 128)


def test_fork_while_another_thread_is_inside_a_long_call(parent):
    """A thread of the parent is inside a long head call (num_threads=2: its workers are
    running) when the main thread forks; the child's calls finish with the parent's results,
    and the parent's long call completes with the bits of the same call made alone."""
    d, expected = parent
    x, w, y = _long_head()
    started = time.perf_counter()
    alone = amm_softmax.head_forward_backward(x, w, y, num_threads=2, **ONE_PRODUCT_AT_A_TIME)
    duration = time.perf_counter() - started
    entered, finished, result = threading.Event(), [None], [None]

    def long_call():
        entered.set()
        result[0] = amm_softmax.head_forward_backward(x, w, y, num_threads=2,
                                                      **ONE_PRODUCT_AT_A_TIME)
        finished[0] = time.monotonic()

    t = threading.Thread(target=long_call, daemon=True)
    t.start()
    assert entered.wait(10)
    time.sleep(min(0.2, duration / 4))    # past the Python checks, inside the library
    forked_at = time.monotonic()
    report = _in_child(lambda: _same(_calls(d), expected))
    t.join(CHILD_TIMEOUT)
    assert not t.is_alive(), "the parent's long call did not finish"
    assert report == ""
    assert finished[0] > forked_at, (
        f"the long call ({duration:.2f} s alone) ended before the fork: the test did not fork "
        f"inside it")
    assert _same(list(result[0][1:]) + [np.asarray(result[0][0])],
                 list(alone[1:]) + [np.asarray(alone[0])]) == ""


def test_repeated_forks_while_a_thread_keeps_calling(parent):
    """Forks at staggered moments while a parent thread calls the head and the loss in a loop
    (each call with two workers): every child finishes with the parent's results, and every
    call of the looping thread gives its lone result."""
    d, expected = parent
    rng = np.random.default_rng(4)
    x = rng.standard_normal((256, 128)).astype(np.float32)
    w = rng.standard_normal((6000, 128)).astype(np.float32)
    yh = rng.integers(0, 6000, 256)
    cos, labels = random_problem(rng_for("fork-loop"), 512, 6000, np.float32)
    jobs = [lambda: amm_softmax.head_forward_backward(x, w, yh, num_threads=2,
                                                      **ONE_PRODUCT_AT_A_TIME),
            lambda: amm_softmax.forward_backward(cos, labels, num_threads=2, hard="mv-adaptive")]
    wanted = [job() for job in jobs]
    stop, spans, problems = threading.Event(), [], []

    def loop():
        k = 0
        while not stop.is_set():
            begin = time.monotonic()
            got = jobs[k % 2]()
            spans.append((begin, time.monotonic()))
            want = wanted[k % 2]
            if not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, want)):
                problems.append(k)
            k += 1

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    forks = []
    try:
        for k in range(6):
            time.sleep(0.05 + 0.03 * k)
            forks.append(time.monotonic())
            assert _in_child(lambda: _same(_calls(d), expected)) == "", k
    finally:
        stop.set()
        t.join(CHILD_TIMEOUT)
    assert not t.is_alive() and not problems, problems
    inside = sum(any(b < f < e for b, e in spans) for f in forks)
    assert inside >= len(forks) // 2, f"only {inside} of {len(forks)} forks landed inside a call"
