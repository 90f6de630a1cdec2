"""The same loss written in plain PyTorch with autograd: the peer the benchmark measures.

Follows FORMULATION.md (forward), and lets autograd derive the backward. Random benchmark inputs
stay away from cos = +-1, where torch.acos has an infinite derivative (the library floors it).
"""
import math

import numpy as np
import torch


def torch_loss(cos, labels, scale=64.0, margin=0.5, hard_margin=0.2, target="arc", hard="amm"):
    rows = torch.arange(cos.shape[0])
    cy = cos[rows, labels]
    if target == "arc":
        inside = cy > math.cos(math.pi - margin)
        f = torch.where(inside, torch.cos(torch.acos(cy.clamp(-1, 1)) + margin),
                        cy - margin * math.sin(margin))
    else:
        f = cy - margin
    is_target = torch.zeros_like(cos, dtype=torch.bool)
    is_target[rows, labels] = True
    hard_mask = (cos > f.detach()[:, None]) & ~is_target
    t = hard_margin
    if hard == "amm":
        g_hard = torch.cos(torch.clamp(torch.acos(cos.clamp(-1, 1)) - t, min=0))
    elif hard == "mv-fixed":
        g_hard = t * cos + t - 1
    elif hard == "mv-adaptive":
        g_hard = (t + 1) * cos + t
    else:
        g_hard = cos
    logits = torch.where(is_target, f[:, None], torch.where(hard_mask, g_hard, cos)) * scale
    return torch.nn.functional.cross_entropy(logits, labels)


def torch_forward_backward(cos_np, labels_np, **params):
    cos = torch.from_numpy(np.ascontiguousarray(cos_np)).requires_grad_(True)
    labels = torch.from_numpy(np.asarray(labels_np, dtype=np.int64))
    loss = torch_loss(cos, labels, **params)
    loss.backward()
    return float(loss.detach()), cos.grad.numpy()
