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

Sharding by class (PartialFC's layout, over torch.distributed; since 0.3):

    head = ShardedAMMSoftmaxHead(512, 1_000_000, sample_rate=0.1)  # this rank's shard of classes
    loss = head(local_embeddings, local_labels)                     # global class ids
    loss.backward()                                                  # on every rank

Class sampling (sample_rate < 1) is also taken by AMMSoftmaxHead, on one process.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from . import _api, _shard
from ._params import RawBFloat16, check_block_size, check_params

__all__ = ["AMMSoftmaxFunction", "AMMSoftmaxHeadFunction", "AMMSoftmaxLoss", "AMMSoftmaxHead",
           "ShardedAMMSoftmaxHead", "ShardedHeadFunction", "TorchCollectives",
           "class_weights_init"]


def _numpy(t: torch.Tensor, name: str, half: bool = False) -> np.ndarray:
    """A zero-copy NumPy view of a CPU tensor; with `half`, float16 and bfloat16 tensors too
    (bfloat16 as bit patterns, RawBFloat16: NumPy has no bfloat16 of its own)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU, got device {t.device}")
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor (layout torch.strided), "
                        f"got layout {t.layout}")
    t = t.detach().resolve_conj().resolve_neg()
    if half and t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16).view(RawBFloat16)
    if not half and t.dtype in (torch.float16, torch.bfloat16):
        raise TypeError(f"{name} must have dtype float32 or float64, got {t.dtype} (16-bit "
                        f"floats are taken by AMMSoftmaxLoss, on cosines; the head computes "
                        f"in its weight's dtype)")
    try:
        return t.numpy()
    except TypeError:
        kinds = "float32, float64, float16 or bfloat16" if half else "float32 or float64"
        raise TypeError(f"{name} must have dtype {kinds} (an integer dtype for labels), "
                        f"got {t.dtype}") from None


def _to_weight_dtype(embeddings, weight: torch.Tensor):
    """16-bit embeddings (from layers under torch.autocast) in the head's weight dtype: the
    head computes in float32 or float64, and autograd casts the gradient back."""
    if isinstance(embeddings, torch.Tensor) and \
            embeddings.dtype in (torch.float16, torch.bfloat16):
        return embeddings.to(weight.dtype)
    return embeddings


def _tensor(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """The gradient array as a tensor of `like`'s dtype (bfloat16 from its bit patterns)."""
    if like.dtype == torch.bfloat16:
        return torch.from_numpy(np.asarray(a).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _scale(grad: torch.Tensor, grad_output: torch.Tensor, reduction: str) -> torch.Tensor:
    """The saved gradient (for an upstream of 1) times the actual upstream gradient: the saved
    tensor itself for an upstream of exactly 1 (loss.backward()), which saves a pass over it
    (autograd never writes into a gradient another reference holds). 16-bit gradients are
    scaled in float32 and rounded once."""
    if reduction != "none" and grad_output.numel() == 1 and float(grad_output) == 1.0:
        return grad
    work = grad.float() if grad.dtype in (torch.float16, torch.bfloat16) else grad
    if reduction == "none":
        return (work * grad_output.to(work.dtype)[:, None]).to(grad.dtype)
    return (work * grad_output.to(work.dtype)).to(grad.dtype)


class GradientBuffer:
    """One gradient array reused from step to step (AMMSoftmaxLoss(reuse_gradient=True)): the
    allocation and first touch of N x C values cost more than the kernel itself. The array is
    reused only while nothing but this holder refers to it (no tensor, view or storage of it
    kept by the caller, a hook or a live graph); otherwise a new one is made and the old one
    left to whoever holds it."""

    def __init__(self) -> None:
        # Only the storage is kept: every tensor made on it (by any step, held by anyone: the
        # caller, a hook, a saved variable of a live graph) counts on it, so that its use
        # count alone says whether the memory is free.
        self.storage: torch.UntypedStorage | None = None
        self.dtype: torch.dtype | None = None

    def take(self, like: torch.Tensor) -> torch.Tensor:
        storage = self.storage
        if storage is not None and self.dtype == like.dtype and \
                storage.nbytes() == like.numel() * like.element_size() and \
                torch._C._storage_Use_Count(storage._cdata) == 1:
            return torch.empty(0, dtype=like.dtype).set_(storage, 0, like.shape)
        tensor = torch.empty(like.shape, dtype=like.dtype)
        self.storage, self.dtype = tensor.untyped_storage(), like.dtype
        return tensor

    @property
    def tensor(self) -> torch.Tensor | None:
        """A view of the kept array (for inspection), or None before the first step."""
        if self.storage is None:
            return None
        return torch.empty(0, dtype=self.dtype).set_(self.storage)


class AMMSoftmaxFunction(torch.autograd.Function):
    """loss = AMM-Softmax(cos, labels); d loss / d cos from the library."""

    @staticmethod
    def forward(ctx: Any, cos: torch.Tensor, labels: torch.Tensor, params: dict,
                buffer: GradientBuffer | None = None) -> torch.Tensor:
        cos_np, labels_np = _numpy(cos, "cos", half=True), _numpy(labels, "labels")
        ctx.reduction = params.get("reduction", "mean")
        if ctx.needs_input_grad[0]:
            out = None if buffer is None else buffer.take(cos)
            loss, grad = _api.forward_backward(
                cos_np, labels_np, out=None if out is None else _numpy(out, "out", half=True),
                **params)
            ctx.grad = _tensor(grad, cos) if out is None else out
        else:
            loss = _api.forward(cos_np, labels_np, **params)
        # The 16-bit types compute in float32 and return their loss in it (as autocast keeps a
        # loss in float32); the gradient is in the input's dtype.
        half = cos.dtype in (torch.float16, torch.bfloat16)
        return torch.as_tensor(loss, dtype=torch.float32 if half else cos.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):
        # The gradient made in forward stays with ctx (a second backward, retain_graph, reads
        # it again); autograd copies it only where it must own it (a leaf's .grad).
        return _scale(ctx.grad, grad_output, ctx.reduction), None, None, None


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


class _CurricularState(torch.nn.Module):
    """CurricularFace's t for a module with hard="curricular": a float64 buffer `t` (in the
    state_dict), starting at the `hard_margin` keyword if given, else 0, and updated in training
    mode before each step, t <- 0.01 mean(c_y) + 0.99 t over the rows that are not ignored."""

    def _init_curricular(self, params: dict) -> None:
        self.curricular = params.get("hard") == "curricular"
        if self.curricular:
            self.register_buffer("t", torch.tensor(float(params.get("hard_margin", 0.0)),
                                                   dtype=torch.float64))

    def _step_params(self, target_cosines, labels: torch.Tensor) -> tuple[dict, float | None]:
        """The parameters of this step, with t updated first (training mode, curricular), and
        the new t, which the caller stores only once the step has succeeded (a batch the
        library refuses leaves t as it was)."""
        if not self.curricular:
            return self.params, None
        t = float(self.t)
        if self.training:
            with torch.no_grad():
                cy = target_cosines().to(torch.float64)
                kept = labels != self.params.get("ignore_index", -100)
                if bool(kept.any()):
                    mean = float(cy[kept].mean())
                    if math.isfinite(mean):   # else the library refuses the batch below
                        t = 0.99 * t + 0.01 * mean
        return dict(self.params, hard_margin=t), t

    def _store_t(self, t: float | None) -> None:
        if t is not None and self.training:
            self.t.fill_(t)

    def _apply(self, fn, *args, **kwargs):
        # module.half() or .to(torch.bfloat16) converts floating buffers: t stays float64, where
        # its 1% updates do not vanish in the rounding.
        saved = self.t if getattr(self, "curricular", False) else None
        result = super()._apply(fn, *args, **kwargs)
        if saved is not None:   # moved where the module goes, its value and float64 kept
            self.t = saved.to(device=self.t.device, dtype=torch.float64)
        return result


def _target_cosines_of(cos: torch.Tensor, labels: torch.Tensor):
    """c_y of each row of a cosine matrix (ignored rows read column 0), without gradient."""
    def compute():
        safe = torch.where((labels >= 0) & (labels < cos.shape[1]), labels,
                           torch.zeros_like(labels))
        return cos.detach()[torch.arange(cos.shape[0]), safe]
    return compute


class AMMSoftmaxLoss(_CurricularState):
    """The loss on cosine logits: `AMMSoftmaxLoss(**params)(cos, labels)`.

    Parameters as for amm_softmax.forward: scale=64.0, margin=0.5, hard_margin=0.2,
    target="arc", hard="amm", reduction="mean", ignore_index=-100, num_threads=0,
    margin_gradient="exact". They are validated here, once. With hard="curricular" the module
    keeps CurricularFace's t (the buffer `.t`, see _CurricularState).

    `reuse_gradient=True` (opt-in, since 0.3) writes d loss / d cos into one array kept from
    step to step (GradientBuffer), instead of a new N x C array each step, whenever nothing else
    still refers to the previous one; a gradient the caller keeps is never overwritten."""

    def __init__(self, reuse_gradient: bool = False, **params: Any):
        super().__init__()
        check_params(**params)
        self.params = dict(params)
        self._init_curricular(self.params)
        self.gradient_buffer = GradientBuffer() if reuse_gradient else None

    def forward(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        params, t = self._step_params(_target_cosines_of(cos, labels), labels) \
            if isinstance(cos, torch.Tensor) and isinstance(labels, torch.Tensor) \
            and cos.dim() == 2 and labels.shape == cos.shape[:1] else (self.params, None)
        loss = AMMSoftmaxFunction.apply(cos, labels, params, self.gradient_buffer)
        self._store_t(t)
        return loss

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.params.items())


def class_weights_init(class_start: int, class_stop: int, embedding_dim: int,
                       dtype: torch.dtype, init_seed: int) -> torch.Tensor:
    """Rows [class_start, class_stop) of a (num_classes, embedding_dim) matrix of N(0, 0.01^2)
    class weights that is a function of `init_seed` and the class id alone: classes come in
    blocks of 1024, each drawn (in float64, then rounded to `dtype`) by its own generator keyed
    by (init_seed, block). Shards of any world size therefore concatenate to the matrix of one
    process (AMMSoftmaxHead(init_seed=...)), and each rank draws only the blocks its shard
    touches."""
    for name, value in (("class_start", class_start), ("class_stop", class_stop),
                        ("embedding_dim", embedding_dim), ("init_seed", init_seed)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {value!r}")
    if not 0 <= class_start <= class_stop:
        raise ValueError(f"the classes [{class_start}, {class_stop}) are invalid: need "
                         f"0 <= class_start <= class_stop")
    if embedding_dim < 1:
        raise ValueError(f"embedding_dim = {embedding_dim} is invalid: must be >= 1")
    if init_seed < 0:
        raise ValueError(f"init_seed = {init_seed} is invalid: must be >= 0")
    out = torch.empty(class_stop - class_start, embedding_dim, dtype=dtype)
    block = _INIT_BLOCK
    first = class_start // block
    for b in range(first, -(-class_stop // block) if class_stop > class_start else first):
        key = np.random.SeedSequence([int(init_seed), b]).generate_state(1, np.uint64)[0]
        values = torch.randn(block, embedding_dim, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(int(key))).mul_(0.01)
        lo, hi = max(class_start, b * block), min(class_stop, (b + 1) * block)
        out[lo - class_start:hi - class_start] = values[lo - b * block:hi - b * block]
    return out


_INIT_BLOCK = 1024


def _block_size_for(block_size: int, classes: int, sample_rate: float) -> int:
    """The block size to request for a shard of `classes` classes: 0 (the library's rule, the
    same result up to rounding) where the classes used may be none (an empty shard, or a sample
    of floor(rate * classes) = 0 when the batch has no target there). Works around a division
    by zero in the library's HeadKernel.blockSize, which returns 0 for C = 0 and a requested
    block > 0 (amm_shard_head_* then stops the process)."""
    if block_size > 0 and (classes == 0 or np.floor(sample_rate * classes) == 0):
        return 0
    return block_size


class ShardedHeadFunction(torch.autograd.Function):
    """loss = the fused head sharded by class (amm_softmax._shard.head_forward_backward over
    `collectives`): the forward runs the whole protocol, gradients included, and saves them;
    backward scales them by the upstream gradient and communicates nothing.

    `options`: the driver's keywords (class_start, sample_rate, seed, step, block_size and the
    loss parameters) and "record", a dict that receives hard_negatives (this rank's rows),
    sampled_classes (this shard's kept classes, global ids) and traffic. A tensor that cannot be
    handed over (not a tensor, not on the CPU) raises the same error on every rank."""

    @staticmethod
    def forward(ctx: Any, x_local: torch.Tensor, w_shard: torch.Tensor,
                labels_local: torch.Tensor, collectives: _shard.Collectives,
                options: dict) -> torch.Tensor:
        agree = _shard._Counted(collectives, _shard.Traffic())
        x, w, y = _shard._attempt(agree, lambda: (_numpy(x_local, "x_local"),
                                                  _numpy(w_shard, "weight"),
                                                  _numpy(labels_local, "labels_local")))
        kw = {k: v for k, v in options.items() if k != "record"}
        hard = np.zeros(x.shape[0] if x.ndim else 0, dtype=np.int64)
        traffic = _shard.Traffic()
        loss, grad_x, grad_w, kept = _shard.head_forward_backward(
            x, w, y, collectives, hard_negatives=hard, return_sampled=True, traffic=traffic,
            **kw)
        options.get("record", {}).update(hard_negatives=hard, sampled_classes=kept,
                                         traffic=traffic)
        ctx.grads = torch.from_numpy(grad_x), torch.from_numpy(grad_w)
        return torch.as_tensor(loss, dtype=x_local.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):
        grad_x, grad_w = ctx.grads
        return _scale(grad_x, grad_output, "sum"), _scale(grad_w, grad_output, "sum"), \
            None, None, None


class AMMSoftmaxHead(_CurricularState):
    """A classification head that owns the class weights (an nn.Parameter of shape
    (num_classes, embedding_dim), rows are classes) and returns the loss of
    `embeddings` (N, embedding_dim) for `labels`, with gradients to both, computed by the fused
    head without the (N, num_classes) matrix. Loss parameters as for AMMSoftmaxLoss; the
    reduction must be "mean" or "sum". `block_size`: classes per block (0: the library's rule).

    The weights are drawn from N(0, 0.01^2): by torch's global generator when `init_seed` is
    None (the default, as before 0.3), else by class_weights_init(0, num_classes, ...,
    init_seed), which is what the shards of ShardedAMMSoftmaxHead(init_seed=...) concatenate to
    for any world size.

    Class sampling (PartialFC, since 0.3): with `sample_rate` < 1, each forward in training mode
    keeps the classes that are a target of the batch and, when floor(sample_rate * num_classes)
    is more, that many classes in all, the others drawn by a generator keyed by (seed, step, 0);
    the loss and gradients are those of the kept classes, the other classes' weights get a zero
    gradient (see docs/FORMULATION.md, "Class sampling"). `.step` counts the forwards in
    training mode (it starts at 0 and is not in the state_dict: restore it when resuming for the
    same draws); in eval mode every class is used and the step does not advance.
    `.sampled_classes` holds the last call's kept classes (None when it used every class). The
    same draws as ShardedAMMSoftmaxHead on a world of one process."""

    def __init__(self, embedding_dim: int, num_classes: int, *, block_size: int = 0,
                 dtype: torch.dtype = torch.float32, sample_rate: float = 1.0, seed: int = 0,
                 init_seed: int | None = None, **params: Any):
        super().__init__()
        p = check_params(**params)
        if p.reduction == "none":
            raise ValueError("AMMSoftmaxHead needs reduction 'mean' or 'sum', got 'none'")
        self.block_size = check_block_size(block_size)
        self.sample_rate, self.seed, _ = _shard.check_sampling(sample_rate, seed, 0)
        self.params = dict(params)
        if init_seed is None:
            self.weight = torch.nn.Parameter(torch.empty(num_classes, embedding_dim,
                                                         dtype=dtype))
            torch.nn.init.normal_(self.weight, std=0.01)
        else:
            self.weight = torch.nn.Parameter(class_weights_init(0, num_classes, embedding_dim,
                                                                dtype, init_seed))
        #: The step of the next forward in training mode (class sampling's draws).
        self.step = 0
        #: After each call: how many negatives each row mined as hard (an int64 array).
        self.hard_negatives: np.ndarray | None = None
        #: After each sampled call: the kept classes (sorted int64 array), else None.
        self.sampled_classes: np.ndarray | None = None
        self._init_curricular(self.params)

    def _target_cosines(self, embeddings: torch.Tensor, labels: torch.Tensor):
        """c_y = <normalize(x_i), normalize(W_{y_i})>, O(N D), without gradient."""
        def compute():
            w = self.weight.detach()
            safe = torch.where((labels >= 0) & (labels < w.shape[0]), labels,
                               torch.zeros_like(labels))
            x = torch.nn.functional.normalize(embeddings.detach().to(torch.float64), dim=1)
            wy = torch.nn.functional.normalize(w[safe].to(torch.float64), dim=1)
            return (x * wy).sum(dim=1)
        return compute

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeddings = _to_weight_dtype(embeddings, self.weight)
        params, t = self._step_params(self._target_cosines(embeddings, labels), labels) \
            if isinstance(embeddings, torch.Tensor) and isinstance(labels, torch.Tensor) \
            and embeddings.dim() == 2 and labels.shape == embeddings.shape[:1] \
            and embeddings.shape[1] == self.weight.shape[1] else (self.params, None)
        loss = self._forward(embeddings, labels, params)
        self._store_t(t)
        return loss

    def _forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                 params: dict) -> torch.Tensor:
        ignore_index = self.params.get("ignore_index", -100)
        if self.training and self.sample_rate < 1.0 and \
                (not isinstance(labels, torch.Tensor) or labels.device.type != "cpu" or
                 bool((labels != ignore_index).any())):
            # (A batch with every row ignored takes the exact path: its loss and gradients are
            # 0 either way, and the sampled one would keep no class.)
            record: dict = {}
            block = _block_size_for(self.block_size, self.weight.shape[0], self.sample_rate)
            options = dict(params, sample_rate=self.sample_rate, seed=self.seed,
                           step=self.step, block_size=block, record=record)
            loss = ShardedHeadFunction.apply(embeddings, self.weight, labels,
                                             _shard.SingleProcess(), options)
            self.hard_negatives = record["hard_negatives"]
            self.sampled_classes = record["sampled_classes"]
        else:
            rows = labels.shape[0] if isinstance(labels, torch.Tensor) and labels.dim() == 1 \
                else 0
            self.hard_negatives = np.zeros(rows, dtype=np.int64)
            self.sampled_classes = None
            loss = AMMSoftmaxHeadFunction.apply(embeddings, self.weight, labels, params,
                                                self.block_size, self.hard_negatives)
        if self.training:
            self.step += 1
        return loss

    def extra_repr(self) -> str:
        shape = f"embedding_dim={self.weight.shape[1]}, num_classes={self.weight.shape[0]}"
        sampling = [f"sample_rate={self.sample_rate!r}, seed={self.seed!r}"] \
            if self.sample_rate < 1.0 else []
        return ", ".join([shape] + sampling + [f"{k}={v!r}" for k, v in self.params.items()])


# --- sharding by class over torch.distributed --------------------------------------------------
def _dist():
    import torch.distributed as dist
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of torch")
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised: call "
                           "torch.distributed.init_process_group first")
    return dist


_MAX_DIMS = 8


class TorchCollectives(_shard.Collectives):
    """The driver's collectives over a torch.distributed process group (None: the default
    group), on CPU tensors made from the NumPy arrays (gloo; any backend that reduces and
    gathers CPU tensors of int64, float32 and float64): all_reduce with SUM/MAX/MIN; all_gather
    of the shapes, then of the arrays padded to the largest first dimension, then trimmed;
    broadcast_object_list for text. `bytes_sent` counts this rank's payload (before padding)."""

    def __init__(self, process_group=None) -> None:
        super().__init__()
        dist = _dist()
        self.group = process_group
        self.rank = dist.get_rank(process_group)
        self.size = dist.get_world_size(process_group)
        if self.rank < 0:
            raise ValueError("this process is not a member of process_group")
        self._ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
                     "min": dist.ReduceOp.MIN}

    def allreduce(self, array, op):
        import torch.distributed as dist
        result = np.array(array, order="C", copy=True)
        dist.all_reduce(torch.from_numpy(result), op=self._ops[op], group=self.group)
        self.bytes_sent += result.nbytes
        return result

    def allgather(self, array):
        import torch.distributed as dist
        send = np.asarray(array)
        send = np.ascontiguousarray(send) if send.ndim else send.copy()  # keeps a 0-d array 0-d
        if send.ndim > _MAX_DIMS:
            raise ValueError(f"allgather takes at most {_MAX_DIMS} dimensions, got {send.ndim}")
        # The shapes and dtypes first (small), so that every rank sizes the same buffers and
        # sees the same mismatch, if any.
        meta = np.full(2 + _MAX_DIMS, -1, dtype=np.int64)
        meta[0], meta[1] = send.ndim, send.dtype.num
        meta[2:2 + send.ndim] = send.shape
        metas = [torch.empty(meta.shape, dtype=torch.int64) for _ in range(self.size)]
        dist.all_gather(metas, torch.from_numpy(meta), group=self.group)
        metas = [m.numpy() for m in metas]
        if len({(int(m[0]), int(m[1])) + tuple(m[3:]) for m in metas}) != 1:
            shapes = [tuple(int(v) for v in m[2:2 + m[0]]) for m in metas]
            raise ValueError(f"allgather: the ranks' arrays differ beyond their first "
                             f"dimension or in dtype: shapes {shapes}")
        flat = send.reshape((1,) if send.ndim == 0 else send.shape)
        rows = [int(m[2]) if send.ndim else 1 for m in metas]
        longest = max(rows)
        if longest == 0 or int(np.prod(flat.shape[1:])) == 0:  # nothing to send
            parts = [np.empty((r,) + flat.shape[1:], dtype=send.dtype) for r in rows]
        else:
            padded = np.zeros((longest,) + flat.shape[1:], dtype=send.dtype)
            padded[:flat.shape[0]] = flat
            received = [torch.empty(padded.shape, dtype=_torch_dtype(send.dtype))
                        for _ in range(self.size)]
            dist.all_gather(received, torch.from_numpy(padded), group=self.group)
            parts = [t.numpy()[:r] for t, r in zip(received, rows)]
        self.bytes_sent += send.nbytes + meta.nbytes
        if send.ndim == 0:
            parts = [part.reshape(()) for part in parts]
        return parts

    def broadcast_text(self, text, root):
        import torch.distributed as dist
        src = root if self.group is None else dist.get_global_rank(self.group, root)
        box = [text if self.rank == root else None]
        dist.broadcast_object_list(box, src=src, group=self.group)
        if self.rank == root:
            self.bytes_sent += len(text.encode())
        return box[0]


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=dtype)).dtype


class ShardedAMMSoftmaxHead(_CurricularState):
    """The fused head sharded by class over torch.distributed (PartialFC's layout): each rank
    owns `.weight`, the class weights of its shard [class_start, class_stop) =
    shard_range(num_classes, rank, size) of `process_group` (None: the default group), an
    nn.Parameter of shape (class_stop - class_start, embedding_dim) (possibly 0 rows), and
    passes its own rows: `forward(x_local, labels_local)` with x_local (n_r, embedding_dim) on
    the CPU and labels_local (n_r,) global class ids (or ignore_index). The embeddings and labels
    are gathered, each rank computes its shard's part, and the loss, the same on every rank, is
    that of every rank's rows over every class (a 0-d tensor; reduction "mean" over the rows not
    ignored, or "sum"), equal to AMMSoftmaxHead on the whole batch and the concatenated weights
    up to the order of sums. The gradients are computed in the forward (amm_softmax._shard
    .head_forward_backward): `.weight` receives its shard's complete gradient and x_local the
    gradient of its own rows; backward communicates nothing. Every rank must call forward in
    the same order with the same parameters, and backward with the same upstream gradient
    (loss.backward() everywhere). Bad input on any rank raises the same exception, with the
    same message, on every rank, and leaves no rank waiting.

    Not for wrapping in DistributedDataParallel: the weights differ from rank to rank by design
    and must not be averaged. Wrap the backbone instead, and note that DDP averages its
    gradients over the ranks while this loss already covers every rank's rows: the backbone then
    receives 1/size of this loss's gradient (PartialFC multiplies the embeddings' gradient by
    the world size to compensate: `x_local.register_hook(lambda g: g * size)`).

    Initialisation: N(0, 0.01^2) as AMMSoftmaxHead, drawn by class_weights_init with
    `init_seed`, so that the shards of every world size concatenate to
    AMMSoftmaxHead(..., init_seed=init_seed).weight. When `init_seed` is None, rank 0 draws one
    from torch's global generator (every rank draws, to keep the generators in step) and
    broadcasts it (`.init_seed` shows the seed used).

    Class sampling (PartialFC): `sample_rate` in (0, 1]; below 1, each forward in training mode
    keeps, in every shard, the classes that are a target of the global batch and, when
    floor(sample_rate * c_r) is more, that many classes in all, the others drawn by a generator
    keyed by (seed, step, rank); the other classes get a zero gradient (an optimiser with
    momentum or weight decay still moves them). `.step` counts the forwards in training mode
    (from 0; not in the state_dict: restore it when resuming for the same draws); in eval mode
    every class is used and the step does not advance. `.sampled_classes` holds the last call's
    kept classes of this shard (global ids), `.hard_negatives` the hard-negative counts of this
    rank's rows over every class, `.traffic` the bytes of each collective of the last call.

    Other keywords: block_size (classes per block, 0: the library's rule), dtype (float32 or
    float64), and the loss parameters of AMMSoftmaxHead (reduction "mean" or "sum")."""

    def __init__(self, embedding_dim: int, num_classes: int, process_group=None,
                 sample_rate: float = 1.0, seed: int = 0, *, block_size: int = 0,
                 dtype: torch.dtype = torch.float32, init_seed: int | None = None,
                 **params: Any):
        super().__init__()
        self.collectives = TorchCollectives(process_group)
        self.process_group = process_group
        coll = _shard._Counted(self.collectives, _shard.Traffic())
        rank, size = self.collectives.rank, self.collectives.size

        def prepare():
            p = check_params(**params)
            if p.reduction == "none":
                raise ValueError("ShardedAMMSoftmaxHead needs reduction 'mean' or 'sum', got "
                                 "'none'")
            if dtype not in (torch.float32, torch.float64):
                raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
            if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or \
                    embedding_dim < 1:
                raise ValueError(f"embedding_dim = {embedding_dim!r} is invalid: must be an "
                                 f"integer >= 1")
            if init_seed is not None:
                class_weights_init(0, 0, 1, dtype, init_seed)  # checks init_seed
            rate, seed_, _ = _shard.check_sampling(sample_rate, seed, 0)
            return (check_block_size(block_size), rate, seed_,
                    _shard.shard_range(num_classes, rank, size))
        self.block_size, self.sample_rate, self.seed, (self.class_start, self.class_stop) = \
            _shard._attempt(coll, prepare)
        self.num_classes = int(num_classes)
        # The same on every rank, or every rank says which differs.
        _shard._check_same_everywhere(
            coll, [self.num_classes, embedding_dim, 8 if dtype == torch.float64 else 4,
                   -1 if init_seed is None else init_seed, self.sample_rate, self.seed],
            ["num_classes", "embedding_dim", "the element size", "init_seed", "sample_rate",
             "seed"])
        if init_seed is None:
            drawn = int(torch.randint(0, 2 ** 62, (), dtype=torch.int64))
            init_seed = int(self.collectives.allreduce(
                np.array([drawn if rank == 0 else 0], dtype=np.int64), "sum")[0])
        self.init_seed = int(init_seed)
        self.params = dict(params)
        self.weight = torch.nn.Parameter(class_weights_init(
            self.class_start, self.class_stop, embedding_dim, dtype, self.init_seed))
        #: The step of the next forward in training mode (class sampling's draws).
        self.step = 0
        self.hard_negatives: np.ndarray | None = None
        self.sampled_classes: np.ndarray | None = None
        self.traffic: _shard.Traffic | None = None
        self._init_curricular(self.params)

    def forward(self, x_local: torch.Tensor, labels_local: torch.Tensor) -> torch.Tensor:
        x_local = _to_weight_dtype(x_local, self.weight)
        record: dict = {}
        rate = self.sample_rate if self.training else 1.0
        options = dict(self.params, class_start=self.class_start, sample_rate=rate,
                       seed=self.seed, step=self.step if self.training else 0,
                       block_size=_block_size_for(self.block_size,
                                                  self.class_stop - self.class_start, rate),
                       record=record)
        update = None
        if self.curricular:
            # t from phase 1's target cosines of every rank's rows (the driver), in training.
            update = {"t": float(self.t)} if self.training else None
            options["hard_margin"] = float(self.t)
            if update is not None:
                options["curricular_update"] = update
        loss = ShardedHeadFunction.apply(x_local, self.weight, labels_local, self.collectives,
                                         options)
        if update is not None:
            self.t.fill_(update["t"])
        self.hard_negatives = record["hard_negatives"]
        sampled = self.training and self.sample_rate < 1.0
        self.sampled_classes = record["sampled_classes"] if sampled else None
        self.traffic = record["traffic"]
        if self.training:
            self.step += 1
        return loss

    def extra_repr(self) -> str:
        parts = [f"embedding_dim={self.weight.shape[1]}", f"num_classes={self.num_classes}",
                 f"classes=[{self.class_start}, {self.class_stop})",
                 f"rank={self.collectives.rank}/{self.collectives.size}"]
        if self.sample_rate < 1.0:
            parts.append(f"sample_rate={self.sample_rate!r}, seed={self.seed!r}")
        return ", ".join(parts + [f"{k}={v!r}" for k, v in self.params.items()])
