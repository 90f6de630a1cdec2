"""What `python -m amm_softmax info` reports: the version, the kernel build in use, the BLAS and
its version, the thread count, and where the libraries were loaded from.

The BLAS is linked into libAMMSoftmax.so when it is built (Package.swift names the archive), so
its description is recorded then: the build of an installed package writes it to
_build_info.py; a checkout reads it from Package.swift and the archive it names. This module
imports nothing of the package at import time, so that setup.py can load it by path.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any


def blas_from_package(package_swift: Path) -> str:
    """The BLAS a build of `package_swift` links: the static OpenBLAS archive it names, with the
    version of the file that archive resolves to (libopenblas-rX.Y.Z.a in Debian's packages)."""
    match = re.search(r'let serialOpenBLAS = "([^"]+)"', package_swift.read_text())
    if match is None:
        return f"unknown (no OpenBLAS archive named in {package_swift.name})"
    archive = Path(match.group(1))
    version = re.search(r"-r(\d+(?:\.\d+)+)\.a$", archive.resolve().name)
    return (f"OpenBLAS {version.group(1) if version else '(version unknown)'}, "
            "Debian's serial build (libopenblas-serial-dev), linked statically into "
            "libAMMSoftmax.so with its symbols hidden: no OpenBLAS is loaded at run time")


def blas() -> str:
    """The BLAS of the library in use (see the module's docstring)."""
    try:
        from ._build_info import BLAS
        return str(BLAS)
    except ImportError:
        package_swift = Path(__file__).resolve().parents[2] / "Package.swift"
        if package_swift.is_file():
            return blas_from_package(package_swift)
        return "unknown (this installation did not record it)"


def threads() -> int:
    """The worker threads num_threads=0 means: one per online core, as the library counts them
    (sysconf(_SC_NPROCESSORS_ONLN), RowParallel.availableCores), at least 1."""
    try:
        return max(1, int(os.sysconf("SC_NPROCESSORS_ONLN")))
    except (AttributeError, ValueError, OSError):
        return 1


def loaded_libraries(library_path: str) -> list[str]:
    """The files of this library and of the Swift runtime mapped into the process (from
    /proc/self/maps), the library first; just its path where /proc is not there."""
    try:
        with open("/proc/self/maps") as maps:
            fields = [line.split(None, 5) for line in maps]
        paths = {f[5].strip() for f in fields if len(f) == 6 and f[5].startswith("/")}
    except OSError:
        return [library_path]
    ours = sorted(p for p in paths
                  if os.path.basename(p).startswith(("libAMMSoftmax", "libswift")))
    # The library first, its kernel build next, the Swift runtime last.
    return sorted(ours, key=lambda p: (p != os.path.realpath(library_path),
                                       os.path.basename(p).startswith("libswift")))


def swift_runtime(libraries: list[str]) -> str:
    """Where the Swift runtime comes from: the folders of its loaded libraries, or the library
    itself (a build with -static-stdlib, as the wheel's)."""
    folders = sorted({os.path.dirname(p) for p in libraries
                      if os.path.basename(p).startswith("libswift")})
    return ("loaded from " + ", ".join(folders)) if folders else "linked statically into the library"


def info() -> dict[str, Any]:
    """Everything `python -m amm_softmax info` prints, as a dict."""
    from . import __version__
    from . import _library
    from ._api import kernel_build, kernel_build_detail, library_version
    lib = _library.load()
    build = kernel_build()   # selects the kernel build, which loads its library
    libraries = loaded_libraries(lib._name)
    return {
        "version": __version__,
        "library_version": library_version(),
        "kernel_build": build,
        "kernel_build_detail": kernel_build_detail(),
        "blas": blas(),
        "threads": threads(),
        "library": os.path.realpath(lib._name),
        "libraries": libraries,
        "swift_runtime": swift_runtime(libraries),
    }


def format_info(facts: dict[str, Any]) -> str:
    """The report, one fact a line."""
    detail = "\n".join("    " + line for line in facts["kernel_build_detail"].splitlines())
    files = "\n".join("    " + path for path in facts["libraries"])
    return (f"amm-softmax {facts['version']} (library {facts['library_version']})\n"
            f"kernel build: {facts['kernel_build']}\n{detail}\n"
            f"BLAS: {facts['blas']}\n"
            f"threads: {facts['threads']} (num_threads=0 uses one per online core)\n"
            f"Swift runtime: {facts['swift_runtime']}\n"
            f"loaded from:\n{files}")


def main(argv: list[str] | None = None) -> int:
    """`python -m amm_softmax info [--json]`."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m amm_softmax")
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("info", help="version, kernel build, BLAS, threads, libraries")
    report.add_argument("--json", action="store_true", help="print the facts as JSON")
    args = parser.parse_args(argv)
    facts = info()
    print(json.dumps(facts, indent=2) if args.json else format_info(facts))
    return 0
