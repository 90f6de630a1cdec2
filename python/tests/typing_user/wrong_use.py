"""Misuses mypy must report (python/tests/test_packaging_typing.py): were the package's types
lost (no py.typed, Any everywhere), these lines would pass and the test would fail."""
import amm_softmax

build: int = amm_softmax.kernel_build()
amm_softmax.forward_backward("not an array", [0])
