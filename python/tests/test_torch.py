"""amm_softmax.torch: the autograd Function and the modules (skipped where torch is absent; run
them with `bash scripts/test_torch.sh`, which installs torch into its own environment)."""
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (bash scripts/test_torch.sh)")

from amm_softmax.torch import AMMSoftmaxHead, AMMSoftmaxLoss  # noqa: E402
from amm_softmax.torch_reference import plain_torch_loss  # noqa: E402


def problem(n=12, c=40, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    cos = torch.rand(n, c, generator=g, dtype=dtype) * 1.8 - 0.9
    labels = torch.randint(0, c, (n,), generator=g)
    return cos, labels


@pytest.mark.parametrize("target", ["arc", "cos"])
@pytest.mark.parametrize("hard", ["amm", "mv-fixed", "mv-adaptive", "none"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_plain_pytorch_autograd(target, hard, reduction, dtype):
    params = dict(target=target, hard=hard, reduction=reduction, scale=16.0,
                  hard_margin=0.2 if hard == "amm" else 1.2)
    cos, labels = problem(dtype=dtype)
    a = cos.clone().requires_grad_(True)
    b = cos.clone().requires_grad_(True)
    ours = AMMSoftmaxLoss(**params)(a, labels)
    theirs = plain_torch_loss(b, labels, **params)
    upstream = torch.rand_like(theirs) + 0.5  # a non-trivial upstream gradient
    (ours * upstream).sum().backward()
    (theirs * upstream).sum().backward()
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours, theirs, **tol)
    torch.testing.assert_close(a.grad, b.grad, **tol)


def test_gradcheck_f64():
    cos, labels = problem(n=4, c=7)
    cos.requires_grad_(True)
    loss = AMMSoftmaxLoss(scale=4.0, reduction="none")
    assert torch.autograd.gradcheck(lambda x: loss(x, labels), (cos,), eps=1e-6, atol=1e-6)


def test_zero_copy_in_and_out():
    cos, labels = problem(dtype=torch.float32)
    cos.requires_grad_(True)
    AMMSoftmaxLoss()(cos, labels).backward()
    assert cos.grad.dtype == torch.float32 and cos.grad.shape == cos.shape


def test_bad_input_is_refused():
    cos, labels = problem()
    with pytest.raises(ValueError, match="scale"):
        AMMSoftmaxLoss(scale=-1.0)
    with pytest.raises(ValueError, match=r"labels\[0\] = 99"):
        labels[0] = 99
        AMMSoftmaxLoss()(cos, labels)


def test_head_matches_plain_pytorch():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, 6, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 30, (10,), generator=g)
    head = AMMSoftmaxHead(6, 30, dtype=torch.float64, scale=8.0, block_size=7)
    with torch.no_grad():
        head.weight.copy_(torch.randn(30, 6, generator=g, dtype=torch.float64))
    loss = head(x, labels)
    loss.backward()
    x2 = x.detach().clone().requires_grad_(True)
    w2 = head.weight.detach().clone().requires_grad_(True)
    cos = torch.nn.functional.linear(torch.nn.functional.normalize(x2),
                                     torch.nn.functional.normalize(w2))
    ref = plain_torch_loss(cos, labels, scale=8.0)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(head.weight.grad, w2.grad, rtol=1e-9, atol=1e-12)


def test_training_reduces_the_loss():
    """A small embedding network on synthetic identities: the loss falls."""
    g = torch.Generator().manual_seed(0)
    classes, dim, per_class = 20, 16, 30
    centres = torch.randn(classes, 32, generator=g)
    labels = torch.arange(classes).repeat_interleave(per_class)
    inputs = centres[labels] + 0.5 * torch.randn(len(labels), 32, generator=g)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, dim))
    head = AMMSoftmaxHead(dim, classes, scale=16.0, margin=0.2)
    optimiser = torch.optim.SGD(list(net.parameters()) + list(head.parameters()), lr=0.05,
                                momentum=0.9)
    losses = []
    for _ in range(60):
        optimiser.zero_grad()
        loss = head(net(inputs), labels)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_main_job_trains_with_the_torch_backend(tmp_path):
    """amm_softmax.train --backend torch (the default where torch imports): runs, reduces every
    loss, and agrees closely with the NumPy back-end, which starts from the same weights."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    pytest.importorskip("sklearn", reason="scikit-learn (bundled digits) is not installed")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    results = {}
    for backend in ("torch", "numpy"):
        out = tmp_path / backend
        subprocess.run([sys.executable, "-m", "amm_softmax.train", "--quick", "--backend",
                        backend, "--out", str(out)], env=env, check=True, capture_output=True)
        results[backend] = json.loads((out / "results.json").read_text())
    assert results["torch"]["backend"] == "torch"
    for dataset, runs in results["torch"]["results"].items():
        for name, r in runs.items():
            assert r["curve"][-1] < r["curve"][0]
            other = results["numpy"]["results"][dataset][name]
            assert abs(r["curve"][-1] - other["curve"][-1]) <= 0.05 * other["curve"][-1] + 1e-3


# --- 0.3: seeded initialisation and class sampling on one process ----------------------------
def test_head_init_seed_is_reproducible_and_the_default_unchanged():
    from amm_softmax.torch import class_weights_init
    a = AMMSoftmaxHead(5, 2100, init_seed=4, dtype=torch.float64).weight.detach()
    assert torch.equal(a, AMMSoftmaxHead(5, 2100, init_seed=4, dtype=torch.float64).weight)
    assert not torch.equal(a, AMMSoftmaxHead(5, 2100, init_seed=5, dtype=torch.float64).weight)
    assert abs(float(a.std()) - 0.01) < 5e-4
    # float32: the float64 draw rounded; any split of the classes gives the same rows.
    f32 = AMMSoftmaxHead(5, 2100, init_seed=4).weight.detach()
    assert f32.dtype == torch.float32 and torch.equal(f32, a.float())
    parts = [class_weights_init(lo, hi, 5, torch.float64, 4)
             for lo, hi in ((0, 700), (700, 1024), (1024, 1025), (1025, 2100))]
    assert torch.equal(torch.cat(parts), a)
    # Without init_seed: torch's global generator, as before 0.3.
    torch.manual_seed(9)
    b = AMMSoftmaxHead(5, 30).weight.detach()
    torch.manual_seed(9)
    assert torch.equal(b, torch.nn.init.normal_(torch.empty(30, 5), std=0.01))
    with pytest.raises(ValueError, match="init_seed"):
        AMMSoftmaxHead(5, 30, init_seed=-1)


def sampled_problem(n=12, d=6, c=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, c, (n,), generator=g)
    labels[::5] = -100
    return x, labels


def test_head_class_sampling_is_the_head_on_the_kept_classes():
    import numpy as np
    import amm_softmax
    x, labels = sampled_problem()
    rate, params = 0.3, dict(scale=16.0)
    head = AMMSoftmaxHead(6, 60, sample_rate=rate, seed=2, init_seed=1, dtype=torch.float64,
                          block_size=7, **params)
    w = head.weight.detach().numpy().copy()
    draws = []
    for step in range(3):
        assert head.step == step
        head.weight.grad = None
        xs = x.clone().requires_grad_(True)
        loss = head(xs, labels)
        (2.0 * loss).backward()
        kept = head.sampled_classes
        draws.append(kept)
        targets = np.unique(labels[labels != -100].numpy())
        assert np.isin(targets, kept).all() and kept.size == int(rate * 60)
        # The same draw as amm_softmax.head_forward_backward(..., sample_rate=...).
        mapped = np.where(labels.numpy() == -100, -100, np.searchsorted(kept, labels.numpy()))
        want = amm_softmax.head_forward_backward(x.numpy(), w[kept], mapped, **params)
        torch.testing.assert_close(loss.detach(), torch.tensor(want[0], dtype=torch.float64),
                                   rtol=1e-12, atol=0)
        torch.testing.assert_close(xs.grad, torch.from_numpy(2.0 * want[1]), rtol=1e-12,
                                   atol=1e-15)
        grad_w = head.weight.grad.numpy()
        np.testing.assert_allclose(grad_w[kept], 2.0 * want[2], rtol=1e-12, atol=1e-15)
        assert np.all(np.delete(grad_w, kept, axis=0) == 0)
        assert head.hard_negatives.shape == (12,)
    assert not np.array_equal(draws[0], draws[1])
    # Eval mode: every class, no step.
    head.eval()
    loss = head(x, labels)
    assert head.sampled_classes is None and head.step == 3
    full = amm_softmax.head_forward_backward(x.numpy(), w, labels.numpy(), **params)[0]
    assert abs(float(loss.detach()) - full) <= 1e-12 * abs(full)
    assert "sample_rate=0.3" in repr(head)


def test_head_class_sampling_edge_cases():
    x, labels = sampled_problem(c=3)
    # floor(rate * C) = 0 with a given block: only the targets (never an empty block rule).
    head = AMMSoftmaxHead(6, 3, sample_rate=0.25, block_size=2, dtype=torch.float64)
    head(x, labels).backward()
    assert set(head.sampled_classes) == set(labels[labels != -100].tolist())
    # Every row ignored: loss 0 and zero gradients (the exact path; nothing to sample).
    head.weight.grad = None
    loss = head(x, torch.full_like(labels, -100))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.all(head.weight.grad == 0)
    for bad, exception in ((0.0, ValueError), (1.5, ValueError), ("0.5", TypeError)):
        with pytest.raises(exception, match="sample_rate"):
            AMMSoftmaxHead(6, 3, sample_rate=bad)
    with pytest.raises(ValueError, match="seed"):
        AMMSoftmaxHead(6, 3, sample_rate=0.5, seed=-1)


def test_sharded_head_function_gradcheck_on_one_process():
    """ShardedHeadFunction (the autograd Function of the sharded and the sampled head) on one
    process with a fixed sampling step: its gradients are those of its loss."""
    from amm_softmax._shard import SingleProcess
    from amm_softmax.torch import ShardedHeadFunction
    g = torch.Generator().manual_seed(5)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, -100, 8, 3])
    options = dict(scale=4.0, sample_rate=0.6, seed=1, step=0)
    assert torch.autograd.gradcheck(
        lambda a, b: ShardedHeadFunction.apply(a, b, labels, SingleProcess(), dict(options)),
        (x, w), eps=1e-6, atol=1e-6)
