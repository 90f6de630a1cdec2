"""Builds and runs the C programs of the repository against libAMMSoftmax.so.

- examples/c/example.c, as C11 and as C++17 (the header's extern "C" guards);
- Tests/c/abi_test.c, the ABI contract test (its last line is "N passed, M failed");
- examples/c/shard_mpi.c, the head sharded by class over 3 MPI ranks (built with mpicc, run
  with mpirun), checked by the program itself against the single-process head, and once more
  with a NaN in one rank's weights, which every rank must learn of and stop on.

Every compile uses -Wall -Wextra -Werror -pedantic. The tests are skipped when their compiler
(gcc, g++, or mpicc and mpirun for the MPI example) is missing, and fail when the library has
not been built (run `swift build -c release`).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INCLUDE = REPO / "include"
LIB_DIR = REPO / ".build" / "release"
LIBRARY = LIB_DIR / "libAMMSoftmax.so"
EXAMPLE = REPO / "examples" / "c" / "example.c"
ABI_TEST = REPO / "Tests" / "c" / "abi_test.c"
SHARD_MPI = REPO / "examples" / "c" / "shard_mpi.c"

WARNINGS = ["-Wall", "-Wextra", "-Werror", "-pedantic"]
LINK = [f"-L{LIB_DIR}", "-lAMMSoftmax", f"-Wl,-rpath,{LIB_DIR}", "-lm"]

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
needs_mpi = pytest.mark.skipif(
    shutil.which("mpicc") is None or shutil.which("mpirun") is None,
    reason="mpicc or mpirun is not installed (Debian: openmpi-bin and libopenmpi-dev; "
           "scripts/setup.sh installs them)")

#: The ranks of the MPI runs; --oversubscribe lets 3 ranks share fewer cores.
MPI_RANKS = 3
#: Open MPI refuses to run as root unless told twice; set for the subprocess only.
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def require_library() -> Path:
    """The built library; its absence is a test failure, not a skip."""
    if not LIBRARY.is_file():
        pytest.fail(
            f"{LIBRARY} is missing: build it first with `swift build -c release` "
            f"in {REPO}",
            pytrace=False,
        )
    return LIBRARY


def compile_program(compiler: list[str], source: Path, output: Path, extra: list[str] = ()):
    command = [*compiler, *WARNINGS, f"-I{INCLUDE}", str(source), *LINK, *extra, "-o",
               str(output)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (
        f"compile failed ({result.returncode}): {' '.join(command)}\n"
        f"{result.stdout}{result.stderr}"
    )
    assert output.is_file()
    return output


def run_program(binary: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def describe(result: subprocess.CompletedProcess) -> str:
    return f"exit code {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def check_example_output(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, describe(result)
    out = result.stdout
    # Both losses are printed and are finite positive numbers, and agree.
    losses = [float(x) for x in
              re.findall(r"^loss \(f(?:32|64)[^)]*\)\s*=\s*([-+0-9.eE]+)$", out, re.M)]
    assert len(losses) == 2, describe(result)
    assert all(0.0 < x < 1e6 for x in losses), losses
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    # The gradient matrix: 4 rows of 6 values; the ignored row is all zero.
    rows = re.findall(r"^\s*row (\d+) \(label\s*(-?\d+)\):((?:\s+[-+]\d+\.\d+){6})\s*$", out,
                      re.M)
    assert len(rows) == 4, describe(result)
    for _, label, values in rows:
        numbers = [float(v) for v in values.split()]
        if int(label) == -100:
            assert all(v == 0.0 for v in numbers), values
        else:
            assert numbers[int(label)] < 0.0, values  # the target's gradient is negative
    # The refused call: the status name and the library's message.
    assert "AMM_ERR_LABEL" in out, describe(result)
    assert "labels[2] = 9" in out, describe(result)


@needs_gcc
def test_example_c(tmp_path):
    require_library()
    binary = compile_program(["gcc", "-std=c11"], EXAMPLE, tmp_path / "example")
    check_example_output(run_program(binary))


@needs_gxx
def test_example_compiles_and_runs_as_cxx(tmp_path):
    require_library()
    binary = compile_program(["g++", "-std=c++17", "-x", "c++"], EXAMPLE,
                             tmp_path / "example_cxx")
    check_example_output(run_program(binary))


@needs_gcc
def test_abi_test(tmp_path):
    require_library()
    binary = compile_program(["gcc", "-std=c11"], ABI_TEST, tmp_path / "abi_test",
                             extra=["-lpthread"])
    result = run_program(binary)
    lines = result.stdout.strip().splitlines()
    assert lines, describe(result)
    summary = re.fullmatch(r"(\d+) passed, (\d+) failed", lines[-1])
    assert summary, f"unexpected last line {lines[-1]!r}\n{describe(result)}"
    n_passed, n_failed = int(summary.group(1)), int(summary.group(2))
    failures = "\n".join(line for line in lines if line.startswith("FAIL"))
    assert n_failed == 0 and result.returncode == 0, (
        f"{n_failed} ABI check(s) failed:\n{failures}\n{describe(result)}"
    )
    assert n_passed > 100, lines[-1]
    assert lines[-1].endswith(" 0 failed")


@pytest.fixture(scope="module")
def shard_mpi_binary(tmp_path_factory) -> Path:
    """examples/c/shard_mpi.c built once with mpicc for the tests below."""
    require_library()
    return compile_program(["mpicc", "-std=c11"], SHARD_MPI,
                           tmp_path_factory.mktemp("mpi") / "shard_mpi")


def run_mpi(binary: Path, *args: str) -> subprocess.CompletedProcess:
    command = ["mpirun", "--oversubscribe", "-n", str(MPI_RANKS), str(binary), *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **MPI_ENV})


@needs_mpi
def test_shard_mpi(shard_mpi_binary):
    result = run_mpi(shard_mpi_binary)
    assert result.returncode == 0, describe(result)
    out = result.stdout
    assert f"{MPI_RANKS} MPI ranks" in out, describe(result)
    # Two settings, each compared with the single-process head by the program; the errors it
    # prints are checked here too.
    errors = re.findall(r"max relative error: loss (\S+), grad_embeddings (\S+), "
                        r"grad_weights (\S+)$", out, re.M)
    assert len(errors) == 2, describe(result)
    for triple in errors:
        assert all(float(e) <= 1e-12 for e in triple), describe(result)
    assert out.count("loss identical on every rank: yes") == 2, describe(result)
    assert out.count("counts equal: yes") == 2, describe(result)
    assert out.strip().splitlines()[-1] == "all checks passed", describe(result)


@needs_mpi
def test_shard_mpi_agrees_on_an_error(shard_mpi_binary):
    """A NaN in the last rank's weights: phase 1 fails there only; the status agreement makes
    every rank stop (no rank waits in a collective: the run ends well within the timeout) and
    the failing rank prints the library's message."""
    result = run_mpi(shard_mpi_binary, "--nan-weight")
    assert result.returncode != 0, describe(result)
    err = result.stderr
    assert re.search(rf"^rank {MPI_RANKS - 1}: phase 1 \(amm_shard_head_target_f64\) failed: "
                     r"AMM_ERR_NONFINITE: .*weights\[\d+, 1\] = nan", err, re.M), \
        describe(result)
    assert f"failed on 1 of {MPI_RANKS} ranks" in err, describe(result)
    assert "max relative error" not in result.stdout, describe(result)
