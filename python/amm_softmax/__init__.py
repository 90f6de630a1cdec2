"""amm-softmax: the AMM-Softmax loss (and ArcFace, CosFace, MV-Softmax) with exact gradients.

Functions (every one takes the keyword parameters below):

    forward(cos, labels, **params)                       -> loss
    backward(cos, labels, grad_output=1.0, **params)     -> grad_cos
    forward_backward(cos, labels, **params)              -> (loss, grad_cos)
    head_forward_backward(embeddings, weights, labels, **params)
                                                         -> (loss, grad_embeddings, grad_weights)
        sample_rate=1.0, seed=0, step=0: PartialFC's class sampling (each step keeps the
        targets and floor(sample_rate * C) classes in all); return_sampled=True appends the
        kept class ids to the result

`cos` is an (N, C) float32 or float64 array of cosines between embeddings and class weights
(any strides); `labels` an (N,) integer array of target classes in [0, C), or ignore_index to
skip a row. The loss is a float for reduction 'mean' and 'sum' and an (N,) array for 'none';
gradients are shaped and typed like `cos`.

Parameters (defaults from docs/FORMULATION.md):
    scale=64.0        s > 0
    margin=0.5        target margin m (an angle in [0, pi) for target 'arc')
    hard_margin=0.2   hard-negative margin t >= 0
    target="arc"      "arc" (ArcFace's cos(theta + m)) or "cos" (CosFace's cos - m)
    hard="amm"        "amm", "mv-fixed", "mv-adaptive" or "none"
    reduction="mean"  "mean", "sum" or "none"
    ignore_index=-100 rows with this label give 0 loss and 0 gradient
    num_threads=0     worker threads (0 = all cores); results do not depend on it

Bad input raises TypeError (types, dtypes) or ValueError (shapes, labels, parameters,
non-finite values) naming the parameter, row or column and the value. Inputs are never
modified. `amm_softmax.reference` computes the same in plain NumPy.

Sharding by class over MPI ranks (PartialFC's split; needs mpi4py, imported only on request):
`amm_softmax.mpi.head_forward_backward(x_local, w_shard, labels_local, comm, **params)` and
`amm_softmax.mpi.forward_backward(cos_shard, labels, comm, **params)`.
"""
from . import reference
from ._api import (backward, curricular_t, forward, forward_backward, head_forward_backward,
                   kernel_build,
                   kernel_build_detail, library_version)

def _version() -> str:
    """The version: written by the build of an installed package, else (a checkout) read from
    the C header, its one source."""
    try:
        from ._version import __version__ as installed
        return installed
    except ImportError:
        import re
        from pathlib import Path
        header = (Path(__file__).resolve().parents[2] / "include" / "amm_softmax.h").read_text()
        return ".".join(re.search(rf"#define AMM_VERSION_{part} (\d+)", header).group(1)
                        for part in ("MAJOR", "MINOR", "PATCH"))


__version__ = _version()
__all__ = ["forward", "backward", "forward_backward", "head_forward_backward", "curricular_t",
           "reference",
           "library_version", "kernel_build", "kernel_build_detail", "__version__"]
