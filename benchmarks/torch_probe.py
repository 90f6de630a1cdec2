"""Whether the benchmarks can time PyTorch: the module holding the plain-PyTorch peer
(torch_loss.py), or the reason torch cannot be used, in one line for the report."""
import sys
from pathlib import Path


def load_torch_peer():
    """(torch_loss module, None) when torch imports and loads its libraries, else (None, why)."""
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import torch_loss  # imports torch
        return torch_loss, None
    except Exception as exc:  # ImportError, or a torch that cannot load its libraries
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0][:120]
