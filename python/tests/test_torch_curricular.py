"""amm_softmax.torch since 0.3: CurricularFace's t in the modules and the straight-through
margin gradient against insightface's CombinedMarginLoss, written here in plain torch (run with
`bash scripts/test_torch.sh`)."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (bash scripts/test_torch.sh)")

import amm_softmax  # noqa: E402
from amm_softmax.torch import AMMSoftmaxHead, AMMSoftmaxLoss  # noqa: E402


def insightface_arcface(cos, labels, s=64.0, m=0.5):
    """insightface's ArcFace as CombinedMarginLoss computes it: the margin applied to the
    logits in place under no_grad, then cross-entropy on s * logits."""
    logits = cos.clone()
    index = torch.arange(cos.shape[0])
    with torch.no_grad():
        target = logits[index, labels].arccos()
        logits[index, labels] = torch.cos(target + m)
    logits = logits * s
    return torch.nn.functional.cross_entropy(logits, labels)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_straight_through_is_insightface(dtype):
    g = torch.Generator().manual_seed(0)
    cos = torch.rand(16, 50, generator=g, dtype=dtype) * 1.2 - 0.6   # theta + m stays below pi
    labels = torch.randint(0, 50, (16,), generator=g)
    a = cos.clone().requires_grad_(True)
    b = cos.clone().requires_grad_(True)
    ours = AMMSoftmaxLoss(hard="none", margin=0.5, scale=64.0,
                          margin_gradient="straight-through")(a, labels)
    theirs = insightface_arcface(b, labels)
    ours.backward()
    theirs.backward()
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours, theirs, **tol)
    torch.testing.assert_close(a.grad, b.grad, **tol)
    exact = cos.clone().requires_grad_(True)
    AMMSoftmaxLoss(hard="none", margin=0.5, scale=64.0)(exact, labels).backward()
    assert not torch.allclose(exact.grad, a.grad)   # the exact gradient is another one


def test_loss_module_keeps_t():
    g = torch.Generator().manual_seed(1)
    cos = torch.rand(10, 30, generator=g, dtype=torch.float64) * 1.6 - 0.8
    labels = torch.randint(0, 30, (10,), generator=g)
    labels[2] = -100
    module = AMMSoftmaxLoss(hard="curricular", scale=16.0)
    assert float(module.t) == 0.0 and "t" in module.state_dict()
    loss = module(cos, labels)
    kept = labels != -100
    t1 = 0.01 * float(cos[torch.arange(10)[kept], labels[kept]].mean())
    assert float(module.t) == pytest.approx(t1, rel=1e-14)
    # The step used the updated t, as the functional call with hard_margin = t1 computes.
    want = amm_softmax.forward(cos.numpy(), labels.numpy(), hard="curricular", hard_margin=t1,
                               scale=16.0)
    assert float(loss) == pytest.approx(want, rel=1e-14)
    module.eval()
    module(cos, labels)
    assert float(module.t) == pytest.approx(t1, rel=1e-14)  # eval: unchanged
    restored = AMMSoftmaxLoss(hard="curricular", scale=16.0)
    restored.load_state_dict(module.state_dict())
    assert float(restored.t) == float(module.t)


def test_head_keeps_t_and_trains():
    torch.manual_seed(0)
    x = torch.randn(64, 16, dtype=torch.float64)
    labels = torch.randint(0, 8, (64,))
    x = x + 3.0 * torch.nn.functional.one_hot(labels, 16).to(torch.float64)
    head = AMMSoftmaxHead(16, 8, dtype=torch.float64, hard="curricular", scale=16.0, margin=0.3)
    w0 = head.weight.detach().clone()
    head(x, labels)
    cy = (torch.nn.functional.normalize(x, dim=1)
          * torch.nn.functional.normalize(w0[labels], dim=1)).sum(dim=1)
    assert float(head.t) == pytest.approx(0.01 * float(cy.mean()), rel=1e-12)
    net = torch.nn.Linear(16, 16, dtype=torch.float64)
    opt = torch.optim.Adam(list(net.parameters()) + list(head.parameters()), lr=1e-2)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = head(net(x), labels)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    assert 0.0 < float(head.t) < 1.0 and math.isfinite(float(head.t))


def test_target_cosines_monitor():
    cos = torch.tensor([[0.5, 0.1], [0.2, 0.9]], dtype=torch.float64)
    out = np.zeros(2)
    amm_softmax.forward(cos.numpy(), np.array([0, 1]), target_cosines=out)
    np.testing.assert_array_equal(out, [0.5, 0.9])
    assert np.degrees(np.arccos(out)).mean() == pytest.approx((60.0 + 25.841932763) / 2, rel=1e-9)


def test_a_refused_batch_leaves_t_alone_and_half_keeps_it_float64():
    cos = torch.tensor([[0.5, 0.1], [0.2, 0.9]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    module = AMMSoftmaxLoss(hard="curricular", scale=16.0)
    module(cos, labels)
    t1 = float(module.t)
    bad = cos.clone()
    bad[0, 0] = float("nan")          # the target of row 0: the library refuses the batch
    with pytest.raises(ValueError, match=r"cos\[0, 0\] = nan"):
        module(bad, labels)
    assert float(module.t) == t1
    with pytest.raises(ValueError, match=r"labels\[1\] = 7"):
        module(cos, torch.tensor([0, 7]))
    assert float(module.t) == t1
    module.half()
    assert module.t.dtype == torch.float64 and float(module.t) == t1
