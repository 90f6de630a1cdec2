"""An installed amm_softmax wheel and NumPy in one process (scripts/test_install.sh): both work,
and their thread settings stay independent. NumPy's OpenBLAS is set through threadpoolctl; the
head's OpenBLAS is private (linked statically, symbols hidden), so threadpoolctl must not see it,
the head's results must not depend on NumPy's setting, and the head must not change it."""
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

import amm_softmax


def blas_pools():
    return [(p["filepath"], p["num_threads"]) for p in threadpool_info()
            if p["user_api"] == "blas"]


rng = np.random.default_rng(0)
a = rng.standard_normal((64, 48))
# NumPy works: its matrix product (its own OpenBLAS) against the product written out.
assert np.allclose(a @ a.T, (a[:, None, :] * a[None, :, :]).sum(axis=2), rtol=1e-12, atol=1e-12)

x, w = rng.standard_normal((40, 24)), rng.standard_normal((300, 24))
labels = rng.integers(0, 300, 40)
first = amm_softmax.head_forward_backward(x, w, labels, num_threads=2)
ref = amm_softmax.reference.head_forward_backward(x, w, labels)
assert abs(first[0] - ref[0]) <= 1e-9 * abs(ref[0]), (first[0], ref[0])

pools = blas_pools()
assert pools, "NumPy's OpenBLAS is not visible to threadpoolctl"
assert not any("amm_softmax" in path for path, _ in pools), pools
numpy_threads = dict(pools)
with threadpool_limits(limits=1, user_api="blas"):
    assert all(n == 1 for _, n in blas_pools()), blas_pools()
    limited = amm_softmax.head_forward_backward(x, w, labels, num_threads=2)
    assert all(n == 1 for _, n in blas_pools()), "the head changed NumPy's thread count"
    assert np.allclose(a @ a.T, (a[:, None, :] * a[None, :, :]).sum(axis=2))
assert dict(blas_pools()) == numpy_threads, (blas_pools(), numpy_threads)
for ours, theirs in zip(first, limited):
    assert np.array_equal(ours, theirs), "the head's bits depend on NumPy's thread setting"
print("numpy together: ok;", ", ".join(f"{p} ({n} threads)" for p, n in pools))
