"""Shared fixtures for the amm_softmax test suite.

The library under test is the compiled libAMMSoftmax.so (build it with `swift build -c release`
at the repository root); the oracle is the pure NumPy `amm_softmax.reference`.

At the end of a run the largest errors measured against the reference are printed (see
helpers.MEASURED), so that the tolerance constants in helpers.py can be re-checked.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import pytest  # noqa: E402

import helpers  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _library_loaded():
    """Fail early and clearly if the compiled library cannot be found."""
    from amm_softmax import _library

    try:
        _library.load()
    except OSError as e:  # pragma: no cover - environment problem
        pytest.exit(f"cannot load the amm_softmax library: {e}", returncode=3)


def pytest_terminal_summary(terminalreporter):
    lines = helpers.measured_summary()
    if lines:
        terminalreporter.section("largest errors measured against amm_softmax.reference")
        for line in lines:
            terminalreporter.write_line(line)
