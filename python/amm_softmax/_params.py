"""Argument checks shared by the library wrapper and the NumPy reference.

Everything here is about *accepting* input (types, shapes, labels); none of it is the
mathematics. Each check raises TypeError (wrong kind of object or dtype) or ValueError (right kind,
wrong value) with a message naming the parameter, row or column and the value found.

The domains of the parameters (scale > 0, the margin's range for each target, hard_margin >= 0,
num_threads >= 0, block_size >= 0) are defined once, in the library: this module converts each
value to the type of its amm_params field and asks the library (amm_params_validate) whether the
struct is valid, so the reference too validates through the library, while its arithmetic stays
plain NumPy.
"""
from __future__ import annotations

import ctypes
import numbers
from dataclasses import dataclass

import numpy as np

from . import _library as L

TARGETS = ("arc", "cos")
HARDS = ("amm", "mv-fixed", "mv-adaptive", "none", "curricular")
MARGIN_GRADIENTS = ("exact", "straight-through")
REDUCTIONS = ("mean", "sum", "none")

_INT64 = np.iinfo(np.int64)
# The element types of the loss on cosines: the two the kernels compute in, and (since 0.3) two
# 16-bit storage types computed as float32 (NumPy's float16 and ml_dtypes' bfloat16).
COMPUTE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class RawBFloat16(np.ndarray):
    """A uint16 array holding bfloat16 bit patterns, for callers without ml_dtypes (the torch
    module views a torch.bfloat16 tensor this way)."""


def is_half(a) -> bool:
    """Whether `a` (an ndarray) holds 16-bit floats: float16, ml_dtypes' bfloat16 (recognised
    by name, so that ml_dtypes is never imported here), or a RawBFloat16 view."""
    return isinstance(a, RawBFloat16) or a.dtype == np.float16 or \
        (a.dtype.name == "bfloat16" and a.dtype.itemsize == 2)


def storage_suffix(a: np.ndarray) -> str:
    """The suffix of the C functions for `a`'s element type: f32, f64, f16 or bf16."""
    if is_half(a):
        return "f16" if a.dtype == np.float16 else "bf16"
    return "f32" if a.dtype == np.float32 else "f64"
_INT32 = np.iinfo(np.int32)


@dataclass(frozen=True)
class Params:
    """The validated keyword parameters of every function (defaults: docs/FORMULATION.md)."""

    scale: float = 64.0
    margin: float = 0.5
    hard_margin: float = 0.2
    target: str = "arc"
    hard: str = "amm"
    reduction: str = "mean"
    ignore_index: int = -100
    num_threads: int = 0
    margin_gradient: str = "exact"


def _real(name: str, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    return float(value)


def _integer(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name} = {value} is out of range: must be in [{lo}, {hi}]")
    return value


def _choice(name: str, value, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {choices}, got {value!r}")
    if value not in choices:
        raise ValueError(f"{name} = {value!r} is unknown: must be one of {choices}")
    return value


def check_params(scale=64.0, margin=0.5, hard_margin=0.2, target="arc", hard="amm",
                 reduction="mean", ignore_index=-100, num_threads=0,
                 margin_gradient="exact") -> Params:
    """Validates the shared keyword parameters and returns them as a Params."""
    scale = _real("scale", scale)
    margin = _real("margin", margin)
    hard_margin = _real("hard_margin", hard_margin)
    target = _choice("target", target, TARGETS)
    hard = _choice("hard", hard, HARDS)
    reduction = _choice("reduction", reduction, REDUCTIONS)
    ignore_index = _integer("ignore_index", ignore_index, int(_INT64.min), int(_INT64.max))
    num_threads = _integer("num_threads", num_threads, int(_INT32.min), int(_INT32.max))
    margin_gradient = _choice("margin_gradient", margin_gradient, MARGIN_GRADIENTS)
    p = Params(scale, margin, hard_margin, target, hard, reduction, ignore_index, num_threads,
               margin_gradient)
    validate(abi_struct(p))
    return p


def abi_struct(p: Params, head_block_size: int = 0,
               hard_negatives: np.ndarray | None = None,
               target_cosines: np.ndarray | None = None) -> L.AmmParams:
    """The amm_params struct of `p` (the fields the C header documents)."""
    s = L.AmmParams()
    s.struct_size = ctypes.sizeof(L.AmmParams)
    s.scale, s.margin, s.hard_margin = p.scale, p.margin, p.hard_margin
    s.target = L.TARGET_CODES[p.target]
    s.hard = L.HARD_CODES[p.hard]
    s.reduction = L.REDUCTION_CODES[p.reduction]
    s.num_threads = p.num_threads
    s.ignore_index = p.ignore_index
    s.head_block_size = head_block_size
    s.hard_negatives = None if hard_negatives is None else hard_negatives.ctypes.data
    s.margin_gradient = L.MARGIN_GRADIENT_CODES[p.margin_gradient]
    s.target_cosines = None if target_cosines is None else target_cosines.ctypes.data
    return s


# What this package calls the amm_params fields whose Python keyword differs.
_KEYWORDS = {"head_block_size": "block_size"}


def validate(struct: L.AmmParams) -> None:
    """Raises ValueError with the library's message if a field is out of its domain."""
    lib = L.load()
    if lib.amm_params_validate(ctypes.byref(struct)) != L.AMM_OK:
        message = lib.amm_last_error().decode("utf-8", "replace")
        message = message.removeprefix("amm_params_validate: ").removeprefix("parameter ")
        for field, keyword in _KEYWORDS.items():
            if message.startswith(field + " "):
                message = keyword + message[len(field):]
        raise ValueError(message)


def native_byte_order(a):
    """`a` itself, or for a float32/float64 ndarray stored in non-native byte order (e.g. '>f4'
    on a little-endian machine) a native, C-ordered copy of the same values (the library reads
    native floats; the input is never modified). Anything else is returned unchanged, for the
    checks to refuse."""
    if isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.dtype.itemsize in (2, 4, 8) \
            and not a.dtype.isnative:
        return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("="))
    return a


def _as_array(value, name: str) -> np.ndarray:
    """np.asarray(value), with NumPy's refusal of a ragged or odd sequence naming `name`."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{name} cannot be converted to an array: {e}") from None


def check_cos(cos, name: str = "cos", half: bool = True) -> np.ndarray:
    """A float32/float64 matrix of shape (N, C) with C >= 1 (not copied, unless it is a list or
    tuple, or in non-native byte order); with `half`, also float16 or bfloat16 (ml_dtypes)."""
    if isinstance(cos, (list, tuple)):
        cos = _as_array(cos, name)
    cos = native_byte_order(cos)
    _float_matrix(cos, name, " (N, C)", half=half)
    if cos.shape[1] < 1:
        raise ValueError(f"{name} must have at least one class (column), got shape {cos.shape}")
    return cos


def check_labels(labels, rows: int, classes: int, ignore_index: int,
                 rows_of: str = "cos") -> np.ndarray:
    """Integer labels of shape (rows,), each in [0, classes) or equal to ignore_index; `rows_of`
    names the input whose rows they label, for the message.

    Returns them as a C-contiguous int64 array (a copy only when the input is not one already;
    any byte order and integer width is converted by value).
    """
    labels = _as_array(labels, "labels")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.shape != (rows,):
        raise ValueError(f"labels must have shape ({rows},) to match {rows_of}, "
                         f"got {labels.shape}")
    if labels.dtype.kind == "u" and labels.size and labels.max() > _INT64.max:
        row = int(np.argmax(labels > _INT64.max))
        raise ValueError(f"labels[{row}] = {labels[row]} is out of range: must be in "
                         f"[0, {classes}) or equal ignore_index ({ignore_index})")
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    bad = ((labels < 0) | (labels >= classes)) & (labels != ignore_index)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"labels[{row}] = {labels[row]} is out of range: must be in "
                         f"[0, {classes}) or equal ignore_index ({ignore_index})")
    return labels


def check_grad_output(grad_output, rows: int, reduction: str) -> np.ndarray:
    """The upstream gradient as float64: 1 value for mean/sum, `rows` values for none (a scalar
    is broadcast). Must be finite."""
    if isinstance(grad_output, (bool, np.bool_)):
        raise TypeError(f"grad_output must be a real number or array, got {grad_output!r}")
    try:
        g = np.asarray(grad_output)
    except Exception as e:  # a ragged sequence, an object NumPy cannot hold
        raise TypeError(f"grad_output must be a real number or array: {e}") from None
    if g.dtype.kind not in "iuf":
        raise TypeError(f"grad_output must be real (integer or float), got dtype {g.dtype}")
    g = g.astype(np.float64)
    if reduction == "none":
        if g.ndim == 0:
            g = np.full(rows, float(g))
        elif g.shape != (rows,):
            raise ValueError(f"grad_output must be a scalar or have shape ({rows},) for "
                             f"reduction 'none', got shape {g.shape}")
    elif g.size != 1 or g.ndim > 1:
        raise ValueError(f"grad_output must be a scalar for reduction {reduction!r}, "
                         f"got shape {g.shape}")
    else:
        g = g.reshape(1)
    bad = ~np.isfinite(g)
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"grad_output[{k}] = {g[k]} is not finite")
    return g


def _float_matrix(a, name: str, shape: str, half: bool = False) -> None:
    """`a` is a 2-D float32/float64 ndarray (with `half`, also float16 or bfloat16); `shape`
    describes it in the message."""
    kinds = "float32, float64, float16 or bfloat16 (ml_dtypes)" if half else "float32 or float64"
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of {kinds}, got {type(a).__name__}")
    if a.dtype not in COMPUTE_DTYPES and not (half and is_half(a)):
        order = " in native byte order" if a.dtype.kind == "f" and not a.dtype.isnative else ""
        only = "" if half or not is_half(a) else \
            " (16-bit floats are taken by the loss on cosines, not here)"
        raise TypeError(f"{name} must have dtype {kinds}{order}, got {a.dtype}{only}")
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-dimensional{shape}, got shape {a.shape}")


def check_head_inputs(embeddings, weights):
    """Embeddings (N, D) and weights (C, D) of one float dtype, D >= 1, C >= 1 (not copied)."""
    _float_matrix(embeddings, "embeddings", "")
    _float_matrix(weights, "weights", "")
    if weights.dtype != embeddings.dtype:
        raise TypeError(f"weights must have the dtype of embeddings ({embeddings.dtype}), "
                        f"got {weights.dtype}")
    if embeddings.shape[1] < 1:
        raise ValueError(f"embeddings must have at least one column (D >= 1), "
                         f"got shape {embeddings.shape}")
    if weights.shape[0] < 1:
        raise ValueError(f"weights must have at least one class (row), got shape {weights.shape}")
    if weights.shape[1] != embeddings.shape[1]:
        raise ValueError(f"weights must have D = {embeddings.shape[1]} columns like embeddings, "
                         f"got shape {weights.shape}")
    return embeddings, weights


def check_block_size(block_size) -> int:
    """The fused head's classes per block: 0 (automatic) or a positive integer."""
    block_size = _integer("block_size", block_size, int(_INT64.min), int(_INT64.max))
    validate(abi_struct(Params(), head_block_size=block_size))
    return block_size
