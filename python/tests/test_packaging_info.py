"""`python -m amm_softmax info` (issue 15): each fact it prints is the one the library and this
process give, read here another way."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import amm_softmax
from amm_softmax import _library

PYTHON_DIR = Path(__file__).resolve().parents[1]


def run(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "amm_softmax", "info", *args],
                            env=dict(os.environ, PYTHONPATH=str(PYTHON_DIR)),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_facts_are_those_of_the_library_and_the_process():
    facts = json.loads(run("--json"))
    assert facts["version"] == amm_softmax.__version__
    assert facts["library_version"] == amm_softmax.library_version()
    assert facts["kernel_build"] == amm_softmax.kernel_build()
    assert facts["kernel_build_detail"] == amm_softmax.kernel_build_detail()
    assert facts["threads"] == max(1, os.sysconf("SC_NPROCESSORS_ONLN"))
    assert re.fullmatch(r"OpenBLAS \d+\.\d+\.\d+, .*", facts["blas"]), facts["blas"]
    # The library the child loaded is the one this process loads (same search order).
    assert facts["library"] == os.path.realpath(_library.load()._name)
    assert facts["libraries"][0] == facts["library"]
    names = [os.path.basename(p) for p in facts["libraries"]]
    expected_kernels = {"avx2": "libAMMSoftmaxAVX2.so", "avx512": "libAMMSoftmaxAVX512.so"}
    if facts["kernel_build"] in expected_kernels:
        assert expected_kernels[facts["kernel_build"]] in names, names
    else:
        assert not any(n.startswith(("libAMMSoftmaxAVX")) for n in names), names
    for path in facts["libraries"]:
        assert Path(path).is_file(), path


def test_the_text_report_names_every_fact():
    text = run()
    facts = json.loads(run("--json"))
    assert text.startswith(f"amm-softmax {facts['version']} (library {facts['library_version']})")
    for line in (f"kernel build: {facts['kernel_build']}", f"BLAS: {facts['blas']}",
                 f"threads: {facts['threads']} ", f"Swift runtime: {facts['swift_runtime']}",
                 "loaded from:", f"    {facts['library']}"):
        assert line in text, (line, text)


def test_an_unknown_command_is_refused():
    result = subprocess.run([sys.executable, "-m", "amm_softmax", "nonsense"],
                            env=dict(os.environ, PYTHONPATH=str(PYTHON_DIR)),
                            capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice" in result.stderr
