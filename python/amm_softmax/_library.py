"""Finding, loading and declaring libAMMSoftmax.so (ctypes).

The library is looked for, in order: the path in AMM_SOFTMAX_LIBRARY, the copy inside this
installed package, the repository's .build/release/. It is loaded on first use, so that `import amm_softmax`
works without it (the reference's arithmetic needs no library, but its argument checks call
amm_params_validate, so calling it does).
"""
from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

LIBRARY_NAME = "libAMMSoftmax.so"

# amm_status, as include/amm_softmax.h numbers it.
AMM_OK = 0
AMM_ERR_NULL_POINTER = 1
AMM_ERR_SHAPE = 2
AMM_ERR_LABEL = 3
AMM_ERR_PARAM = 4
AMM_ERR_NONFINITE = 5
AMM_ERR_ALLOC = 6
AMM_ERR_INTERNAL = 7
AMM_ERR_OVERFLOW = 8

TARGET_CODES = {"arc": 0, "cos": 1}
HARD_CODES = {"amm": 0, "mv-fixed": 1, "mv-adaptive": 2, "none": 3, "curricular": 4}
MARGIN_GRADIENT_CODES = {"exact": 0, "straight-through": 1}
REDUCTION_CODES = {"mean": 0, "sum": 1, "none": 2}


class AmmParams(ctypes.Structure):
    """struct amm_params of include/amm_softmax.h."""

    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("scale", ctypes.c_double),
        ("margin", ctypes.c_double),
        ("hard_margin", ctypes.c_double),
        ("target", ctypes.c_int32),
        ("hard", ctypes.c_int32),
        ("reduction", ctypes.c_int32),
        ("num_threads", ctypes.c_int32),
        ("ignore_index", ctypes.c_int64),
        ("head_block_size", ctypes.c_int64),
        ("hard_negatives", ctypes.c_void_p),
        ("margin_gradient", ctypes.c_int32),
        ("target_cosines", ctypes.c_void_p),
    ]


def candidate_paths() -> list[Path]:
    """Where the library is looked for, in order."""
    here = Path(__file__).resolve().parent
    paths = []
    if os.environ.get("AMM_SOFTMAX_LIBRARY"):
        paths.append(Path(os.environ["AMM_SOFTMAX_LIBRARY"]))
    paths.append(here / "lib" / LIBRARY_NAME)
    paths.append(here.parent.parent / ".build" / "release" / LIBRARY_NAME)
    return paths


_lock = threading.Lock()
_lib = None


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    vp, i64, params = ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(AmmParams)
    lib.amm_params_init.argtypes = [params]
    lib.amm_params_init.restype = None
    lib.amm_version.argtypes = []
    lib.amm_version.restype = ctypes.c_char_p
    lib.amm_status_name.argtypes = [ctypes.c_int]
    lib.amm_status_name.restype = ctypes.c_char_p
    lib.amm_version_number.argtypes = []
    lib.amm_version_number.restype = ctypes.c_uint32
    lib.amm_params_validate.argtypes = [params]
    lib.amm_params_validate.restype = ctypes.c_int
    lib.amm_kernel_build.argtypes = []
    lib.amm_kernel_build.restype = ctypes.c_char_p
    lib.amm_kernel_build_detail.argtypes = []
    lib.amm_kernel_build_detail.restype = ctypes.c_char_p
    lib.amm_last_error.argtypes = []
    lib.amm_last_error.restype = ctypes.c_char_p
    for suffix in ("f32", "f64"):
        getattr(lib, f"amm_forward_{suffix}").argtypes = [params, vp, i64, i64, vp, vp]
        getattr(lib, f"amm_backward_{suffix}").argtypes = [params, vp, i64, i64, vp, vp, vp]
        getattr(lib, f"amm_forward_backward_{suffix}").argtypes = [params, vp, i64, i64, vp,
                                                                   vp, vp]
        getattr(lib, f"amm_head_forward_backward_{suffix}").argtypes = [
            params, vp, vp, i64, i64, i64, vp, vp, vp, vp]
        for kind in ("forward", "backward", "forward_backward", "head_forward_backward"):
            getattr(lib, f"amm_{kind}_{suffix}").restype = ctypes.c_int
    for suffix in ("bf16", "f16"):   # 16-bit storage (since 0.3): the loss and grad_loss float
        getattr(lib, f"amm_forward_{suffix}").argtypes = [params, vp, i64, i64, vp, vp]
        getattr(lib, f"amm_backward_{suffix}").argtypes = [params, vp, i64, i64, vp, vp, vp]
        getattr(lib, f"amm_forward_backward_{suffix}").argtypes = [params, vp, i64, i64, vp,
                                                                   vp, vp]
        for kind in ("forward", "backward", "forward_backward"):
            getattr(lib, f"amm_{kind}_{suffix}").restype = ctypes.c_int
    lib.amm_shard_rescale_sums.argtypes = [i64, vp, vp, vp]
    lib.amm_shard_rescale_sums.restype = ctypes.c_int
    for suffix in ("f32", "f64"):
        # (params, data..., n, [d,] c_local, class_start, c_total, labels, then the arrays)
        getattr(lib, f"amm_shard_target_{suffix}").argtypes = [params, vp, i64, i64, i64, i64,
                                                              vp, vp]
        getattr(lib, f"amm_shard_statistics_{suffix}").argtypes = [
            params, vp, i64, i64, i64, i64, vp, vp, vp, vp]
        getattr(lib, f"amm_shard_gradient_{suffix}").argtypes = [
            params, vp, i64, i64, i64, i64, vp, vp, vp, vp, vp, vp, vp]
        getattr(lib, f"amm_shard_head_target_{suffix}").argtypes = [
            params, vp, vp, i64, i64, i64, i64, i64, vp, vp]
        getattr(lib, f"amm_shard_head_statistics_{suffix}").argtypes = [
            params, vp, vp, i64, i64, i64, i64, i64, vp, vp, vp, vp]
        getattr(lib, f"amm_shard_head_gradient_{suffix}").argtypes = [
            params, vp, vp, i64, i64, i64, i64, i64, vp, vp, vp, vp, vp, vp, vp]
        for phase in ("target", "statistics", "gradient"):
            getattr(lib, f"amm_shard_{phase}_{suffix}").restype = ctypes.c_int
            getattr(lib, f"amm_shard_head_{phase}_{suffix}").restype = ctypes.c_int
    return lib


def load() -> ctypes.CDLL:
    """The loaded library (loaded once, on first call)."""
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            tried = []
            for path in candidate_paths():
                if path.is_file():
                    _lib = _declare(ctypes.CDLL(str(path)))
                    break
                tried.append(str(path))
            else:
                raise OSError(
                    f"{LIBRARY_NAME} not found; looked at: {', '.join(tried)}. Build it with "
                    "`swift build -c release` in the repository, or set AMM_SOFTMAX_LIBRARY "
                    "to its path.")
    return _lib
