"""amm_softmax.torch with 16-bit tensors and under CPU autocast (since 0.3; run with
`bash scripts/test_torch.sh`)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (bash scripts/test_torch.sh)")

import amm_softmax  # noqa: E402
from amm_softmax.torch import AMMSoftmaxHead, AMMSoftmaxLoss  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_tensors(dtype):
    g = torch.Generator().manual_seed(0)
    cos32 = torch.rand(12, 300, generator=g) * 1.6 - 0.8
    labels = torch.randint(0, 300, (12,), generator=g)
    cos = cos32.to(dtype).requires_grad_(True)
    loss = AMMSoftmaxLoss(scale=32.0)(cos, labels)
    assert loss.dtype == torch.float32
    loss.backward()
    assert cos.grad.dtype == dtype
    # The float32 path on the same (widened) values, its gradient rounded to the dtype.
    ref = cos.detach().float().requires_grad_(True)
    ref_loss = AMMSoftmaxLoss(scale=32.0)(ref, labels)
    ref_loss.backward()
    assert float(loss) == float(ref_loss)
    assert torch.equal(cos.grad, ref.grad.to(dtype))
    # A non-trivial upstream gradient scales the stored gradient in float32, rounded again.
    cos.grad = None
    (AMMSoftmaxLoss(scale=32.0)(cos, labels) * 0.37).backward()
    assert torch.equal(cos.grad, (ref.grad.to(dtype).float() * 0.37).to(dtype))


def test_unsupported_dtype_names_the_supported_ones():
    cos = torch.zeros(2, 3, dtype=torch.complex64)
    with pytest.raises(TypeError, match="float32, float64, float16 or bfloat16"):
        AMMSoftmaxLoss()(cos, torch.tensor([0, 1]))


def test_autocast_training_loop():
    """A loop as a user writes it: F.linear(F.normalize(x), F.normalize(W)) under
    torch.autocast("cpu", dtype=torch.bfloat16) gives bfloat16 cosines; the loss falls. The
    fused head in the same loop takes the autocast embeddings too."""
    torch.manual_seed(0)
    n, d, c = 256, 32, 20
    labels = torch.randint(0, c, (n,))
    x = torch.randn(n, d) + 2.0 * torch.nn.functional.one_hot(labels, d).float()
    net = torch.nn.Linear(d, d)
    w = torch.nn.Parameter(torch.randn(c, d) * 0.01)
    loss_fn = AMMSoftmaxLoss(scale=16.0, margin=0.3)
    head = AMMSoftmaxHead(d, c, scale=16.0, margin=0.3)
    opt = torch.optim.SGD(list(net.parameters()) + [w] + list(head.parameters()), lr=0.5)
    first = last = None
    for step in range(40):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            emb = net(x)
            cos = torch.nn.functional.linear(torch.nn.functional.normalize(emb),
                                             torch.nn.functional.normalize(w))
            assert cos.dtype == torch.bfloat16
            loss = loss_fn(cos, labels) + head(emb, labels)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        first = value if first is None else first
        last = value
    assert last < 0.6 * first, (first, last)


def _problem(seed=0, n=16, c=500):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, generator=g) * 1.6 - 0.8, torch.randint(0, c, (n,), generator=g)


def test_reused_gradient_buffer_is_reused_and_never_overwrites_a_kept_gradient():
    base, labels = _problem()
    loss_fn = AMMSoftmaxLoss(scale=16.0, reuse_gradient=True)

    def step(values, keep=None):
        leaf = values.clone().requires_grad_(True)
        cos = leaf.clone()                      # a non-leaf, as F.linear's output is
        if keep is not None:
            cos.register_hook(lambda g: keep.append(g))
        loss_fn(cos, labels).backward()
        return leaf.grad

    first = step(base)
    pointer = loss_fn.gradient_buffer.tensor.data_ptr()
    second = step(base * 0.5)
    assert loss_fn.gradient_buffer.tensor.data_ptr() == pointer    # nothing held it: reused
    kept = []
    third = step(base * 0.25, keep=kept)
    snapshot = kept[0].clone()
    step(base)                                                      # kept[0] is still held
    assert loss_fn.gradient_buffer.tensor.data_ptr() != kept[0].data_ptr()
    assert torch.equal(kept[0], snapshot)
    # And the values are those of the module without reuse.
    plain = AMMSoftmaxLoss(scale=16.0)
    for values, got in ((base, first), (base * 0.5, second), (base * 0.25, third)):
        leaf = values.clone().requires_grad_(True)
        plain(leaf, labels).backward()
        assert torch.equal(leaf.grad, got)


def test_reused_buffer_is_not_overwritten_while_a_graph_saves_it():
    """create_graph: a later node may keep the gradient tensor itself (no new Python or
    storage owner but the TensorImpl); the storage's use count still sees it."""
    base, labels = _problem(2)
    loss_fn = AMMSoftmaxLoss(scale=16.0, reuse_gradient=True)
    cos = base.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(cos, labels), cos, create_graph=True)
    snapshot = grad.detach().clone()
    loss_fn(base.clone().requires_grad_(True) * 0.5, labels).backward()
    assert torch.equal(grad.detach(), snapshot)


def test_backward_twice_with_retain_graph():
    base, labels = _problem(1)
    cos = base.clone().requires_grad_(True)
    loss = AMMSoftmaxLoss(scale=16.0)(cos, labels)
    loss.backward(retain_graph=True)
    once = cos.grad.clone()
    loss.backward()
    assert torch.allclose(cos.grad, 2 * once, rtol=1e-6, atol=0)
