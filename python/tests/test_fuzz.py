"""Runs Tests/fuzz/amm_fuzz.c, the seeded random fuzzer of the C interface (see
Tests/fuzz/README.md), against the built libAMMSoftmax.so.

The driver is built into a temporary folder with AddressSanitizer and UndefinedBehaviorSanitizer
(-std=c11 -Wall -Wextra -Werror -fsanitize=address,undefined -fno-sanitize-recover=undefined);
when the sanitizers' runtime cannot be used here, it is built without them and the test says so.
Then FUZZ_SEEDS seeds of FUZZ_CALLS calls each run, two at a time (this machine has two cores):
100,000 calls in all, in 10 to 30 s here. Every call is checked against the header's promises
(status, canaries around the outputs, inputs unchanged, finite outputs, the error message); the
driver's last line is "N calls, M failures" and the test wants M == 0 and a clean exit.

Skipped only when no C compiler is installed; a missing library is a failure (build it with
`swift build -c release`). Set AMM_FUZZ_CALLS / AMM_FUZZ_SEEDS to run longer.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INCLUDE = REPO / "include"
LIB_DIR = REPO / ".build" / "release"
LIBRARY = LIB_DIR / "libAMMSoftmax.so"
DRIVER = REPO / "Tests" / "fuzz" / "amm_fuzz.c"
HEADER = INCLUDE / "amm_softmax.h"

FUZZ_SEEDS = [int(s) for s in os.environ.get("AMM_FUZZ_SEEDS", "1,2,3,4").split(",")]
FUZZ_CALLS = int(os.environ.get("AMM_FUZZ_CALLS", "25000"))
PARALLEL = 2
TIMEOUT = 900  # per seed; a hang is a failure, not a stuck suite

WARNINGS = ["-std=c11", "-Wall", "-Wextra", "-Werror"]
SANITIZERS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
LINK = [f"-L{LIB_DIR}", "-lAMMSoftmax", f"-Wl,-rpath,{LIB_DIR}", "-lm"]

#: The Swift runtime's crash backtracer reads other threads' stacks with memcpy, which
#: AddressSanitizer reports as an error of its own; the driver prints the call in progress
#: on a crash instead. allocator_may_return_null: an allocation too large to be had returns
#: NULL, as without the sanitizer (the library reports AMM_ERR_ALLOC), instead of aborting.
#: LeakSanitizer stays on: a leak fails the run.
RUN_ENV = {"SWIFT_BACKTRACE": "enable=no",
           "ASAN_OPTIONS": "allocator_may_return_null=1:detect_leaks=1",
           "UBSAN_OPTIONS": "print_stacktrace=1"}


def find_compiler() -> str | None:
    for name in (os.environ.get("CC"), "gcc", "clang", "cc"):
        if name and shutil.which(name):
            return name
    return None


def build(compiler: str, out: Path, sanitize: bool) -> subprocess.CompletedProcess:
    command = [compiler, *WARNINGS, "-O1", "-g", *(SANITIZERS if sanitize else []),
               f"-I{INCLUDE}", str(DRIVER), *LINK, "-o", str(out)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def run(binary: Path, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(RUN_ENV)
    return subprocess.run([str(binary), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def describe(result: subprocess.CompletedProcess, limit: int = 30000) -> str:
    text = (f"exit code {result.returncode}\nstdout:\n{result.stdout}\n"
            f"stderr:\n{result.stderr}")
    return text if len(text) <= limit else text[:limit] + "\n[... cut ...]"


def summarize(seed: int, result: subprocess.CompletedProcess) -> str:
    """What went wrong in one seed's run, short enough to read: a crash (the call in progress
    and the sanitizer's report), the failures counted by kind, and the first few in detail."""
    parts = [f"seed {seed}: exit code {result.returncode}"]
    crash = result.stderr.find("CRASH:")
    if crash >= 0:
        parts.append("\n".join(result.stderr[crash:].splitlines()[:40]))
    elif result.stderr.strip():
        parts.append("stderr:\n" + "\n".join(result.stderr.splitlines()[:40]))
    out = result.stdout
    kinds = out.find("failures by kind")
    if kinds >= 0:
        parts.append(out[kinds:].split("\nentry point")[0].strip())
    details = out[:kinds if kinds >= 0 else len(out)]
    details = details.split("entry point ")[0]  # the -s table follows the details
    if details.strip():
        parts.append(details[:8000] + ("\n[... more failures ...]" if len(details) > 8000 else ""))
    last = out.strip().splitlines()[-1:] or ["(no output)"]
    parts.append(f"last line: {last[0]}")
    return "\n".join(parts)


@pytest.fixture(scope="module")
def fuzz_driver(tmp_path_factory) -> tuple[Path, bool]:
    """The driver, built once: (path, built with the sanitizers)."""
    compiler = find_compiler()
    if compiler is None:
        pytest.skip("no C compiler (gcc, clang or cc) is installed: the fuzzer cannot be built")
    if not LIBRARY.is_file():
        pytest.fail(f"{LIBRARY} is missing: build it first with `swift build -c release` "
                    f"in {REPO}", pytrace=False)
    folder = tmp_path_factory.mktemp("fuzz")
    binary = folder / "amm_fuzz"
    result = build(compiler, binary, sanitize=True)
    why = None
    if result.returncode != 0:
        why = f"the sanitizers cannot be built with {compiler}:\n{result.stderr[-2000:]}"
    else:
        probe = run(binary, "1", "0", timeout=120)  # the runtime starts; no call is made
        if probe.returncode != 0 or "0 calls, 0 failures" not in probe.stdout:
            why = ("the sanitizers' runtime cannot be used here:\n"
                   f"{probe.stderr[-2000:]}")
    if why is None:
        return binary, True
    # Without the sanitizers the canaries, the input copies and the guard pages still check
    # the library; only the driver's own undefined behaviour and leaks go unseen.
    message = f"amm_fuzz: building WITHOUT sanitizers: {why}"
    print(message, file=sys.stderr)
    warnings.warn(message)
    result = build(compiler, binary, sanitize=False)
    assert result.returncode == 0, f"the fuzzer does not build:\n{describe(result)}"
    return binary, False


def test_fuzz_driver_usage(fuzz_driver):
    """A usage error exits with 2; an unknown option is refused."""
    binary, _ = fuzz_driver
    result = run(binary, timeout=60)
    assert result.returncode == 2, describe(result)
    assert "usage" in result.stderr
    assert run(binary, "1", "10", "--bogus", timeout=60).returncode == 2


def test_fuzz_c_interface(fuzz_driver):
    """FUZZ_SEEDS x FUZZ_CALLS fuzzed calls, no failure."""
    binary, sanitized = fuzz_driver
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        results = list(pool.map(lambda seed: run(binary, str(seed), str(FUZZ_CALLS), "-s"),
                                FUZZ_SEEDS))
    elapsed = time.monotonic() - started
    total_calls = 0
    calls_per_function: dict[str, int] = {}
    problems = []
    for seed, result in zip(FUZZ_SEEDS, results):
        match = re.search(r"^(\d+) calls, (\d+) failures$", result.stdout, re.M)
        if match is None or result.returncode != 0 or int(match.group(2)) != 0:
            problems.append(summarize(seed, result))
            continue
        total_calls += int(match.group(1))
        for name, count in re.findall(r"^(amm_\w+)\s+(\d+)\s", result.stdout, re.M):
            calls_per_function[name] = calls_per_function.get(name, 0) + int(count)
    print(f"\namm_fuzz: {total_calls} calls over seeds {FUZZ_SEEDS} in {elapsed:.1f} s "
          f"({total_calls / max(elapsed, 1e-9):.0f} calls/s on {PARALLEL} processes), "
          f"{'with' if sanitized else 'WITHOUT'} AddressSanitizer and UBSan")
    assert not problems, "the fuzzer found failures:\n\n" + "\n\n".join(problems)
    # every function the header declares was called
    declared = re.findall(r"AMM_API[^;]*?\b(amm_\w+)\s*\(", HEADER.read_text())
    assert len(declared) >= 29, declared
    missed = [name for name in declared if calls_per_function.get(name, 0) == 0]
    assert not missed, f"never called: {missed}"
    assert total_calls >= 100_000 or FUZZ_CALLS * len(FUZZ_SEEDS) < 100_000, total_calls
