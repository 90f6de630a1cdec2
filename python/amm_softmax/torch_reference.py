"""The loss written in plain PyTorch operations, differentiated by autograd: the peer that the
PyTorch tests compare amm_softmax.torch with and that the benchmarks time (needs torch).

docs/FORMULATION.md's forward, line by line; autograd derives the backward. Keep inputs away from
cos = +-1, where torch.acos's derivative is infinite (the library floors sin(theta) instead).
"""
import math

import torch


def plain_torch_loss(cos: torch.Tensor, labels: torch.Tensor, scale=64.0, margin=0.5,
                     hard_margin=0.2, target="arc", hard="amm",
                     reduction="mean") -> torch.Tensor:
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
    hard_mask = (cos > f.detach()[:, None]) & ~is_target  # no gradient through the mining
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
    return torch.nn.functional.cross_entropy(logits, labels, reduction=reduction)
