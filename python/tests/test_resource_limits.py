"""The library inside a process short of memory: each case runs in a child process whose address
space is capped (RLIMIT_AS) just above what it already uses. Memory that cannot be had is a
MemoryError (AMM_ERR_ALLOC) and the process lives on; worker threads that cannot be started
leave their work to the calling thread, with the same bits, and never a hang."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

PYTHON_DIR = Path(__file__).resolve().parents[1]

PRELUDE = r"""
import resource, sys
import numpy as np
import amm_softmax as A
from amm_softmax import _shard

def used():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * 4096

def cap(margin_mib):
    resource.setrlimit(resource.RLIMIT_AS, (used() + (margin_mib << 20), resource.RLIM_INFINITY))

def uncap():
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

rng = np.random.default_rng(0)
# Load the library and warm OpenBLAS (its buffers are made on first use) before any cap.
A.head_forward_backward(rng.standard_normal((4, 8)), rng.standard_normal((5, 8)), np.arange(4))
"""

CASES = {
    # No worker thread can get its stack: the calls finish on the calling thread, and give the
    # bits of a single-threaded call (results never depend on the thread count).
    "threads": r"""
cos = rng.uniform(-1, 1, (256, 2000)).astype(np.float32); y = rng.integers(0, 2000, 256)
x = rng.standard_normal((64, 32)).astype(np.float32)
w = rng.standard_normal((3000, 32)).astype(np.float32)
want = A.forward_backward(cos, y, num_threads=1)
want_head = A.head_forward_backward(x, w, y[:64] % 3000, num_threads=1)
out, gx, gw = np.empty_like(cos), np.empty_like(x), np.empty_like(w)
cap(2)
loss, grad = A.forward_backward(cos, y, num_threads=2, out=out)
head = A.head_forward_backward(x, w, y[:64] % 3000, num_threads=2, out=(gx, gw))
uncap()
assert loss == want[0] and np.array_equal(grad, want[1])
assert head[0] == want_head[0] and np.array_equal(gx, want_head[1]) and np.array_equal(gw, want_head[2])
print("ok")
""",
    # The head's scratch (the normalised embeddings, the kept cosines, the blocks: about
    # 100 MiB here) cannot be had, though every output is given: MemoryError, then the same
    # call succeeds once memory is back.
    "head": r"""
x = rng.standard_normal((1024, 256)).astype(np.float32)
w = rng.standard_normal((40000, 256)).astype(np.float32)
y = rng.integers(0, 40000, 1024)
gx, gw = np.empty_like(x), np.empty_like(w)
gx.fill(0); gw.fill(0)
cap(8)
try:
    A.head_forward_backward(x, w, y, out=(gx, gw))
except MemoryError as e:
    assert "could not allocate" in str(e), e
else:
    raise AssertionError("no MemoryError")
uncap()
loss, _, _ = A.head_forward_backward(x, w, y, out=(gx, gw))
assert np.isfinite(loss)
print("ok")
""",
    # A sharded phase of the head, driven through the protocol: the same.
    "shard": r"""
x = rng.standard_normal((1024, 256)).astype(np.float32)
w = rng.standard_normal((40000, 256)).astype(np.float32)
y = rng.integers(0, 40000, 1024)
cap(8)
try:
    _shard.head_forward_backward(x, w, y, _shard.SingleProcess())
except MemoryError as e:
    assert "could not allocate" in str(e), e
else:
    raise AssertionError("no MemoryError")
uncap()
assert np.isfinite(_shard.head_forward_backward(x, w, y, _shard.SingleProcess())[0])
print("ok")
""",
    # The loss's scratch rows (streamed gradients: 2 rows per worker) and the wrapper's own
    # output: a gradient array that cannot be made is NumPy's MemoryError.
    "loss": r"""
cos = rng.uniform(-1, 1, (4, 3_000_000)).astype(np.float32); y = rng.integers(0, 3_000_000, 4)
out = np.empty_like(cos); out.fill(0)
cap(2)
for attempt in range(2):
    try:
        A.forward_backward(cos, y, num_threads=1, out=out)
    except MemoryError as e:
        assert "could not allocate" in str(e), e
    else:
        raise AssertionError("no MemoryError")
try:
    A.forward_backward(cos, y)  # a new gradient array of 48 MB
except MemoryError:
    pass
else:
    raise AssertionError("no MemoryError for the output")
uncap()
loss, grad = A.forward_backward(cos, y, out=out)
assert np.isfinite(loss) and np.isfinite(grad).all()
print("ok")
""",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_under_a_memory_cap(case):
    env = dict(os.environ, PYTHONPATH=str(PYTHON_DIR) + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    try:
        done = subprocess.run([sys.executable, "-c", PRELUDE + CASES[case]], env=env,
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case}: the child did not finish within 120 s (a hang)")
    assert done.returncode == 0, f"{case}: exit {done.returncode}\n{done.stderr[-2000:]}"
    assert done.stdout.strip().endswith("ok")
