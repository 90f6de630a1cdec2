"""The head's OpenBLAS is its own: no OpenBLAS setting the process shares is read or changed,
whatever the interleaving, and concurrent calls give the bits of a lone call. The library links
Debian's serial OpenBLAS statically with hidden symbols (Package.swift)."""
import ctypes
import ctypes.util
import shutil
import subprocess
import threading

import numpy as np
import pytest

import amm_softmax
from amm_softmax import _library


def test_no_openblas_symbol_is_exported_or_needed():
    lib = _library.load()
    for name in ("cblas_sgemm", "cblas_dgemm", "openblas_set_num_threads",
                 "openblas_get_num_threads", "sgemm_"):
        with pytest.raises(AttributeError):
            getattr(lib, name)
    # ... and it needs none: no OpenBLAS among the libraries it names to the loader.
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf (binutils) is needed to read the library's dependencies")
    dynamic = subprocess.run([readelf, "-d", lib._name], capture_output=True, text=True,
                             check=True).stdout
    needed = [line for line in dynamic.splitlines() if "(NEEDED)" in line]
    assert needed and not any("blas" in line for line in needed), needed


def _system_openblas():
    """Debian's shared (threaded) OpenBLAS, as another user of the process would load it."""
    name = ctypes.util.find_library("openblas")
    if name is None:
        pytest.skip("no system OpenBLAS to check against (libopenblas0 is not installed)")
    blas = ctypes.CDLL(name)
    blas.openblas_get_num_threads.restype = ctypes.c_int
    blas.openblas_set_num_threads.argtypes = [ctypes.c_int]
    return blas


def head_problem(seed, dtype):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((48, 64)).astype(dtype)
    w = rng.standard_normal((5000, 64)).astype(dtype)
    labels = rng.integers(0, 5000, 48)
    return x, w, labels


def test_concurrent_heads_and_another_blas_user_each_see_what_they_would_alone():
    blas = _system_openblas()
    blas.openblas_set_num_threads(2)
    problems = [head_problem(seed, dtype) for seed, dtype in
                ((0, np.float32), (1, np.float64), (2, np.float32), (3, np.float64))]
    alone = [amm_softmax.head_forward_backward(*p, num_threads=2, block_size=512)
             for p in problems]
    a = np.random.default_rng(9).standard_normal((300, 300))
    numpy_alone = a @ a
    results, errors = {}, []
    stop = threading.Event()

    def head(k):
        try:
            for _ in range(3):
                got = amm_softmax.head_forward_backward(*problems[k], num_threads=2,
                                                        block_size=512)
                for g, want in zip(got, alone[k]):
                    assert np.array_equal(np.asarray(g), np.asarray(want)), f"head {k} differs"
            results[k] = True
        except Exception as e:  # reported below
            errors.append(e)

    def other_user():
        # Another part of the program using the system OpenBLAS and NumPy meanwhile.
        while not stop.is_set():
            if blas.openblas_get_num_threads() != 2:
                errors.append(AssertionError("the system OpenBLAS thread count changed"))
                return
            if not np.array_equal(a @ a, numpy_alone):
                errors.append(AssertionError("NumPy's product changed"))
                return

    threads = [threading.Thread(target=head, args=(k,)) for k in range(4)]
    watcher = threading.Thread(target=other_user)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    stop.set()
    watcher.join(timeout=60)
    assert not errors, errors
    assert sorted(results) == [0, 1, 2, 3]
    assert blas.openblas_get_num_threads() == 2


def test_numpy_blas_threads_are_left_alone():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [(i["internal_api"], i["num_threads"]) for i in threadpoolctl.threadpool_info()]
    amm_softmax.head_forward_backward(*head_problem(5, np.float32), num_threads=1)
    amm_softmax.head_forward_backward(*head_problem(6, np.float64), num_threads=0)
    after = [(i["internal_api"], i["num_threads"]) for i in threadpoolctl.threadpool_info()]
    assert after == before
