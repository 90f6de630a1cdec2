"""The package's annotations as a user's type checker sees them (issue 15): mypy --strict passes
a script that calls every public function (typing_user/user_script.py, which also runs), and
reports the misuses of typing_user/wrong_use.py. amm_softmax.torch is left out: it needs torch.

mypy reads the package as a dependency (--follow-imports=silent): the user's script is checked
against the package's signatures, and the package's own bodies are not judged here. The installed
wheel's py.typed is checked by scripts/test_install.sh, which runs this script's mypy against
the wheel in its own environment.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "typing_user"
PYTHON_DIR = Path(__file__).resolve().parents[1]

pytest.importorskip("mypy", reason="mypy is not installed (python/requirements-test.txt)")


def mypy(script: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MYPYPATH=str(PYTHON_DIR))
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
         "--no-incremental", "--ignore-missing-imports", str(script)],
        env=env, capture_output=True, text=True, cwd=HERE)


def test_py_typed_is_in_the_package():
    assert (PYTHON_DIR / "amm_softmax" / "py.typed").is_file()


def test_mypy_strict_passes_a_script_calling_every_public_function():
    result = mypy(HERE / "user_script.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout


def test_mypy_reports_misuse():
    result = mypy(HERE / "wrong_use.py")
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Incompatible types in assignment (expression has type "str", variable has type ' \
           '"int")' in result.stdout, result.stdout
    assert 'Argument 1 to "forward_backward" has incompatible type "str"' in result.stdout, \
        result.stdout


def test_the_user_script_runs():
    result = subprocess.run([sys.executable, str(HERE / "user_script.py")],
                            env=dict(os.environ, PYTHONPATH=str(PYTHON_DIR)),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("user script:") and result.stdout.strip().endswith("ok")
