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
