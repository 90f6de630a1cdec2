"""PyTorch bindings: the loss as an autograd Function and nn.Modules (needs torch; the rest of
the package does not).

    from amm_softmax.torch import AMMSoftmaxLoss, AMMSoftmaxHead

    criterion = AMMSoftmaxLoss(scale=64.0, margin=0.5)           # on cosine logits
    loss = criterion(cos, labels)                                  # cos: (N, C) CPU tensor
    loss.backward()

    head = AMMSoftmaxHead(embedding_dim=512, num_classes=10_000)  # owns the class weights
    loss = head(embeddings, labels)                                # gradients to both

Tensors must be on the CPU, float32 or float64; they are handed to the library without a copy
when contiguous (a non-contiguous one is copied), and the gradients come back without a copy.
The forward pass computes the gradient at the same time when the input requires it (one pass
over the data); backward then only scales it by the upstream gradient.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import _api
from ._params import check_block_size, check_params

__all__ = ["AMMSoftmaxFunction", "AMMSoftmaxHeadFunction", "AMMSoftmaxLoss", "AMMSoftmaxHead"]


def _numpy(t: torch.Tensor, name: str) -> np.ndarray:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU, got device {t.device}")
    return t.detach().numpy()


def _scale(grad: torch.Tensor, grad_output: torch.Tensor, reduction: str) -> torch.Tensor:
    """The saved gradient (for an upstream of 1) times the actual upstream gradient."""
    if reduction == "none":
        return grad * grad_output.to(grad.dtype)[:, None]
    return grad * grad_output.to(grad.dtype)


class AMMSoftmaxFunction(torch.autograd.Function):
    """loss = AMM-Softmax(cos, labels); d loss / d cos from the library."""

    @staticmethod
    def forward(ctx: Any, cos: torch.Tensor, labels: torch.Tensor, params: dict) -> torch.Tensor:
        cos_np, labels_np = _numpy(cos, "cos"), _numpy(labels, "labels")
        ctx.reduction = params.get("reduction", "mean")
        if ctx.needs_input_grad[0]:
            loss, grad = _api.forward_backward(cos_np, labels_np, **params)
            ctx.grad = torch.from_numpy(grad)
        else:
            loss = _api.forward(cos_np, labels_np, **params)
        return torch.as_tensor(loss, dtype=cos.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):
        return _scale(ctx.grad, grad_output, ctx.reduction), None, None


class AMMSoftmaxHeadFunction(torch.autograd.Function):
    """loss = AMM-Softmax(normalize(embeddings) normalize(weights)^T, labels), fused."""

    @staticmethod
    def forward(ctx: Any, embeddings: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor,
                params: dict, block_size: int,
                hard_negatives: np.ndarray | None = None) -> torch.Tensor:
        loss, grad_x, grad_w = _api.head_forward_backward(
            _numpy(embeddings, "embeddings"), _numpy(weights, "weights"),
            _numpy(labels, "labels"), block_size=block_size, hard_negatives=hard_negatives,
            **params)
        ctx.reduction = params.get("reduction", "mean")
        ctx.grads = torch.from_numpy(grad_x), torch.from_numpy(grad_w)
        return torch.as_tensor(loss, dtype=embeddings.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):
        grad_x, grad_w = ctx.grads
        if ctx.reduction == "none":
            # d/dW of sum_i u_i loss_i is not a per-row scaling of the saved total: refuse.
            raise RuntimeError("AMMSoftmaxHead with reduction='none' supports backward only "
                               "through loss.sum() or loss.mean(); use reduction='sum'/'mean'")
        return _scale(grad_x, grad_output, "sum"), _scale(grad_w, grad_output, "sum"), \
            None, None, None, None


class AMMSoftmaxLoss(torch.nn.Module):
    """The loss on cosine logits: `AMMSoftmaxLoss(**params)(cos, labels)`.

    Parameters as for amm_softmax.forward: scale=64.0, margin=0.5, hard_margin=0.2,
    target="arc", hard="amm", reduction="mean", ignore_index=-100, num_threads=0. They are
    validated here, once."""

    def __init__(self, **params: Any):
        super().__init__()
        check_params(**params)
        self.params = dict(params)

    def forward(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return AMMSoftmaxFunction.apply(cos, labels, self.params)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.params.items())


class AMMSoftmaxHead(torch.nn.Module):
    """A classification head that owns the class weights (an nn.Parameter of shape
    (num_classes, embedding_dim), rows are classes) and returns the loss of
    `embeddings` (N, embedding_dim) for `labels`, with gradients to both, computed by the fused
    head without the (N, num_classes) matrix. Loss parameters as for AMMSoftmaxLoss; the
    reduction must be "mean" or "sum". `block_size`: classes per block (0: the library's rule)."""

    def __init__(self, embedding_dim: int, num_classes: int, *, block_size: int = 0,
                 dtype: torch.dtype = torch.float32, **params: Any):
        super().__init__()
        p = check_params(**params)
        if p.reduction == "none":
            raise ValueError("AMMSoftmaxHead needs reduction 'mean' or 'sum', got 'none'")
        self.block_size = check_block_size(block_size)
        self.params = dict(params)
        self.weight = torch.nn.Parameter(torch.empty(num_classes, embedding_dim, dtype=dtype))
        torch.nn.init.normal_(self.weight, std=0.01)
        #: After each call: how many negatives each row mined as hard (an int64 array).
        self.hard_negatives: np.ndarray | None = None

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.hard_negatives = np.zeros(len(labels), dtype=np.int64)
        return AMMSoftmaxHeadFunction.apply(embeddings, self.weight, labels, self.params,
                                            self.block_size, self.hard_negatives)

    def extra_repr(self) -> str:
        shape = f"embedding_dim={self.weight.shape[1]}, num_classes={self.weight.shape[0]}"
        return ", ".join([shape] + [f"{k}={v!r}" for k, v in self.params.items()])
