"""The same loss in plain PyTorch with autograd, on NumPy inputs: the peer the benchmarks time
(the formula is amm_softmax.torch_reference.plain_torch_loss)."""
import numpy as np
import torch

from amm_softmax.torch_reference import plain_torch_loss as torch_loss  # noqa: F401


def torch_forward_backward(cos_np, labels_np, **params):
    cos = torch.from_numpy(np.ascontiguousarray(cos_np)).requires_grad_(True)
    labels = torch.from_numpy(np.asarray(labels_np, dtype=np.int64))
    loss = torch_loss(cos, labels, **params)
    loss.backward()
    return float(loss.detach()), cos.grad.numpy()
